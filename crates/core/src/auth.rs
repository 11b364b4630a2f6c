//! Who a connection or request is, and the one place that decides what it may do.
//!
//! With a JWT key configured, the server makes a principal from a verified token; a
//! client without one is [`Principal::anonymous`] and may do nothing but log in.
//! Without a key the server runs open (docs/protocol.md, "13. Authentication, tenancy and roles"): every principal is an
//! anonymous admin of its tenant. Either way the decisions are made here, by role.
//! Reading a request's token and verifying it are the server's (`auth/`).

use std::sync::Arc;

use crate::error::{ErrorCode, Refusal};
use crate::fanout::change::Namespace;

/// Roles (docs/protocol.md, "13.3 Roles"), as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    pub const CUSTOMER: Roles = Roles(1);
    pub const STAFF: Roles = Roles(2);
    pub const ADMIN: Roles = Roles(4);
    pub const PUBLISHER: Roles = Roles(8);

    pub fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }

    /// A role named in a token's `roles` claim; unknown names grant nothing.
    pub fn parse(name: &str) -> Option<Roles> {
        match name {
            "customer" => Some(Roles::CUSTOMER),
            "staff" => Some(Roles::STAFF),
            "admin" => Some(Roles::ADMIN),
            "publisher" => Some(Roles::PUBLISHER),
            _ => None,
        }
    }

    pub fn is_staff(self) -> bool {
        self.contains(Roles::STAFF) || self.contains(Roles::ADMIN)
    }

    pub fn names(self) -> Vec<&'static str> {
        [
            (Roles::CUSTOMER, "customer"),
            (Roles::STAFF, "staff"),
            (Roles::ADMIN, "admin"),
            (Roles::PUBLISHER, "publisher"),
        ]
        .into_iter()
        .filter(|(r, _)| self.contains(*r))
        .map(|(_, n)| n)
        .collect()
    }
}

/// The identity a connection or HTTP request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Arc<str>,
    pub tenant: Arc<str>,
    pub roles: Roles,
    /// False until a valid token was seen (`connection:established.authenticated`).
    pub authenticated: bool,
    /// Token expiry, milliseconds since the epoch.
    pub expires_ms: Option<u64>,
}

/// The tenant of open mode when the client names none.
pub const DEFAULT_TENANT: &str = "default";

impl Principal {
    /// Open mode: an anonymous admin of `tenant`.
    pub fn open(tenant: Option<&str>) -> Principal {
        let tenant = tenant
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .unwrap_or(DEFAULT_TENANT);
        Principal {
            user_id: Arc::from("anonymous"),
            tenant: Arc::from(tenant),
            roles: Roles::ADMIN,
            authenticated: false,
            expires_ms: None,
        }
    }

    /// A client that has shown no valid token while auth is on: it may log in and
    /// nothing else.
    pub fn anonymous() -> Arc<Principal> {
        static ANONYMOUS: std::sync::OnceLock<Arc<Principal>> = std::sync::OnceLock::new();
        ANONYMOUS
            .get_or_init(|| {
                Arc::new(Principal {
                    user_id: Arc::from("anonymous"),
                    tenant: Arc::from(""),
                    roles: Roles::default(),
                    authenticated: false,
                    expires_ms: None,
                })
            })
            .clone()
    }

    /// The refusal for a principal lacking a role: `unauthorized` when it has shown no
    /// token at all (auth on), else `forbidden`.
    fn lacks(&self, message: &'static str) -> Refusal {
        if !self.authenticated && self.roles == Roles::default() {
            Refusal::new(
                ErrorCode::Unauthorized,
                "authentication required: send a token (?token=, Authorization: Bearer, or auth:login)",
            )
        } else {
            Refusal::new(ErrorCode::Forbidden, message)
        }
    }

    /// [`Principal::open`], shared: every open-mode connection of the default tenant
    /// holds the same one instead of three allocations of its own.
    pub fn open_shared(tenant: Option<&str>) -> Arc<Principal> {
        static DEFAULT: std::sync::OnceLock<Arc<Principal>> = std::sync::OnceLock::new();
        match tenant {
            Some(t) if !t.is_empty() && t != DEFAULT_TENANT => Arc::new(Principal::open(Some(t))),
            _ => DEFAULT
                .get_or_init(|| Arc::new(Principal::open(None)))
                .clone(),
        }
    }

    /// May this principal subscribe to (or query) namespace `ns`?
    pub fn may_read(&self, ns: Namespace) -> Result<(), Refusal> {
        let allowed = match ns {
            Namespace::Root => true,
            Namespace::Dashboard | Namespace::Customer => self.roles.is_staff(),
            Namespace::Inventory | Namespace::Orders | Namespace::Notifications => {
                self.roles.is_staff() || self.roles.contains(Roles::CUSTOMER)
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(self.lacks("this role may not read this namespace"))
        }
    }

    /// Staff-only HTTP endpoints and acknowledging alerts.
    pub fn may_administer(&self) -> Result<(), Refusal> {
        if self.roles.is_staff() {
            Ok(())
        } else {
            Err(self.lacks("staff or admin role required"))
        }
    }

    /// `POST /publish`.
    pub fn may_publish(&self) -> Result<(), Refusal> {
        if self.roles.contains(Roles::PUBLISHER) || self.roles.contains(Roles::ADMIN) {
            Ok(())
        } else {
            Err(self.lacks("publisher or admin role required"))
        }
    }

    /// A customer sees only its own orders and notifications: the user id every such
    /// subscription is pinned to, or None for staff.
    pub fn own_user_only(&self) -> Option<&str> {
        (!self.roles.is_staff()).then_some(&*self.user_id)
    }
}
