//! `duplex echo`: a WebSocket echo server, over ws:// or wss://.

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    task::{ready, Context, Poll},
};

use anyhow::Context as _;
use duplex::{deflate::DeflateConfig, tls::TlsAcceptor, Config, ServerConfig, WebSocket};
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
        (Some(cert), Some(key)) => Some(duplex::tls::acceptor_from_pem(cert, key)?),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = acceptor.is_some(),
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
/// connection.
type Handshake = Pin<Box<dyn Future<Output = anyhow::Result<Option<WebSocket<TcpStream>>>> + Send>>;

/// The opening handshake of a plain connection, or (returning `None`) a whole wss://
/// connection, in a boxed future.
fn handshake(start: Start) -> Handshake {
    let Start {
        tcp,
        config,
        acceptor,
    } = start;
    Box::pin(async move {
        tcp.set_nodelay(true)?;
        let Some(acceptor) = acceptor else {
            return Ok(Some(accept(tcp, config).await?));
        };
        let tls = tokio::time::timeout(config.handshake_timeout, acceptor.accept(tcp))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake failed")?;
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
