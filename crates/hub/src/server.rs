//! The listener: binds, serves HTTP and WebSocket on one port, shuts down gracefully.
//!
//! The accept loop is the server's edge. Each TCP connection takes a connection slot when
//! it is accepted, before a byte is read, so that unfinished requests count against
//! `limits.max_connections` and `max_connections_per_ip`; over a limit the connection gets
//! a fixed 503 or 429 and is closed unread. Each connection is then served by hyper's
//! HTTP/1.1 connection with a header timer (`limits.header_timeout`, which also bounds idle
//! keep-alive connections), a head size limit (`limits.max_header_bytes`, 431) and a
//! request timeout (`limits.request_timeout`, 408). A request that upgrades hands the slot
//! to its WebSocket.
//!
//! With `[tls]`, the TLS handshake comes first, inside the connection's slot: it must finish
//! within `limits.header_timeout` (the head then gets its own header timer), and the
//! protocol ALPN settled on picks the HTTP version that serves the stream (see
//! `crate::tls`).
//!
//! HTTP/2 is served on the same port: with TLS when ALPN settles on `h2`, and in cleartext
//! with prior knowledge (h2c) when a connection's first bytes are the HTTP/2 preface
//! (RFC 9113 §3.4). hyper's HTTP/2 connection has extended CONNECT enabled so that `/ws`
//! works over it (RFC 8441), at most `limits.http2_max_concurrent_streams` streams at a time
//! and `limits.max_header_bytes` of header list. The header timer bounds the wait for those
//! first bytes. The first WebSocket of an HTTP/2 connection takes its slot, as on HTTP/1.1;
//! each further one takes a slot of its own, so WebSockets count against the connection
//! limits one by one. An HTTP/2 connection with no stream (no request being answered, no
//! WebSocket) for `limits.http2_idle_timeout` gets GOAWAY and is closed, as an idle
//! keep-alive HTTP/1.1 connection is at its header timer.
//!
//! The first request head of a cleartext connection is due `limits.header_timeout` after the
//! accept; every later head on the same connection gets the whole `header_timeout` again
//! (hyper's header timer).
//!
//! The first request of an HTTP/1.1 stream is read here, before hyper: a valid WebSocket
//! upgrade to `/ws` (the request almost every connection makes) is checked and answered
//! by `ws::serve_direct`, and the connection then holds nothing of an HTTP stack. Every
//! other request, an invalid upgrade included, goes to hyper and the router, which read
//! again the bytes read here.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use bytes::BytesMut;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, ConfigError};
use crate::limits::{ConnectionPermit, LimitError, PermitSlot};
use crate::tls::{HttpVersion, ListenerTls};
use crate::Hub;

/// First and longest pause after an accept error such as EMFILE, so that a process out of
/// file descriptors waits for some to be freed instead of spinning on the listener.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] duplex::TlsError),
    /// Binding or accepting failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The IO error.
        source: std::io::Error,
    },
}

/// A bound server: call [`Server::run`] to serve.
///
/// ```no_run
/// # async fn example() -> Result<(), duplex_hub::ServerError> {
/// let server = duplex_hub::Server::bind(duplex_hub::Config::default()).await?;
/// println!("listening on {}", server.local_addr());
/// server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    hub: Hub,
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<Arc<ListenerTls>>,
}

