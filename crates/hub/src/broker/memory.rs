//! The in-process broker: one node, nothing to install.
//!
//! # Memory budget
//!
//! [`MemoryLimits`] caps what the broker keeps (see docs/security.md, "Memory budget"):
//!
//! - **Channels held** (`max_channels`). Creating one more (the first publish or subscribe on
//!   a name the broker does not hold) first forgets the least recently used channel that
//!   nobody is subscribed to and that has no presence: its history goes, and its next use
//!   starts a new epoch, so a client recovering it gets `recovered: false`. When every held
//!   channel has subscribers or presence, the creation is refused
//!   ([`BrokerError::OverCapacity`]).
//! - **Retained history bytes**, node-wide (`max_history_bytes`) and per namespace
//!   (`namespace_history_bytes`). A publication that does not fit first drops the whole
//!   history of the least recently used channels (of its namespace, for the namespace cap)
//!   until it fits; a channel left with nothing to keep is forgotten (new epoch). Dropping
//!   history from the front keeps what remains contiguous, so `complete` stays honest: a
//!   client asking for offsets that are gone gets `recovered: false`. Refused only when the
//!   bytes are all held by publications still being stored.
//!
//! Bytes are reserved before a publication is stored, so the accounting never exceeds its
//! caps, even while publications race.
//!
//! Reads (`history`, `presence`, `unsubscribe`, `presence_remove`) never create a channel:
//! for a name the broker does not hold they answer as for an empty channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::value::RawValue;

use super::{
    Broker, BrokerError, Delivery, DeliverySink, History, HistoryQuery, PresenceEntry, Publication,
    Retention, StreamPosition,
};
use crate::metrics::Metrics;

/// How often idle channels are looked for and forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Bytes one history entry costs besides its data and publisher id: the queue slot (instant
/// and publication), the two `Arc` headers and allocator rounding.
pub(crate) const ENTRY_OVERHEAD: usize = 96;

/// What one retained publication counts against the history byte caps.
fn entry_cost(data: &RawValue, from: Option<&str>, key: Option<&str>) -> usize {
    data.get()
        .len()
        .saturating_add(from.map_or(0, str::len))
        .saturating_add(key.map_or(0, str::len))
        .saturating_add(ENTRY_OVERHEAD)
}

/// The namespace of a channel name: the part before the first `:`, `""` without one.
fn namespace_of(channel: &str) -> &str {
    channel.split_once(':').map_or("", |(ns, _)| ns)
}

/// The memory caps of a [`MemoryBroker`]; 0 means no cap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryLimits {
    /// Channels held at once.
    pub max_channels: usize,
    /// Retained history bytes on this node.
    pub max_history_bytes: usize,
    /// Retained history bytes per namespace (`""` is the default namespace); namespaces not
    /// listed have only the node-wide cap.
    pub namespace_history_bytes: HashMap<String, usize>,
}

impl MemoryLimits {
    /// Caps on channels and node-wide history bytes (0: none), no namespace caps.
    pub fn new(max_channels: usize, max_history_bytes: usize) -> Self {
        Self {
            max_channels,
            max_history_bytes,
            namespace_history_bytes: HashMap::new(),
        }
    }
}

