//! The subscription index (`fanout::index::Index`) at scale: 1,000,000 subscriptions,
//! 990,000 of them spread over 100,000 cold keys (9 or 10 each) and 10,000 on one hot
//! key, held by 10,000 sessions (100 subscriptions each, sharing `Arc<Session>`s, as one
//! connection with many subscriptions does). Measured on that populated index:
//!
//! - `index_lookup`: `Index::get` of one key and a walk over its whole list, as the
//!   router does for every key of a change (hot key, a cold key, a key nobody watches,
//!   and the hot key with each candidate's full filter checked against a change).
//! - `index_subscribe`: `Index::insert` of one more subscription (on the hot key, on a
//!   cold key, on a key not in the index yet).
//! - `index_unsubscribe`: `Index::remove` of one subscription (hot key, cold key).
//!
//! The index is built once for the whole file (a few seconds, not timed), and the hot
//! key is churned (200,000 random unsubscribe + resubscribe rounds) until its list has
//! the steady-state shape of a key whose subscribers come and go: about 400 chunks
//! instead of the 79 full ones a one-go build leaves. Every iteration puts the index
//! back the way it found it, outside the timed part (`iter_custom`), so all benches see
//! the same 1,000,000 subscriptions.
//!
//! The bench uses mimalloc, the server's allocator.
//!
//! Run: `cargo bench --bench index`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nilecast::auth::Principal;
use nilecast::config::SlowConsumerPolicy;
use nilecast::fanout::change::{Change, DataType, Keys, Record};
use nilecast::fanout::index::{key_of, Field, Index, Subscription};
use nilecast::fanout::outbox::Outbox;
use nilecast::namespace::filter::Filter;
use nilecast::session::Session;
use serde_json::json;

/// The server's allocator (`src/main.rs`), so allocation costs are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SUBSCRIPTIONS: usize = 1_000_000;
const HOT: usize = 10_000;
const COLD_KEYS: usize = 100_000;
const SESSIONS: usize = 10_000;
const TENANT: &str = "default";
const HOT_PRODUCT: &str = "product-hot";

/// Random unsubscribe + resubscribe rounds on the hot key before measuring.
const CHURN: usize = 200_000;

/// Subscription ids the benches create on top of the populated index.
const EXTRA_ID: u64 = 2_000_000;

struct Populated {
    index: Index,
    tenant: Arc<str>,
    sessions: Vec<Arc<Session>>,
    /// Every registered subscription, by id: 0..HOT on the hot key, the rest cold.
    subs: Vec<Arc<Subscription>>,
    hot_key: u64,
    /// The key of cold product k is `cold_keys[k]`.
    cold_keys: Vec<u64>,
}

fn product_filter(product: &str) -> Filter {
    Filter::Inventory {
        product_ids: Some(vec![Box::from(product)].into_boxed_slice()),
        warehouse_ids: None,
        categories: None,
        low_stock_only: false,
    }
}

fn cold_product(k: usize) -> String {
    format!("product-{k}")
}

/// The product of cold subscription `id` (ids HOT..SUBSCRIPTIONS).
fn cold_product_of(id: usize) -> usize {
    (id - HOT) % COLD_KEYS
}

fn populate() -> Populated {
    let started = Instant::now();
    let remote = "127.0.0.1:9".parse().expect("static address");
    let sessions: Vec<Arc<Session>> = (0..SESSIONS)
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
        .collect();
    let tenant: Arc<str> = Arc::from(TENANT);
    let hot_key = key_of(TENANT, Field::ProductId, HOT_PRODUCT);
    let cold_keys: Vec<u64> = (0..COLD_KEYS)
        .map(|k| key_of(TENANT, Field::ProductId, &cold_product(k)))
        .collect();
    let index = Index::new();
    let subs: Vec<Arc<Subscription>> = (0..SUBSCRIPTIONS)
        .map(|id| {
            let (filter, key) = if id < HOT {
                (product_filter(HOT_PRODUCT), hot_key)
            } else {
                let k = cold_product_of(id);
                (product_filter(&cold_product(k)), cold_keys[k])
            };
            let sub = Arc::new(Subscription {
                id: id as u64,
                session: sessions[id % SESSIONS].clone(),
                tenant: tenant.clone(),
                filter,
            });
            index.insert(&[key], &sub);
            sub
        })
        .collect();
    assert_eq!(index.key_count(), COLD_KEYS + 1);

    // Churn the hot key to its steady state before measuring anything. Built in one go,
    // its list is 79 full chunks; after subscribers come and go (a random one leaves, a
    // new one joins at the end) the older chunks thin out and the list settles at about
    // 400 smaller chunks. Without this the unsubscribe bench, which churns the same way,
    // would drift from the first layout to the second while it runs.
    let mut rng = fastrand::Rng::with_seed(42);
    for _ in 0..CHURN {
        let sub = &subs[rng.usize(..HOT)];
        index.remove(&[hot_key], sub.id);
        index.insert(&[hot_key], sub);
    }
    eprintln!(
        "index: {SUBSCRIPTIONS} subscriptions on {} keys built and churned in {:.1?}; \
         hot key in {} chunks",
        index.key_count(),
        started.elapsed(),
        chunks(&index, hot_key)
    );
    Populated {
        index,
        tenant,
        sessions,
        subs,
        hot_key,
        cold_keys,
    }
}

