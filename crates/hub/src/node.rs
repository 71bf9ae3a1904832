//! Node-local fan-out: which connections on this node are subscribed to which channel.
//!
//! The broker decides *what* is delivered and in which order; the node only turns each
//! delivery into one [`Frame`] and pushes a clone of it (a reference-counted pointer) into
//! the outbound queue of every local subscriber. A subscriber that has just subscribed is in
//! *recovery*: live deliveries are buffered for it until its subscribe reply and any replayed
//! history are queued, and then flushed without the offsets it already got; a delivery of
//! such an offset that arrives only after that (the broker's live stream lagging behind its
//! history read) is skipped too. That is what makes recovery gap-free and duplicate-free
//! however deliveries and the history read race.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

use crate::broker::{Broker, BrokerError, Delivery, DeliverySink};
use crate::config::{NamespaceConfig, SlowConsumerPolicy};
use crate::frame::Frame;
use crate::hooks::events::{Events, Kind};
use crate::metrics::Metrics;
use crate::presence_batch::PresenceBatcher;
use crate::protocol;
use crate::queue::{ConflateKey, Outbound, Pushed};

/// Close code sent when a channel's stream was reset (see [`Node::reset`]).
pub(crate) const STREAM_RESET: u16 = 1012;

/// The part of a connection that the fan-out sees.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Client id.
    pub(crate) id: Arc<str>,
    /// Outbound queue.
    pub(crate) queue: Outbound,
}

/// How a channel's publications enter a full queue: its namespace's slow-consumer policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Never dropped; an overflow closes the connection with 1013.
    Disconnect,
    /// Evicted oldest first.
    DropOldest,
    /// Conflated per key once the queue holds more than `watermark` bytes.
    Conflate {
        /// In bytes.
        watermark: usize,
    },
}

impl Policy {
    /// The policy of namespace `ns` for queues of `max_queue_bytes`.
    pub(crate) fn of(ns: &NamespaceConfig, max_queue_bytes: usize) -> Self {
        match ns.slow_consumer {
            SlowConsumerPolicy::DropOldest => Self::DropOldest,
            SlowConsumerPolicy::Conflate => {
                // The fraction is validated to lie in [0.01, 1]; the cast saturates.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let watermark = (max_queue_bytes as f64 * ns.conflate_watermark) as usize;
                Self::Conflate { watermark }
            }
            SlowConsumerPolicy::Disconnect => Self::Disconnect,
        }
    }
}

/// A delivery on its way to queues: the frame, its offset (`None` for join/leave events)
/// and, for publications, what it conflates by.
#[derive(Debug, Clone)]
struct Outgoing {
    offset: Option<u64>,
    frame: Frame,
    key: Option<ConflateKey>,
}

/// Deliveries held back from a recovering subscriber, and their byte total.
#[derive(Debug, Default)]
struct Held {
    frames: Vec<Outgoing>,
    bytes: usize,
}

/// What [`Node::go_live`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GoLive {
    /// The subscriber receives live deliveries now (or is gone).
    Live,
    /// Still recovering: wait for this many bytes of room in the queue, then call again.
    NeedRoom(usize),
}

#[derive(Debug)]
struct Subscriber {
    peer: Arc<Peer>,
    /// `Some` while recovering.
    held: Option<Held>,
    /// Once live: the offset the subscribe reply gave as the position. A networked broker
    /// reads history on one connection and delivers on another (Redis pub/sub), so a
    /// publication the history read already returned may reach the node only after the
    /// subscriber went live; it is at or below this offset and the client has it. Cleared
    /// by the first publication above it (deliveries of a channel come in offset order).
    floor: Option<u64>,
}

#[derive(Debug)]
struct LocalChannel {
    subscribers: Mutex<Vec<Subscriber>>,
    /// Serializes the broker interest changes of this channel, so that a subscribe and the
    /// last unsubscribe cannot reorder their `Broker::subscribe`/`unsubscribe` calls.
    interest: tokio::sync::Mutex<bool>,
    /// Set when this entry left the map; holders must look the channel up again.
    removed: AtomicBool,
    /// What full queues do with this channel's publications.
    policy: Policy,
}

