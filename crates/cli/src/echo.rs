//! `duplex echo`: a WebSocket echo server.

use std::net::SocketAddr;

use anyhow::Context as _;
use duplex::{Config, ServerConfig};
use tokio::net::{TcpListener, TcpStream};

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
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    rt.enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "echo server listening");
    let config = ServerConfig::default().connection(
        Config::default()
            .max_message_size(args.max_message_size)
            .max_frame_size(args.max_message_size),
    );
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
        let config = config.clone();
        tokio::spawn(async move {
            if let Err(e) = echo(tcp, config).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn echo(tcp: TcpStream, config: ServerConfig) -> duplex::Result<()> {
    tcp.set_nodelay(true)?;
    let mut ws = duplex::accept_with(tcp, config, |_| Ok(Default::default())).await?;
    while let Some(message) = ws.recv().await {
        ws.send(message?).await?;
    }
    Ok(())
}
