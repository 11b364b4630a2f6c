//! JWT verification: from a token to a [`Principal`], or a refusal that says why.
//!
//! The accepted algorithms come from configuration, never from the token: a token's
//! `alg` only picks among them, and each algorithm is checked with the one key
//! configured for its family (the shared secret for HS256, the public key for RS256 or
//! ES256), so an HS256 token "signed" with the RSA public key is refused. `exp` is
//! required, and may lie at most `JWT_MAX_LIFETIME_S` ahead, so a leaked token minted
//! "forever" is worthless; `iss` and `aud` are required and checked when configured
//! (jsonwebtoken would let a token without them pass unless they are listed as
//! required). A header with `crit` is refused: this server understands no JWS
//! extension, and RFC 7515 section 4.1.11 says such a token must then be rejected.

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{Principal, Roles};
use crate::config::Config;
use crate::error::{ErrorCode, Refusal};

/// Checks tokens against the configured keys and claims.
pub struct Verifier {
    secret: Option<DecodingKey>,
    /// The public key and the algorithm its type implies (RS256 or ES256).
    public: Option<(DecodingKey, Algorithm)>,
    algorithms: Vec<Algorithm>,
    leeway_s: u64,
    issuer: Option<String>,
    audience: Option<String>,
    max_bytes: usize,
    max_lifetime_s: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key material.
        f.debug_struct("Verifier")
            .field("algorithms", &self.algorithms)
            .field("leeway_s", &self.leeway_s)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_lifetime_s", &self.max_lifetime_s)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused, for the security log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    TooLarge,
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    Claims,
    /// The header lists `crit` extensions, none of which this server implements.
    Critical,
    /// `exp` lies further ahead than `JWT_MAX_LIFETIME_S`.
    Lifetime,
}

impl TokenFault {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFault::TooLarge => "too_large",
            TokenFault::Malformed => "malformed",
            TokenFault::Algorithm => "algorithm",
            TokenFault::Signature => "signature",
            TokenFault::Expired => "expired",
            TokenFault::NotYetValid => "not_yet_valid",
            TokenFault::Issuer => "issuer",
            TokenFault::Audience => "audience",
            TokenFault::Claims => "claims",
            TokenFault::Critical => "critical_header",
            TokenFault::Lifetime => "lifetime",
        }
    }

    /// What the client is told: `token_expired` for an expired token, otherwise
    /// `unauthorized` with a reason that helps an honest client and tells an attacker
    /// nothing about the key.
    pub fn refusal(self) -> Refusal {
        let message = match self {
            TokenFault::TooLarge => "token is too large",
            TokenFault::Malformed => "token is not a well-formed JWT",
            TokenFault::Algorithm => "token algorithm is not accepted",
            TokenFault::Signature => "token signature is invalid",
            TokenFault::Expired => {
                return Refusal::new(ErrorCode::TokenExpired, "token has expired")
            }
            TokenFault::NotYetValid => "token is not valid yet",
            TokenFault::Issuer => "token issuer is not accepted",
            TokenFault::Audience => "token audience is not accepted",
            TokenFault::Claims => {
                "token claims are incomplete: sub, tenant_id and exp are required"
            }
            TokenFault::Critical => {
                "token header has crit extensions, which this server does not understand"
            }
            TokenFault::Lifetime => {
                "token expires too far in the future: its exp is beyond the server's JWT_MAX_LIFETIME_S"
            }
        };
        Refusal::new(ErrorCode::Unauthorized, message)
    }
}

impl Verifier {
    /// The verifier the configuration asks for: None when no key is configured (the
    /// server runs open), an error naming the variable at fault when a setting is bad.
    pub fn from_config(config: &Config) -> Result<Option<Verifier>, String> {
        let secret = match config.jwt_secret.as_deref() {
            None | Some("") => None,
            Some(s) if s.len() < 32 => {
                return Err("JWT_SECRET must be at least 32 bytes (HS256 with a short secret can be brute-forced)".into())
            }
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
        };
        let public = match config.jwt_public_key.as_deref() {
            None | Some("") => None,
            Some(value) => Some(public_key(value)?),
        };
        if secret.is_none() && public.is_none() {
            return Ok(None);
        }
        let mut algorithms = Vec::new();
        if config.jwt_algorithms.is_empty() {
            if secret.is_some() {
                algorithms.push(Algorithm::HS256);
            }
            if let Some((_, alg)) = &public {
                algorithms.push(*alg);
            }
        } else {
            for name in &config.jwt_algorithms {
                let alg = match name.trim().to_ascii_uppercase().as_str() {
                    "HS256" => Algorithm::HS256,
                    "RS256" => Algorithm::RS256,
                    "ES256" => Algorithm::ES256,
                    other => {
                        return Err(format!(
                            "JWT_ALGORITHMS: {other} is not supported (HS256, RS256, ES256)"
                        ))
                    }
                };
                let has_key = match alg {
                    Algorithm::HS256 => secret.is_some(),
                    _ => public.as_ref().is_some_and(|(_, a)| *a == alg),
                };
                if !has_key {
                    return Err(format!(
                        "JWT_ALGORITHMS lists {name} but no matching key is configured (HS256 needs JWT_SECRET, RS256 an RSA and ES256 an EC JWT_PUBLIC_KEY)"
                    ));
                }
                algorithms.push(alg);
            }
        }
        Ok(Some(Verifier {
            secret,
            public,
            algorithms,
            leeway_s: config.jwt_leeway_s,
            issuer: config.jwt_issuer.clone().filter(|s| !s.is_empty()),
            audience: config.jwt_audience.clone().filter(|s| !s.is_empty()),
            max_bytes: config.jwt_max_bytes,
            max_lifetime_s: config.jwt_max_lifetime_s,
        }))
    }

