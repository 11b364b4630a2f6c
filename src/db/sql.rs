//! Read queries written once for PostgreSQL and MySQL / MariaDB, and rows as JSON.
//!
//! A [`Query`] is SQL with `?` placeholders (turned into `$1`, `$2`, ... for
//! PostgreSQL) and its parameters. Every query is built with the caller's tenant:
//! [`Query::new`] makes it the first parameter and checks (in debug builds) that the SQL
//! has a `tenant_id = ?` predicate, so no query can be built without one. Rows come back as JSON objects with camelCase keys; a
//! `timestamptz` becomes an ISO 8601 string.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio_postgres::types::{ToSql, Type};

use crate::time;

pub type Rows = Vec<Map<String, Value>>;

#[derive(Debug, Clone)]
pub enum Param {
    Text(String),
    Int(i64),
    Float(f64),
    Time(SystemTime),
}

#[derive(Debug, Clone)]
pub struct Query {
    pub name: &'static str,
    pub tenant: String,
    text: String,
    params: Vec<Param>,
    /// Whether the query also runs on the MySQL fallback (its tables exist there).
    pub mysql: Option<()>,
}

impl Query {
    /// A query whose first `?` is the tenant (see [`Query::with_leading`] for the
    /// exception).
    pub fn new(name: &'static str, tenant: &str, text: &str) -> Query {
        debug_assert!(
            text.contains("tenant_id = ?"),
            "query {name} has no tenant predicate"
        );
        Query {
            name,
            tenant: tenant.to_string(),
            text: text.to_string(),
            params: vec![Param::Text(tenant.to_string())],
            mysql: Some(()),
        }
    }

    /// A query whose placeholders before the tenant's take `before`: for SQL where the
    /// tenant predicate can not come first.
    pub fn with_leading(
        name: &'static str,
        before: impl IntoIterator<Item = Param>,
        tenant: &str,
        text: &str,
    ) -> Query {
        let mut q = Query::new(name, tenant, text);
        let mut params: Vec<Param> = before.into_iter().collect();
        params.append(&mut q.params);
        q.params = params;
        q
    }

    /// Appends SQL text with its parameters, one per `?`.
    pub fn push(mut self, text: &str, params: impl IntoIterator<Item = Param>) -> Query {
        self.text.push_str(text);
        self.params.extend(params);
        self
    }

    /// Appends `<column> IN (?, ...)` for a non-empty list of values.
    pub fn push_in(mut self, prefix: &str, values: &[Box<str>]) -> Query {
        self.text.push_str(prefix);
        self.text.push_str(" IN (");
        for (i, v) in values.iter().enumerate() {
            self.text.push_str(if i == 0 { "?" } else { ", ?" });
            self.params.push(Param::Text(v.to_string()));
        }
        self.text.push(')');
        self
    }

    /// Marks a query as PostgreSQL only (it reads the change log or jsonb columns).
    pub fn pg_only(mut self) -> Query {
        self.mysql = None;
        self
    }

    pub fn pg_text(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 16);
        let mut n = 0;
        for c in self.text.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    pub fn mysql_text(&self) -> &str {
        &self.text
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn pg_params(&self) -> Vec<Box<dyn ToSql + Sync + Send>> {
        self.params
            .iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    Param::Text(s) => Box::new(s.clone()),
                    Param::Int(i) => Box::new(*i),
                    Param::Float(f) => Box::new(*f),
                    Param::Time(t) => Box::new(*t),
                }
            })
            .collect()
    }
}

/// `snake_case` to `camelCase`.
pub fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = !out.is_empty();
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

pub fn system_time_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn pg_value(row: &tokio_postgres::Row, i: usize, ty: &Type) -> Value {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
    ) -> Option<T> {
        row.try_get::<_, Option<T>>(i).ok().flatten()
    }
    let v = match *ty {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            get::<String>(row, i).map(Value::String)
        }
        Type::INT2 => get::<i16>(row, i).map(Value::from),
        Type::INT4 => get::<i32>(row, i).map(Value::from),
        Type::INT8 => get::<i64>(row, i).map(Value::from),
        Type::FLOAT4 => get::<f32>(row, i).map(|f| Value::from(f64::from(f))),
        Type::FLOAT8 => get::<f64>(row, i).map(Value::from),
        Type::BOOL => get::<bool>(row, i).map(Value::Bool),
        Type::JSON | Type::JSONB => get::<Value>(row, i),
        Type::TIMESTAMPTZ | Type::TIMESTAMP => {
            get::<SystemTime>(row, i).map(|t| Value::String(time::iso8601(system_time_ms(t))))
        }
        _ => None,
    };
    v.unwrap_or(Value::Null)
}

/// PostgreSQL rows as JSON objects with camelCase keys.
pub fn pg_rows(rows: &[tokio_postgres::Row]) -> Rows {
    rows.iter()
        .map(|row| {
            row.columns()
                .iter()
                .enumerate()
                .map(|(i, c)| (camel(c.name()), pg_value(row, i, c.type_())))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        let q = Query::new("t", "acme", "SELECT 1 FROM x WHERE tenant_id = ?")
            .push_in(" AND a", &["p".into(), "q".into()])
            .push(" LIMIT ?", [Param::Int(5)]);
        assert_eq!(
            q.pg_text(),
            "SELECT 1 FROM x WHERE tenant_id = $1 AND a IN ($2, $3) LIMIT $4"
        );
        assert_eq!(
            q.mysql_text(),
            "SELECT 1 FROM x WHERE tenant_id = ? AND a IN (?, ?) LIMIT ?"
        );
        assert_eq!(q.params().len(), 4);
        assert!(matches!(&q.params()[0], Param::Text(t) if t == "acme"));
    }

    #[test]
    fn columns_become_camel_case() {
        assert_eq!(camel("product_id"), "productId");
        assert_eq!(camel("low_stock_threshold"), "lowStockThreshold");
        assert_eq!(camel("seq"), "seq");
        assert_eq!(camel("_x"), "x");
    }
}
