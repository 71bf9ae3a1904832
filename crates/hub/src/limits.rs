//! Connection limits: total, per client address and per authenticated user.
//!
//! [`crate::Server`] takes a [`ConnectionPermit`] for every TCP connection when it accepts
//! it, before a byte of the request is read, so unfinished HTTP requests count as well as
//! WebSockets. When a request upgrades, the permit moves to the WebSocket task: one
//! connection holds one slot, whatever it speaks. An application that serves
//! [`crate::Hub::router`] itself has no accept-time permit; the upgrade takes one then.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::broker::Broker;

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitError {
    /// `limits.max_connections`.
    Total,
    /// `limits.max_connections_per_ip`.
    PerIp,
    /// `limits.max_connections_per_user`.
    PerUser,
}

impl LimitError {
    /// The `limit` label of `duplex_limit_hits_total`.
    pub(crate) fn metric(self) -> &'static str {
        match self {
            Self::Total => "connections_total",
            Self::PerIp => "connections_per_ip",
            Self::PerUser => "connections_per_user",
        }
    }
}

/// The address a per-IP limit counts: IPv4 addresses as they are (an IPv4-mapped IPv6
/// address `::ffff:a.b.c.d` as `a.b.c.d`), IPv6 addresses by their first `prefix` bits,
/// since one subscriber usually holds a whole /64 (RFC 6177) and could otherwise open
/// `max_connections_per_ip` connections from each of its 2^64 addresses.
pub(crate) fn ip_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    websockets: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// WebSockets per user; an entry exists only while its count is above zero, so the map
    /// is bounded by the open connections.
    per_user: HashMap<Arc<str>, usize>,
}

impl Counts {
    fn release_user(&mut self, user: &str) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }

    fn release_ip(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// Counts open connections; a [`ConnectionPermit`] gives its slot back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    counts: Mutex<Counts>,
    max: usize,
    max_per_ip: usize,
    max_per_user: usize,
    ipv6_prefix: u8,
}

/// One open connection's slot.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    /// The key counted against the per-IP limit; `None` while only the total counts it
    /// (a trusted proxy's connection before its request names the client).
    ip: Option<IpAddr>,
    /// The user counted against the per-user limit, once the token is verified.
    user: Option<Arc<str>>,
    websocket: bool,
    /// The connection's count in the shared broker, taken back when the permit drops.
    cluster: Option<ClusterUserSlot>,
}

/// One WebSocket of a user counted in the shared broker under this node's incarnation (for
/// the cluster-wide `limits.max_connections_per_user`). Dropping it takes the count back in
/// a task of its own, bounded by the broker's command timeout: a drop never waits for the
/// broker, and a count that could not be taken back stops counting once this incarnation
/// stops heartbeating.
#[derive(Debug)]
pub(crate) struct ClusterUserSlot {
    broker: Arc<dyn Broker>,
    user: Arc<str>,
    incarnation: Arc<str>,
}

impl ClusterUserSlot {
    /// A count the broker holds already.
    pub(crate) fn new(broker: Arc<dyn Broker>, user: Arc<str>, incarnation: Arc<str>) -> Self {
        Self {
            broker,
            user,
            incarnation,
        }
    }
}

impl Drop for ClusterUserSlot {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (broker, user, incarnation) = (
            self.broker.clone(),
            self.user.clone(),
            self.incarnation.clone(),
        );
        runtime.spawn(async move {
            if let Err(e) = broker.user_connection_closed(&user, &incarnation).await {
                tracing::debug!(error = %e, "a user's connection count could not be taken back");
            }
        });
    }
}

/// A user's open WebSockets on every live node: the counts of `fields` (node incarnation →
/// count, as the broker holds them) whose incarnation is this node's (`own`) or one heard
/// from in the last heartbeats (`live`). Fields of crashed or restarted nodes are ignored,
/// and so are negative counts.
pub(crate) fn live_user_count(fields: &[(String, i64)], own: &str, live: &HashSet<String>) -> u64 {
    fields
        .iter()
        .filter(|(field, _)| field == own || live.contains(field))
        .map(|(_, n)| u64::try_from(*n).unwrap_or(0))
        .fold(0, u64::saturating_add)
}

impl ConnectionLimits {
    /// `max_per_ip == 0` means no per-IP limit.
    pub(crate) fn new(max: usize, max_per_ip: usize, ipv6_prefix: u8) -> Self {
        Self {
            counts: Mutex::new(Counts::default()),
            max,
            max_per_ip,
            max_per_user: 0,
            ipv6_prefix,
        }
    }

    /// At most `max` WebSockets per user (0: no limit).
    pub(crate) fn with_max_per_user(mut self, max: usize) -> Self {
        self.max_per_user = max;
        self
    }

    /// Takes a slot for a connection from `ip` (normalised with [`ip_key`]); with `None`,
    /// only the total limit applies until [`ConnectionPermit::assign_ip`].
    pub(crate) fn acquire(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
    ) -> Result<ConnectionPermit, LimitError> {
        let key = ip.map(|ip| ip_key(ip, self.ipv6_prefix));
        let mut c = self.counts.lock();
        if c.total >= self.max {
            return Err(LimitError::Total);
        }
        if let Some(key) = key {
            self.take_ip(&mut c, key)?;
        }
        c.total += 1;
        Ok(ConnectionPermit {
            limits: self.clone(),
            ip: key,
            user: None,
            websocket: false,
            cluster: None,
        })
    }

