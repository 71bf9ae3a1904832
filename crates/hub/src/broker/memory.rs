//! The in-process broker: one node, nothing to install.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::value::RawValue;

use super::{
    Broker, BrokerError, Delivery, DeliverySink, History, HistoryQuery, PresenceEntry, Publication,
    Retention, StreamPosition,
};

/// How often idle channels are looked for and forgotten.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Channels, offsets, history and presence in this process's memory.
///
/// Each channel has its own lock; a publication is delivered to the [`DeliverySink`] while
/// that lock is held, which is what makes deliveries of one channel arrive in offset order.
/// A channel is forgotten once it has no interest from the node, no presence and no history
/// left within its TTL; its next use starts a new epoch.
pub struct MemoryBroker {
    channels: Mutex<HashMap<Arc<str>, Arc<Mutex<ChannelState>>>>,
    sink: Arc<dyn DeliverySink>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("channels", &self.channels.lock().len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct ChannelState {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<(Instant, Publication)>,
    ttl: Duration,
    presence: Vec<PresenceEntry>,
    interest: bool,
    /// Set when the sweeper removed this state from the map; a caller that still holds the
    /// `Arc` must look the channel up again.
    forgotten: bool,
}

impl ChannelState {
    fn new() -> Self {
        Self {
            epoch: new_epoch(),
            offset: 0,
            history: VecDeque::new(),
            ttl: Duration::ZERO,
            presence: Vec::new(),
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

    fn prune(&mut self, now: Instant, retention: Option<Retention>) {
        if let Some(r) = retention {
            self.ttl = r.ttl;
            while self.history.len() > r.size {
                self.history.pop_front();
            }
        }
        while let Some((at, _)) = self.history.front() {
            if now.saturating_duration_since(*at) >= self.ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }

    fn idle(&self) -> bool {
        !self.interest && self.presence.is_empty() && self.history.is_empty()
    }
}

fn new_epoch() -> Arc<str> {
    format!("{:016x}", rand::random::<u64>()).into()
}

impl MemoryBroker {
    /// A broker that delivers to `sink`. Spawns a sweeper task on the current tokio runtime
    /// (it ends when the broker is dropped), so call it from within one.
    pub fn new(sink: Arc<dyn DeliverySink>) -> Arc<Self> {
        let broker = Arc::new(Self {
            channels: Mutex::new(HashMap::new()),
            sink,
        });
        let weak = Arc::downgrade(&broker);
        tokio::spawn(sweep(weak));
        broker
    }

    /// Runs `f` on the channel's state under its lock, creating the channel if needed.
    fn with_channel<R>(&self, channel: &str, f: impl FnOnce(&mut ChannelState) -> R) -> R {
        loop {
            let state = {
                let mut map = self.channels.lock();
                match map.get(channel) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(Mutex::new(ChannelState::new()));
                        map.insert(channel.into(), s.clone());
                        s
                    }
                }
            };
            let mut guard = state.lock();
            if !guard.forgotten {
                return f(&mut guard);
            }
        }
    }

    /// Forgets channels with nothing left worth keeping. Returns how many remain.
    fn sweep_once(&self) -> usize {
        let now = Instant::now();
        let mut map = self.channels.lock();
        map.retain(|_, state| {
            let mut s = state.lock();
            s.prune(now, None);
            if s.idle() {
                s.forgotten = true;
                false
            } else {
                true
            }
        });
        map.len()
    }

    /// Channels currently known (for tests and stats).
    pub fn channel_count(&self) -> usize {
        self.channels.lock().len()
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
        retention: Retention,
    ) -> Result<StreamPosition, BrokerError> {
        let channel_arc: Arc<str> = channel.into();
        Ok(self.with_channel(channel, |s| {
            s.offset += 1;
            let publication = Publication {
                offset: s.offset,
                data,
                from,
            };
            let now = Instant::now();
            if retention.size > 0 {
                s.history.push_back((now, publication.clone()));
            }
            s.prune(now, Some(retention));
            if s.interest {
                self.sink.deliver(Delivery::Publication {
                    channel: channel_arc,
                    publication,
                });
            }
            s.position()
        }))
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.with_channel(channel, |s| s.interest = true);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.with_channel(channel, |s| s.interest = false);
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        retention: Retention,
    ) -> Result<History, BrokerError> {
        Ok(self.with_channel(channel, |s| {
            s.prune(Instant::now(), Some(retention));
            let position = s.position();
            let first = s.history.front().map(|(_, p)| p.offset);
            let (publications, complete) = match query.since {
                Some(since) => {
                    let complete = since == s.offset
                        || (since < s.offset && first.is_some_and(|f| f <= since + 1));
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
        }))
    }

    async fn presence_add(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError> {
        let channel_arc: Arc<str> = channel.into();
        self.with_channel(channel, |s| {
            match s.presence.iter_mut().find(|e| e.client == entry.client) {
                Some(existing) => *existing = entry.clone(),
                None => s.presence.push(entry.clone()),
            }
            if announce && s.interest {
                self.sink.deliver(Delivery::Join {
                    channel: channel_arc,
                    entry,
                });
            }
        });
        Ok(())
    }

    async fn presence_remove(
        &self,
        channel: &str,
        client: &str,
        announce: bool,
    ) -> Result<(), BrokerError> {
        let channel_arc: Arc<str> = channel.into();
        self.with_channel(channel, |s| {
            if let Some(i) = s.presence.iter().position(|e| &*e.client == client) {
                let entry = s.presence.remove(i);
                if announce && s.interest {
                    self.sink.deliver(Delivery::Leave {
                        channel: channel_arc,
                        entry,
                    });
                }
            }
        });
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        Ok(self.with_channel(channel, |s| s.presence.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Delivery>>);
    impl DeliverySink for Collect {
        fn deliver(&self, d: Delivery) {
            self.0.lock().push(d);
        }
    }

    fn raw(s: &str) -> Arc<RawValue> {
        Arc::from(RawValue::from_string(s.to_owned()).unwrap())
    }

    const KEEP: Retention = Retention {
        size: 3,
        ttl: Duration::from_secs(60),
    };

    fn offsets(h: &History) -> Vec<u64> {
        h.publications.iter().map(|p| p.offset).collect()
    }

    #[tokio::test]
    async fn offsets_history_and_recovery_window() {
        let sink = Arc::new(Collect::default());
        let b = MemoryBroker::new(sink.clone());
        b.subscribe("c").await.unwrap();
        for i in 1..=5 {
            let pos = b
                .publish("c", raw(&i.to_string()), None, KEEP)
                .await
                .unwrap();
            assert_eq!(pos.offset, i);
        }
        assert_eq!(sink.0.lock().len(), 5);
        let all = b.history("c", HistoryQuery::default(), KEEP).await.unwrap();
        assert_eq!(offsets(&all), [3, 4, 5]);
        let q = |since| HistoryQuery {
            since: Some(since),
            limit: None,
        };
        let h = b.history("c", q(2), KEEP).await.unwrap();
        assert!(h.complete);
        assert_eq!(offsets(&h), [3, 4, 5]);
        assert!(
            !b.history("c", q(1), KEEP).await.unwrap().complete,
            "4 is out of the window"
        );
        assert!(b.history("c", q(5), KEEP).await.unwrap().complete);
        assert!(
            !b.history("c", q(6), KEEP).await.unwrap().complete,
            "future offset"
        );
        let last2 = HistoryQuery {
            since: None,
            limit: Some(2),
        };
        assert_eq!(offsets(&b.history("c", last2, KEEP).await.unwrap()), [4, 5]);
    }

    #[tokio::test]
    async fn ttl_expires_history_and_idle_channels_get_a_new_epoch() {
        let b = MemoryBroker::new(Arc::new(Collect::default()));
        let short = Retention {
            size: 10,
            ttl: Duration::from_millis(30),
        };
        let first = b.publish("c", raw("1"), None, short).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let h = b
            .history("c", HistoryQuery::default(), short)
            .await
            .unwrap();
        assert!(h.publications.is_empty());
        assert_eq!(b.sweep_once(), 0, "nothing left to keep");
        let again = b.publish("c", raw("2"), None, short).await.unwrap();
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch);
    }

    #[tokio::test]
    async fn presence_and_announcements() {
        let sink = Arc::new(Collect::default());
        let b = MemoryBroker::new(sink.clone());
        b.subscribe("c").await.unwrap();
        let e = PresenceEntry {
            client: "k1".into(),
            user: Some("ada".into()),
            info: None,
        };
        b.presence_add("c", e.clone(), true).await.unwrap();
        b.presence_add("c", e, false).await.unwrap();
        assert_eq!(b.presence("c").await.unwrap().len(), 1);
        b.presence_remove("c", "k1", true).await.unwrap();
        b.presence_remove("c", "k1", true).await.unwrap();
        assert!(b.presence("c").await.unwrap().is_empty());
        let kinds: Vec<_> = sink
            .0
            .lock()
            .iter()
            .map(|d| matches!(d, Delivery::Join { .. }))
            .collect();
        assert_eq!(kinds, [true, false], "one join, one leave");
    }
}