/// The node-local channel → subscribers map.
#[derive(Debug)]
pub(crate) struct Node {
    channels: RwLock<HashMap<Arc<str>, Arc<LocalChannel>>>,
    metrics: Arc<Metrics>,
    /// Told when a channel gets its first local subscriber and loses its last.
    events: OnceLock<Arc<Events>>,
    /// Where publications on the internal control channel go (`api::cluster`).
    control: OnceLock<tokio::sync::mpsc::Sender<Arc<serde_json::value::RawValue>>>,
    /// Set once the broker delivers the control channel here.
    control_ready: AtomicBool,
}

impl Node {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            channels: RwLock::new(HashMap::new()),
            metrics,
            events: OnceLock::new(),
            control: OnceLock::new(),
            control_ready: AtomicBool::new(false),
        }
    }

    /// The control channel is delivered here from now on.
    pub(crate) fn set_control_ready(&self) {
        self.control_ready.store(true, Ordering::Release);
    }

    /// Whether a control task was started but does not receive yet (`/healthz` says so,
    /// so that a node is not sent traffic before it can follow the other nodes' commands).
    pub(crate) fn control_pending(&self) -> bool {
        self.control.get().is_some() && !self.control_ready.load(Ordering::Acquire)
    }

    /// Hands control-channel publications to `tx` from now on; `false` if already set.
    pub(crate) fn set_control(
        &self,
        tx: tokio::sync::mpsc::Sender<Arc<serde_json::value::RawValue>>,
    ) -> bool {
        self.control.set(tx).is_ok()
    }

    #[cfg(test)]
    pub(crate) fn control_for_test(&self, data: Arc<serde_json::value::RawValue>) {
        self.control(data);
    }

    /// A publication on the control channel: to the control task, never to connections
    /// (none can subscribe to it). A full backlog drops it, counted.
    fn control(&self, data: Arc<serde_json::value::RawValue>) {
        if let Some(tx) = self.control.get() {
            if tx.try_send(data).is_err() {
                self.metrics.limit_hit("control_backlog");
            }
        }
    }

    /// Sends `occupied` and `vacated` backend events from now on.
    pub(crate) fn set_events(&self, events: Arc<Events>) {
        let _ = self.events.set(events);
    }

    fn occupancy(&self, kind: Kind, channel: &str) {
        if let Some(events) = self.events.get() {
            events.emit(kind, None, None, Some(channel));
        }
    }

    fn get_or_create(&self, channel: &str, policy: Policy) -> Arc<LocalChannel> {
        if let Some(ch) = self.channels.read().get(channel) {
            return ch.clone();
        }
        let mut map = self.channels.write();
        map.entry(channel.into())
            .or_insert_with(|| {
                self.metrics.channels.inc();
                Arc::new(LocalChannel {
                    subscribers: Mutex::new(Vec::new()),
                    interest: tokio::sync::Mutex::new(false),
                    removed: AtomicBool::new(false),
                    policy,
                })
            })
            .clone()
    }

    /// Adds `peer` as a subscriber of `channel`, in recovery (deliveries held back until
    /// [`Node::go_live`]). Registers the node's interest with the broker when it is the first
    /// local subscriber.
    pub(crate) async fn add(
        &self,
        broker: &dyn Broker,
        channel: &str,
        peer: &Arc<Peer>,
        policy: Policy,
    ) -> Result<(), BrokerError> {
        loop {
            let ch = self.get_or_create(channel, policy);
            let mut interest = ch.interest.lock().await;
            if ch.removed.load(Ordering::Acquire) {
                continue;
            }
            if !*interest {
                if let Err(e) = broker.subscribe(channel).await {
                    drop(interest);
                    self.remove_if_empty(channel, &ch);
                    return Err(e);
                }
                *interest = true;
                self.occupancy(Kind::Occupied, channel);
            }
            ch.subscribers.lock().push(Subscriber {
                peer: peer.clone(),
                held: Some(Held::default()),
                floor: None,
            });
            self.metrics.subscriptions.inc();
            return Ok(());
        }
    }

    /// Ends `peer`'s recovery on `channel` once its reply and replayed history are queued:
    /// queues the held deliveries whose offset is above `after` (join/leave events always),
    /// oldest first, and from then on delivers live (still without a late delivery at or
    /// below `after`, see [`Subscriber::floor`]), all under the channel's lock so nothing
    /// interleaves. When the queue has no room for the next held frame, the ones before it
    /// are queued, the subscriber stays in recovery (new deliveries keep being held, bounded
    /// by `max_held`) and [`GoLive::NeedRoom`] says how much room to wait for before calling
    /// again, so that flushing never overflows the queue by itself.
    pub(crate) fn go_live(&self, channel: &str, peer: &Peer, after: u64) -> GoLive {
        let Some(ch) = self.channels.read().get(channel).cloned() else {
            return GoLive::Live;
        };
        let mut subs = ch.subscribers.lock();
        let Some(sub) = subs
            .iter_mut()
            .find(|s| std::ptr::eq(Arc::as_ptr(&s.peer), peer))
        else {
            return GoLive::Live;
        };
        let Some(held) = sub.held.as_mut() else {
            return GoLive::Live;
        };
        let mut flushed = 0;
        let mut need = None;
        for out in &held.frames {
            if out.offset.is_some_and(|o| o <= after) {
                // Already in the replay.
            } else if ch.policy != Policy::Disconnect && out.offset.is_some() {
                self.push(peer, out.clone(), ch.policy);
            } else {
                match peer.queue.try_push(out.frame.clone()) {
                    Ok(pushed) => self.count(peer, pushed),
                    Err(frame) => {
                        need = Some(frame.wire_len());
                        break;
                    }
                }
            }
            flushed += 1;
        }
        for out in held.frames.drain(..flushed) {
            held.bytes = held.bytes.saturating_sub(out.frame.wire_len());
        }
        match need {
            Some(bytes) => GoLive::NeedRoom(bytes),
            None => {
                sub.held = None;
                sub.floor = Some(after);
                GoLive::Live
            }
        }
    }

    /// Removes `peer` from `channel`; drops the node's broker interest when it was the last
    /// local subscriber. Returns whether it was subscribed.
    pub(crate) async fn remove(&self, broker: &dyn Broker, channel: &str, peer: &Peer) -> bool {
        let Some(ch) = self.channels.read().get(channel).cloned() else {
            return false;
        };
        let mut interest = ch.interest.lock().await;
        let (found, empty) = {
            let mut subs = ch.subscribers.lock();
            let before = subs.len();
            subs.retain(|s| !std::ptr::eq(Arc::as_ptr(&s.peer), peer));
            (subs.len() < before, subs.is_empty())
        };
        if found {
            self.metrics.subscriptions.dec();
        }
        if empty && *interest {
            if let Err(e) = broker.unsubscribe(channel).await {
                // The broker keeps delivering a channel nobody here wants; deliveries to an
                // empty channel cost one map lookup, and the next subscribe resets interest.
                tracing::warn!(channel, error = %e, "broker unsubscribe failed");
            }
            *interest = false;
            self.occupancy(Kind::Vacated, channel);
        }
        drop(interest);
        if empty {
            self.remove_if_empty(channel, &ch);
        }
        found
    }

    fn remove_if_empty(&self, channel: &str, ch: &Arc<LocalChannel>) {
        let mut map = self.channels.write();
        let same = map.get(channel).is_some_and(|c| Arc::ptr_eq(c, ch));
        if same && ch.subscribers.lock().is_empty() {
            // A subscriber that found this entry before it left the map waits on `interest`
            // and retries once it sees `removed`.
            if let Ok(interest) = ch.interest.try_lock() {
                if !*interest {
                    ch.removed.store(true, Ordering::Release);
                    map.remove(channel);
                    self.metrics.channels.dec();
                }
            }
        }
    }

    /// Channels with local subscribers and their subscriber counts, sorted by name.
    pub(crate) fn channel_counts(&self) -> Vec<(Arc<str>, usize)> {
        let mut all: Vec<_> = self
            .channels
            .read()
            .iter()
            .map(|(name, ch)| (name.clone(), ch.subscribers.lock().len()))
            .filter(|(_, n)| *n > 0)
            .collect();
        all.sort();
        all
    }

    /// Whether `channel` has local subscribers (or one joining) on this node.
    pub(crate) fn holds(&self, channel: &str) -> bool {
        self.channels.read().contains_key(channel)
    }

    /// Closes the connection of every local subscriber of `channel` with 1012 (RFC 6455
    /// §7.4.1 registry: "Service Restart"): the channel's stream cannot continue gap-free
    /// for them, and the protocol has no event for a new epoch, so they reconnect and
    /// resubscribe with `since`, which tells them whether anything could be recovered.
    /// What is already queued is sent first.
    fn reset(&self, channel: &str) {
        let Some(ch) = self.channels.read().get(channel).cloned() else {
            return;
        };
        let subs = ch.subscribers.lock();
        for sub in subs.iter() {
            sub.peer.queue.close(STREAM_RESET, "stream reset", false);
        }
        if !subs.is_empty() {
            tracing::info!(
                channel,
                subscribers = subs.len(),
                "stream reset: closing subscribers with 1012"
            );
        }
    }

    /// Queues a delivery by the channel's policy (join/leave events are never dropped or
    /// conflated).
    fn push(&self, peer: &Peer, out: Outgoing, policy: Policy) {
        let pushed = match (policy, out.key, out.offset) {
            (Policy::DropOldest, _, Some(_)) => peer.queue.push(out.frame, true),
            (Policy::Conflate { watermark }, Some(key), Some(_)) => {
                peer.queue.push_conflated(out.frame, key, watermark)
            }
            _ => peer.queue.push(out.frame, false),
        };
        self.count(peer, pushed);
    }

    /// Counts what a push did in the slow-consumer metrics.
    pub(crate) fn count(&self, peer: &Peer, pushed: Pushed) {
        match pushed {
            Pushed::Queued { dropped, conflated } => {
                if dropped > 0 {
                    self.metrics.slow_consumer_dropped(dropped as u64);
                }
                if conflated > 0 {
                    self.metrics.conflated(conflated as u64);
                }
            }
            Pushed::Closed => {}
            Pushed::Discarded => self.metrics.slow_consumer_dropped(1),
            Pushed::Overflow => {
                self.metrics.slow_consumer_disconnect();
                tracing::info!(client = %peer.id, "slow consumer closed with 1013");
            }
        }
    }

    /// Pushes `out` to every local subscriber of `channel`: a clone of one shared frame
    /// each (and of the key's two `Arc`s), never a copy of the payload.
    fn fan_out(&self, channel: &str, out: Outgoing, max_held: usize) {
        let Some(ch) = self.channels.read().get(channel).cloned() else {
            return;
        };
        let mut subs = ch.subscribers.lock();
        for sub in subs.iter_mut() {
            match &mut sub.held {
                None => {
                    if let (Some(floor), Some(offset)) = (sub.floor, out.offset) {
                        if offset <= floor {
                            // Already sent with the subscribe reply's replay or position.
                            continue;
                        }
                        sub.floor = None;
                    }
                    self.push(&sub.peer, out.clone(), ch.policy);
                }
                Some(_) if sub.peer.queue.is_closed() => {}
                Some(held) => {
                    held.bytes += out.frame.wire_len();
                    if held.bytes > max_held {
                        // Recovery is taking long enough for its buffer to pass the queue
                        // limit: the same slow-consumer rule applies.
                        held.frames.clear();
                        sub.peer
                            .queue
                            .close(crate::queue::TRY_AGAIN, "slow consumer", true);
                        self.metrics.slow_consumer_disconnect();
                    } else {
                        held.frames.push(out.clone());
                    }
                }
            }
        }
    }
}

