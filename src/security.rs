//! What a hostile client meets at the door: security events (logged under their own
//! tracing target and counted), the client's address behind trusted proxies, the
//! `Origin` check (one case-insensitive comparison for CORS and upgrades), and
//! per-address limits on connections (plain HTTP and WebSocket alike, IPv6 by /64) and
//! upgrades.
//!
//! Architecture Invariant: every refusal made here for a security reason goes through
//! [`record`], so an operator sees it in `nilecast::security` logs and in metrics.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::Arc;

use dashmap::DashMap;
use hyper::header::HeaderMap;

use crate::error::{ErrorCode, Refusal};
use crate::metrics::Metrics;

/// Kinds of security event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A token failed verification (any reason, expiry included).
    TokenRefused,
    /// A client asked for another tenant's data.
    CrossTenant,
    /// A role asked for what it may not have.
    Forbidden,
    /// A connection went on past its rate limit and was closed with 1008.
    RateLimitClose,
    /// A WebSocket upgrade from an `Origin` not in `CORS_ORIGIN`.
    OriginRefused,
    /// An address already holds `MAX_CONNECTIONS_PER_IP` connections.
    AddressConnections,
    /// An address opened connections faster than `UPGRADES_PER_IP_PER_S`.
    AddressUpgradeRate,
    /// A connection's token expired while it was open.
    TokenExpired,
}

impl Event {
    pub const ALL: [Event; 8] = [
        Event::TokenRefused,
        Event::CrossTenant,
        Event::Forbidden,
        Event::RateLimitClose,
        Event::OriginRefused,
        Event::AddressConnections,
        Event::AddressUpgradeRate,
        Event::TokenExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::TokenRefused => "token_refused",
            Event::CrossTenant => "cross_tenant",
            Event::Forbidden => "forbidden",
            Event::RateLimitClose => "rate_limit_close",
            Event::OriginRefused => "origin_refused",
            Event::AddressConnections => "address_connections",
            Event::AddressUpgradeRate => "address_upgrade_rate",
            Event::TokenExpired => "token_expired",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Logs a security event under `nilecast::security` and counts it.
pub fn record(metrics: &Metrics, event: Event, remote: SocketAddr, detail: &str) {
    metrics.security[event.index()].fetch_add(1, Relaxed);
    tracing::warn!(target: "nilecast::security", event = event.as_str(), remote = %remote, "{detail}");
}

/// Counts a refused request (WebSocket or HTTP) and, when the refusal is `forbidden`
/// (a role asking for what it may not have), records it as a security event. `who`
/// names the caller in the log line. Refusals of a token, of another tenant, of an
/// origin or of an address are recorded where they are made, each as its own event.
pub fn refused(metrics: &Metrics, remote: SocketAddr, who: std::fmt::Arguments, refusal: &Refusal) {
    metrics.error(refusal.code);
    if refusal.code == ErrorCode::Forbidden {
        record(
            metrics,
            Event::Forbidden,
            remote,
            &format!("{who}: {}", refusal.message),
        );
    }
}

/// An address range of `TRUSTED_PROXIES`: one address, or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    base: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn parse(s: &str) -> Result<IpRange, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let base: IpAddr = addr
            .parse()
            .map_err(|_| format!("TRUSTED_PROXIES: {s} is not an address or CIDR block"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("TRUSTED_PROXIES: bad prefix length in {s}"))?,
        };
        Ok(IpRange { base, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.base, ip) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(b) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(b) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case
/// the nearest address in `X-Forwarded-For` that is not itself a trusted proxy. A
/// header from an untrusted peer is ignored: anyone can write one.
pub fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpRange]) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|r| r.contains(ip));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return SocketAddr::new(ip, peer.port()),
            // A garbled entry: trust nothing further left of it.
            Err(_) => return peer,
        }
    }
    peer
}

