//! The composition root: the server's shared parts, in one `Arc`, and the order tasks
//! start and stop in.
//!
//! [`start`] binds the listener, picks the bus from the configuration (the one place
//! that asks whether there is a database or Redis), builds the parts, seeds the demo
//! store, and starts the bus, the accept loop, the housekeeping ticker and the
//! simulator. [`Server::shutdown`] stops
//! accepting, closes every connection with 1001 after flushing its queue, and waits for
//! them up to the configured deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::net::TcpListener;

use crate::alerts::Alerts;
use crate::bus::{self, Bus};
use crate::config::Config;
use crate::db::{self, Db, Detection};
use crate::error::close;
use crate::fanout::{Engine, Inlet};
use crate::metrics::{self, Gauges, Metrics};
use crate::namespace::dashboard::Dashboards;
use crate::security::{self, AddressLimits, Event};
use crate::session::Session;
use crate::shutdown::Shutdown;
use crate::source::simulator;
use crate::store::MemoryStore;
use crate::time;
use crate::ws::frame::{self, OpCode};

pub struct App {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub store: Arc<MemoryStore>,
    pub alerts: Arc<Alerts>,
    /// Subscriptions and listings; changes enter it only through the bus.
    pub engine: Arc<Engine>,
    /// Where every change is published (`crate::bus`).
    pub bus: Arc<dyn Bus>,
    /// What requests and the HTTP API read: PostgreSQL with a database, else memory.
    pub read_model: Arc<dyn crate::store::Store>,
    pub dashboards: Dashboards,
    /// Open connections by id: `/clients`, the heartbeat and shutdown walk it.
    pub sessions: DashMap<u64, Arc<Session>>,
    /// Connections and upgrades per client address.
    pub addresses: AddressLimits,
    pub shutdown: Shutdown,
    /// Socket.IO connections' namespaces, and subscriptions kept for recovery.
    pub socketio: crate::ws::socketio::SocketIo,
    /// This node's name (`NODE_ID`, or random).
    pub node_id: String,
    /// Output bytes queued over every connection (`SERVER_QUEUE_MAX_BYTES`).
    pub output: Arc<crate::fanout::outbox::Budget>,
    next_session: AtomicU64,
}

/// The parts the bus is made of, as the configuration asks.
pub enum Backing {
    /// Neither a database nor Redis.
    Memory,
    Database(Arc<Db>),
    Redis(Arc<bus::redis::Cluster>),
    /// Redis fed by the database's leader.
    DatabaseAndRedis(Arc<Db>, Arc<bus::redis::Cluster>),
}

impl Backing {
    fn bus(self, config: &Config, inlet: Inlet) -> Arc<dyn Bus> {
        match self {
            Backing::Memory => Arc::new(bus::local::LocalBus::new(inlet)),
            Backing::Database(db) => Arc::new(bus::pg::PgLogBus::new(db, inlet)),
            Backing::Redis(cluster) => Arc::new(bus::redis::RedisBus::new(
                cluster,
                inlet,
                config.db.replay_max_db_changes as usize,
            )),
            Backing::DatabaseAndRedis(db, cluster) => Arc::new(bus::redis::LeaderFedBus::new(
                db,
                cluster,
                inlet,
                config.leader_lease_ms,
            )),
        }
    }
}

impl App {
    /// An in-memory server's parts.
    pub fn new(config: Config) -> Arc<App> {
        App::with_backing(config, Backing::Memory)
    }

