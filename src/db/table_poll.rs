//! `CHANGE_DETECTION=table-poll`: change detection without triggers or functions, for
//! Nile DB. Every `POLL_INTERVAL_MS` each watched table is scanned by `updated_at` with
//! keyset paging, and each new row version is appended to the change log, from where
//! the feed publishes it like any other change.
//!
//! A row version is logged once: a version already in the change log (tenant, data type,
//! row key, `updated_at`; a unique index) is not inserted again. That lets each scan start `TABLE_POLL_LOOKBACK_MS` before the newest
//! `updated_at` seen, to catch transactions that commit after a later one: `updated_at =
//! now()` is the transaction's start time, not its commit time. A row that commits more
//! than the lookback after its `updated_at` is missed; notify mode has no such window.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use super::{Db, DbError};
use crate::shutdown::Shutdown;

/// One watched table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TableSpec {
    pub table: String,
    pub data_type: String,
    /// The change log's entity id (the order for tracking rows, the product for stock).
    pub id_column: String,
    /// The columns that identify a row (default: the id column).
    #[serde(default)]
    pub key_columns: Vec<String>,
    #[serde(default = "default_tenant_column")]
    pub tenant_column: String,
    #[serde(default = "default_updated_at")]
    pub updated_at_column: String,
    /// Payload key to column; without one, every column but the tenant, in camelCase.
    #[serde(default)]
    pub mapping: Option<serde_json::Map<String, Value>>,
}

fn default_tenant_column() -> String {
    "tenant_id".into()
}

fn default_updated_at() -> String {
    "updated_at".into()
}

fn identifier(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if ok {
        // Quote each part, so a column named like a keyword works too.
        Ok(name
            .split('.')
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join("."))
    } else {
        Err(format!(
            "TABLE_POLL_TABLES: {name:?} is not a plain identifier (letters, digits, _)"
        ))
    }
}

/// The demo tables, watched when `TABLE_POLL_TABLES` is empty.
pub fn demo_specs() -> Vec<TableSpec> {
    let spec =
        |table: &str, data_type: &str, id: &str, keys: &[&str], mapping: Option<Value>| TableSpec {
            table: table.into(),
            data_type: data_type.into(),
            id_column: id.into(),
            key_columns: keys.iter().map(|k| k.to_string()).collect(),
            tenant_column: default_tenant_column(),
            updated_at_column: default_updated_at(),
            mapping: mapping.and_then(|m| m.as_object().cloned()),
        };
    vec![
        spec(
            "inventory",
            "inventory",
            "product_id",
            &["product_id", "warehouse_id"],
            None,
        ),
        spec(
            "orders",
            "orders",
            "id",
            &["id"],
            Some(serde_json::json!({
                "orderId": "id", "customerId": "customer_id", "status": "status",
                "total": "total", "currency": "currency", "updatedAt": "updated_at"
            })),
        ),
        spec(
            "order_tracking",
            "order_tracking",
            "order_id",
            &["id"],
            Some(serde_json::json!({
                "orderId": "order_id", "customerId": "customer_id", "status": "status",
                "carrier": "carrier", "trackingNumber": "tracking_number", "location": "location"
            })),
        ),
        spec(
            "customer_activity",
            "customer_activity",
            "customer_id",
            &["id"],
            None,
        ),
    ]
}

/// Parses `TABLE_POLL_TABLES` and checks every name.
pub fn parse_specs(text: &str) -> Result<Vec<TableSpec>, String> {
    if text.trim().is_empty() {
        return Ok(demo_specs());
    }
    let specs: Vec<TableSpec> = serde_json::from_str(text)
        .map_err(|e| format!("TABLE_POLL_TABLES is not a valid list of tables: {e}"))?;
    for s in &specs {
        identifier(&s.table)?;
        identifier(&s.id_column)?;
        identifier(&s.tenant_column)?;
        identifier(&s.updated_at_column)?;
        for k in &s.key_columns {
            identifier(k)?;
        }
        if crate::fanout::change::DataType::parse(&s.data_type).is_none() {
            return Err(format!(
                "TABLE_POLL_TABLES: unknown dataType {:?}",
                s.data_type
            ));
        }
        if let Some(m) = &s.mapping {
            for v in m.values() {
                identifier(v.as_str().unwrap_or(""))?;
            }
        }
    }
    Ok(specs)
}

