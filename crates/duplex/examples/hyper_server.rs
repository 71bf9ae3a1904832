//! An echo server on plain hyper 1 (no framework), upgrading with `duplex::hyper`, over
//! HTTP/1.1 and over HTTP/2 with prior knowledge (h2c, extended CONNECT enabled: RFC 8441).
//!
//! ```text
//! cargo run -p duplex --features hyper --example hyper_server            # 127.0.0.1:9002
//! cargo run -p duplex --features hyper --example hyper_server -- 0.0.0.0:8080
//! ```
//!
//! Connect to `ws://127.0.0.1:9002/echo` with any client (for instance
//! `duplex connect ws://127.0.0.1:9002/echo`, or `duplex connect --http2` and the
//! `http2_client` example over HTTP/2): every message comes back. The server offers
//! the `echo` subprotocol and permessage-deflate; it greets each connection with one text
//! message saying what was negotiated. Other paths get `404`, requests that are not
//! WebSocket upgrades get `400` or `426` with the reason.

use std::{convert::Infallible, net::SocketAddr};

use duplex::{
    deflate::DeflateConfig,
    hyper::{Body, Upgrade},
    Accept, Config, Message,
};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

/// Answer one request: upgrade `/echo`, refuse the rest.
pub(crate) async fn handle(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() != "/echo" {
        let mut response = Response::new(Body::from("try /echo\n"));
        *response.status_mut() = hyper::StatusCode::NOT_FOUND;
        return Ok(response);
    }
    // The request is validated first (RFC 6455 §4.2.1); a bad one is answered with its status.
    let upgrade = match Upgrade::new(&mut req) {
        Ok(upgrade) => upgrade
            .protocols(["echo"])
            .config(Config::default().deflate(Some(DeflateConfig::default()))),
        Err(rejection) => return Ok(rejection.response()),
    };
    let (response, upgrading) = match upgrade.accept(Accept::default()) {
        Ok(answer) => answer,
        Err(rejection) => return Ok(rejection.response()),
    };
    // The connection is handed over once hyper has sent the 101: wait for it elsewhere.
    tokio::spawn(async move {
        let mut ws = match upgrading.await {
            Ok(ws) => ws,
            Err(e) => return eprintln!("upgrade failed: {e}"),
        };
        let hello = format!(
            "subprotocol {}, permessage-deflate {}",
            ws.subprotocol().unwrap_or("none"),
            if ws.deflate_params().is_some() {
                "on"
            } else {
                "off"
            }
        );
        if ws.send(Message::text(hello)).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = ws.recv().await {
            if ws.send(message).await.is_err() {
                break;
            }
        }
    });
    Ok(response)
}

/// Serve every connection `listener` accepts: HTTP/1.1 with upgrades, or HTTP/2 when it
/// starts with the HTTP/2 preface, announcing `SETTINGS_ENABLE_CONNECT_PROTOCOL`.
pub(crate) async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().enable_connect_protocol();
    loop {
        let (tcp, _) = listener.accept().await?;
        let builder = builder.clone();
        tokio::spawn(async move {
            let connection =
                builder.serve_connection_with_upgrades(TokioIo::new(tcp), service_fn(handle));
            if let Err(e) = connection.await {
                eprintln!("connection: {e}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9002")
        .parse()?;
    let listener = TcpListener::bind(addr).await?;
    println!("listening on ws://{}/echo", listener.local_addr()?);
    serve(listener).await?;
    Ok(())
}