impl Server {
    /// Builds the hub and binds `config.listen` (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let listen = config.listen;
        let hub = Hub::new(config)?;
        let tls = ListenerTls::new(&hub.config().tls)?.map(Arc::new);
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServerError::Io {
                context: format!("cannot listen on {listen}"),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Io {
            context: "cannot read the bound address".into(),
            source,
        })?;
        Ok(Self {
            hub,
            listener,
            local_addr,
            tls,
        })
    }

    /// Whether the listener serves TLS (`https://`, `wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The hub, e.g. to publish from the same process.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Serves until `shutdown` completes (or [`Hub::shutdown`] is called), then drains:
    /// every WebSocket is closed with 1001 and awaited at most `shutdown_timeout`, while
    /// new connections are still accepted and answered 503 (so that clients and load
    /// balancers see the documented answer, not a refused connection). Idle connections
    /// and unfinished requests are closed at once; requests being answered may finish.
    /// The listener closes when the drain ends.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let hub = self.hub;
        // With a shared broker, the other nodes' server API commands are applied here.
        hub.start_control();
        if hub.config().demo.ticker {
            tokio::spawn(crate::demo::run_ticker(hub.clone()));
        }
        // With `auth.jwks_url`, fetch the keys now rather than on the first client's time.
        let keys_hub = hub.clone();
        tokio::spawn(async move { keys_hub.shared.auth.prefetch().await });
        let signal_hub = hub.clone();
        let mut down = hub.shared.shutdown_signal();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => signal_hub.shutdown(),
                _ = down.wait_for(|d| *d) => {}
            }
        });
        let (phase, phase_rx) = watch::channel(Phase::Serving);
        if let Some(tls) = &self.tls {
            let mut stopped = phase_rx.clone();
            let stop = async move {
                let _ = stopped.wait_for(|p| *p == Phase::Stopped).await;
            };
            tokio::spawn(crate::tls::watch(
                tls.clone(),
                hub.shared.metrics.clone(),
                stop,
            ));
        }
        let edge = Arc::new(Edge::new(&hub, phase_rx, self.tls));
        let accepting = tokio::spawn(accept_loop(self.listener, edge));

        let mut down = hub.shared.shutdown_signal();
        let _ = down.wait_for(|d| *d).await;
        phase.send_replace(Phase::Draining);
        let timeout = hub.config().shutdown_timeout;
        tracing::info!(
            connections = hub.connections(),
            other = hub
                .shared
                .limits
                .open_total()
                .saturating_sub(hub.connections()),
            "shutting down"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let left = hub.drain(timeout).await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "shutdown deadline passed; dropping connections"
            );
        }
        phase.send_replace(Phase::Stopped);
        let mut tasks = match accepting.await {
            Ok(tasks) => tasks,
            Err(e) => {
                tracing::error!(error = %e, "the accept loop failed");
                JoinSet::new()
            }
        };
        // Requests being answered when the drain ended get what is left of the deadline.
        let finish = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, finish).await.is_err() {
            tasks.shutdown().await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Where the server is in its life; every connection task watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Shutdown started: WebSockets are closing, HTTP requests get 503.
    Draining,
    /// The drain ended: the listener is closed, connections end.
    Stopped,
}

/// What every connection task shares.
struct Edge {
    hub: Hub,
    router: Router,
    http: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    phase: watch::Receiver<Phase>,
    request_timeout: Duration,
    header_timeout: Duration,
    http2_idle_timeout: Duration,
    tls: Option<Arc<ListenerTls>>,
}

impl Edge {
    fn new(hub: &Hub, phase: watch::Receiver<Phase>, tls: Option<Arc<ListenerTls>>) -> Self {
        let limits = &hub.config().limits;
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            // Runs from the accept (and again from each response) until a whole head has
            // arrived; bytes trickling in do not extend it.
            .header_read_timeout(limits.header_timeout)
            // Answered with 431 (RFC 6585 §5) once the buffered head reaches the limit.
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes.max(8192));
        Self {
            hub: hub.clone(),
            router: hub.router(),
            http,
            http2: http2_builder(limits),
            phase,
            request_timeout: limits.request_timeout,
            header_timeout: limits.header_timeout,
            http2_idle_timeout: limits.http2_idle_timeout,
            tls,
        }
    }

    /// Whether the connection limits key a connection from `peer` by its address now, or
    /// only once its request names the client (a trusted proxy).
    fn per_ip_key(&self, peer: SocketAddr) -> Option<std::net::IpAddr> {
        let ip = peer.ip().to_canonical();
        let trusted = &self.hub.config().limits.trusted_proxies;
        (!trusted.iter().any(|t| t.to_canonical() == ip)).then_some(ip)
    }

    async fn respond(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        slot: PermitSlot,
    ) -> Response<Body> {
        let http2 = req.version() == axum::http::Version::HTTP_2;
        let mut response = self.answer(req, peer, slot).await;
        if http2 {
            // RFC 9113 §8.2.2: HTTP/2 has no connection-specific header fields; the
            // connection ends with GOAWAY instead of `Connection: close`.
            response.headers_mut().remove(header::CONNECTION);
        }
        response
    }

    async fn answer(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        slot: PermitSlot,
    ) -> Response<Body> {
        let draining = self.hub.is_shutting_down();
        // `/healthz` and `/ws` answer 503 themselves while draining, with their own bodies
        // and metrics.
        if draining && !matches!(req.uri().path(), "/healthz" | "/ws") {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down\n");
        }
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(slot);
        let mut router = self.router.clone();
        let call = tower_service::Service::call(&mut router, req);
        let mut response = match tokio::time::timeout(self.request_timeout, call).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(_) => {
                self.hub.shared.metrics.limit_hit("request_timeout");
                return plain(StatusCode::REQUEST_TIMEOUT, "request timed out\n");
            }
        };
        if draining && response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A short text answer after which the connection closes.
