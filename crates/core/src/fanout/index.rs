//! The subscription index: from a key (tenant, field, value) to the subscriptions
//! registered under it.
//!
//! Shape: a `DashMap` (sharded locks) from a 64-bit key hash to an `ArcSwap` of an
//! immutable list. The broadcaster takes a shard's read lock only long enough to clone
//! the list's `Arc`, then iterates with no lock held; subscribe and unsubscribe build a
//! new list and swap it in (copy-on-write), so a reader is never blocked by them and
//! never sees a half-updated list. Writers are serialized by one mutex, which makes
//! removing an emptied key safe against a concurrent add.
//!
//! Keys are hashes, not strings, so a lookup allocates nothing. Two keys may collide;
//! that only adds candidates, because every candidate's full filter, tenant included, is
//! checked before delivery. The tenant is part of every key.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::fanout::change::{Namespace, Record};
use crate::namespace::filter::Filter;
use crate::session::Session;

/// The field a subscription is registered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    ProductId,
    WarehouseId,
    Category,
    OrderId,
    OrderCustomer,
    ActivityCustomer,
    ActivityType,
    NotificationType,
    /// Every change of the namespace.
    Any(Namespace),
}

/// The index key of (tenant, field, value).
pub fn key_of(tenant: &str, field: Field, value: &str) -> u64 {
    // DefaultHasher::new() has fixed keys, so a key is stable for the process's life.
    let mut h = DefaultHasher::new();
    tenant.hash(&mut h);
    field.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

/// One registered subscription.
pub struct Subscription {
    pub id: u64,
    pub session: Arc<Session>,
    pub tenant: Arc<str>,
    pub filter: Filter,
}

impl Subscription {
    pub fn matches(&self, record: &Record) -> bool {
        *self.tenant == *record.tenant && self.filter.matches(record.data_type, &record.keys)
    }
}

/// Subscriptions per chunk of a list. A subscribe or unsubscribe copies one chunk plus
/// the list of chunk pointers instead of the whole list, so registering n subscribers on
/// one key costs O(n * (n / CHUNK + CHUNK)) pointer copies instead of O(n^2). 128 keeps a
/// 10,000-subscriber key at about 80 chunks; it was not tuned further.
const CHUNK: usize = 128;

pub type Chunk = Arc<Vec<Arc<Subscription>>>;

/// A snapshot of one key's subscriptions.
pub type List = Arc<Vec<Chunk>>;

#[derive(Default)]
pub struct Index {
    lists: DashMap<u64, ArcSwap<Vec<Chunk>>>,
    writer: Mutex<()>,
    /// (key, subscription) entries: a gauge, and how a leak would show.
    entries: std::sync::atomic::AtomicUsize,
}

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    /// The subscriptions under `key`, as a snapshot.
    pub fn get(&self, key: u64) -> Option<List> {
        self.lists.get(&key).map(|entry| entry.load_full())
    }

    pub fn insert(&self, keys: &[u64], sub: &Arc<Subscription>) {
        let _writer = self.writer.lock();
        for &key in keys {
            let entry = self
                .lists
                .entry(key)
                .or_insert_with(|| ArcSwap::from_pointee(Vec::new()));
            let current = entry.load();
            let mut chunks: Vec<Chunk> = current.iter().cloned().collect();
            // Fill the first chunk with room, not just the last: removals leave holes all
            // over the list, and refilling them keeps it near n / CHUNK chunks under
            // churn (appending only, a 10,000-subscriber key drifted from 79 chunks to
            // about 410 in the index bench, and every insert copies the chunk list).
            match chunks.iter_mut().find(|c| c.len() < CHUNK) {
                Some(chunk) => {
                    let mut grown = Vec::with_capacity(chunk.len() + 1);
                    grown.extend(chunk.iter().cloned());
                    grown.push(sub.clone());
                    *chunk = Arc::new(grown);
                }
                None => chunks.push(Arc::new(vec![sub.clone()])),
            }
            entry.store(Arc::new(chunks));
            self.entries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn remove(&self, keys: &[u64], sub_id: u64) {
        let _writer = self.writer.lock();
        for &key in keys {
            let emptied = match self.lists.get(&key) {
                Some(entry) => {
                    let current = entry.load();
                    let Some(at) = current
                        .iter()
                        .position(|c| c.iter().any(|s| s.id == sub_id))
                    else {
                        continue;
                    };
                    let mut chunks: Vec<Chunk> = current.iter().cloned().collect();
                    let shrunk: Vec<_> = chunks[at]
                        .iter()
                        .filter(|s| s.id != sub_id)
                        .cloned()
                        .collect();
                    self.entries
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    if shrunk.is_empty() {
                        chunks.remove(at);
                    } else {
                        chunks[at] = Arc::new(shrunk);
                    }
                    let empty = chunks.is_empty();
                    entry.store(Arc::new(chunks));
                    empty
                }
                None => false,
            };
            if emptied {
                self.lists.remove_if(&key, |_, list| list.load().is_empty());
            }
        }
    }

    /// Number of keys in use.
    pub fn key_count(&self) -> usize {
        self.lists.len()
    }

    /// Number of (key, subscription) entries.
    pub fn entry_count(&self) -> usize {
        self.entries.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use serde_json::{json, Value};

    use super::*;
    use crate::auth::Principal;
    use crate::fanout::change::{DataType, Keys, Priority};
    use crate::fanout::outbox::{Outbox, SlowConsumerPolicy};
    use crate::namespace::filter::change_keys;

    fn session() -> Arc<Session> {
        let remote = "127.0.0.1:9".parse().expect("static address");
        let outbox = Outbox::new(16, SlowConsumerPolicy::Disconnect);
        Arc::new(Session::new(1, outbox, remote, Principal::open(None), 0))
    }

    fn subscription(
        id: u64,
        session: &Arc<Session>,
        tenant: &str,
        filter: Filter,
    ) -> Arc<Subscription> {
        Arc::new(Subscription {
            id,
            session: session.clone(),
            tenant: Arc::from(tenant),
            filter,
        })
    }

    fn any_inventory() -> Filter {
        Filter::Inventory {
            product_ids: None,
            warehouse_ids: None,
            categories: None,
            low_stock_only: false,
        }
    }

    /// The ids under `key`, sorted, repeats kept (a subscription listed twice would show).
    fn ids(index: &Index, key: u64) -> Vec<u64> {
        let mut ids: Vec<u64> = index
            .get(key)
            .map(|list| list.iter().flat_map(|c| c.iter()).map(|s| s.id).collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// Compares the index with the model: the subscriptions under every key, the number
    /// of keys in use and of entries; and the list's shape (no chunk empty or oversized).
    fn check(index: &Index, pool: &[u64], model: &BTreeMap<u64, Vec<u64>>, step: usize) {
        for &key in pool {
            let mut expected = model.get(&key).cloned().unwrap_or_default();
            expected.sort_unstable();
            assert_eq!(ids(index, key), expected, "key {key:x} at step {step}");
            if let Some(list) = index.get(key) {
                assert!(
                    list.iter().all(|c| !c.is_empty() && c.len() <= CHUNK),
                    "chunk sizes {:?} at step {step}",
                    list.iter().map(|c| c.len()).collect::<Vec<_>>()
                );
            }
        }
        let used = model.values().filter(|ids| !ids.is_empty()).count();
        assert_eq!(index.key_count(), used, "key_count at step {step}");
        let entries: usize = model.values().map(Vec::len).sum();
        assert_eq!(index.entry_count(), entries, "entry_count at step {step}");
    }

    #[test]
    fn random_inserts_and_removals_agree_with_a_model() {
        let session = session();
        // Keys of several tenants and fields, some sharing a value, so that a key which
        // ignored its tenant or field would mix lists up.
        let pool: Vec<u64> = [
            key_of("t1", Field::ProductId, "p"),
            key_of("t1", Field::WarehouseId, "p"),
            key_of("t2", Field::ProductId, "p"),
            key_of("t1", Field::ProductId, "q"),
            key_of("t1", Field::Any(Namespace::Inventory), "*"),
            key_of("t1", Field::OrderId, "p"),
        ]
        .to_vec();
        assert_eq!(pool.iter().collect::<HashSet<_>>().len(), pool.len());

        let index = Index::new();
        let mut model: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut live: Vec<(u64, Vec<u64>)> = Vec::new();
        let mut removed: Vec<(u64, Vec<u64>)> = Vec::new();
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut next_id = 0u64;
        // 3000 steps, three in five an insert: about 600 subscriptions are live at the
        // end, about 200 per key, so every list spans more than one chunk (CHUNK is 128)
        // and removals leave holes in them.
        for step in 0..3000 {
            if live.is_empty() || rng.u8(..5) < 3 {
                let mut keys = pool.clone();
                rng.shuffle(&mut keys);
                keys.truncate(rng.usize(1..=3));
                next_id += 1;
                let sub = subscription(next_id, &session, "t1", any_inventory());
                index.insert(&keys, &sub);
                for key in &keys {
                    model.entry(*key).or_default().push(next_id);
                }
                live.push((next_id, keys));
            } else if !removed.is_empty() && rng.u8(..10) == 0 {
                // Removing what is gone already changes nothing.
                let (id, keys) = &removed[rng.usize(..removed.len())];
                index.remove(keys, *id);
            } else {
                let (id, keys) = live.swap_remove(rng.usize(..live.len()));
                index.remove(&keys, id);
                for key in &keys {
                    model.get_mut(key).expect("modelled").retain(|&i| i != id);
                }
                removed.push((id, keys));
            }
            check(&index, &pool, &model, step);
        }
        assert!(live.len() > 400, "only {} live subscriptions", live.len());
        assert!(
            pool.iter()
                .all(|&k| index.get(k).is_some_and(|l| l.len() > 1)),
            "a key's list never grew past one chunk"
        );

        rng.shuffle(&mut live);
        for (step, (id, keys)) in live.into_iter().enumerate() {
            index.remove(&keys, id);
            for key in &keys {
                model.get_mut(key).expect("modelled").retain(|&i| i != id);
            }
            check(&index, &pool, &model, 3000 + step);
        }
        assert_eq!(index.key_count(), 0);
        assert_eq!(index.entry_count(), 0);
        assert!(pool.iter().all(|&k| index.get(k).is_none()));
    }

    #[test]
    fn removing_an_unknown_subscription_or_key_changes_nothing() {
        let session = session();
        let index = Index::new();
        let key = key_of("t1", Field::ProductId, "p");
        let other = key_of("t1", Field::ProductId, "q");
        index.insert(&[key], &subscription(1, &session, "t1", any_inventory()));
        index.remove(&[key], 2);
        index.remove(&[other], 1);
        assert_eq!(ids(&index, key), vec![1]);
        assert_eq!((index.key_count(), index.entry_count()), (1, 1));
        index.remove(&[key], 1);
        index.remove(&[key], 1);
        assert_eq!((index.key_count(), index.entry_count()), (0, 0));
    }

    #[test]
    fn a_snapshot_is_not_changed_by_later_writes() {
        let session = session();
        let index = Index::new();
        let key = key_of("t1", Field::ProductId, "p");
        index.insert(&[key], &subscription(1, &session, "t1", any_inventory()));
        let before = index.get(key).expect("key in use");
        index.insert(&[key], &subscription(2, &session, "t1", any_inventory()));
        index.remove(&[key], 1);
        let ids_before: Vec<u64> = before.iter().flat_map(|c| c.iter()).map(|s| s.id).collect();
        assert_eq!(ids_before, vec![1]);
        assert_eq!(ids(&index, key), vec![2]);
    }

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    /// One case per index key a filter can be registered under: the filter, the key it
    /// must produce, and the keys of a change that must find it and of one that must not
    /// (None for wildcards, which every change of the namespace finds).
    struct Case {
        filter: Filter,
        key: u64,
        data_type: DataType,
        hit: Keys,
        miss: Option<Keys>,
    }

    fn cases(tenant: &str) -> Vec<Case> {
        let inventory = |product: &str, warehouse: &str, category: &str| Keys {
            product_id: Some(product.into()),
            warehouse_id: Some(warehouse.into()),
            category: Some(category.into()),
            quantity: Some(500.0),
            threshold: Some(10.0),
            ..Keys::default()
        };
        let order = |order: &str, customer: &str| Keys {
            order_id: Some(order.into()),
            customer_id: Some(customer.into()),
            status: Some("shipped".into()),
            ..Keys::default()
        };
        let activity = |customer: &str, kind: &str| Keys {
            customer_id: Some(customer.into()),
            activity_type: Some(kind.into()),
            ..Keys::default()
        };
        let notification = |kind: &str| Keys {
            notification_type: Some(kind.into()),
            priority: Some(Priority::High),
            ..Keys::default()
        };
        let key = |field: Field, value: &str| key_of(tenant, field, value);
        let max = 100;
        vec![
            Case {
                filter: Filter::inventory(
                    &obj(json!({"productIds": ["p1"], "warehouseIds": ["w1"]})),
                    max,
                )
                .unwrap(),
                key: key(Field::ProductId, "p1"),
                data_type: DataType::Inventory,
                hit: inventory("p1", "w1", "c1"),
                miss: Some(inventory("p2", "w1", "c1")),
            },
            Case {
                filter: Filter::inventory(
                    &obj(json!({"warehouseIds": ["w1"], "categories": ["c1"]})),
                    max,
                )
                .unwrap(),
                key: key(Field::WarehouseId, "w1"),
                data_type: DataType::Inventory,
                hit: inventory("p1", "w1", "c1"),
                miss: Some(inventory("p1", "w2", "c1")),
            },
            Case {
                filter: Filter::inventory(&obj(json!({"categories": ["c1"]})), max).unwrap(),
                key: key(Field::Category, "c1"),
                data_type: DataType::Inventory,
                hit: inventory("p1", "w1", "c1"),
                miss: Some(inventory("p1", "w1", "c2")),
            },
            Case {
                filter: Filter::inventory(&obj(json!({})), max).unwrap(),
                key: key(Field::Any(Namespace::Inventory), "*"),
                data_type: DataType::Inventory,
                hit: inventory("p9", "w9", "c9"),
                miss: None,
            },
            Case {
                filter: Filter::orders(&obj(json!({"orderIds": ["o1"], "customerId": "k1"})), max)
                    .unwrap(),
                key: key(Field::OrderId, "o1"),
                data_type: DataType::Orders,
                hit: order("o1", "k1"),
                miss: Some(order("o2", "k1")),
            },
            Case {
                filter: Filter::orders(
                    &obj(json!({"customerId": ["k1"], "status": "shipped"})),
                    max,
                )
                .unwrap(),
                key: key(Field::OrderCustomer, "k1"),
                data_type: DataType::Orders,
                hit: order("o1", "k1"),
                miss: Some(order("o1", "k2")),
            },
            Case {
                filter: Filter::track("o1".into(), None),
                key: key(Field::OrderId, "o1"),
                data_type: DataType::OrderTracking,
                hit: order("o1", "k1"),
                miss: Some(order("o2", "k1")),
            },
            Case {
                filter: Filter::orders(&obj(json!({"status": "shipped"})), max).unwrap(),
                key: key(Field::Any(Namespace::Orders), "*"),
                data_type: DataType::Orders,
                hit: order("o9", "k9"),
                miss: None,
            },
            Case {
                filter: Filter::customer(
                    &obj(json!({"customerId": "k1", "activityTypes": ["login"]})),
                    max,
                )
                .unwrap(),
                key: key(Field::ActivityCustomer, "k1"),
                data_type: DataType::CustomerActivity,
                hit: activity("k1", "login"),
                miss: Some(activity("k2", "login")),
            },
            Case {
                filter: Filter::customer(&obj(json!({"activityTypes": ["login"]})), max).unwrap(),
                key: key(Field::ActivityType, "login"),
                data_type: DataType::CustomerActivity,
                hit: activity("k1", "login"),
                miss: Some(activity("k1", "logout")),
            },
            Case {
                filter: Filter::customer(&obj(json!({})), max).unwrap(),
                key: key(Field::Any(Namespace::Customer), "*"),
                data_type: DataType::CustomerActivity,
                hit: activity("k9", "view"),
                miss: None,
            },
            Case {
                filter: Filter::notifications(&obj(json!({"types": ["low_stock"]})), max, None)
                    .unwrap(),
                key: key(Field::NotificationType, "low_stock"),
                data_type: DataType::Notification,
                hit: notification("low_stock"),
                miss: Some(notification("out_of_stock")),
            },
            Case {
                filter: Filter::notifications(&obj(json!({"priority": "high"})), max, Some("u1"))
                    .unwrap(),
                key: key(Field::Any(Namespace::Notifications), "*"),
                data_type: DataType::Notification,
                hit: Keys {
                    user_id: Some("u1".into()),
                    ..notification("system_alert")
                },
                miss: None,
            },
        ]
    }

    /// The ids of the subscriptions a change's lookups reach, in lookup order.
    fn candidates(index: &Index, tenant: &str, data_type: DataType, keys: &Keys) -> Vec<u64> {
        change_keys(tenant, data_type, keys)
            .into_iter()
            .filter_map(|key| index.get(key))
            .flat_map(|list| {
                list.iter()
                    .flat_map(|c| c.iter().map(|s| s.id))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn every_kind_of_key_a_filter_produces_is_found_by_the_changes_it_matches() {
        let session = session();
        let index = Index::new();
        let cases = cases("t1");
        for (id, case) in cases.iter().enumerate() {
            let keys = case.filter.index_keys("t1");
            assert_eq!(keys, vec![case.key], "case {id}: {:?}", case.filter);
            index.insert(
                &keys,
                &subscription(id as u64, &session, "t1", case.filter.clone()),
            );
        }
        assert_eq!(index.entry_count(), cases.len());
        for (id, case) in cases.iter().enumerate() {
            let id = id as u64;
            assert!(case.filter.matches(case.data_type, &case.hit), "case {id}");
            let found = candidates(&index, "t1", case.data_type, &case.hit);
            assert_eq!(
                found.iter().filter(|&&i| i == id).count(),
                1,
                "case {id} found {found:?}"
            );
            // The same change of another tenant looks up none of this tenant's keys.
            assert_eq!(
                candidates(&index, "t2", case.data_type, &case.hit),
                Vec::<u64>::new()
            );
            if let Some(miss) = &case.miss {
                assert!(
                    !candidates(&index, "t1", case.data_type, miss).contains(&id),
                    "case {id} found by a change without its value"
                );
            }
        }
    }
}
