//! Encoding one change and parsing one client frame: serde_json (what nilecast uses)
//! against simd-json (0.15, serde-compatible, runtime CPU detection).
//!
//! - `encode_inventory_change`: the engine's encode-once step for a typical inventory
//!   change of the simulator (9 fields in `data`): `Record::build` as the engine calls it
//!   (P with serde_json, then the WebSocket frame around it), the same record with P
//!   written by `simd_json::to_writer`, and P alone with serde_json, with simd-json's
//!   serde writer, and with simd-json's own `OwnedValue` writer (which would need `data`
//!   kept as an `OwnedValue` instead of a `serde_json::Map`).
//! - `parse_subscribe_frame`: a client `inventory:subscribe` frame (169 bytes) parsed by
//!   `protocol::native::parse_request` (the real path: nesting check + serde_json), by
//!   `serde_json::from_slice` into a `serde_json::Value`, and by simd-json into the same
//!   `serde_json::Value` (the drop-in), into its own `OwnedValue`, and with reused
//!   parser buffers. simd-json parses in place, so each iteration gets a fresh copy of
//!   the frame, made outside the timed part (`iter_batched_ref`).
//!
//! Every variant is checked, before timing, to produce the same bytes (or the same
//! value) as the serde_json one.
//!
//! The bench uses mimalloc, the server's allocator.
//!
//! Socket.IO packet parsing is not benched: the Socket.IO codec does not exist yet.
//!
//! Run: `cargo bench --bench encode`.
//!
//! Result on this machine (Intel(R) Xeon(R) Processor, AVX2 and AVX-512, 2 vCPUs
//! shared with other work; medians of one run): serde_json wins on everything nilecast
//! does. Absolute figures moved by up to 1.7x between runs of the same code on this
//! machine, so only the conclusions after the table, which held in four runs, count.
//!
//! | bench                                              | median  |
//! | -------------------------------------------------- | ------- |
//! | encode: `Record::build`, serde_json (the engine)   | 680 ns  |
//! | encode: same record, P by simd-json                | 772 ns  |
//! | encode: P alone, serde_json                        | 507 ns  |
//! | encode: P alone, simd-json serde writer            | 583 ns  |
//! | encode: P alone, simd-json `OwnedValue` writer     | 532 ns  |
//! | parse: `native::parse_request`                     | 1.36 us |
//! | parse: serde_json into `serde_json::Value`         | 1.01 us |
//! | parse: simd-json into `serde_json::Value`          | 1.47 us |
//! | parse: same, reused `Buffers`                      | 917 ns  |
//! | parse: simd-json into its own `OwnedValue`         | 688 ns  |
//!
//! Encoding P, serde_json is 8-16% faster than simd-json's serde writer, and simd-json's
//! own writer (which would need `data` in its value type) is no faster than serde_json.
//! Parsing, simd-json wins only into its own `OwnedValue` (about a third less per
//! subscribe frame), which the handlers (`serde_json::Map` everywhere) can not take;
//! into a `serde_json::Value` it is within noise of serde_json at best (with reused
//! buffers). At these sizes (150-300 bytes) simd-json's fixed costs outweigh its SIMD
//! scanning.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nilecast::fanout::change::{Change, DataType, Keys, Record};
use nilecast::protocol::native;
use nilecast::time;
use serde_json::{json, Value};
use simd_json::prelude::Writable;

/// The server's allocator (`src/main.rs`), so allocation costs are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEQ: u64 = 1_795_680_000_000_123;
const TIMESTAMP_MS: u64 = 1_795_680_000_123;

/// An inventory change as the simulator publishes it.
fn inventory_change() -> Change {
    let data = json!({
        "productId": "product-42", "warehouseId": "warehouse-2", "category": "electronics",
        "name": "Smart Speaker", "sku": "SKU-00042", "quantity": 37,
        "previousQuantity": 41, "change": -4, "reason": "sale",
    });
    Change {
        data_type: DataType::Inventory,
        tenant: Arc::from("default"),
        data: data.as_object().cloned().expect("object"),
    }
}