impl Populated {
    fn new_sub(&self, id: u64, product: &str) -> Arc<Subscription> {
        Arc::new(Subscription {
            id,
            session: self.sessions[id as usize % SESSIONS].clone(),
            tenant: self.tenant.clone(),
            filter: product_filter(product),
        })
    }
}

/// The walk the router does over a key's list; returns how many it saw.
fn walk(index: &Index, key: u64) -> u64 {
    let Some(list) = index.get(key) else {
        return 0;
    };
    let mut seen = 0u64;
    for sub in list.iter().flat_map(|chunk| chunk.iter()) {
        black_box(sub.id);
        seen += 1;
    }
    seen
}

fn inventory_record(product: &str) -> Record {
    let data = json!({
        "productId": product, "warehouseId": "warehouse-1", "category": "electronics",
        "quantity": 50, "previousQuantity": 51,
    });
    let change = Change {
        data_type: DataType::Inventory,
        tenant: Arc::from(TENANT),
        data: data.as_object().cloned().expect("object"),
    };
    let keys = Keys::extract(change.data_type, &change.data);
    Record::build(1, &change, keys, 1_795_680_000_000)
}

/// A fixed pseudo-random walk over the cold keys, so lookups are not cache-friendly.
fn scattered(i: usize) -> usize {
    (i.wrapping_mul(7_919) + 13) % COLD_KEYS
}

fn lookup(c: &mut Criterion, p: &Populated) {
    let mut group = c.benchmark_group("index_lookup");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));

    // Setup: the populated index; get the hot key (10,000 subscriptions) and read the id
    // of each.
    group.throughput(Throughput::Elements(HOT as u64));
    group.bench_function("hot_key_10000_subs", |b| {
        b.iter(|| assert_eq!(walk(&p.index, black_box(p.hot_key)), HOT as u64));
    });

    // Setup: the populated index; the router's full candidate loop on the hot key: get,
    // walk, and `Subscription::matches` (tenant + filter) against an inventory change of
    // the hot product, which every candidate passes.
    let record = inventory_record(HOT_PRODUCT);
    group.bench_function("hot_key_10000_subs_with_filter_match", |b| {
        b.iter(|| {
            let list = p.index.get(black_box(p.hot_key)).expect("hot key");
            let matched = list
                .iter()
                .flat_map(|chunk| chunk.iter())
                .filter(|sub| sub.matches(&record))
                .count();
            assert_eq!(matched, HOT);
        });
    });

    // Setup: the populated index; get one of the 100,000 cold keys (9 or 10
    // subscriptions), a different one each iteration in a scattered order, and walk it.
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("cold_key_10_subs", |b| {
        b.iter(|| {
            i += 1;
            black_box(walk(&p.index, p.cold_keys[scattered(i)]))
        });
    });

    // Setup: the populated index; get a key no subscription is registered under (most of
    // a change's keys, e.g. its warehouse and category when nobody filters on them).
    let missing = key_of(TENANT, Field::WarehouseId, "warehouse-nobody-watches");
    group.bench_function("missing_key", |b| {
        b.iter(|| assert_eq!(walk(&p.index, black_box(missing)), 0));
    });
    group.finish();
}

