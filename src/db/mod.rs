//! PostgreSQL / Nile DB: the connection pool, the schema, the change feed, queries, and
//! the MySQL / MariaDB read fallback.
//!
//! - [`schema`]: versioned, idempotent migrations (`nilecast migrate`).
//! - [`feed`]: the change feed, change log in, engine out, with seq = change-log seq.
//! - [`table_poll`]: change detection without triggers, by `updated_at`.
//! - [`store`]: writes (publish API, alerts, the simulator's demo tables).
//! - [`queries`]: reads for requests and the HTTP API, always scoped to one tenant.
//! - [`fallback`]: the same reads against MySQL / MariaDB while PostgreSQL is down.
//! - [`check`]: `nilecast migrate` and `nilecast db-check`.
//!
//! Architecture Invariant: every query of business data names the caller's tenant in a
//! `tenant_id = ?` predicate, and runs under `nile.tenant_id` where the server is Nile.

pub mod check;
pub mod config;
pub mod fallback;
pub mod feed;
pub mod queries;
pub mod schema;
pub mod sql;
pub mod store;
pub mod table_poll;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::{json, Value};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use config::{DbConfig, Detection, FeedStart};
use sql::{Param, Rows};

/// What went wrong with a database call, for logs and error replies.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unreachable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(String),
}

impl DbError {
    /// Errors that mean the server is unreachable (worth trying the fallback).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        // A closed connection, an I/O error or a server shutting down (class 57P, 08)
        // count as unreachable; anything else is the query's fault.
        let unreachable = e.is_closed()
            || e.code().is_none_or(|c| {
                let code = c.code();
                code.starts_with("08") || code.starts_with("57P")
            });
        let text = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        if unreachable {
            DbError::Unavailable(text)
        } else {
            DbError::Query(text)
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> DbError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => DbError::Unavailable(other.to_string()),
        }
    }
}

/// Query counters for `/metrics` and `/health`.
#[derive(Default)]
pub struct DbStats {
    pub queries: AtomicU64,
    pub errors: AtomicU64,
    pub query_time_us: AtomicU64,
    pub slow_queries: AtomicU64,
    pub fallback_queries: AtomicU64,
    /// Whether the last query or connection attempt reached the server.
    pub reachable: AtomicBool,
    /// Whether the feed's listener (notify) or poller is connected and reading.
    pub feed_connected: AtomicBool,
    pub feed_reconnects: AtomicU64,
    /// The last seq the feed published, and the newest seq in the log when it last read.
    pub feed_seq: AtomicU64,
    pub log_head: AtomicU64,
    /// Change-log time of the last change published, in ms since the epoch.
    pub feed_last_change_ms: AtomicU64,
    /// Commit-to-publish time of the last batch, in ms.
    pub feed_lag_ms: AtomicU64,
    pub feed_published: AtomicU64,
    pub gaps_skipped: AtomicU64,
    pub pruned: AtomicU64,
}

pub struct Db {
    pub config: DbConfig,
    pool: Pool,
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    pub fallback: Option<fallback::Fallback>,
    pub stats: DbStats,
    slow_query_ms: u64,
    /// Where slow queries are reported (tenant, query, ms): the app raises the alert.
    slow_sink: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<SlowQuery>>,
}

/// A query over `SLOW_QUERY_MS`.
#[derive(Debug)]
pub struct SlowQuery {
    pub tenant: String,
    pub query: &'static str,
    pub millis: u64,
}

