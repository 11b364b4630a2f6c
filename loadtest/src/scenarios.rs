//! The scenarios. Each opens its connections, drives its load, checks delivery, samples
//! the server and the load generator, and returns one [`Run`] (one JSON line).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fleet::{Fleet, Target};
use crate::publisher::{self, Publisher};
use crate::stats::{self, check_delivery, Delivery, Latency};

/// Knobs shared by the scenarios.
#[derive(Debug, Clone)]
pub struct Params {
    pub target: Target,
    pub server: String,
    pub server_pids: Vec<u32>,
    pub connections: usize,
    pub keys: usize,
    pub rate: f64,
    pub duration: Duration,
    pub max_batch: usize,
    pub start_rate: f64,
    pub step_factor: f64,
    pub max_rate: f64,
    pub step: Duration,
    /// `listen`: written once every connection is subscribed.
    pub ready_file: Option<std::path::PathBuf>,
    /// `listen`: changes each connection waits for.
    pub expect: usize,
}

/// One run's figures: one JSON line.
#[derive(Debug, Default, Serialize)]
pub struct Run {
    pub scenario: String,
    pub server: String,
    pub protocol: String,
    pub connections: usize,
    pub subscribed: usize,
    pub keys: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub published: u64,
    #[serde(flatten)]
    pub delivery: Delivery,
    pub deliveries_per_s: f64,
    pub latency: Latency,
    pub server_cpu_s: f64,
    pub server_cpu_s_per_million: Option<f64>,
    /// Bytes the clients read per delivery: what a delivery costs on the wire, its
    /// WebSocket framing and any compression included.
    pub wire_bytes_per_delivery: Option<f64>,
    pub server_rss_kib: u64,
    pub rss_per_connection_bytes: Option<f64>,
    pub loadgen_cpu_s: f64,
    /// The load generator's CPU time over the run's wall time (1.0 = its core was
    /// busy all the time); for max-fanout, at the step that decided the result.
    pub loadgen_core_share: Option<f64>,
    /// The load generator's core was at least [`LOADGEN_BUSY`] busy where the result
    /// was decided: the figure may be the load generator's limit, not the server's.
    pub loadgen_may_have_decided: bool,
    /// Scenario-specific figures.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A load generator core share from which a result may be the load generator's.
pub const LOADGEN_BUSY: f64 = 0.9;

/// How long to wait for the last deliveries after publishing stops.
const DRAIN: Duration = Duration::from_secs(10);
/// How long opening a whole fleet may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Sampler {
    server: stats::ProcSample,
    me: stats::ProcSample,
    pids: Vec<u32>,
    bytes_read: u64,
}

impl Sampler {
    pub fn start(pids: &[u32]) -> Sampler {
        Sampler {
            server: stats::sample(pids),
            me: stats::sample(&[]),
            pids: pids.to_vec(),
            bytes_read: crate::client::BYTES_READ.load(Relaxed),
        }
    }

    fn finish(&self, run: &mut Run) {
        let server = stats::sample(&self.pids);
        let me = stats::sample(&[]);
        if !self.pids.is_empty() {
            run.server_cpu_s = server.cpu_s - self.server.cpu_s;
            run.server_rss_kib = server.rss_kib;
            if run.delivery.delivered > 0 {
                run.server_cpu_s_per_million =
                    Some(run.server_cpu_s / run.delivery.delivered as f64 * 1e6);
            }
        }
        if run.delivery.delivered > 0 {
            let read = crate::client::BYTES_READ.load(Relaxed) - self.bytes_read;
            run.wire_bytes_per_delivery = Some(read as f64 / run.delivery.delivered as f64);
        }
        run.loadgen_cpu_s = me.cpu_s - self.me.cpu_s;
    }
}

pub fn base_run(p: &Params, scenario: &str, fleet: &Fleet) -> Run {
    Run {
        scenario: scenario.into(),
        server: p.server.clone(),
        protocol: format!("{:?}", p.target.protocol).to_lowercase(),
        connections: p.connections,
        subscribed: fleet.subscribed(),
        keys: p.keys,
        rate: p.rate,
        ..Run::default()
    }
}

