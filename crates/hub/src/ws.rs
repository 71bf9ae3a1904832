//! `/ws`: the upgrade checks (origin, token, limits) and the connection driver.
//!
//! The driver runs two tasks per connection. The reader feeds messages to the
//! [`Session`]; the writer drains the peer's outbound queue into the socket. They meet only
//! at the queue, so a client that stops reading blocks its writer and nothing else.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use duplex::axum::{UpgradeRejection, WebSocketUpgrade};
use duplex::{CloseCode, Message, WebSocket};

use crate::auth::{token_from_query, AuthError, Identity};
use crate::hooks::events::Kind;
use crate::hooks::refresh::{Outcome, Refreshing, Subject};
use crate::hooks::Context;
use crate::limits::{live_user_count, ClusterUserSlot, ConnectionPermit, LimitError, PermitSlot};
use crate::metrics::HandshakeFailure;
use crate::node::Peer;
use crate::queue::Next;
use crate::session::{Session, POLICY};
use crate::Hub;

/// How long a Close frame may take to be written to a peer whose socket is full, and how
/// long we wait for the peer's Close after ours, before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds the `/ws` route.
pub(crate) fn route(router: Router<Hub>) -> Router<Hub> {
    // GET for HTTP/1.1's Upgrade, CONNECT for HTTP/2's extended CONNECT (RFC 8441 §4).
    router.route("/ws", get(upgrade).connect(upgrade))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The address per-IP limits count: the peer itself, or, when the peer is a trusted proxy,
/// the last address of `X-Forwarded-For` that is not itself a trusted proxy (each proxy
/// appends the address it received the request from, so earlier entries are the client's
/// own claims and cannot be believed). Addresses are compared and returned in canonical
/// form: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack listener reports
/// for IPv4 peers) is its IPv4 address. [`crate::limits::ip_key`] then applies the IPv6
/// prefix.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| t.to_canonical() == ip);
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return peer;
    }
    let mut ip = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(hop) => {
                ip = hop.to_canonical();
                if !is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    ip
}

/// The connection's slot for a WebSocket from `client`: the one [`crate::Server`] took
/// when it accepted the TCP connection (re-keyed to `client` when a trusted proxy named
/// it), or, when the router is served by something else, a new one.
fn websocket_permit(
    hub: &Hub,
    slot: Option<&PermitSlot>,
    client: IpAddr,
) -> Result<ConnectionPermit, LimitError> {
    let mut permit = match slot.and_then(PermitSlot::take) {
        Some(mut permit) => {
            if let Err(e) = permit.assign_ip(client) {
                if let Some(slot) = slot {
                    slot.put_back(permit);
                }
                return Err(e);
            }
            permit
        }
        None => hub.shared.limits.acquire(Some(client))?,
    };
    permit.set_websocket();
    Ok(permit)
}

