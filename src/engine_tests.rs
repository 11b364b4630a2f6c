//! Routing through the engine's public API: subscribe, publish, unsubscribe, and what
//! lands in each connection's outbox. The engine is the core crate's; these tests live
//! in the server because they run it with the server's domain rules and store.
//!
//! The engine is built only in [`engine`] and changes are published only through
//! [`publish`]: when the engine's constructor or publish API changes, those two
//! functions are all that has to follow.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::alerts::Alerts;
use crate::auth::Principal;
use crate::config::{Config, SlowConsumerPolicy};
use crate::domain::Domain;
use crate::error::ErrorCode;
use crate::fanout::change::{Change, DataType, Namespace};
use crate::fanout::outbox::{Outbox, Outgoing};
use crate::fanout::{Engine, Inlet, Subscribed};
use crate::metrics::Metrics;
use crate::namespace::filter::Filter;
use crate::session::Session;
use crate::store::MemoryStore;

/// An engine with the server's domain rules, as the in-memory bus feeds it.
struct Fed {
    engine: Arc<Engine>,
    inlet: Inlet,
}

impl std::ops::Deref for Fed {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        &self.engine
    }
}

/// The only place an engine is built.
fn engine(config: &Config) -> Fed {
    let rules = Arc::new(Domain {
        store: Arc::new(MemoryStore::new()),
        alerts: Arc::new(Alerts::new(config)),
        default_threshold: config.low_stock_threshold,
    });
    let metrics = Metrics::new();
    let (engine, inlet) = Engine::new(
        config.engine_settings(),
        rules,
        Arc::new(crate::fanout::WakeTasks),
        metrics.engine.clone(),
    );
    Fed { engine, inlet }
}

/// The only place changes are published: in one batch, with consecutive seqs, which it
/// returns in order.
fn publish(engine: &Fed, changes: Vec<Change>) -> Vec<u64> {
    engine.inlet.sequence(&changes).0
}

fn config() -> Config {
    Config::for_tests()
}

fn obj(value: Value) -> Map<String, Value> {
    value.as_object().cloned().expect("an object")
}

/// A filter parsed from subscribe data, as a client's request would be.
fn filter(ns: Namespace, data: Value) -> Filter {
    let data = obj(data);
    match ns {
        Namespace::Inventory => Filter::inventory(&data, 100),
        Namespace::Orders => Filter::orders(&data, 100),
        Namespace::Customer => Filter::customer(&data, 100),
        Namespace::Notifications => Filter::notifications(&data, 100, None),
        other => panic!("no stream filter on {other:?}"),
    }
    .expect("a valid filter")
}

/// An open-mode connection of `tenant`, with room for every frame a test queues.
fn connect(tenant: &str) -> Arc<Session> {
    let remote = "127.0.0.1:9".parse().expect("static address");
    let outbox = Outbox::new(4096, SlowConsumerPolicy::Disconnect);
    Arc::new(Session::new(
        1,
        outbox,
        remote,
        Principal::open(Some(tenant)),
        0,
    ))
}

/// What a test reads back from an outbox.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// The reply a subscribe queued, with its subscription id.
    Reply(u64),
    /// A change event, by seq.
    Change(u64),
}

/// Subscribes with a reply frame that [`received`] reads back as [`Frame::Reply`].
fn subscribe(
    engine: &Engine,
    session: &Arc<Session>,
    filter: Filter,
    since: Option<u64>,
) -> Subscribed {
    let ns = filter.namespace();
    engine
        .subscribe(session, &session.grant(), filter, since, None, |s| {
            Some(crate::protocol::native::event_frame(
                ns.path(),
                "test:subscribed",
                &json!({ "id": s.id }),
            ))
        })
        .expect("subscribed")
}

/// The JSON text of a server frame (unmasked, so the header is 2, 4 or 10 bytes).
fn body(frame: &[u8]) -> Value {
    let header = match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(&frame[header..]).expect("a JSON frame")
}

