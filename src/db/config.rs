//! Database settings: the PostgreSQL / Nile DB connection, how changes are detected, the
//! change log's retention, and the MySQL / MariaDB read fallback.

use clap::{Args, ValueEnum};

/// How the change feed learns about new changes (`CHANGE_DETECTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Detection {
    /// Triggers write the change log and `pg_notify`; the feed `LISTEN`s (and still
    /// reads every `POLL_INTERVAL_MS` as a safety net).
    Notify,
    /// The feed reads the change log every `POLL_INTERVAL_MS`; the application (or
    /// `POST /publish`) writes change-log rows itself. No triggers or functions.
    Poll,
    /// The watched tables are scanned by their `updated_at` column every
    /// `POLL_INTERVAL_MS` and new row versions are written to the change log. No
    /// triggers or functions.
    TablePoll,
}

impl Detection {
    pub fn name(self) -> &'static str {
        match self {
            Detection::Notify => "notify",
            Detection::Poll => "poll",
            Detection::TablePoll => "table-poll",
        }
    }
}

/// Where the feed starts when it has not published anything yet in this process
/// (`FEED_START`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FeedStart {
    /// From the last seq this server stored (`nilecast_feed_state`), so changes written
    /// while it was down are published when it starts; from now when nothing is stored.
    Stored,
    /// From the newest change at start: what was written while it was down is not
    /// published (it is still replayed from the change log on `sinceSeq`).
    Now,
}