    pub fn with_backing(config: Config, backing: Backing) -> Arc<App> {
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(MemoryStore::new());
        let alerts = Arc::new(Alerts::new(&config));
        if !matches!(backing, Backing::Memory) {
            // Alerts raised by a change are named after its seq, the same on every node.
            alerts.ids_for_database(time::now_ms());
        }
        let rules = Arc::new(crate::domain::Domain {
            store: store.clone(),
            alerts: alerts.clone(),
            default_threshold: config.low_stock_threshold,
        });
        let writer = Arc::new(crate::ws::writer::SocketWriter {
            metrics: metrics.clone(),
        });
        let (engine, inlet) = Engine::new(
            config.engine_settings(),
            rules,
            writer,
            metrics.engine.clone(),
        );
        let read_model: Arc<dyn crate::store::Store> = match &backing {
            Backing::Database(db) | Backing::DatabaseAndRedis(db, _) => {
                Arc::new(crate::db::queries::InPostgres::new(
                    &config,
                    db.clone(),
                    alerts.clone(),
                    engine.clone(),
                ))
            }
            Backing::Memory | Backing::Redis(_) => Arc::new(crate::store::memory::InMemory::new(
                &config,
                store.clone(),
                alerts.clone(),
                engine.clone(),
            )),
        };
        let bus = backing.bus(&config, inlet);
        let addresses =
            AddressLimits::new(config.max_connections_per_ip, config.upgrades_per_ip_per_s);
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{:08x}", fastrand::u32(..)));
        let output = Arc::new(crate::fanout::outbox::Budget::new(
            config.server_queue_max_bytes,
        ));
        Arc::new(App {
            output,
            config,
            metrics,
            store,
            alerts,
            engine,
            bus,
            read_model,
            dashboards: Dashboards::default(),
            sessions: DashMap::new(),
            addresses,
            shutdown: Shutdown::new(),
            socketio: Default::default(),
            node_id,
            next_session: AtomicU64::new(1),
        })
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Relaxed)
    }

    pub fn queue_depth(&self) -> u64 {
        self.sessions.iter().map(|s| s.outbox.len() as u64).sum()
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            connections: self.sessions.len() as u64,
            queue_depth: self.queue_depth(),
            subscriptions: self
                .sessions
                .iter()
                .map(|s| s.subscription_count() as u64)
                .sum(),
            last_seq: self.engine.last_seq(),
            retained: self.engine.retained() as u64,
            active_alerts: self.alerts.active_count() as u64,
            index_entries: self.engine.index_entries() as u64,
            queued_bytes: self.output.used() as u64,
            dashboard_groups: self.dashboards.group_count() as u64,
        }
    }

    /// Whether the process is above the configured memory ceiling.
    pub fn over_memory(&self) -> bool {
        let max = self.config.max_memory_mb;
        max > 0 && self.metrics.rss_bytes.load(Relaxed) > max * 1024 * 1024
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub app: Arc<App>,
}

impl Server {
    /// Stops accepting, closes every connection with 1001 after flushing what is
    /// queued, and waits for them up to `SHUTDOWN_TIMEOUT_MS`. Returns true when every
    /// connection finished in time.
    pub async fn shutdown(&self) -> bool {
        let app = &self.app;
        app.shutdown.trigger();
        for session in app.sessions.iter() {
            session.outbox.close(close::GOING_AWAY, true);
        }
        app.shutdown
            .drained(Duration::from_millis(app.config.shutdown_timeout_ms))
            .await
    }
}

