//! The schema, versioned and idempotent. Two parts: `core` (the change log, feed state
//! and the demo tables: plain tables, so it applies on Nile DB too) and `triggers` (the
//! trigger function and the demo tables' triggers, for `CHANGE_DETECTION=notify` only).
//! `nilecast_schema` records the version of each part applied; each part's SQL is
//! itself idempotent, so a half-applied or re-applied part is harmless.

use super::{Db, DbError};

/// (part, version, SQL). A new version of a part is a new file applied after it.
const MIGRATIONS: [(&str, i32, &str); 3] = [
    ("core", 1, include_str!("sql/001_core.sql")),
    ("triggers", 1, include_str!("sql/002_triggers.sql")),
    ("core", 2, include_str!("sql/003_recovery.sql")),
];

/// The latest version of each part.
pub fn latest(part: &str) -> i32 {
    MIGRATIONS
        .iter()
        .filter(|(p, _, _)| *p == part)
        .map(|(_, v, _)| *v)
        .max()
        .unwrap_or(0)
}

/// Applies what is missing, in one transaction per run, serialized between nodes by an
/// advisory lock. `triggers` says whether the trigger part is wanted. Returns what was
/// applied, as `part vN`.
pub async fn migrate(db: &Db, triggers: bool) -> Result<Vec<String>, DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         SELECT pg_advisory_xact_lock(4001);
         CREATE TABLE IF NOT EXISTS nilecast_schema (
             part text PRIMARY KEY,
             version integer NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let mut applied = Vec::new();
    for (part, version, sql) in MIGRATIONS {
        if part == "triggers" && !triggers {
            continue;
        }
        let current: i32 = tx
            .query_opt(
                "SELECT version FROM nilecast_schema WHERE part = $1",
                &[&part],
            )
            .await?
            .map_or(0, |row| row.get(0));
        if current >= version {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO nilecast_schema (part, version) VALUES ($1, $2)
             ON CONFLICT (part) DO UPDATE SET version = EXCLUDED.version, applied_at = now()",
            &[&part, &version],
        )
        .await?;
        applied.push(format!("{part} v{version}"));
    }
    tx.commit().await?;
    Ok(applied)
}

/// The applied version of each part (0 when absent).
pub async fn versions(db: &Db) -> Result<Vec<(String, i32)>, DbError> {
    let client = db.client().await?;
    let exists: bool = client
        .query_one("SELECT to_regclass('nilecast_schema') IS NOT NULL", &[])
        .await?
        .get(0);
    let mut out = Vec::new();
    for part in ["core", "triggers"] {
        let v = if exists {
            client
                .query_opt(
                    "SELECT version FROM nilecast_schema WHERE part = $1",
                    &[&part],
                )
                .await?
                .map_or(0, |row| row.get::<_, i32>(0))
        } else {
            0
        };
        out.push((part.to_string(), v));
    }
    Ok(out)
}

/// Tables carrying a nilecast trigger.
pub async fn triggered_tables(db: &Db) -> Result<Vec<String>, DbError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT DISTINCT event_object_table::text FROM information_schema.triggers
             WHERE trigger_name LIKE 'nilecast_%' ORDER BY 1",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
