//! A client through an HTTP `CONNECT` proxy.
//!
//! ```text
//! cargo run -p duplex --example client_proxy -- ws://echo.example.com/ http://proxy.local:3128
//! http_proxy=http://proxy.local:3128 cargo run -p duplex --example client_proxy -- ws://echo.example.com/
//! ```
//!
//! The first argument is the WebSocket URL (`ws://` or, with the default `tls` feature,
//! `wss://`); the second, optional, is the proxy (`http://[user:password@]host[:port]`).
//! Without it the proxy comes from the environment as curl reads it (`http_proxy` for
//! `ws://`, `https_proxy` for `wss://`, `all_proxy`, and `no_proxy`). The example opens a
//! tunnel through the proxy, sends `hello through the proxy`, prints the first message that
//! comes back (an echo server returns the same text) and closes the connection normally.

use duplex::{ClientBuilder, CloseCode, Message};

/// Connect to `url` through `proxy` (or the environment's), send one message and return the
/// first reply as text.
pub(crate) async fn run(url: &str, proxy: Option<&str>) -> duplex::Result<String> {
    let builder = ClientBuilder::new(url);
    let builder = match proxy {
        Some(proxy) => builder.proxy(proxy),
        None => builder.proxy_from_env(true),
    };
    let (mut ws, _response) = builder.connect().await?;
    ws.send(Message::text("hello through the proxy")).await?;
    let reply = match ws.recv().await.transpose()? {
        Some(Message::Text(text)) => text.as_str().to_owned(),
        Some(Message::Binary(data)) => format!("{} binary bytes", data.len()),
        None => "(closed without a reply)".to_owned(),
    };
    ws.close(CloseCode::NORMAL, "bye").await?;
    Ok(reply)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!("usage: client_proxy WS_URL [PROXY_URL]");
        std::process::exit(2);
    };
    let proxy = args.next();
    println!("{}", run(&url, proxy.as_deref()).await?);
    Ok(())
}