/// Binds the listener and starts every task.
pub async fn start(config: Config) -> std::io::Result<Server> {
    let listener = TcpListener::bind((config.bind, config.port)).await?;
    let addr = listener.local_addr()?;
    let db = if config.db.enabled() {
        Some(Db::new(&config.db, config.slow_query_ms).map_err(std::io::Error::other)?)
    } else {
        None
    };
    let cluster = match &config.redis_url {
        Some(url) => Some(
            bus::redis::Cluster::new(
                url,
                &config.redis_prefix,
                config.redis_stream_max_len,
                config.cluster_secret.clone(),
            )
            .map_err(std::io::Error::other)?,
        ),
        None => None,
    };
    let backing = match (db.clone(), cluster) {
        (None, None) => Backing::Memory,
        (Some(db), None) => Backing::Database(db),
        (None, Some(cluster)) => Backing::Redis(cluster),
        (Some(db), Some(cluster)) => Backing::DatabaseAndRedis(db, cluster),
    };
    let advertised_addr = advertised_addr(&config, addr);
    let app = App::with_backing(config, backing);
    app.metrics
        .rss_bytes
        .store(metrics::read_rss_bytes(), Relaxed);

    let world = simulator::World::demo();
    world.seed(&app.store);
    let bus_start = bus::Start {
        shutdown: app.shutdown.clone(),
        node_id: app.node_id.clone(),
        advertised_addr,
    };
    match db {
        Some(db) => {
            let (slow, reported) = tokio::sync::mpsc::unbounded_channel();
            db.set_slow_sink(slow);
            app.shutdown.spawn(slow_query_alerts(app.clone(), reported));
            app.shutdown
                .spawn(start_database(app.clone(), db, world, bus_start));
        }
        None => {
            app.bus.clone().start(bus_start);
            if app.config.simulate_rate > 0.0 {
                let out = simulator::Output::Bus(app.bus.clone());
                app.shutdown.spawn(simulator::run(app.clone(), world, out));
            }
        }
    }
    app.shutdown.spawn(housekeeping(app.clone()));
    app.shutdown
        .spawn(crate::http::accept_loop(app.clone(), listener));
    Ok(Server { addr, app })
}

/// Where the other nodes reach this node's HTTP API: `NODE_ADDR`, else the bound
/// address, else (bound to every interface) this host's name and the port.
fn advertised_addr(config: &Config, bound: SocketAddr) -> String {
    if let Some(addr) = &config.node_addr {
        return addr.clone();
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string());
    format!("{host}:{}", bound.port())
}

/// With a database: applies the schema when asked (retrying while the database is
/// unreachable: the server serves degraded meanwhile), seeds the demo tables when the
/// simulator is on, then starts the bus (the feed, table-poll, retention) and the
/// simulator.
async fn start_database(
    app: Arc<App>,
    db: Arc<Db>,
    world: simulator::World,
    bus_start: bus::Start,
) {
    let mut backoff = crate::backoff::Backoff::new();
    let detection = db.config.detection;
    loop {
        let step = async {
            if app.config.migrate {
                let applied = db::schema::migrate(&db, detection == Detection::Notify).await?;
                if !applied.is_empty() {
                    tracing::info!(applied = ?applied, "database schema applied");
                }
            }
            if app.config.simulate_rate > 0.0 && db::store::seed_demo(&db, &world).await? {
                tracing::info!("demo tables seeded for tenant default");
            }
            Ok::<(), db::DbError>(())
        };
        match step.await {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database not ready; serving degraded and retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = app.shutdown.cancelled() => return,
                }
            }
        }
    }
    app.bus.clone().start(bus_start);
    if app.config.simulate_rate > 0.0 {
        // With a database the simulator writes the demo tables, as an application
        // would; the bus brings the changes back from the change log.
        let out = simulator::Output::Tables(db);
        app.shutdown.spawn(simulator::run(app.clone(), world, out));
    }
}

/// Raises a `slow_query` alert for each slow query the database reports.
async fn slow_query_alerts(
    app: Arc<App>,
    mut reported: tokio::sync::mpsc::UnboundedReceiver<db::SlowQuery>,
) {
    loop {
        let slow = tokio::select! {
            next = reported.recv() => match next {
                Some(slow) => slow,
                None => return,
            },
            _ = app.shutdown.cancelled() => return,
        };
        if let Some(alert) = app.alerts.on_query(&slow.tenant, slow.query, slow.millis) {
            app.metrics.engine.alerts_raised.fetch_add(1, Relaxed);
            app.bus.announce(vec![alert]);
        }
    }
}