/// The cluster-wide `limits.max_connections_per_user`, once the node-local count admitted
/// `user`: with a shared broker, counts the connection there under this node's incarnation
/// and sums the counts of the live nodes (this one and those heard in heartbeats). Over the
/// limit, the count is taken back and [`LimitError::PerUser`] returned; otherwise the
/// permit holds the count until it drops. When the broker cannot count, the node-local
/// limit alone applies (counted in `duplex_user_limit_unchecked_total`).
async fn cluster_user_check(
    hub: &Hub,
    permit: &mut ConnectionPermit,
    user: Option<&Arc<str>>,
) -> Result<(), LimitError> {
    let max = hub.config().limits.max_connections_per_user;
    let Some(user) = user else { return Ok(()) };
    if max == 0 || !hub.clustered() {
        return Ok(());
    }
    let shared = &hub.shared;
    // In a task of its own, which makes the slot that takes the count back as soon as the
    // broker counted: if this upgrade is dropped meanwhile (the client went away), the
    // task's output, the slot, is dropped with it and the count taken back.
    let (broker, counted_user, incarnation) = (
        shared.broker.clone(),
        user.clone(),
        shared.incarnation.clone(),
    );
    let counting = tokio::spawn(async move {
        let fields = broker
            .user_connection_opened(&counted_user, &incarnation)
            .await?;
        Ok::<_, crate::broker::BrokerError>(
            fields.map(|f| (f, ClusterUserSlot::new(broker, counted_user, incarnation))),
        )
    });
    let counted = match counting.await {
        Ok(counted) => counted,
        Err(e) => Err(crate::broker::BrokerError::Unavailable(e.to_string())),
    };
    let (fields, slot) = match counted {
        Ok(Some(counted)) => counted,
        Ok(None) => return Ok(()),
        Err(e) => {
            shared.metrics.user_limit_unchecked();
            if warn_now() {
                tracing::warn!(error = %e, "the per-user connection limit is checked on this node only: the broker cannot count");
            } else {
                tracing::debug!(error = %e, "the per-user connection limit is checked on this node only");
            }
            return Ok(());
        }
    };
    let open = live_user_count(
        &fields,
        &shared.incarnation,
        &shared.nodes.live_incarnations(),
    );
    if open > u64::try_from(max).unwrap_or(u64::MAX) {
        drop(slot);
        return Err(LimitError::PerUser);
    }
    permit.hold_cluster_slot(slot);
    Ok(())
}

/// Whether a warning about an unavailable cluster-wide count may be logged now: at most one
/// every [`WARN_EVERY`], the rest at debug level.
fn warn_now() -> bool {
    static LAST: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);
    let now = std::time::Instant::now();
    let mut last = LAST.lock();
    match *last {
        Some(at) if now.duration_since(at) < WARN_EVERY => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

/// See [`warn_now`].
const WARN_EVERY: Duration = Duration::from_secs(10);

async fn upgrade(
    State(hub): State<Hub>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    slot: Option<Extension<PermitSlot>>,
    streams: Option<Extension<crate::server::Http2Streams>>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, UpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => {
            let why = if rejection.status() == StatusCode::UPGRADE_REQUIRED {
                HandshakeFailure::Version
            } else {
                HandshakeFailure::BadRequest
            };
            hub.shared.metrics.handshake_failure(why);
            return rejection.into_response();
        }
    };
    let slot = slot.as_ref().map(|Extension(slot)| slot);
    // The validated request's Host: over HTTP/2 it is the `:authority` (RFC 8441 §4).
    let host = upgrade.request().header("host");
    let admitted = match check(&hub, addr, slot, &headers, uri.query(), host).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.response(&hub),
    };
    let version = upgrade.request().version();
    let upgrade = upgrade
        .protocols([crate::SUBPROTOCOL])
        .config(hub.shared.websocket.clone());
    let protocol = upgrade.selected_protocol().map(str::to_owned);
    // Over HTTP/2 the WebSocket is a stream of its connection, which is not idle while it
    // is open.
    let stream = streams.map(|Extension(streams)| streams.open());
    upgrade.on_upgrade(move |ws| {
        hub.shared.metrics.websocket_upgrade(version);
        let accepted = admitted.accepted(addr, protocol, stream);
        spawn_connection(hub, ws, accepted);
        std::future::ready(())
    })
}

