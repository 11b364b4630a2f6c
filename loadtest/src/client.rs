//! A lean WebSocket client for load generation: the handshake, masked client frames,
//! and a reader that takes many server frames per `read` and pulls `seq` and `sentAt`
//! out of each update by scanning bytes, without building JSON. The load generator must
//! never be what limits a measurement.
//!
//! Two protocols: nilecast's native protocol (`/ws`, one JSON object per frame) and
//! Socket.IO v4 over the websocket transport (Engine.IO v4 packets).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// nilecast's native protocol: `{"ns","event","data","ack"}` frames on `/ws`.
    Native,
    /// Socket.IO v4 over the websocket transport.
    Socketio,
}

/// Bytes read from the servers by every client of this process: the wire bytes of
/// what was delivered (WebSocket framing included), compressed or not, whatever the
/// server's language.
pub static BYTES_READ: AtomicU64 = AtomicU64::new(0);

/// RSV1 in a frame's first byte: a compressed message (permessage-deflate).
const RSV1: u8 = 0x40;

/// How long the handshake and the subscribe reply may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read per `read` call: enough for hundreds of frames, so a busy client makes
/// few syscalls.
const READ_CHUNK: usize = 64 * 1024;

/// One update as the receiver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    pub seq: u64,
    /// The publisher's send time (microseconds since the epoch), if stamped.
    pub sent_at_us: Option<u64>,
}

/// What one server frame meant to the load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Update(Update),
    /// The reply to our subscribe.
    Subscribed,
    /// A WebSocket ping (answered with a pong) or an Engine.IO ping (answered with "3").
    Ping {
        engine_io: bool,
    },
    Close,
    Other,
}

pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    protocol: Protocol,
    /// permessage-deflate, when the server accepted it.
    inflater: Option<Box<Inflater>>,
}

/// A connection's decompressor (permessage-deflate). It keeps its window between
/// messages unless the server said `server_no_context_takeover`.
struct Inflater {
    z: flate2::Decompress,
    reset_each: bool,
    out: Vec<u8>,
}

impl Inflater {
    fn inflate(&mut self, payload: &[u8]) -> anyhow::Result<&[u8]> {
        if self.reset_each {
            self.z.reset(false);
        }
        self.out.clear();
        for input in [payload, &[0, 0, 0xff, 0xff][..]] {
            let start = self.z.total_in();
            loop {
                if self.out.capacity() - self.out.len() < 1024 {
                    self.out.reserve(self.out.capacity().max(4096));
                }
                let done = (self.z.total_in() - start) as usize;
                self.z.decompress_vec(
                    &input[done..],
                    &mut self.out,
                    flate2::FlushDecompress::Sync,
                )?;
                if (self.z.total_in() - start) as usize == input.len()
                    && self.out.len() < self.out.capacity()
                {
                    break;
                }
            }
        }
        Ok(&self.out)
    }
}

/// A masked client text frame. Load-generator traffic needs no unpredictable mask, so
/// a fixed one keeps this allocation-light; the server unmasks it the same.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Searchers for the fields every update frame is scanned for, built once.
struct Finders {
    native_update: memchr::memmem::Finder<'static>,
    socketio_update: memchr::memmem::Finder<'static>,
    seq: memchr::memmem::Finder<'static>,
    sent_at: memchr::memmem::Finder<'static>,
}

fn finders() -> &'static Finders {
    static FINDERS: std::sync::OnceLock<Finders> = std::sync::OnceLock::new();
    FINDERS.get_or_init(|| Finders {
        native_update: memchr::memmem::Finder::new(b"\"event\":\"inventory:update\""),
        socketio_update: memchr::memmem::Finder::new(b"[\"inventory:update\""),
        seq: memchr::memmem::Finder::new(b"\"seq\":"),
        sent_at: memchr::memmem::Finder::new(b"\"sentAt\":"),
    })
}