fn plain(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn accept_loop(listener: TcpListener, edge: Arc<Edge>) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    let mut phase = edge.phase.clone();
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        // Reap finished connection tasks so the set holds only live ones.
        while tasks.try_join_next().is_some() {}
        let stopped = async {
            let _ = phase.wait_for(|p| *p == Phase::Stopped).await;
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = ACCEPT_BACKOFF.0;
                admit(&edge, &mut tasks, tcp, peer);
            }
            // The peer gave up between SYN and accept: nothing to do.
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                // EMFILE/ENFILE (23, 24 on Linux and the BSDs) and the like: accept again
                // only after a pause, doubling up to a second.
                if matches!(e.raw_os_error(), Some(23 | 24)) {
                    edge.hub.shared.metrics.limit_hit("file_descriptors");
                }
                tracing::warn!(error = %e, pause = ?backoff, "accept failed; pausing");
                let stopped = async {
                    let _ = phase.wait_for(|p| *p == Phase::Stopped).await;
                };
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped => break,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
    drop(listener);
    tasks
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    )
}

/// Takes a slot for the new connection and serves it, or refuses it unread.
fn admit(edge: &Arc<Edge>, tasks: &mut JoinSet<()>, tcp: TcpStream, peer: SocketAddr) {
    match edge.hub.shared.limits.acquire(edge.per_ip_key(peer)) {
        Ok(permit) => {
            let _ = tcp.set_nodelay(true);
            tasks.spawn(serve_connection(edge.clone(), tcp, peer, permit));
        }
        Err(e) => {
            edge.hub.shared.metrics.limit_hit(e.metric());
            tracing::debug!(%peer, limit = e.metric(), "connection refused at accept");
            if edge.tls.is_some() {
                // An HTTP answer would be garbage to a TLS client, and a TLS handshake
                // just to refuse is the work the limit is there to avoid: close unread.
                discard_unread(&tcp);
            } else {
                refuse_unread(&tcp, e);
            }
        }
    }
}

/// Answers a connection over a limit without parsing its request: a fixed response written
/// without waiting (a new socket's send buffer has room for it), then the socket is closed.
fn refuse_unread(tcp: &TcpStream, e: LimitError) {
    let (status, body) = match e {
        LimitError::Total => ("503 Service Unavailable", "too many connections\n"),
        LimitError::PerIp => (
            "429 Too Many Requests",
            "too many connections from this address\n",
        ),
        // Users are known only after the upgrade request is read; kept for completeness.
        LimitError::PerUser => (
            "429 Too Many Requests",
            "too many connections for this user\n",
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.try_write(response.as_bytes());
    discard_unread(tcp);
}

/// Discards what the client already sent, without waiting for more: closing a socket with
/// unread data makes the kernel send a reset, which can destroy a response before the
/// client reads it.
fn discard_unread(tcp: &TcpStream) {
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        match tcp.try_read(&mut scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// What a connection is doing, for shutdown and for the timers that end it: its requests,
/// each from the head's arrival until the response's body has been sent, and over HTTP/2
/// its WebSocket streams until they end. Shutdown closes a connection with none at once; the
/// HTTP/2 idle timer closes one that has had none for `limits.http2_idle_timeout`.
pub(crate) struct Activity {
    /// Requests in flight and open WebSocket streams.
    open: AtomicUsize,
    /// Whether a request head has arrived on the connection.
    seen: AtomicBool,
    /// When `open` last fell to zero (at first, when the connection was accepted).
    idle_since: parking_lot::Mutex<tokio::time::Instant>,
}

impl Activity {
    fn new(since: tokio::time::Instant) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            idle_since: parking_lot::Mutex::new(since),
        })
    }

    /// Counts one request or stream until the guard is dropped.
    fn enter(self: &Arc<Self>) -> Active {
        self.seen.store(true, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        Active(self.clone())
    }

    fn is_idle(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0
    }

    fn seen(&self) -> bool {
        self.seen.load(Ordering::SeqCst)
    }

    fn idle_since(&self) -> tokio::time::Instant {
        *self.idle_since.lock()
    }
}

/// One request or stream counted in its connection's [`Activity`].
pub(crate) struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since.lock() = tokio::time::Instant::now();
        }
    }
}

