//! permessage-deflate (RFC 7692), compressed once: the offer a connection's upgrade
//! accepts, the compression of a server frame that every compressing subscriber then
//! shares, and the bounded decompression of client messages.
//!
//! The server answers every accepted offer with `server_no_context_takeover` and
//! `client_no_context_takeover`. So each message is compressed on its own, which is
//! what lets one compressed frame serve every subscriber, and no connection keeps a
//! compressor or a decompressor: both are per thread and reset for each message.
//!
//! A frame is compressed with a 32 KiB window, but its back-references can reach no
//! further than its own length, so a client that asked for a smaller window
//! (`server_max_window_bits`) gets the compressed frame whenever the frame fits that
//! window, and the uncompressed one (which RFC 7692 always allows) when it does not.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{self, OpCode, MAX_HEADER};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const NAME: &str = "permessage-deflate";

/// The largest LZ77 window (bits) deflate uses, and the smallest RFC 7692 allows.
const MAX_WINDOW_BITS: u8 = 15;
const MIN_WINDOW_BITS: u8 = 8;

/// What RFC 7692 section 7.2.1 has the sender drop from the end of a message's
/// compressed bytes, and the receiver append before decompressing.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// An accepted offer: what the connection may receive compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The largest LZ77 window, in bits, the client can decompress with: 15, or the
    /// smaller `server_max_window_bits` it asked for.
    pub window_bits: u8,
}

impl Negotiated {
    /// The `Sec-WebSocket-Extensions` value of the upgrade's answer.
    pub fn response(&self) -> String {
        let mut out = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
        if self.window_bits < MAX_WINDOW_BITS {
            out.push_str(&format!("; server_max_window_bits={}", self.window_bits));
        }
        out
    }
}

/// Picks the first permessage-deflate offer of the request's `Sec-WebSocket-Extensions`
/// values that the server can honour. An offer with an unknown, repeated or invalid
/// parameter is declined, as RFC 7692 section 5 asks; None when no offer is left.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Negotiated> {
    headers
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<Negotiated> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen = [false; 4];
    let mut window_bits = MAX_WINDOW_BITS;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let bits = |v: Option<&str>| {
            v.filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(b))
        };
        let slot = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                window_bits = bits(value)?;
                2
            }
            // The client's own window: any size decompresses with ours.
            "client_max_window_bits" => {
                if value.is_some() {
                    bits(value)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[slot], true) {
            return None;
        }
    }
    Some(Negotiated { window_bits })
}

/// A server frame compressed for every subscriber that negotiated deflate: the frame
/// with RSV1 set, and the window (bits) a client needs to decompress it.
#[derive(Debug, Clone)]
pub struct Deflated {
    pub frame: Bytes,
    pub window_bits: u8,
}

impl Deflated {
    /// Is this frame for a client whose window is `window_bits`?
    pub fn fits(&self, window_bits: u8) -> bool {
        self.window_bits <= window_bits
    }
}