/// Parses the unsigned integer at the start of `bytes`.
fn leading_number(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    Some(
        bytes[..digits]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

impl Client {
    /// Connects and completes the WebSocket (and, for Socket.IO, the Engine.IO and
    /// namespace) handshakes.
    pub async fn connect(
        addr: &str,
        protocol: Protocol,
        ws_path: &str,
        deflate: bool,
    ) -> anyhow::Result<Client> {
        tokio::time::timeout(
            SETUP_TIMEOUT,
            Self::connect_inner(addr, protocol, ws_path, deflate),
        )
        .await
        .context("handshake timed out")?
    }

    async fn connect_inner(
        addr: &str,
        protocol: Protocol,
        ws_path: &str,
        deflate: bool,
    ) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let path = match protocol {
            Protocol::Native => ws_path.to_string(),
            Protocol::Socketio => "/socket.io/?EIO=4&transport=websocket".to_string(),
        };
        let key =
            base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
        let offer = if deflate {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        let mut client = Client {
            stream,
            buf: Vec::new(),
            start: 0,
            protocol,
            inflater: None,
        };
        client.stream.write_all(request.as_bytes()).await?;
        // Read the response head; anything after it is the first frames.
        loop {
            client.fill().await?;
            if let Some(end) = find(&client.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&client.buf[..end]).to_string();
                if !head.starts_with("HTTP/1.1 101") {
                    bail!("upgrade refused: {}", head.lines().next().unwrap_or(""));
                }
                let lower = head.to_ascii_lowercase();
                if deflate && lower.contains("permessage-deflate") {
                    client.inflater = Some(Box::new(Inflater {
                        z: flate2::Decompress::new(false),
                        reset_each: lower.contains("server_no_context_takeover"),
                        out: Vec::new(),
                    }));
                }
                client.start = end + 4;
                break;
            }
        }
        if protocol == Protocol::Socketio {
            // Engine.IO open packet, then connect the /inventory namespace.
            client
                .next_text(|t| t.starts_with(b"0"))
                .await
                .context("no Engine.IO open packet")?;
            client.send_text(b"40/inventory,").await?;
            client
                .next_text(|t| t.starts_with(b"40/inventory"))
                .await
                .context("namespace connect refused")?;
        }
        Ok(client)
    }

    pub async fn send_text(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(&client_frame(0x1, payload)).await?;
        Ok(())
    }

    /// Subscribes to `/inventory` for `products`, resuming after `since` when given, and
    /// waits for the reply.
    pub async fn subscribe(
        &mut self,
        products: &[String],
        since: Option<u64>,
    ) -> anyhow::Result<()> {
        let mut data = serde_json::json!({ "productIds": products });
        if let Some(since) = since {
            data["sinceSeq"] = since.into();
        }
        let frame = match self.protocol {
            Protocol::Native => serde_json::json!({"ns":"/inventory","event":"inventory:subscribe","data":data,"ack":1}).to_string(),
            Protocol::Socketio => format!("42/inventory,1{}", serde_json::json!(["inventory:subscribe", data])),
        };
        self.send_text(frame.as_bytes()).await?;
        Ok(())
    }

    /// Reads until a text frame matching `pred` arrives (answering pings meanwhile).
    async fn next_text(&mut self, pred: impl Fn(&[u8]) -> bool) -> anyhow::Result<()> {
        tokio::time::timeout(SETUP_TIMEOUT, async {
            loop {
                while let Some((opcode, range)) = self.parse_one()? {
                    let matched = match (opcode, self.inflater.as_deref_mut()) {
                        (0x1, _) => pred(&self.buf[range.clone()]),
                        (0x41, Some(inflater)) => pred(inflater.inflate(&self.buf[range.clone()])?),
                        _ => false,
                    };
                    if opcode == 0x9 {
                        let payload = self.buf[range].to_vec();
                        self.stream.write_all(&client_frame(0xA, &payload)).await?;
                    }
                    if matched {
                        return Ok(());
                    }
                }
                self.fill().await?;
            }
        })
        .await
        .context("timed out waiting for the server")?
    }

    /// Reads more bytes into the buffer: one `read` of up to 64 KiB into spare capacity
    /// (never zeroed: zeroing 64 KiB per read cost more than the read itself).
    async fn fill(&mut self) -> anyhow::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > READ_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(READ_CHUNK);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        BYTES_READ.fetch_add(n as u64, Relaxed);
        Ok(n)
    }

    /// Takes one complete server frame off the buffer: (opcode, payload range), the
    /// opcode with 0x40 added for a compressed (RSV1) frame.
    fn parse_one(&mut self) -> anyhow::Result<Option<(u8, std::ops::Range<usize>)>> {
        let b = &self.buf[self.start..];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[1] & 0x80 != 0 {
            bail!("server frames must not be masked");
        }
        let (len, head) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into()?) as usize, 10),
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if b.len() < head + len {
            return Ok(None);
        }
        let opcode = b[0] & 0x4F;
        let range = self.start + head..self.start + head + len;
        self.start += head + len;
        Ok(Some((opcode, range)))
    }

    /// What a frame means, decompressed first when it is compressed.
    fn classify_frame(
        &mut self,
        opcode: u8,
        range: std::ops::Range<usize>,
    ) -> anyhow::Result<Event> {
        if opcode & RSV1 == 0 {
            return Ok(classify(self.protocol, opcode, &self.buf[range]));
        }
        let Some(inflater) = self.inflater.as_deref_mut() else {
            bail!("a compressed frame on a connection that did not negotiate compression");
        };
        let text = inflater.inflate(&self.buf[range])?;
        Ok(classify(self.protocol, opcode & !RSV1, text))
    }
    /// Waits for the server's frames and hands them to `on_batch`, one batch per
    /// `read` (everything that read completed), so a busy client pays per syscall, not
    /// per frame, for locking and clock reads. Returns when `on_batch` returns false, or
    /// with an error when the connection ends.
    pub async fn run(&mut self, mut on_batch: impl FnMut(&[Event]) -> bool) -> anyhow::Result<()> {
        let mut events = Vec::with_capacity(64);
        loop {
            events.clear();
            let mut pongs: Vec<u8> = Vec::new();
            let mut closed = false;
            while let Some((opcode, range)) = self.parse_one()? {
                let event = self.classify_frame(opcode, range.clone())?;
                match event {
                    Event::Ping { engine_io: false } => {
                        pongs.extend(client_frame(0xA, &self.buf[range]))
                    }
                    Event::Ping { engine_io: true } => pongs.extend(client_frame(0x1, b"3")),
                    Event::Close => closed = true,
                    _ => {}
                }
                events.push(event);
                if closed {
                    break;
                }
            }
            if !events.is_empty() && !on_batch(&events) {
                return Ok(());
            }
            if closed {
                bail!("server sent close");
            }
            if !pongs.is_empty() {
                self.stream.write_all(&pongs).await?;
            }
            self.fill().await?;
        }
    }
}