fn subscribe(c: &mut Criterion, p: &Populated) {
    let mut group = c.benchmark_group("index_subscribe");
    // Short: every timed insert is followed by an untimed remove that costs several
    // times as much on the hot key, so the wall time is a multiple of this.
    group.measurement_time(Duration::from_millis(1500));
    group.warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Elements(1));

    // Setup: the populated index; insert a 10,001st subscription on the hot key (copies
    // the list's chunk pointers and its last, partly full chunk). Removed again outside
    // the timed part.
    group.bench_function(BenchmarkId::new("hot_key", "10000_subs"), |b| {
        let sub = p.new_sub(EXTRA_ID, HOT_PRODUCT);
        let keys = [p.hot_key];
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                p.index.insert(black_box(&keys), &sub);
                spent += started.elapsed();
                p.index.remove(&keys, EXTRA_ID);
            }
            spent
        });
    });

    // Setup: the populated index; insert one subscription on a cold key (9 or 10
    // subscriptions), a different key each iteration. Removed again outside the timed
    // part.
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new("cold_key", "10_subs"), |b| {
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                i += 1;
                let k = scattered(i);
                let sub = p.new_sub(EXTRA_ID, &cold_product(k));
                let keys = [p.cold_keys[k]];
                let started = Instant::now();
                p.index.insert(black_box(&keys), &sub);
                spent += started.elapsed();
                p.index.remove(&keys, EXTRA_ID);
            }
            spent
        });
    });

    // Setup: the populated index; insert one subscription on a key that is not in the
    // index yet (creates the key's entry). Removed again (and the key with it) outside
    // the timed part.
    group.bench_function(BenchmarkId::new("new_key", "0_subs"), |b| {
        let sub = p.new_sub(EXTRA_ID, "product-new");
        let keys = [key_of(TENANT, Field::ProductId, "product-new")];
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                p.index.insert(black_box(&keys), &sub);
                spent += started.elapsed();
                p.index.remove(&keys, EXTRA_ID);
            }
            spent
        });
        assert_eq!(p.index.key_count(), COLD_KEYS + 1);
    });
    group.finish();
}

fn unsubscribe(c: &mut Criterion, p: &Populated) {
    let mut group = c.benchmark_group("index_unsubscribe");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Elements(1));
    let mut rng = fastrand::Rng::with_seed(7);

    // Setup: the populated index; remove a random one of the hot key's 10,000
    // subscriptions (a scan to its chunk, then a copy of the chunk pointers and of that
    // chunk). Put back outside the timed part; it goes to the end of the list, so the
    // removed position stays uniformly random, and the churn keeps the list at the
    // steady state `populate` brought it to.
    group.bench_function(BenchmarkId::new("hot_key", "10000_subs"), |b| {
        let keys = [p.hot_key];
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let sub = &p.subs[rng.usize(..HOT)];
                let started = Instant::now();
                p.index.remove(black_box(&keys), sub.id);
                spent += started.elapsed();
                p.index.insert(&keys, sub);
            }
            spent
        });
    });

    // Setup: the populated index; remove a random cold subscription from its key (9 or
    // 10 subscriptions). Put back outside the timed part.
    group.bench_function(BenchmarkId::new("cold_key", "10_subs"), |b| {
        b.iter_custom(|iterations| {
            let mut spent = Duration::ZERO;
            for _ in 0..iterations {
                let id = rng.usize(HOT..SUBSCRIPTIONS);
                let sub = &p.subs[id];
                let keys = [p.cold_keys[cold_product_of(id)]];
                let started = Instant::now();
                p.index.remove(black_box(&keys), sub.id);
                spent += started.elapsed();
                p.index.insert(&keys, sub);
            }
            spent
        });
    });
    group.finish();
    assert_eq!(walk(&p.index, p.hot_key), HOT as u64);
    eprintln!(
        "index: after the benches the hot key is in {} chunks",
        chunks(&p.index, p.hot_key)
    );
}

fn chunks(index: &Index, key: u64) -> usize {
    index.get(key).map_or(0, |list| list.len())
}

fn index(c: &mut Criterion) {
    let populated = populate();
    lookup(c, &populated);
    subscribe(c, &populated);
    unsubscribe(c, &populated);
}

criterion_group!(benches, index);
criterion_main!(benches);