#[derive(Debug, Clone, Args)]
pub struct DbConfig {
    /// PostgreSQL / Nile DB connection string (`postgres://user:pass@host:port/db`,
    /// `?sslmode=require` for TLS). Takes precedence over the NILEDB_HOST group.
    /// (`--help` hides its value: it carries the password.)
    #[arg(
        long = "niledb-connection-string",
        env = "NILEDB_CONNECTION_STRING",
        value_name = "NILEDB_CONNECTION_STRING",
        hide_env_values = true
    )]
    pub connection_string: Option<String>,

    /// Database host, when no connection string is given.
    #[arg(long = "niledb-host", env = "NILEDB_HOST", value_name = "NILEDB_HOST")]
    pub host: Option<String>,

    #[arg(
        id = "niledb_port",
        long = "niledb-port",
        env = "NILEDB_PORT",
        value_name = "NILEDB_PORT",
        default_value_t = 5432
    )]
    pub port: u16,

    #[arg(long = "niledb-user", env = "NILEDB_USER", value_name = "NILEDB_USER")]
    pub user: Option<String>,

    #[arg(
        long = "niledb-password",
        env = "NILEDB_PASSWORD",
        value_name = "NILEDB_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    #[arg(
        long = "niledb-database",
        env = "NILEDB_DATABASE",
        value_name = "NILEDB_DATABASE"
    )]
    pub database: Option<String>,

    /// `disable`, `prefer` or `require` (TLS, verified against the Mozilla roots).
    /// Default: `sslmode` of the connection string, else `require` for hosts under
    /// `thenile.dev`, else `disable`.
    #[arg(
        long = "niledb-sslmode",
        env = "NILEDB_SSLMODE",
        value_name = "NILEDB_SSLMODE"
    )]
    pub sslmode: Option<String>,

    /// Connections in the query pool (the feed's listener has one more of its own).
    #[arg(
        long = "db-pool-size",
        env = "DB_POOL_SIZE",
        value_name = "DB_POOL_SIZE",
        default_value_t = 8
    )]
    pub pool_size: usize,

    /// How changes are detected: notify (triggers + LISTEN), poll (the change log on an
    /// interval) or table-poll (watched tables by `updated_at`, no triggers).
    #[arg(
        long = "change-detection",
        env = "CHANGE_DETECTION",
        value_name = "CHANGE_DETECTION",
        value_enum,
        default_value = "notify"
    )]
    pub detection: Detection,

    /// Interval of the poll modes, and of the safety-net read in notify mode, in ms.
    #[arg(
        long = "poll-interval-ms",
        env = "POLL_INTERVAL_MS",
        value_name = "POLL_INTERVAL_MS",
        default_value_t = 100
    )]
    pub poll_interval_ms: u64,

    /// Where the feed starts: `stored` (the last seq this server published, so nothing
    /// written while it was down is missed) or `now`.
    #[arg(
        long = "feed-start",
        env = "FEED_START",
        value_name = "FEED_START",
        value_enum,
        default_value = "stored"
    )]
    pub feed_start: FeedStart,

    /// Name under which the feed stores its position: in Redis cluster mode the same on
    /// every node (the leader's position); nodes sharing a database without Redis each
    /// follow the log and need names of their own.
    #[arg(
        long = "feed-name",
        env = "FEED_NAME",
        value_name = "FEED_NAME",
        default_value = "default"
    )]
    pub feed_name: String,

    /// Change-log rows read per batch.
    #[arg(
        long = "feed-batch",
        env = "FEED_BATCH",
        value_name = "FEED_BATCH",
        default_value_t = 2000
    )]
    pub feed_batch: i64,

    /// Tables `table-poll` watches, as JSON: `[{"table", "dataType", "idColumn",
    /// "keyColumns"?, "tenantColumn"?, "updatedAtColumn"?, "mapping"?}]`. Empty: the demo
    /// tables.
    #[arg(
        long = "table-poll-tables",
        env = "TABLE_POLL_TABLES",
        value_name = "TABLE_POLL_TABLES"
    )]
    pub table_poll_tables: Option<String>,

    /// How far back `table-poll` rescans, in ms, for rows whose transaction committed
    /// after a later `updated_at` was seen. A row committed later than this after its
    /// `updated_at` is missed; notify mode has no such window.
    #[arg(
        long = "table-poll-lookback-ms",
        env = "TABLE_POLL_LOOKBACK_MS",
        value_name = "TABLE_POLL_LOOKBACK_MS",
        default_value_t = 2000
    )]
    pub table_poll_lookback_ms: u64,

    /// Change-log rows older than this many hours are deleted (0 keeps everything).
    #[arg(
        long = "change-log-retention-hours",
        env = "CHANGE_LOG_RETENTION_HOURS",
        value_name = "CHANGE_LOG_RETENTION_HOURS",
        default_value_t = 168
    )]
    pub retention_hours: u64,

    /// How often the retention job runs, in ms.
    #[arg(
        long = "change-log-prune-interval-ms",
        env = "CHANGE_LOG_PRUNE_INTERVAL_MS",
        value_name = "CHANGE_LOG_PRUNE_INTERVAL_MS",
        default_value_t = 60_000
    )]
    pub prune_interval_ms: u64,

    /// Most changes one `sinceSeq` replay reads from the change log; a client further
    /// behind is told it has a gap.
    #[arg(
        long = "replay-max-db-changes",
        env = "REPLAY_MAX_DB_CHANGES",
        value_name = "REPLAY_MAX_DB_CHANGES",
        default_value_t = 10_000
    )]
    pub replay_max_db_changes: i64,

    /// Set `nile.tenant_id` for every query (Nile DB's tenant isolation). On by default
    /// for hosts under `thenile.dev`.
    #[arg(
        long = "nile-tenant-context",
        env = "NILE_TENANT_CONTEXT",
        value_name = "NILE_TENANT_CONTEXT"
    )]
    pub nile_tenant_context: Option<bool>,

    /// MySQL / MariaDB read fallback (the seed's main database): host.
    #[arg(long = "db-host", env = "DB_HOST", value_name = "DB_HOST")]
    pub fallback_host: Option<String>,

    #[arg(
        long = "db-port",
        env = "DB_PORT",
        value_name = "DB_PORT",
        default_value_t = 3306
    )]
    pub fallback_port: u16,

    #[arg(long = "db-user", env = "DB_USER", value_name = "DB_USER")]
    pub fallback_user: Option<String>,

    #[arg(
        long = "db-password",
        env = "DB_PASSWORD",
        value_name = "DB_PASSWORD",
        hide_env_values = true
    )]
    pub fallback_password: Option<String>,

    #[arg(long = "db-name", env = "DB_NAME", value_name = "DB_NAME")]
    pub fallback_name: Option<String>,
}