/// Publishes at a rate over the fleet's keys and checks what arrived.
async fn publish_and_check(
    p: &Params,
    fleet: &Fleet,
    rate: f64,
    duration: Duration,
    mut pick: impl FnMut() -> usize,
) -> anyhow::Result<(Vec<(u64, usize)>, Delivery, Latency, f64)> {
    let started = Instant::now();
    let published = publisher::run_at_rate(
        p.target.publish_addr(),
        rate,
        duration,
        p.max_batch,
        &mut pick,
    )
    .await?;
    let publish_time = started.elapsed().as_secs_f64();
    let subscribers_per_key =
        |key: usize| fleet.conns.iter().filter(|c| c.key == key).count() as u64;
    let mut per_key = std::collections::HashMap::new();
    for &(_, key) in &published {
        *per_key.entry(key).or_insert(0u64) += 1;
    }
    let expected: u64 = per_key
        .iter()
        .map(|(&k, &n)| n * subscribers_per_key(k))
        .sum();
    fleet.wait_delivered(expected, DRAIN).await;
    let receipts = fleet.take_receipts();
    let pairs: Vec<(usize, &stats::Receipts)> = receipts.iter().map(|(k, r)| (*k, r)).collect();
    let delivery = check_delivery(&published, &pairs);
    let latency = stats::latency(receipts.iter().map(|(_, r)| r));
    Ok((published, delivery, latency, publish_time))
}

/// `broadcast`: every connection on one key, changes at `rate`.
pub async fn broadcast(p: &Params) -> anyhow::Result<Run> {
    let fleet = Fleet::open(&p.target, p.connections, |_| 0, OPEN_TIMEOUT).await;
    let sampler = Sampler::start(&p.server_pids);
    let (published, delivery, latency, secs) =
        publish_and_check(p, &fleet, p.rate, p.duration, || 0).await?;
    let mut run = base_run(p, "broadcast", &fleet);
    run.keys = 1;
    finish_run(&mut run, &sampler, published.len(), delivery, latency, secs);
    fleet.close().await;
    Ok(run)
}

/// `sharded`: connections spread over `keys`, each change on a random key.
pub async fn sharded(p: &Params) -> anyhow::Result<Run> {
    let keys = p.keys.max(1);
    let fleet = Fleet::open(&p.target, p.connections, |i| i % keys, OPEN_TIMEOUT).await;
    let sampler = Sampler::start(&p.server_pids);
    let mut rng = fastrand::Rng::with_seed(7);
    let (published, delivery, latency, secs) =
        publish_and_check(p, &fleet, p.rate, p.duration, move || rng.usize(..keys)).await?;
    let mut run = base_run(p, "sharded", &fleet);
    finish_run(&mut run, &sampler, published.len(), delivery, latency, secs);
    fleet.close().await;
    Ok(run)
}

/// [`finish_run`] for the database scenario.
pub fn finish_db_run(
    run: &mut Run,
    sampler: &Sampler,
    published: usize,
    delivery: Delivery,
    latency: Latency,
    secs: f64,
) {
    finish_run(run, sampler, published, delivery, latency, secs);
}

fn finish_run(
    run: &mut Run,
    sampler: &Sampler,
    published: usize,
    delivery: Delivery,
    latency: Latency,
    secs: f64,
) {
    run.duration_s = secs;
    run.published = published as u64;
    run.delivery = delivery;
    run.latency = latency;
    run.deliveries_per_s = delivery.delivered as f64 / secs.max(1e-9);
    sampler.finish(run);
    let share = run.loadgen_cpu_s / secs.max(1e-9);
    run.loadgen_core_share = Some(share);
    run.loadgen_may_have_decided = share >= LOADGEN_BUSY;
}

/// `idle`: subscribed connections and no traffic; server RSS per connection.
pub async fn idle(p: &Params) -> anyhow::Result<Run> {
    let before = stats::sample(&p.server_pids);
    let fleet = Fleet::open(
        &p.target,
        p.connections,
        |i| i % p.keys.max(1),
        OPEN_TIMEOUT,
    )
    .await;
    // Let the server settle before reading its RSS: this is a measurement.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = stats::sample(&p.server_pids);
    let mut run = base_run(p, "idle", &fleet);
    run.server_rss_kib = after.rss_kib;
    if !p.server_pids.is_empty() && fleet.subscribed() > 0 {
        run.rss_per_connection_bytes = Some(
            (after.rss_kib.saturating_sub(before.rss_kib) * 1024) as f64
                / fleet.subscribed() as f64,
        );
    }
    run.extra
        .insert("server_rss_before_kib".into(), before.rss_kib.into());
    run.extra.insert("failed".into(), fleet.failed().into());
    fleet.close().await;
    Ok(run)
}