impl Node {
    /// Fans a `presence_diff` frame (no offset, never dropped) out to `channel`'s local
    /// subscribers; recovering ones hold it until they go live.
    pub(crate) fn fan_out_presence(&self, channel: &str, frame: Frame, max_held: usize) {
        let out = Outgoing {
            offset: None,
            frame,
            key: None,
        };
        self.fan_out(channel, out, max_held);
    }
}

/// The node as the broker's delivery target.
#[derive(Debug)]
pub(crate) struct NodeSink {
    pub(crate) node: Arc<Node>,
    /// Recovery buffers are bounded like queues.
    pub(crate) max_held: usize,
    /// Joins and leaves are coalesced per channel (see `presence_batch`).
    pub(crate) presence: PresenceBatcher,
}

impl DeliverySink for NodeSink {
    fn deliver(&self, delivery: Delivery) {
        match delivery {
            Delivery::Publication {
                channel,
                publication,
            } if &*channel == crate::api::cluster::CONTROL_CHANNEL => {
                self.node.control(publication.data);
            }
            // Control messages are not a stream the node follows: a gap needs no reset.
            Delivery::Reset { channel } if &*channel == crate::api::cluster::CONTROL_CHANNEL => {}
            Delivery::Publication {
                channel,
                publication,
            } => {
                let out = Outgoing {
                    offset: Some(publication.offset),
                    frame: Frame::text(protocol::message(&channel, &publication)),
                    key: Some(ConflateKey {
                        channel: channel.clone(),
                        key: publication.key.clone(),
                    }),
                };
                self.node.fan_out(&channel, out, self.max_held);
            }
            Delivery::Join { channel, entry } => {
                self.presence
                    .add(&self.node, self.max_held, channel, true, entry);
            }
            Delivery::Leave { channel, entry } => {
                self.presence
                    .add(&self.node, self.max_held, channel, false, entry);
            }
            Delivery::Reset { channel } => self.node.reset(&channel),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::value::RawValue;

    use super::*;
    use crate::broker::{MemoryBroker, Retention};
    use crate::queue::Next;

    /// Long enough for every test's publications.
    const KEEP: Retention = Retention {
        size: 100,
        ttl: Duration::from_secs(60),
    };

    /// The node's sink, as the hub builds it.
    fn sink_of(node: &Arc<Node>, metrics: Arc<Metrics>) -> NodeSink {
        NodeSink {
            node: node.clone(),
            max_held: 1 << 20,
            presence: PresenceBatcher::new(&crate::Config::default(), metrics),
        }
    }

    /// A subscriber with an outbound queue of `max_bytes`.
    fn peer(max_bytes: usize) -> Arc<Peer> {
        Arc::new(Peer {
            id: "p".into(),
            queue: Outbound::new(max_bytes),
        })
    }

    /// Publishes `data` (JSON) on channel `c`.
    async fn publish(broker: &MemoryBroker, data: String) {
        let data = Arc::from(RawValue::from_string(data).unwrap());
        broker.publish("c", data, None, None, KEEP).await.unwrap();
    }

    fn offsets_and_texts(peer: &Peer) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Next::Frame(f)) =
            futures_util::FutureExt::now_or_never(peer.queue.pop()).flatten()
        {
            let text = String::from_utf8_lossy(f.prepared().payload()).into_owned();
            out.push(text);
        }
        out
    }

