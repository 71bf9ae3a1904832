//! Which local connections belong to which user, and each connection by its client id: what
//! the server API's `disconnect`, `refresh`, `subscribe` and `unsubscribe` act on. Bounded
//! by the open connections (each entry leaves with its session).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{oneshot, watch, Notify};

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
    pub(crate) mailbox: Arc<Mailbox>,
}

/// A connection's mailbox of [`Control`] commands, bounded by `api.mailbox_size`, read by
/// the connection's own loop. An empty one is a few words: every connection has one, and
/// most never get a command (a Tokio channel would hold a block of 32 slots and its shared
/// state, about 1.5 KB, from the start).
#[derive(Debug)]
pub(crate) struct Mailbox {
    state: Mutex<MailboxState>,
    notify: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct MailboxState {
    commands: VecDeque<Control>,
    /// The connection is gone: nothing more is taken.
    closed: bool,
}

impl Mailbox {
    /// A mailbox for at most `capacity` waiting commands (at least one).
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(MailboxState::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
        })
    }

    /// Queues `control` for the connection, unless the mailbox is full or closed.
    ///
    /// # Errors
    /// [`TrySendError::Full`] or [`TrySendError::Closed`], with the command.
    pub(crate) fn try_send(&self, control: Control) -> Result<(), TrySendError<Control>> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(TrySendError::Closed(control));
        }
        if state.commands.len() >= self.capacity {
            return Err(TrySendError::Full(control));
        }
        state.commands.push_back(control);
        drop(state);
        self.notify.notify_one();
        Ok(())
    }

    /// The next command, when there is one (single reader; cancel-safe).
    pub(crate) async fn recv(&self) -> Control {
        loop {
            if let Some(control) = self.state.lock().commands.pop_front() {
                return control;
            }
            // `notify_one` keeps a permit when nobody waits, so a command queued between
            // the check and this wait is not missed.
            self.notify.notified().await;
        }
    }

    /// The connection is gone: the waiting commands are dropped (their callers learn it
    /// from the dropped reply) and later ones refused.
    pub(crate) fn close(&self) {
        let waiting = {
            let mut state = self.state.lock();
            state.closed = true;
            std::mem::take(&mut state.commands)
        };
        drop(waiting);
    }
}

/// The connection loop's end of its [`Mailbox`]: closes it when dropped.
#[derive(Debug)]
pub(crate) struct Inbox(pub(crate) Arc<Mailbox>);

impl Drop for Inbox {
    fn drop(&mut self) {
        self.0.close();
    }
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
        mailbox: &Arc<Mailbox>,
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

#[cfg(test)]
mod mailbox_tests {
    use super::*;

    fn unsubscribe() -> (Control, oneshot::Receiver<Result<(), CommandError>>) {
        let (reply, rx) = oneshot::channel();
        let control = Control::Unsubscribe {
            channel: "c".into(),
            reply,
        };
        (control, rx)
    }

    /// Commands come out in order, a full mailbox refuses, and once the connection's end is
    /// dropped the waiting commands are dropped (their callers see the reply gone) and new
    /// ones are refused as closed.
    #[tokio::test]
    async fn the_mailbox_is_bounded_ordered_and_closes_with_its_connection() {
        let mailbox = Mailbox::new(2);
        let inbox = Inbox(mailbox.clone());
        let (first, _first_rx) = unsubscribe();
        let (second, second_rx) = unsubscribe();
        mailbox.try_send(first).unwrap();
        mailbox.try_send(second).unwrap();
        assert!(matches!(
            mailbox.try_send(unsubscribe().0),
            Err(TrySendError::Full(_))
        ));
        assert!(matches!(inbox.0.recv().await, Control::Unsubscribe { .. }));
        // A reader waiting on an empty mailbox is woken by the next command.
        let reader = tokio::spawn({
            let mailbox = mailbox.clone();
            async move {
                let _ = mailbox.recv().await;
                let _ = mailbox.recv().await;
            }
        });
        let (third, _third_rx) = unsubscribe();
        mailbox.try_send(third).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the reader got both")
            .unwrap();
        let (waiting, waiting_rx) = unsubscribe();
        mailbox.try_send(waiting).unwrap();
        drop(second_rx);
        drop(inbox);
        assert!(waiting_rx.await.is_err(), "the reply sender was dropped");
        assert!(matches!(
            mailbox.try_send(unsubscribe().0),
            Err(TrySendError::Closed(_))
        ));
    }
}
