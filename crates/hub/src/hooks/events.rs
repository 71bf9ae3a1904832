//! Backend events: what happens on the node (connections, subscriptions, channel
//! occupancy), POSTed in batches to `hooks.events`, at least once.
//!
//! Events go into a bounded queue (`hooks.events_queue`); a queue that is full drops the new
//! event and counts it (`duplex_limit_hits_total{limit="hook_events_queue"}`), so a backend
//! that is down costs memory up to that bound and nothing else. One task per node sends the
//! queue in order: it waits `hooks.events_interval` for a batch to fill (up to
//! `hooks.events_batch`), POSTs it, and on any failure sends the same batch again after a
//! pause that doubles from 100 ms to `hooks.events_max_backoff`. A batch is only dropped
//! when it is taken (2xx), so the backend may see one twice (after a timeout whose request
//! did arrive): each event has an `id` to deduplicate by.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;

use super::config::HooksConfig;
use super::{HookError, USER_AGENT};
use crate::metrics::Metrics;

/// The first pause after a failed batch.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Attempts per batch once the node is going away (the queue's sender is gone): the events
/// still queued get a few tries, not an endless retry that outlives the hub.
const ATTEMPTS_AT_EXIT: u32 = 3;

/// The reply body of an events POST is not used; at most this much is read of it.
const MAX_EVENTS_REPLY: usize = 4096;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A connection was accepted (after its `connect` hook, if any).
    Connect,
    /// A connection ended.
    Disconnect,
    /// A connection subscribed to a channel (by its command or server-side).
    Subscribe,
    /// A connection left a channel (by `unsubscribe`, or by disconnecting).
    Unsubscribe,
    /// A channel got its first subscriber on this node.
    Occupied,
    /// A channel lost its last subscriber on this node.
    Vacated,
}

/// One event as it is sent.
#[derive(Debug, Serialize)]
struct Event {
    /// `<node>-<sequence>`: unique, and in the order the node produced them.
    id: String,
    #[serde(rename = "type")]
    kind: Kind,
    /// Milliseconds since the Unix epoch.
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<Arc<str>>,
}

#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [Event],
}

/// The settings of the sending task.
#[derive(Debug, Clone)]
struct Sending {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    timeout: Duration,
    batch: usize,
    interval: Duration,
    max_backoff: Duration,
    metrics: Arc<Metrics>,
}

/// The node's event queue.
#[derive(Debug)]
pub(crate) struct Events {
    tx: mpsc::Sender<Event>,
    /// Taken by the first [`Events::emit`], which starts the sending task (inside the
    /// runtime: the hub may be built outside one).
    start: Mutex<Option<(mpsc::Receiver<Event>, Sending)>>,
    node: String,
    seq: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Events {
    /// The queue for `config.events` (a checked URL), sending with `client`.
    pub(crate) fn new(
        config: &HooksConfig,
        uri: Uri,
        client: Client<HttpConnector, Full<Bytes>>,
        node: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.events_queue.max(1));
        let sending = Sending {
            client,
            uri,
            timeout: config.timeout,
            batch: config.events_batch,
            interval: config.events_interval,
            max_backoff: config.events_max_backoff,
            metrics: metrics.clone(),
        };
        Self {
            tx,
            start: Mutex::new(Some((rx, sending))),
            node,
            seq: AtomicU64::new(1),
            metrics,
        }
    }

    /// Queues one event; drops it (counted) when the queue is full. Never waits.
    pub(crate) fn emit(
        &self,
        kind: Kind,
        client: Option<&Arc<str>>,
        user: Option<&Arc<str>>,
        channel: Option<&str>,
    ) {
        if let Some((rx, sending)) = self.start.lock().take() {
            tokio::spawn(send_all(rx, sending));
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let event = Event {
            id: format!("{}-{n}", self.node),
            kind,
            ts,
            client: client.cloned(),
            user: user.cloned(),
            channel: channel.map(Arc::from),
        };
        if self.tx.try_send(event).is_err() {
            self.metrics.limit_hit("hook_events_queue");
        }
    }
}

/// The sending task: batches in queue order, each retried until the backend takes it.
async fn send_all(mut rx: mpsc::Receiver<Event>, s: Sending) {
    let mut batch = Vec::with_capacity(s.batch);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + s.interval;
        let mut closed = false;
        while batch.len() < s.batch {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => batch.push(event),
                    None => { closed = true; break; }
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Serializing strings and integers cannot fail.
        let body = Bytes::from(serde_json::to_vec(&Batch { events: &batch }).unwrap_or_default());
        let mut pause = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            let started = std::time::Instant::now();
            let sent = post(&s, body.clone()).await;
            let label = match &sent {
                Ok(()) => "allowed",
                Err(HookError::Timeout) => "timeout",
                Err(_) => "unavailable",
            };
            s.metrics
                .hook_call("events", label, started.elapsed().as_secs_f64());
            match sent {
                Ok(()) => break,
                Err(e) => {
                    attempts = attempts.saturating_add(1);
                    tracing::warn!(uri = %s.uri, error = %e, events = batch.len(),
                        "backend events not taken; retrying");
                    if (closed || rx.is_closed()) && attempts >= ATTEMPTS_AT_EXIT {
                        return;
                    }
                    // Full jitter: nodes that lost the backend together do not retry together.
                    let wait = pause.mul_f64(rand::random::<f64>()).max(FIRST_BACKOFF / 2);
                    tokio::time::sleep(wait).await;
                    pause = pause.saturating_mul(2).min(s.max_backoff);
                }
            }
        }
        batch.clear();
        if closed {
            return;
        }
    }
}

/// One POST of a batch; 2xx within the timeout is success.
async fn post(s: &Sending, body: Bytes) -> Result<(), HookError> {
    let exchange = async {
        let mut request = Request::post(s.uri.clone())
            .body(Full::new(body))
            .map_err(|e| HookError::Unavailable(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        let response = s
            .client
            .request(request)
            .await
            .map_err(|e| HookError::Unavailable(format!("{e:?}")))?;
        let status = response.status();
        // Read (a bounded part of) the body, so the pooled connection can be reused.
        let _ = Limited::new(response.into_body(), MAX_EVENTS_REPLY)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(HookError::Unavailable(format!("status {status}")))
        }
    };
    tokio::time::timeout(s.timeout, exchange)
        .await
        .unwrap_or(Err(HookError::Timeout))
}