    /// Deliveries that arrive while a subscriber recovers are held, then flushed after the
    /// replay without the offsets the replay already had.
    #[tokio::test]
    async fn held_deliveries_are_deduplicated_against_the_replay() {
        let metrics = Arc::new(Metrics::new());
        let node = Arc::new(Node::new(metrics.clone()));
        let broker = MemoryBroker::new(Arc::new(sink_of(&node, metrics)));
        let peer = peer(1 << 20);
        let publish = |n: u64| publish(&broker, n.to_string());
        for n in 1..=3 {
            publish(n).await;
        }
        node.add(&*broker, "c", &peer, Policy::Disconnect)
            .await
            .unwrap();
        // Live publications 4 and 5 arrive during recovery and are held.
        publish(4).await;
        publish(5).await;
        assert!(
            offsets_and_texts(&peer).is_empty(),
            "nothing delivered while recovering"
        );
        // The replay read history up to 5: it has 3, 4, 5 (since = 2).
        for t in ["reply", "m3", "m4", "m5"] {
            peer.queue.push(Frame::text(t.to_owned()), false);
        }
        assert_eq!(node.go_live("c", &peer, 5), GoLive::Live);
        publish(6).await;
        let got = offsets_and_texts(&peer);
        assert_eq!(got[..4], ["reply", "m3", "m4", "m5"]);
        assert_eq!(got.len(), 5, "4 and 5 were not delivered twice: {got:?}");
        assert!(got[4].contains("\"offset\":6"));
        assert!(node.remove(&*broker, "c", &peer).await);
        assert!(node.channel_counts().is_empty());
    }