/// The request extension through which a WebSocket over HTTP/2 counts as a stream of its
/// connection for as long as it is open (`ws.rs` holds [`Http2Streams::open`]).
#[derive(Clone)]
pub(crate) struct Http2Streams(Arc<Activity>);

impl Http2Streams {
    pub(crate) fn open(&self) -> Active {
        self.0.enter()
    }
}

/// A response body that keeps its request counted as in flight until hyper drops it.
struct Tracked {
    body: Body,
    _in_flight: Active,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves one accepted connection: the TLS handshake when the listener has TLS, then HTTP
/// in the version ALPN chose. The permit is held throughout.
async fn serve_connection(
    edge: Arc<Edge>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: ConnectionPermit,
) {
    let Some(tls) = edge.tls.clone() else {
        return serve_cleartext(edge, tcp, peer, permit).await;
    };
    // A handshake under way when shutdown starts is an unfinished request, closed at once;
    // one that starts while draining goes on, so that its request is answered 503 like a
    // plain connection's, and is closed when the drain ends.
    let mut phase = edge.phase.clone();
    let started = *phase.borrow_and_update();
    if started == Phase::Stopped {
        return;
    }
    let moved_on = async {
        let _ = phase.wait_for(|p| *p != started).await;
    };
    let metrics = &edge.hub.shared.metrics;
    // A client that connects and stalls (or trickles its ClientHello) holds its slot until
    // the header timeout, like an unfinished request head.
    let handshake = tokio::time::timeout(edge.header_timeout, tls.acceptor().accept(tcp));
    let stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                metrics.tls_handshake_failure("error");
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                metrics.tls_handshake_failure("timeout");
                metrics.limit_hit("header_timeout");
                tracing::debug!(%peer, "TLS handshake not finished in time; closed");
                return;
            }
        },
        () = moved_on => return,
    };
    let version = HttpVersion::from_alpn(stream.get_ref().1.alpn_protocol());
    // The head gets a timer of its own after the handshake.
    let first_head_by = tokio::time::Instant::now().checked_add(edge.header_timeout);
    match version {
        HttpVersion::Http1 => serve_opening(edge, stream, peer, permit, first_head_by, false).await,
        HttpVersion::Http2 => {
            serve_stream(edge, stream, version, peer, permit, first_head_by).await
        }
    }
}

/// Serves a cleartext connection: HTTP/2 with prior knowledge when its first bytes are the
/// preface, HTTP/1.1 otherwise.
async fn serve_cleartext(
    edge: Arc<Edge>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: ConnectionPermit,
) {
    // The first head is due `header_timeout` after the accept, the time its first bytes took
    // included.
    let first_head_by = tokio::time::Instant::now().checked_add(edge.header_timeout);
    serve_opening(edge, tcp, peer, permit, first_head_by, true).await;
}