/// The scan of one table: one page of row versions after (`$1` time, `$2` key), logged
/// in the same statement. Returns (logged, rows seen, last time, last key).
fn scan_sql(spec: &TableSpec) -> Result<String, String> {
    let table = identifier(&spec.table)?;
    let updated = identifier(&spec.updated_at_column)?;
    let tenant = identifier(&spec.tenant_column)?;
    let id = identifier(&spec.id_column)?;
    let keys: Vec<String> = if spec.key_columns.is_empty() {
        vec![id.clone()]
    } else {
        spec.key_columns
            .iter()
            .map(|k| identifier(k))
            .collect::<Result<_, _>>()?
    };
    let key = format!(
        "concat_ws('/', {})",
        keys.iter()
            .map(|k| format!("t.{k}::text"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let payload = match &spec.mapping {
        Some(_) => "(SELECT coalesce(jsonb_object_agg(m.key, to_jsonb(t) -> (m.value #>> '{}')), '{}'::jsonb) FROM jsonb_each($4::jsonb) AS m)".to_string(),
        None => format!(
            "(SELECT coalesce(jsonb_object_agg(lower(left(replace(initcap(replace(e.key, '_', ' ')), ' ', ''), 1)) || substr(replace(initcap(replace(e.key, '_', ' ')), ' ', ''), 2), e.value), '{{}}'::jsonb) FROM jsonb_each(to_jsonb(t) - '{}') AS e WHERE $4::jsonb IS NULL)",
            spec.tenant_column
        ),
    };
    Ok(format!(
        "WITH page AS (
             SELECT t.{tenant}::text AS tenant, t.{id}::text AS entity, {key} AS row_key,
                    t.{updated} AS version, {payload} AS payload
             FROM {table} AS t
             WHERE (t.{updated}, {key}) > ($1, $2)
             ORDER BY t.{updated}, {key}
             LIMIT $3),
         logged AS (
             INSERT INTO nilecast_changes
                 (tenant_id, data_type, entity_id, payload, source_key, source_version)
             SELECT tenant, $5, entity, payload, row_key, version FROM page
             WHERE NOT EXISTS (
                 SELECT 1 FROM nilecast_changes AS c
                 WHERE c.tenant_id = page.tenant AND c.data_type = $5
                   AND c.source_key = page.row_key AND c.source_version = page.version)
             ORDER BY version, row_key
             ON CONFLICT DO NOTHING
             RETURNING 1)
         SELECT (SELECT count(*) FROM logged), (SELECT count(*) FROM page),
                (SELECT max(version) FROM page),
                (SELECT row_key FROM page ORDER BY version DESC, row_key DESC LIMIT 1)"
    ))
}

const PAGE: i64 = 1000;

/// One watched table's scanner.
struct Scanner {
    spec: TableSpec,
    sql: String,
    mapping: Option<Value>,
    /// The newest `updated_at` seen (stored in `nilecast_table_cursors`).
    newest: Option<SystemTime>,
    /// Where this process started watching: no scan goes back further.
    floor: SystemTime,
}

impl Scanner {
    /// One pass: from `lookback` before the newest version seen, page to the end, then
    /// store the newest version seen (so a restart goes on from there).
    async fn scan(&mut self, db: &Db, lookback: Duration) -> Result<u64, DbError> {
        let client = db.client().await?;
        let from_time = match self.newest {
            Some(t) => t.checked_sub(lookback).unwrap_or(t).max(self.floor),
            None => {
                // First pass: from the stored cursor (minus the lookback), or, with none
                // stored or FEED_START=now, from the database's now: history is not news.
                let stored: Option<SystemTime> = match db.config.feed_start {
                    super::FeedStart::Stored => client
                        .query_opt(
                            "SELECT updated_at FROM nilecast_table_cursors WHERE table_name = $1",
                            &[&self.spec.table],
                        )
                        .await?
                        .map(|r| r.get(0)),
                    super::FeedStart::Now => None,
                };
                let (newest, floor) = match stored {
                    Some(t) => (t, t.checked_sub(lookback).unwrap_or(t)),
                    None => {
                        let now: SystemTime = client.query_one("SELECT now()", &[]).await?.get(0);
                        (now, now)
                    }
                };
                self.newest = Some(newest);
                self.floor = floor;
                floor
            }
        };
        let before = self.newest;
        let mut from = (from_time, String::new());
        let mut logged = 0u64;
        loop {
            let row = client
                .query_one(
                    &self.sql,
                    &[&from.0, &from.1, &PAGE, &self.mapping, &self.spec.data_type],
                )
                .await?;
            let (n_logged, n_seen): (i64, i64) = (row.get(0), row.get(1));
            logged += n_logged as u64;
            let (Some(version), Some(key)) = (
                row.get::<_, Option<SystemTime>>(2),
                row.get::<_, Option<String>>(3),
            ) else {
                break;
            };
            if self.newest.is_none_or(|n| version > n) {
                self.newest = Some(version);
            }
            if n_seen < PAGE {
                break;
            }
            from = (version, key);
        }
        if let (Some(newest), true) = (self.newest, self.newest != before) {
            client
                .execute(
                    "INSERT INTO nilecast_table_cursors (table_name, updated_at)
                     VALUES ($1, $2)
                     ON CONFLICT (table_name) DO UPDATE SET updated_at = EXCLUDED.updated_at",
                    &[&self.spec.table, &newest],
                )
                .await?;
        }
        Ok(logged)
    }
}

/// Scans the watched tables every `POLL_INTERVAL_MS` until shutdown; on an error waits
/// an interval and goes on (the scans are idempotent).
pub async fn run(db: Arc<Db>, shutdown: Shutdown) {
    let specs = parse_specs(db.config.table_poll_tables.as_deref().unwrap_or(""))
        .unwrap_or_else(|_| demo_specs());
    let mut scanners: Vec<Scanner> = specs
        .into_iter()
        .filter_map(|spec| {
            let sql = scan_sql(&spec).ok()?;
            let mapping = spec.mapping.clone().map(Value::Object);
            Some(Scanner {
                spec,
                sql,
                mapping,
                newest: None,
                floor: SystemTime::UNIX_EPOCH,
            })
        })
        .collect();
    let interval = Duration::from_millis(db.config.poll_interval_ms);
    let lookback = Duration::from_millis(db.config.table_poll_lookback_ms);
    loop {
        for scanner in &mut scanners {
            match scanner.scan(&db, lookback).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(table = %scanner.spec.table, rows = n, "table-poll logged row versions")
                }
                Err(e) => {
                    tracing::warn!(table = %scanner.spec.table, error = %e, "table-poll scan failed; will retry");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_reject_anything_but_identifiers() {
        assert!(parse_specs("").is_ok_and(|s| s.len() == 4));
        let bad = r#"[{"table":"x; drop table y","dataType":"orders","idColumn":"id"}]"#;
        assert!(parse_specs(bad).is_err());
        let bad_type = r#"[{"table":"x","dataType":"nope","idColumn":"id"}]"#;
        assert!(parse_specs(bad_type).is_err());
        let good = r#"[{"table":"my_stock","dataType":"inventory","idColumn":"sku","mapping":{"productId":"sku"}}]"#;
        assert!(parse_specs(good).is_ok());
    }
}
