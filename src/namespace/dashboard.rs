//! `/dashboard`: widget sets computed once per interval and shared.
//!
//! Subscribers are grouped by (tenant, `metricsInterval`), and the interval a client
//! asks for is served as the nearest of [`INTERVALS_MS`] at or below it, so a tenant
//! has at most that many groups: every distinct interval would otherwise be a timer
//! that recomputes every widget, a lever a client could pull a hundred times. Each group has one task that
//! computes the tenant's widgets once per tick and builds one `dashboard:data` frame per
//! distinct (dashboardId, widget list) and one `dashboard:metrics:live` frame, which
//! every member then gets a clone of. A group's task ends when its last member leaves.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use super::streams::check_capacity;
use super::{subscribed_json, Ctx};
use crate::app::App;
use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::Namespace;
use crate::fanout::Subscribed;
use crate::protocol::Wire;
use crate::session::Session;
use crate::time;

/// The widgets a dashboard can ask for.
pub const WIDGETS: [&str; 4] = [
    "inventory-summary",
    "order-stats",
    "customer-activity",
    "server-metrics",
];

/// `metricsInterval` floor (docs/protocol.md, "7.6 `/dashboard`") and default (the seed's example).
const MIN_INTERVAL_MS: u64 = 1000;
const DEFAULT_INTERVAL_MS: u64 = 5000;
/// An hour: longer intervals are more likely a unit mistake than a wish.
const MAX_INTERVAL_MS: u64 = 3_600_000;
/// The intervals dashboards are served at: round figures a person would pick, from
/// the floor to the ceiling. Eleven, so eleven groups per tenant at most.
pub const INTERVALS_MS: [u64; 11] = [
    1000, 2000, 5000, 10_000, 15_000, 30_000, 60_000, 300_000, 900_000, 1_800_000, 3_600_000,
];

/// The interval a dashboard asking for `asked` ms is served at: the largest of
/// [`INTERVALS_MS`] not above it, so updates come at least as often as asked.
pub fn served_interval(asked: u64) -> u64 {
    INTERVALS_MS
        .iter()
        .rev()
        .find(|&&i| i <= asked)
        .copied()
        .unwrap_or(MIN_INTERVAL_MS)
}

#[derive(Clone)]
struct Member {
    sub_id: u64,
    session: Arc<Session>,
    dashboard_id: String,
    widgets: Vec<String>,
}

type GroupKey = (Arc<str>, u64);

#[derive(Default)]
pub struct Dashboards {
    groups: Mutex<HashMap<GroupKey, Arc<Mutex<Vec<Member>>>>>,
}

fn invalid(message: &'static str) -> Refusal {
    Refusal::new(ErrorCode::InvalidFilter, message)
}

