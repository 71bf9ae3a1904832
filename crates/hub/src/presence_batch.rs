//! Join/leave coalescing: one `presence_diff` frame per subscriber per interval.
//!
//! Sent one by one, join and leave events cost a frame to every subscriber per change: a
//! room of N filling up costs N²/2 frames, and one client that subscribes and unsubscribes
//! in a loop makes the node send N frames per command. Instead the node collects a channel's
//! changes for `join_leave_interval` (a namespace setting) and then sends one frame to every
//! local subscriber listing all of them, so a channel's presence traffic is at most one frame
//! per subscriber per interval, however many changes there were.
//!
//! Within one interval the last change of a client wins: join then leave is sent as just
//! the leave, leave then join (a resubscription, say with a new `info`) as just the join.
//! Dropping a join-then-leave pair altogether would save one entry but leave a ghost in the
//! roster of any client whose `presence` reply was taken between the two; a leave of a
//! client the roster does not hold is harmless. Above `join_leave_max_entries` changes (or a
//! frame of more than an eighth of the outbound queue) only the counts are sent.
//!
//! This runs in the node's delivery sink, after the broker, so the memory broker and the
//! Redis broker (whose joins and leaves arrive from other nodes over pub/sub) are treated
//! alike.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::broker::PresenceEntry;
use crate::channel;
use crate::config::Config;
use crate::frame::Frame;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::protocol;

/// A namespace's join/leave settings.
#[derive(Debug, Clone, Copy)]
struct Settings {
    interval: Duration,
    max_entries: usize,
}

/// One client's net change within the interval: `entry` is `None` once the batch holds
/// more clients than can be listed.
#[derive(Debug)]
struct Change {
    join: bool,
    entry: Option<PresenceEntry>,
}

/// A channel's changes collected since its last flush.
#[derive(Debug, Default)]
struct Batch {
    /// Client id → position in `changes`.
    index: HashMap<Arc<str>, usize>,
    /// In order of each client's first change.
    changes: Vec<Change>,
    /// More than `max_entries` clients changed: only counts will be sent, entries are gone.
    counts_only: bool,
}

