//! The database change feed against a real PostgreSQL, in each detection mode: a
//! committed change reaches its subscribers with the change log's seq; a 10,000-row
//! transaction arrives complete and in order; killing the feed's connections loses and
//! duplicates nothing; a late commit below a visible seq is not skipped; changes made
//! while the server was down are delivered after start; replay reads the change log
//! beyond the in-memory ring; queries are tenant-scoped.
//!
//! Each test has a database of its own (tests/common/pg.rs) and a tenant of its own.

mod common;

use std::time::Duration;

use common::pg::{self, TestDb};
use common::*;
use serde_json::{json, Value};
use tokio_postgres::Client as Pg;

/// One test per detection mode for a case that takes the mode.
macro_rules! mode_tests {
    ($case:ident { $($test:ident => $mode:literal),+ $(,)? }) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $case($mode).await;
            }
        )+
    };
}

/// Starts the server on `db` in `mode`, with extra settings, and waits for its feed.
async fn start(db: &TestDb, mode: &str, extra: &[(&str, &str)]) -> TestServer {
    let mut env: Vec<(String, String)> = db.env(mode);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = spawn_server(&refs);
    pg::wait_feed_connected(server.port).await;
    server
}

/// A migrated database in `mode`, the demo rows of `tenants` (written before the
/// server starts, so they are history, not news), and a server on it.
async fn setup(mode: &str, tenants: &[&str], extra: &[(&str, &str)]) -> (TestDb, Pg, TestServer) {
    let db = TestDb::create().await;
    db.migrate(mode);
    let pg = db.client().await;
    for tenant in tenants {
        seed(&pg, tenant).await;
    }
    let server = start(&db, mode, extra).await;
    (db, pg, server)
}

/// Products p1..p3 in `category`, with stock in w1 and w2, and orders o1 (customer c1),
/// o2 (c2), for `tenant`.
async fn seed(pg: &Pg, tenant: &str) {
    pg.execute(
        "INSERT INTO products (tenant_id, id, name, sku, category, price)
         SELECT $1, 'p' || i, 'Product ' || i, 'SKU-' || i, 'tools', 10 * i
         FROM generate_series(1, 3) AS i",
        &[&tenant],
    )
    .await
    .expect("seed products");
    pg.execute(
        "INSERT INTO inventory (tenant_id, product_id, warehouse_id, quantity)
         SELECT $1, 'p' || i, w, 100 FROM generate_series(1, 3) AS i, (VALUES ('w1'), ('w2')) AS ws(w)",
        &[&tenant],
    )
    .await
    .expect("seed inventory");
    pg.execute(
        "INSERT INTO orders (tenant_id, id, customer_id, status, total)
         VALUES ($1, 'o1', 'c1', 'pending', 50), ($1, 'o2', 'c2', 'pending', 70)",
        &[&tenant],
    )
    .await
    .expect("seed orders");
}

/// What the application writes besides its own row, per mode: in `poll` mode the
/// change-log row itself, in the same transaction (README, "poll mode").
const POLL_LOG_STOCK: &str = "INSERT INTO nilecast_changes (tenant_id, data_type, entity_id, payload)
     SELECT tenant_id, 'inventory', product_id,
            jsonb_build_object('productId', product_id, 'warehouseId', warehouse_id, 'quantity', quantity)
     FROM inventory WHERE tenant_id = $1 AND product_id = $2 AND warehouse_id = $3";

/// Sets a stock level in its own transaction, as an application would in `mode`.
/// Returns the change log's seq of the change when the mode tells it inside the
/// transaction (notify: the trigger's row; poll: the application's row).
async fn set_stock(
    pg: &mut Pg,
    mode: &str,
    tenant: &str,
    product: &str,
    warehouse: &str,
    quantity: f64,
) -> Option<u64> {
    let tx = pg.transaction().await.expect("begin");
    tx.execute(
        "UPDATE inventory SET quantity = $4, updated_at = now()
         WHERE tenant_id = $1 AND product_id = $2 AND warehouse_id = $3",
        &[&tenant, &product, &warehouse, &quantity],
    )
    .await
    .expect("update stock");
    if mode == "poll" {
        tx.execute(POLL_LOG_STOCK, &[&tenant, &product, &warehouse])
            .await
            .expect("log the change");
    }
    let seq: Option<i64> = tx
        .query_one(
            "SELECT max(seq) FROM nilecast_changes WHERE xid = pg_current_xact_id()",
            &[],
        )
        .await
        .expect("read own seq")
        .get(0);
    tx.commit().await.expect("commit");
    seq.map(|s| s as u64)
}

/// Adds a stock row in its own transaction, as an application would in `mode`.
async fn add_stock(pg: &mut Pg, mode: &str, tenant: &str, product: &str, quantity: f64) {
    let tx = pg.transaction().await.expect("begin");
    tx.execute(
        "INSERT INTO inventory (tenant_id, product_id, warehouse_id, quantity) VALUES ($1, $2, 'w1', $3)",
        &[&tenant, &product, &quantity],
    )
    .await
    .expect("insert stock");
    if mode == "poll" {
        tx.execute(POLL_LOG_STOCK, &[&tenant, &product, &"w1"])
            .await
            .expect("log the change");
    }
    tx.commit().await.expect("commit");
}

