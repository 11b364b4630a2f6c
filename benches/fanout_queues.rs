//! Fan-out of one pre-built broadcast frame to 10,000 and to 100,000 connections'
//! outboxes with `Outbox::deliver`: only the queueing (seq check, push, length bound,
//! writer wake-up), no engine, no index, no filter matching. Each connection is an
//! `Arc<Session>` and the frame is reached through `session.outbox`, as the router
//! does. The outboxes are emptied after every iteration, outside the timed part
//! (`iter_custom`), so every iteration queues onto empty outboxes.
//!
//! The bench uses mimalloc, the server's allocator.
//!
//! Run: `cargo bench --bench fanout_queues`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nilecast::auth::Principal;
use nilecast::config::SlowConsumerPolicy;
use nilecast::fanout::change::{Change, DataType, Keys, Namespace, Record};
use nilecast::fanout::outbox::{Delivery, Outbox};
use nilecast::session::Session;
use serde_json::json;

/// The server's allocator (`src/main.rs`), so allocation costs are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn sessions(n: usize) -> Vec<Arc<Session>> {
    let remote = "127.0.0.1:9".parse().expect("static address");
    (0..n)
        .map(|i| {
            let outbox = Outbox::new(1024, SlowConsumerPolicy::Disconnect);
            Arc::new(Session::new(
                i as u64,
                outbox,
                remote,
                Principal::open(None),
                0,
            ))
        })
        .collect()
}

/// A real broadcast frame of an inventory change (about 300 bytes).
fn record() -> Record {
    let data = json!({
        "productId": "product-42", "warehouseId": "warehouse-2", "category": "electronics",
        "name": "Smart Speaker", "sku": "SKU-00042", "quantity": 37,
        "previousQuantity": 41, "change": -4, "reason": "sale",
    });
    let change = Change {
        data_type: DataType::Inventory,
        tenant: Arc::from("default"),
        data: data.as_object().cloned().expect("object"),
    };
    let keys = Keys::extract(change.data_type, &change.data);
    Record::build(1, &change, keys, 1_795_680_000_123)
}

fn deliver(c: &mut Criterion) {
    let record = record();
    let mut group = c.benchmark_group("deliver_one_frame");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for n in [10_000usize, 100_000] {
        let sessions = sessions(n);
        group.sample_size(if n > 10_000 { 20 } else { 50 });
        group.throughput(Throughput::Elements(n as u64));
        // Setup: `n` sessions with empty outboxes (capacity 1024, disconnect policy) and
        // one ~300-byte frame; time `Outbox::deliver` of that frame, with the next seq,
        // to every one of them. Emptied with `Outbox::discard` outside the timed part.
        // Criterion calls the closure once per sample: the seq lives outside it, so it
        // keeps growing and no delivery is refused as a duplicate.
        let mut seq = 0u64;
        group.bench_function(BenchmarkId::new("outboxes", n), |b| {
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    seq += 1;
                    let started = Instant::now();
                    let mut queued = 0usize;
                    for s in &sessions {
                        let outcome = s.outbox.deliver(
                            Namespace::Inventory,
                            seq,
                            &record.frame,
                            None,
                            record.published_us,
                        );
                        queued += usize::from(outcome == Delivery::Queued);
                    }
                    spent += started.elapsed();
                    assert_eq!(queued, n);
                    for s in &sessions {
                        s.outbox.discard();
                    }
                }
                spent
            });
        });
    }
    group.finish();
}

criterion_group!(benches, deliver);
criterion_main!(benches);