/// Takes everything queued for `session`, in order.
fn received(session: &Session) -> Vec<Frame> {
    let mut out: Vec<Outgoing> = Vec::new();
    session.outbox.drain_into(&mut out, usize::MAX, usize::MAX);
    out.iter()
        .map(|o| {
            let body = body(&o.frame);
            if body["event"] == "test:subscribed" {
                Frame::Reply(body["data"]["id"].as_u64().expect("id"))
            } else {
                Frame::Change(body["data"]["seq"].as_u64().expect("a change's seq"))
            }
        })
        .collect()
}

fn changes(seqs: &[u64]) -> Vec<Frame> {
    seqs.iter().copied().map(Frame::Change).collect()
}

fn change(data_type: DataType, tenant: &str, data: Value) -> Change {
    Change {
        data_type,
        tenant: Arc::from(tenant),
        data: obj(data),
    }
}

/// An inventory change well above the low-stock threshold, so it raises no alert.
fn stock(tenant: &str, product: &str, warehouse: &str, category: &str) -> Change {
    change(
        DataType::Inventory,
        tenant,
        json!({
            "productId": product, "warehouseId": warehouse, "category": category,
            "quantity": 500,
        }),
    )
}

fn order(tenant: &str, order: &str, customer: &str, status: &str) -> Change {
    change(
        DataType::Orders,
        tenant,
        json!({"orderId": order, "customerId": customer, "status": status}),
    )
}

fn tracking(tenant: &str, order: &str) -> Change {
    change(
        DataType::OrderTracking,
        tenant,
        json!({"orderId": order, "status": "in_transit"}),
    )
}

fn activity(tenant: &str, customer: &str, kind: &str) -> Change {
    change(
        DataType::CustomerActivity,
        tenant,
        json!({"customerId": customer, "activityType": kind}),
    )
}

fn notification(tenant: &str, data: Value) -> Change {
    change(DataType::Notification, tenant, data)
}

#[test]
fn a_connection_gets_a_change_once_however_many_of_its_subscriptions_match() {
    let engine = engine(&config());
    let alice = connect("t1");
    let inventory = |data| filter(Namespace::Inventory, data);
    // Five subscriptions under four different keys, all matching p1 in w1 / tools.
    for data in [
        json!({"productIds": ["p1"]}),
        json!({"productIds": ["p1", "p2"]}),
        json!({"warehouseIds": ["w1"]}),
        json!({"categories": ["tools"]}),
        json!({}),
    ] {
        subscribe(&engine, &alice, inventory(data), None);
    }
    let bob = connect("t1");
    subscribe(
        &engine,
        &bob,
        inventory(json!({"categories": ["tools"]})),
        None,
    );
    received(&alice);
    received(&bob);

    let seqs = publish(&engine, vec![stock("t1", "p1", "w1", "tools")]);
    assert_eq!(received(&alice), changes(&seqs));
    assert_eq!(received(&bob), changes(&seqs));

    // Two of alice's subscriptions match p2 in w2 / garden; bob's none.
    let seqs = publish(&engine, vec![stock("t1", "p2", "w2", "garden")]);
    assert_eq!(received(&alice), changes(&seqs));
    assert_eq!(received(&bob), vec![]);
}