thread_local! {
    /// Compressors by window size (bits 9 to 15), made when first needed.
    static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Compresses one data frame built by this crate (an unmasked, final text or binary
/// frame) to share among subscribers. None when compressing does not make it smaller,
/// or for any other frame.
pub fn deflate_frame(server_frame: &[u8]) -> Option<Deflated> {
    let (opcode, payload) = frame::split_server_frame(server_frame)?;
    if !matches!(opcode, OpCode::Text | OpCode::Binary) {
        return None;
    }
    deflate_message(opcode, payload, MAX_WINDOW_BITS).filter(|d| d.frame.len() < server_frame.len())
}

/// Compresses one message's payload into a frame with RSV1 set, for a client whose
/// window is `window_bits`, whether or not that makes it smaller. None when it can not
/// be compressed for that window (zlib has no 8-bit window: a message longer than 256
/// bytes is sent uncompressed to such a client).
pub fn deflate_message(opcode: OpCode, payload: &[u8], window_bits: u8) -> Option<Deflated> {
    let bits = window_bits.clamp(MIN_WINDOW_BITS + 1, MAX_WINDOW_BITS);
    // Only a message that fits the client's window may be compressed with a larger one.
    if bits > window_bits && window_bits_for(payload.len()) > window_bits {
        return None;
    }
    let mut out = Vec::with_capacity(MAX_HEADER + payload.len() / 2 + 64);
    out.extend_from_slice(&[0u8; MAX_HEADER]);
    COMPRESSORS.with(|cs| {
        let mut cs = cs.borrow_mut();
        let c = cs[usize::from(bits - MIN_WINDOW_BITS - 1)].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::default(), false, bits)
        });
        c.reset();
        let start = c.total_in();
        // A sync flush is complete once a call returns with output room to spare.
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(payload.len() / 4 + 64);
            }
            let consumed = (c.total_in() - start) as usize;
            c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
                .ok()?;
            let consumed = (c.total_in() - start) as usize;
            if consumed == payload.len() && out.len() < out.capacity() {
                break;
            }
        }
        Some(())
    })?;
    if !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    Some(Deflated {
        frame: frame::finish_reserved_compressed(out, opcode),
        window_bits: window_bits_for(payload.len()).min(bits),
    })
}

/// The smallest window a decompressor needs for a message of `len` bytes: no
/// back-reference reaches before the message's first byte.
fn window_bits_for(len: usize) -> u8 {
    let mut bits = MIN_WINDOW_BITS;
    while bits < MAX_WINDOW_BITS && (1usize << bits) < len {
        bits += 1;
    }
    bits
}

/// Why a compressed client message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It decompresses to more than the message limit (a decompression bomb): 1009.
    #[error("decompressed message larger than the message limit")]
    TooBig,
    /// It is not valid deflate data: 1007.
    #[error("invalid compressed data")]
    Invalid,
}

impl InflateError {
    pub fn close_code(self) -> u16 {
        match self {
            InflateError::TooBig => crate::error::close::TOO_BIG,
            InflateError::Invalid => crate::error::close::INVALID_PAYLOAD,
        }
    }
}

