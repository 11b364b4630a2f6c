//! A real PostgreSQL for the database tests: a fresh database per test (dropped
//! afterwards), a client for the test's own writes, and `nilecast migrate` run as a
//! user runs it.
//!
//! The server is `NILECAST_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`,
//! which `scripts/test.sh` starts when it is not running).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio_postgres::{Client, NoTls};

use super::{get_json, wait_until, TIMEOUT};

static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn admin_url() -> String {
    std::env::var("NILECAST_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && i > url.find("://").map_or(0, |j| j + 2) => {
            let rest = &url[i + 1..];
            let query = rest.find('?').map_or("", |q| &rest[q..]);
            format!("{}/{db}{query}", &url[..i])
        }
        _ => format!("{url}/{db}"),
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio::time::timeout(TIMEOUT, tokio_postgres::connect(url, NoTls))
        .await
        .unwrap_or_else(|_| panic!("connect to {url}: timeout"))
        .unwrap_or_else(|e| {
            panic!("connect to {url}: {e} (is PostgreSQL running? scripts/test.sh starts it)")
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of the test's own.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("nilecast_it_{}_{n}_{nanos}", std::process::id());
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let url = with_database(&admin_url(), &name);
        TestDb { name, url }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The server's environment for this database and detection mode.
    pub fn env(&self, detection: &str) -> Vec<(String, String)> {
        vec![
            ("NILEDB_CONNECTION_STRING".into(), self.url.clone()),
            ("CHANGE_DETECTION".into(), detection.into()),
            ("POLL_INTERVAL_MS".into(), "50".into()),
        ]
    }

    /// Runs `nilecast migrate` as a user would; panics unless it succeeds.
    pub fn migrate(&self, detection: &str) -> String {
        let out = Command::new(super::server_bin())
            .arg("migrate")
            .env("NILEDB_CONNECTION_STRING", &self.url)
            .env("CHANGE_DETECTION", detection)
            .output()
            .expect("run nilecast migrate");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "nilecast migrate failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs `nilecast db-check`; returns (success, stdout).
    pub fn db_check(&self, detection: &str) -> (bool, String) {
        let out = Command::new(super::server_bin())
            .arg("db-check")
            .env("NILEDB_CONNECTION_STRING", &self.url)
            .env("CHANGE_DETECTION", detection)
            .output()
            .expect("run nilecast db-check");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        super::block_on_detached(async move {
            if let Ok((client, connection)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                tokio::spawn(connection);
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
        });
    }
}

/// The `niledb` part of `/health`.
pub async fn niledb_health(port: u16) -> Value {
    get_json(port, "/health").await["services"]["niledb"].clone()
}

/// Waits until the server's change feed is connected (listener or poller).
pub async fn wait_feed_connected(port: u16) {
    let ok = wait_until(Duration::from_secs(30), || async move {
        niledb_health(port).await["listenerConnected"] == true
    })
    .await;
    assert!(
        ok,
        "the change feed did not connect: {}",
        niledb_health(port).await
    );
}

/// PIDs of backends of this database whose application_name is `app`.
pub async fn backends(admin: &Client, db: &str, app: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            &[&db, &app],
        )
        .await
        .expect("read pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Kills backends of this database whose application_name is `app`; returns how many.
pub async fn terminate(admin: &Client, db: &str, app: &str) -> usize {
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = $2",
            &[&db, &app],
        )
        .await
        .expect("pg_terminate_backend")
        .len()
}
