//! The server API across nodes: `disconnect`, `refresh`, `subscribe` and `unsubscribe`
//! act on every node's connections once the broker is shared (Redis).
//!
//! The node that answers the call acts on its own connections and publishes the command on
//! [`CONTROL_CHANNEL`], an internal channel carried by the broker's own publish/subscribe
//! path like any other channel (so it works unchanged on every broker). Its name starts with
//! `$`, which channel names never contain (`docs/protocol.md`), so no client can subscribe
//! or publish to it. Every other node applies the command to its local connections without
//! waiting for their answers; the node that sent it skips its own copy. With the memory
//! broker there are no other nodes and nothing is published.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::methods::{NodeInfo, Target};
use crate::broker::Retention;
use crate::config::BrokerKind;
use crate::Hub;

/// The internal channel of node-to-node commands.
pub(crate) const CONTROL_CHANNEL: &str = "$duplex:control";

/// Control messages received but not yet applied; past it, one is dropped and counted
/// (`duplex_limit_hits_total{limit="control_backlog"}`).
pub(crate) const CONTROL_BACKLOG: usize = 1024;

/// Control messages are kept only briefly: a node that was away does not replay old
/// disconnects.
const CONTROL_RETENTION: Retention = Retention {
    size: 1,
    ttl: Duration::from_secs(10),
};

/// How often a node tells the others its numbers; one not heard from for three intervals is
/// forgotten.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);

/// Most other nodes remembered: past it, heartbeats of new nodes are ignored (counted in
/// `duplex_limit_hits_total{limit="cluster_nodes"}`) until others are forgotten.
pub(crate) const MAX_NODES: usize = 1024;

/// The other nodes, by id, with their incarnation (`None` from a node that sends none) and
/// when each was last heard from.
#[derive(Debug, Default)]
pub(crate) struct Nodes {
    inner: Mutex<HashMap<String, Heard>>,
}

/// A node's last heartbeat: its numbers, its incarnation, when it arrived.
type Heard = (NodeInfo, Option<String>, Instant);

impl Nodes {
    /// Records a heartbeat; `false` when the table is full of live nodes.
    fn heard(&self, info: NodeInfo, incarnation: Option<String>, now: Instant) -> bool {
        let mut nodes = self.inner.lock();
        nodes.retain(|_, (_, _, at)| now.duration_since(*at) < HEARTBEAT_INTERVAL * 3);
        if nodes.len() >= MAX_NODES && !nodes.contains_key(&info.node) {
            return false;
        }
        nodes.insert(info.node.clone(), (info, incarnation, now));
        true
    }

    /// The nodes heard from within three heartbeats.
    pub(crate) fn live(&self) -> Vec<NodeInfo> {
        let now = Instant::now();
        self.inner
            .lock()
            .values()
            .filter(|(_, _, at)| now.duration_since(*at) < HEARTBEAT_INTERVAL * 3)
            .map(|(info, _, _)| info.clone())
            .collect()
    }

    /// The incarnations of the nodes heard from within three heartbeats: whose per-user
    /// connection counts count.
    pub(crate) fn live_incarnations(&self) -> HashSet<String> {
        let now = Instant::now();
        self.inner
            .lock()
            .values()
            .filter(|(_, _, at)| now.duration_since(*at) < HEARTBEAT_INTERVAL * 3)
            .filter_map(|(_, incarnation, _)| incarnation.clone())
            .collect()
    }
}

/// One command for every node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Command {
    Disconnect {
        target: Target,
        code: u16,
        reason: String,
    },
    Refresh {
        user: String,
        exp: Option<u64>,
    },
    Subscribe {
        target: Target,
        channel: String,
    },
    Unsubscribe {
        target: Target,
        channel: String,
    },
    /// A node's numbers, every [`HEARTBEAT_INTERVAL`].
    Heartbeat {
        info: NodeInfo,
        /// The sender's incarnation (see the cluster-wide per-user connection limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incarnation: Option<String>,
    },
}

/// A command and the node that sent it.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    command: Command,
}

impl Hub {
    /// Whether commands go to other nodes: the broker is shared.
    pub(crate) fn clustered(&self) -> bool {
        self.config().broker != BrokerKind::Memory
    }