/// Serves a `GET /ws` upgrade that the server's own HTTP/1.1 reader took from the socket
/// (`server.rs`: a plain upgrade to this path is the common request, and it is answered
/// without an HTTP stack in between). The checks, the answers and the connection are those
/// of the routed path; a refusal closes the connection after its response.
pub(crate) async fn serve_direct<S>(
    hub: Hub,
    io: S,
    request: duplex::Request,
    leftover: bytes::BytesMut,
    addr: SocketAddr,
    permit: ConnectionPermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let slot = PermitSlot::new(permit);
    let config = duplex::ServerConfig::default().connection(hub.shared.websocket.clone());
    let incoming = duplex::Incoming::from_parts(io, request, leftover, config);
    let request = incoming.request();
    let checks = check(
        &hub,
        addr,
        Some(&slot),
        request.headers(),
        request.query(),
        request.header("host"),
    );
    // Bounded as the router bounds a request (`limits.request_timeout`, 408).
    let admitted = match tokio::time::timeout(hub.config().limits.request_timeout, checks).await {
        Ok(Ok(admitted)) => admitted,
        Ok(Err(refusal)) => {
            let _ = incoming.reject(refusal.reject(&hub)).await;
            return;
        }
        Err(_) => {
            hub.shared.metrics.limit_hit("request_timeout");
            let _ = incoming
                .reject(duplex::Reject::new(408, "request timed out"))
                .await;
            return;
        }
    };
    let mut accept = duplex::Accept::default();
    if let Some(protocol) = request.select_subprotocol([crate::SUBPROTOCOL]) {
        accept = accept.subprotocol(protocol);
    }
    let ws = match incoming.accept(accept).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "WebSocket upgrade not completed");
            return;
        }
    };
    hub.shared
        .metrics
        .websocket_upgrade(axum::http::Version::HTTP_11);
    let protocol = ws.subprotocol().map(str::to_owned);
    spawn_connection(hub, ws, admitted.accepted(addr, protocol, None));
}

/// Runs an accepted connection in a task of its own.
fn spawn_connection<S>(hub: Hub, ws: WebSocket<S>, accepted: Accepted)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let task = run(hub, ws, accepted);
    // An idle connection's memory is mostly this future: it is as large as its largest
    // state.
    tracing::trace!(bytes = std::mem::size_of_val(&task), "connection task");
    // Spawned as it is, in a task of its own. The upgrade's task would hold it next to the
    // upgrade's own state for the whole life of the connection, and a future that awaits a
    // captured future holds it twice (as the capture, and as the awaited value): 7.8 KB and
    // 6.9 KB per connection measured, against the 3.4 KB of `run`.
    tokio::spawn(task);
}

/// The settings of a hub connection once it is open (made once per hub:
/// `Shared::websocket`).
pub(crate) fn connection_config(c: &crate::Config) -> duplex::Config {
    duplex::Config::default()
        .max_message_size(c.limits.max_message_size)
        .max_frame_size(c.limits.max_message_size)
        .ping_interval(Some(c.websocket.ping_interval))
        .pong_timeout(c.websocket.pong_timeout)
        .deflate(c.websocket.compression.deflate())
}

/// Why an upgrade was refused: the answer, and the metric it counts in.
#[derive(Debug)]
pub(crate) struct Refusal {
    why: HandshakeFailure,
    status: StatusCode,
    reason: String,
    /// RFC 6750 §3: a 401 names the scheme in `WWW-Authenticate`.
    challenge: Option<&'static str>,
}

impl Refusal {
    fn new(why: HandshakeFailure, status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            why,
            status,
            reason: reason.into(),
            challenge: None,
        }
    }

    fn count(&self, hub: &Hub) {
        hub.shared.metrics.handshake_failure(self.why);
        tracing::debug!(status = %self.status, reason = %self.reason, "WebSocket upgrade refused");
    }

    /// The answer through the router.
    fn response(self, hub: &Hub) -> Response {
        self.count(hub);
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.reason),
        )
            .into_response();
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(challenge),
            );
        }
        response
    }

    /// The answer on a connection read by [`serve_direct`].
    fn reject(self, hub: &Hub) -> duplex::Reject {
        self.count(hub);
        let reject = duplex::Reject::new(self.status.as_u16(), self.reason);
        match self.challenge {
            Some(challenge) => reject.header("WWW-Authenticate", challenge),
            None => reject,
        }
    }
}

/// What the checks of an upgrade admitted.
struct Admitted {
    identity: Identity,
    permit: ConnectionPermit,
    context: Context,
}

