//! The server's typed configuration: every setting, its environment variable, its
//! default and its validation, in one struct.
//!
//! Values come from (highest first) command-line flags, environment variables, a `.env`
//! file in the working directory (read by [`load_dotenv`], which `main.rs` calls before
//! parsing; a malformed one stops start-up), then the defaults below. `nilecast serve --help` is generated from this file, so the doc comment on a
//! field is its documentation. Each flag's value name is its environment variable, which
//! makes a bad value's error message name the variable a user actually set.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};

/// Loads the `.env` file of the working directory (or, as dotenvy looks for it, of the
/// nearest parent that has one) into the environment, without overriding variables
/// already set. No file is fine; a file that can not be read or has a malformed line is
/// an error naming the file and the line, because dotenvy stops at the first bad line
/// and a start-up that went on would run without every setting after it.
pub fn load_dotenv() -> Result<Option<PathBuf>, String> {
    let cwd = std::env::current_dir()
        .map_err(|e| format!("cannot read the working directory to look for .env: {e}"))?;
    let Some(path) = cwd
        .ancestors()
        .map(|dir| dir.join(".env"))
        .find(|candidate| candidate.is_file())
    else {
        return Ok(None);
    };
    match dotenvy::from_path(&path) {
        Ok(()) => Ok(Some(path)),
        Err(dotenvy::Error::LineParse(line, index)) => {
            let contents = std::fs::read_to_string(&path).unwrap_or_default();
            let at = match line_number(&contents, &line) {
                Some(n) => format!("line {n}"),
                None => "a line".to_string(),
            };
            Err(format!(
                "{}: {at} is not a setting (NAME=value), at character {}: {}",
                path.display(),
                index + 1,
                line.lines().next().unwrap_or_default().trim()
            ))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The 1-based number of the line of `contents` where dotenvy's failing `statement`
/// starts. dotenvy reports the statement, not its position, and a statement (a quoted
/// value) may span lines, so its first line is what is looked for.
fn line_number(contents: &str, statement: &str) -> Option<usize> {
    let first = statement.lines().next()?.trim();
    contents
        .lines()
        .position(|l| l.trim() == first)
        .map(|i| i + 1)
}

pub use crate::fanout::outbox::SlowConsumerPolicy;
use crate::fanout::EngineSettings;

/// `SLOW_CONSUMER_POLICY`: the policy lives in the core crate, which knows no clap, so
/// its values are listed here (the orphan rule keeps `ValueEnum` from being derived for
/// it in this crate).
fn slow_consumer_policy() -> impl clap::builder::TypedValueParser<Value = SlowConsumerPolicy> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new("disconnect").help(
            "Close the connection with 1013 (try again later). The client reconnects and \
             resumes with `sinceSeq`, so it loses nothing it can not replay",
        ),
        PossibleValue::new("drop-oldest").help(
            "Drop the oldest queued frames and later tell the client how many with a \
             `messages:dropped` event",
        ),
    ])
    .map(|name| match name.as_str() {
        "drop-oldest" => SlowConsumerPolicy::DropOldest,
        _ => SlowConsumerPolicy::Disconnect,
    })
}

/// Where the server runs. Only two behaviours exist; `test`, which test runners put in
/// `NODE_ENV`, is development.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Environment {
    #[default]
    Development,
    Production,
}

