//! `duplex echo`: a WebSocket echo server, over ws:// or wss://.

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin};

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
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the others.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let start = Box::new(Start {
            tcp,
            config: config.clone(),
            acceptor: acceptor.clone(),
        });
        tokio::spawn(async move {
            if let Err(e) = connection(start).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// What a connection starts from, boxed so that the spawned task does not keep it.
struct Start {
    tcp: TcpStream,
    config: ServerConfig,
    acceptor: Option<TlsAcceptor>,
}

/// One connection.
///
/// The handshakes run in a boxed future that is freed once they are done, and the echo loop
/// of a plain connection runs inline, so the spawned task keeps only the `WebSocket` for the
/// connection's lifetime. (A task is as large as its largest state: with the handshake and TLS
/// states inline, every idle connection held several KiB.)
async fn connection(start: Box<Start>) -> anyhow::Result<()> {
    let Some(mut ws) = handshake(*start).await? else {
        return Ok(());
    };
    while let Some(message) = ws.recv().await {
        ws.send(message?).await?;
    }
    Ok(())
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
        while let Some(message) = ws.recv().await {
            ws.send(message?).await?;
        }
        Ok(None)
    })
}

async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: ServerConfig,
) -> duplex::Result<WebSocket<S>> {
    duplex::accept_with(io, config, |_| Ok(Default::default())).await
}