/// P's fixed head, byte for byte as `fanout::change` writes it; `data` follows.
fn payload_head(out: &mut Vec<u8>, seq: u64, change: &Change, timestamp_ms: u64) {
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"type\":\"");
    out.extend_from_slice(change.data_type.change_type().as_bytes());
    out.extend_from_slice(b"\",\"timestamp\":\"");
    out.extend_from_slice(time::iso8601(timestamp_ms).as_bytes());
    out.extend_from_slice(b"\",\"tenantId\":");
}

/// P with serde_json: a copy of `fanout::change::change_payload`, which is private.
fn payload_serde_json(seq: u64, change: &Change, timestamp_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    payload_head(&mut out, seq, change, timestamp_ms);
    serde_json::to_writer(&mut out, &*change.tenant).expect("in-memory write");
    out.extend_from_slice(b",\"data\":");
    serde_json::to_writer(&mut out, &change.data).expect("in-memory write");
    out.push(b'}');
    out
}

/// The same P with simd-json's serde writer, from the same `serde_json::Map`.
fn payload_simd_json(seq: u64, change: &Change, timestamp_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    payload_head(&mut out, seq, change, timestamp_ms);
    simd_json::to_writer(&mut out, &*change.tenant).expect("in-memory write");
    out.extend_from_slice(b",\"data\":");
    simd_json::to_writer(&mut out, &change.data).expect("in-memory write");
    out.push(b'}');
    out
}

/// The same P with simd-json's own value writer, `data` held as an `OwnedValue`.
fn payload_simd_owned(
    seq: u64,
    change: &Change,
    data: &simd_json::OwnedValue,
    timestamp_ms: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    payload_head(&mut out, seq, change, timestamp_ms);
    simd_json::to_writer(&mut out, &*change.tenant).expect("in-memory write");
    out.extend_from_slice(b",\"data\":");
    data.write(&mut out).expect("in-memory write");
    out.push(b'}');
    out
}

/// `Record::build` with P from simd-json: everything else as in `fanout::change`.
fn record_simd_json(seq: u64, change: &Change, keys: Keys, timestamp_ms: u64) -> Record {
    let payload = payload_simd_json(seq, change, timestamp_ms);
    let ns = change.data_type.namespace();
    let (frame, range) = native::broadcast_frame(ns, change.data_type.event(), &payload);
    Record::assemble(seq, change, keys, timestamp_ms, frame, range)
}

fn encode(c: &mut Criterion) {
    let change = inventory_change();
    let keys = Keys::extract(change.data_type, &change.data);
    let mut data_text = serde_json::to_vec(&change.data).expect("in-memory write");
    let owned = simd_json::to_owned_value(&mut data_text).expect("valid JSON");

    // The variants must produce the engine's bytes, or the comparison means nothing.
    let reference = Record::build(SEQ, &change, keys.clone(), TIMESTAMP_MS);
    let simd = record_simd_json(SEQ, &change, keys.clone(), TIMESTAMP_MS);
    assert_eq!(reference.frame, simd.frame);
    let p = payload_serde_json(SEQ, &change, TIMESTAMP_MS);
    assert_eq!(Bytes::from(p.clone()), reference.payload);
    assert_eq!(p, payload_simd_json(SEQ, &change, TIMESTAMP_MS));
    assert_eq!(p, payload_simd_owned(SEQ, &change, &owned, TIMESTAMP_MS));

    let mut group = c.benchmark_group("encode_inventory_change");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Bytes(reference.frame.len() as u64));

    // Setup: one inventory change (9 fields) and its extracted `Keys` (cloned outside the
    // timed part, since `Record::build` takes them by value); time `Record::build`: P
    // with serde_json, the frame around it, the record.
    group.bench_function("record_build_serde_json", |b| {
        b.iter_batched(
            || keys.clone(),
            |keys| Record::build(black_box(SEQ), black_box(&change), keys, TIMESTAMP_MS),
            BatchSize::SmallInput,
        );
    });

    // Setup: as above; the same record with P written by `simd_json::to_writer`.
    group.bench_function("record_build_simd_json", |b| {
        b.iter_batched(
            || keys.clone(),
            |keys| record_simd_json(black_box(SEQ), black_box(&change), keys, TIMESTAMP_MS),
            BatchSize::SmallInput,
        );
    });

    group.throughput(Throughput::Bytes(p.len() as u64));
    // Setup: the same change; P alone, serde_json (the engine's `change_payload`).
    group.bench_function("payload_serde_json", |b| {
        b.iter(|| payload_serde_json(black_box(SEQ), black_box(&change), TIMESTAMP_MS));
    });

    // Setup: the same change; P alone, `simd_json::to_writer` on the same
    // `serde_json::Map`.
    group.bench_function("payload_simd_json_serde_writer", |b| {
        b.iter(|| payload_simd_json(black_box(SEQ), black_box(&change), TIMESTAMP_MS));
    });

    // Setup: the same change with `data` converted once (not timed) to
    // `simd_json::OwnedValue`; P alone, written by `Writable::write`.
    group.bench_function("payload_simd_json_owned_value", |b| {
        b.iter(|| {
            payload_simd_owned(
                black_box(SEQ),
                black_box(&change),
                black_box(&owned),
                TIMESTAMP_MS,
            )
        });
    });
    group.finish();
}

