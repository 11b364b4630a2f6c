//! Publishing one change through the engine: the whole publish path (seq, encode once,
//! store, alerts, replay ring, index lookup, matching, queueing) for subscribers on one
//! key and spread over many keys. Queues are emptied between iterations, outside the
//! timed part, so every iteration does the same work.
//!
//! Run: `cargo bench --bench fanout`. The README quotes the figures with the machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nilecast::alerts::Alerts;
use nilecast::auth::Principal;
use nilecast::config::SlowConsumerPolicy;
use nilecast::domain::Domain;
use nilecast::fanout::change::{Change, DataType};
use nilecast::fanout::outbox::Outbox;
use nilecast::fanout::{Engine, Inlet};
use nilecast::metrics::Metrics;
use nilecast::namespace::filter::Filter;
use nilecast::session::Session;
use nilecast::store::MemoryStore;
use nilecast::Config;
use serde_json::json;

/// The server's allocator, so the figures match what the server does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SUBSCRIBERS: usize = 10_000;

/// An engine with the server's rules and `SUBSCRIBERS` connections, each subscribed to
/// one of `keys` products; and its inlet, as the in-memory bus holds it.
fn setup(keys: usize) -> (Inlet, Vec<Arc<Session>>) {
    let config = Config::for_tests();
    let rules = Arc::new(Domain {
        store: Arc::new(MemoryStore::new()),
        alerts: Arc::new(Alerts::new(&config)),
        default_threshold: config.low_stock_threshold,
    });
    let (engine, inlet) = Engine::new(
        config.engine_settings(),
        rules,
        Arc::new(nilecast::fanout::WakeTasks),
        Metrics::new().engine,
    );
    let remote = "127.0.0.1:9".parse().expect("static address");
    let sessions: Vec<Arc<Session>> = (0..SUBSCRIBERS)
        .map(|i| {
            let outbox = Outbox::new(1 << 20, SlowConsumerPolicy::Disconnect);
            let session = Arc::new(Session::new(
                i as u64,
                outbox,
                remote,
                Principal::open(None),
                0,
            ));
            let data = json!({ "productIds": [format!("p-{}", i % keys)] });
            let filter =
                Filter::inventory(data.as_object().expect("object"), 100).expect("valid filter");
            let grant = session.grant();
            let _ = engine.subscribe(&session, &grant, filter, None, None, |_| None);
            session
        })
        .collect();
    (inlet, sessions)
}

fn change(product: usize) -> Change {
    let data = json!({
        "productId": format!("p-{product}"), "warehouseId": "warehouse-1", "category": "electronics",
        "quantity": 50, "previousQuantity": 51, "sentAt": 1_795_680_000_000u64,
    });
    Change {
        data_type: DataType::Inventory,
        tenant: Arc::from("default"),
        data: data.as_object().cloned().expect("object"),
    }
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_one_change");
    group.measurement_time(Duration::from_secs(8));
    for keys in [1usize, 1000] {
        let (inlet, sessions) = setup(keys);
        let per_change = SUBSCRIBERS / keys;
        group.throughput(Throughput::Elements(per_change as u64));
        let name = format!("{SUBSCRIBERS}_subscribers_over_{keys}_keys");
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut product = 0usize;
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    product = (product + 1) % keys;
                    let change = change(product);
                    let started = Instant::now();
                    inlet.sequence(std::slice::from_ref(&change));
                    spent += started.elapsed();
                    for s in sessions.iter().skip(product).step_by(keys) {
                        s.outbox.discard();
                    }
                }
                spent
            });
        });
    }
    group.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