/// Reads the first request of a stream that speaks HTTP/1.1 (or, with `preface`, may open
/// with HTTP/2's preface) and serves the stream accordingly: a WebSocket upgrade to `/ws`
/// directly ([`crate::ws::serve_direct`]), everything else through hyper, which reads
/// again the bytes read here.
async fn serve_opening<S>(
    edge: Arc<Edge>,
    mut io: S,
    peer: SocketAddr,
    permit: ConnectionPermit,
    first_head_by: Option<tokio::time::Instant>,
    preface: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Until its first request the connection is idle: the drain (or its end, for one
    // accepted while draining) closes it at once, as it closes an idle HTTP connection.
    let mut phase = edge.phase.clone();
    let accepted_in = *phase.borrow_and_update();
    let max_head = edge.hub.config().limits.max_header_bytes;
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let read = read_opening(&mut io, &mut buf, max_head, preface);
    let opened = tokio::select! {
        opened = read => opened,
        () = sleep_until_some(first_head_by) => {
            edge.hub.shared.metrics.limit_hit("header_timeout");
            tracing::debug!(%peer, "request head not received in time; closed");
            return;
        }
        _ = phase.wait_for(|p| *p != accepted_in) => {
            tracing::debug!(%peer, "closing an idle connection for shutdown");
            return;
        }
    };
    let version = match opened {
        Ok(Opening::WebSocket(request, used)) => {
            let leftover = buf.split_off(used);
            drop(buf);
            let hub = edge.hub.clone();
            drop(edge);
            crate::ws::serve_direct(hub, io, request, leftover, peer, permit).await;
            return;
        }
        Ok(Opening::Http2) => HttpVersion::Http2,
        Ok(Opening::Http1) => HttpVersion::Http1,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection closed before a request");
            return;
        }
    };
    let io = Replay {
        prefix: buf.freeze(),
        io,
    };
    serve_stream(edge, io, version, peer, permit, first_head_by).await;
}

/// Serves HTTP on one accepted stream (plain TCP, or TLS after its handshake) in the version
/// that was negotiated. Over HTTP/1.1 the first head must arrive by `first_head_by`, and each
/// later one within `header_timeout`; over HTTP/2 the connection ends after
/// `http2_idle_timeout` without a stream.
async fn serve_stream<S>(
    edge: Arc<Edge>,
    io: S,
    version: HttpVersion,
    peer: SocketAddr,
    permit: ConnectionPermit,
    first_head_by: Option<tokio::time::Instant>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slot = PermitSlot::new(permit);
    let activity = Activity::new(tokio::time::Instant::now());
    let http2 = version == HttpVersion::Http2;
    let service = {
        let edge = edge.clone();
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let edge = edge.clone();
            let slot = slot.clone();
            let guard = activity.enter();
            if http2 {
                req.extensions_mut().insert(Http2Streams(activity.clone()));
            }
            async move {
                let response = edge.respond(req, peer, slot).await;
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body,
                    _in_flight: guard,
                }))
            }
        })
    };
    if http2 {
        let conn = edge.http2.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let timer = Timer::Idle(edge.http2_idle_timeout);
        let result = drive(&edge, peer, &activity, timer, conn, |c| {
            c.graceful_shutdown()
        })
        .await;
        if let Some(Err(e)) = result {
            if is_calm_down(&e) {
                edge.hub.shared.metrics.limit_hit("http2_flood");
                tracing::debug!(%peer, error = %e, "HTTP/2 connection closed for flooding");
            } else {
                tracing::debug!(%peer, error = %e, "HTTP/2 connection error");
            }
        }
        return;
    }
    // hyper's header timer (the whole `header_timeout`, from each response) bounds every head
    // after the first; the first one is held to `first_head_by` here.
    let conn = edge
        .http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let timer = Timer::FirstHead(first_head_by);
    let result = drive(&edge, peer, &activity, timer, conn, |c| {
        c.graceful_shutdown()
    })
    .await;
    if let Some(Err(e)) = result {
        let metrics = &edge.hub.shared.metrics;
        if e.is_timeout() {
            metrics.limit_hit("header_timeout");
            tracing::debug!(%peer, "request head not received in time; closed");
        } else if e.is_parse_too_large() {
            metrics.limit_hit("header_size");
            tracing::debug!(%peer, "request head too large; answered 431");
        } else {
            tracing::debug!(%peer, error = %e, "HTTP connection error");
        }
    }
}