#[test]
fn a_connection_receives_changes_in_seq_order() {
    let engine = engine(&config());
    let alice = connect("t1");
    subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({"productIds": ["p1"]})),
        None,
    );
    subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({"categories": ["c1"]})),
        None,
    );
    received(&alice);

    // Changes spread over products and categories, so that consecutive ones are found
    // under different keys (p1 only, c1 only, both, neither), in batches and one by one.
    let mut rng = fastrand::Rng::with_seed(11);
    let mut expected = Vec::new();
    for round in 0..20 {
        let batch: Vec<Change> = (0..rng.usize(1..6))
            .map(|_| {
                let product = format!("p{}", rng.u8(1..4));
                let category = format!("c{}", rng.u8(1..3));
                stock("t1", &product, "w1", &category)
            })
            .collect();
        let wanted: Vec<bool> = batch
            .iter()
            .map(|c| c.data["productId"] == "p1" || c.data["category"] == "c1")
            .collect();
        let seqs = if round % 2 == 0 {
            publish(&engine, batch)
        } else {
            batch
                .into_iter()
                .flat_map(|c| publish(&engine, vec![c]))
                .collect()
        };
        expected.extend(
            seqs.iter()
                .zip(&wanted)
                .filter(|(_, &w)| w)
                .map(|(s, _)| *s),
        );
    }
    assert!(
        expected.len() > 20,
        "too few matching changes: {expected:?}"
    );
    assert!(expected.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(received(&alice), changes(&expected));
}

#[test]
fn a_change_never_reaches_another_tenants_subscription() {
    let engine = engine(&config());
    // "t" and "t1" with values "1p" and "p": a key that concatenated tenant and value
    // without a boundary would mix these up.
    let other = connect("t");
    for (ns, data) in [
        (Namespace::Inventory, json!({})),
        (Namespace::Inventory, json!({"productIds": ["1p", "p"]})),
        (Namespace::Orders, json!({})),
        (Namespace::Orders, json!({"orderIds": ["o1"]})),
        (Namespace::Customer, json!({})),
        (Namespace::Notifications, json!({})),
    ] {
        subscribe(&engine, &other, filter(ns, data), None);
    }
    received(&other);

    publish(
        &engine,
        vec![
            stock("t1", "p", "w", "c"),
            order("t1", "o1", "k1", "new"),
            activity("t1", "k1", "login"),
            notification("t1", json!({"type": "system_alert", "message": "hi"})),
        ],
    );
    assert_eq!(received(&other), vec![]);

    // The same changes of its own tenant do reach it.
    let seqs = publish(
        &engine,
        vec![
            stock("t", "1p", "w", "c"),
            order("t", "o1", "k1", "new"),
            activity("t", "k1", "login"),
            notification("t", json!({"type": "system_alert", "message": "hi"})),
        ],
    );
    assert_eq!(received(&other), changes(&seqs));
}

#[test]
fn unsubscribing_stops_delivery_and_empties_the_index() {
    let engine = engine(&config());
    let alice = connect("t1");
    let by_product = subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({"productIds": ["p1"]})),
        None,
    );
    let everything = subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({})),
        None,
    );
    let orders = subscribe(&engine, &alice, filter(Namespace::Orders, json!({})), None);
    received(&alice);
    assert_eq!(engine.index_entries(), 3);

    // An id that is not on this namespace is refused and removes nothing.
    let refused = engine
        .unsubscribe(&alice, Namespace::Inventory, Some(orders.id))
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::NotFound);
    assert_eq!(engine.index_entries(), 3);

    assert_eq!(
        engine.unsubscribe(&alice, Namespace::Inventory, Some(by_product.id)),
        Ok(vec![by_product.id])
    );
    // The wildcard still matches p1: once.
    let seqs = publish(&engine, vec![stock("t1", "p1", "w1", "c1")]);
    assert_eq!(received(&alice), changes(&seqs));

    // Without an id, every subscription of the namespace goes, and only those.
    assert_eq!(
        engine.unsubscribe(&alice, Namespace::Inventory, None),
        Ok(vec![everything.id])
    );
    let seqs = publish(
        &engine,
        vec![
            stock("t1", "p1", "w1", "c1"),
            order("t1", "o1", "k1", "new"),
        ],
    );
    assert_eq!(received(&alice), changes(&seqs[1..]));
    assert_eq!(
        engine.unsubscribe(&alice, Namespace::Orders, None),
        Ok(vec![orders.id])
    );
    publish(&engine, vec![order("t1", "o1", "k1", "shipped")]);
    assert_eq!(received(&alice), vec![]);
    assert_eq!(engine.index_entries(), 0);
    assert_eq!(engine.index_keys(), 0);
    assert_eq!(alice.subscription_count(), 0);
}

