//! Counters and the publish-to-write histogram, and their two renderings: the seed's
//! JSON shape for `/metrics` and Prometheus text for `/metrics/prometheus`.
//!
//! Everything is a relaxed atomic. Hot paths add once per batch (the router adds its
//! deliveries once per change, a writer its frames once per write), never once per
//! subscriber, so the counters do not become a shared cache line every core fights over.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::error::ErrorCode;
use crate::fanout::Counters;
use crate::security::Event;

/// Upper bounds of the latency buckets, in microseconds: 100 us to 5 s, roughly
/// 1-2.5-5 steps, which is what a Prometheus user expects to see for a latency.
const BUCKETS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Adds observations gathered locally (`local[i]` counts bucket i).
    pub fn add(&self, local: &LocalHistogram) {
        if local.total == 0 {
            return;
        }
        for (slot, &n) in self.counts.iter().zip(local.counts.iter()) {
            if n > 0 {
                slot.fetch_add(n, Relaxed);
            }
        }
        self.sum_us.fetch_add(local.sum_us, Relaxed);
    }

    fn snapshot(&self) -> ([u64; BUCKETS_US.len() + 1], u64) {
        let mut counts = [0; BUCKETS_US.len() + 1];
        for (c, slot) in counts.iter_mut().zip(self.counts.iter()) {
            *c = slot.load(Relaxed);
        }
        (counts, self.sum_us.load(Relaxed))
    }

    /// An upper bound of the q-quantile, in milliseconds, from the buckets.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let (counts, _) = self.snapshot();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(
                    BUCKETS_US
                        .get(i)
                        .map_or(f64::INFINITY, |&us| us as f64 / 1000.0),
                );
            }
        }
        None
    }
}

/// Observations a writer gathers over one batch before adding them to the shared
/// histogram.
#[derive(Default)]
pub struct LocalHistogram {
    counts: [u64; BUCKETS_US.len() + 1],
    sum_us: u64,
    total: u64,
}

impl LocalHistogram {
    pub fn observe_us(&mut self, us: u64) {
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.counts[i] += 1;
        self.sum_us += us;
        self.total += 1;
    }
}

