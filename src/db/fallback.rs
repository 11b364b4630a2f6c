//! The MySQL / MariaDB read fallback (the seed's main database, `DB_HOST` ...). While
//! PostgreSQL is unreachable, reads of the business tables (`products`, `inventory`,
//! `orders`, `customer_activity`) run here instead, with the same SQL: the fallback
//! database holds tables (or views) of the same names and columns as the demo schema
//! (`sql/mysql_fallback.sql`, README "MySQL / MariaDB fallback"). The change log,
//! alerts, replay and `orders:track` stay on PostgreSQL.

use mysql_async::prelude::Queryable;
use mysql_async::{consts::ColumnType, Opts, OptsBuilder, Pool, Row, Value as My};
use serde_json::{Map, Value};

use super::sql::{camel, Param, Query, Rows};
use super::{DbConfig, DbError};
use crate::time;

pub struct Fallback {
    pool: Pool,
}

impl Fallback {
    pub fn from_config(config: &DbConfig) -> Option<Fallback> {
        let host = config.fallback_host.clone()?;
        let opts = OptsBuilder::default()
            .ip_or_hostname(host)
            .tcp_port(config.fallback_port)
            .user(config.fallback_user.clone().or_else(|| Some("root".into())))
            .pass(config.fallback_password.clone())
            .db_name(config.fallback_name.clone());
        Some(Fallback {
            pool: Pool::new(Opts::from(opts)),
        })
    }

    pub async fn read(&self, query: &Query) -> Result<Rows, DbError> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| DbError::Unavailable(format!("fallback: {e}")))?;
        let params: Vec<My> = query.params().iter().map(to_mysql).collect();
        let rows: Vec<Row> = conn
            .exec(query.mysql_text(), params)
            .await
            .map_err(|e| DbError::Query(format!("fallback: {e}")))?;
        Ok(rows.into_iter().map(row_json).collect())
    }

    /// A round trip, for `db-check`.
    pub async fn ping(&self) -> Result<(), DbError> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| DbError::Unavailable(format!("fallback: {e}")))?;
        conn.ping()
            .await
            .map_err(|e| DbError::Unavailable(format!("fallback: {e}")))
    }
}

fn to_mysql(p: &Param) -> My {
    match p {
        Param::Text(s) => My::from(s.as_str()),
        Param::Int(i) => My::Int(*i),
        Param::Float(f) => My::Double(*f),
        Param::Time(t) => {
            let ms = super::sql::system_time_ms(*t);
            let (y, mo, d, h, mi, s, us) = time::civil(ms);
            My::Date(y as u16, mo as u8, d as u8, h as u8, mi as u8, s as u8, us)
        }
    }
}

fn row_json(row: Row) -> Map<String, Value> {
    let columns = row.columns();
    let values = row.unwrap();
    columns
        .iter()
        .zip(values)
        .map(|(c, v)| {
            let value = match v {
                My::NULL => Value::Null,
                My::Int(i) => Value::from(i),
                My::UInt(u) => Value::from(u),
                My::Float(f) => Value::from(f64::from(f)),
                My::Double(f) => Value::from(f),
                My::Bytes(b) => {
                    let text = String::from_utf8_lossy(&b).into_owned();
                    match c.column_type() {
                        // SUM and friends are DECIMAL: a whole number stays an integer, as
                        // PostgreSQL's bigint sums do.
                        ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL => {
                            match (text.parse::<i64>(), text.parse::<f64>()) {
                                (Ok(i), _) => Value::from(i),
                                (_, Ok(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                                    Value::from(f as i64)
                                }
                                (_, Ok(f)) => Value::from(f),
                                _ => Value::String(text),
                            }
                        }
                        _ => Value::String(text),
                    }
                }
                My::Date(y, mo, d, h, mi, s, us) => Value::String(time::iso8601(time::from_civil(
                    i64::from(y),
                    u32::from(mo),
                    u32::from(d),
                    u32::from(h),
                    u32::from(mi),
                    u32::from(s),
                    us,
                ))),
                My::Time(..) => Value::Null,
            };
            (camel(&c.name_str()), value)
        })
        .collect()
}
