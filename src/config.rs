//! The server's typed configuration: every setting, its environment variable, its
//! default and its validation, in one struct.
//!
//! Values come from (highest first) command-line flags, environment variables, a `.env`
//! file in the working directory (loaded by `main.rs` before parsing), then the defaults
//! below. `nilecast serve --help` is generated from this file, so the doc comment on a
//! field is its documentation. Each flag's value name is its environment variable, which
//! makes a bad value's error message name the variable a user actually set.

use std::net::IpAddr;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};

/// What to do with a connection whose outgoing queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumerPolicy {
    /// Close the connection with 1013 (try again later). The client reconnects and
    /// resumes with `sinceSeq`, so it loses nothing it can not replay.
    Disconnect,
    /// Drop the oldest queued frames and later tell the client how many with a
    /// `messages:dropped` event.
    DropOldest,
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

    /// Allowed browser origins for the HTTP API, comma-separated; `*` allows any.
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

    /// Largest client WebSocket message in bytes; a larger one closes the connection
    /// with 1009.
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

    /// What happens to a connection whose queue is full.
    #[arg(long = "slow-consumer-policy", env = "SLOW_CONSUMER_POLICY", value_name = "SLOW_CONSUMER_POLICY", value_enum, default_value_t = SlowConsumerPolicy::Disconnect)]
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
    #[arg(
        long = "simulate-rate",
        env = "SIMULATE_RATE",
        value_name = "SIMULATE_RATE",
        default_value_t = 20.0
    )]
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

    /// `production` turns off the `/test` page. `NODE_ENV` is read too, for the seed's
    /// deployments.
    #[arg(
        long = "env",
        env = "NILECAST_ENV",
        value_name = "NILECAST_ENV",
        default_value = "development"
    )]
    pub environment: String,
}

impl Config {
    /// Checks what clap's types cannot, and names the variable at fault.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.environment == "development" {
            if let Ok(node_env) = std::env::var("NODE_ENV") {
                self.environment = node_env;
            }
        }
        let positive: [(&str, u64); 11] = [
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
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        if !(self.simulate_rate.is_finite() && self.simulate_rate >= 0.0) {
            return Err("SIMULATE_RATE must be a number >= 0".into());
        }
        if !self.low_stock_threshold.is_finite() || !self.out_of_stock_threshold.is_finite() {
            return Err("LOW_STOCK_THRESHOLD and OUT_OF_STOCK_THRESHOLD must be numbers".into());
        }
        if self.cors_origin.iter().any(|o| o.trim().is_empty()) {
            return Err("CORS_ORIGIN has an empty entry".into());
        }
        Ok(())
    }

    pub fn is_production(&self) -> bool {
        self.environment.eq_ignore_ascii_case("production")
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The per-connection message limit.
    pub fn rate_limit(&self) -> crate::rate_limit::RateLimit {
        crate::rate_limit::RateLimit::new(self.rate_limit_max_messages, self.rate_limit_window_ms)
    }

    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }

    /// A configuration for tests and benches: the defaults, port 0, simulator off.
    pub fn for_tests() -> Config {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let mut config = Wrapper::parse_from(["nilecast"]).config;
        config.port = 0;
        config.simulate_rate = 0.0;
        config
    }
}