/// What ends a connection besides the drain and the connection itself.
#[derive(Debug, Clone, Copy)]
enum Timer {
    /// HTTP/1.1: the first request head is due by then; it is closed if none has come.
    FirstHead(Option<tokio::time::Instant>),
    /// HTTP/2: after this long with no stream it gets GOAWAY, and is closed.
    Idle(Duration),
}

/// How long a connection told to close (GOAWAY after its idle timeout) may take to finish:
/// a peer that never reads or never acknowledges is not waited for longer.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Whether an HTTP/2 connection ended because hyper's HTTP/2 layer saw a flood (rapid
/// resets, too many errors it had to reset) and sent GOAWAY `ENHANCE_YOUR_CALM`.
fn is_calm_down(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(h2) = inner.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        source = inner.source();
    }
    false
}

/// Serves `conn` until it ends, or until the drain or `timer` ends it: `None` when it was
/// closed for either. `graceful` is the connection's own graceful shutdown (HTTP/1.1 or
/// HTTP/2).
async fn drive<C>(
    edge: &Edge,
    peer: SocketAddr,
    activity: &Activity,
    timer: Timer,
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
) -> Option<Result<(), hyper::Error>>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut phase = edge.phase.clone();
    // A connection accepted while draining is answered (503 with `Connection: close`, which
    // ends it after the response): hyper's graceful shutdown would close it unanswered,
    // since no request has started yet. It is closed like the others when the drain ends,
    // and one accepted after that is closed at once.
    if *phase.borrow_and_update() == Phase::Stopped {
        return None;
    }
    let mut watching = true;
    // Once the idle timer has sent GOAWAY: when the connection is dropped if it has not
    // ended by itself.
    let mut closing: Option<tokio::time::Instant> = None;
    loop {
        let now = tokio::time::Instant::now();
        let wake = match (timer, closing) {
            (_, Some(by)) => Some(by),
            (Timer::FirstHead(by), None) => by.filter(|_| !activity.seen()),
            // While busy, look again a whole timeout later: it cannot expire sooner. (A
            // timeout too long to add is no timeout.)
            (Timer::Idle(after), None) if activity.is_idle() => {
                activity.idle_since().checked_add(after)
            }
            (Timer::Idle(after), None) => now.checked_add(after),
        };
        tokio::select! {
            result = conn.as_mut() => return Some(result),
            changed = phase.changed(), if watching => {
                watching = changed.is_ok()
                    && *phase.borrow_and_update() == Phase::Draining;
                // Shutdown: no more keep-alive; an idle connection or an unfinished
                // request has nothing worth waiting for and is closed at once. (Over
                // HTTP/2 its WebSockets are being closed with 1001; the connection ends
                // after them.)
                graceful(conn.as_mut());
                if activity.is_idle() {
                    tracing::debug!(%peer, "closing an idle connection for shutdown");
                    return None;
                }
            }
            () = sleep_until_some(wake) => match (timer, closing) {
                (_, Some(_)) => {
                    tracing::debug!(%peer, "HTTP/2 connection did not close after GOAWAY; dropped");
                    return None;
                }
                (Timer::FirstHead(_), None) => {
                    if !activity.seen() {
                        edge.hub.shared.metrics.limit_hit("header_timeout");
                        tracing::debug!(%peer, "request head not received in time; closed");
                        return None;
                    }
                }
                (Timer::Idle(after), None) => {
                    let now = tokio::time::Instant::now();
                    let due = activity.idle_since().checked_add(after);
                    if activity.is_idle() && due.is_some_and(|due| due <= now) {
                        edge.hub.shared.metrics.limit_hit("http2_idle_timeout");
                        tracing::debug!(%peer, "idle HTTP/2 connection; GOAWAY");
                        graceful(conn.as_mut());
                        closing = now.checked_add(CLOSE_GRACE);
                    }
                }
            },
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The HTTP/2 connection settings: extended CONNECT for WebSockets, and the limits.
fn http2_builder(limits: &crate::config::Limits) -> http2::Builder<TokioExecutor> {
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        // RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1, without which a client does not
        // send an extended CONNECT.
        .enable_connect_protocol()
        // RFC 9113 §6.5.2: streams beyond it are refused by the HTTP/2 layer.
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        // The HTTP/2 counterpart of the head size limit (SETTINGS_MAX_HEADER_LIST_SIZE).
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): streams the client resets before they are served
        // count, and past this the connection gets GOAWAY ENHANCE_YOUR_CALM. Set here, not
        // left to the HTTP/2 layer's default, so that an upgrade cannot lift it unnoticed.
        .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_RESETS)
        // The same for streams the server itself has to reset for the client's errors
        // (RUSTSEC-2024-0003).
        .max_local_error_reset_streams(HTTP2_MAX_LOCAL_ERROR_RESETS);
    http2
}

