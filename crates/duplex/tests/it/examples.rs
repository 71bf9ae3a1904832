//! The examples' cores, run: each example keeps its server (or client) in a function that
//! these tests call, so what the examples promise in their header comments is checked.

use std::time::Duration;

use duplex::{ClientBuilder, Error, Message};
use tokio::{net::TcpListener, time::timeout};

#[cfg(feature = "hyper")]
#[allow(dead_code)]
#[path = "../../examples/hyper_server.rs"]
mod hyper_server;

#[allow(dead_code)]
#[path = "../../examples/broadcast.rs"]
mod broadcast;

#[cfg(feature = "http2")]
#[allow(dead_code)]
#[path = "../../examples/http2_client.rs"]
mod http2_client;

#[cfg(feature = "axum")]
#[allow(dead_code)]
#[path = "../../examples/axum_chat.rs"]
mod axum_chat;

#[cfg(feature = "tls")]
#[allow(dead_code)]
#[path = "../../examples/client_proxy.rs"]
mod client_proxy;

const LIMIT: Duration = Duration::from_secs(20);

async fn listener() -> (TcpListener, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// The next text message, within the limit.
async fn text<S>(ws: &mut duplex::WebSocket<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match timeout(LIMIT, ws.recv()).await.expect("in time") {
        Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
        other => panic!("{other:?}"),
    }
}

#[cfg(feature = "hyper")]
#[tokio::test]
async fn hyper_server_echoes_with_subprotocol_and_deflate() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(hyper_server::serve(listener));
    let (mut ws, _) = ClientBuilder::new(format!("ws://{addr}/echo"))
        .subprotocol("echo")
        .deflate(Some(duplex::deflate::DeflateConfig::default()))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        text(&mut ws).await,
        "subprotocol echo, permessage-deflate on"
    );
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(text(&mut ws).await, "hello");
    let err = ClientBuilder::new(format!("ws://{addr}/other"))
        .connect()
        .await
        .map(drop)
        .unwrap_err();
    assert!(matches!(err, Error::Refused { status: 404, .. }), "{err:?}");
    server.abort();
}

/// `http2_client` against `hyper_server`: three WebSockets on one HTTP/2 connection, each
/// greeted, then echoed.
#[cfg(all(feature = "hyper", feature = "http2"))]
#[tokio::test]
async fn http2_client_opens_three_websockets_on_one_connection_to_hyper_server() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(hyper_server::serve(listener));
    let lines = timeout(LIMIT, http2_client::run(&format!("ws://{addr}/echo")))
        .await
        .unwrap()
        .unwrap();
    let mut expected = vec!["over HTTP/2".to_owned()];
    for i in 0..3 {
        expected.push(format!("{i}: subprotocol none, permessage-deflate off"));
        expected.push(format!("{i}: hello from WebSocket {i}"));
    }
    assert_eq!(lines, expected);
    server.abort();
}

#[tokio::test]
async fn broadcast_writes_one_frame_to_every_accepted_connection() {
    let (listener, addr) = listener().await;
    let (frames, _) = tokio::sync::broadcast::channel(16);
    let server = tokio::spawn(broadcast::serve(listener, frames.clone()));
    let mut members = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (ws, response) = ClientBuilder::new(format!("ws://{addr}/?name={name}"))
            .connect()
            .await
            .unwrap();
        assert_eq!(response.headers["hello"], name);
        members.push(ws);
    }
    for (query, status) in [("?name=mallory", 403), ("", 400)] {
        let err = ClientBuilder::new(format!("ws://{addr}/{query}"))
            .connect()
            .await
            .map(drop)
            .unwrap_err();
        assert!(
            matches!(err, Error::Refused { status: s, .. } if s == status),
            "{err:?}"
        );
    }
    // Every accepted connection subscribed before its handshake finished, so the frame
    // reaches all three.
    frames.send(duplex::Prepared::text("tick 1")).unwrap();
    for ws in &mut members {
        assert_eq!(text(ws).await, "tick 1");
    }
    server.abort();
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_chat_relays_to_every_member() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move { axum::serve(listener, axum_chat::app()).await });
    let join = |name: &str| {
        ClientBuilder::new(format!("ws://{addr}/ws?name={name}"))
            .subprotocol("chat")
            .connect()
    };
    let (mut alice, _) = join("alice").await.unwrap();
    assert_eq!(alice.subprotocol(), Some("chat"));
    assert_eq!(text(&mut alice).await, "* alice joined");
    let (mut bob, _) = join("bob").await.unwrap();
    assert_eq!(text(&mut alice).await, "* bob joined");
    assert_eq!(text(&mut bob).await, "* bob joined");
    alice.send(Message::text("hi")).await.unwrap();
    assert_eq!(text(&mut alice).await, "alice: hi");
    assert_eq!(text(&mut bob).await, "alice: hi");
    alice.close(duplex::CloseCode::NORMAL, "bye").await.unwrap();
    assert_eq!(text(&mut bob).await, "* alice left");
    server.abort();
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn client_proxy_goes_through_the_proxy() {
    use crate::support::{echo_server, ConnectProxy};

    let echo = echo_server(duplex::ServerConfig::default(), |_| Ok(Default::default())).await;
    let proxy = ConnectProxy::start(None).await;
    let reply = timeout(
        LIMIT,
        client_proxy::run(
            &format!("ws://{echo}/"),
            Some(&format!("http://{}", proxy.addr)),
        ),
    )
    .await
    .expect("in time")
    .unwrap();
    assert_eq!(reply, "hello through the proxy");
    let requests = proxy.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].starts_with(&format!("CONNECT {echo} ")),
        "{requests:?}"
    );
}