/// One ticker for all connections rather than a timer each (a timer per connection
/// would cost memory on every idle client): pings, the heartbeat deadline, retention by
/// age, and the RSS sample behind `MAX_MEMORY_MB`.
async fn housekeeping(app: Arc<App>) {
    let interval = app.config.heartbeat_interval();
    let deadline_ms = app.config.heartbeat_interval_ms + app.config.heartbeat_timeout_ms;
    let ping = frame::server_frame(OpCode::Ping, b"");
    // Socket.IO clients expect Engine.IO pings ("2") and answer them ("3").
    let engine_io_ping = crate::protocol::text_frame(b"2");
    // The RSS and retention checks run every second whatever the heartbeat interval.
    let mut tick = tokio::time::interval(Duration::from_millis(1000).min(interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Pings are due by the ticks' scheduled instants, not by when this task got to run:
    // measured from a late wake-up, a tick that is exactly one interval after the last
    // ping looked a little early and was skipped, the next ping came two intervals
    // later, and a client answering every ping passed the deadline.
    let mut last_ping = tick.tick().await;
    loop {
        let at = tokio::select! {
            at = tick.tick() => at,
            _ = app.shutdown.cancelled() => return,
        };
        app.metrics
            .rss_bytes
            .store(metrics::read_rss_bytes(), Relaxed);
        app.engine.trim();
        let now = time::now_ms();
        app.addresses.sweep(now);
        app.socketio.sweep(now);
        close_expired(&app, now);
        if at.saturating_duration_since(last_ping) < interval {
            continue;
        }
        last_ping = at;
        for session in app.sessions.iter() {
            if now.saturating_sub(session.last_seen_ms.load(Relaxed)) > deadline_ms {
                app.metrics.heartbeat_timeouts.fetch_add(1, Relaxed);
                tracing::debug!(
                    connection = session.id,
                    "no pong within the heartbeat timeout; closing"
                );
                session.outbox.finish();
            } else {
                session.outbox.send(match session.wire {
                    crate::protocol::Wire::Native => ping.clone(),
                    crate::protocol::Wire::SocketIo => engine_io_ping.clone(),
                });
            }
        }
    }
}

/// Closes connections whose token has expired (plus the configured leeway): an
/// `auth:error {code: token_expired}`, then 1008; and connections that have not
/// authenticated within `AUTH_TIMEOUT_MS`: `auth:error {code: unauthorized}`, then 1008
/// (with auth on such a connection can do nothing but log in, so one that does not is
/// only holding a socket). Checked every second.
fn close_expired(app: &App, now_ms: u64) {
    if app.config.verifier.is_none() {
        return;
    }
    let leeway_ms = app.config.jwt_leeway_s.saturating_mul(1000);
    for session in app.sessions.iter() {
        let principal = session.principal();
        let expired = principal
            .expires_ms
            .is_some_and(|exp| exp.saturating_add(leeway_ms) <= now_ms);
        let unauthenticated = !principal.authenticated
            && now_ms.saturating_sub(session.connected_ms) >= app.config.auth_timeout_ms;
        if !(expired || unauthenticated) || !session.outbox.is_open() {
            continue;
        }
        let refusal = if expired {
            crate::error::Refusal::new(
                crate::error::ErrorCode::TokenExpired,
                "token has expired; reconnect with a fresh one",
            )
        } else {
            crate::error::Refusal::new(
                crate::error::ErrorCode::Unauthorized,
                "no valid token within the login deadline (AUTH_TIMEOUT_MS)",
            )
        };
        app.metrics.error(refusal.code);
        session.outbox.send(
            session
                .wire
                .event_frame("/", "auth:error", &refusal.to_json()),
        );
        security::record(
            &app.metrics,
            if expired {
                Event::TokenExpired
            } else {
                Event::TokenRefused
            },
            session.remote,
            &format!(
                "connection {}: {}; closing with 1008",
                session.id, refusal.message
            ),
        );
        session.outbox.close(close::POLICY, true);
    }
}