/// `max-fanout`: all connections on one key; the rate rises step by step until p99
/// passes 250 ms or anything is missing. A step over the latency limit is run once
/// more before it counts: on a shared machine one scheduling hiccup can push a single
/// step's p99 past the limit, and the figure should not hinge on it. Missing or
/// duplicate deliveries stop the run at once.
pub async fn max_fanout(p: &Params) -> anyhow::Result<Run> {
    let fleet = Fleet::open(&p.target, p.connections, |_| 0, OPEN_TIMEOUT).await;
    let sampler = Sampler::start(&p.server_pids);
    let mut rate = p.start_rate;
    let mut best: Option<(f64, f64, Delivery, Latency)> = None;
    let mut best_under_50: Option<f64> = None;
    let mut steps = Vec::new();
    let mut total = Delivery::default();
    let mut total_published = 0usize;
    let mut total_secs = 0.0;
    let mut retried = false;
    // The load generator's core share at the last good step and at the step that
    // ended the run: if either was busy, the load generator may have decided.
    let (mut last_good_share, mut deciding_share) = (0.0f64, 0.0f64);
    while rate <= p.max_rate {
        // CPU shares per step show which side was saturated: the server, or the load
        // generator (which must not be the limit).
        let (server_before, me_before, step_started) = (
            stats::sample(&p.server_pids),
            stats::sample(&[]),
            Instant::now(),
        );
        let (published, delivery, latency, secs) =
            publish_and_check(p, &fleet, rate, p.step, || 0).await?;
        let wall = step_started.elapsed().as_secs_f64();
        let server_share = (stats::sample(&p.server_pids).cpu_s - server_before.cpu_s) / wall;
        let loadgen_share = (stats::sample(&[]).cpu_s - me_before.cpu_s) / wall;
        let per_s = delivery.delivered as f64 / secs;
        let complete = delivery.missing == 0 && delivery.duplicates == 0;
        let good = complete && latency.p99_ms <= 250.0;
        let retry = complete && !good && !retried;
        eprintln!(
            "  rate {rate:.0}/s: {per_s:.0} deliveries/s, p99 {:.1} ms, missing {}, CPU server {:.0}% loadgen {:.0}%, {}",
            latency.p99_ms,
            delivery.missing,
            server_share * 100.0,
            loadgen_share * 100.0,
            if good {
                "ok"
            } else if retry {
                "over the limit: repeating the step"
            } else {
                "stop"
            }
        );
        steps.push(serde_json::json!({
            "rate": rate, "deliveries_per_s": per_s, "p99_ms": latency.p99_ms, "missing": delivery.missing,
            "server_cpu_share": server_share, "loadgen_cpu_share": loadgen_share,
        }));
        total_published += published.len();
        total_secs += secs;
        total.delivered += delivery.delivered;
        deciding_share = loadgen_share;
        if fleet.failed() > 0 || (!good && !retry) {
            break;
        }
        if retry {
            retried = true;
            continue;
        }
        retried = false;
        last_good_share = loadgen_share;
        if latency.p99_ms < 50.0 {
            best_under_50 = Some(per_s);
        }
        best = Some((rate, per_s, delivery, latency));
        rate *= p.step_factor;
    }
    let mut run = base_run(p, "max-fanout", &fleet);
    run.keys = 1;
    run.duration_s = total_secs;
    run.published = total_published as u64;
    if let Some((r, per_s, delivery, latency)) = best {
        run.rate = r;
        run.deliveries_per_s = per_s;
        run.delivery = delivery;
        run.latency = latency;
    }
    sampler.finish(&mut run);
    if total.delivered > 0 && !p.server_pids.is_empty() {
        run.server_cpu_s_per_million = Some(run.server_cpu_s / total.delivered as f64 * 1e6);
        run.wire_bytes_per_delivery = None;
    }
    run.extra.insert(
        "best_deliveries_per_s_p99_under_50ms".into(),
        best_under_50.into(),
    );
    run.extra.insert("steps".into(), steps.into());
    let share = last_good_share.max(deciding_share);
    run.loadgen_core_share = Some(share);
    run.loadgen_may_have_decided = share >= LOADGEN_BUSY;
    fleet.close().await;
    Ok(run)
}