/// What one server frame means to the load generator.
fn classify(protocol: Protocol, opcode: u8, payload: &[u8]) -> Event {
    match opcode {
        0x8 => return Event::Close,
        0x9 => return Event::Ping { engine_io: false },
        0x1 => {}
        _ => return Event::Other,
    }
    if protocol == Protocol::Socketio && payload == b"2" {
        return Event::Ping { engine_io: true };
    }
    let f = finders();
    let marker = match protocol {
        Protocol::Native => &f.native_update,
        Protocol::Socketio => &f.socketio_update,
    };
    // The marker sits near the front of the frame; looking only there keeps a miss
    // cheap whatever the payload size.
    let front = &payload[..payload.len().min(64)];
    if marker.find(front).is_some() {
        let field = |finder: &memchr::memmem::Finder<'static>, len: usize| {
            finder
                .find(payload)
                .and_then(|at| leading_number(&payload[at + len..]))
        };
        if let Some(seq) = field(&f.seq, 6) {
            return Event::Update(Update {
                seq,
                sent_at_us: field(&f.sent_at, 9),
            });
        }
    }
    let is_reply = match protocol {
        Protocol::Native => {
            find(front, b"\"ack\":1,").is_some() || find(front, b"inventory:subscribed").is_some()
        }
        Protocol::Socketio => payload.starts_with(b"43/inventory,1"),
    };
    if is_reply {
        Event::Subscribed
    } else {
        Event::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_read_from_either_protocol() {
        let native = br#"{"ns":"/inventory","event":"inventory:update","data":{"seq":1042,"data":{"sentAt":17,"x":1}}}"#;
        assert_eq!(
            classify(Protocol::Native, 0x1, native),
            Event::Update(Update {
                seq: 1042,
                sent_at_us: Some(17)
            })
        );
        let socketio = br#"42/inventory,["inventory:update",{"seq":7,"data":{"productId":"p"}}]"#;
        assert_eq!(
            classify(Protocol::Socketio, 0x1, socketio),
            Event::Update(Update {
                seq: 7,
                sent_at_us: None
            })
        );
        assert_eq!(
            classify(Protocol::Socketio, 0x1, b"2"),
            Event::Ping { engine_io: true }
        );
        assert_eq!(
            classify(
                Protocol::Native,
                0x1,
                br#"{"ns":"/inventory","ack":1,"data":{}}"#
            ),
            Event::Subscribed
        );
        assert_eq!(classify(Protocol::Native, 0x8, b""), Event::Close);
        assert_eq!(leading_number(b"123,"), Some(123));
        assert_eq!(leading_number(b"x"), None);
    }
}
