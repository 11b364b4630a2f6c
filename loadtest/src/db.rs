//! `db-latency`: database commit to client. Writer connections commit rows into a table
//! of the load generator's own in PostgreSQL (`loadgen_stock`, attached to the change
//! feed as `inventory`), each row stamped with its send time; a fleet of subscribers
//! receives them through the server's change feed. Latency runs from the moment the
//! committing statement is sent to the moment a subscriber has the frame; delivery is
//! checked against the change log itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::NoTls;

use crate::fleet::Fleet;
use crate::publisher::{now_us, product};
use crate::scenarios::{finish_db_run, Params, Run};
use crate::stats::{self, check_delivery};

/// How the rows reach the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Write {
    /// Rows into `loadgen_stock`, whose nilecast trigger logs them (CHANGE_DETECTION=notify).
    Trigger,
    /// Rows straight into the change log, as an application does for CHANGE_DETECTION=poll.
    Log,
}

#[derive(Debug, Clone)]
pub struct DbParams {
    pub url: String,
    pub writers: usize,
    pub rows_per_commit: usize,
    pub write: Write,
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The bench table, attached to the feed when the rows go through the trigger.
async fn prepare(client: &tokio_postgres::Client, write: Write) -> anyhow::Result<()> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS loadgen_stock (
                 tenant_id  text   NOT NULL DEFAULT 'default',
                 id         bigserial PRIMARY KEY,
                 product_id text   NOT NULL,
                 quantity   int    NOT NULL,
                 sent_at    bigint NOT NULL)",
        )
        .await?;
    if write == Write::Trigger {
        client
            .batch_execute(
                "SELECT nilecast_attach('loadgen_stock', 'inventory', NULL, 'tenant_id', 'product_id')",
            )
            .await
            .context("attaching the trigger (was the server migrated in notify mode?)")?;
    }
    Ok(())
}

/// One writer: its share of the rate, `rows` rows per commit, until `until`.
async fn writer(
    client: tokio_postgres::Client,
    rate: f64,
    rows: usize,
    keys: usize,
    write: Write,
    until: Instant,
    seed: u64,
) -> anyhow::Result<u64> {
    let sql = match write {
        Write::Trigger => {
            "INSERT INTO loadgen_stock (product_id, quantity, sent_at)
             SELECT p, 1000, $2 FROM unnest($1::text[]) AS p"
        }
        Write::Log => {
            "INSERT INTO nilecast_changes (tenant_id, data_type, entity_id, payload)
             SELECT 'default', 'inventory', p, jsonb_build_object(
                 'productId', p, 'warehouseId', 'w-1', 'quantity', 1000, 'sentAt', $2::int8)
             FROM unnest($1::text[]) AS p"
        }
    };
    let statement = client.prepare(sql).await?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut budget, mut last, mut written) = (0.0, Instant::now(), 0u64);
    while Instant::now() < until {
        tick.tick().await;
        let now = Instant::now();
        budget += rate * now.duration_since(last).as_secs_f64();
        last = now;
        while budget >= rows as f64 && Instant::now() < until {
            budget -= rows as f64;
            let products: Vec<String> = (0..rows).map(|_| product(rng.usize(..keys))).collect();
            client
                .execute(&statement, &[&products, &(now_us() as i64)])
                .await?;
            written += rows as u64;
        }
    }
    Ok(written)
}

pub async fn db_latency(p: &Params, d: &DbParams) -> anyhow::Result<Run> {
    let admin = connect(&d.url).await?;
    prepare(&admin, d.write).await?;
    let keys = p.keys.max(1);
    let fleet = Fleet::open(
        &p.target,
        p.connections,
        |i| i % keys,
        Duration::from_secs(120),
    )
    .await;
    let start: i64 = admin
        .query_one("SELECT coalesce(max(seq), 0) FROM nilecast_changes", &[])
        .await?
        .get(0);
    let sampler = crate::scenarios::Sampler::start(&p.server_pids);
    let started = Instant::now();
    let until = started + p.duration;
    let writers = d.writers.max(1);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = connect(&d.url).await?;
        tasks.push(tokio::spawn(writer(
            client,
            p.rate / writers as f64,
            d.rows_per_commit.max(1),
            keys,
            d.write,
            until,
            w as u64 + 1,
        )));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();

    // What was logged, by key, is what each subscriber of that key must receive.
    let key_of: HashMap<String, usize> = (0..keys).map(|k| (product(k), k)).collect();
    let logged = admin
        .query(
            "SELECT seq, payload->>'productId' FROM nilecast_changes
             WHERE seq > $1 AND tenant_id = 'default' AND data_type = 'inventory'
             ORDER BY seq",
            &[&start],
        )
        .await?;
    let published: Vec<(u64, usize)> = logged
        .iter()
        .filter_map(|r| {
            let product: Option<String> = r.get(1);
            Some((r.get::<_, i64>(0) as u64, *key_of.get(&product?)?))
        })
        .collect();
    let per_key = fleet.conns.iter().fold(HashMap::new(), |mut m, c| {
        *m.entry(c.key).or_insert(0u64) += 1;
        m
    });
    let expected: u64 = published
        .iter()
        .map(|(_, k)| per_key.get(k).copied().unwrap_or(0))
        .sum();
    fleet
        .wait_delivered(expected, Duration::from_secs(10))
        .await;
    let receipts = fleet.take_receipts();
    let pairs: Vec<(usize, &stats::Receipts)> = receipts.iter().map(|(k, r)| (*k, r)).collect();
    let delivery = check_delivery(&published, &pairs);
    // Which changes went missing, and for how many of their subscribers: a loss
    // should be explainable, not just counted.
    let mut missing: HashMap<u64, usize> = HashMap::new();
    for (key, r) in &pairs {
        let got: std::collections::HashSet<u64> = r.seqs.iter().copied().collect();
        for (seq, k) in &published {
            if k == key && !got.contains(seq) {
                *missing.entry(*seq).or_default() += 1;
            }
        }
    }
    let mut missing: Vec<(u64, usize)> = missing.into_iter().collect();
    missing.sort_unstable();
    missing.truncate(20);
    let latency = stats::latency(receipts.iter().map(|(_, r)| r));
    let mut run = crate::scenarios::base_run(p, "db-latency", &fleet);
    finish_db_run(&mut run, &sampler, published.len(), delivery, latency, secs);
    run.extra.insert("written".into(), written.into());
    run.extra
        .insert("committed_per_s".into(), (written as f64 / secs).into());
    run.extra.insert("writers".into(), writers.into());
    run.extra
        .insert("rows_per_commit".into(), d.rows_per_commit.into());
    run.extra
        .insert("write".into(), serde_json::to_value(d.write)?);
    run.extra
        .insert("missing_sample".into(), serde_json::to_value(&missing)?);
    run.extra
        .insert("first_seq".into(), published.first().map(|p| p.0).into());
    fleet.close().await;
    Ok(run)
}