/// The change log's seq of the stock change of `product` at `warehouse` to `quantity`
/// (table-poll logs it after the fact: waits for it).
async fn logged_stock_seq(
    pg: &Pg,
    tenant: &str,
    product: &str,
    warehouse: &str,
    quantity: f64,
) -> u64 {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let row = pg
            .query_opt(
                "SELECT seq FROM nilecast_changes
                 WHERE tenant_id = $1 AND data_type = 'inventory'
                   AND payload->>'productId' = $2 AND payload->>'warehouseId' = $3
                   AND (payload->>'quantity')::float8 = $4
                 ORDER BY seq DESC LIMIT 1",
                &[&tenant, &product, &warehouse, &quantity],
            )
            .await
            .expect("read the change log");
        if let Some(row) = row {
            return row.get::<_, i64>(0) as u64;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no change-log row for {product}/{warehouse} = {quantity}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every seq of `tenant`'s changes of `data_type` in the change log, in order.
async fn log_seqs(pg: &Pg, tenant: &str, data_type: &str) -> Vec<u64> {
    pg.query(
        "SELECT seq FROM nilecast_changes WHERE tenant_id = $1 AND data_type = $2 ORDER BY seq",
        &[&tenant, &data_type],
    )
    .await
    .expect("read the change log")
    .iter()
    .map(|r| r.get::<_, i64>(0) as u64)
    .collect()
}

async fn client_of(server: &TestServer, tenant: &str) -> Client {
    Client::connect_path(server.port, &format!("/ws?tenant={tenant}")).await
}

/// Waits for the `inventory:update` of `product` with `quantity`; returns its data.
async fn recv_stock(client: &mut Client, product: &str, quantity: f64) -> Value {
    let (frame, _) = client
        .recv_matching(&format!("inventory:update {product} = {quantity}"), |f| {
            f["event"] == "inventory:update"
                && f["data"]["data"]["productId"] == product
                && f["data"]["data"]["quantity"].as_f64() == Some(quantity)
        })
        .await;
    frame["data"].clone()
}

// ---------------------------------------------------------------------------
// A stock change reaches its subscriber with the change log's seq.
// ---------------------------------------------------------------------------

async fn stock_update_carries_the_change_log_seq(mode: &str) {
    let tenant = "acme";
    let (_db, mut pg, server) = setup(mode, &[tenant], &[]).await;
    let mut client = client_of(&server, tenant).await;
    client
        .subscribe("/inventory", json!({"productIds": ["p2"]}))
        .await;
    let own = set_stock(&mut pg, mode, tenant, "p2", "w1", 7.0).await;
    let data = recv_stock(&mut client, "p2", 7.0).await;
    let logged = logged_stock_seq(&pg, tenant, "p2", "w1", 7.0).await;
    if let Some(own) = own {
        assert_eq!(own, logged, "the transaction's own seq is the logged one");
    }
    assert_eq!(data["seq"], logged, "seq is the change log's: {data}");
    assert_eq!(data["type"], "inventory_update", "{data}");
    assert_eq!(data["tenantId"], tenant, "{data}");
    assert_eq!(data["data"]["warehouseId"], "w1", "{data}");
}

mode_tests!(stock_update_carries_the_change_log_seq {
    notify_stock_update_carries_the_change_log_seq => "notify",
    poll_stock_update_carries_the_change_log_seq => "poll",
    table_poll_stock_update_carries_the_change_log_seq => "table-poll",
});

// ---------------------------------------------------------------------------
// An order status change reaches the order's and the customer's subscribers only.
// ---------------------------------------------------------------------------

async fn set_status(pg: &mut Pg, mode: &str, tenant: &str, order: &str, status: &str) {
    let tx = pg.transaction().await.expect("begin");
    tx.execute(
        "UPDATE orders SET status = $3, updated_at = now() WHERE tenant_id = $1 AND id = $2",
        &[&tenant, &order, &status],
    )
    .await
    .expect("update order");
    if mode == "poll" {
        tx.execute(
            "INSERT INTO nilecast_changes (tenant_id, data_type, entity_id, payload)
             SELECT tenant_id, 'orders', id, jsonb_build_object(
                 'orderId', id, 'customerId', customer_id, 'status', status, 'total', total)
             FROM orders WHERE tenant_id = $1 AND id = $2",
            &[&tenant, &order],
        )
        .await
        .expect("log the change");
    }
    tx.commit().await.expect("commit");
}

async fn order_status_reaches_order_and_customer_subscribers(mode: &str) {
    let tenant = "acme";
    let (_db, mut pg, server) = setup(mode, &[tenant], &[]).await;
    let mut by_order = client_of(&server, tenant).await;
    by_order
        .subscribe("/orders", json!({"orderIds": ["o1"]}))
        .await;
    let mut by_customer = client_of(&server, tenant).await;
    by_customer
        .subscribe("/orders", json!({"customerId": "c1"}))
        .await;
    let mut other = client_of(&server, tenant).await;
    other
        .subscribe("/orders", json!({"customerId": "c2"}))
        .await;

    set_status(&mut pg, mode, tenant, "o1", "shipped").await;
    let is_o1_shipped = |f: &Value| {
        f["event"] == "order:update"
            && f["data"]["data"]["orderId"] == "o1"
            && f["data"]["data"]["status"] == "shipped"
    };
    for client in [&mut by_order, &mut by_customer] {
        let (frame, _) = client.recv_matching("o1 shipped", is_o1_shipped).await;
        assert_eq!(frame["ns"], "/orders", "{frame}");
        assert_eq!(frame["data"]["data"]["customerId"], "c1", "{frame}");
    }
    let seq_o1 = *log_seqs(&pg, tenant, "orders")
        .await
        .last()
        .expect("o1 logged");
    // c2's change comes after o1's; c2's subscriber gets it and nothing of o1.
    set_status(&mut pg, mode, tenant, "o2", "confirmed").await;
    let (frame, skipped) = other
        .recv_matching("o2 confirmed", |f| {
            f["event"] == "order:update" && f["data"]["data"]["orderId"] == "o2"
        })
        .await;
    assert!(frame["data"]["seq"].as_u64() > Some(seq_o1), "{frame}");
    assert!(
        !skipped.iter().any(is_o1_shipped),
        "customer c2's subscriber got c1's order: {skipped:?}"
    );
}

mode_tests!(order_status_reaches_order_and_customer_subscribers {
    notify_order_status_reaches_order_and_customer_subscribers => "notify",
    poll_order_status_reaches_order_and_customer_subscribers => "poll",
    table_poll_order_status_reaches_order_and_customer_subscribers => "table-poll",
});

// ---------------------------------------------------------------------------
// A 10,000-row transaction arrives complete and in order.
// ---------------------------------------------------------------------------

const BULK: i64 = 10_000;

async fn large_transaction_arrives_complete_and_in_order(mode: &str) {
    let tenant = "bulk";
    let (_db, mut pg, server) = setup(mode, &[], &[("QUEUE_MAX_FRAMES", "20000")]).await;
    let mut client = client_of(&server, tenant).await;
    client.subscribe("/inventory", json!({})).await;

    let tx = pg.transaction().await.expect("begin");
    tx.execute(
        "INSERT INTO inventory (tenant_id, product_id, warehouse_id, quantity)
         SELECT $1, 'bulk-' || i, 'w1', i FROM generate_series(1, $2::int8) AS i",
        &[&tenant, &BULK],
    )
    .await
    .expect("insert 10,000 rows");
    if mode == "poll" {
        tx.execute(
            "INSERT INTO nilecast_changes (tenant_id, data_type, entity_id, payload)
             SELECT $1, 'inventory', 'bulk-' || i,
                    jsonb_build_object('productId', 'bulk-' || i, 'warehouseId', 'w1', 'quantity', i)
             FROM generate_series(1, $2::int8) AS i",
            &[&tenant, &BULK],
        )
        .await
        .expect("log 10,000 changes");
    }
    tx.commit().await.expect("commit");

    let mut seqs = Vec::with_capacity(BULK as usize);
    let mut products = std::collections::HashSet::new();
    while seqs.len() < BULK as usize {
        let frame = client
            .next_frame_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("after {} of {BULK} changes: {e}", seqs.len()));
        if frame["event"] != "inventory:update" {
            continue;
        }
        seqs.push(frame["data"]["seq"].as_u64().expect("seq"));
        products.insert(
            frame["data"]["data"]["productId"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    assert_eq!(
        products.len(),
        BULK as usize,
        "every row's change arrived once"
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "changes arrived in seq order"
    );
    assert_eq!(
        seqs,
        log_seqs(&pg, tenant, "inventory").await,
        "exactly the logged seqs"
    );
}

mode_tests!(large_transaction_arrives_complete_and_in_order {
    notify_large_transaction_arrives_complete_and_in_order => "notify",
    poll_large_transaction_arrives_complete_and_in_order => "poll",
    table_poll_large_transaction_arrives_complete_and_in_order => "table-poll",
});

// ---------------------------------------------------------------------------
// Killing the feed's connections in the middle of a stream loses and duplicates nothing.
// ---------------------------------------------------------------------------

const STREAM: usize = 600;

async fn killed_connections_lose_nothing(mode: &str) {
    let tenant = "stream";
    let (db, pg, server) = setup(mode, &[], &[]).await;
    let mut client = client_of(&server, tenant).await;
    client.subscribe("/inventory", json!({})).await;
    let admin = pg::connect(&pg::admin_url()).await;
    // notify: the listener's backend; poll modes: the pool's (they read the log).
    let victim = if mode == "notify" {
        "nilecast-listener"
    } else {
        "nilecast"
    };

    // A writer commits a stream of changes, one new stock row per transaction (a new
    // row each time: table-poll sees row versions, and two updates of one row between
    // two scans are one version to it).
    let writer_db = db.url.clone();
    let mode_owned = mode.to_string();
    let writer = tokio::spawn(async move {
        let mut pg = pg::connect(&writer_db).await;
        for i in 0..STREAM {
            add_stock(&mut pg, &mode_owned, "stream", &format!("s{i}"), i as f64).await;
        }
    });
    // Three kills, each once the stream is under way and the victim is back.
    let mut killed = 0;
    for round in 1..=3 {
        let ok = wait_until(TIMEOUT, || {
            let (admin, db) = (&admin, &db);
            async move {
                !pg::backends(admin, &db.name, victim).await.is_empty()
                    && pg::niledb_health(server.port).await["feed"]["lastSeq"]
                        .as_u64()
                        .unwrap_or(0)
                        > 0
            }
        })
        .await;
        assert!(ok, "round {round}: no {victim} backend to kill");
        killed += pg::terminate(&admin, &db.name, victim).await;
        // Let the stream move on before the next kill.
        let target = (STREAM / 4) * round;
        let moved = wait_until(Duration::from_secs(30), || {
            let pg = &pg;
            async move { log_seqs(pg, "stream", "inventory").await.len() >= target }
        })
        .await;
        assert!(moved, "round {round}: the writer stalled");
    }
    writer.await.expect("writer finished");
    assert!(killed >= 3, "backends were killed ({killed})");

    // table-poll logs the last rows on its next scan.
    let all_logged = wait_until(TIMEOUT, || {
        let pg = &pg;
        async move { log_seqs(pg, "stream", "inventory").await.len() >= STREAM }
    })
    .await;
    let expected = log_seqs(&pg, tenant, "inventory").await;
    assert!(all_logged, "{} of {STREAM} writes logged", expected.len());
    assert_eq!(expected.len(), STREAM, "every write was logged once");
    let last = *expected.last().expect("changes");
    let (_, skipped) = client
        .recv_seq("/inventory", "inventory:update", last)
        .await;
    let mut got = seqs_of(&skipped, "/inventory", "inventory:update");
    got.push(last);
    assert_eq!(
        got, expected,
        "missing or duplicated changes across the kills"
    );
    let health = pg::niledb_health(server.port).await;
    if mode == "notify" {
        assert!(
            health["feed"]["reconnects"].as_u64() >= Some(1),
            "the listener reconnected: {health}"
        );
    }
}

mode_tests!(killed_connections_lose_nothing {
    notify_killed_listener_loses_nothing_duplicates_nothing => "notify",
    poll_killed_connections_lose_nothing_duplicate_nothing => "poll",
    table_poll_killed_connections_lose_nothing_duplicate_nothing => "table-poll",
});

// ---------------------------------------------------------------------------
// Concurrent writers: transactions interleave their seqs and commit out of order.
// ---------------------------------------------------------------------------

const WRITERS: usize = 8;
const TXS_PER_WRITER: usize = 40;
const ROWS_PER_TX: usize = 5;

async fn concurrent_writers_lose_nothing(mode: &str) {
    let tenant = "concurrent";
    let (db, pg, server) = setup(mode, &[], &[]).await;
    let mut client = client_of(&server, tenant).await;
    client.subscribe("/inventory", json!({})).await;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = db.url.clone();
        let mode = mode.to_string();
        writers.push(tokio::spawn(async move {
            let pg = pg::connect(&url).await;
            for t in 0..TXS_PER_WRITER {
                let products: Vec<String> =
                    (0..ROWS_PER_TX).map(|r| format!("w{w}-t{t}-r{r}")).collect();
                // One statement, several rows: the trigger's (or the application's)
                // seqs interleave with the other writers' before any of them commits.
                let sql = if mode == "poll" {
                    "WITH stock AS (
                         INSERT INTO inventory (tenant_id, product_id, warehouse_id, quantity)
                         SELECT 'concurrent', p, 'w1', 100 FROM unnest($1::text[]) AS p
                         RETURNING product_id)
                     INSERT INTO nilecast_changes (tenant_id, data_type, entity_id, payload)
                     SELECT 'concurrent', 'inventory', product_id,
                            jsonb_build_object('productId', product_id, 'warehouseId', 'w1', 'quantity', 100)
                     FROM stock"
                } else {
                    "INSERT INTO inventory (tenant_id, product_id, warehouse_id, quantity)
                     SELECT 'concurrent', p, 'w1', 100 FROM unnest($1::text[]) AS p"
                };
                pg.execute(sql, &[&products]).await.expect("write");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let expected = log_seqs(&pg, tenant, "inventory").await;
    assert_eq!(expected.len(), WRITERS * TXS_PER_WRITER * ROWS_PER_TX);
    let last = *expected.last().expect("changes");
    let got = client
        .seqs_until("/inventory", "inventory:update", last)
        .await;
    assert_eq!(got, expected, "every interleaved change once, in seq order");
    let health = pg::niledb_health(server.port).await;
    assert_eq!(
        health["feed"]["lastSeq"], last,
        "nothing but these changes: {health}"
    );
}

mode_tests!(concurrent_writers_lose_nothing {
    notify_concurrent_writers_lose_nothing => "notify",
    poll_concurrent_writers_lose_nothing => "poll",
});

// ---------------------------------------------------------------------------
// Changes committed while the server was stopped reach a client resuming with sinceSeq.
// ---------------------------------------------------------------------------

async fn changes_while_stopped_are_delivered_after_start(mode: &str) {
    let tenant = "restart";
    let (db, mut pg, mut server) = setup(mode, &[tenant], &[]).await;
    let mut client = client_of(&server, tenant).await;
    client.subscribe("/inventory", json!({})).await;
    set_stock(&mut pg, mode, tenant, "p1", "w1", 1.0).await;
    let seen = recv_stock(&mut client, "p1", 1.0).await["seq"]
        .as_u64()
        .expect("seq");

    server.sigterm();
    assert!(server.wait_exit(TIMEOUT).await.is_some(), "server stopped");
    drop(client);
    // Five rows changed once each (table-poll sees each row's latest version).
    let rows = [
        ("p1", "w2"),
        ("p2", "w2"),
        ("p3", "w2"),
        ("p2", "w1"),
        ("p3", "w1"),
    ];
    for (i, (product, warehouse)) in rows.iter().enumerate() {
        set_stock(&mut pg, mode, tenant, product, warehouse, 50.0 + i as f64).await;
    }
    let server = start(&db, mode, &[]).await;
    let mut client = client_of(&server, tenant).await;
    let reply = client
        .subscribe("/inventory", json!({"sinceSeq": seen}))
        .await;
    assert_eq!(reply["gap"], false, "{reply}");
    // In table-poll mode the rows are logged by the first scans after the start, which
    // may still be running: wait for all five.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let expected: Vec<u64> = loop {
        let logged: Vec<u64> = log_seqs(&pg, tenant, "inventory")
            .await
            .into_iter()
            .filter(|s| *s > seen)
            .collect();
        if logged.len() >= 5 || std::time::Instant::now() >= deadline {
            break logged;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        expected.len() == 5,
        "five changes logged while stopped: {expected:?}"
    );
    let last = *expected.last().expect("changes");
    let got = client
        .seqs_until("/inventory", "inventory:update", last)
        .await;
    assert_eq!(
        got, expected,
        "each change made while stopped, once, in order"
    );
}

mode_tests!(changes_while_stopped_are_delivered_after_start {
    notify_changes_while_stopped_are_delivered_after_start => "notify",
    poll_changes_while_stopped_are_delivered_after_start => "poll",
    table_poll_changes_while_stopped_are_delivered_after_start => "table-poll",
});

// ---------------------------------------------------------------------------
// The horizon: a seq taken before a visible one but committed after it is not skipped.
// ---------------------------------------------------------------------------

async fn late_commit_is_not_skipped(mode: &str) {
    let tenant = "horizon";
    let (_db, _pg, server) = setup(mode, &[tenant], &[]).await;
    let mut client = client_of(&server, tenant).await;
    client.subscribe("/inventory", json!({})).await;
    let mut slow = pg::connect(&_db.url).await;
    let mut fast = pg::connect(&_db.url).await;

    // A takes its seq first and commits last.
    let a = slow.transaction().await.expect("begin A");
    a.execute(
        "UPDATE inventory SET quantity = 11 WHERE tenant_id = $1 AND product_id = 'p1' AND warehouse_id = 'w1'",
        &[&tenant],
    )
    .await
    .expect("A writes");
    if mode == "poll" {
        a.execute(POLL_LOG_STOCK, &[&tenant, &"p1", &"w1"])
            .await
            .expect("A logs");
    }
    let seq_a: i64 = a
        .query_one(
            "SELECT max(seq) FROM nilecast_changes WHERE xid = pg_current_xact_id()",
            &[],
        )
        .await
        .expect("A's seq")
        .get(0);
    let seq_b = set_stock(&mut fast, mode, tenant, "p2", "w1", 22.0)
        .await
        .expect("B's seq");
    assert!(seq_b > seq_a as u64, "B's seq {seq_b} is above A's {seq_a}");

    // The feed has seen B's row and waits below A's hole.
    let waiting = wait_until(TIMEOUT, || async {
        pg::niledb_health(server.port).await["feed"]["headSeq"].as_u64() >= Some(seq_b)
    })
    .await;
    assert!(waiting, "the feed read B's row");
    let health = pg::niledb_health(server.port).await;
    assert!(
        health["feed"]["lastSeq"].as_u64() < Some(seq_a as u64),
        "the feed must not pass A's uncommitted seq: {health}"
    );
    a.commit().await.expect("commit A");
    let got = client
        .seqs_until("/inventory", "inventory:update", seq_b)
        .await;
    assert_eq!(got, vec![seq_a as u64, seq_b], "A then B, neither skipped");

    // The lower seq held by the younger transaction: its id is at or above the
    // snapshot's xmax once the older one commits, so the snapshot does not list it as
    // running, and the feed must still wait for it.
    let mut older = pg::connect(&_db.url).await;
    let old = older.transaction().await.expect("begin the older");
    old.query_one("SELECT pg_current_xact_id()", &[])
        .await
        .expect("older takes its id first");
    let young = slow.transaction().await.expect("begin the younger");
    young
        .execute(
            "UPDATE inventory SET quantity = 55 WHERE tenant_id = $1 AND product_id = 'p1' AND warehouse_id = 'w2'",
            &[&tenant],
        )
        .await
        .expect("younger writes");
    if mode == "poll" {
        young
            .execute(POLL_LOG_STOCK, &[&tenant, &"p1", &"w2"])
            .await
            .expect("younger logs");
    }
    let seq_young: i64 = young
        .query_one(
            "SELECT max(seq) FROM nilecast_changes WHERE xid = pg_current_xact_id()",
            &[],
        )
        .await
        .expect("younger's seq")
        .get(0);
    old.execute(
        "UPDATE inventory SET quantity = 66 WHERE tenant_id = $1 AND product_id = 'p3' AND warehouse_id = 'w2'",
        &[&tenant],
    )
    .await
    .expect("older writes");
    if mode == "poll" {
        old.execute(POLL_LOG_STOCK, &[&tenant, &"p3", &"w2"])
            .await
            .expect("older logs");
    }
    let seq_old: i64 = old
        .query_one(
            "SELECT max(seq) FROM nilecast_changes WHERE xid = pg_current_xact_id()",
            &[],
        )
        .await
        .expect("older's seq")
        .get(0);
    assert!(
        seq_old > seq_young,
        "the older transaction's seq {seq_old} is the higher"
    );
    old.commit().await.expect("commit the older");
    let seen = wait_until(TIMEOUT, || async {
        pg::niledb_health(server.port).await["feed"]["headSeq"].as_i64() >= Some(seq_old)
    })
    .await;
    assert!(seen, "the feed read the older transaction's row");
    let health = pg::niledb_health(server.port).await;
    assert!(
        health["feed"]["lastSeq"].as_i64() < Some(seq_young),
        "the feed must wait for the younger transaction's seq: {health}"
    );
    young.commit().await.expect("commit the younger");
    let got = client
        .seqs_until("/inventory", "inventory:update", seq_old as u64)
        .await;
    assert_eq!(
        got,
        vec![seq_young as u64, seq_old as u64],
        "younger's lower seq first"
    );

    // A rolled-back seq leaves a hole that settles: later changes still flow.
    let c = slow.transaction().await.expect("begin C");
    c.execute(
        "UPDATE inventory SET quantity = 33 WHERE tenant_id = $1 AND product_id = 'p3' AND warehouse_id = 'w1'",
        &[&tenant],
    )
    .await
    .expect("C writes");
    if mode == "poll" {
        c.execute(POLL_LOG_STOCK, &[&tenant, &"p3", &"w1"])
            .await
            .expect("C logs");
    }
    let seq_d = set_stock(&mut fast, mode, tenant, "p2", "w2", 44.0)
        .await
        .expect("D's seq");
    c.rollback().await.expect("roll back C");
    let got = client
        .seqs_until("/inventory", "inventory:update", seq_d)
        .await;
    assert_eq!(
        got,
        vec![seq_d],
        "the rolled-back change never arrives; D does"
    );
}

mode_tests!(late_commit_is_not_skipped {
    notify_late_commit_is_not_skipped => "notify",
    poll_late_commit_is_not_skipped => "poll",
});

/// table-poll has no seq until it logs a row; a row committed after a later one is
/// caught by the lookback window and still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_poll_late_commit_is_not_skipped() {
    let tenant = "horizon";
    let (db, pg, server) = setup("table-poll", &[tenant], &[]).await;
    let mut client = client_of(&server, tenant).await;
    client.subscribe("/inventory", json!({})).await;
    let mut slow = pg::connect(&db.url).await;
    let a = slow.transaction().await.expect("begin A");
    a.execute(
        "UPDATE inventory SET quantity = 11, updated_at = now()
         WHERE tenant_id = $1 AND product_id = 'p1' AND warehouse_id = 'w1'",
        &[&tenant],
    )
    .await
    .expect("A writes");
    pg.execute(
        "UPDATE inventory SET quantity = 22, updated_at = now()
         WHERE tenant_id = $1 AND product_id = 'p2' AND warehouse_id = 'w1'",
        &[&tenant],
    )
    .await
    .expect("B writes");
    recv_stock(&mut client, "p2", 22.0).await;
    a.commit().await.expect("commit A");
    recv_stock(&mut client, "p1", 11.0).await;
}

// ---------------------------------------------------------------------------
// Replay from the change log beyond the in-memory ring; retention.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_the_change_log_beyond_the_ring() {
    let (_db, pg, server) = setup("notify", &[], &[("REPLAY_MAX_CHANGES", "10")]).await;
    let tenant = "replay";
    let mut changes = Vec::new();
    for i in 0..40 {
        changes.push(with_tenant(inv("p1", "w1", i), tenant));
    }
    // POST /publish writes the change log; the feed publishes what it reads back.
    let seqs = publish(server.port, &Value::Array(changes)).await;
    assert_eq!(
        seqs,
        log_seqs(&pg, tenant, "inventory").await,
        "publish returns the log's seqs"
    );
    let last = *seqs.last().expect("seqs");
    let ok = wait_until(TIMEOUT, || async {
        pg::niledb_health(server.port).await["feed"]["lastSeq"].as_u64() >= Some(last)
    })
    .await;
    assert!(ok, "the feed published the batch");

    let mut client = client_of(&server, tenant).await;
    let reply = client
        .subscribe("/inventory", json!({"sinceSeq": seqs[4]}))
        .await;
    assert_eq!(reply["gap"], false, "the log still has them: {reply}");
    assert_eq!(reply["replayed"], 35, "35 changes after the fifth: {reply}");
    let got = client
        .seqs_until("/inventory", "inventory:update", last)
        .await;
    assert_eq!(
        got,
        seqs[5..].to_vec(),
        "replayed once each, in order, across log and ring"
    );

    // Another tenant's resume sees nothing of this one.
    let mut other = client_of(&server, "someone-else").await;
    let reply = other.subscribe("/inventory", json!({"sinceSeq": 0})).await;
    assert_eq!(reply["replayed"], 0, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_changes_and_replay_reports_the_gap() {
    let (_db, pg, server) = setup(
        "notify",
        &[],
        &[
            ("CHANGE_LOG_RETENTION_HOURS", "1"),
            ("CHANGE_LOG_PRUNE_INTERVAL_MS", "100"),
        ],
    )
    .await;
    let tenant = "retention";
    // Three changes written two hours ago, and one now.
    pg.execute(
        "INSERT INTO nilecast_changes (tenant_id, data_type, entity_id, payload, committed_at)
         SELECT $1, 'inventory', 'old-' || i,
                jsonb_build_object('productId', 'old-' || i, 'warehouseId', 'w1', 'quantity', 100),
                now() - interval '2 hours'
         FROM generate_series(1, 3) AS i",
        &[&tenant],
    )
    .await
    .expect("old changes");
    let fresh = publish_one(server.port, with_tenant(inv("new", "w1", 100), tenant)).await;
    let old = log_seqs(&pg, tenant, "inventory").await;
    let pruned = wait_until(TIMEOUT, || {
        let pg = &pg;
        async move { log_seqs(pg, "retention", "inventory").await == vec![fresh] }
    })
    .await;
    assert!(
        pruned,
        "the three old changes are pruned, the fresh one kept: {old:?}"
    );
    let m = metrics(server.port).await;
    assert_eq!(m["niledb"]["feed"]["pruned"], 3, "{m}");

    let mut client = client_of(&server, tenant).await;
    let reply = client
        .subscribe("/inventory", json!({"sinceSeq": old[0] - 1}))
        .await;
    assert_eq!(
        reply["gap"], true,
        "changes after sinceSeq are gone: {reply}"
    );
    let mut client = client_of(&server, tenant).await;
    let reply = client
        .subscribe("/inventory", json!({"sinceSeq": fresh - 1}))
        .await;
    assert_eq!(
        reply["gap"], false,
        "nothing after sinceSeq is gone: {reply}"
    );
    assert_eq!(reply["replayed"], 1, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_writes_the_demo_tables_and_the_feed_brings_it_back() {
    let db = TestDb::create().await;
    let mut env = db.env("notify");
    env.push(("NILECAST_MIGRATE".into(), "true".into()));
    env.push(("SIMULATE_RATE".into(), "200".into()));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = spawn_server(&refs);
    pg::wait_feed_connected(server.port).await;
    let mut client = server.connect().await;
    client.subscribe("/inventory", json!({})).await;
    let (frame, _) = client
        .recv_matching("a simulated stock change", |f| {
            f["event"] == "inventory:update"
        })
        .await;
    let seq = frame["data"]["seq"].as_i64().expect("seq");
    let pg = db.client().await;
    let row = pg
        .query_one(
            "SELECT tenant_id, payload->>'productId', (payload->>'quantity')::float8
             FROM nilecast_changes WHERE seq = $1",
            &[&seq],
        )
        .await
        .expect("the change is in the log");
    let (tenant, product, quantity): (String, String, f64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(tenant, "default");
    assert_eq!(
        frame["data"]["data"]["productId"],
        product.as_str(),
        "{frame}"
    );
    assert_eq!(
        frame["data"]["data"]["quantity"].as_f64(),
        Some(quantity),
        "{frame}"
    );
    // The demo tables hold the seeded world, and the stock row carries the change.
    let products: i64 = pg
        .query_one(
            "SELECT count(*) FROM products WHERE tenant_id = 'default'",
            &[],
        )
        .await
        .expect("products")
        .get(0);
    assert_eq!(products, 300, "the demo catalogue is seeded");
    // Queries answer from the tables.
    let summary = data_request(&mut client, "inventory_summary", json!({})).await;
    assert_eq!(summary["totalProducts"], 300, "{summary}");
    assert_eq!(summary["stockRows"], 900, "{summary}");
}

// ---------------------------------------------------------------------------
// Every query is scoped to the caller's tenant.
// ---------------------------------------------------------------------------

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256!";

fn token(sub: &str, tenant: &str, roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "tenant_id": tenant, "roles": roles, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn authed(server: &TestServer, token: &str) -> Client {
    Client::connect_path(server.port, &format!("/ws?token={token}")).await
}

async fn data_request(client: &mut Client, data_type: &str, parameters: Value) -> Value {
    let reply = client
        .request(
            "/",
            "data:request",
            json!({"dataType": data_type, "parameters": parameters}),
        )
        .await;
    assert!(reply.get("error").is_none(), "{data_type}: {reply}");
    reply["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_is_tenant_scoped() {
    let (_db, mut pg, server) = setup(
        "notify",
        &["tenant-a", "tenant-b"],
        &[("JWT_SECRET", SECRET), ("LOW_STOCK_THRESHOLD", "10")],
    )
    .await;
    // B's data differs: low stock, a shipped order with tracking, activity.
    set_stock(&mut pg, "notify", "tenant-b", "p1", "w1", 2.0).await;
    set_status(&mut pg, "notify", "tenant-b", "o1", "shipped").await;
    pg.execute(
        "INSERT INTO order_tracking (tenant_id, order_id, customer_id, status, location)
         VALUES ('tenant-b', 'o1', 'c1', 'in_transit', 'Lyon')",
        &[],
    )
    .await
    .expect("tracking");
    pg.execute(
        "INSERT INTO customer_activity (tenant_id, customer_id, activity_type)
         VALUES ('tenant-b', 'c9', 'purchase')",
        &[],
    )
    .await
    .expect("activity");
    // The low-stock alert B's change raised is stored for B.
    let alert_stored = wait_until(TIMEOUT, || {
        let pg = &pg;
        async move {
            pg.query_one(
                "SELECT count(*) FROM alerts WHERE tenant_id = 'tenant-b'",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) > 0)
            .unwrap_or(false)
        }
    })
    .await;
    assert!(alert_stored, "B's low-stock alert is in the alerts table");

    let token_a = token("admin-a", "tenant-a", &["admin"]);
    let token_b = token("admin-b", "tenant-b", &["admin"]);
    let mut a = authed(&server, &token_a).await;
    let mut b = authed(&server, &token_b).await;

    // B sees its own data, so the queries do return rows...
    let low_b = data_request(&mut b, "low_stock_items", json!({})).await;
    assert_eq!(low_b.as_array().map(Vec::len), Some(1), "{low_b}");
    assert_eq!(low_b[0]["productId"], "p1", "{low_b}");
    let alerts_b = data_request(&mut b, "alerts", json!({})).await;
    assert!(
        alerts_b.as_array().is_some_and(|a| !a.is_empty()),
        "{alerts_b}"
    );
    // ... and A sees none of B's.
    let low_a = data_request(&mut a, "low_stock_items", json!({})).await;
    assert_eq!(low_a, json!([]), "A must not see B's low stock");
    let summary_a = data_request(&mut a, "inventory_summary", json!({})).await;
    assert_eq!(
        summary_a["stockRows"], 6,
        "A's six stock rows only: {summary_a}"
    );
    assert_eq!(summary_a["lowStockCount"], 0, "{summary_a}");
    assert_eq!(summary_a["totalProducts"], 3, "{summary_a}");
    let stats_a = data_request(&mut a, "order_stats", json!({})).await;
    assert_eq!(stats_a["totalOrders"], 2, "{stats_a}");
    assert_eq!(
        stats_a["byStatus"],
        json!({"pending": 2}),
        "A's orders are all pending: {stats_a}"
    );
    let orders_a = data_request(&mut a, "recent_orders", json!({})).await;
    assert!(
        orders_a
            .as_array()
            .is_some_and(|o| o.iter().all(|o| o["status"] == "pending")),
        "{orders_a}"
    );
    let activity_a = data_request(&mut a, "customer_activity", json!({})).await;
    assert_eq!(activity_a["recent"], json!([]), "{activity_a}");
    let alerts_a = data_request(&mut a, "alerts", json!({"all": true})).await;
    assert_eq!(alerts_a, json!([]), "A must not see B's alerts");
    let changes_a = data_request(&mut a, "recent_changes", json!({})).await;
    assert!(
        changes_a
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["tenantId"] == "tenant-a")),
        "{changes_a}"
    );
    let current = a
        .request(
            "/inventory",
            "inventory:get-current",
            json!({"filters": {"productIds": ["p1"]}}),
        )
        .await;
    assert_eq!(current["count"], 2, "A's p1 in two warehouses: {current}");
    assert!(
        current["items"]
            .as_array()
            .is_some_and(|i| i.iter().all(|r| r["quantity"] == 100.0)),
        "{current}"
    );
    let tracked = a
        .request("/orders", "orders:track", json!({"orderId": "o1"}))
        .await;
    assert_eq!(
        tracked["tracking"],
        Value::Null,
        "B's tracking is not A's: {tracked}"
    );
    let tracked_b = b
        .request("/orders", "orders:track", json!({"orderId": "o1"}))
        .await;
    assert_eq!(
        tracked_b["tracking"]["data"]["location"], "Lyon",
        "{tracked_b}"
    );

    // HTTP: /changes and /alerts with A's token.
    let auth = format!("Bearer {token_a}");
    let headers = [("Authorization", auth.as_str())];
    let changes = http_request_with(
        server.port,
        "GET",
        "/changes/inventory?limit=1000",
        &headers,
        None,
    )
    .await;
    assert_eq!(changes.status, 200, "{}", changes.text());
    let changes = changes.json();
    assert!(changes["count"].as_u64() > Some(0), "{changes}");
    assert!(
        changes["changes"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["tenantId"] == "tenant-a")),
        "{changes}"
    );
    let alerts = http_request_with(server.port, "GET", "/alerts?all=true", &headers, None).await;
    assert_eq!(alerts.json()["count"], 0, "{}", alerts.text());
    // Acknowledging B's alert as A: not found, and B's alert stays unacknowledged.
    let b_alert = alerts_b[0]["id"].as_str().expect("alert id").to_string();
    let ack = http_request_with(
        server.port,
        "POST",
        &format!("/alerts/{b_alert}/acknowledge"),
        &headers,
        None,
    )
    .await;
    assert_eq!(ack.status, 404, "{}", ack.text());
    let still: Option<std::time::SystemTime> = pg
        .query_one(
            "SELECT acknowledged_at FROM alerts WHERE tenant_id = 'tenant-b' AND id = $1",
            &[&b_alert],
        )
        .await
        .expect("alert row")
        .get(0);
    assert!(still.is_none(), "B's alert was not acknowledged by A");
    // B acknowledges its own: persisted.
    let auth_b = format!("Bearer {token_b}");
    let ack = http_request_with(
        server.port,
        "POST",
        &format!("/alerts/{b_alert}/acknowledge"),
        &[("Authorization", auth_b.as_str())],
        None,
    )
    .await;
    assert_eq!(ack.status, 200, "{}", ack.text());
    assert_eq!(ack.json()["acknowledged"], true, "{}", ack.text());
    let acked: Option<std::time::SystemTime> = pg
        .query_one(
            "SELECT acknowledged_at FROM alerts WHERE tenant_id = 'tenant-b' AND id = $1",
            &[&b_alert],
        )
        .await
        .expect("alert row")
        .get(0);
    assert!(acked.is_some(), "the acknowledgement is stored");
}

/// Request parameters are read the same way whichever store answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_stock_only_must_be_a_boolean_with_a_database() {
    let (_db, _pg, server) = setup("notify", &["default"], &[]).await;
    let mut c = server.connect().await;
    assert_low_stock_only_takes_only_booleans(&mut c).await;
}

// ---------------------------------------------------------------------------
// Operations: db-check, metrics, slow queries, a degraded start.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_check_reports_schema_triggers_and_round_trip() {
    let db = TestDb::create().await;
    let (ok, out) = db.db_check("notify");
    assert!(!ok, "an empty database fails the check: {out}");
    assert!(out.contains("MISSING"), "{out}");
    let applied = db.migrate("notify");
    assert!(
        applied.contains("core v1") && applied.contains("triggers v1"),
        "{applied}"
    );
    assert!(
        db.migrate("notify").contains("up to date"),
        "migrate is idempotent"
    );
    let (ok, out) = db.db_check("notify");
    assert!(ok, "{out}");
    assert!(
        out.contains("round trip: change-log seq") && out.contains("notified"),
        "{out}"
    );
    assert!(
        out.contains("triggers: customer_activity, inventory, order_tracking, orders"),
        "{out}"
    );

    // poll mode needs no triggers, and migrate installs none.
    let bare = TestDb::create().await;
    let out = bare.migrate("poll");
    assert!(out.contains("triggers not installed"), "{out}");
    let pg = bare.client().await;
    let triggers: i64 = pg
        .query_one("SELECT count(*) FROM information_schema.triggers", &[])
        .await
        .expect("count triggers")
        .get(0);
    assert_eq!(triggers, 0, "no trigger in poll mode");
    let functions: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public'",
            &[],
        )
        .await
        .expect("count functions")
        .get(0);
    assert_eq!(functions, 0, "no function in poll mode");
    let (ok, out) = bare.db_check("poll");
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_counted_and_slow_ones_raise_an_alert() {
    let (_db, _pg, server) = setup("notify", &["default"], &[("SLOW_QUERY_MS", "0")]).await;
    let mut client = server.connect().await;
    client.subscribe("/notifications", json!({})).await;
    data_request(&mut client, "inventory_summary", json!({})).await;
    let (frame, _) = client
        .recv_matching("slow_query notification", |f| {
            f["event"] == "notification" && f["data"]["type"] == "slow_query"
        })
        .await;
    assert!(frame["data"]["seq"].as_u64().is_some(), "{frame}");
    let m = metrics(server.port).await;
    assert!(m["niledb"]["queriesExecuted"].as_u64() >= Some(2), "{m}");
    assert!(m["niledb"]["slowQueries"].as_u64() >= Some(1), "{m}");
    let prom = http_get(server.port, "/metrics/prometheus").await.text();
    assert!(prom.contains("nilecast_db_queries_total"), "{prom}");
    assert!(prom.contains("nilecast_feed_connected 1"), "{prom}");
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Forwards `port` to PostgreSQL until dropped.
async fn forward(port: u16) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the forwarder");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_degraded_while_the_database_is_down_and_recovers() {
    let db = TestDb::create().await;
    let port = closed_port();
    let url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
    assert_ne!(url, db.url, "the test database is on 127.0.0.1:5432");
    let server = spawn_server(&[
        ("NILEDB_CONNECTION_STRING", &url),
        ("NILECAST_MIGRATE", "true"),
    ]);
    let health = get_json(server.port, "/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(
        health["services"]["niledb"]["listenerConnected"], false,
        "{health}"
    );
    // A request that needs the database is refused with `unavailable`, not hung.
    let mut client = server.connect().await;
    let reply = client
        .request("/", "data:request", json!({"dataType": "recent_orders"}))
        .await;
    assert_ack_error(&reply, "unavailable");

    let _forwarder = forward(port).await;
    pg::wait_feed_connected(server.port).await;
    let health = get_json(server.port, "/health").await;
    assert_eq!(health["status"], "healthy", "{health}");
    // The schema was applied once the database came up, and changes flow.
    client.subscribe("/inventory", json!({})).await;
    let seq = publish_one(server.port, inv("p9", "w1", 5)).await;
    client.recv_seq("/inventory", "inventory:update", seq).await;
}