    fn take_ip(&self, c: &mut Counts, key: IpAddr) -> Result<(), LimitError> {
        let n = c.per_ip.entry(key).or_insert(0);
        if self.max_per_ip > 0 && *n >= self.max_per_ip {
            if *n == 0 {
                c.per_ip.remove(&key);
            }
            return Err(LimitError::PerIp);
        }
        *n += 1;
        Ok(())
    }

    /// Open WebSocket connections.
    pub(crate) fn open(&self) -> usize {
        self.counts.lock().websockets
    }

    /// Open connections of any kind (HTTP requests included).
    pub(crate) fn open_total(&self) -> usize {
        self.counts.lock().total
    }
}

impl ConnectionPermit {
    /// Counts the connection against `ip` (normalised with [`ip_key`]) instead of the key
    /// it was taken with: a trusted proxy's connection once `X-Forwarded-For` names the
    /// client. On [`LimitError::PerIp`] the permit is unchanged.
    pub(crate) fn assign_ip(&mut self, ip: IpAddr) -> Result<(), LimitError> {
        let key = ip_key(ip, self.limits.ipv6_prefix);
        if self.ip == Some(key) {
            return Ok(());
        }
        let mut c = self.limits.counts.lock();
        self.limits.take_ip(&mut c, key)?;
        if let Some(old) = self.ip.replace(key) {
            c.release_ip(old);
        }
        Ok(())
    }

    /// Counts the connection against `user`'s limit; on [`LimitError::PerUser`] the permit
    /// is unchanged. A permit counts at most one user.
    pub(crate) fn assign_user(&mut self, user: &Arc<str>) -> Result<(), LimitError> {
        if self.user.is_some() {
            return Ok(());
        }
        let mut c = self.limits.counts.lock();
        let max = self.limits.max_per_user;
        let n = c.per_user.get(&**user).copied().unwrap_or(0);
        if max > 0 && n >= max {
            return Err(LimitError::PerUser);
        }
        c.per_user.insert(user.clone(), n.saturating_add(1));
        drop(c);
        self.user = Some(user.clone());
        Ok(())
    }

    /// Stops counting the connection against its user (the cluster-wide count refused it);
    /// the permit is as before [`ConnectionPermit::assign_user`].
    pub(crate) fn unassign_user(&mut self) {
        if let Some(user) = self.user.take() {
            self.limits.counts.lock().release_user(&user);
        }
        self.cluster = None;
    }

    /// Holds the connection's count in the shared broker until the permit drops.
    pub(crate) fn hold_cluster_slot(&mut self, slot: ClusterUserSlot) {
        self.cluster = Some(slot);
    }

    /// Marks the connection as an open WebSocket (what [`ConnectionLimits::open`] and the
    /// shutdown drain count).
    pub(crate) fn set_websocket(&mut self) {
        if !self.websocket {
            self.websocket = true;
            self.limits.counts.lock().websockets += 1;
        }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock();
        c.total = c.total.saturating_sub(1);
        if self.websocket {
            c.websockets = c.websockets.saturating_sub(1);
        }
        if let Some(ip) = self.ip {
            c.release_ip(ip);
        }
        if let Some(user) = &self.user {
            c.release_user(user);
        }
    }
}

/// A request extension that carries the accept-time permit of the connection the request
/// came on. The upgrade takes it for the WebSocket; if no request upgrades, it is released
/// when the connection closes.
#[derive(Debug, Clone)]
pub(crate) struct PermitSlot(Arc<Mutex<Option<ConnectionPermit>>>);

impl PermitSlot {
    pub(crate) fn new(permit: ConnectionPermit) -> Self {
        Self(Arc::new(Mutex::new(Some(permit))))
    }

    /// The permit, unless an earlier request on the connection took it.
    pub(crate) fn take(&self) -> Option<ConnectionPermit> {
        self.0.lock().take()
    }