/// `dashboard:subscribe {dashboardId, widgets, metricsInterval}`.
pub fn subscribe(ctx: &Ctx, data: &Map<String, Value>) -> Result<(), Refusal> {
    let dashboard_id = match data.get("dashboardId") {
        None | Some(Value::Null) => "default".to_string(),
        Some(v) => crate::fanout::change::scalar_text(v)
            .ok_or_else(|| invalid("dashboardId must be a string"))?
            .into(),
    };
    let widgets: Vec<String> = match data.get("widgets") {
        None | Some(Value::Null) => WIDGETS.iter().map(|w| w.to_string()).collect(),
        Some(Value::Array(items)) => {
            if items.len() > ctx.config().max_filter_values {
                return Err(invalid("widgets has too many values"));
            }
            items
                .iter()
                .map(|w| {
                    w.as_str()
                        .map(String::from)
                        .ok_or_else(|| invalid("widgets must be strings"))
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(invalid("widgets must be an array of strings")),
    };
    let interval = match data.get("metricsInterval") {
        None | Some(Value::Null) => DEFAULT_INTERVAL_MS,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid("metricsInterval must be a whole number of milliseconds"))?,
    };
    if interval < MIN_INTERVAL_MS {
        return Err(invalid("metricsInterval must be at least 1000 ms"));
    }
    if interval > MAX_INTERVAL_MS {
        return Err(invalid("metricsInterval must be at most 3600000 ms"));
    }
    let interval = served_interval(interval);
    check_capacity(ctx)?;

    let filters =
        json!({ "dashboardId": dashboard_id, "widgets": widgets, "metricsInterval": interval });
    let id = ctx.app.engine.register_external(
        ctx.session,
        &ctx.grant,
        Namespace::Dashboard,
        filters.clone(),
    )?;
    ctx.reply(
        "dashboard:subscribed",
        &subscribed_json(
            Subscribed {
                id,
                replayed: 0,
                gap: false,
            },
            &filters,
        ),
    );
    let tenant = ctx.principal.tenant.clone();
    let member = Member {
        sub_id: id,
        session: ctx.session.clone(),
        dashboard_id,
        widgets,
    };
    let computed = compute_widgets(ctx.app, &tenant);
    ctx.session.outbox.send(data_frame(
        ctx.session.wire,
        &member.dashboard_id,
        &member.widgets,
        &computed,
    ));
    ctx.app.dashboards.add(ctx.app, tenant, interval, member);
    Ok(())
}

impl Dashboards {
    fn add(&self, app: &Arc<App>, tenant: Arc<str>, interval: u64, member: Member) {
        let mut groups = self.groups.lock();
        let key = (tenant, interval);
        if let Some(group) = groups.get(&key) {
            group.lock().push(member);
            return;
        }
        let group = Arc::new(Mutex::new(vec![member]));
        groups.insert(key.clone(), group.clone());
        app.shutdown.spawn(run_group(app.clone(), key, group));
    }

    /// Timer groups running.
    pub fn group_count(&self) -> usize {
        self.groups.lock().len()
    }

    /// Removes the listed subscriptions of a session.
    pub fn remove(&self, session_id: u64, sub_ids: &[u64]) {
        for group in self.groups.lock().values() {
            group
                .lock()
                .retain(|m| !(m.session.id == session_id && sub_ids.contains(&m.sub_id)));
        }
    }

    /// Removes every dashboard subscription of a closed session.
    pub fn remove_session(&self, session_id: u64) {
        for group in self.groups.lock().values() {
            group.lock().retain(|m| m.session.id != session_id);
        }
    }
}

async fn run_group(app: Arc<App>, key: GroupKey, group: Arc<Mutex<Vec<Member>>>) {
    let period = Duration::from_millis(key.1);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut previous = Counters::read(&app);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        let members = group.lock().clone();
        if members.is_empty() {
            let mut groups = app.dashboards.groups.lock();
            if group.lock().is_empty() {
                groups.remove(&key);
                return;
            }
            continue;
        }
        let computed = compute_widgets(&app, &key.0);
        let now = Counters::read(&app);
        let live_json = now.live_json(&previous, &app);
        previous = now;
        // Each frame is encoded once per protocol that needs it.
        let mut live: HashMap<Wire, Bytes> = HashMap::new();
        let mut frames: HashMap<(Wire, &str, &[String]), Bytes> = HashMap::new();
        for m in &members {
            let wire = m.session.wire;
            let frame = frames
                .entry((wire, m.dashboard_id.as_str(), m.widgets.as_slice()))
                .or_insert_with(|| data_frame(wire, &m.dashboard_id, &m.widgets, &computed))
                .clone();
            m.session.outbox.send(frame);
            let live = live.entry(wire).or_insert_with(|| {
                wire.event_frame(
                    Namespace::Dashboard.path(),
                    "dashboard:metrics:live",
                    &live_json,
                )
            });
            m.session.outbox.send(live.clone());
        }
    }
}

/// Every widget of a tenant, computed once.
fn compute_widgets(app: &App, tenant: &str) -> Map<String, Value> {
    let config = &app.config;
    let now = time::now_ms();
    let m = &app.metrics;
    let mut out = Map::new();
    out.insert(
        "inventory-summary".into(),
        app.store.inventory_summary(
            tenant,
            config.low_stock_threshold,
            config.out_of_stock_threshold,
        ),
    );
    out.insert(
        "order-stats".into(),
        app.store
            .order_stats(tenant, app.alerts.orders_last_minute(tenant, now)),
    );
    out.insert(
        "customer-activity".into(),
        app.store.customer_activity(tenant, 10, now),
    );
    out.insert(
        "server-metrics".into(),
        json!({
            "connections": app.sessions.len(),
            "messagesSent": m.messages_sent.load(Relaxed),
            "messagesReceived": m.messages_received.load(Relaxed),
            "deliveries": m.engine.deliveries.load(Relaxed),
            "changesPublished": m.engine.changes_published.load(Relaxed),
            "uptime": m.uptime_ms(),
            "rssBytes": m.rss_bytes.load(Relaxed),
        }),
    );
    out
}

/// `dashboard:data {dashboardId, widgets:{...}, timestamp}` with a key for every
/// requested widget (null for a widget the server does not know).
fn data_frame(
    wire: Wire,
    dashboard_id: &str,
    widgets: &[String],
    computed: &Map<String, Value>,
) -> Bytes {
    let chosen: Map<String, Value> = widgets
        .iter()
        .map(|w| (w.clone(), computed.get(w).cloned().unwrap_or(Value::Null)))
        .collect();
    wire.event_frame(
        Namespace::Dashboard.path(),
        "dashboard:data",
        &json!({ "dashboardId": dashboard_id, "widgets": chosen, "timestamp": time::iso8601(time::now_ms()) }),
    )
}

/// Counter readings between two ticks, for per-second rates.
struct Counters {
    at: std::time::Instant,
    deliveries: u64,
    changes: u64,
    received: u64,
}

impl Counters {
    fn read(app: &App) -> Counters {
        let m = &app.metrics;
        Counters {
            at: std::time::Instant::now(),
            deliveries: m.engine.deliveries.load(Relaxed),
            changes: m.engine.changes_published.load(Relaxed),
            received: m.messages_received.load(Relaxed),
        }
    }

    fn live_json(&self, before: &Counters, app: &App) -> Value {
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-3);
        let rate =
            |now: u64, then: u64| ((now.saturating_sub(then)) as f64 / secs * 10.0).round() / 10.0;
        json!({
            "timestamp": time::iso8601(time::now_ms()),
            "connections": app.sessions.len(),
            "changesPerSecond": rate(self.changes, before.changes),
            "deliveriesPerSecond": rate(self.deliveries, before.deliveries),
            "messagesReceivedPerSecond": rate(self.received, before.received),
            "queueDepth": app.queue_depth(),
            "alertsActive": app.alerts.active_count(),
            "rssBytes": app.metrics.rss_bytes.load(Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_served_from_the_small_set() {
        assert_eq!(served_interval(1000), 1000);
        assert_eq!(served_interval(1999), 1000);
        assert_eq!(served_interval(2000), 2000);
        assert_eq!(served_interval(7000), 5000);
        assert_eq!(served_interval(3_600_000), 3_600_000);
        let distinct: std::collections::BTreeSet<u64> = (1000..=MAX_INTERVAL_MS)
            .step_by(997)
            .chain([MAX_INTERVAL_MS])
            .map(served_interval)
            .collect();
        assert_eq!(distinct.len(), INTERVALS_MS.len());
    }
}
