//! Who a connection or request is: the token a request carries and its verification
//! ([`jwt`]). The principal and the one place that decides what it may do, by role,
//! are the core crate's (`nilecast_core::auth`), re-exported here.

pub mod jwt;

use hyper::header::{HeaderMap, AUTHORIZATION};

pub use nilecast_core::auth::{Principal, Roles, DEFAULT_TENANT};

/// The token a request carries: `Authorization: Bearer`, else `?token=`.
pub fn request_token(headers: &HeaderMap, query_token: Option<String>) -> Option<String> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        })
        .or(query_token)
        .filter(|t| !t.is_empty())
}