    /// Sends `command` to every other node; whether it was sent. A broker failure is
    /// logged: this node has acted already, and the reply says the others were not told.
    pub(crate) async fn tell_other_nodes(&self, command: Command) -> bool {
        if !self.clustered() {
            return false;
        }
        let envelope = Envelope {
            from: self.shared.node_id.clone(),
            command,
        };
        let Ok(data) = serde_json::value::to_raw_value(&envelope) else {
            return false;
        };
        match self
            .shared
            .broker
            .publish(
                CONTROL_CHANNEL,
                Arc::from(data),
                None,
                None,
                CONTROL_RETENTION,
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the command could not be sent to the other nodes");
                false
            }
        }
    }

    /// With a shared broker: listens on the control channel and applies the other nodes'
    /// commands here until the hub shuts down. Started by [`crate::Server::run`].
    pub(crate) fn start_control(&self) {
        if !self.clustered() {
            return;
        }
        let (tx, rx) = mpsc::channel(CONTROL_BACKLOG);
        if !self.shared.node.set_control(tx) {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move { hub.control_loop(rx).await });
    }

    async fn control_loop(self, mut rx: mpsc::Receiver<Arc<RawValue>>) {
        let mut shutdown = self.shared.shutdown_signal();
        // Retried until the broker takes it (it may be starting or away); until then
        // `/healthz` answers 503.
        let mut delay = Duration::from_millis(20);
        loop {
            match self.shared.broker.subscribe(CONTROL_CHANNEL).await {
                Ok(()) => {
                    self.shared.node.set_control_ready();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other nodes' commands yet");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = shutdown.wait_for(|d| *d) => return,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let data = tokio::select! {
                data = rx.recv() => data.map(Some),
                _ = heartbeat.tick() => Some(None),
                _ = shutdown.wait_for(|d| *d) => None,
            };
            let data = match data {
                Some(Some(data)) => data,
                Some(None) => {
                    let info = self.node_info();
                    let incarnation = Some(self.shared.incarnation.to_string());
                    self.tell_other_nodes(Command::Heartbeat { info, incarnation })
                        .await;
                    continue;
                }
                None => break,
            };
            match serde_json::from_str::<Envelope>(data.get()) {
                Ok(e) if e.from == self.shared.node_id => {}
                Ok(e) => self.apply(e.command),
                Err(e) => tracing::warn!(error = %e, "a control message that is not a command"),
            }
        }
        let _ = self.shared.broker.unsubscribe(CONTROL_CHANNEL).await;
    }

    /// Applies another node's command to the local connections. Subscriptions are posted
    /// to the connections' mailboxes without waiting: the calling node answers for its own.
    fn apply(&self, command: Command) {
        match command {
            Command::Disconnect {
                target,
                code,
                reason,
            } => {
                if let Err(e) = self.disconnect_local(&target, code, &reason) {
                    tracing::warn!(error = %e, "another node's disconnect refused");
                }
            }
            Command::Refresh { user, exp } => {
                self.refresh_local(&user, exp);
            }
            Command::Heartbeat { info, incarnation } => {
                if !self.shared.nodes.heard(info, incarnation, Instant::now()) {
                    self.shared.metrics.limit_hit("cluster_nodes");
                }
            }
            Command::Subscribe { target, channel } => {
                let channel: Arc<str> = channel.into();
                self.post(&target, |reply| super::registry::Control::Subscribe {
                    channel: channel.clone(),
                    reply,
                });
            }
            Command::Unsubscribe { target, channel } => {
                let channel: Arc<str> = channel.into();
                self.post(&target, |reply| super::registry::Control::Unsubscribe {
                    channel: channel.clone(),
                    reply,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(node: &str) -> NodeInfo {
        serde_json::from_value(serde_json::json!({
            "node": node, "version": "0", "connections": 0, "users": 0,
            "subscriptions": 0, "channels": 0, "uptime_seconds": 0,
        }))
        .unwrap()
    }

    #[test]
    fn nodes_are_forgotten_after_three_heartbeats_and_bounded() {
        let nodes = Nodes::default();
        let start = Instant::now();
        for i in 0..MAX_NODES {
            assert!(nodes.heard(info(&format!("n{i}")), Some(format!("n{i}/1")), start));
        }
        assert!(
            !nodes.heard(info("one-more"), None, start),
            "full of live nodes"
        );
        assert!(
            nodes.heard(info("n0"), Some("n0/2".into()), start),
            "a known node still updates"
        );
        assert_eq!(nodes.live().len(), MAX_NODES);
        let live = nodes.live_incarnations();
        assert!(live.contains("n0/2") && !live.contains("n0/1"), "restarted");
        // Three heartbeats later the others are gone and a new node has room.
        let later = start + HEARTBEAT_INTERVAL * 3;
        assert!(nodes.heard(info("late"), None, later));
        assert_eq!(nodes.inner.lock().len(), 1);
    }

    #[tokio::test]
    async fn a_full_control_backlog_drops_and_counts() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let node = crate::node::Node::new(metrics.clone());
        let (tx, mut rx) = mpsc::channel(1);
        assert!(node.set_control(tx.clone()));
        assert!(!node.set_control(tx), "set once");
        assert!(node.control_pending());
        let data: Arc<RawValue> = Arc::from(RawValue::from_string("{}".into()).unwrap());
        node.control_for_test(data.clone());
        node.control_for_test(data);
        assert!(rx.recv().await.is_some());
        assert!(rx.try_recv().is_err(), "the second was dropped");
        assert!(metrics
            .render()
            .contains("duplex_limit_hits_total{limit=\"control_backlog\"} 1"));
        node.set_control_ready();
        assert!(!node.control_pending());
    }

    #[test]
    fn commands_round_trip_and_the_channel_is_not_a_client_channel() {
        assert!(crate::channel::validate(CONTROL_CHANNEL).is_err());
        let e = Envelope {
            from: "n1".into(),
            command: Command::Subscribe {
                target: Target::User("ada".into()),
                channel: "news".into(),
            },
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"from":"n1","op":"subscribe","target":{"user":"ada"},"channel":"news"}"#
        );
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert!(matches!(back.command, Command::Subscribe { .. }));
    }
}