/// Channels, offsets, history and presence in this process's memory.
///
/// Each channel has its own lock; a publication is delivered to the [`DeliverySink`] while
/// that lock is held, which is what makes deliveries of one channel arrive in offset order.
/// A channel is forgotten once it has no interest from the node, no presence and no history
/// left within its TTL, or when the memory budget evicts it; its next use starts a new epoch.
/// Locks are taken in the order index, then channel, never the other way round.
pub struct MemoryBroker {
    index: Mutex<Index>,
    sink: Arc<dyn DeliverySink>,
    limits: MemoryLimits,
    /// Retained and reserved history bytes on this node.
    bytes: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("channels", &self.index.lock().channels.len())
            .field("history_bytes", &self.bytes.load(Ordering::Relaxed))
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The channel map, with each namespace's channels in least-recently-used order.
#[derive(Debug, Default)]
struct Index {
    channels: HashMap<Arc<str>, Slot>,
    namespaces: HashMap<Arc<str>, Namespace>,
    /// The next use stamp; stamps only grow, so a smaller one is an older use.
    clock: u64,
}

#[derive(Debug)]
struct Slot {
    state: Arc<Mutex<ChannelState>>,
    /// The stamp of its last publish or subscribe (its key in its namespace's `lru`).
    used: u64,
}

#[derive(Debug, Default)]
struct Namespace {
    /// Use stamp → channel name, oldest first.
    lru: BTreeMap<u64, Arc<str>>,
    /// Retained and reserved history bytes of this namespace.
    bytes: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct ChannelState {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<(Instant, Publication)>,
    /// The cost of `history` (see [`entry_cost`]).
    bytes: usize,
    /// The byte account of this channel's namespace.
    ns_bytes: Arc<AtomicUsize>,
    ttl: Duration,
    /// By client id, so joins and leaves stay O(log n) in crowded channels.
    presence: BTreeMap<Arc<str>, PresenceEntry>,
    interest: bool,
    /// Set when the channel was removed from the index; a caller that still holds the `Arc`
    /// must look the channel up again.
    forgotten: bool,
}

fn cost_of(p: &Publication) -> usize {
    entry_cost(&p.data, p.from.as_deref(), p.key.as_deref())
}

impl ChannelState {
    fn new(ns_bytes: Arc<AtomicUsize>) -> Self {
        Self {
            epoch: new_epoch(),
            offset: 0,
            history: VecDeque::new(),
            bytes: 0,
            ns_bytes,
            ttl: Duration::ZERO,
            presence: BTreeMap::new(),
            interest: false,
            forgotten: false,
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }

    /// Trims history to `retention` (when given) and the TTL; returns the bytes freed.
    fn prune(&mut self, now: Instant, retention: Option<Retention>) -> usize {
        let before = self.bytes;
        if let Some(r) = retention {
            self.ttl = r.ttl;
            while self.history.len() > r.size {
                self.pop_front();
            }
        }
        while let Some((at, _)) = self.history.front() {
            if now.saturating_duration_since(*at) >= self.ttl {
                self.pop_front();
            } else {
                break;
            }
        }
        before.saturating_sub(self.bytes)
    }

    fn pop_front(&mut self) {
        if let Some((_, p)) = self.history.pop_front() {
            self.bytes = self.bytes.saturating_sub(cost_of(&p));
        }
    }

    /// Drops all history; returns the bytes freed.
    fn clear_history(&mut self) -> usize {
        self.history.clear();
        std::mem::take(&mut self.bytes)
    }

    fn idle(&self) -> bool {
        !self.interest && self.presence.is_empty() && self.history.is_empty()
    }

    /// Whether the channel-count cap may forget it: nobody subscribed, nobody present.
    fn evictable(&self) -> bool {
        !self.interest && self.presence.is_empty()
    }
}

fn new_epoch() -> Arc<str> {
    format!("{:016x}", rand::random::<u64>()).into()
}

/// Adds `n` to `account` unless that passes `cap` (0: no cap).
fn try_add(account: &AtomicUsize, n: usize, cap: usize) -> bool {
    account
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            cur.checked_add(n).filter(|&v| cap == 0 || v <= cap)
        })
        .is_ok()
}

fn over_capacity(what: String) -> BrokerError {
    BrokerError::OverCapacity(what)
}

/// Whether a lookup may create the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// A publish or subscribe: creates the channel if needed and marks it used.
    Write,
    /// A read or a removal: never creates; an absent channel is answered as an empty one.
    Read,
}

/// Which history byte cap an eviction makes room under.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    Node,
    Namespace(&'a str),
}

impl Index {
    /// The byte account of namespace `ns`.
    fn ns_bytes(&mut self, ns: &str) -> Arc<AtomicUsize> {
        if let Some(n) = self.namespaces.get(ns) {
            return n.bytes.clone();
        }
        self.namespaces.entry(ns.into()).or_default().bytes.clone()
    }