/// Decompresses one client message, never producing more than `max` bytes: the output
/// grows as it is produced, and decompression stops as soon as it passes the limit.
pub fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let limit = max.saturating_add(1);
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(3).max(256).min(limit));
        for input in [compressed, &TAIL[..]] {
            let start = d.total_in();
            loop {
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(InflateError::TooBig);
                    }
                    let room = out.capacity().min(limit - out.len()).max(1);
                    out.reserve_exact(room);
                }
                let consumed = (d.total_in() - start) as usize;
                let produced = out.len();
                let status = d
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                let now_consumed = (d.total_in() - start) as usize;
                if status == Status::StreamEnd {
                    // A final block: nothing after it belongs to the message.
                    return Ok(out);
                }
                let progress = now_consumed > consumed || out.len() > produced;
                if now_consumed == input.len() && out.len() < out.capacity() {
                    break;
                }
                if !progress && out.len() < out.capacity() {
                    // No input left to use and room to spare: the data is cut short.
                    break;
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(h: &str) -> Option<u8> {
        negotiate([h]).map(|n| n.window_bits)
    }

    #[test]
    fn accepts_the_first_offer_it_can_honour() {
        assert_eq!(offer("permessage-deflate"), Some(15));
        assert_eq!(
            offer("permessage-deflate; client_max_window_bits"),
            Some(15)
        );
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=10; client_no_context_takeover"),
            Some(10)
        );
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=\"9\""),
            Some(9)
        );
        // The first offer is invalid, the second is taken.
        assert_eq!(
            offer("permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=12"),
            Some(12)
        );
        assert_eq!(
            negotiate([
                "x-webkit-deflate-frame",
                "permessage-deflate; server_no_context_takeover"
            ])
            .map(|n| n.window_bits),
            Some(15)
        );
    }

    #[test]
    fn declines_unknown_repeated_and_invalid_parameters() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=1x",
            "permessage-deflate; client_max_window_bits=99",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_answer_asks_for_no_context_takeover_on_both_sides() {
        let n = Negotiated { window_bits: 15 };
        assert_eq!(
            n.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(Negotiated { window_bits: 9 }
            .response()
            .ends_with("; server_max_window_bits=9"));
    }

    #[test]
    fn a_compressed_frame_inflates_to_the_original_and_says_its_window() {
        let text = br#"{"ns":"/inventory","event":"inventory:updated","data":{"productId":"p-1","stock":5,"name":"a product with a name","warehouse":"a warehouse with a name"}}"#
            .repeat(3);
        let plain = frame::server_frame(OpCode::Text, &text);
        let d = deflate_frame(&plain).expect("compresses");
        assert_eq!(d.frame[0], 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
        let (opcode, payload) = frame::split_server_frame(&d.frame).unwrap();
        assert_eq!(opcode, OpCode::Text);
        assert!(payload.len() < text.len());
        assert_eq!(inflate(payload, 1 << 20).unwrap(), text);
        assert_eq!(
            d.window_bits,
            9,
            "{} bytes fit a 512-byte window",
            text.len()
        );
        assert!(d.fits(9) && d.fits(15) && !d.fits(8));
        // Each message stands alone: the same input gives the same bytes again.
        assert_eq!(deflate_frame(&plain).unwrap().frame, d.frame);
    }

    #[test]
    fn incompressible_and_control_frames_are_left_alone() {
        let noise: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(deflate_frame(&frame::server_frame(OpCode::Binary, &noise)).is_none());
        // An echo is compressed all the same, even an empty one.
        let empty = deflate_message(OpCode::Text, b"", 15).unwrap();
        let (_, payload) = frame::split_server_frame(&empty.frame).unwrap();
        assert_eq!(inflate(payload, 16).unwrap(), b"");
        assert!(deflate_frame(&frame::server_frame(OpCode::Ping, b"aaaaaaaaaaaaaaaa")).is_none());
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let big = vec![b'a'; 10 << 20];
        let d = deflate_message(OpCode::Text, &big, 15).unwrap();
        let (_, payload) = frame::split_server_frame(&d.frame).unwrap();
        assert!(payload.len() < 20_000, "{} compressed bytes", payload.len());
        assert_eq!(inflate(payload, 64 * 1024), Err(InflateError::TooBig));
        assert_eq!(inflate(payload, 10 << 20).unwrap().len(), 10 << 20);
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 1024),
            Err(InflateError::Invalid)
        );
    }

    #[test]
    fn a_message_for_a_small_window_is_compressed_with_that_window() {
        let text: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("{} ", i % 700).into_bytes())
            .collect();
        for bits in 9..=15 {
            let d = deflate_message(OpCode::Text, &text, bits).unwrap();
            assert_eq!(d.window_bits, bits);
            let (_, payload) = frame::split_server_frame(&d.frame).unwrap();
            let mut z = Decompress::new_with_window_bits(false, bits);
            let mut out = Vec::with_capacity(text.len() + 16);
            let mut input = payload.to_vec();
            input.extend_from_slice(&TAIL);
            z.decompress_vec(&input, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, text, "window of {bits} bits");
        }
        // No 8-bit window in zlib: only a message that fits one is compressed for it.
        assert!(deflate_message(OpCode::Text, &text, 8).is_none());
        assert_eq!(
            deflate_message(OpCode::Text, &text[..200], 8)
                .unwrap()
                .window_bits,
            8
        );
    }

    #[test]
    fn window_bits_follow_the_length() {
        assert_eq!(window_bits_for(0), 8);
        assert_eq!(window_bits_for(256), 8);
        assert_eq!(window_bits_for(257), 9);
        assert_eq!(window_bits_for(4096), 12);
        assert_eq!(window_bits_for(1 << 20), 15);
    }
}
