//! One `Prepared` frame to many connections, with the two-step (async) accept.
//!
//! ```text
//! cargo run -p duplex --example broadcast            # 127.0.0.1:9003
//! cargo run -p duplex --example broadcast -- 0.0.0.0:8080
//! ```
//!
//! Connect any number of clients to `ws://127.0.0.1:9003/?name=alice` (for instance
//! `duplex connect 'ws://127.0.0.1:9003/?name=alice'`). Each connection is checked by an
//! asynchronous lookup before it is accepted (here: a name is required, and `mallory` is
//! refused with `403`); accepted ones get a `Hello: alice` header. Once a second the server
//! frames one `tick N` message and writes that same frame to every connection: the message
//! is encoded once, whatever the number of clients.

use std::{net::SocketAddr, time::Duration};

use duplex::{Accept, Incoming, Prepared, Reject, ServerConfig};
use tokio::{net::TcpListener, sync::broadcast};

/// Stands for a database or an authorization service: awaited before answering.
async fn lookup(name: &str) -> Result<String, Reject> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    match name {
        "" => Err(Reject::new(400, "add ?name=... to the URL")),
        "mallory" => Err(Reject::new(403, "not you, mallory")),
        name => Ok(name.to_owned()),
    }
}

/// The `name` query parameter, if any.
fn name_of(query: Option<&str>) -> &str {
    query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("name="))
        .unwrap_or_default()
}

/// Accept connections on `listener` and write every frame sent on `frames` to each of them.
pub(crate) async fn serve(
    listener: TcpListener,
    frames: broadcast::Sender<Prepared>,
) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let mut rx = frames.subscribe();
        tokio::spawn(async move {
            // Read and validate the request, bounded by the handshake timeout.
            let Ok(incoming) = Incoming::read(tcp, ServerConfig::default()).await else {
                return;
            };
            let name = name_of(incoming.request().query()).to_owned();
            let mut ws = match lookup(&name).await {
                Ok(user) => match incoming
                    .accept(Accept::default().header("Hello", user))
                    .await
                {
                    Ok(ws) => ws,
                    Err(_) => return,
                },
                Err(reject) => {
                    let _ = incoming.reject(reject).await;
                    return;
                }
            };
            loop {
                tokio::select! {
                    // Both are cancel-safe: whichever loses the race loses nothing.
                    frame = rx.recv() => match frame {
                        Ok(frame) => {
                            if ws.send_prepared(&frame).await.is_err() {
                                break;
                            }
                        }
                        // Too slow to keep up: skip what was missed.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    incoming = ws.recv() => match incoming {
                        // Messages from clients are ignored; the end of the stream ends this.
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9003")
        .parse()?;
    let listener = TcpListener::bind(addr).await?;
    println!("listening on ws://{}/?name=you", listener.local_addr()?);
    let (frames, _) = broadcast::channel(16);
    let ticker = frames.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        for n in 1.. {
            interval.tick().await;
            // Framed once here, written as it is to every connection.
            let _ = ticker.send(Prepared::text(format!("tick {n}")));
        }
    });
    serve(listener, frames).await?;
    Ok(())
}