impl Environment {
    /// Reads the value of `variable`. Anything unknown is an error, so a typo such as
    /// `prod` can not silently run a production deployment in development mode.
    pub fn parse(variable: &str, value: &str) -> Result<Environment, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "development" | "test" => Ok(Environment::Development),
            "production" => Ok(Environment::Production),
            _ => Err(format!(
                "{variable} is {value:?}: it must be development, production or test"
            )),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// TCP port for HTTP and WebSocket (0 picks a free port).
    #[arg(
        long = "port",
        env = "WEBSOCKET_PORT",
        value_name = "WEBSOCKET_PORT",
        default_value_t = 4001
    )]
    pub port: u16,

    /// Address to listen on.
    #[arg(
        long = "bind",
        env = "BIND_ADDRESS",
        value_name = "BIND_ADDRESS",
        default_value = "0.0.0.0"
    )]
    pub bind: IpAddr,

    /// Allowed browser origins for the HTTP API and WebSocket upgrades, comma-separated,
    /// compared without case. A listed origin gets CORS answers with credentials; `*`
    /// allows any origin, without credentials (`Access-Control-Allow-Origin: *`).
    #[arg(
        long = "cors-origin",
        env = "CORS_ORIGIN",
        value_name = "CORS_ORIGIN",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,

    /// Runtime worker threads; 0 means one per CPU core. (The seed's cluster workers are
    /// threads here, not processes.)
    #[arg(
        long = "workers",
        env = "WEBSOCKET_WORKERS",
        value_name = "WEBSOCKET_WORKERS",
        default_value_t = 0
    )]
    pub workers: usize,

    /// Refuse new WebSocket connections (503) while the process RSS is above this many
    /// MiB; 0 disables the check.
    #[arg(
        long = "max-memory-mb",
        env = "MAX_MEMORY_MB",
        value_name = "MAX_MEMORY_MB",
        default_value_t = 0
    )]
    pub max_memory_mb: u64,

    /// Refuse new WebSocket connections (503) beyond this many open ones. The process's
    /// open-file limit caps this too.
    #[arg(
        long = "max-connections",
        env = "MAX_CONNECTIONS",
        value_name = "MAX_CONNECTIONS",
        default_value_t = 100_000
    )]
    pub max_connections: usize,

    /// Offer permessage-deflate (RFC 7692) on WebSocket upgrades (off by default): each
    /// broadcast is compressed once and shared by every connection that negotiated it.
    #[arg(long = "permessage-deflate", env = "PERMESSAGE_DEFLATE", value_name = "PERMESSAGE_DEFLATE", action = ArgAction::Set, default_value_t = false)]
    pub permessage_deflate: bool,

    /// Largest client WebSocket message in bytes (after decompression, with
    /// permessage-deflate); a larger one closes the connection with 1009.
    #[arg(long = "max-message-bytes", env = "MAX_MESSAGE_BYTES", value_name = "MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Largest HTTP request body in bytes; a larger one answers 413.
    #[arg(long = "max-body-bytes", env = "MAX_BODY_BYTES", value_name = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Subscriptions per connection, over all namespaces.
    #[arg(
        long = "max-subscriptions",
        env = "MAX_SUBSCRIPTIONS",
        value_name = "MAX_SUBSCRIPTIONS",
        default_value_t = 100
    )]
    pub max_subscriptions: usize,

    /// Values in one filter field (`productIds`, `types`, ...).
    #[arg(
        long = "max-filter-values",
        env = "MAX_FILTER_VALUES",
        value_name = "MAX_FILTER_VALUES",
        default_value_t = 100
    )]
    pub max_filter_values: usize,

    /// Changes kept in memory for `sinceSeq` replay and `/changes`.
    #[arg(
        long = "replay-max-changes",
        env = "REPLAY_MAX_CHANGES",
        value_name = "REPLAY_MAX_CHANGES",
        default_value_t = 1000
    )]
    pub replay_max_changes: usize,

    /// Longest time a change is kept for replay, in milliseconds (the seed's
    /// `messageRetention`).
    #[arg(
        long = "replay-max-age-ms",
        env = "REPLAY_MAX_AGE_MS",
        value_name = "REPLAY_MAX_AGE_MS",
        default_value_t = 300_000
    )]
    pub replay_max_age_ms: u64,

    /// Client messages allowed per connection per window (the seed's `maxMessages`).
    #[arg(
        long = "rate-limit-max-messages",
        env = "RATE_LIMIT_MAX_MESSAGES",
        value_name = "RATE_LIMIT_MAX_MESSAGES",
        default_value_t = 100
    )]
    pub rate_limit_max_messages: u32,

    /// The rate-limit window in milliseconds (the seed's `windowMs`).
    #[arg(
        long = "rate-limit-window-ms",
        env = "RATE_LIMIT_WINDOW_MS",
        value_name = "RATE_LIMIT_WINDOW_MS",
        default_value_t = 60_000
    )]
    pub rate_limit_window_ms: u64,

    /// Frames queued for one connection before the slow-consumer policy applies.
    #[arg(
        long = "queue-max-frames",
        env = "QUEUE_MAX_FRAMES",
        value_name = "QUEUE_MAX_FRAMES",
        default_value_t = 4096
    )]
    pub queue_max_frames: usize,

    /// Bytes queued for one connection (broadcasts, replies and pongs alike) before the
    /// slow-consumer policy applies.
    #[arg(
        long = "queue-max-bytes",
        env = "QUEUE_MAX_BYTES",
        value_name = "QUEUE_MAX_BYTES",
        default_value_t = 1024 * 1024
    )]
    pub queue_max_bytes: usize,

    /// Bytes queued over all connections above which new requests are refused with
    /// `unavailable` (broadcasts still follow the slow-consumer policy).
    #[arg(
        long = "server-queue-max-bytes",
        env = "SERVER_QUEUE_MAX_BYTES",
        value_name = "SERVER_QUEUE_MAX_BYTES",
        default_value_t = 256 * 1024 * 1024
    )]
    pub server_queue_max_bytes: usize,

    /// With auth on, a connection that has not authenticated within this many
    /// milliseconds gets `auth:error` and is closed with 1008.
    #[arg(
        long = "auth-timeout-ms",
        env = "AUTH_TIMEOUT_MS",
        value_name = "AUTH_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub auth_timeout_ms: u64,

    /// What happens to a connection whose queue is full.
    #[arg(long = "slow-consumer-policy", env = "SLOW_CONSUMER_POLICY", value_name = "SLOW_CONSUMER_POLICY", value_parser = slow_consumer_policy(), default_value = "disconnect")]
    pub slow_consumer_policy: SlowConsumerPolicy,

    /// Interval between server pings, in milliseconds (`heartbeatMs`).
    #[arg(
        long = "heartbeat-interval-ms",
        env = "HEARTBEAT_INTERVAL_MS",
        value_name = "HEARTBEAT_INTERVAL_MS",
        default_value_t = 25_000
    )]
    pub heartbeat_interval_ms: u64,

    /// A connection silent for a heartbeat interval plus this long is closed.
    #[arg(
        long = "heartbeat-timeout-ms",
        env = "HEARTBEAT_TIMEOUT_MS",
        value_name = "HEARTBEAT_TIMEOUT_MS",
        default_value_t = 20_000
    )]
    pub heartbeat_timeout_ms: u64,

    /// Time a client has to send its complete HTTP request head (slowloris guard).
    #[arg(
        long = "handshake-timeout-ms",
        env = "HANDSHAKE_TIMEOUT_MS",
        value_name = "HANDSHAKE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub handshake_timeout_ms: u64,

    /// Time a client has to send a complete HTTP request body (`POST /publish`, ...),
    /// counted from the end of the head; a body still arriving then is answered 408
    /// `timeout` and the connection closed, so a trickled body can not hold it forever.
    #[arg(
        long = "body-timeout-ms",
        env = "BODY_TIMEOUT_MS",
        value_name = "BODY_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub body_timeout_ms: u64,

    /// After sending a close frame, how long to wait for the client's close before
    /// dropping the TCP connection.
    #[arg(
        long = "close-timeout-ms",
        env = "CLOSE_TIMEOUT_MS",
        value_name = "CLOSE_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub close_timeout_ms: u64,

    /// On SIGTERM/SIGINT, how long connections get to flush and close before exit.
    #[arg(
        long = "shutdown-timeout-ms",
        env = "SHUTDOWN_TIMEOUT_MS",
        value_name = "SHUTDOWN_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub shutdown_timeout_ms: u64,

    /// Simulated changes per second from the built-in demo simulator; 0 turns it off.
    /// Default: 20 when neither production (NILECAST_ENV), a database nor REDIS_URL is
    /// configured, so `cargo run` shows live demo data; otherwise 0, because with a
    /// database the simulator writes demo rows into its tables and with Redis it
    /// publishes them to every node. Set it to turn the simulator on anywhere.
    #[arg(
        long = "simulate-rate",
        env = "SIMULATE_RATE",
        value_name = "SIMULATE_RATE"
    )]
    pub simulate_rate_setting: Option<f64>,

    /// The simulator's rate `validate` resolved from SIMULATE_RATE and the default.
    #[arg(skip)]
    pub simulate_rate: f64,

    /// Stock at or below this raises a `low_stock` alert (severity high), unless the
    /// change or the product carries its own threshold.
    #[arg(
        long = "low-stock-threshold",
        env = "LOW_STOCK_THRESHOLD",
        value_name = "LOW_STOCK_THRESHOLD",
        default_value_t = 10.0
    )]
    pub low_stock_threshold: f64,

    /// Stock at or below this raises an `out_of_stock` alert (severity critical).
    #[arg(
        long = "out-of-stock-threshold",
        env = "OUT_OF_STOCK_THRESHOLD",
        value_name = "OUT_OF_STOCK_THRESHOLD",
        default_value_t = 0.0
    )]
    pub out_of_stock_threshold: f64,

    /// New orders per minute per tenant above which a `high_order_volume` alert
    /// (severity medium) is raised.
    #[arg(
        long = "high-order-volume-threshold",
        env = "HIGH_ORDER_VOLUME_THRESHOLD",
        value_name = "HIGH_ORDER_VOLUME_THRESHOLD",
        default_value_t = 100
    )]
    pub high_order_volume_threshold: u64,

    /// Unacknowledged alerts kept per tenant (the oldest give way to new ones), and
    /// acknowledged alerts kept per tenant for `GET /alerts?all=true`.
    #[arg(
        long = "alerts-max-per-tenant",
        env = "ALERTS_MAX_PER_TENANT",
        value_name = "ALERTS_MAX_PER_TENANT",
        default_value_t = 1000
    )]
    pub alerts_max_per_tenant: usize,

    /// Queries slower than this many milliseconds raise a `slow_query` alert (severity
    /// medium).
    #[arg(
        long = "slow-query-ms",
        env = "SLOW_QUERY_MS",
        value_name = "SLOW_QUERY_MS",
        default_value_t = 1000
    )]
    pub slow_query_ms: u64,

    /// Serve the `/echo` conformance endpoint (off by default).
    #[arg(long = "echo-endpoint", env = "NILECAST_ECHO_ENDPOINT", value_name = "NILECAST_ECHO_ENDPOINT", action = ArgAction::Set, default_value_t = false)]
    pub echo_endpoint: bool,

    /// Shared secret for HS256 tokens (at least 32 bytes). Setting it or
    /// JWT_PUBLIC_KEY turns authentication on.
    #[arg(
        long = "jwt-secret",
        env = "JWT_SECRET",
        value_name = "JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,

    /// Public key for RS256 or ES256 tokens: PEM text (`\n` escapes allowed) or the
    /// path of a PEM file.
    #[arg(
        long = "jwt-public-key",
        env = "JWT_PUBLIC_KEY",
        value_name = "JWT_PUBLIC_KEY"
    )]
    pub jwt_public_key: Option<String>,

    /// Accepted token algorithms, comma-separated (HS256, RS256, ES256). Default: HS256
    /// with JWT_SECRET, and RS256 or ES256 (by the key's type) with JWT_PUBLIC_KEY. A
    /// token's own `alg` header never widens this.
    #[arg(
        long = "jwt-algorithms",
        env = "JWT_ALGORITHMS",
        value_name = "JWT_ALGORITHMS",
        value_delimiter = ','
    )]
    pub jwt_algorithms: Vec<String>,

    /// Clock skew allowed when checking `exp` and `nbf`, in seconds.
    #[arg(
        long = "jwt-leeway-s",
        env = "JWT_LEEWAY_S",
        value_name = "JWT_LEEWAY_S",
        default_value_t = 5
    )]
    pub jwt_leeway_s: u64,

    /// When set, tokens must carry this `iss` claim.
    #[arg(long = "jwt-issuer", env = "JWT_ISSUER", value_name = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, tokens must carry this `aud` claim.
    #[arg(
        long = "jwt-audience",
        env = "JWT_AUDIENCE",
        value_name = "JWT_AUDIENCE"
    )]
    pub jwt_audience: Option<String>,

    /// Longest token accepted, in bytes.
    #[arg(
        long = "jwt-max-bytes",
        env = "JWT_MAX_BYTES",
        value_name = "JWT_MAX_BYTES",
        default_value_t = 4096
    )]
    pub jwt_max_bytes: usize,

    /// Longest a token may still be valid, in seconds: a token whose `exp` lies further
    /// ahead than this (plus JWT_LEEWAY_S) is refused as `unauthorized`. 604800 (7 days)
    /// by default; `nilecast token` mints tokens for an hour.
    #[arg(
        long = "jwt-max-lifetime-s",
        env = "JWT_MAX_LIFETIME_S",
        value_name = "JWT_MAX_LIFETIME_S",
        default_value_t = 7 * 24 * 3600
    )]
    pub jwt_max_lifetime_s: u64,

    /// A connection still sending once it has sent this many times its rate limit
    /// within the window is closed with 1008.
    #[arg(
        long = "rate-limit-close-multiple",
        env = "RATE_LIMIT_CLOSE_MULTIPLE",
        value_name = "RATE_LIMIT_CLOSE_MULTIPLE",
        default_value_t = 2
    )]
    pub rate_limit_close_multiple: u32,

    /// Connections one client address may hold at once, plain HTTP and WebSocket alike
    /// (an IPv6 client is counted by its /64); one more is answered 429 and closed.
    /// Connections from TRUSTED_PROXIES are counted by their forwarded client, at the
    /// WebSocket upgrade. 0 for no limit.
    #[arg(
        long = "max-connections-per-ip",
        env = "MAX_CONNECTIONS_PER_IP",
        value_name = "MAX_CONNECTIONS_PER_IP",
        default_value_t = 1000
    )]
    pub max_connections_per_ip: u32,

    /// WebSocket upgrades per second from one client address, IPv6 by its /64 (a burst
    /// of one second's worth is allowed); 0 for no limit.
    #[arg(
        long = "upgrades-per-ip-per-s",
        env = "UPGRADES_PER_IP_PER_S",
        value_name = "UPGRADES_PER_IP_PER_S",
        default_value_t = 100
    )]
    pub upgrades_per_ip_per_s: u32,

    /// Proxies whose `X-Forwarded-For` is believed (addresses or CIDR blocks,
    /// comma-separated), e.g. the nginx in front. From anyone else the header is
    /// ignored.
    #[arg(
        long = "trusted-proxies",
        env = "TRUSTED_PROXIES",
        value_name = "TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,

    /// Largest HTTP request head (request line and headers), in bytes; at least 8192.
    #[arg(
        long = "max-header-bytes",
        env = "MAX_HEADER_BYTES",
        value_name = "MAX_HEADER_BYTES",
        default_value_t = 16 * 1024
    )]
    pub max_header_bytes: usize,

    /// This node's name, shown in `connection:established`, `/health` and `GET /`, so
    /// clients and operators behind a load balancer can tell nodes apart. Default: a
    /// random name per process.
    #[arg(long = "node-id", env = "NODE_ID", value_name = "NODE_ID")]
    pub node_id: Option<String>,

    /// Where the other nodes of a cluster reach this node's HTTP API (`host:port`), for
    /// `/clients?scope=cluster`. Default: the bound address, or this host's name and the
    /// port when bound to every interface.
    #[arg(long = "node-addr", env = "NODE_ADDR", value_name = "NODE_ADDR")]
    pub node_addr: Option<String>,

    /// Redis for cluster mode: changes travel between nodes through a Redis Stream with
    /// one global seq. With a database, one node (the lease holder) tails the database
    /// into the stream.
    /// (`--help` hides its value: the URL may carry a password.)
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        value_name = "REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,

    /// About how many changes the Redis stream keeps (trimmed with `MAXLEN ~`). Without
    /// a database this is how far back a `sinceSeq` replay beyond a node's ring reaches;
    /// with one, replays read the change log and the stream only needs to cover a node's
    /// reconnect.
    #[arg(
        long = "redis-stream-max-len",
        env = "REDIS_STREAM_MAX_LEN",
        value_name = "REDIS_STREAM_MAX_LEN",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u64).range(1000..)
    )]
    pub redis_stream_max_len: u64,

    /// With a database in cluster mode: the leader's lease in Redis, in ms. A standby
    /// takes over within about this long of the leader's death.
    #[arg(
        long = "leader-lease-ms",
        env = "LEADER_LEASE_MS",
        value_name = "LEADER_LEASE_MS",
        default_value_t = 5000,
        value_parser = clap::value_parser!(u64).range(300..)
    )]
    pub leader_lease_ms: u64,

    /// Shared secret that authenticates the nodes' requests to each other (the
    /// `/clients?scope=cluster` fan-out). Default: a random secret the cluster keeps
    /// in Redis under `<REDIS_PREFIX>:secret`.
    #[arg(
        long = "cluster-secret",
        env = "CLUSTER_SECRET",
        value_name = "CLUSTER_SECRET",
        hide_env_values = true
    )]
    pub cluster_secret: Option<String>,

    /// Prefix of every Redis key nilecast uses (one per deployment).
    #[arg(
        long = "redis-prefix",
        env = "REDIS_PREFIX",
        value_name = "REDIS_PREFIX",
        default_value = "nilecast"
    )]
    pub redis_prefix: String,

    #[command(flatten)]
    pub db: crate::db::DbConfig,

    /// Apply the database schema (`nilecast migrate`) at start, retrying while the
    /// database is unreachable.
    #[arg(
        long = "migrate",
        env = "NILECAST_MIGRATE",
        value_name = "NILECAST_MIGRATE"
    )]
    pub migrate: bool,

    /// The token verifier built from the JWT settings by `validate` (None: auth off).
    #[arg(skip)]
    pub verifier: Option<std::sync::Arc<crate::auth::jwt::Verifier>>,

    /// Parsed `TRUSTED_PROXIES`.
    #[arg(skip)]
    pub trusted: Vec<crate::security::IpRange>,

    /// `development` (the default), `production`, or `test` (the same as development).
    /// Production turns off the `/test` and `/demo` pages, needs a JWT key and leaves the
    /// simulator off unless SIMULATE_RATE is set. When unset, `NODE_ENV` is read, for the
    /// seed's deployments. Any other value in either stops start-up.
    #[arg(long = "env", env = "NILECAST_ENV", value_name = "NILECAST_ENV")]
    pub environment_setting: Option<String>,

    /// The environment `validate` resolved from NILECAST_ENV or NODE_ENV.
    #[arg(skip)]
    pub environment: Environment,
}