impl Admitted {
    fn accepted(
        self,
        addr: SocketAddr,
        protocol: Option<String>,
        stream: Option<crate::server::Active>,
    ) -> Accepted {
        Accepted {
            identity: self.identity,
            addr,
            permit: self.permit,
            context: self.context,
            protocol,
            _stream: stream,
        }
    }
}

/// The checks of an upgrade to `/ws`, whichever HTTP stack read it: shutdown, origin, the
/// token, then the connection limits (total, per IP, per user, here and across nodes).
async fn check(
    hub: &Hub,
    addr: SocketAddr,
    slot: Option<&PermitSlot>,
    headers: &HeaderMap,
    query: Option<&str>,
    host: Option<&str>,
) -> Result<Admitted, Refusal> {
    if hub.is_shutting_down() {
        return Err(Refusal::new(
            HandshakeFailure::ShuttingDown,
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down",
        ));
    }
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if !hub.shared.auth.origin_allowed(text(header::ORIGIN), host) {
        return Err(Refusal::new(
            HandshakeFailure::Origin,
            StatusCode::FORBIDDEN,
            "origin not allowed",
        ));
    }
    let token = bearer(headers).or_else(|| query.and_then(token_from_query));
    let identity = match hub.shared.auth.authenticate(token.as_deref()).await {
        Ok(identity) => identity,
        Err(AuthError::KeysUnavailable) => {
            // The provider's keys could not be fetched: not the client's fault, so not a 401
            // (which would tell it to get another token).
            return Err(Refusal::new(
                HandshakeFailure::Unauthorized,
                StatusCode::SERVICE_UNAVAILABLE,
                AuthError::KeysUnavailable.to_string(),
            ));
        }
        Err(e) => {
            // The body is the protocol's words (`AuthError`'s Display), never the JWT
            // library's text. RFC 6750 §3: a 401 names the scheme, and an `error` code only
            // when a token was sent (§3.1).
            let challenge = if e == AuthError::Missing {
                "Bearer"
            } else {
                "Bearer error=\"invalid_token\""
            };
            let mut refusal = Refusal::new(
                HandshakeFailure::Unauthorized,
                StatusCode::UNAUTHORIZED,
                e.to_string(),
            );
            refusal.challenge = Some(challenge);
            return Err(refusal);
        }
    };
    let client_ip = client_ip(addr.ip(), headers, &hub.config().limits.trusted_proxies);
    let permit = match websocket_permit(hub, slot, client_ip) {
        Ok(mut p) => {
            // This node's count first, then (with a shared broker) every node's; a refusal
            // by the second gives this node's count back.
            let refused = match identity.user.as_ref() {
                None => None,
                Some(user) => match p.assign_user(user) {
                    Err(e) => Some(e),
                    Ok(()) => {
                        let e = cluster_user_check(hub, &mut p, Some(user)).await.err();
                        if e.is_some() {
                            p.unassign_user();
                        }
                        e
                    }
                },
            };
            if let Some(e) = refused {
                hub.shared.metrics.limit_hit(e.metric());
                if let Some(slot) = slot {
                    slot.put_back(p);
                }
                return Err(Refusal::new(
                    HandshakeFailure::PerUser,
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections for this user",
                ));
            }
            p
        }
        Err(e @ LimitError::Total) => {
            hub.shared.metrics.limit_hit(e.metric());
            return Err(Refusal::new(
                HandshakeFailure::Capacity,
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections",
            ));
        }
        Err(e @ (LimitError::PerIp | LimitError::PerUser)) => {
            hub.shared.metrics.limit_hit(e.metric());
            return Err(Refusal::new(
                HandshakeFailure::PerIp,
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
            ));
        }
    };
    // Only the allowlisted headers are kept for the hooks, nothing when there are none.
    let context = Context {
        headers: hub.shared.hooks.select_headers(headers),
        ip: client_ip,
    };
    Ok(Admitted {
        identity,
        permit,
        context,
    })
}

