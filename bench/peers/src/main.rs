//! Echo servers on other WebSocket libraries, each written the way its own documentation and
//! examples show, for `cargo xtask bench-peers` to compare with `duplex echo`.
//!
//! ```text
//! bench-peers tokio-tungstenite [ADDR]   # default 127.0.0.1:9002
//! bench-peers fastwebsockets [ADDR]
//! ```
//!
//! Both run on a current-thread tokio runtime (one core, like the pinned `duplex echo
//! --threads 1`). Neither library implements permessage-deflate (RFC 7692): tungstenite ignores
//! the offer and fastwebsockets has no extension support, so at the compressed points of the
//! benchmark duplex meets Bun alone. The JavaScript peers (the Bun echo server, the Bun and
//! Node `ws` hubs) are in `js/`, apart from this crate.

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use tokio::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9002".into())
        .parse()
        .context("bad listen address")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        eprintln!(
            "{which} echo server listening on {}",
            listener.local_addr()?
        );
        match which.as_str() {
            "tokio-tungstenite" => tungstenite::serve(listener).await,
            "fastwebsockets" => fastws::serve(listener).await,
            other => bail!("unknown server {other:?}: tokio-tungstenite or fastwebsockets"),
        }
    })
}

async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            // Out of descriptors and the like: keep serving the others.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// tokio-tungstenite's `echo-server` example: split, filter data messages, forward.
mod tungstenite {
    use futures_util::{future, StreamExt as _, TryStreamExt as _};
    use tokio::net::{TcpListener, TcpStream};

    pub(crate) async fn serve(listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let stream = super::accept(&listener).await;
            tokio::spawn(connection(stream));
        }
    }

    async fn connection(stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        let (write, read) = ws.split();
        let _ = read
            .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
            .forward(write)
            .await;
    }
}

/// fastwebsockets' `echo_server` example: hyper upgrade, `FragmentCollector`, auto close and
/// pong, `unconstrained` connection tasks.
mod fastws {
    use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
    use http_body_util::Empty;
    use hyper::{
        body::{Bytes, Incoming},
        server::conn::http1,
        service::service_fn,
        Request, Response,
    };
    use tokio::net::TcpListener;

    pub(crate) async fn serve(listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let stream = super::accept(&listener).await;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = http1::Builder::new()
                    .serve_connection(io, service_fn(server_upgrade))
                    .with_upgrades()
                    .await;
            });
        }
    }

    async fn server_upgrade(
        mut req: Request<Incoming>,
    ) -> Result<Response<Empty<Bytes>>, WebSocketError> {
        let (response, fut) = upgrade::upgrade(&mut req)?;
        tokio::spawn(async move {
            let _ = tokio::task::unconstrained(connection(fut)).await;
        });
        Ok(response)
    }

    async fn connection(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
        let mut ws = FragmentCollector::new(fut.await?);
        loop {
            let frame = ws.read_frame().await?;
            match frame.opcode {
                OpCode::Close => break,
                OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
                _ => {}
            }
        }
        Ok(())
    }
}