#[test]
fn a_closed_connection_gets_nothing_and_leaves_nothing_in_the_index() {
    let engine = engine(&config());
    let alice = connect("t1");
    let bob = connect("t1");
    for session in [&alice, &bob] {
        subscribe(
            &engine,
            session,
            filter(Namespace::Inventory, json!({"productIds": ["p1", "p2"]})),
            None,
        );
        subscribe(&engine, session, filter(Namespace::Orders, json!({})), None);
        received(session);
    }
    assert_eq!(engine.index_entries(), 6);
    engine.drop_session(&alice);
    assert_eq!(engine.index_entries(), 3);

    let seqs = publish(
        &engine,
        vec![
            stock("t1", "p1", "w1", "c1"),
            order("t1", "o1", "k1", "new"),
        ],
    );
    assert_eq!(received(&alice), vec![]);
    assert_eq!(received(&bob), changes(&seqs));

    // Nothing can subscribe on it any more.
    let refused = engine.subscribe(
        &alice,
        &alice.grant(),
        filter(Namespace::Orders, json!({})),
        None,
        None,
        |_| unreachable!("no reply for a closed connection"),
    );
    assert!(refused.is_err());
    engine.drop_session(&bob);
    assert_eq!((engine.index_entries(), engine.index_keys()), (0, 0));
}

#[test]
fn a_connection_that_becomes_another_tenant_loses_its_subscriptions() {
    let engine = engine(&config());
    let alice = connect("t1");
    let stale = alice.grant();
    subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({})),
        None,
    );
    received(&alice);
    engine.switch_principal(&alice, Arc::new(Principal::open(Some("t2"))));
    assert_eq!(engine.index_entries(), 0);
    publish(&engine, vec![stock("t1", "p1", "w1", "c1")]);
    assert_eq!(received(&alice), vec![]);
    // A subscribe checked as the previous identity does nothing.
    let late = engine.subscribe(
        &alice,
        &stale,
        filter(Namespace::Inventory, json!({})),
        None,
        None,
        |_| unreachable!("no reply for a superseded grant"),
    );
    assert!(late.is_err());
    assert_eq!(engine.index_entries(), 0);
}

#[test]
fn a_refused_subscribe_registers_nothing_and_sends_nothing() {
    let mut config = config();
    config.max_subscriptions = 1;
    let engine = engine(&config);
    let alice = connect("t1");
    subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({"productIds": ["p1"]})),
        None,
    );
    received(&alice);
    let refused = engine
        .subscribe(
            &alice,
            &alice.grant(),
            filter(Namespace::Orders, json!({"orderIds": ["o1", "o2"]})),
            None,
            None,
            |_| unreachable!("no reply for a refused subscribe"),
        )
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::TooManySubscriptions);
    assert_eq!(engine.index_entries(), 1);
    publish(&engine, vec![order("t1", "o1", "k1", "new")]);
    assert_eq!(received(&alice), vec![]);
}