/// What the connection loop waits for: the client's next message, or a server API command.
enum Input {
    Message(Option<Result<Message, duplex::Error>>),
    Control(crate::api::registry::Control),
}

/// What the connection loop runs next.
enum Work {
    Text(duplex::Utf8Bytes),
    Binary,
    Control(crate::api::registry::Control),
}

/// What the upgrade learnt about a connection.
struct Accepted {
    identity: Identity,
    addr: SocketAddr,
    permit: ConnectionPermit,
    context: Context,
    /// The selected subprotocol, `None` when the client offered none we speak.
    protocol: Option<String>,
    /// Over HTTP/2, the stream this WebSocket is, counted in its connection's activity for
    /// as long as the connection lives.
    _stream: Option<crate::server::Active>,
}

/// Deadlines further away than this are no deadline: the connection will not outlive it,
/// and `Instant` arithmetic near its limits overflows (in our addition, or in the timer's
/// rounding of the deadline).
const MAX_EXPIRY_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `exp` (seconds since the Unix epoch, from a verified token, so any `u64`) as a deadline,
/// or `None` when there is none or it is too far away to matter.
fn expiry_deadline(exp: Option<u64>) -> Option<tokio::time::Instant> {
    let exp = exp?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let delay = Duration::from_secs(exp.saturating_sub(now));
    if delay > MAX_EXPIRY_DELAY {
        return None;
    }
    tokio::time::Instant::now().checked_add(delay)
}

/// Moves the expiry timer to the token `exp` just seen on `changes`; whether it is armed.
fn rearm(
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
    changes: &mut tokio::sync::watch::Receiver<Option<u64>>,
) -> bool {
    match expiry_deadline(*changes.borrow_and_update()) {
        Some(at) => {
            timer.reset(at);
            true
        }
        None => false,
    }
}

/// Starts the `refresh` hook for a connection that reached the deadline its backend set;
/// `None` when no `refresh` hook is configured.
fn start_refresh(hub: &Hub, session: &Session) -> Option<Refreshing> {
    let uri = hub.shared.hooks.refresh()?.clone();
    let identity = session.identity();
    let subject = Subject {
        client: session.peer().id.clone(),
        user: identity.user.clone(),
        info: identity.info.clone(),
        context: session.context().clone(),
    };
    Some(crate::hooks::refresh::start(
        hub.shared.clone(),
        uri,
        subject,
    ))
}