/// `reconnect-storm`: while changes flow, every client drops at once and reconnects
/// with `sinceSeq`; time until all have resumed, and the delivery check over the run.
pub async fn reconnect_storm(p: &Params) -> anyhow::Result<Run> {
    let n = p.connections;
    let fleet = Fleet::open(&p.target, n, |_| 0, OPEN_TIMEOUT).await;
    let sampler = Sampler::start(&p.server_pids);
    let addr = p.target.publish_addr().to_string();
    let (rate, duration, max_batch) = (p.rate, p.duration, p.max_batch);
    let publishing = tokio::spawn(async move {
        publisher::run_at_rate(&addr, rate, duration, max_batch, || 0).await
    });
    tokio::time::sleep(duration / 3).await;
    let storm = Instant::now();
    fleet.reconnect_all();
    let resumed = fleet.wait_subscribed(n, OPEN_TIMEOUT).await;
    let resume_time = storm.elapsed();
    let published = publishing.await??;
    fleet
        .wait_delivered(published.len() as u64 * n as u64, DRAIN)
        .await;
    let receipts = fleet.take_receipts();
    let pairs: Vec<(usize, &stats::Receipts)> = receipts.iter().map(|(k, r)| (*k, r)).collect();
    let delivery = check_delivery(&published, &pairs);
    let latency = stats::latency(receipts.iter().map(|(_, r)| r));
    let mut run = base_run(p, "reconnect-storm", &fleet);
    run.keys = 1;
    finish_run(
        &mut run,
        &sampler,
        published.len(),
        delivery,
        latency,
        duration.as_secs_f64(),
    );
    run.extra.insert("all_resumed".into(), resumed.into());
    run.extra
        .insert("resume_ms".into(), (resume_time.as_secs_f64() * 1e3).into());
    fleet.close().await;
    Ok(run)
}

/// `listen`: as many subscribed connections as will open (up to `connections`) on key
/// 0, then `ready_file` is written and the fleet waits, up to `duration`, for `expect`
/// changes each that another process publishes. Latency is from each change's
/// `sentAt`, so the processes of one run, on one machine, can be merged: the largest
/// `max_ms` is the time to the last delivery. Missing: changes a connection lacks of
/// the `expect` it waited for.
pub async fn listen(p: &Params) -> anyhow::Result<Run> {
    let before = stats::sample(&p.server_pids);
    let fleet = Fleet::open(&p.target, p.connections, |_| 0, OPEN_TIMEOUT).await;
    let held = fleet.subscribed();
    let after = stats::sample(&p.server_pids);
    if let Some(path) = &p.ready_file {
        std::fs::write(path, format!("{held}\n"))?;
    }
    eprintln!(
        "listen: {held} connections subscribed; waiting for {} changes each",
        p.expect
    );
    let reached_all = fleet
        .wait_delivered((held * p.expect) as u64, p.duration)
        .await;
    // Stragglers of the last change.
    fleet
        .wait_delivered((held * p.expect) as u64, Duration::from_secs(2))
        .await;
    let receipts = fleet.take_receipts();
    let mut delivery = Delivery::default();
    // Only connections still open are expected to have everything.
    let open = fleet
        .conns
        .iter()
        .zip(&receipts)
        .filter(|(c, _)| !c.is_finished());
    for (_, (_, r)) in open {
        let mut seqs = r.seqs.clone();
        let got = seqs.len() as u64;
        seqs.sort_unstable();
        seqs.dedup();
        delivery.expected += p.expect as u64;
        delivery.delivered += got;
        delivery.duplicates += got - seqs.len() as u64;
        delivery.missing += (p.expect as u64).saturating_sub(seqs.len() as u64);
    }
    let mut run = base_run(p, "listen", &fleet);
    run.keys = 1;
    run.delivery = delivery;
    run.latency = stats::latency(receipts.iter().map(|(_, r)| r));
    run.server_rss_kib = after.rss_kib;
    if held > 0 && !p.server_pids.is_empty() {
        run.rss_per_connection_bytes =
            Some((after.rss_kib.saturating_sub(before.rss_kib) * 1024) as f64 / held as f64);
    }
    run.extra.insert("held".into(), held.into());
    run.extra.insert("failed".into(), fleet.failed().into());
    run.extra.insert("reached_all".into(), reached_all.into());
    fleet.close().await;
    Ok(run)
}