/// A client subscribe frame as the test page sends it.
const SUBSCRIBE: &[u8] = br#"{"ns":"/inventory","event":"inventory:subscribe","data":{"productIds":["product-1","product-2","product-3"],"warehouseIds":["warehouse-1"],"lowStockOnly":false},"ack":7}"#;

fn parse(c: &mut Criterion) {
    let expected: Value = serde_json::from_slice(SUBSCRIBE).expect("valid JSON");
    let mut copy = SUBSCRIBE.to_vec();
    let drop_in: Value = simd_json::from_slice(&mut copy).expect("valid JSON");
    assert_eq!(expected, drop_in);
    let mut copy = SUBSCRIBE.to_vec();
    let owned = simd_json::to_owned_value(&mut copy).expect("valid JSON");
    assert_eq!(
        serde_json::to_value(&owned).expect("convertible"),
        expected,
        "simd-json OwnedValue differs"
    );
    assert!(native::parse_request(SUBSCRIBE).is_ok());

    let mut group = c.benchmark_group("parse_subscribe_frame");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Bytes(SUBSCRIBE.len() as u64));
    let fresh = || SUBSCRIBE.to_vec();

    // Setup: the frame in a fresh buffer (not timed); the server's parse:
    // `native::parse_request` (nesting scan + `serde_json::from_slice` + field checks).
    group.bench_function("native_parse_request_serde_json", |b| {
        b.iter_batched_ref(
            fresh,
            |buf| native::parse_request(black_box(buf)).is_ok(),
            BatchSize::SmallInput,
        );
    });

    // Setup: as above; `serde_json::from_slice` into a `serde_json::Value`.
    group.bench_function("serde_json_from_slice_value", |b| {
        b.iter_batched_ref(
            fresh,
            |buf| serde_json::from_slice::<Value>(black_box(buf)).expect("valid"),
            BatchSize::SmallInput,
        );
    });

    // Setup: as above; `simd_json::from_slice` into a `serde_json::Value` (the drop-in
    // replacement; it parses in place, hence the fresh copy).
    group.bench_function("simd_json_from_slice_serde_value", |b| {
        b.iter_batched_ref(
            fresh,
            |buf| simd_json::from_slice::<Value>(black_box(buf)).expect("valid"),
            BatchSize::SmallInput,
        );
    });

    // Setup: as above; `simd_json::to_owned_value` into its own value type.
    group.bench_function("simd_json_to_owned_value", |b| {
        b.iter_batched_ref(
            fresh,
            |buf| simd_json::to_owned_value(black_box(buf)).expect("valid"),
            BatchSize::SmallInput,
        );
    });

    // Setup: as above, plus one `simd_json::Buffers` kept across iterations (what a
    // reader task would keep); `from_slice_with_buffers` into a `serde_json::Value`.
    group.bench_function("simd_json_from_slice_serde_value_reused_buffers", |b| {
        let mut buffers = simd_json::Buffers::new(SUBSCRIBE.len());
        b.iter_batched_ref(
            fresh,
            |buf| {
                simd_json::serde::from_slice_with_buffers::<Value>(black_box(buf), &mut buffers)
                    .expect("valid")
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, encode, parse);
criterion_main!(benches);