/// The running `refresh` call's answer; pending while there is none.
async fn refreshed(refreshing: &mut Option<Refreshing>) -> Outcome {
    match refreshing {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}

/// Applies the `refresh` hook's answer: a new deadline re-arms `timer`, anything else closes
/// the connection. Whether the timer is armed, and whether the connection has expired.
fn apply_refresh(
    outcome: Outcome,
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
    peer: &Peer,
) -> (bool, bool) {
    match outcome {
        Outcome::Extended(at) => match expiry_deadline(Some(at)) {
            Some(at) => {
                timer.reset(at);
                (true, false)
            }
            None => (false, false),
        },
        Outcome::Expired => {
            peer.queue.close(POLICY, "token expired", false);
            (false, true)
        }
        Outcome::Disconnect(code, reason) => {
            peer.queue.close(code, reason, false);
            (false, true)
        }
    }
}

/// Counts one open connection in `duplex_connections` for as long as it lives: dropped on
/// every way out of [`run`], a panic included, so the gauge cannot drift.
struct OpenConnection(std::sync::Arc<crate::metrics::Metrics>);

impl OpenConnection {
    fn new(metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        metrics.connections.inc();
        metrics.connections_opened.inc();
        Self(metrics)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

async fn run<S>(hub: Hub, mut ws: WebSocket<S>, accepted: Accepted)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        mut identity,
        addr,
        permit,
        context,
        protocol,
        _stream,
    } = accepted;
    let metrics = hub.shared.metrics.clone();
    let open = OpenConnection::new(metrics.clone());
    let mut shutdown = hub.shared.shutdown_signal();
    let id = hub.shared.new_client_id();
    let mut channels = Vec::new();
    // Whether the connection's deadline is the backend's (the `connect` hook's, then the
    // `refresh` hook's): reaching it asks the `refresh` hook, if any. A token's `exp` (from
    // the client's `refresh` command) or the server API's replaces it.
    let mut hook_expiry = false;
    if let Some(uri) = hub.shared.hooks.connect() {
        // Nothing is read from the client meanwhile; the hook's timeout bounds the wait,
        // and a shutdown ends it at once.
        // Boxed, as every state below that is rarely or briefly in use: the connection's
        // future is as large as its largest state, for as long as it lives.
        let admit = Box::pin(crate::hooks::connect::admit(
            &hub.shared,
            uri,
            &id,
            &context,
            protocol.as_deref(),
            &mut identity,
        ));
        let admission = tokio::select! {
            admission = admit => admission,
            () = async { let _ = shutdown.wait_for(|d| *d).await; } => {
                Err((CloseCode::AWAY.0, "server shutting down".into()))
            }
        };
        match admission {
            Ok((named, expires)) => {
                channels = named;
                hook_expiry = expires;
            }
            Err((code, reason)) => {
                tracing::debug!(client = %id, %addr, code, %reason, "refused by the connect hook");
                let close = ws.close(CloseCode(code), &reason);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
                drop(open);
                drop(permit);
                return;
            }
        }
    }
    let mut session = Session::accepted(hub.shared.clone(), identity, id, context);
    let mut expiry_changes = session.expiry();
    let first = expiry_deadline(*expiry_changes.borrow_and_update());
    let peer = session.peer().clone();
    tracing::debug!(client = %peer.id, %addr, user = ?session.identity().user, "connected");
    let user = session.identity().user.clone();
    hub.shared
        .hooks
        .emit(Kind::Connect, &peer.id, user.as_ref(), None);
    let (mut sink, mut stream) = ws.split();

    let writer_peer = peer.clone();
    let writer_metrics = metrics.clone();
    let writer = async move {
        while let Some(next) = writer_peer.queue.pop().await {
            match next {
                Next::Frame(frame) => {
                    if sink.send_prepared(frame.prepared()).await.is_err() {
                        break;
                    }
                    writer_metrics.messages_sent.inc();
                    writer_metrics.bytes_sent.inc_by(frame.payload_len() as u64);
                }
                Next::Close(code, reason) => {
                    let close = sink.close(CloseCode(code), &reason);
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
                    break;
                }
            }
        }
        // Whatever ended the writer, nothing more can be sent: stop queueing.
        writer_peer.queue.close(CloseCode::ABNORMAL.0, "", true);
    };
    tracing::trace!(bytes = std::mem::size_of_val(&writer), "writer task");
    let writer = tokio::spawn(writer);

    // The writer runs, so the `subscribed` frames leave as they are queued.
    Box::pin(session.subscribe_server_side(&channels)).await;
    let mut shutting_down = false;
    // Armed while the token has an `exp`; a `refresh` moves (or removes) the deadline.
    let mut armed = first.is_some();
    let expiry = tokio::time::sleep_until(first.unwrap_or_else(tokio::time::Instant::now));
    tokio::pin!(expiry);
    let mut expired = false;
    // The `refresh` hook's call, while one runs (boxed: an idle connection holds a pointer),
    // and whether one is to start once the running command is done.
    let mut refreshing: Option<Refreshing> = None;
    let mut refresh_due = false;
    // Once our Close is queued, the peer has CLOSE_TIMEOUT to answer it.
    let closing = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(closing);
    let mut closing_armed = false;
    // A message read while a command was running: at most one is read ahead, so reading
    // goes on (Pongs and Close replies are written only while the stream is polled) without
    // buffering commands.
    let mut ahead = None;
    // Server API commands for this connection, run between the client's commands.
    let mailbox = session
        .take_mailbox()
        .unwrap_or_else(|| crate::api::registry::Inbox(crate::api::registry::Mailbox::new(1)));
    loop {
        let input = match ahead.take() {
            Some(message) => Input::Message(message),
            None => tokio::select! {
                () = peer.queue.closed(), if !closing_armed => {
                    closing_armed = true;
                    closing.as_mut().reset(tokio::time::Instant::now() + CLOSE_TIMEOUT);
                    continue;
                }
                message = stream.recv() => Input::Message(message),
                control = mailbox.0.recv(), if !closing_armed => Input::Control(control),
                () = async { let _ = shutdown.wait_for(|d| *d).await; }, if !shutting_down => {
                    shutting_down = true;
                    peer.queue.close(CloseCode::AWAY.0, "server shutting down", true);
                    continue;
                }
                () = &mut expiry, if armed && !expired => {
                    armed = false;
                    match hook_expiry.then(|| start_refresh(&hub, &session)).flatten() {
                        Some(call) => refreshing = Some(call),
                        None => {
                            expired = true;
                            peer.queue.close(POLICY, "token expired", false);
                        }
                    }
                    continue;
                }
                outcome = refreshed(&mut refreshing), if refreshing.is_some() && !expired => {
                    refreshing = None;
                    (armed, expired) = apply_refresh(outcome, expiry.as_mut(), &peer);
                    continue;
                }
                Ok(()) = expiry_changes.changed(), if !expired => {
                    (hook_expiry, refreshing, refresh_due) = (false, None, false);
                    armed = rearm(expiry.as_mut(), &mut expiry_changes);
                    continue;
                }
                () = &mut closing, if closing_armed => break,
            },
        };
        let work = match input {
            // Dropped unrun when the queue is closed: the API call learns the connection is
            // gone from its dropped reply sender.
            Input::Control(control) => Work::Control(control),
            Input::Message(Some(Ok(Message::Text(text)))) => {
                metrics.messages_received.inc();
                metrics.bytes_received.inc_by(text.len() as u64);
                Work::Text(text)
            }
            Input::Message(Some(Ok(Message::Binary(data)))) => {
                metrics.messages_received.inc();
                metrics.bytes_received.inc_by(data.len() as u64);
                Work::Binary
            }
            Input::Message(Some(Err(e))) => {
                if let duplex::Error::Failed(duplex::proto::CloseError::Protocol(violation)) = &e {
                    // The frame layer has already sent the matching Close frame.
                    metrics.protocol_close(violation.close_code().0);
                }
                tracing::debug!(client = %peer.id, error = %e, "connection error");
                break;
            }
            Input::Message(None) => break,
        };
        if peer.queue.is_closed() {
            continue;
        }
        // A command may wait for room in the outbound queue (up to `limits.max_reply_wait`)
        // while a large reply drains: shutdown and token expiry are still served meanwhile.
        // Both close the queue, which ends every wait of the command at once, so the command
        // finishes promptly and is never dropped halfway (its subscriptions stay consistent
        // for `finish`).
        // Boxed: a command's future is most of the connection's size (several KiB), and an
        // idle connection runs none.
        let mut work = Box::pin(async {
            match work {
                Work::Text(text) => session.on_text(text.as_str()).await,
                Work::Binary => session.on_binary().await,
                Work::Control(control) => session.on_control(control).await,
            }
        });
        loop {
            tokio::select! {
                () = &mut work => break,
                message = stream.recv(), if ahead.is_none() => ahead = Some(message),
                () = async { let _ = shutdown.wait_for(|d| *d).await; }, if !shutting_down => {
                    shutting_down = true;
                    peer.queue.close(CloseCode::AWAY.0, "server shutting down", true);
                }
                () = &mut expiry, if armed && !expired => {
                    armed = false;
                    if hook_expiry && hub.shared.hooks.refresh().is_some() {
                        // The command holds the session: the call starts once it is done.
                        refresh_due = true;
                    } else {
                        expired = true;
                        peer.queue.close(POLICY, "token expired", false);
                    }
                }
                outcome = refreshed(&mut refreshing), if refreshing.is_some() && !expired => {
                    refreshing = None;
                    (armed, expired) = apply_refresh(outcome, expiry.as_mut(), &peer);
                }
                Ok(()) = expiry_changes.changed(), if !expired => {
                    (hook_expiry, refreshing, refresh_due) = (false, None, false);
                    armed = rearm(expiry.as_mut(), &mut expiry_changes);
                }
            }
        }
        drop(work);
        if std::mem::take(&mut refresh_due) && !expired {
            refreshing = start_refresh(&hub, &session);
        }
    }
    Box::pin(session.finish()).await;
    hub.shared
        .hooks
        .emit(Kind::Disconnect, &peer.id, user.as_ref(), None);
    peer.queue.close(CloseCode::NORMAL.0, "", true);
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        tracing::debug!(client = %peer.id, "writer did not finish; dropping the connection");
        writer.abort();
    }
    drop(open);
    tracing::debug!(client = %peer.id, "disconnected");
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async function returns, without calling it.
    fn future_size<A, B, C, F: std::future::Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection's memory is mostly its task, which is as large as `run`'s future:
    /// a command's future inside it (boxed now) made it 9 KB.
    #[test]
    fn the_connection_future_stays_small() {
        // 3.4 KB in debug and release builds alike, over hyper's upgraded stream and over
        // the TCP stream that `serve_direct` keeps.
        for size in [
            future_size(run::<duplex::axum::UpgradedIo>),
            future_size(run::<tokio::net::TcpStream>),
        ] {
            assert!(size <= 4096, "run's future is {size} bytes");
        }
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.3".parse().unwrap();
        let h = forwarded(&["10.9.9.9, 127.0.0.7"]);
        assert_eq!(client_ip(other, &h, &[proxy]), other, "untrusted peer");
        assert_eq!(
            client_ip(proxy, &h, &[proxy]),
            "127.0.0.7".parse::<IpAddr>().unwrap(),
            "the last hop, not the client's own claim"
        );
        let chained = forwarded(&["127.0.0.7", "127.0.0.3"]);
        assert_eq!(
            client_ip(proxy, &chained, &[proxy, other]),
            "127.0.0.7".parse::<IpAddr>().unwrap(),
            "trusted hops are skipped"
        );
        assert_eq!(client_ip(proxy, &forwarded(&["junk"]), &[proxy]), proxy);
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &[proxy]), proxy);
    }

    #[test]
    fn forwarded_for_and_peers_are_canonical() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mapped_proxy = ip("::ffff:127.0.0.2");
        let proxy = ip("127.0.0.2");
        assert_eq!(
            client_ip(ip("::ffff:10.1.2.3"), &HeaderMap::new(), &[]),
            ip("10.1.2.3"),
            "a dual-stack listener's IPv4 peer"
        );
        let h = forwarded(&["::ffff:10.9.9.9"]);
        assert_eq!(
            client_ip(mapped_proxy, &h, &[proxy]),
            ip("10.9.9.9"),
            "a mapped peer matches its IPv4 trusted entry; a mapped hop is IPv4"
        );
        assert_eq!(
            client_ip(proxy, &h, &[mapped_proxy]),
            ip("10.9.9.9"),
            "a mapped trusted entry matches its IPv4 peer"
        );
        let chained = forwarded(&["10.9.9.9, ::ffff:127.0.0.2"]);
        assert_eq!(client_ip(proxy, &chained, &[proxy]), ip("10.9.9.9"));
    }
}