impl Batch {
    fn add(&mut self, join: bool, entry: PresenceEntry, max_entries: usize) {
        if let Some(&i) = self.index.get(&entry.client) {
            // The last change wins (see the module comment).
            let keep = !self.counts_only;
            if let Some(change) = self.changes.get_mut(i) {
                change.join = join;
                change.entry = keep.then_some(entry);
            }
            return;
        }
        self.index.insert(entry.client.clone(), self.changes.len());
        let keep = !self.counts_only;
        self.changes.push(Change {
            join,
            entry: keep.then_some(entry),
        });
        if !self.counts_only && self.changes.len() > max_entries {
            // Entries will not be listed: keep only what the counts need.
            self.counts_only = true;
            for change in &mut self.changes {
                change.entry = None;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

#[derive(Debug)]
struct Inner {
    /// By namespace name (`""` is the default namespace).
    namespaces: HashMap<String, Settings>,
    fallback: Settings,
    /// Channels with a flusher task running, and what it will send next.
    pending: Mutex<HashMap<Arc<str>, Batch>>,
    /// A listing frame larger than this is sent as counts only.
    max_frame: usize,
    metrics: Arc<Metrics>,
}

/// Collects joins and leaves per channel and fans each interval's batch out as one frame.
#[derive(Debug, Clone)]
pub(crate) struct PresenceBatcher {
    inner: Arc<Inner>,
}

impl PresenceBatcher {
    pub(crate) fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let settings = |ns: &crate::config::NamespaceConfig| Settings {
            interval: ns.join_leave_interval,
            max_entries: ns.join_leave_max_entries,
        };
        Self {
            inner: Arc::new(Inner {
                namespaces: config
                    .namespace_configs()
                    .iter()
                    .map(|(name, ns)| (name.clone(), settings(ns)))
                    .collect(),
                fallback: settings(&config.channels),
                pending: Mutex::new(HashMap::new()),
                max_frame: config.limits.max_queue_bytes / 8,
                metrics,
            }),
        }
    }

    /// Takes one join (`join`) or leave of `channel`. Called from the broker's delivery
    /// context: it never blocks beyond a short lock, and starts the channel's flusher task
    /// when none runs.
    pub(crate) fn add(
        &self,
        node: &Arc<Node>,
        max_held: usize,
        channel: Arc<str>,
        join: bool,
        entry: PresenceEntry,
    ) {
        let inner = &self.inner;
        let settings = inner
            .namespaces
            .get(channel::namespace_of(&channel))
            .copied()
            .unwrap_or(inner.fallback);
        let runtime = tokio::runtime::Handle::try_current();
        let (Ok(runtime), false) = (runtime, settings.interval.is_zero()) else {
            // No coalescing asked for (or no timer to run it): this change alone, now.
            let mut batch = Batch::default();
            batch.add(join, entry, settings.max_entries);
            inner.flush(node, max_held, &channel, batch);
            return;
        };
        let mut pending = inner.pending.lock();
        if let Some(batch) = pending.get_mut(&channel) {
            batch.add(join, entry, settings.max_entries);
            return;
        }
        let mut batch = Batch::default();
        batch.add(join, entry, settings.max_entries);
        pending.insert(channel.clone(), batch);
        drop(pending);
        let inner = inner.clone();
        let node = node.clone();
        runtime.spawn(async move {
            // One task per channel with changes, so a channel's frames leave in order. It
            // ends after an interval without changes.
            loop {
                tokio::time::sleep(settings.interval).await;
                let batch = {
                    let mut pending = inner.pending.lock();
                    match pending.get_mut(&channel) {
                        Some(batch) if !batch.is_empty() => std::mem::take(batch),
                        _ => {
                            pending.remove(&channel);
                            return;
                        }
                    }
                };
                inner.flush(&node, max_held, &channel, batch);
            }
        });
    }
}

impl Inner {
    fn flush(&self, node: &Node, max_held: usize, channel: &str, batch: Batch) {
        let joined = batch.changes.iter().filter(|c| c.join).count();
        let left = batch.changes.len() - joined;
        let mut text = None;
        if !batch.counts_only {
            let listed = |join: bool| -> Vec<&PresenceEntry> {
                batch
                    .changes
                    .iter()
                    .filter(|c| c.join == join)
                    .filter_map(|c| c.entry.as_ref())
                    .collect()
            };
            let (joins, leaves) = (listed(true), listed(false));
            let full = protocol::presence_diff(
                channel,
                joined,
                left,
                Some((joins.as_slice(), leaves.as_slice())),
            );
            if full.len() <= self.max_frame {
                text = Some(full);
            }
        }
        let text = text.unwrap_or_else(|| {
            self.metrics.limit_hit("join_leave_entries");
            protocol::presence_diff(channel, joined, left, None)
        });
        node.fan_out_presence(channel, Frame::text(text), max_held);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::value::RawValue;
    use serde_json::Value;

    use super::*;
    use crate::broker::{Broker, MemoryBroker};
    use crate::node::{GoLive, NodeSink, Peer};
    use crate::queue::{Next, Outbound};

    struct Room {
        broker: Arc<MemoryBroker>,
        node: Arc<Node>,
        metrics: Arc<Metrics>,
        batcher: PresenceBatcher,
    }

    fn room(interval_ms: u64, max_entries: usize) -> Room {
        let mut config = Config::default();
        config.channels.join_leave_interval = Duration::from_millis(interval_ms);
        config.channels.join_leave_max_entries = max_entries;
        let metrics = Arc::new(Metrics::new());
        let node = Arc::new(Node::new(metrics.clone()));
        let batcher = PresenceBatcher::new(&config, metrics.clone());
        let sink = Arc::new(NodeSink {
            node: node.clone(),
            max_held: 1 << 20,
            presence: batcher.clone(),
        });
        Room {
            broker: MemoryBroker::new(sink),
            node,
            metrics,
            batcher,
        }
    }

    fn entry(id: &str, info: Option<&str>) -> PresenceEntry {
        PresenceEntry {
            client: id.into(),
            user: None,
            info: info.map(|i| Arc::from(RawValue::from_string(i.to_owned()).unwrap())),
        }
    }

    impl Room {
        /// A live subscriber of `c` whose join is announced.
        async fn join(&self, id: &str) -> Arc<Peer> {
            let peer = Arc::new(Peer {
                id: id.into(),
                queue: Outbound::new(1 << 20),
            });
            self.node
                .add(&*self.broker, "c", &peer, crate::node::Policy::Disconnect)
                .await
                .unwrap();
            assert_eq!(self.node.go_live("c", &peer, 0), GoLive::Live);
            self.broker
                .presence_add("c", entry(id, None), true)
                .await
                .unwrap();
            peer
        }

        async fn leave(&self, peer: &Peer) {
            self.node.remove(&*self.broker, "c", peer).await;
            self.broker
                .presence_remove("c", &peer.id, true)
                .await
                .unwrap();
        }
    }

    fn frames(peer: &Peer) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(Next::Frame(f)) =
            futures_util::FutureExt::now_or_never(peer.queue.pop()).flatten()
        {
            out.push(serde_json::from_slice(f.prepared().payload()).unwrap());
        }
        out
    }

    /// Waits for the next flush: polls until `peer` has a frame.
    async fn next_frames(peer: &Peer) -> Vec<Value> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let got = frames(peer);
            if !got.is_empty() || Instant::now() > until {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn clients(v: &Value, list: &str) -> Vec<String> {
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["client"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn an_interval_of_joins_is_one_frame_per_subscriber() {
        let r = room(50, 100);
        let a = r.join("a").await;
        let b = r.join("b").await;
        let c = r.join("c").await;
        let got = next_frames(&a).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["type"], "presence_diff");
        assert_eq!(got[0]["channel"], "c");
        assert_eq!(
            (got[0]["joined"].as_u64(), got[0]["left"].as_u64()),
            (Some(3), Some(0))
        );
        assert_eq!(clients(&got[0], "joins"), ["a", "b", "c"]);
        assert_eq!(frames(&b), got);
        assert_eq!(frames(&c), got);
        // Quiet channel: the flusher ends and nothing more is sent.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(frames(&a).is_empty());
        assert!(r.batcher.inner.pending.lock().is_empty(), "flusher ended");
    }

    #[tokio::test]
    async fn within_an_interval_the_last_change_of_a_client_wins() {
        let r = room(50, 100);
        let keeper = r.join("keeper").await;
        assert_eq!(next_frames(&keeper).await.len(), 1);
        // Join then leave: only the leave (a roster that saw the join drops it again).
        let x = r.join("x").await;
        r.leave(&x).await;
        let got = next_frames(&keeper).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(clients(&got[0], "joins"), Vec::<String>::new());
        assert_eq!(clients(&got[0], "leaves"), ["x"]);
        assert_eq!(got[0]["joined"], 0);
        // Leave then join with new info: only the join, with the new info.
        let y = r.join("y").await;
        next_frames(&keeper).await;
        r.leave(&y).await;
        r.node
            .add(&*r.broker, "c", &y, crate::node::Policy::Disconnect)
            .await
            .unwrap();
        assert_eq!(r.node.go_live("c", &y, 0), GoLive::Live);
        r.broker
            .presence_add("c", entry("y", Some(r#"{"name":"Y"}"#)), true)
            .await
            .unwrap();
        let got = next_frames(&keeper).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(clients(&got[0], "joins"), ["y"]);
        assert_eq!(got[0]["joins"][0]["info"]["name"], "Y");
        assert_eq!(got[0]["left"], 0);
    }

    #[tokio::test]
    async fn above_max_entries_only_counts_are_sent() {
        let r = room(50, 3);
        let mut peers = Vec::new();
        for i in 0..5 {
            peers.push(r.join(&format!("p{i}")).await);
        }
        let got = next_frames(&peers[0]).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[0],
            serde_json::json!({"type":"presence_diff","channel":"c","joined":5,"left":0})
        );
        let hits = r.metrics.render();
        assert!(
            hits.contains(r#"duplex_limit_hits_total{limit="join_leave_entries"} 1"#),
            "{hits}"
        );
    }

    #[tokio::test]
    async fn a_zero_interval_sends_each_change_at_once() {
        let r = room(0, 100);
        let a = r.join("a").await;
        let b = r.join("b").await;
        assert_eq!(frames(&a).len(), 2);
        assert_eq!(clients(&frames(&b).remove(0), "joins"), ["b"]);
    }

    /// Frames pushed into subscriber queues while `N` clients join one channel one after
    /// another (`DUPLEX_MEASURE_JOINS`, default 10 000), with the default 200 ms interval.
    /// `cargo test -p duplex-hub --lib measure_room_fill -- --ignored --nocapture`
    #[tokio::test]
    #[ignore = "measurement"]
    async fn measure_room_fill() {
        let n: usize = std::env::var("DUPLEX_MEASURE_JOINS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let r = room(200, 100);
        let started = Instant::now();
        let mut peers: Vec<Arc<Peer>> = Vec::new();
        let mut total = 0usize;
        let drain = |peers: &[Arc<Peer>]| peers.iter().map(|p| frames(p).len()).sum::<usize>();
        for i in 0..n {
            peers.push(r.join(&format!("c{i}")).await);
            if i % 100 == 99 {
                total += drain(&peers);
                tokio::task::yield_now().await;
            }
        }
        let joined = started.elapsed();
        tokio::time::sleep(Duration::from_millis(450)).await;
        total += drain(&peers);
        println!(
            "{n} joins: {total} frames pushed; joins took {joined:.2?}, {:.2?} until the last flush",
            started.elapsed()
        );
    }
}