    fn insert(&mut self, name: &str, state: Arc<Mutex<ChannelState>>) {
        self.clock = self.clock.saturating_add(1);
        let used = self.clock;
        let name: Arc<str> = name.into();
        let ns = namespace_of(&name);
        if let Some(n) = self.namespaces.get_mut(ns) {
            n.lru.insert(used, name.clone());
        } else {
            let mut n = Namespace::default();
            n.lru.insert(used, name.clone());
            self.namespaces.insert(ns.into(), n);
        }
        self.channels.insert(name, Slot { state, used });
    }

    /// Marks `name` as just used.
    fn touch(&mut self, name: &str) {
        let Some(slot) = self.channels.get_mut(name) else {
            return;
        };
        self.clock = self.clock.saturating_add(1);
        let old = std::mem::replace(&mut slot.used, self.clock);
        if let Some(ns) = self.namespaces.get_mut(namespace_of(name)) {
            if let Some(key) = ns.lru.remove(&old) {
                ns.lru.insert(self.clock, key);
            }
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(slot) = self.channels.remove(name) {
            if let Some(ns) = self.namespaces.get_mut(namespace_of(name)) {
                ns.lru.remove(&slot.used);
            }
        }
    }

    /// The least recently used channel in `scope`.
    fn oldest(&self, scope: Scope<'_>) -> Option<(Arc<str>, Arc<Mutex<ChannelState>>)> {
        let name = match scope {
            Scope::Namespace(ns) => self.namespaces.get(ns)?.lru.first_key_value(),
            Scope::Node => self
                .namespaces
                .values()
                .filter_map(|ns| ns.lru.first_key_value())
                .min_by_key(|(used, _)| **used),
        }?
        .1
        .clone();
        let state = self.channels.get(&name)?.state.clone();
        Some((name, state))
    }
}

impl MemoryBroker {
    /// A broker without memory caps that delivers to `sink`. Spawns a sweeper task on the
    /// current tokio runtime (it ends when the broker is dropped), so call it from within one.
    pub fn new(sink: Arc<dyn DeliverySink>) -> Arc<Self> {
        Self::with_limits(sink, MemoryLimits::default(), Arc::new(Metrics::new()))
    }

    /// A broker that keeps within `limits`, counting in `metrics`.
    pub(crate) fn with_limits(
        sink: Arc<dyn DeliverySink>,
        limits: MemoryLimits,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let broker = Arc::new(Self {
            index: Mutex::new(Index::default()),
            sink,
            limits,
            bytes: AtomicUsize::new(0),
            metrics,
        });
        let weak = Arc::downgrade(&broker);
        tokio::spawn(sweep(weak));
        broker
    }

    /// Runs `f` on the channel's state under its lock. With [`Use::Write`] the channel is
    /// created if needed (within the channel cap) and marked used; with [`Use::Read`] an
    /// absent channel is answered from a throwaway empty state and nothing is stored.
    fn with_channel<R>(
        &self,
        channel: &str,
        how: Use,
        f: impl FnOnce(&mut ChannelState) -> R,
    ) -> Result<R, BrokerError> {
        loop {
            let state = {
                let mut index = self.index.lock();
                match index.channels.get(channel) {
                    Some(slot) => {
                        let state = slot.state.clone();
                        if how == Use::Write {
                            index.touch(channel);
                        }
                        Some(state)
                    }
                    None if how == Use::Read => None,
                    None => {
                        let cap = self.limits.max_channels;
                        if cap > 0 && index.channels.len() >= cap {
                            self.metrics.limit_hit("channels");
                            if !self.evict_channel(&mut index) {
                                return Err(over_capacity(format!(
                                    "this node holds its limit of {cap} channels, all in use"
                                )));
                            }
                        }
                        let ns_bytes = index.ns_bytes(namespace_of(channel));
                        let state = Arc::new(Mutex::new(ChannelState::new(ns_bytes)));
                        index.insert(channel, state.clone());
                        self.metrics.broker_channels.inc();
                        Some(state)
                    }
                }
            };
            match state {
                None => return Ok(f(&mut ChannelState::new(Arc::default()))),
                Some(state) => {
                    let mut guard = state.lock();
                    if !guard.forgotten {
                        return Ok(f(&mut guard));
                    }
                }
            }
        }
    }