/// Is a browser `Origin` allowed by `CORS_ORIGIN`? No `Origin` header (a non-browser
/// client) is allowed: the check exists to stop other sites' pages from opening
/// connections with a visitor's cookies (cross-site WebSocket hijacking).
pub fn origin_allowed(origin: Option<&[u8]>, allowed: &[String]) -> bool {
    match origin {
        None => true,
        Some(origin) => allowed.iter().any(|a| a == "*") || origin_listed(origin, allowed),
    }
}

/// Is `origin` one of the origins `CORS_ORIGIN` names (not merely allowed by `*`)? The
/// comparison ignores ASCII case, as scheme and host do; every origin check goes
/// through here so that the HTTP API and the WebSocket upgrade agree.
pub fn origin_listed(origin: &[u8], allowed: &[String]) -> bool {
    allowed
        .iter()
        .any(|a| a != "*" && a.trim().as_bytes().eq_ignore_ascii_case(origin))
}

/// The key an address's limits are counted under. An IPv6 client is usually handed a
/// whole /64 (SLAAC and privacy extensions pick any address in it), so a limit per
/// address would be no limit at all: the /64 is what is counted. An IPv4-mapped IPv6
/// address (a dual-stack listener) counts as its IPv4 address.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// Per-address limits: connections held at once, and upgrades per second (a token
/// bucket that allows a burst of one second's worth). Addresses are counted by
/// [`address_key`]: an IPv6 client by its /64.
///
/// Every connection counts, plain HTTP included: a plain connection takes a [`Place`]
/// when it is accepted, and a WebSocket upgrade on it takes that place over, so an
/// upgraded connection is counted once and given back once (by the WebSocket's end).
pub struct AddressLimits {
    doors: DashMap<IpAddr, Door>,
    max_connections: u32,
    upgrades_per_s: f64,
}

struct Door {
    open: u32,
    tokens: f64,
    last_ms: u64,
}

/// A plain HTTP connection's place in its address's count. It is held from the accept
/// until the connection ends, unless a WebSocket upgrade on the connection takes it
/// over; whoever takes it ([`Place::take`]) is the one who gives it back. It travels to
/// the upgrade as a request extension.
#[derive(Clone)]
pub struct Place(Arc<PlaceState>);

struct PlaceState {
    key: IpAddr,
    /// An atomic because the connection's task and its upgrade each hold a clone; in
    /// practice they take turns (the upgrade runs inside the connection's task).
    held: AtomicBool,
}

impl Place {
    /// Whether this place is still held and counts `ip`.
    fn counts(&self, ip: IpAddr) -> bool {
        self.0.held.load(Acquire) && self.0.key == address_key(ip)
    }

    /// Takes the place; true if it was held until now (the caller now owns the count).
    fn take(&self) -> bool {
        self.0.held.swap(false, AcqRel)
    }
}

impl AddressLimits {
    /// `0` turns a limit off.
    pub fn new(max_connections: u32, upgrades_per_s: u32) -> AddressLimits {
        AddressLimits {
            doors: DashMap::new(),
            max_connections,
            upgrades_per_s: f64::from(upgrades_per_s),
        }
    }

