//! Error codes of the wire contract and the WebSocket close codes. Their HTTP statuses
//! are the server's (`http::http_status`), in one place.
//!
//! Every refusal a client can see is an [`ErrorCode`]; the code's string is what
//! docs/protocol.md names, so metrics, logs and frames all use the same spelling. This file
//! must not grow per-boundary error enums that leak to the wire: boundaries keep their
//! own `thiserror` types and convert into a [`Refusal`] here.

use std::borrow::Cow;

/// The error codes of docs/protocol.md, "9.1 Error codes", in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidMessage,
    UnknownEvent,
    InvalidFilter,
    Unauthorized,
    Forbidden,
    RateLimited,
    TooManySubscriptions,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    TokenExpired,
    Internal,
    /// Not a wire code of section 2, but the answer to an upgrade the server cannot take
    /// (connection cap or memory ceiling reached).
    Unavailable,
    /// An HTTP request body that did not arrive within `BODY_TIMEOUT_MS` (408).
    Timeout,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidMessage,
        ErrorCode::UnknownEvent,
        ErrorCode::InvalidFilter,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::TooManySubscriptions,
        ErrorCode::PayloadTooLarge,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::TokenExpired,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::InvalidFilter => "invalid_filter",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
        }
    }

    /// Position in [`ErrorCode::ALL`], used to index the per-code error counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A refused request: the code plus a message for humans. Messages are mostly static
/// strings, so the common refusals allocate nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    /// Milliseconds after which a rate-limited client may try again.
    pub retry_after_ms: Option<u64>,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// The `{"code","message"}` object used in error events, ack replies and HTTP bodies.
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(ms) = self.retry_after_ms {
            obj["retryAfterMs"] = ms.into();
        }
        obj
    }
}

/// WebSocket close codes of docs/protocol.md, "9.2 Close codes".
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}