    /// The accepted algorithms, for the start-up log.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Verifies a token presented by `remote` (at `what`, for the log): who it names,
    /// or the refusal, recorded as a security event. The one token check of the HTTP
    /// API, `auth:login` and Socket.IO CONNECT.
    pub fn check(
        &self,
        token: &str,
        metrics: &crate::metrics::Metrics,
        remote: std::net::SocketAddr,
        what: &str,
    ) -> Result<Principal, Refusal> {
        self.verify(token).map_err(|fault| {
            crate::security::record(
                metrics,
                crate::security::Event::TokenRefused,
                remote,
                &format!("{what}: token refused: {}", fault.as_str()),
            );
            fault.refusal()
        })
    }

    /// Verifies a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenFault> {
        if token.len() > self.max_bytes {
            return Err(TokenFault::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenFault::Malformed)?;
        if header.crit.is_some() {
            return Err(TokenFault::Critical);
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenFault::Algorithm);
        }
        let key = match header.alg {
            Algorithm::HS256 => self.secret.as_ref(),
            alg => self
                .public
                .as_ref()
                .filter(|(_, a)| *a == alg)
                .map(|(k, _)| k),
        }
        .ok_or(TokenFault::Algorithm)?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        validation.validate_aud = false;
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            validation.validate_aud = true;
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| fault(e.kind()))?
            .claims;
        let principal = principal_of(&claims).ok_or(TokenFault::Claims)?;
        let now_s = jsonwebtoken::get_current_timestamp();
        if lifetime_exceeded(
            principal.expires_ms,
            now_s,
            self.max_lifetime_s.saturating_add(self.leeway_s),
        ) {
            return Err(TokenFault::Lifetime);
        }
        Ok(principal)
    }
}

/// Whether a token expiring at `expires_ms` (as [`Principal::expires_ms`] holds it)
/// lies more than `max_s` seconds after `now_s`.
fn lifetime_exceeded(expires_ms: Option<u64>, now_s: u64, max_s: u64) -> bool {
    let exp_s = expires_ms.map_or(0, |ms| ms / 1000);
    exp_s > now_s.saturating_add(max_s)
}

fn fault(kind: &jsonwebtoken::errors::ErrorKind) -> TokenFault {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => TokenFault::Expired,
        K::ImmatureSignature => TokenFault::NotYetValid,
        K::InvalidSignature => TokenFault::Signature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            TokenFault::Algorithm
        }
        K::InvalidIssuer => TokenFault::Issuer,
        K::InvalidAudience => TokenFault::Audience,
        K::MissingRequiredClaim(claim) if claim == "iss" => TokenFault::Issuer,
        K::MissingRequiredClaim(claim) if claim == "aud" => TokenFault::Audience,
        K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) => TokenFault::Claims,
        _ => TokenFault::Malformed,
    }
}

/// `sub`, `tenant_id` (or `tenantId`), `roles` and `exp` of verified claims.
fn principal_of(claims: &Map<String, Value>) -> Option<Principal> {
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 128)
    };
    let user = text("sub")?;
    let tenant = text("tenant_id").or_else(|| text("tenantId"))?;
    let roles = match claims.get("roles") {
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(Value::as_str)
            .fold(Roles::default(), |roles, name| {
                roles.union(Roles::parse(name).unwrap_or_default())
            }),
        _ => Roles::default(),
    };
    let exp = claims.get("exp").and_then(Value::as_u64)?;
    Some(Principal {
        user_id: Arc::from(user),
        tenant: Arc::from(tenant),
        roles,
        authenticated: true,
        expires_ms: Some(exp.saturating_mul(1000)),
    })
}

/// Reads `JWT_PUBLIC_KEY`: PEM text, or the path of a PEM file; RSA or EC.
fn public_key(value: &str) -> Result<(DecodingKey, Algorithm), String> {
    let pem = if value.trim_start().starts_with("-----BEGIN") {
        value.replace("\\n", "\n")
    } else {
        std::fs::read_to_string(value)
            .map_err(|e| format!("JWT_PUBLIC_KEY: cannot read {value}: {e}"))?
    };
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
        return Ok((key, Algorithm::ES256));
    }
    Err("JWT_PUBLIC_KEY is neither an RSA nor an EC public key in PEM form".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifetime_is_measured_from_now() {
        let now = 1_700_000_000;
        let week = 7 * 86_400;
        assert!(!lifetime_exceeded(Some((now + 3600) * 1000), now, week));
        assert!(!lifetime_exceeded(Some((now + week) * 1000), now, week));
        assert!(lifetime_exceeded(Some((now + week + 1) * 1000), now, week));
        // exp = u64::MAX seconds saturates to u64::MAX ms and is refused, not wrapped.
        assert!(lifetime_exceeded(Some(u64::MAX), now, week));
    }
}
