//! A client opening WebSockets over HTTP/2 (RFC 8441): three on one connection.
//!
//! ```text
//! cargo run -p duplex --features hyper --example hyper_server     # in another terminal
//! cargo run -p duplex --features http2 --example http2_client     # ws://127.0.0.1:9002/echo
//! cargo run -p duplex --features http2 --example http2_client -- wss://example.com/echo
//! ```
//!
//! It connects with `ClientBuilder::http2`, says whether the server took the WebSocket over
//! HTTP/2 or the client fell back to HTTP/1.1, opens two more WebSockets on the same HTTP/2
//! connection (each its own stream), sends one message on each, prints everything that
//! arrives until its echo, and closes them.

use duplex::{ClientBuilder, CloseCode, Message, WebSocket};

/// Run the client against `url`; returns the lines it printed.
pub(crate) async fn run(url: &str) -> duplex::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut say = |line: String| {
        println!("{line}");
        lines.push(line);
    };
    let (first, _response) = ClientBuilder::new(url).http2(true).connect().await?;
    let mut sockets = vec![first];
    match sockets[0].get_ref().http2() {
        Some(stream) => {
            say("over HTTP/2".to_owned());
            let connection = stream.connection().clone();
            for _ in 0..2 {
                sockets.push(connection.connect(ClientBuilder::new(url)).await?.0);
            }
        }
        None => say("over HTTP/1.1: the server does not take WebSockets over HTTP/2".to_owned()),
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        for line in echo(ws, &format!("hello from WebSocket {i}")).await? {
            say(format!("{i}: {line}"));
        }
    }
    for mut ws in sockets {
        ws.close(CloseCode::NORMAL, "done").await?;
    }
    Ok(lines)
}

/// Send `text`, and read until it comes back: the messages received, the echo last.
async fn echo<S>(ws: &mut WebSocket<S>, text: &str) -> duplex::Result<Vec<String>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text.to_owned())).await?;
    let mut received = Vec::new();
    while let Some(message) = ws.recv().await {
        let message = message?;
        let shown = message
            .as_text()
            .map_or_else(|| format!("{} bytes", message.len()), str::to_owned);
        let done = shown == text;
        received.push(shown);
        if done {
            break;
        }
    }
    Ok(received)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:9002/echo".to_owned());
    run(&url).await?;
    Ok(())
}
