//! `duplex echo`: a WebSocket echo server, over ws:// or wss://.
//!
//! With `--http2` it also serves WebSockets over HTTP/2 (RFC 8441) on the same port: a
//! cleartext connection whose first bytes are the HTTP/2 preface is served as HTTP/2 with
//! prior knowledge (h2c, RFC 9113 §3.3), and with TLS ALPN offers `h2` before `http/1.1`.
//! Each extended CONNECT stream is one WebSocket, echoed like an HTTP/1.1 one.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use duplex::{
    deflate::DeflateConfig,
    hyper::{Body, Upgrade},
    tls::TlsAcceptor,
    Accept, Config, ServerConfig, WebSocket,
};
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};

/// Options of `duplex echo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(
        long,
        short,
        default_value = "127.0.0.1:9001",
        env = "DUPLEX_ECHO_LISTEN"
    )]
    listen: SocketAddr,
    /// Worker threads (default: one per core). 1 runs a current-thread runtime: no work
    /// stealing and no cross-thread wake-ups, the cheapest way to serve from one core.
    #[arg(long)]
    threads: Option<usize>,
    /// Largest message accepted, in bytes; larger ones are refused with close code 1009.
    #[arg(long, default_value_t = 64 << 20)]
    max_message_size: usize,
    /// Decline permessage-deflate (by default it is accepted when a client offers it).
    #[arg(long)]
    no_deflate: bool,
    /// Serve wss://: the PEM certificate chain, leaf first (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A subprotocol to agree to when offered, most preferred first (repeatable).
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// Serve WebSockets over HTTP/2 too (RFC 8441): h2c with prior knowledge on a plain
    /// connection that opens with the HTTP/2 preface, ALPN `h2` with TLS.
    #[arg(long)]
    http2: bool,
    /// With --http2: streams (WebSockets) open at a time on one HTTP/2 connection; more are
    /// refused by the HTTP/2 layer (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, default_value_t = 1024, value_name = "N", requires = "http2")]
    http2_max_streams: u32,
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut rt = match args.threads {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.worker_threads(n);
            rt
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    rt.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let mut tls = Arc::unwrap_or_clone(duplex::tls::server_config_from_pem(cert, key)?);
            if args.http2 {
                // RFC 7301: the server picks the first of its own list the client offers.
                tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            }
            Some(TlsAcceptor::from(Arc::new(tls)))
        }
        _ => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = acceptor.is_some(),
        http2 = args.http2,
        "echo server listening"
    );
    let config = ServerConfig::default()
        .connection(
            Config::default()
                .max_message_size(args.max_message_size)
                .max_frame_size(args.max_message_size)
                .deflate((!args.no_deflate).then(DeflateConfig::default)),
        )
        .subprotocols(args.subprotocols);
    let http2 = args
        .http2
        .then(|| Arc::new(Http2::new(&config, args.http2_max_streams)));
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the others.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let task = Connection::Opening(handshake(Start {
            tcp,
            config: config.clone(),
            acceptor: acceptor.clone(),
            http2: http2.clone(),
        }));
        tracing::trace!(bytes = std::mem::size_of_val(&task), "connection task");
        tokio::spawn(task);
    }
}

/// What a connection starts from.
struct Start {
    tcp: TcpStream,
    config: ServerConfig,
    acceptor: Option<TlsAcceptor>,
    http2: Option<Arc<Http2>>,
}

/// One connection's task.
///
/// An idle connection's memory is mostly its task, and a task is as large as its largest
/// state. So the handshakes (and the whole of a wss:// connection) run in a boxed future that
/// is freed once they are done, and a plain connection then holds its `WebSocket` and nothing
/// else: no peer address (looked up only to log an error), no future of `recv`/`send`.
// The open state is the large one on purpose: it is what the task holds for its lifetime;
// boxing it would add an allocation (and a larger total) to every connection.
#[allow(clippy::large_enum_variant)]
enum Connection {
    Opening(Handshake),
    Open(WebSocket<TcpStream>),
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Self::Opening(handshake) => match ready!(handshake.as_mut().poll(cx)) {
                    Ok(Some(ws)) => *this = Self::Open(ws),
                    Ok(None) => return Poll::Ready(()),
                    Err(e) => {
                        tracing::debug!(error = %e, "connection failed");
                        return Poll::Ready(());
                    }
                },
                Self::Open(ws) => {
                    if let Err(e) = ready!(poll_echo(ws, cx)) {
                        let peer = ws.get_ref().peer_addr().ok();
                        tracing::debug!(?peer, error = %e, "connection ended with an error");
                    }
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The boxed handshake future: the open plain connection, or `None` after a whole wss://
/// or HTTP/2 connection.
type Handshake = Pin<Box<dyn Future<Output = anyhow::Result<Option<WebSocket<TcpStream>>>> + Send>>;

/// The opening handshake of a plain connection, or (returning `None`) a whole wss:// or
/// HTTP/2 connection, in a boxed future.
fn handshake(start: Start) -> Handshake {
    let Start {
        tcp,
        config,
        acceptor,
        http2,
    } = start;
    Box::pin(async move {
        tcp.set_nodelay(true)?;
        let Some(acceptor) = acceptor else {
            if let Some(http2) = http2 {
                if opens_with_preface(&tcp, config.handshake_timeout).await? {
                    http2.serve(tcp).await?;
                    return Ok(None);
                }
            }
            return Ok(Some(accept(tcp, config).await?));
        };
        let tls = tokio::time::timeout(config.handshake_timeout, acceptor.accept(tcp))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake failed")?;
        if let Some(http2) = http2 {
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                http2.serve(tls).await?;
                return Ok(None);
            }
        }
        let mut ws = accept(tls, config).await?;
        std::future::poll_fn(|cx| poll_echo(&mut ws, cx)).await?;
        Ok(None)
    })
}

/// Send every message back until the connection ends.
///
/// Each message is queued as it is taken (the `Sink` way: ready, then `start_send`);
/// `poll_recv` writes the queue before it next reads, so the echoes of one read leave in one
/// write, and it stops reading while the peer does not take what is written. Past
/// `Config::write_buffer_limit`, `poll_ready` writes the queue before the next message.
fn poll_echo<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocket<S>,
    cx: &mut Context<'_>,
) -> Poll<duplex::Result<()>> {
    loop {
        // Only while open: once closing, nothing more is sent and receiving ends the loop.
        if ws.state() == duplex::State::Open {
            ready!(ws.poll_ready(cx))?;
        }
        match ready!(ws.poll_recv(cx)) {
            Some(Ok(message)) => {
                if let Err(e) = futures_util::Sink::start_send(Pin::new(&mut *ws), message) {
                    return Poll::Ready(Err(e));
                }
            }
            Some(Err(e)) => return Poll::Ready(Err(e)),
            None => return Poll::Ready(Ok(())),
        }
    }
}