    /// A sink that keeps deliveries until told to pass them on, as a Redis pub/sub connection
    /// can hand a publication to the node after the node's own history read (on another
    /// connection) already returned it.
    struct Lagging {
        to: NodeSink,
        kept: parking_lot::Mutex<Vec<Delivery>>,
    }

    impl Lagging {
        fn release(&self) {
            let kept = std::mem::take(&mut *self.kept.lock());
            for d in kept {
                self.to.deliver(d);
            }
        }
    }

    impl DeliverySink for Lagging {
        fn deliver(&self, delivery: Delivery) {
            self.kept.lock().push(delivery);
        }
    }

    /// A publication that the history read of a subscribe already returned (so it is in the
    /// replay, at or below the reply's position) but whose live delivery reaches the node
    /// only after the subscriber went live is not queued a second time.
    #[tokio::test]
    async fn a_live_delivery_late_behind_the_history_read_is_not_sent_twice() {
        let metrics = Arc::new(Metrics::new());
        let node = Arc::new(Node::new(metrics.clone()));
        let sink = Arc::new(Lagging {
            to: sink_of(&node, metrics),
            kept: parking_lot::Mutex::new(Vec::new()),
        });
        let broker = MemoryBroker::new(sink.clone());
        let peer = peer(1 << 20);
        let publish = |n: u64| publish(&broker, n.to_string());
        for n in 1..=2 {
            publish(n).await;
        }
        sink.release();
        node.add(&*broker, "c", &peer, Policy::Disconnect)
            .await
            .unwrap();
        // 3 is stored; its live delivery is still on its way.
        publish(3).await;
        let query = crate::broker::HistoryQuery {
            since: Some(2),
            limit: Some(100),
        };
        let history = broker.history("c", query, KEEP).await.unwrap();
        assert_eq!(history.position.offset, 3);
        assert_eq!(history.publications.len(), 1, "the replay has 3");
        peer.queue.push(Frame::text("reply".to_owned()), false);
        for p in &history.publications {
            peer.queue
                .push(Frame::text(protocol::message("c", p)), false);
        }
        assert_eq!(node.go_live("c", &peer, 3), GoLive::Live);
        // Now the live delivery of 3 arrives, then 4.
        sink.release();
        publish(4).await;
        sink.release();
        let got = offsets_and_texts(&peer);
        assert_eq!(got[0], "reply");
        let offsets: Vec<u64> = got[1..]
            .iter()
            .map(|t| {
                let v: serde_json::Value = serde_json::from_str(t).unwrap();
                v["offset"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(offsets, [3, 4], "3 once, from the replay");
    }

    /// Held deliveries that do not fit the queue are flushed in parts as it drains; the
    /// subscriber stays in recovery meanwhile, and what arrives then is held behind them.
    #[tokio::test]
    async fn held_deliveries_are_flushed_as_the_queue_drains() {
        let metrics = Arc::new(Metrics::new());
        let node = Arc::new(Node::new(metrics.clone()));
        let broker = MemoryBroker::new(Arc::new(sink_of(&node, metrics.clone())));
        let peer = peer(4096);
        let publish = |n: u64| publish(&broker, format!("\"{n:0>1000}\""));
        node.add(&*broker, "c", &peer, Policy::Disconnect)
            .await
            .unwrap();
        for n in 1..=6 {
            publish(n).await;
        }
        // About 1 KiB each: three fit in the 4 KiB queue.
        let GoLive::NeedRoom(need) = node.go_live("c", &peer, 0) else {
            panic!("six frames cannot fit");
        };
        assert!(need > 1000);
        publish(7).await;
        let mut got = Vec::new();
        for _ in 0..10 {
            got.extend(offsets_and_texts(&peer));
            if node.go_live("c", &peer, 0) == GoLive::Live {
                break;
            }
        }
        publish(8).await;
        got.extend(offsets_and_texts(&peer));
        let offsets: Vec<u64> = got
            .iter()
            .map(|t| {
                let v: serde_json::Value = serde_json::from_str(t).unwrap();
                v["offset"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(offsets, (1..=8).collect::<Vec<_>>());
        assert_eq!(metrics.slow_consumer_disconnects(), 0);
    }
}