impl Config {
    /// What the engine is built with.
    pub fn engine_settings(&self) -> EngineSettings {
        EngineSettings {
            replay_max_changes: self.replay_max_changes,
            replay_max_age_ms: self.replay_max_age_ms,
            max_subscriptions: self.max_subscriptions,
        }
    }

    /// Checks what clap's types cannot, and names the variable at fault.
    pub fn validate(&mut self) -> Result<(), String> {
        // NILECAST_ENV wins over NODE_ENV; an empty value counts as unset, as it does
        // for the other optional settings.
        let node_env = std::env::var("NODE_ENV").ok();
        self.environment = match (self.environment_setting.as_deref(), node_env.as_deref()) {
            (Some(value), _) if !value.trim().is_empty() => {
                Environment::parse("NILECAST_ENV", value)?
            }
            (_, Some(value)) if !value.trim().is_empty() => Environment::parse("NODE_ENV", value)?,
            _ => Environment::Development,
        };
        let positive: [(&str, u64); 17] = [
            ("ALERTS_MAX_PER_TENANT", self.alerts_max_per_tenant as u64),
            ("QUEUE_MAX_BYTES", self.queue_max_bytes as u64),
            ("SERVER_QUEUE_MAX_BYTES", self.server_queue_max_bytes as u64),
            ("AUTH_TIMEOUT_MS", self.auth_timeout_ms),
            ("MAX_CONNECTIONS", self.max_connections as u64),
            ("MAX_MESSAGE_BYTES", self.max_message_bytes as u64),
            ("MAX_BODY_BYTES", self.max_body_bytes as u64),
            ("MAX_SUBSCRIPTIONS", self.max_subscriptions as u64),
            ("MAX_FILTER_VALUES", self.max_filter_values as u64),
            (
                "RATE_LIMIT_MAX_MESSAGES",
                u64::from(self.rate_limit_max_messages),
            ),
            ("RATE_LIMIT_WINDOW_MS", self.rate_limit_window_ms),
            ("QUEUE_MAX_FRAMES", self.queue_max_frames as u64),
            ("HEARTBEAT_INTERVAL_MS", self.heartbeat_interval_ms),
            ("HEARTBEAT_TIMEOUT_MS", self.heartbeat_timeout_ms),
            ("HANDSHAKE_TIMEOUT_MS", self.handshake_timeout_ms),
            ("JWT_MAX_LIFETIME_S", self.jwt_max_lifetime_s),
            ("BODY_TIMEOUT_MS", self.body_timeout_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        self.simulate_rate = match self.simulate_rate_setting {
            Some(rate) if !(rate.is_finite() && rate >= 0.0) => {
                return Err("SIMULATE_RATE must be a number >= 0".into())
            }
            Some(rate) => rate,
            None => default_simulate_rate(
                self.is_production(),
                self.db.enabled(),
                self.redis_url.as_deref().is_some_and(|u| !u.is_empty()),
            ),
        };
        if !self.low_stock_threshold.is_finite() || !self.out_of_stock_threshold.is_finite() {
            return Err("LOW_STOCK_THRESHOLD and OUT_OF_STOCK_THRESHOLD must be numbers".into());
        }
        if self.cors_origin.iter().any(|o| o.trim().is_empty()) {
            return Err("CORS_ORIGIN has an empty entry".into());
        }
        // `a, b` is a natural way to write a list; the spaces are not part of an origin.
        for origin in &mut self.cors_origin {
            *origin = origin.trim().to_string();
        }
        if self.rate_limit_close_multiple < 1 {
            return Err("RATE_LIMIT_CLOSE_MULTIPLE must be at least 1".into());
        }
        if self.cluster_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err("CLUSTER_SECRET must be at least 32 bytes".into());
        }
        if self.max_header_bytes < 8192 {
            return Err("MAX_HEADER_BYTES must be at least 8192".into());
        }
        self.trusted = self
            .trusted_proxies
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| crate::security::IpRange::parse(p))
            .collect::<Result<_, _>>()?;
        self.db.validate()?;
        self.verifier = crate::auth::jwt::Verifier::from_config(self)?.map(std::sync::Arc::new);
        if self.is_production() && self.verifier.is_none() {
            return Err("production mode (NILECAST_ENV or NODE_ENV is production) needs JWT_SECRET or JWT_PUBLIC_KEY: refusing to run without authentication".into());
        }
        Ok(())
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The per-connection message limit.
    pub fn rate_limit(&self) -> crate::rate_limit::RateLimit {
        crate::rate_limit::RateLimit::new(
            self.rate_limit_max_messages,
            self.rate_limit_window_ms,
            self.rate_limit_close_multiple,
        )
    }

    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }

    /// A configuration for tests and benches: the defaults, port 0, simulator off, and
    /// no per-address limits (load tests open thousands of connections from one
    /// loopback address).
    pub fn for_tests() -> Config {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let mut config = Wrapper::parse_from(["nilecast"]).config;
        config.port = 0;
        config.simulate_rate_setting = Some(0.0);
        config.simulate_rate = 0.0;
        config.max_connections_per_ip = 0;
        config.upgrades_per_ip_per_s = 0;
        config
    }
}

/// The simulator's rate when SIMULATE_RATE is not set: on only for a bare development
/// server, where its demo data is the point; never where it would write into a real
/// deployment's database or stream.
fn default_simulate_rate(production: bool, database: bool, redis: bool) -> f64 {
    // 20 changes a second keeps the test page lively without flooding a browser.
    if production || database || redis {
        0.0
    } else {
        20.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_dotenv_statement_is_found_by_its_first_line() {
        let contents = "A=1\n\nTHIS IS NOT A SETTING\nB=2\n";
        assert_eq!(line_number(contents, "THIS IS NOT A SETTING"), Some(3));
        assert_eq!(line_number(contents, "nowhere"), None);
    }

    #[test]
    fn the_simulator_is_on_by_default_only_for_a_bare_development_server() {
        assert_eq!(default_simulate_rate(false, false, false), 20.0);
        assert_eq!(default_simulate_rate(true, false, false), 0.0);
        assert_eq!(default_simulate_rate(false, true, false), 0.0);
        assert_eq!(default_simulate_rate(false, false, true), 0.0);
    }

    /// `--help` prints `[env: NAME=value]` for every set variable unless told not to:
    /// any setting that can hold a credential must be.
    #[test]
    fn help_hides_the_values_of_settings_that_can_hold_credentials() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let command = Wrapper::command();
        let secret_like = [
            "_PASSWORD",
            "_SECRET",
            "_URL",
            "_CONNECTION_STRING",
            "_TOKEN",
        ];
        let mut checked = 0;
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                continue;
            };
            if secret_like.iter().any(|s| env.ends_with(s)) {
                checked += 1;
                assert!(arg.is_hide_env_values_set(), "--help would print {env}");
            }
        }
        // REDIS_URL, NILEDB_CONNECTION_STRING, NILEDB_PASSWORD, DB_PASSWORD, JWT_SECRET.
        assert!(checked >= 5, "only {checked} credential settings found");
    }

    #[test]
    fn environments_are_development_or_production_and_nothing_else() {
        let parse = |v| Environment::parse("NILECAST_ENV", v);
        assert_eq!(parse("development"), Ok(Environment::Development));
        assert_eq!(parse("test"), Ok(Environment::Development));
        assert_eq!(parse("Production"), Ok(Environment::Production));
        let err = parse("prod").expect_err("a typo is refused");
        assert!(
            err.contains("NILECAST_ENV") && err.contains("prod"),
            "{err}"
        );
        let err = Environment::parse("NODE_ENV", "staging").expect_err("unknown");
        assert!(err.starts_with("NODE_ENV"), "{err}");
    }
}