pub struct Metrics {
    pub started: Instant,
    pub started_ms: u64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub heartbeat_timeouts: AtomicU64,
    /// Socket.IO connections that recovered their subscriptions by pid.
    pub socketio_recoveries: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_errors: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    /// Of those, frames the publishing pass wrote itself (the rest: connection tasks).
    pub messages_sent_by_publisher: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// The engine's counters (deliveries, duplicates, drops, changes, alerts), shared
    /// with it.
    pub engine: Arc<Counters>,
    pub slow_consumer_closes: AtomicU64,
    /// Compressed client messages refused: over the message limit once decompressed
    /// (1009), or not valid deflate data (1007).
    pub inflate_refused: AtomicU64,
    pub request_time_us: AtomicU64,
    pub requests_handled: AtomicU64,
    pub rss_bytes: AtomicU64,
    pub errors: [AtomicU64; ErrorCode::ALL.len()],
    /// Security events by kind ([`crate::security::Event`]).
    pub security: [AtomicU64; Event::ALL.len()],
    pub publish_to_write: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: Instant::now(),
            started_ms: crate::time::now_ms(),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            heartbeat_timeouts: AtomicU64::new(0),
            socketio_recoveries: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
            http_errors: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            messages_sent_by_publisher: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            engine: Arc::default(),
            slow_consumer_closes: AtomicU64::new(0),
            inflate_refused: AtomicU64::new(0),
            request_time_us: AtomicU64::new(0),
            requests_handled: AtomicU64::new(0),
            rss_bytes: AtomicU64::new(0),
            errors: Default::default(),
            security: Default::default(),
            publish_to_write: Histogram::default(),
        }
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Relaxed);
    }

    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn errors_json(&self) -> Value {
        let mut map = serde_json::Map::new();
        for code in ErrorCode::ALL {
            map.insert(
                code.as_str().into(),
                self.errors[code.index()].load(Relaxed).into(),
            );
        }
        Value::Object(map)
    }

    fn security_json(&self) -> Value {
        Value::Object(
            Event::ALL
                .iter()
                .map(|e| {
                    (
                        e.as_str().to_string(),
                        self.security[e.index()].load(Relaxed).into(),
                    )
                })
                .collect(),
        )
    }

    fn total_errors(&self) -> u64 {
        self.errors.iter().map(|e| e.load(Relaxed)).sum()
    }

    /// `/metrics`, in the seed's shape (`server`, `websocket`, `niledb`) plus the engine's
    /// own figures.
    pub fn to_json(&self, gauges: &Gauges) -> Value {
        let handled = self.requests_handled.load(Relaxed);
        let avg_ms = if handled == 0 {
            0.0
        } else {
            self.request_time_us.load(Relaxed) as f64 / handled as f64 / 1000.0
        };
        json!({
            "server": {
                "uptime": self.uptime_ms(),
                "startedAt": crate::time::iso8601(self.started_ms),
                "version": env!("CARGO_PKG_VERSION"),
                "totalRequests": self.http_requests.load(Relaxed),
                "errors": self.http_errors.load(Relaxed) + self.total_errors(),
                "memory": { "rssBytes": self.rss_bytes.load(Relaxed) },
            },
            "websocket": {
                "activeConnections": gauges.connections,
                "totalConnections": self.connections_total.load(Relaxed),
                "refusedConnections": self.connections_refused.load(Relaxed),
                "messagesSent": self.messages_sent.load(Relaxed),
                "messagesSentByPublisher": self.messages_sent_by_publisher.load(Relaxed),
                "messagesReceived": self.messages_received.load(Relaxed),
                "bytesSent": self.bytes_sent.load(Relaxed),
                "deliveries": self.engine.deliveries.load(Relaxed),
                "duplicatesSuppressed": self.engine.duplicates_suppressed.load(Relaxed),
                "droppedFrames": self.engine.dropped_frames.load(Relaxed),
                "slowConsumerCloses": self.slow_consumer_closes.load(Relaxed),
                "compressedMessagesRefused": self.inflate_refused.load(Relaxed),
                "heartbeatTimeouts": self.heartbeat_timeouts.load(Relaxed),
                "socketioRecoveries": self.socketio_recoveries.load(Relaxed),
                "queueDepth": gauges.queue_depth,
                "subscriptions": gauges.subscriptions,
                "indexEntries": gauges.index_entries,
                "queuedBytes": gauges.queued_bytes,
                "dashboardGroups": gauges.dashboard_groups,
                "averageResponseTime": avg_ms,
                "publishToWriteMs": {
                    "p50": self.publish_to_write.quantile_ms(0.5),
                    "p99": self.publish_to_write.quantile_ms(0.99),
                    "p999": self.publish_to_write.quantile_ms(0.999),
                },
                "errors": self.errors_json(),
            },
            "security": self.security_json(),
            "changes": {
                "published": self.engine.changes_published.load(Relaxed),
                "lastSeq": gauges.last_seq,
                "retained": gauges.retained,
            },
            "alerts": {
                "raised": self.engine.alerts_raised.load(Relaxed),
                "active": gauges.active_alerts,
            },
            "niledb": { "status": "disabled", "queriesExecuted": 0, "averageQueryTime": 0, "connectionHealth": "disabled" },
            "redis": { "status": "disabled" },
        })
    }

    /// `/metrics/prometheus`: the same figures in text exposition format.
    pub fn to_prometheus(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "nilecast_connections_active",
            "gauge",
            "Open WebSocket connections.",
            gauges.connections,
        );
        metric(
            "nilecast_connections_total",
            "counter",
            "WebSocket connections accepted.",
            self.connections_total.load(Relaxed),
        );
        metric(
            "nilecast_connections_refused_total",
            "counter",
            "WebSocket upgrades refused (capacity or memory).",
            self.connections_refused.load(Relaxed),
        );
        metric(
            "nilecast_heartbeat_timeouts_total",
            "counter",
            "Connections closed for missing pongs.",
            self.heartbeat_timeouts.load(Relaxed),
        );
        metric(
            "nilecast_http_requests_total",
            "counter",
            "HTTP requests served.",
            self.http_requests.load(Relaxed),
        );
        metric(
            "nilecast_messages_received_total",
            "counter",
            "Client WebSocket messages received.",
            self.messages_received.load(Relaxed),
        );
        metric(
            "nilecast_messages_sent_total",
            "counter",
            "WebSocket frames written to clients.",
            self.messages_sent.load(Relaxed),
        );
        metric(
            "nilecast_messages_sent_by_publisher_total",
            "counter",
            "Of the frames written to clients, those the publishing pass wrote itself.",
            self.messages_sent_by_publisher.load(Relaxed),
        );
        metric(
            "nilecast_bytes_sent_total",
            "counter",
            "WebSocket bytes written to clients.",
            self.bytes_sent.load(Relaxed),
        );
        metric(
            "nilecast_deliveries_total",
            "counter",
            "Change frames queued for subscribers.",
            self.engine.deliveries.load(Relaxed),
        );
        metric(
            "nilecast_duplicates_suppressed_total",
            "counter",
            "Deliveries skipped because the connection already had the seq.",
            self.engine.duplicates_suppressed.load(Relaxed),
        );
        metric(
            "nilecast_dropped_frames_total",
            "counter",
            "Frames dropped by the drop-oldest slow-consumer policy.",
            self.engine.dropped_frames.load(Relaxed),
        );
        metric(
            "nilecast_slow_consumer_closes_total",
            "counter",
            "Connections closed with 1013 because their queue was full.",
            self.slow_consumer_closes.load(Relaxed),
        );
        metric(
            "nilecast_compressed_messages_refused_total",
            "counter",
            "Compressed client messages refused: too large once decompressed (1009) or not valid deflate data (1007).",
            self.inflate_refused.load(Relaxed),
        );
        metric(
            "nilecast_changes_published_total",
            "counter",
            "Changes published.",
            self.engine.changes_published.load(Relaxed),
        );
        metric(
            "nilecast_alerts_raised_total",
            "counter",
            "Alerts raised.",
            self.engine.alerts_raised.load(Relaxed),
        );
        metric(
            "nilecast_queue_depth",
            "gauge",
            "Frames queued over all connections.",
            gauges.queue_depth,
        );
        metric(
            "nilecast_subscriptions",
            "gauge",
            "Subscriptions over all connections.",
            gauges.subscriptions,
        );
        metric(
            "nilecast_index_entries",
            "gauge",
            "Subscriptions in the subscription index, once per key.",
            gauges.index_entries,
        );
        metric(
            "nilecast_queued_bytes",
            "gauge",
            "Output bytes queued over all connections.",
            gauges.queued_bytes,
        );
        metric(
            "nilecast_dashboard_groups",
            "gauge",
            "Dashboard timer groups.",
            gauges.dashboard_groups,
        );
        metric(
            "nilecast_alerts_active",
            "gauge",
            "Unacknowledged alerts.",
            gauges.active_alerts,
        );
        metric(
            "nilecast_replay_retained",
            "gauge",
            "Changes retained for replay.",
            gauges.retained,
        );
        metric(
            "nilecast_process_resident_memory_bytes",
            "gauge",
            "Resident set size of the process.",
            self.rss_bytes.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP nilecast_errors_total Refusals sent to clients, by error code.\n# TYPE nilecast_errors_total counter");
        for code in ErrorCode::ALL {
            let _ = writeln!(
                out,
                "nilecast_errors_total{{code=\"{}\"}} {}",
                code.as_str(),
                self.errors[code.index()].load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP nilecast_security_events_total Security events (refused tokens, cross-tenant attempts, rate-limit closes, origin refusals, address limits), by kind.\n# TYPE nilecast_security_events_total counter");
        for event in Event::ALL {
            let _ = writeln!(
                out,
                "nilecast_security_events_total{{kind=\"{}\"}} {}",
                event.as_str(),
                self.security[event.index()].load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP nilecast_uptime_seconds Seconds since start.\n# TYPE nilecast_uptime_seconds gauge\nnilecast_uptime_seconds {:.3}", self.started.elapsed().as_secs_f64());
        let (counts, sum_us) = self.publish_to_write.snapshot();
        let name = "nilecast_publish_to_write_seconds";
        let _ = writeln!(out, "# HELP {name} Time from a change's publish to the write of its frame to a client.\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            let le = BUCKETS_US
                .get(i)
                .map_or("+Inf".to_string(), |&us| format!("{}", us as f64 / 1e6));
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {cumulative}",
            sum_us as f64 / 1e6
        );
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Figures read from the server's state at render time rather than counted.
#[derive(Debug, Default)]
pub struct Gauges {
    pub connections: u64,
    pub queue_depth: u64,
    pub subscriptions: u64,
    pub last_seq: u64,
    pub retained: u64,
    pub active_alerts: u64,
    /// (key, subscription) entries in the subscription index.
    pub index_entries: u64,
    /// Output bytes queued over all connections.
    pub queued_bytes: u64,
    /// Dashboard timer groups.
    pub dashboard_groups: u64,
}

/// The process's resident set size, from /proc (Linux); 0 elsewhere.
pub fn read_rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