async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: ServerConfig,
) -> duplex::Result<WebSocket<S>> {
    duplex::accept_with(io, config, |_| Ok(Default::default())).await
}

/// Holds an HTTP/2 stream whose WebSocket has ended until the client ends its side too, for
/// at most `timeout`.
///
/// RFC 8441 §5 makes END_STREAM the stream's TCP FIN, which the WebSocket has sent. But a
/// stream dropped while the client's side is still open is reset (RST_STREAM CANCEL), and
/// the HTTP/2 layer then discards the DATA it has not written yet: the last frames, the close
/// frame among them, would be lost in a race with the connection's writer. The client ends
/// its side once it has the close (RFC 6455 §7.1.1), so this wait is short.
async fn linger(mut io: duplex::hyper::UpgradedIo, timeout: Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // Already done when the WebSocket closed cleanly; after a failure it may not be.
    let _ = io.shutdown().await;
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(timeout, async {
        while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// RFC 9113 §3.4: "the connection preface starts with the string
/// PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the connection's first bytes are the HTTP/2 preface, looked at without taking
/// them (`peek`), so that an HTTP/1.1 connection goes on as a plain `TcpStream`. Most
/// requests differ at the first byte; a client that sends part of the preface and stalls
/// is given the handshake timeout, as a slow HTTP/1.1 head is.
///
/// # Errors
/// The read error, or a timeout.
async fn opens_with_preface(tcp: &TcpStream, timeout: Duration) -> anyhow::Result<bool> {
    let look = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = tcp.peek(&mut buf).await?;
            let (seen, want) = (&buf[..n], &H2_PREFACE[..n]);
            if n == 0 || seen != want {
                // Closed before a byte, or not HTTP/2: the HTTP/1.1 handshake answers it.
                return Ok::<_, std::io::Error>(false);
            }
            if n == H2_PREFACE.len() {
                return Ok(true);
            }
            // Part of the preface: `peek` returns at once while those bytes are unread, so
            // wait a little for the rest instead of spinning.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    Ok(tokio::time::timeout(timeout, look)
        .await
        .context("no request in time")??)
}

/// The HTTP/2 side: hyper's HTTP/2 connection with extended CONNECT, each WebSocket stream
/// echoed on a task of its own.
struct Http2 {
    builder: http2::Builder<TokioExecutor>,
    /// The connection settings of every WebSocket, permessage-deflate included: negotiated
    /// by the same `Accept::negotiate` as on HTTP/1.1.
    connection: Arc<Config>,
    subprotocols: Arc<[String]>,
}

impl Http2 {
    fn new(config: &ServerConfig, max_streams: u32) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1, without which a client does
            // not send an extended CONNECT.
            .enable_connect_protocol()
            .max_concurrent_streams(max_streams)
            // The HTTP/2 counterpart of the HTTP/1.1 head size limit.
            .max_header_list_size(u32::try_from(config.max_head_size).unwrap_or(u32::MAX));
        Self {
            builder,
            connection: config.connection.clone(),
            subprotocols: config.subprotocols.clone().into(),
        }
    }

    /// Serves one HTTP/2 connection until it ends.
    async fn serve<S>(self: Arc<Self>, io: S) -> anyhow::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let service = hyper::service::service_fn(move |mut req| {
            let response = this.respond(&mut req);
            async move { Ok::<_, Infallible>(response) }
        });
        self.builder
            .serve_connection(TokioIo::new(io), service)
            .await
            .context("HTTP/2 connection")
    }

    /// Answers one request: 200 and an echoed WebSocket for a valid extended CONNECT, the
    /// refusal (400 and the reason) for anything else.
    fn respond(&self, req: &mut hyper::Request<hyper::body::Incoming>) -> hyper::Response<Body> {
        let upgrade = match Upgrade::new(req) {
            Ok(upgrade) => upgrade
                .config(self.connection.clone())
                .protocols(self.subprotocols.iter()),
            Err(rejection) => return rejection.response(),
        };
        match upgrade.accept(Accept::default()) {
            Ok((response, upgrading)) => {
                let close_timeout = self.connection.close_timeout;
                tokio::spawn(async move {
                    let result = match upgrading.await {
                        Ok(mut ws) => {
                            let echoed = std::future::poll_fn(|cx| poll_echo(&mut ws, cx)).await;
                            linger(ws.into_inner(), close_timeout).await;
                            echoed.map_err(anyhow::Error::from)
                        }
                        Err(e) => Err(e.into()),
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "HTTP/2 stream ended with an error");
                    }
                });
                response
            }
            Err(rejection) => rejection.response(),
        }
    }
}