#[test]
#[rustfmt::skip] // one case a line: (namespace, filter, a match, a miss)
fn every_kind_of_filter_routes_the_changes_it_matches_and_only_those() {
    let engine = engine(&config());
    let t = "t1";
    // (namespace, subscribe data, a change it matches, a change of its namespace it
    // does not match).
    let cases = [
        (Namespace::Inventory, json!({"productIds": ["p1"]}), stock(t, "p1", "w1", "c1"), stock(t, "p2", "w1", "c1")),
        (Namespace::Inventory, json!({"warehouseIds": ["w1"]}), stock(t, "p1", "w1", "c1"), stock(t, "p1", "w2", "c1")),
        (Namespace::Inventory, json!({"categories": ["c1"]}), stock(t, "p1", "w1", "c1"), stock(t, "p1", "w1", "c2")),
        (Namespace::Inventory, json!({"productIds": ["p1"], "warehouseIds": ["w1"]}), stock(t, "p1", "w1", "c1"), stock(t, "p1", "w2", "c1")),
        (Namespace::Orders, json!({"orderIds": ["o1"]}), order(t, "o1", "k1", "new"), order(t, "o2", "k1", "new")),
        (Namespace::Orders, json!({"customerId": "k1"}), order(t, "o1", "k1", "new"), order(t, "o1", "k2", "new")),
        (Namespace::Orders, json!({"status": ["shipped"]}), order(t, "o1", "k1", "shipped"), order(t, "o1", "k1", "new")),
        (Namespace::Orders, json!({"orderIds": ["o1"], "trackingEnabled": true}), tracking(t, "o1"), tracking(t, "o2")),
        (Namespace::Orders, json!({"orderIds": ["o1"]}), order(t, "o1", "k1", "new"), tracking(t, "o1")),
        (Namespace::Customer, json!({"customerId": "k1"}), activity(t, "k1", "login"), activity(t, "k2", "login")),
        (Namespace::Customer, json!({"activityTypes": ["login"]}), activity(t, "k1", "login"), activity(t, "k1", "logout")),
        (Namespace::Notifications, json!({"types": ["low_stock"]}), notification(t, json!({"type": "low_stock"})), notification(t, json!({"type": "out_of_stock"}))),
        (Namespace::Notifications, json!({"priority": "high"}), notification(t, json!({"type": "x", "priority": "critical"})), notification(t, json!({"type": "x"}))),
    ];
    for (n, (ns, data, hit, miss)) in cases.into_iter().enumerate() {
        let session = connect(t);
        subscribe(&engine, &session, filter(ns, data.clone()), None);
        received(&session);
        let seqs = publish(&engine, vec![miss, hit]);
        assert_eq!(
            received(&session),
            changes(&seqs[1..]),
            "case {n}: {ns:?} {data}"
        );
        engine.drop_session(&session);
    }
    assert_eq!(engine.index_entries(), 0);
}

#[test]
fn a_customers_notifications_are_only_their_own() {
    let engine = engine(&config());
    let customer = connect("t1");
    let data = obj(json!({}));
    let mine = Filter::notifications(&data, 100, Some("u1")).expect("valid filter");
    subscribe(&engine, &customer, mine, None);
    received(&customer);
    let seqs = publish(
        &engine,
        vec![
            notification("t1", json!({"type": "x", "userId": "u2"})),
            notification("t1", json!({"type": "x", "userId": "u1"})),
            notification("t1", json!({"type": "x"})),
            notification("t1", json!({"type": "x", "customerId": "u1"})),
        ],
    );
    assert_eq!(received(&customer), changes(&[seqs[1], seqs[3]]));
}

#[test]
fn a_tracking_change_reaches_the_orders_customer_through_the_store() {
    let engine = engine(&config());
    let customer = connect("t1");
    subscribe(
        &engine,
        &customer,
        filter(
            Namespace::Orders,
            json!({"customerId": "k1", "trackingEnabled": true}),
        ),
        None,
    );
    received(&customer);
    // The tracking changes carry no customerId: the engine finds it from the order.
    let seqs = publish(
        &engine,
        vec![
            order("t1", "o1", "k1", "new"),
            order("t1", "o2", "k2", "new"),
            tracking("t1", "o1"),
            tracking("t1", "o2"),
        ],
    );
    assert_eq!(received(&customer), changes(&[seqs[0], seqs[2]]));
}