    /// Puts back a permit taken with [`PermitSlot::take`] (an upgrade that was refused).
    pub(crate) fn put_back(&self, permit: ConnectionPermit) {
        *self.0.lock() = Some(permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_and_release() {
        let l = Arc::new(ConnectionLimits::new(3, 2, 64));
        let a = ip("127.0.0.1");
        let b = ip("127.0.0.2");
        let p1 = l.acquire(Some(a)).unwrap();
        let _p2 = l.acquire(Some(a)).unwrap();
        assert_eq!(l.acquire(Some(a)).unwrap_err(), LimitError::PerIp);
        let _p3 = l.acquire(Some(b)).unwrap();
        assert_eq!(l.acquire(Some(b)).unwrap_err(), LimitError::Total);
        drop(p1);
        assert_eq!(l.open_total(), 2);
        assert_eq!(l.open(), 0, "no WebSocket yet");
        assert!(l.acquire(Some(a)).is_ok());
    }

    #[test]
    fn per_user_limit_counts_users_and_forgets_them_when_they_leave() {
        let l = Arc::new(ConnectionLimits::new(10, 0, 64).with_max_per_user(2));
        let ada: Arc<str> = "ada".into();
        let bob: Arc<str> = "bob".into();
        let mut p1 = l.acquire(Some(ip("127.0.0.1"))).unwrap();
        p1.assign_user(&ada).unwrap();
        p1.assign_user(&ada).unwrap(); // counted once
        let mut p2 = l.acquire(Some(ip("127.0.0.1"))).unwrap();
        p2.assign_user(&ada).unwrap();
        let mut p3 = l.acquire(Some(ip("127.0.0.1"))).unwrap();
        assert_eq!(p3.assign_user(&ada).unwrap_err(), LimitError::PerUser);
        p3.assign_user(&bob).unwrap();
        drop(p1);
        let mut p4 = l.acquire(Some(ip("127.0.0.1"))).unwrap();
        p4.assign_user(&ada).unwrap();
        p4.unassign_user();
        assert_eq!(p4.user, None);
        p4.assign_user(&ada).unwrap();
        drop((p2, p3, p4));
        assert!(l.counts.lock().per_user.is_empty());
    }

    #[test]
    fn only_live_incarnations_count_towards_a_user() {
        let fields = vec![
            ("a/1".to_owned(), 2),
            ("b/7".to_owned(), 1),
            ("b/6".to_owned(), 40), // b before its restart
            ("c/1".to_owned(), 5),  // not heard from
            ("d/1".to_owned(), -3),
            ("e/1".to_owned(), i64::MAX),
        ];
        let live: HashSet<String> = ["b/7", "d/1"].into_iter().map(String::from).collect();
        assert_eq!(live_user_count(&fields, "a/1", &live), 3);
        assert_eq!(live_user_count(&fields, "z/1", &HashSet::new()), 0);
        let all: HashSet<String> = ["a/1", "e/1", "b/7"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(
            live_user_count(&fields, "a/1", &all),
            u64::try_from(i64::MAX).unwrap() + 3
        );
    }

    #[test]
    fn websockets_are_counted_apart() {
        let l = Arc::new(ConnectionLimits::new(3, 0, 64));
        let mut p = l.acquire(Some(ip("127.0.0.1"))).unwrap();
        let _http = l.acquire(Some(ip("127.0.0.1"))).unwrap();
        p.set_websocket();
        p.set_websocket();
        assert_eq!((l.open(), l.open_total()), (1, 2));
        drop(p);
        assert_eq!((l.open(), l.open_total()), (0, 1));
    }

    #[test]
    fn a_proxy_connection_is_rekeyed_to_its_client() {
        let l = Arc::new(ConnectionLimits::new(10, 1, 64));
        let client = ip("10.0.0.7");
        let _direct = l.acquire(Some(client)).unwrap();
        let mut via_proxy = l.acquire(None).unwrap();
        assert_eq!(via_proxy.assign_ip(client).unwrap_err(), LimitError::PerIp);
        assert_eq!(via_proxy.ip, None, "unchanged after a refusal");
        via_proxy.assign_ip(ip("10.0.0.8")).unwrap();
        assert_eq!(
            l.acquire(Some(ip("10.0.0.8"))).unwrap_err(),
            LimitError::PerIp
        );
        drop(via_proxy);
        assert!(l.acquire(Some(ip("10.0.0.8"))).is_ok());
        assert!(l.counts.lock().per_ip.len() <= 2, "no leftover keys");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        assert_eq!(ip_key(ip("::ffff:192.0.2.1"), 64), ip("192.0.2.1"));
        assert_eq!(ip_key(ip("192.0.2.1"), 64), ip("192.0.2.1"));
        let l = Arc::new(ConnectionLimits::new(10, 1, 64));
        let _p = l.acquire(Some(ip("192.0.2.1"))).unwrap();
        assert_eq!(
            l.acquire(Some(ip("::ffff:192.0.2.1"))).unwrap_err(),
            LimitError::PerIp
        );
    }

    #[test]
    fn ipv6_addresses_count_by_prefix() {
        assert_eq!(
            ip_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            ip_key(ip("2001:db8:1:2:aaaa::1"), 48),
            ip("2001:db8:1::"),
            "a shorter prefix"
        );
        assert_eq!(ip_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(ip_key(ip("2001:db8::1"), 0), ip("::"), "/0: one key");
        assert_eq!(ip_key(ip("2001:db8::1"), 200), ip("2001:db8::1"), "clamped");
        assert_eq!(ip_key(ip("::1"), 64), ip("::"), "loopback is in ::/64");
        let l = Arc::new(ConnectionLimits::new(10, 1, 64));
        let _p = l.acquire(Some(ip("2001:db8:0:1::1"))).unwrap();
        assert_eq!(
            l.acquire(Some(ip("2001:db8:0:1::2"))).unwrap_err(),
            LimitError::PerIp,
            "same /64"
        );
        assert!(
            l.acquire(Some(ip("2001:db8:0:2::1"))).is_ok(),
            "another /64"
        );
    }
}
