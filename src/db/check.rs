//! `nilecast migrate` and `nilecast db-check` (the seed's `niledb:test`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{schema, Db, DbConfig, Detection};

fn open(config: &DbConfig) -> anyhow::Result<std::sync::Arc<Db>> {
    config.validate().map_err(anyhow::Error::msg)?;
    if !config.enabled() {
        bail!("no database configured: set NILEDB_CONNECTION_STRING or NILEDB_HOST");
    }
    Db::new(config, u64::MAX).map_err(anyhow::Error::msg)
}

/// Applies the schema and says what it did.
pub async fn migrate(config: &DbConfig) -> anyhow::Result<()> {
    let db = open(config)?;
    let triggers = config.detection == Detection::Notify;
    let applied = schema::migrate(&db, triggers)
        .await
        .context("migration failed")?;
    if applied.is_empty() {
        println!("schema is up to date");
    } else {
        println!("applied: {}", applied.join(", "));
    }
    if !triggers {
        println!(
            "triggers not installed (CHANGE_DETECTION={})",
            config.detection.name()
        );
    }
    Ok(())
}

/// Checks the connection, the schema version, the triggers and a round trip through
/// the change log (and the notification, in notify mode). Exit status 1 on a failure.
pub async fn check(config: &DbConfig) -> anyhow::Result<()> {
    let db = open(config)?;
    let mut failed = false;
    let started = Instant::now();
    let client = db.client().await.context("connection: FAILED")?;
    let version: String = client.query_one("SELECT version()", &[]).await?.get(0);
    println!(
        "connection: ok ({} ms) {version}",
        started.elapsed().as_millis()
    );
    for (part, v) in schema::versions(&db).await? {
        let latest = schema::latest(&part);
        let wanted = part == "core" || config.detection == Detection::Notify;
        let verdict = match (v >= latest, wanted) {
            (true, _) => "ok",
            (false, true) => {
                failed = true;
                "MISSING: run `nilecast migrate`"
            }
            (false, false) => "not needed",
        };
        println!("schema {part}: v{v} of v{latest} {verdict}");
    }
    let triggered = schema::triggered_tables(&db).await?;
    println!(
        "triggers: {} ({})",
        if triggered.is_empty() {
            "none".to_string()
        } else {
            triggered.join(", ")
        },
        config.detection.name()
    );
    if config.detection == Detection::Notify && triggered.is_empty() {
        failed = true;
        println!("triggers: MISSING for notify mode");
    }
    // Round trip: a probe row in the change log, seen by a reader, and in notify mode
    // notified to a listener. The probe goes to a tenant of its own.
    let (listener, mut connection) = db.connect_dedicated_named("nilecast-check").await?;
    let (notified_tx, mut notified) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = notified_tx.send(n.payload().to_string());
            }
        }
    });
    listener
        .batch_execute(&format!("LISTEN {}", super::feed::CHANNEL))
        .await?;
    let started = Instant::now();
    let probe = crate::fanout::change::Change {
        data_type: crate::fanout::change::DataType::Notification,
        tenant: std::sync::Arc::from("_nilecast_check"),
        data: serde_json::json!({ "type": "db_check", "message": "db-check probe" })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    };
    let seqs = super::store::log_changes(&db, std::slice::from_ref(&probe)).await?;
    let seq = seqs
        .first()
        .copied()
        .context("round trip: no seq returned")?;
    let found: i64 = client
        .query_one(
            "SELECT count(*) FROM nilecast_changes WHERE seq = $1",
            &[&(seq as i64)],
        )
        .await?
        .get(0);
    if found != 1 {
        failed = true;
    }
    print!(
        "round trip: change-log seq {seq} written and read back in {} ms",
        started.elapsed().as_millis()
    );
    if config.detection == Detection::Notify {
        match tokio::time::timeout(Duration::from_secs(5), notified.recv()).await {
            Ok(Some(_)) => print!(", notified in {} ms", started.elapsed().as_millis()),
            _ => {
                failed = true;
                print!(", NOT notified within 5 s (is NOTIFY delivered by this server?)");
            }
        }
    }
    println!();
    let head: i64 = client
        .query_one("SELECT coalesce(max(seq), 0) FROM nilecast_changes", &[])
        .await?
        .get(0);
    let positions = client
        .query(
            "SELECT name, seq FROM nilecast_feed_state ORDER BY name",
            &[],
        )
        .await?;
    for row in positions {
        let (name, pos): (String, i64) = (row.get(0), row.get(1));
        println!(
            "feed {name}: at seq {pos}, {} behind the log's head {head}",
            (head - pos).max(0)
        );
    }
    if let Some(fallback) = &db.fallback {
        match fallback.ping().await {
            Ok(()) => println!("fallback (MySQL/MariaDB): ok"),
            Err(e) => {
                failed = true;
                println!("fallback (MySQL/MariaDB): FAILED {e}");
            }
        }
    }
    if failed {
        bail!("database check failed");
    }
    println!("database check passed");
    Ok(())
}