#[test]
fn a_since_replay_sends_the_reply_then_retained_matches_once_in_order() {
    let engine = engine(&config());
    let start = engine.last_seq();
    let seqs = publish(
        &engine,
        vec![
            stock("t1", "p1", "w1", "c1"),
            stock("t1", "p2", "w1", "c1"),
            stock("t2", "p1", "w1", "c1"),
            stock("t1", "p1", "w2", "c2"),
            order("t1", "o1", "k1", "new"),
            stock("t1", "p1", "w1", "c1"),
        ],
    );
    let mine = [seqs[0], seqs[3], seqs[5]];

    let alice = connect("t1");
    let subscribed = subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({"productIds": ["p1"]})),
        Some(start),
    );
    assert_eq!((subscribed.replayed, subscribed.gap), (3, false));
    let mut expected = vec![Frame::Reply(subscribed.id)];
    expected.extend(changes(&mine));
    assert_eq!(received(&alice), expected);

    // Live changes follow, each once.
    let live = publish(&engine, vec![stock("t1", "p1", "w1", "c1")]);
    assert_eq!(received(&alice), changes(&live));

    // From the middle: only what is above `since`.
    let bob = connect("t1");
    let subscribed = subscribe(
        &engine,
        &bob,
        filter(Namespace::Inventory, json!({"productIds": ["p1"]})),
        Some(seqs[3]),
    );
    assert_eq!((subscribed.replayed, subscribed.gap), (2, false));
    assert_eq!(
        received(&bob),
        vec![
            Frame::Reply(subscribed.id),
            Frame::Change(seqs[5]),
            Frame::Change(live[0])
        ]
    );

    // Without `since`, nothing is replayed.
    let carol = connect("t1");
    let subscribed = subscribe(
        &engine,
        &carol,
        filter(Namespace::Inventory, json!({"productIds": ["p1"]})),
        None,
    );
    assert_eq!((subscribed.replayed, subscribed.gap), (0, false));
    assert_eq!(received(&carol), vec![Frame::Reply(subscribed.id)]);
}

#[test]
fn a_replay_skips_seqs_the_connection_already_has_on_that_namespace() {
    let engine = engine(&config());
    let start = engine.last_seq();
    let alice = connect("t1");
    subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({"productIds": ["p1"]})),
        None,
    );
    received(&alice);
    let seqs = publish(
        &engine,
        vec![
            stock("t1", "p1", "w1", "c1"),
            stock("t1", "p2", "w1", "c1"),
            stock("t1", "p1", "w1", "c1"),
            order("t1", "o1", "k1", "new"),
        ],
    );
    assert_eq!(received(&alice), changes(&[seqs[0], seqs[2]]));

    // An overlapping subscription replays nothing at or below the highest inventory
    // seq alice has (docs/protocol.md, "5.4 Ordering and no duplicates"), p2's change included: replaying it after seq 3
    // would break the order.
    let overlapping = subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({})),
        Some(start),
    );
    assert_eq!((overlapping.replayed, overlapping.gap), (0, false));
    assert_eq!(received(&alice), vec![Frame::Reply(overlapping.id)]);

    // The floor is per namespace: an orders replay still gets the order change,
    // though its seq is above every inventory seq alice has.
    let orders = subscribe(
        &engine,
        &alice,
        filter(Namespace::Orders, json!({})),
        Some(start),
    );
    assert_eq!(orders.replayed, 1);
    assert_eq!(
        received(&alice),
        vec![Frame::Reply(orders.id), Frame::Change(seqs[3])]
    );

    // And a change both inventory subscriptions match comes once.
    let live = publish(&engine, vec![stock("t1", "p1", "w1", "c1")]);
    assert_eq!(received(&alice), changes(&live));
}

