//! Which local connections belong to which user, and each connection by its client id: what
//! the server API's `disconnect`, `refresh`, `subscribe` and `unsubscribe` act on. Bounded
//! by the open connections (each entry leaves with its session).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::broker::StreamPosition;
use crate::node::Peer;
use crate::protocol::CommandError;

/// A command of the server API for one connection, carried by its mailbox into the
/// connection's own loop, which runs it between the client's commands (so a server-side
/// subscription takes the same path as a client's: queue, recovery, presence, limits).
#[derive(Debug)]
pub(crate) enum Control {
    /// Subscribe to the channel; answered with the position the client was told.
    Subscribe {
        channel: Arc<str>,
        reply: oneshot::Sender<Result<StreamPosition, CommandError>>,
    },
    /// Unsubscribe from the channel.
    Unsubscribe {
        channel: Arc<str>,
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
}

/// One local connection: its outbound side, its token deadline (the connection task
/// closes it with 1008 when the deadline passes, and re-arms when it changes) and its
/// mailbox for [`Control`] commands (bounded: `api.mailbox_size`).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) peer: Weak<Peer>,
    pub(crate) expiry: watch::Sender<Option<u64>>,
    pub(crate) mailbox: mpsc::Sender<Control>,
}

#[derive(Debug, Default)]
struct Inner {
    clients: HashMap<Arc<str>, Entry>,
    users: HashMap<Arc<str>, Vec<Entry>>,
}

/// The node's connections by client id and by user.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    /// Records a new session's peer.
    pub(crate) fn add(
        &self,
        peer: &Arc<Peer>,
        user: Option<&Arc<str>>,
        expiry: &watch::Sender<Option<u64>>,
        mailbox: &mpsc::Sender<Control>,
    ) {
        let entry = Entry {
            peer: Arc::downgrade(peer),
            expiry: expiry.clone(),
            mailbox: mailbox.clone(),
        };
        let mut inner = self.inner.lock();
        inner.clients.insert(peer.id.clone(), entry.clone());
        if let Some(user) = user {
            inner.users.entry(user.clone()).or_default().push(entry);
        }
    }

    /// Forgets a session's peer.
    pub(crate) fn remove(&self, client: &str, user: Option<&str>) {
        let mut inner = self.inner.lock();
        inner.clients.remove(client);
        if let Some(user) = user {
            if let Some(peers) = inner.users.get_mut(user) {
                peers.retain(|e| e.peer.upgrade().is_some_and(|p| &*p.id != client));
                if peers.is_empty() {
                    inner.users.remove(user);
                }
            }
        }
    }

    /// Distinct users with connections on this node.
    pub(crate) fn users(&self) -> usize {
        self.inner.lock().users.len()
    }

    /// The live peers of `user`.
    pub(crate) fn of_user(&self, user: &str) -> Vec<Arc<Peer>> {
        self.entries_of(user)
            .iter()
            .filter_map(|e| e.peer.upgrade())
            .collect()
    }

    /// The connections of `user`.
    pub(crate) fn entries_of(&self, user: &str) -> Vec<Entry> {
        self.inner
            .lock()
            .users
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// The live peer with this client id.
    pub(crate) fn client(&self, client: &str) -> Option<Arc<Peer>> {
        self.client_entry(client).and_then(|e| e.peer.upgrade())
    }

    /// The connection with this client id.
    pub(crate) fn client_entry(&self, client: &str) -> Option<Entry> {
        self.inner.lock().clients.get(client).cloned()
    }
}