/// `connections`: as many subscribed connections as will open (up to `connections`),
/// then one broadcast to all of them.
pub async fn connections(p: &Params) -> anyhow::Result<Run> {
    let before = stats::sample(&p.server_pids);
    let fleet = Fleet::open(&p.target, p.connections, |_| 0, OPEN_TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = fleet.subscribed();
    let after = stats::sample(&p.server_pids);
    let mut publisher = Publisher::connect(p.target.publish_addr()).await?;
    let started = Instant::now();
    let seqs = publisher.publish(&[0]).await?;
    let reached_all = fleet.wait_delivered(held as u64, DRAIN).await;
    let broadcast_ms = started.elapsed().as_secs_f64() * 1e3;
    let receipts = fleet.take_receipts();
    let published: Vec<(u64, usize)> = seqs.into_iter().map(|s| (s, 0)).collect();
    // Only connections that are still open expect the broadcast.
    let open: Vec<(usize, &stats::Receipts)> = fleet
        .conns
        .iter()
        .zip(&receipts)
        .filter(|(c, _)| !c.is_finished())
        .map(|(_, (k, r))| (*k, r))
        .collect();
    let mut run = base_run(p, "connections", &fleet);
    run.keys = 1;
    run.published = 1;
    run.delivery = check_delivery(&published, &open);
    run.latency = stats::latency(receipts.iter().map(|(_, r)| r));
    run.server_rss_kib = after.rss_kib;
    if !p.server_pids.is_empty() && held > 0 {
        run.rss_per_connection_bytes =
            Some((after.rss_kib.saturating_sub(before.rss_kib) * 1024) as f64 / held as f64);
    }
    run.extra.insert("held".into(), held.into());
    run.extra.insert("failed".into(), fleet.failed().into());
    run.extra.insert("broadcast_ms".into(), broadcast_ms.into());
    run.extra.insert("reached_all".into(), reached_all.into());
    fleet.close().await;
    Ok(run)
}

#[cfg(test)]
mod tests {
    //! The smoke test CI runs: a real nilecast on an ephemeral port, a few connections,
    //! a few changes, nothing missing. The long runs live in loadtest/compare.sh.

    use super::*;
    use crate::client::Protocol;

    async fn server() -> (nilecast::Server, Params) {
        let mut config = nilecast::Config::for_tests();
        config.bind = std::net::Ipv4Addr::LOCALHOST.into();
        let server = nilecast::start(config).await.expect("start nilecast");
        let params = Params {
            target: Target {
                addrs: vec![server.addr.to_string()],
                protocol: Protocol::Native,
                ws_path: "/ws".into(),
                deflate: false,
            },
            server: "nilecast".into(),
            server_pids: vec![std::process::id()],
            connections: 6,
            keys: 3,
            rate: 100.0,
            duration: Duration::from_millis(500),
            max_batch: 10,
            start_rate: 20.0,
            step_factor: 2.0,
            max_rate: 40.0,
            step: Duration::from_millis(300),
            ready_file: None,
            expect: 1,
        };
        (server, params)
    }

    fn assert_complete(run: &Run) {
        assert!(run.published > 0, "nothing was published: {run:?}");
        assert!(run.delivery.expected > 0, "nothing was expected: {run:?}");
        assert_eq!(run.delivery.missing, 0, "{run:?}");
        assert_eq!(run.delivery.duplicates, 0, "{run:?}");
        assert_eq!(run.delivery.delivered, run.delivery.expected, "{run:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broadcast_and_sharded_deliver_everything_once() {
        let (_server, p) = server().await;
        let run = broadcast(&p).await.expect("broadcast");
        assert_complete(&run);
        assert_eq!(run.delivery.expected, run.published * 6);
        assert!(run.latency.p99_ms > 0.0);
        let run = sharded(&p).await.expect("sharded");
        assert_complete(&run);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconnect_storm_resumes_without_loss_or_duplicates() {
        let (_server, mut p) = server().await;
        p.duration = Duration::from_millis(900);
        let run = reconnect_storm(&p).await.expect("reconnect storm");
        assert_complete(&run);
        assert_eq!(run.extra["all_resumed"], true);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_fanout_steps_up_and_reports() {
        let (_server, p) = server().await;
        let run = max_fanout(&p).await.expect("max fanout");
        assert_eq!(run.delivery.missing, 0, "{run:?}");
        assert!(run.deliveries_per_s > 0.0, "{run:?}");
        assert!(run.extra["steps"].as_array().is_some_and(|s| !s.is_empty()));
    }
}