    /// Gives `n` bytes back to the node's and a namespace's account.
    fn release(&self, ns_bytes: &AtomicUsize, n: usize) {
        if n == 0 {
            return;
        }
        ns_bytes.fetch_sub(n, Ordering::AcqRel);
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.metrics
            .history_bytes
            .dec_by(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Reserves `cost` bytes for one publication to namespace `ns`, evicting history as
    /// needed; returns the namespace's account on success.
    fn reserve(&self, ns: &str, cost: usize) -> Result<Arc<AtomicUsize>, BrokerError> {
        let ns_bytes = self.index.lock().ns_bytes(ns);
        let ns_cap = self
            .limits
            .namespace_history_bytes
            .get(ns)
            .copied()
            .unwrap_or(0);
        if !self.make_room(&ns_bytes, cost, ns_cap, Scope::Namespace(ns)) {
            self.metrics.limit_hit("namespace_history_bytes");
            return Err(over_capacity(format!(
                "namespace {ns:?} retains its limit of {ns_cap} history bytes"
            )));
        }
        let cap = self.limits.max_history_bytes;
        if !self.make_room(&self.bytes, cost, cap, Scope::Node) {
            ns_bytes.fetch_sub(cost, Ordering::AcqRel);
            self.metrics.limit_hit("history_bytes");
            return Err(over_capacity(format!(
                "this node retains its limit of {cap} history bytes"
            )));
        }
        self.metrics
            .history_bytes
            .inc_by(i64::try_from(cost).unwrap_or(i64::MAX));
        Ok(ns_bytes)
    }

    /// Adds `cost` to `account` within `cap`, dropping the history of the least recently
    /// used channels of `scope` until it fits. Gives up after a bounded number of rounds
    /// (only when publications racing with this one keep taking the room made).
    fn make_room(&self, account: &AtomicUsize, cost: usize, cap: usize, scope: Scope<'_>) -> bool {
        for _ in 0..1024 {
            if try_add(account, cost, cap) {
                return true;
            }
            if !self.evict_history(scope) {
                return false;
            }
        }
        false
    }

    /// Drops the history of the least recently used channel of `scope` that has any, and
    /// forgets that channel when nothing else keeps it. Returns whether anything was freed.
    fn evict_history(&self, scope: Scope<'_>) -> bool {
        let mut index = self.index.lock();
        // One pass over the channels at most: those in use without history are moved to the
        // back, so the next eviction does not look at them again.
        for _ in 0..index.channels.len() {
            let Some((name, state)) = index.oldest(scope) else {
                return false;
            };
            let mut s = state.lock();
            if !s.history.is_empty() {
                let freed = s.clear_history();
                self.release(&s.ns_bytes, freed);
                self.metrics.limit_hit(match scope {
                    Scope::Node => "history_bytes",
                    Scope::Namespace(_) => "namespace_history_bytes",
                });
                if s.idle() {
                    s.forgotten = true;
                    drop(s);
                    index.remove(&name);
                    self.metrics.broker_channels.dec();
                }
                return true;
            }
            if s.idle() {
                s.forgotten = true;
                drop(s);
                index.remove(&name);
                self.metrics.broker_channels.dec();
            } else {
                drop(s);
                index.touch(&name);
            }
        }
        false
    }

    /// Forgets the least recently used channel without subscribers or presence (its
    /// history goes with it; its next use starts a new epoch). Returns whether one was found.
    fn evict_channel(&self, index: &mut Index) -> bool {
        for _ in 0..index.channels.len() {
            let Some((name, state)) = index.oldest(Scope::Node) else {
                return false;
            };
            let mut s = state.lock();
            if s.evictable() {
                let freed = s.clear_history();
                self.release(&s.ns_bytes, freed);
                s.forgotten = true;
                drop(s);
                index.remove(&name);
                self.metrics.broker_channels.dec();
                return true;
            }
            drop(s);
            index.touch(&name);
        }
        false
    }

    /// Forgets channels with nothing left worth keeping. Returns how many remain.
    fn sweep_once(&self) -> usize {
        let now = Instant::now();
        let mut index = self.index.lock();
        let mut gone = Vec::new();
        for (name, slot) in &index.channels {
            let mut s = slot.state.lock();
            let freed = s.prune(now, None);
            self.release(&s.ns_bytes, freed);
            if s.idle() {
                s.forgotten = true;
                gone.push(name.clone());
            }
        }
        for name in gone {
            index.remove(&name);
            self.metrics.broker_channels.dec();
        }
        index.channels.len()
    }

    /// Channels currently held (for tests and stats).
    pub fn channel_count(&self) -> usize {
        self.index.lock().channels.len()
    }

    /// Retained (and reserved) history bytes, as counted against the caps.
    pub fn history_bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

async fn sweep(broker: Weak<MemoryBroker>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        broker.sweep_once();
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        channel: &str,
        data: Arc<RawValue>,
        from: Option<Arc<str>>,
        key: Option<Arc<str>>,
        retention: Retention,
    ) -> Result<StreamPosition, BrokerError> {
        let retain = retention.size > 0;
        let cost = entry_cost(&data, from.as_deref(), key.as_deref());
        let reserved = if retain {
            Some(self.reserve(namespace_of(channel), cost)?)
        } else {
            None
        };
        let channel_arc: Arc<str> = channel.into();
        let result = self.with_channel(channel, Use::Write, |s| {
            s.offset = s.offset.saturating_add(1);
            let publication = Publication {
                offset: s.offset,
                data,
                from,
                key,
            };
            let now = Instant::now();
            if retain {
                // Already counted by the reservation.
                s.history.push_back((now, publication.clone()));
                s.bytes = s.bytes.saturating_add(cost);
            }
            let freed = s.prune(now, Some(retention));
            self.release(&s.ns_bytes, freed);
            if s.interest {
                self.sink.deliver(Delivery::Publication {
                    channel: channel_arc,
                    publication,
                });
            }
            s.position()
        });
        if let (Err(_), Some(ns_bytes)) = (&result, &reserved) {
            self.release(ns_bytes, cost);
        }
        result
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.with_channel(channel, Use::Write, |s| s.interest = true)
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.with_channel(channel, Use::Read, |s| s.interest = false)
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        retention: Retention,
    ) -> Result<History, BrokerError> {
        self.with_channel(channel, Use::Read, |s| {
            let freed = s.prune(Instant::now(), Some(retention));
            self.release(&s.ns_bytes, freed);
            let position = s.position();
            let first = s.history.front().map(|(_, p)| p.offset);
            let (publications, complete) = match query.since {
                Some(since) => {
                    let complete = since == s.offset
                        || (since < s.offset
                            && first.is_some_and(|f| f <= since.saturating_add(1)));
                    let pubs: Vec<Publication> = s
                        .history
                        .iter()
                        .filter(|(_, p)| p.offset > since)
                        .take(query.limit.unwrap_or(usize::MAX))
                        .map(|(_, p)| p.clone())
                        .collect();
                    (pubs, complete)
                }
                None => {
                    let n = query.limit.unwrap_or(usize::MAX).min(s.history.len());
                    let skip = s.history.len() - n;
                    let pubs = s
                        .history
                        .iter()
                        .skip(skip)
                        .map(|(_, p)| p.clone())
                        .collect();
                    (pubs, true)
                }
            };
            History {
                position,
                publications,
                complete,
            }
        })
    }

    async fn presence_add(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError> {
        let channel_arc: Arc<str> = channel.into();
        self.with_channel(channel, Use::Write, |s| {
            s.presence.insert(entry.client.clone(), entry.clone());
            if announce && s.interest {
                self.sink.deliver(Delivery::Join {
                    channel: channel_arc,
                    entry,
                });
            }
        })
    }

    async fn presence_remove(
        &self,
        channel: &str,
        client: &str,
        announce: bool,
    ) -> Result<(), BrokerError> {
        let channel_arc: Arc<str> = channel.into();
        self.with_channel(channel, Use::Read, |s| {
            if let Some(entry) = s.presence.remove(client) {
                if announce && s.interest {
                    self.sink.deliver(Delivery::Leave {
                        channel: channel_arc,
                        entry,
                    });
                }
            }
        })
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.with_channel(channel, Use::Read, |s| {
            s.presence.values().cloned().collect()
        })
    }

    fn holds(&self, channel: &str) -> Option<bool> {
        Some(self.index.lock().channels.contains_key(channel))
    }
}

#[cfg(test)]
mod tests;