/// Streams reset by the client before they were served, at most, on one HTTP/2 connection.
const HTTP2_MAX_PENDING_RESETS: usize = 20;

/// Streams the server reset for the client's errors, at most, on one HTTP/2 connection.
const HTTP2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// RFC 9113 §3.4: "the connection preface starts with the string
/// PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much of a connection's first request is read at once: a WebSocket upgrade from a
/// browser fits, most others too.
const FIRST_READ: usize = 2048;

/// What a stream's first bytes open.
#[derive(Debug)]
enum Opening {
    /// The HTTP/2 preface.
    Http2,
    /// Anything else HTTP/1.1 serves, or refuses (hyper reads again what was read).
    Http1,
    /// A complete and valid WebSocket upgrade to `/ws`, and the length of its head.
    WebSocket(duplex::Request, usize),
}

/// Reads `io` into `buf` until its first bytes tell how the stream is served: most requests
/// differ from the HTTP/2 preface and from `GET /ws` at their first bytes, and a WebSocket
/// upgrade to `/ws` is read until its head is complete (at most `max_head` bytes).
///
/// # Errors
/// The read error; a stream closed before a byte is `UnexpectedEof`.
async fn read_opening<S>(
    io: &mut S,
    buf: &mut BytesMut,
    max_head: usize,
    preface: bool,
) -> std::io::Result<Opening>
where
    S: AsyncRead + Unpin,
{
    loop {
        if buf.capacity() - buf.len() < FIRST_READ / 4 {
            buf.reserve(FIRST_READ);
        }
        if io.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            // A short request: HTTP/1.1 answers (or refuses) it.
            return Ok(Opening::Http1);
        }
        if let Some(opening) = opening(buf, max_head, preface) {
            return Ok(opening);
        }
    }
}

/// What the bytes read so far open, or `None` while they could still be the HTTP/2 preface
/// or an incomplete upgrade to `/ws`.
fn opening(buf: &[u8], max_head: usize, preface: bool) -> Option<Opening> {
    /// The start of a request for `/ws`, with or without a query.
    const WS: &[u8] = b"GET /ws";
    if preface && is_prefix(buf, H2_PREFACE) {
        return (buf.len() >= H2_PREFACE.len()).then_some(Opening::Http2);
    }
    if buf.len() <= WS.len() {
        return if is_prefix(buf, WS) {
            None
        } else {
            Some(Opening::Http1)
        };
    }
    if !buf.starts_with(WS) || !matches!(buf[WS.len()], b' ' | b'?') {
        return Some(Opening::Http1);
    }
    match duplex_proto::handshake::server::parse_request(buf, max_head) {
        Ok(Some((request, used))) => Some(Opening::WebSocket(request, used)),
        Ok(None) if buf.len() < max_head => None,
        // Too large, or not a valid upgrade: hyper answers it (431, 400, 426) through the
        // router, with the metrics of a refused upgrade.
        Ok(None) | Err(_) => Some(Opening::Http1),
    }
}

/// Whether `buf` and `text` agree on their common length.
fn is_prefix(buf: &[u8], text: &[u8]) -> bool {
    let n = buf.len().min(text.len());
    buf[..n] == text[..n]
}

/// A stream whose first bytes, already read by [`read_opening`], are read again.
struct Replay<S> {
    prefix: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
