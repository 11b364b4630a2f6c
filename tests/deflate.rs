//! permessage-deflate (docs/protocol.md, "2.1 Compression"): negotiated on the upgrade
//! when `PERMESSAGE_DEFLATE` is on, a broadcast compressed once and shared by every
//! compressing subscriber, compressed requests accepted within the message limit, and
//! decompression bombs and bad data closed with 1009 and 1007.

mod common;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};

const OFFER: (&str, &str) = (
    "Sec-WebSocket-Extensions",
    "permessage-deflate; client_max_window_bits",
);

/// A message's compressed bytes as a client sends them (RFC 7692 section 7.2.1).
fn compress(message: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(message.len() + 64);
    loop {
        let done = c.total_in() as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(message.len() + 64);
        }
        c.compress_vec(&message[done..], &mut out, FlushCompress::Sync)
            .expect("compress");
        if c.total_in() as usize == message.len() && out.len() < out.capacity() {
            break;
        }
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A compressed server message's text, decompressed with a `bits` window.
fn inflate(payload: &[u8], bits: u8) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, bits);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("the server's compressed frame decompresses");
    out
}

/// Sends `text` as one compressed message (RSV1 on its frame).
async fn send_compressed(c: &mut RawClient, text: &[u8]) -> bool {
    let mut frame = RawClient::encode_frame(true, OP_TEXT, &compress(text));
    frame[0] |= 0x40;
    c.send_bytes(&frame).await
}

/// The next data frame, skipping control frames.
async fn next_data(c: &mut RawClient) -> Frame {
    loop {
        let f = c
            .read_frame(TIMEOUT)
            .await
            .expect("a frame in time")
            .expect("the connection is open");
        if f.opcode == OP_TEXT || f.opcode == OP_CLOSE {
            return f;
        }
    }
}

/// A data frame's message, decompressed (with a `bits` window) when it is compressed.
fn message(f: &Frame, bits: u8) -> Vec<u8> {
    assert_eq!(f.opcode, OP_TEXT, "closed: {:?}", f.close_code());
    if f.rsv1 {
        inflate(&f.payload, bits)
    } else {
        f.payload.clone()
    }
}

/// The next data frame's JSON, decompressed when it is compressed.
async fn next_json_any(c: &mut RawClient, bits: u8) -> (bool, Value) {
    let f = next_data(c).await;
    let v = serde_json::from_slice(&message(&f, bits)).expect("JSON");
    (f.rsv1, v)
}

/// Reads until the frame carrying `event`; returns it raw and as JSON.
async fn wait_event(c: &mut RawClient, event: &str, bits: u8) -> (Frame, Value) {
    wait_for(c, bits, |v| v["event"] == event).await
}

/// Reads until a frame whose JSON matches; returns it raw and as JSON.
async fn wait_for(c: &mut RawClient, bits: u8, matches: impl Fn(&Value) -> bool) -> (Frame, Value) {
    loop {
        let f = next_data(c).await;
        let v: Value = serde_json::from_slice(&message(&f, bits)).expect("JSON");
        if matches(&v) {
            return (f, v);
        }
    }
}

async fn wait_close(c: &mut RawClient) -> Option<u16> {
    loop {
        match c.read_frame(TIMEOUT).await.expect("a close in time") {
            None => return None,
            Some(f) if f.opcode == OP_CLOSE => return f.close_code(),
            Some(_) => {}
        }
    }
}

fn a_product(id: &str) -> Value {
    let mut change = inv(id, "w-1", 40);
    change["data"]["description"] =
        json!("a long description that compresses well, a long description that compresses well");
    change
}