    fn door(&self, ip: IpAddr, now_ms: u64) -> dashmap::mapref::one::RefMut<'_, IpAddr, Door> {
        self.doors.entry(address_key(ip)).or_insert_with(|| Door {
            open: 0,
            tokens: self.upgrades_per_s,
            last_ms: now_ms,
        })
    }

    /// Lets a newly accepted connection from `ip` in, counting it until its place is
    /// given back ([`release_place`]), or says it is over `MAX_CONNECTIONS_PER_IP`.
    /// None when there is no connection limit: nothing is counted then.
    ///
    /// [`release_place`]: AddressLimits::release_place
    pub fn admit_connection(&self, ip: IpAddr, now_ms: u64) -> Result<Option<Place>, Event> {
        if self.max_connections == 0 {
            return Ok(None);
        }
        let mut door = self.door(ip, now_ms);
        if door.open >= self.max_connections {
            return Err(Event::AddressConnections);
        }
        door.open += 1;
        Ok(Some(Place(Arc::new(PlaceState {
            key: address_key(ip),
            held: AtomicBool::new(true),
        }))))
    }

    /// The connection that held `place` has ended: its count is given back, unless an
    /// upgrade took the place over.
    pub fn release_place(&self, place: &Place) {
        if place.take() {
            self.release(place.0.key);
        }
    }

    /// Lets a WebSocket upgrade from `ip` in, counting it as open until [`release`], or
    /// says which limit it hit. A connection that already holds a place for `ip` (a
    /// plain connection accepted directly from the client) is not counted again: the
    /// upgrade takes its place over. One accepted from a trusted proxy holds none, and
    /// is counted here under the forwarded client address.
    ///
    /// [`release`]: AddressLimits::release
    pub fn admit_upgrade(
        &self,
        ip: IpAddr,
        now_ms: u64,
        place: Option<&Place>,
    ) -> Result<(), Event> {
        let counted = place.is_some_and(|p| p.counts(ip));
        let mut door = self.door(ip, now_ms);
        if !counted && self.max_connections > 0 && door.open >= self.max_connections {
            return Err(Event::AddressConnections);
        }
        if self.upgrades_per_s > 0.0 {
            let elapsed_s = now_ms.saturating_sub(door.last_ms) as f64 / 1000.0;
            door.last_ms = now_ms;
            door.tokens = (door.tokens + elapsed_s * self.upgrades_per_s).min(self.upgrades_per_s);
            if door.tokens < 1.0 {
                return Err(Event::AddressUpgradeRate);
            }
            door.tokens -= 1.0;
        }
        match place {
            // The place's count now belongs to the WebSocket connection.
            Some(place) if counted && place.take() => {}
            _ => door.open += 1,
        }
        Ok(())
    }

    /// [`admit_upgrade`] of a connection that holds no place (unit tests).
    ///
    /// [`admit_upgrade`]: AddressLimits::admit_upgrade
    #[cfg(test)]
    fn admit(&self, ip: IpAddr, now_ms: u64) -> Result<(), Event> {
        self.admit_upgrade(ip, now_ms, None)
    }

    /// A connection admitted from `ip` has ended.
    pub fn release(&self, ip: IpAddr) {
        if let Some(mut door) = self.doors.get_mut(&address_key(ip)) {
            door.open = door.open.saturating_sub(1);
        }
    }

    /// Forgets addresses with nothing open whose bucket has refilled (housekeeping).
    pub fn sweep(&self, now_ms: u64) {
        let refill_ms = 1000;
        self.doors
            .retain(|_, door| door.open > 0 || now_ms.saturating_sub(door.last_ms) < refill_ms);
    }

    /// Connections open from `ip`'s key (its /64 for IPv6), for tests.
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        self.doors.get(&address_key(ip)).map_or(0, |d| d.open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn ranges_match_addresses_and_blocks() {
        let r = IpRange::parse("10.0.0.0/8").expect("test address");
        assert!(r.contains("10.1.2.3".parse().expect("test address")));
        assert!(!r.contains("11.0.0.1".parse().expect("test address")));
        assert!(r.contains("::ffff:10.0.0.1".parse().expect("test address")));
        let one = IpRange::parse("127.0.0.1").expect("test address");
        assert!(one.contains("127.0.0.1".parse().expect("test address")));
        assert!(!one.contains("127.0.0.2".parse().expect("test address")));
        assert!(IpRange::parse("::1/129").is_err());
        assert!(IpRange::parse("nonsense").is_err());
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let peer: SocketAddr = "10.0.0.5:4000".parse().expect("test address");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.9, 10.0.0.7"),
        );
        let trusted = [IpRange::parse("10.0.0.0/8").expect("test address")];
        assert_eq!(
            client_addr(peer, &headers, &trusted).ip(),
            "203.0.113.9".parse::<IpAddr>().expect("test address")
        );
        assert_eq!(client_addr(peer, &headers, &[]), peer);
    }

    #[test]
    fn origins_are_checked_against_the_list() {
        let list = vec!["https://shop.example".to_string()];
        assert!(origin_allowed(None, &list));
        assert!(origin_allowed(Some(b"https://shop.example"), &list));
        assert!(!origin_allowed(Some(b"https://evil.example"), &list));
        assert!(origin_allowed(Some(b"https://evil.example"), &["*".into()]));
        assert!(origin_allowed(Some(b"HTTPS://Shop.Example"), &list));
        assert!(origin_listed(b"https://SHOP.example", &list));
        assert!(!origin_listed(b"https://evil.example", &["*".into()]));
    }

    #[test]
    fn an_address_is_held_to_its_connection_and_upgrade_limits() {
        let ip: IpAddr = "192.0.2.1".parse().expect("test address");
        let limits = AddressLimits::new(2, 3);
        assert_eq!(limits.admit(ip, 0), Ok(()));
        assert_eq!(limits.admit(ip, 0), Ok(()));
        assert_eq!(limits.admit(ip, 0), Err(Event::AddressConnections));
        limits.release(ip);
        assert_eq!(limits.admit(ip, 0), Ok(()));
        limits.release(ip);
        // Three upgrades used in the same instant: the bucket is empty.
        assert_eq!(limits.admit(ip, 0), Err(Event::AddressUpgradeRate));
        assert_eq!(limits.admit(ip, 1000), Ok(()));
    }

    #[test]
    fn ipv6_addresses_are_counted_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("test address");
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(address_key(ip("192.0.2.7")), ip("192.0.2.7"));

        let limits = AddressLimits::new(2, 0);
        assert_eq!(limits.admit(ip("2001:db8:1:2::1"), 0), Ok(()));
        assert_eq!(limits.admit(ip("2001:db8:1:2:ffff::9"), 0), Ok(()));
        // A third address of the same /64 is the same client.
        assert_eq!(
            limits.admit(ip("2001:db8:1:2:1234::"), 0),
            Err(Event::AddressConnections)
        );
        // Another /64 is another client.
        assert_eq!(limits.admit(ip("2001:db8:1:3::1"), 0), Ok(()));
        // Releasing any address of the /64 gives its place back.
        limits.release(ip("2001:db8:1:2::77"));
        assert_eq!(limits.open_from(ip("2001:db8:1:2::1")), 1);
        assert_eq!(limits.admit(ip("2001:db8:1:2:1234::"), 0), Ok(()));
    }

    #[test]
    fn an_upgrade_takes_over_its_connections_place() {
        let ip: IpAddr = "192.0.2.9".parse().expect("test address");
        let limits = AddressLimits::new(2, 0);
        let a = limits
            .admit_connection(ip, 0)
            .expect("first")
            .expect("a place");
        let b = limits
            .admit_connection(ip, 0)
            .expect("second")
            .expect("a place");
        assert_eq!(
            limits.admit_connection(ip, 0).err(),
            Some(Event::AddressConnections)
        );
        // Upgrading `a` does not count it again, though the address is full.
        assert_eq!(limits.admit_upgrade(ip, 0, Some(&a)), Ok(()));
        assert_eq!(limits.open_from(ip), 2);
        // `a`'s HTTP side ends: the WebSocket owns the count now.
        limits.release_place(&a);
        assert_eq!(limits.open_from(ip), 2);
        // The WebSocket ends; then `b` ends, and gives back once however often asked.
        limits.release(ip);
        limits.release_place(&b);
        limits.release_place(&b);
        assert_eq!(limits.open_from(ip), 0);
        // No limit: nothing is counted.
        let open = AddressLimits::new(0, 0);
        assert!(open.admit_connection(ip, 0).expect("no limit").is_none());
    }
}
