//! The MySQL / MariaDB read fallback against a real MariaDB: while PostgreSQL is
//! unreachable, reads of the business tables are answered from the fallback database,
//! still scoped to the caller's tenant; what needs PostgreSQL is refused with
//! `unavailable`.
//!
//! The server is `NILECAST_TEST_MYSQL` (default `mysql://root@127.0.0.1:3306`, which
//! `scripts/test.sh` starts when it is not running). The test creates a database of its
//! own with the shipped table definitions (src/db/sql/mysql_fallback.sql).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use mysql_async::prelude::Queryable;
use serde_json::{json, Value};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn mysql_url() -> String {
    std::env::var("NILECAST_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A MariaDB database of the test's own, dropped afterwards.
struct FallbackDb {
    pool: mysql_async::Pool,
    name: String,
}

impl FallbackDb {
    async fn create() -> FallbackDb {
        let name = format!(
            "nilecast_fb_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let admin = mysql_async::Pool::new(mysql_url().as_str());
        let mut conn = admin.get_conn().await.unwrap_or_else(|e| {
            panic!(
                "connect to {} (is MariaDB running? scripts/test.sh starts it): {e}",
                mysql_url()
            )
        });
        conn.query_drop(format!("CREATE DATABASE {name}"))
            .await
            .expect("create the fallback database");
        drop(conn);
        let _ = admin.disconnect().await;
        let pool = mysql_async::Pool::new(format!("{}/{name}", mysql_url()).as_str());
        let mut conn = pool
            .get_conn()
            .await
            .expect("connect to the fallback database");
        // The shipped file, comment lines dropped, one statement per `;`.
        let schema: String = include_str!("../src/db/sql/mysql_fallback.sql")
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        for statement in schema.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            conn.query_drop(statement)
                .await
                .expect("apply mysql_fallback.sql");
        }
        FallbackDb { pool, name }
    }

    async fn exec(&self, sql: &str) {
        let mut conn = self.pool.get_conn().await.expect("connection");
        conn.query_drop(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for FallbackDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        block_on_detached(async move {
            let admin = mysql_async::Pool::new(mysql_url().as_str());
            if let Ok(mut conn) = admin.get_conn().await {
                let _ = conn
                    .query_drop(format!("DROP DATABASE IF EXISTS {name}"))
                    .await;
            }
            let _ = admin.disconnect().await;
        });
    }
}

/// A port nothing listens on: PostgreSQL "unreachable".
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

async fn data(client: &mut Client, data_type: &str) -> Value {
    let reply = client
        .request(
            "/",
            "data:request",
            json!({"dataType": data_type, "parameters": {}}),
        )
        .await;
    assert!(reply.get("error").is_none(), "{data_type}: {reply}");
    reply["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_mariadb_while_postgres_is_unreachable() {
    let fb = FallbackDb::create().await;
    for tenant in ["acme", "other"] {
        fb.exec(&format!(
            "INSERT INTO products (tenant_id, id, name, sku, category, price, low_stock_threshold) VALUES
             ('{tenant}', 'p1', 'Drill', 'SKU-1', 'tools', 100, 5),
             ('{tenant}', 'p2', 'Saw', 'SKU-2', 'tools', 40, NULL)"
        ))
        .await;
    }
    fb.exec(
        "INSERT INTO inventory (tenant_id, product_id, warehouse_id, quantity) VALUES
         ('acme', 'p1', 'w1', 3), ('acme', 'p2', 'w1', 50), ('acme', 'p2', 'w2', 0),
         ('other', 'p1', 'w1', 1), ('other', 'p2', 'w9', 2)",
    )
    .await;
    fb.exec(
        "INSERT INTO orders (tenant_id, id, customer_id, status, total, updated_at) VALUES
         ('acme', 'o1', 'c1', 'pending', 10, UTC_TIMESTAMP(6) - INTERVAL 2 MINUTE),
         ('acme', 'o2', 'c2', 'shipped', 32.5, UTC_TIMESTAMP(6)),
         ('other', 'o9', 'c9', 'delivered', 999, UTC_TIMESTAMP(6))",
    )
    .await;
    fb.exec(
        "INSERT INTO customer_activity (tenant_id, customer_id, activity_type, updated_at) VALUES
         ('acme', 'c1', 'browse', UTC_TIMESTAMP(6)), ('acme', 'c2', 'purchase', UTC_TIMESTAMP(6)),
         ('other', 'c9', 'login', UTC_TIMESTAMP(6))",
    )
    .await;

    let pg_url = format!("postgres://postgres@127.0.0.1:{}/nilecast", closed_port());
    let (host, port) = {
        let rest = mysql_url();
        let rest = rest.trim_start_matches("mysql://");
        let at = rest.rfind('@').map_or(rest, |i| &rest[i + 1..]).to_string();
        let mut parts = at.split(':');
        (
            parts.next().unwrap_or("127.0.0.1").to_string(),
            parts.next().unwrap_or("3306").to_string(),
        )
    };
    let server = spawn_server(&[
        ("NILEDB_CONNECTION_STRING", &pg_url),
        ("DB_HOST", &host),
        ("DB_PORT", &port),
        ("DB_USER", "root"),
        ("DB_NAME", &fb.name),
        ("LOW_STOCK_THRESHOLD", "10"),
    ]);
    let health = get_json(server.port, "/health").await;
    assert_eq!(
        health["services"]["niledb"]["status"], "degraded",
        "{health}"
    );
    assert_eq!(
        health["services"]["niledb"]["fallback"]["status"], "configured",
        "{health}"
    );

    let mut client = Client::connect_path(server.port, "/ws?tenant=acme").await;
    let current = client
        .request(
            "/inventory",
            "inventory:get-current",
            json!({"filters": {"productIds": ["p2"]}}),
        )
        .await;
    assert_eq!(
        current["count"], 2,
        "acme's p2 in w1 and w2 only: {current}"
    );
    let items = current["items"].as_array().expect("items");
    assert_eq!(items[0]["warehouseId"], "w1", "{current}");
    assert_eq!(items[0]["quantity"], 50.0, "{current}");
    assert_eq!(
        items[0]["category"], "tools",
        "joined with products: {current}"
    );
    assert_eq!(items[1]["warehouseId"], "w2", "{current}");

    let low = data(&mut client, "low_stock_items").await;
    let low: Vec<(&str, &str)> = low
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            (
                r["productId"].as_str().unwrap_or(""),
                r["warehouseId"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        low,
        vec![("p1", "w1"), ("p2", "w2")],
        "p1 under its own threshold 5, p2 at 0"
    );

    let summary = data(&mut client, "inventory_summary").await;
    assert_eq!(summary["stockRows"], 3, "{summary}");
    assert_eq!(summary["totalProducts"], 2, "{summary}");
    assert_eq!(summary["totalUnits"], 53.0, "{summary}");
    assert_eq!(summary["outOfStockCount"], 1, "{summary}");
    assert_eq!(summary["lowStockCount"], 1, "{summary}");
    assert_eq!(
        summary["totalValue"], 2300.0,
        "3 x 100 + 50 x 40: {summary}"
    );

    let stats = data(&mut client, "order_stats").await;
    assert_eq!(stats["totalOrders"], 2, "{stats}");
    assert_eq!(
        stats["byStatus"],
        json!({"pending": 1, "shipped": 1}),
        "{stats}"
    );
    assert_eq!(stats["totalRevenue"], 42.5, "{stats}");

    let recent = data(&mut client, "recent_orders").await;
    let ids: Vec<&str> = recent
        .as_array()
        .expect("list")
        .iter()
        .map(|o| o["orderId"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ids,
        vec!["o2", "o1"],
        "acme's orders, newest first: {recent}"
    );
    assert!(
        recent[0]["updatedAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "times are ISO 8601: {recent}"
    );

    let activity = data(&mut client, "customer_activity").await;
    assert_eq!(activity["eventsLastMinute"], 2, "{activity}");
    assert_eq!(activity["activeCustomersLastMinute"], 2, "{activity}");
    assert_eq!(
        activity["byType"],
        json!({"browse": 1, "purchase": 1}),
        "{activity}"
    );

    // What needs PostgreSQL says so.
    let alerts = client
        .request("/", "data:request", json!({"dataType": "alerts"}))
        .await;
    assert_ack_error(&alerts, "unavailable");

    let m = metrics(server.port).await;
    assert!(m["niledb"]["fallbackQueries"].as_u64() >= Some(6), "{m}");
}