#[tokio::test]
async fn a_broadcast_is_compressed_once_for_every_connection_that_negotiated_it() {
    let server = spawn_server(&[("PERMESSAGE_DEFLATE", "true")]);
    let port = server.port;
    let mut a = RawClient::connect_with_headers(port, "/ws", &[OFFER]).await;
    let mut b = RawClient::connect_with_headers(port, "/ws", &[OFFER]).await;
    let mut plain = RawClient::connect(port, "/ws").await;
    assert_eq!(
        a.upgrade_header("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert_eq!(plain.upgrade_header("sec-websocket-extensions"), None);

    // A compressed request is understood like a plain one.
    for (c, compressed) in [(&mut a, true), (&mut b, false), (&mut plain, false)] {
        let id = c.next_ack_id();
        let subscribe = json!({"ns": "/inventory", "event": "inventory:subscribe",
                               "data": {"productIds": ["p-1"]}, "ack": id});
        let text = subscribe.to_string();
        if compressed {
            assert!(send_compressed(c, text.as_bytes()).await);
        } else {
            c.send_text(&text).await;
        }
        let (_, reply) = wait_for(c, 15, |v| v["ack"] == id).await;
        assert!(reply["data"]["subscriptionId"].is_string(), "{reply}");
    }

    let seq = publish_one(port, a_product("p-1")).await;
    let (fa, va) = wait_event(&mut a, "inventory:update", 15).await;
    let (fb, vb) = wait_event(&mut b, "inventory:update", 15).await;
    let (fp, vp) = wait_event(&mut plain, "inventory:update", 15).await;
    assert!(fa.rsv1 && fb.rsv1, "compressed for both that negotiated it");
    assert!(!fp.rsv1, "and plain for the one that did not");
    assert_eq!(fa.payload, fb.payload, "one compressed frame, shared");
    assert!(fa.payload.len() < fp.payload.len());
    assert_eq!(va, vp);
    assert_eq!(vb["data"]["seq"], seq);
}

#[tokio::test]
async fn a_client_with_a_small_window_gets_only_frames_that_fit_it_compressed() {
    let server = spawn_server(&[("PERMESSAGE_DEFLATE", "true")]);
    let port = server.port;
    let offer = (
        "Sec-WebSocket-Extensions",
        "permessage-deflate; server_max_window_bits=9",
    );
    let mut c = RawClient::connect_with_headers(port, "/ws", &[offer]).await;
    assert_eq!(
        c.upgrade_header("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9")
    );
    c.subscribe("/inventory", json!({"productIds": ["small", "large"]}))
        .await;
    publish_one(port, a_product("small")).await;
    let mut large = a_product("large");
    large["data"]["description"] = json!("x".repeat(2000));
    publish_one(port, large).await;
    let (small_frame, small) = wait_event(&mut c, "inventory:update", 9).await;
    assert_eq!(small["data"]["data"]["productId"], "small");
    assert!(
        small_frame.rsv1,
        "a frame under 512 bytes fits a 9-bit window"
    );
    let (large_frame, large) = wait_event(&mut c, "inventory:update", 9).await;
    assert_eq!(large["data"]["data"]["productId"], "large");
    assert!(
        !large_frame.rsv1,
        "a 2 KB frame does not: it goes uncompressed"
    );
}

#[tokio::test]
async fn a_decompression_bomb_closes_with_1009_and_is_counted() {
    let server = spawn_server(&[
        ("PERMESSAGE_DEFLATE", "true"),
        ("MAX_MESSAGE_BYTES", "65536"),
    ]);
    let port = server.port;
    let mut bystander = RawClient::connect_with_headers(port, "/ws", &[OFFER]).await;
    bystander
        .subscribe("/inventory", json!({"productIds": ["p-1"]}))
        .await;

    // 8 MiB of one byte compresses to a few KiB: within the limit on the wire.
    let mut bomb = RawClient::connect_with_headers(port, "/ws", &[OFFER]).await;
    let bytes = vec![b' '; 8 << 20];
    assert!(compress(&bytes).len() < 65536);
    send_compressed(&mut bomb, &bytes).await;
    assert_eq!(wait_close(&mut bomb).await, Some(1009));

    let mut garbage = RawClient::connect_with_headers(port, "/ws", &[OFFER]).await;
    let mut frame = RawClient::encode_frame(true, OP_TEXT, &[0xff, 0xfe, 0xfd, 0xfc]);
    frame[0] |= 0x40;
    garbage.send_bytes(&frame).await;
    assert_eq!(wait_close(&mut garbage).await, Some(1007));

    let refused = |m: &Value| {
        m["websocket"]["compressedMessagesRefused"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        wait_until(TIMEOUT, || async { refused(&metrics(port).await) == 2 }).await,
        "both refusals counted: {}",
        metrics(port).await
    );
    // The others were not held up.
    publish_one(port, a_product("p-1")).await;
    let (_, v) = wait_event(&mut bystander, "inventory:update", 15).await;
    assert_eq!(v["data"]["data"]["productId"], "p-1");
}

#[tokio::test]
async fn without_the_setting_the_offer_is_declined_and_rsv1_is_a_protocol_error() {
    let server = spawn_server(&[]);
    let mut c = RawClient::connect_with_headers(server.port, "/ws", &[OFFER]).await;
    assert_eq!(c.upgrade_header("sec-websocket-extensions"), None);
    let (compressed, hello) = next_json_any(&mut c, 15).await;
    assert!(!compressed);
    assert_eq!(hello["event"], "connection:established");
    send_compressed(&mut c, br#"{"ns":"/","event":"ping"}"#).await;
    assert_eq!(wait_close(&mut c).await, Some(1002));
}

#[tokio::test]
async fn socketio_connections_negotiate_it_too() {
    let server = spawn_server(&[("PERMESSAGE_DEFLATE", "true")]);
    let mut c = RawClient::connect_with_headers(
        server.port,
        "/socket.io/?EIO=4&transport=websocket",
        &[OFFER],
    )
    .await;
    assert!(c
        .upgrade_header("sec-websocket-extensions")
        .is_some_and(|v| v.starts_with("permessage-deflate")));
    // The Engine.IO open packet arrives, then a compressed CONNECT is answered.
    let open = message(&next_data(&mut c).await, 15);
    assert_eq!(open.first(), Some(&b'0'));
    send_compressed(&mut c, b"40/inventory,").await;
    let reply = String::from_utf8(message(&next_data(&mut c).await, 15)).expect("text");
    assert!(reply.starts_with("40/inventory,{"), "{reply}");
}