/// TLS for database connections: rustls with the Mozilla roots (webpki-roots), ring as
/// the crypto provider.
fn tls_connector() -> Result<MakeRustlsConnect, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("database TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl Db {
    /// Builds the pool. Connects lazily: a server that is down makes queries fail (and
    /// the feed retry), not the start.
    pub fn new(config: &DbConfig, slow_query_ms: u64) -> Result<Arc<Db>, String> {
        let (pg, _tls) = config.pg_config()?;
        let tls = tls_connector()?;
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| format!("database pool: {e}"))?;
        let fallback = fallback::Fallback::from_config(config);
        Ok(Arc::new(Db {
            config: config.clone(),
            pool,
            pg,
            tls,
            fallback,
            stats: DbStats::default(),
            slow_query_ms,
            slow_sink: std::sync::OnceLock::new(),
        }))
    }

    /// Reports slow queries to `sink` from now on.
    pub fn set_slow_sink(&self, sink: tokio::sync::mpsc::UnboundedSender<SlowQuery>) {
        let _ = self.slow_sink.set(sink);
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        let client = self.pool.get().await.map_err(|e| {
            self.stats.reachable.store(false, Relaxed);
            DbError::from(e)
        })?;
        self.stats.reachable.store(true, Relaxed);
        Ok(client)
    }

    /// A connection of its own, outside the pool (the feed's listener), named
    /// `application_name`, and the future that drives it.
    pub async fn connect_dedicated_named(
        &self,
        application_name: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
                    tokio_postgres::Socket,
                >>::Stream,
            >,
        ),
        DbError,
    > {
        let mut config = self.pg.clone();
        config.application_name(application_name);
        config
            .connect(self.tls.clone())
            .await
            .map_err(|e| DbError::Unavailable(e.to_string()))
    }

    /// Runs a read query of one tenant's data: on PostgreSQL, or on the fallback while
    /// PostgreSQL is unreachable. Counted in the metrics; a query slower than
    /// `SLOW_QUERY_MS` is reported (a `slow_query` alert for the tenant).
    pub async fn read(&self, query: &sql::Query) -> Result<Timed<Rows>, DbError> {
        let started = Instant::now();
        let result = self.read_pg(query).await;
        let result = match result {
            Err(e) if e.is_unavailable() && query.mysql.is_some() => match &self.fallback {
                Some(fallback) => {
                    self.stats.fallback_queries.fetch_add(1, Relaxed);
                    tracing::debug!(query = query.name, error = %e, "reading from the fallback database");
                    fallback.read(query).await
                }
                None => Err(e),
            },
            other => other,
        };
        self.timed(query.name, Some(&query.tenant), started, result)
    }

    async fn read_pg(&self, query: &sql::Query) -> Result<Rows, DbError> {
        let mut client = self.client().await?;
        let text = query.pg_text();
        let params = query.pg_params();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| &**p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = if self.config.tenant_context() {
            let tx = client.transaction().await?;
            tx.execute(
                "SELECT set_config('nile.tenant_id', $1, true)",
                &[&query.tenant],
            )
            .await?;
            let rows = tx.query(&text, &refs).await?;
            tx.commit().await?;
            rows
        } else {
            client.query(&text, &refs).await?
        };
        Ok(sql::pg_rows(&rows))
    }

    /// Counts a finished query, and reports it when slow.
    pub fn timed<T>(
        &self,
        name: &'static str,
        tenant: Option<&str>,
        started: Instant,
        result: Result<T, DbError>,
    ) -> Result<Timed<T>, DbError> {
        let elapsed = started.elapsed();
        self.stats.queries.fetch_add(1, Relaxed);
        self.stats
            .query_time_us
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
        match result {
            Ok(value) => {
                let slow = elapsed > Duration::from_millis(self.slow_query_ms);
                if slow {
                    self.stats.slow_queries.fetch_add(1, Relaxed);
                    if let (Some(sink), Some(tenant)) = (self.slow_sink.get(), tenant) {
                        let _ = sink.send(SlowQuery {
                            tenant: tenant.to_string(),
                            query: name,
                            millis: elapsed.as_millis() as u64,
                        });
                    }
                }
                Ok(Timed {
                    value,
                    millis: elapsed.as_millis() as u64,
                    slow,
                    name,
                })
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Relaxed);
                tracing::warn!(query = name, error = %e, "query failed");
                Err(e)
            }
        }
    }

    /// The `niledb` part of `/health`. `tails` is false on a cluster's standby node,
    /// whose feed does not run (the leader's does).
    pub fn health(&self, tails: bool) -> Value {
        let s = &self.stats;
        let reachable = s.reachable.load(Relaxed);
        let connected = s.feed_connected.load(Relaxed);
        let seq = s.feed_seq.load(Relaxed);
        let head = s.log_head.load(Relaxed);
        let healthy = reachable && (connected || !tails);
        json!({
            "status": if healthy { "healthy" } else { "degraded" },
            "feedRole": if tails { "tailing" } else { "standby" },
            "reachable": reachable,
            "changeDetection": self.config.detection.name(),
            "listenerConnected": connected,
            "feed": {
                "lastSeq": seq,
                "headSeq": head,
                "lagSeq": head.saturating_sub(seq),
                "lagMs": s.feed_lag_ms.load(Relaxed),
                "reconnects": s.feed_reconnects.load(Relaxed),
            },
            "queriesExecuted": s.queries.load(Relaxed),
            "errorsOccurred": s.errors.load(Relaxed),
            "fallback": match &self.fallback {
                None => json!({ "status": "disabled" }),
                Some(_) => json!({ "status": "configured", "queries": s.fallback_queries.load(Relaxed) }),
            },
        })
    }

    /// The `niledb` part of `/metrics`.
    pub fn metrics(&self) -> Value {
        let s = &self.stats;
        let queries = s.queries.load(Relaxed);
        let avg_ms = if queries == 0 {
            0.0
        } else {
            s.query_time_us.load(Relaxed) as f64 / queries as f64 / 1000.0
        };
        json!({
            "queriesExecuted": queries,
            "errorsOccurred": s.errors.load(Relaxed),
            "averageQueryTime": (avg_ms * 100.0).round() / 100.0,
            "slowQueries": s.slow_queries.load(Relaxed),
            "fallbackQueries": s.fallback_queries.load(Relaxed),
            "connectionHealth": if s.reachable.load(Relaxed) { "healthy" } else { "unreachable" },
            "feed": {
                "changeDetection": self.config.detection.name(),
                "connected": s.feed_connected.load(Relaxed),
                "published": s.feed_published.load(Relaxed),
                "lastSeq": s.feed_seq.load(Relaxed),
                "lagMs": s.feed_lag_ms.load(Relaxed),
                "reconnects": s.feed_reconnects.load(Relaxed),
                "gapsSkipped": s.gaps_skipped.load(Relaxed),
                "pruned": s.pruned.load(Relaxed),
            },
        })
    }

    /// Prometheus lines for the database.
    pub fn prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let s = &self.stats;
        let lines: [(&str, &str, &str, f64); 8] = [
            (
                "nilecast_db_queries_total",
                "counter",
                "Database queries run.",
                s.queries.load(Relaxed) as f64,
            ),
            (
                "nilecast_db_query_errors_total",
                "counter",
                "Database queries that failed.",
                s.errors.load(Relaxed) as f64,
            ),
            (
                "nilecast_db_query_seconds_total",
                "counter",
                "Time spent in database queries.",
                s.query_time_us.load(Relaxed) as f64 / 1e6,
            ),
            (
                "nilecast_db_slow_queries_total",
                "counter",
                "Queries over SLOW_QUERY_MS.",
                s.slow_queries.load(Relaxed) as f64,
            ),
            (
                "nilecast_db_fallback_queries_total",
                "counter",
                "Reads served by the MySQL fallback.",
                s.fallback_queries.load(Relaxed) as f64,
            ),
            (
                "nilecast_feed_published_total",
                "counter",
                "Changes the database feed published.",
                s.feed_published.load(Relaxed) as f64,
            ),
            (
                "nilecast_feed_lag_seconds",
                "gauge",
                "Change-log write to publish time of the last batch.",
                s.feed_lag_ms.load(Relaxed) as f64 / 1000.0,
            ),
            (
                "nilecast_feed_connected",
                "gauge",
                "Whether the change feed is connected.",
                f64::from(u8::from(s.feed_connected.load(Relaxed))),
            ),
        ];
        for (name, kind, help, value) in lines {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

/// A query's result with its duration.
pub struct Timed<T> {
    pub value: T,
    pub millis: u64,
    pub slow: bool,
    pub name: &'static str,
}

/// Parameters of one read query, built with [`sql::Query`].
pub type Params = Vec<Param>;
