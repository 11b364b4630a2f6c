//! RFC 6455 framing: parsing client frames out of a byte buffer, and encoding server
//! frames. Pure: no I/O, no allocation beyond the frames themselves.
//!
//! Server frames are never masked, so a frame encoded once is valid for every client:
//! that is what lets the fan-out share one `Bytes` among all subscribers.

use bytes::{Buf, Bytes, BytesMut};

/// Largest header a server frame can have: 2 bytes, plus 8 for a 64-bit length.
pub const MAX_HEADER: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_u8(b: u8) -> Option<OpCode> {
        Some(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One parsed (and unmasked) client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: the first frame of a compressed message (permessage-deflate).
    pub compressed: bool,
    pub opcode: OpCode,
    pub payload: BytesMut,
}

/// A framing violation, each with the close code the connection ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set")]
    ReservedBits,
    #[error("unknown opcode")]
    UnknownOpcode,
    #[error("client frames must be masked")]
    Unmasked,
    #[error("control frames must be final and at most 125 bytes")]
    BadControlFrame,
    #[error("frame larger than the message limit")]
    TooLarge,
}

impl FrameError {
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooLarge => crate::error::close::TOO_BIG,
            _ => crate::error::close::PROTOCOL_ERROR,
        }
    }
}

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)` when more bytes
/// are needed. A frame whose declared length exceeds `max_payload` is refused from its
/// header alone, before its payload is read. RSV1 is allowed only with `deflate` (the
/// connection negotiated permessage-deflate), and then only on the first frame of a
/// data message, which the caller checks; RSV2 and RSV3 never are.
pub fn parse(
    buf: &mut BytesMut,
    max_payload: usize,
    deflate: bool,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let reserved = if deflate { 0x30 } else { 0x70 };
    if b0 & reserved != 0 {
        return Err(FrameError::ReservedBits);
    }
    let compressed = b0 & 0x40 != 0;
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(FrameError::UnknownOpcode)?;
    if compressed && !matches!(opcode, OpCode::Text | OpCode::Binary) {
        return Err(FrameError::ReservedBits);
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, mut offset) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(be), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::BadControlFrame);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge);
    }
    let len = len as usize;
    if buf.len() < offset + 4 + len {
        return Ok(None);
    }
    let mask = [
        buf[offset],
        buf[offset + 1],
        buf[offset + 2],
        buf[offset + 3],
    ];
    offset += 4;
    buf.advance(offset);
    let mut payload = buf.split_to(len);
    unmask(&mut payload, mask);
    Ok(Some(Frame {
        fin,
        compressed,
        opcode,
        payload,
    }))
}

/// XORs a client frame's payload with its mask (RFC 6455 section 5.3), eight bytes at a
/// time with the mask repeated in one `u64`, which the compiler vectorizes further. It
/// was fastwebsockets' `unmask` (the same word-at-a-time loop); that crate brings tokio's
/// I/O traits, which this crate may not depend on.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the mask's phase starts again at 0.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Writes a server frame header for a payload of `len` bytes into the end of `out`
/// (`out.len()` must be `MAX_HEADER`) and returns how many bytes of it are used: the
/// header occupies `out[MAX_HEADER - used..]`, so it sits right before a payload that
/// follows `out` in memory.
pub fn header_into(out: &mut [u8; MAX_HEADER], opcode: OpCode, len: usize) -> usize {
    header_with(out, 0x80 | opcode.as_u8(), len)
}

fn header_with(out: &mut [u8; MAX_HEADER], b0: u8, len: usize) -> usize {
    if len < 126 {
        out[8] = b0;
        out[9] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[6] = b0;
        out[7] = 126;
        out[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[0] = b0;
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Builds a complete server frame from a body that was written after `MAX_HEADER`
/// reserved bytes at the front of `buf`. No copy: the header is written into the reserved
/// space and the result is a slice of the same allocation.
pub fn finish_reserved(buf: Vec<u8>, opcode: OpCode) -> Bytes {
    finish_with(buf, 0x80 | opcode.as_u8())
}

/// [`finish_reserved`] for a compressed message: the frame has RSV1 set.
pub fn finish_reserved_compressed(buf: Vec<u8>, opcode: OpCode) -> Bytes {
    finish_with(buf, 0x80 | 0x40 | opcode.as_u8())
}

fn finish_with(mut buf: Vec<u8>, b0: u8) -> Bytes {
    let len = buf.len() - MAX_HEADER;
    let mut head = [0u8; MAX_HEADER];
    let used = header_with(&mut head, b0, len);
    buf[..MAX_HEADER].copy_from_slice(&head);
    Bytes::from(buf).slice(MAX_HEADER - used..)
}

/// The opcode and payload of a whole, unfragmented server frame built here (None for
/// anything else: a masked or fragmented frame, or one cut short).
pub fn split_server_frame(frame: &[u8]) -> Option<(OpCode, &[u8])> {
    let (&b0, rest) = frame.split_first()?;
    let (&b1, rest) = rest.split_first()?;
    if b0 & 0x80 == 0 || b1 & 0x80 != 0 {
        return None;
    }
    let opcode = OpCode::from_u8(b0 & 0x0F)?;
    let (len, body) = match b1 {
        126 => {
            let (len, body) = rest.split_at_checked(2)?;
            (usize::from(u16::from_be_bytes([len[0], len[1]])), body)
        }
        127 => {
            let (len, body) = rest.split_at_checked(8)?;
            let mut be = [0u8; 8];
            be.copy_from_slice(len);
            (usize::try_from(u64::from_be_bytes(be)).ok()?, body)
        }
        n => (usize::from(n), rest),
    };
    (body.len() == len).then_some((opcode, body))
}

/// A server frame carrying `payload`.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(MAX_HEADER + payload.len());
    buf.extend_from_slice(&[0u8; MAX_HEADER]);
    buf.extend_from_slice(payload);
    finish_reserved(buf, opcode)
}

/// A close frame with a status code and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    // Control frames carry at most 125 bytes; reasons here are short constants.
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    server_frame(OpCode::Close, &payload)
}

/// The status code of a close frame's payload, if it has one.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes a masked client frame, as a browser would.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else if payload.len() <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn parses_a_masked_text_frame_and_leaves_the_rest() {
        let mut bytes = client_frame(true, 1, b"hello", [1, 2, 3, 4]);
        bytes.extend_from_slice(&[0x81]);
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = parse(&mut buf, 1024, false).unwrap().unwrap();
        assert_eq!(frame.opcode, OpCode::Text);
        assert!(frame.fin);
        assert_eq!(&frame.payload[..], b"hello");
        assert_eq!(&buf[..], &[0x81]);
        assert_eq!(parse(&mut buf, 1024, false), Ok(None));
    }

    #[test]
    fn refuses_unmasked_oversized_and_bad_control_frames() {
        let mut unmasked = BytesMut::from(&[0x81u8, 0x01, b'a'][..]);
        assert_eq!(parse(&mut unmasked, 1024, false), Err(FrameError::Unmasked));
        let mut big = BytesMut::from(&client_frame(true, 1, &[b'a'; 300], [0; 4])[..]);
        assert_eq!(parse(&mut big, 200, false), Err(FrameError::TooLarge));
        // The size is refused from the header alone.
        let mut head_only = BytesMut::from(&client_frame(true, 1, &[b'a'; 300], [0; 4])[..4]);
        assert_eq!(parse(&mut head_only, 200, false), Err(FrameError::TooLarge));
        let mut frag_ping = BytesMut::from(&client_frame(false, 9, b"x", [0; 4])[..]);
        assert_eq!(
            parse(&mut frag_ping, 1024, false),
            Err(FrameError::BadControlFrame)
        );
        let mut rsv = BytesMut::from(&[0xC1u8, 0x80, 0, 0, 0, 0][..]);
        assert_eq!(parse(&mut rsv, 1024, false), Err(FrameError::ReservedBits));
    }

    #[test]
    fn rsv1_marks_a_compressed_data_frame_only_when_deflate_was_negotiated() {
        let mut rsv1 = BytesMut::from(&[0xC1u8, 0x80, 0, 0, 0, 0][..]);
        let frame = parse(&mut rsv1, 1024, true).unwrap().unwrap();
        assert!(frame.compressed && frame.fin && frame.opcode == OpCode::Text);
        let mut rsv2 = BytesMut::from(&[0xA1u8, 0x80, 0, 0, 0, 0][..]);
        assert_eq!(parse(&mut rsv2, 1024, true), Err(FrameError::ReservedBits));
        let mut ping = BytesMut::from(&[0xC9u8, 0x80, 0, 0, 0, 0][..]);
        assert_eq!(parse(&mut ping, 1024, true), Err(FrameError::ReservedBits));
    }

    #[test]
    fn server_frames_split_back_into_opcode_and_payload() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            let frame = server_frame(OpCode::Binary, &payload);
            assert_eq!(
                split_server_frame(&frame),
                Some((OpCode::Binary, &payload[..]))
            );
            assert_eq!(split_server_frame(&frame[..frame.len() - 1]), None);
        }
    }

    #[test]
    fn server_frames_have_the_right_header_for_each_length_class() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let frame = server_frame(OpCode::Text, &vec![b'x'; len]);
            let header = match len {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(frame.len(), header + len);
            assert_eq!(frame[0], 0x81);
        }
        let close = close_frame(1013, "slow consumer");
        assert_eq!(close[0], 0x88);
        assert_eq!(close_code(&close[2..]), Some(1013));
    }

    proptest! {
        /// Any frame survives being fed in arbitrary pieces: parsing never panics,
        /// never returns a frame early, and yields the payload exactly once.
        #[test]
        fn parses_frames_split_anywhere(payload in proptest::collection::vec(any::<u8>(), 0..70_000),
                                        mask in any::<[u8; 4]>(), cut in any::<usize>()) {
            let bytes = client_frame(true, 2, &payload, mask);
            let cut = cut % (bytes.len() + 1);
            let mut buf = BytesMut::from(&bytes[..cut]);
            let first = parse(&mut buf, 1 << 20, false).unwrap();
            if cut < bytes.len() {
                prop_assert!(first.is_none());
                buf.extend_from_slice(&bytes[cut..]);
                let frame = parse(&mut buf, 1 << 20, false).unwrap().unwrap();
                prop_assert_eq!(&frame.payload[..], &payload[..]);
            } else {
                prop_assert_eq!(&first.unwrap().payload[..], &payload[..]);
            }
            prop_assert!(buf.is_empty());
        }

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = parse(&mut buf, 1024, false) {}
        }
    }
}