#[test]
fn a_replay_from_below_the_retention_reports_a_gap() {
    let mut config = config();
    config.replay_max_changes = 3;
    let engine = engine(&config);
    let start = engine.last_seq();
    let seqs = publish(
        &engine,
        (0..5).map(|_| stock("t1", "p1", "w1", "c1")).collect(),
    );
    assert_eq!(engine.retained(), 3);
    assert_eq!(engine.ring_floor(), seqs[1]);
    let replay = |since: u64| {
        let session = connect("t1");
        let subscribed = subscribe(
            &engine,
            &session,
            filter(Namespace::Inventory, json!({})),
            Some(since),
        );
        let frames = received(&session);
        assert_eq!(frames.first(), Some(&Frame::Reply(subscribed.id)));
        (
            subscribed.gap,
            subscribed.replayed,
            frames.into_iter().skip(1).collect::<Vec<_>>(),
        )
    };
    // The first two changes are gone; what is retained is replayed all the same.
    assert_eq!(replay(start), (true, 3, changes(&seqs[2..])));
    assert_eq!(replay(seqs[0]), (true, 3, changes(&seqs[2..])));
    assert_eq!(replay(seqs[1]), (false, 3, changes(&seqs[2..])));
    assert_eq!(replay(seqs[3]), (false, 1, changes(&seqs[4..])));
    assert_eq!(replay(seqs[4]), (false, 0, vec![]));
    // sinceSeq 0 always has a gap: the node's history does not reach back to 0.
    assert_eq!(replay(0), (true, 3, changes(&seqs[2..])));
}

#[test]
fn a_fresh_engine_treats_any_earlier_seq_as_a_gap() {
    let engine = engine(&config());
    let start = engine.last_seq();
    assert_eq!(engine.ring_floor(), start);
    let alice = connect("t1");
    let subscribed = subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({})),
        Some(start - 1),
    );
    assert_eq!((subscribed.replayed, subscribed.gap), (0, true));
    let subscribed = subscribe(
        &engine,
        &alice,
        filter(Namespace::Orders, json!({})),
        Some(start),
    );
    assert_eq!((subscribed.replayed, subscribed.gap), (0, false));
}

#[test]
fn set_floor_starts_seqs_above_it_with_an_empty_ring() {
    let engine = engine(&config());
    publish(&engine, vec![stock("t1", "p1", "w1", "c1")]);
    engine.inlet.set_floor(1000);
    assert_eq!(
        (engine.last_seq(), engine.ring_floor(), engine.retained()),
        (1000, 1000, 0)
    );
    let seqs = publish(&engine, vec![stock("t1", "p1", "w1", "c1")]);
    assert_eq!(seqs, vec![1001]);
    let alice = connect("t1");
    let subscribed = subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({})),
        Some(999),
    );
    assert_eq!((subscribed.replayed, subscribed.gap), (1, true));
    assert_eq!(
        received(&alice),
        vec![Frame::Reply(subscribed.id), Frame::Change(1001)]
    );
}

#[test]
fn a_filter_value_given_twice_leaves_no_index_entry_behind() {
    let engine = engine(&config());
    let alice = connect("t1");
    let twice = subscribe(
        &engine,
        &alice,
        filter(Namespace::Inventory, json!({"productIds": ["p1", "p1"]})),
        None,
    );
    received(&alice);
    let seqs = publish(&engine, vec![stock("t1", "p1", "w1", "c1")]);
    assert_eq!(received(&alice), changes(&seqs));
    engine
        .unsubscribe(&alice, Namespace::Inventory, Some(twice.id))
        .expect("unsubscribed");
    assert_eq!(engine.index_keys(), 0);
    assert_eq!(engine.index_entries(), 0);
}

#[test]
fn a_types_filter_matches_the_type_the_notification_is_delivered_with() {
    let engine = engine(&config());
    let alerts = connect("t1");
    subscribe(
        &engine,
        &alerts,
        filter(Namespace::Notifications, json!({"types": ["system_alert"]})),
        None,
    );
    let fives = connect("t1");
    subscribe(
        &engine,
        &fives,
        filter(Namespace::Notifications, json!({"types": ["5"]})),
        None,
    );
    received(&alerts);
    received(&fives);
    // Delivered as N.type "system_alert" both times (docs/protocol.md, "4.3 Notification N"), which is what
    // `types` is documented to match (section 6.2).
    let seqs = publish(
        &engine,
        vec![
            notification("t1", json!({"message": "no type"})),
            notification("t1", json!({"type": 5, "message": "a number"})),
        ],
    );
    assert_eq!(received(&alerts), changes(&seqs));
    assert_eq!(received(&fives), vec![]);
}
