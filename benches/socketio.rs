//! Socket.IO v4 packet parsing and encoding (`protocol::socketio`), next to the native
//! codec for the same request, so the two protocols' per-message costs compare in one
//! run.
//!
//! - `parse`: a client `inventory:subscribe` request with an ack id as a Socket.IO
//!   EVENT packet (`42/inventory,17["inventory:subscribe",{...}]`) through
//!   `socketio::decode`, and the same request as a native frame through
//!   `native::parse_request`; plus an Engine.IO ping (`2`).
//! - `encode`: an `inventory:update` EVENT around an already-encoded change payload
//!   (what the broadcast path will splice once per change), and an ACK reply.
//!
//! The bench uses mimalloc, the server's allocator. Run: `cargo bench --bench socketio`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use nilecast::protocol::{native, socketio};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SOCKETIO_SUBSCRIBE: &str = r#"42/inventory,17["inventory:subscribe",{"productIds":["product-1","product-2"],"warehouseIds":["warehouse-1"],"lowStockOnly":false,"sinceSeq":1795680000000123}]"#;
const NATIVE_SUBSCRIBE: &[u8] = br#"{"ns":"/inventory","event":"inventory:subscribe","data":{"productIds":["product-1","product-2"],"warehouseIds":["warehouse-1"],"lowStockOnly":false,"sinceSeq":1795680000000123},"ack":17}"#;
const PAYLOAD: &[u8] = br#"{"seq":1795680000000123,"type":"inventory_update","timestamp":"2026-11-26T08:00:00.123Z","tenantId":"default","data":{"productId":"product-42","warehouseId":"warehouse-2","category":"electronics","name":"Smart Speaker","sku":"SKU-00042","quantity":37,"previousQuantity":41,"change":-4,"reason":"sale"}}"#;

fn parse(c: &mut Criterion) {
    assert!(socketio::decode(SOCKETIO_SUBSCRIBE).is_ok());
    assert!(native::parse_request(NATIVE_SUBSCRIBE).is_ok());
    let mut group = c.benchmark_group("parse");
    group.bench_function("socketio_event_subscribe", |b| {
        b.iter(|| socketio::decode(black_box(SOCKETIO_SUBSCRIBE)))
    });
    group.bench_function("native_subscribe", |b| {
        b.iter(|| native::parse_request(black_box(NATIVE_SUBSCRIBE)))
    });
    group.bench_function("socketio_ping", |b| {
        b.iter(|| socketio::decode(black_box("2")))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.bench_function("socketio_event_update", |b| {
        b.iter(|| {
            socketio::event(
                black_box("/inventory"),
                "inventory:update",
                black_box(PAYLOAD),
            )
        })
    });
    group.bench_function("socketio_ack", |b| {
        b.iter(|| {
            socketio::ack(
                black_box("/inventory"),
                17,
                black_box(br#"{"subscriptionId":"sub-1"}"#),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
