//! `duplex echo`: a WebSocket echo server, over ws:// or wss://.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use duplex::{deflate::DeflateConfig, tls::TlsAcceptor, Config, ServerConfig};
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
    /// Worker threads (default: one per core).
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
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
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
        let (config, acceptor) = (config.clone(), acceptor.clone());
        tokio::spawn(async move {
            if let Err(e) = accept(tcp, config, acceptor).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn accept(
    tcp: TcpStream,
    config: ServerConfig,
    acceptor: Option<TlsAcceptor>,
) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let Some(acceptor) = acceptor else {
        return Ok(echo(tcp, config).await?);
    };
    let tls = tokio::time::timeout(config.handshake_timeout, acceptor.accept(tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake failed")?;
    Ok(echo(tls, config).await?)
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: ServerConfig,
) -> duplex::Result<()> {
    let mut ws = duplex::accept_with(io, config, |_| Ok(Default::default())).await?;
    while let Some(message) = ws.recv().await {
        ws.send(message?).await?;
    }
    Ok(())
}