impl DbConfig {
    /// Whether a database is configured at all.
    pub fn enabled(&self) -> bool {
        self.connection_string.is_some() || self.host.is_some()
    }

    fn is_nile_host(&self) -> bool {
        let host = self.host.clone().unwrap_or_default();
        let conn = self.connection_string.clone().unwrap_or_default();
        host.contains("thenile.dev") || conn.contains("thenile.dev")
    }

    /// Whether queries set `nile.tenant_id`.
    pub fn tenant_context(&self) -> bool {
        self.nile_tenant_context
            .unwrap_or_else(|| self.is_nile_host())
    }

    /// The tokio-postgres configuration and whether TLS is required.
    pub fn pg_config(&self) -> Result<(tokio_postgres::Config, Tls), String> {
        let mut config: tokio_postgres::Config = match &self.connection_string {
            Some(s) => s.parse().map_err(|e| {
                format!("NILEDB_CONNECTION_STRING is not a valid connection string: {e}")
            })?,
            None => {
                let mut c = tokio_postgres::Config::new();
                c.host(self.host.as_deref().unwrap_or("localhost"));
                c.port(self.port);
                if let Some(u) = &self.user {
                    c.user(u);
                }
                if let Some(p) = &self.password {
                    c.password(p);
                }
                if let Some(d) = &self.database {
                    c.dbname(d);
                }
                c
            }
        };
        if config.get_user().is_none() {
            config.user("postgres");
        }
        config.application_name("nilecast");
        config.connect_timeout(std::time::Duration::from_secs(5));
        let mode = match self.sslmode.as_deref() {
            Some(m) => m.to_ascii_lowercase(),
            None if self.is_nile_host() => "require".into(),
            // tokio-postgres defaults to `prefer`; only an explicit `sslmode` in the
            // string counts (a local server's self-signed certificate would fail).
            None if !self
                .connection_string
                .as_deref()
                .is_some_and(|s| s.contains("sslmode")) =>
            {
                "disable".into()
            }
            None => match config.get_ssl_mode() {
                tokio_postgres::config::SslMode::Require => "require".into(),
                tokio_postgres::config::SslMode::Prefer => "prefer".into(),
                _ => "disable".into(),
            },
        };
        let tls = match mode.as_str() {
            "disable" => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Tls::Off
            }
            "prefer" | "allow" => {
                config.ssl_mode(tokio_postgres::config::SslMode::Prefer);
                Tls::On
            }
            "require" | "verify-ca" | "verify-full" => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Tls::On
            }
            other => {
                return Err(format!(
                    "NILEDB_SSLMODE: unknown mode {other:?} (disable, prefer, require)"
                ))
            }
        };
        Ok((config, tls))
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        self.pg_config()?;
        if self.poll_interval_ms == 0 {
            return Err("POLL_INTERVAL_MS must be greater than 0".into());
        }
        if self.prune_interval_ms == 0 {
            return Err("CHANGE_LOG_PRUNE_INTERVAL_MS must be greater than 0".into());
        }
        if self.feed_batch <= 0 || self.pool_size == 0 {
            return Err("FEED_BATCH and DB_POOL_SIZE must be greater than 0".into());
        }
        if let Some(spec) = &self.table_poll_tables {
            crate::db::table_poll::parse_specs(spec)?;
        }
        Ok(())
    }
}

/// Whether connections use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Off,
    On,
}
