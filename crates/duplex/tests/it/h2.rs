//! WebSockets over HTTP/2 (RFC 8441) through `duplex::hyper` and `duplex::axum`: a hyper
//! HTTP/2 server (h2c with prior knowledge, extended CONNECT enabled) and an `axum::serve`
//! app, against the `h2` test client of `h2_client.rs`.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use duplex::{
    bytes::Bytes,
    deflate::DeflateConfig,
    hyper::{Body, Upgrade},
    Accept, CloseCode, Config, Message,
};
use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{sync::mpsc, time::timeout};

use crate::h2_client::{self, WAIT};

/// What the server's sockets report when they end: the close code, or that the upgrade
/// failed.
type Reports = mpsc::UnboundedReceiver<String>;

/// A hyper HTTP/2 server: `/plain` is an ordinary resource; any other path upgrades (it
/// selects `chat` and accepts permessage-deflate) and echoes, then reports how the socket
/// ended.
async fn server() -> (SocketAddr, Reports) {
    async fn handle(
        mut req: hyper::Request<Incoming>,
        reports: mpsc::UnboundedSender<String>,
    ) -> Result<hyper::Response<Body>, Infallible> {
        if req.uri().path() == "/plain" {
            return Ok(hyper::Response::new(Body::from("plain")));
        }
        let upgrade = match Upgrade::new(&mut req) {
            Ok(upgrade) => upgrade
                .protocols(["chat"])
                .config(Config::default().deflate(Some(DeflateConfig::default()))),
            Err(rejection) => return Ok(rejection.response()),
        };
        let (response, upgrading) = match upgrade.accept(Accept::default()) {
            Ok(answer) => answer,
            Err(rejection) => return Ok(rejection.response()),
        };
        tokio::spawn(async move {
            let mut ws = match upgrading.await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = reports.send(format!("upgrade failed: {e}"));
                    return;
                }
            };
            loop {
                match ws.recv().await {
                    Some(Ok(message)) => {
                        if ws.send(message).await.is_err() {
                            break;
                        }
                    }
                    // A failed transport is reported once; the closure comes next.
                    Some(Err(_)) => {}
                    None => break,
                }
            }
            let report = match ws.closed() {
                Some(closed) => format!("closed {} clean={}", closed.code.0, closed.is_clean()),
                None => "not closed".to_owned(),
            };
            let _ = reports.send(report);
        });
        Ok(response)
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            let service = service_fn(move |req| handle(req, tx.clone()));
            let mut builder = http2::Builder::new(TokioExecutor::new());
            // RFC 8441 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
            builder.enable_connect_protocol();
            tokio::spawn(builder.serve_connection(TokioIo::new(tcp), service));
        }
    });
    (addr, rx)
}

async fn next_report(reports: &mut Reports) -> String {
    timeout(WAIT, reports.recv())
        .await
        .expect("a report in time")
        .expect("the server is running")
}

/// Bytes that do not compress well, so the 1 MiB message is 1 MiB on the stream too.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn echo_over_http2_with_subprotocol_and_deflate() {
    let (addr, _reports) = server().await;
    let client = h2_client::connection(addr).await;
    let (parts, mut ws) = h2_client::websocket(
        &client,
        addr,
        "/echo?x=1",
        Some("other, chat"),
        Some(DeflateConfig::default()),
    )
    .await;
    // RFC 8441 §5: 200, no Sec-WebSocket-Accept (nor Upgrade or Connection).
    assert!(!parts.headers.contains_key("sec-websocket-accept"));
    assert_eq!(ws.subprotocol(), Some("chat"));
    assert!(ws.deflate_params().is_some());
    let text = Message::text("hello over h2 ".repeat(1000));
    ws.send(text.clone()).await.unwrap();
    assert_eq!(
        timeout(WAIT, ws.recv()).await.unwrap().unwrap().unwrap(),
        text
    );
    let big = Message::binary(noise(1 << 20));
    ws.send(big.clone()).await.unwrap();
    assert_eq!(
        timeout(WAIT, ws.recv()).await.unwrap().unwrap().unwrap(),
        big
    );

    // Without offers: neither is confirmed; 1 MiB still goes through flow control.
    let (parts, mut ws) = h2_client::websocket(&client, addr, "/echo", None, None).await;
    assert!(!parts.headers.contains_key("sec-websocket-protocol"));
    assert!(!parts.headers.contains_key("sec-websocket-extensions"));
    assert!(ws.deflate_params().is_none());
    ws.send(big.clone()).await.unwrap();
    assert_eq!(
        timeout(WAIT, ws.recv()).await.unwrap().unwrap().unwrap(),
        big
    );
}

#[tokio::test]
async fn several_websockets_share_a_connection_with_an_ordinary_get() {
    let (addr, _reports) = server().await;
    let client = h2_client::connection(addr).await;
    let mut sockets = Vec::new();
    for i in 0..4 {
        let (_, ws) = h2_client::websocket(&client, addr, &format!("/ws/{i}"), None, None).await;
        sockets.push(ws);
    }
    // A GET on the same connection, between the sockets.
    let get = http::Request::get(format!("http://{addr}/plain"))
        .body(())
        .unwrap();
    let mut sender = client.clone().ready().await.unwrap();
    let (response, _) = sender.send_request(get, true).unwrap();
    let response = timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = timeout(WAIT, body.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"plain");
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("socket {i}"))).await.unwrap();
    }
    for (i, ws) in sockets.iter_mut().enumerate().rev() {
        let echoed = timeout(WAIT, ws.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed, Message::text(format!("socket {i}")));
    }
}

#[tokio::test]
async fn the_closing_handshake_runs_over_the_stream() {
    let (addr, mut reports) = server().await;
    let client = h2_client::connection(addr).await;
    let (_, mut ws) = h2_client::websocket(&client, addr, "/echo", None, None).await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        timeout(WAIT, ws.recv()).await.unwrap().unwrap().unwrap(),
        Message::text("before")
    );
    timeout(WAIT, ws.close(CloseCode(4000), "bye"))
        .await
        .unwrap()
        .unwrap();
    let closed = ws.closed().expect("closed");
    assert_eq!(closed.code, CloseCode(4000));
    assert!(closed.is_clean());
    assert_eq!(next_report(&mut reports).await, "closed 4000 clean=true");
}

#[tokio::test]
async fn a_reset_stream_is_an_abnormal_closure_on_the_server() {
    let (addr, mut reports) = server().await;
    let client = h2_client::connection(addr).await;
    // RFC 8441 §5: RST_STREAM is the TCP reset of HTTP/1.1. CANCEL is what browsers send,
    // INTERNAL_ERROR a failure.
    for reason in [h2::Reason::CANCEL, h2::Reason::INTERNAL_ERROR] {
        let (parts, mut stream) =
            h2_client::open(&client, h2_client::request(addr, "/echo", &[])).await;
        assert_eq!(parts.status, 200);
        stream.reset(reason);
        assert_eq!(
            next_report(&mut reports).await,
            "closed 1006 clean=false",
            "{reason:?}"
        );
    }
    // The connection is still fine for the next socket.
    let (_, mut ws) = h2_client::websocket(&client, addr, "/echo", None, None).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        timeout(WAIT, ws.recv()).await.unwrap().unwrap().unwrap(),
        Message::text("still here")
    );
}

/// The status, the `sec-websocket-version` header and the body of the answer to `req`.
async fn answer(
    client: &h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> (u16, Option<String>, String) {
    let (parts, stream) = h2_client::open(client, req).await;
    let mut ws = duplex::WebSocket::from_raw(
        stream,
        duplex::Role::Client,
        Config::default(),
        duplex::bytes::BytesMut::new(),
    );
    // Read the body as raw bytes from the stream.
    let mut body = Vec::new();
    let io = ws.get_mut();
    let _ = timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(io, &mut body))
        .await
        .expect("the body in time");
    let version = parts
        .headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        parts.status.as_u16(),
        version,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn other_http2_requests_are_refused_with_400_and_the_reason() {
    let (addr, _reports) = server().await;
    let client = h2_client::connection(addr).await;
    // A CONNECT without :protocol (authority form, RFC 9113 §8.5).
    let plain_connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(addr.to_string())
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    let (status, _, body) = answer(&client, plain_connect).await;
    assert_eq!(status, 400);
    assert_eq!(body, "missing :protocol pseudo-header (RFC 8441 §4)\n");
    // Another WebSocket version: 400 naming 13 (426 needs an Upgrade header).
    let mut wrong_version = h2_client::request(addr, "/echo", &[]);
    wrong_version
        .headers_mut()
        .insert("sec-websocket-version", http::HeaderValue::from_static("8"));
    let (status, version, body) = answer(&client, wrong_version).await;
    assert_eq!(status, 400);
    assert_eq!(version.as_deref(), Some("13"));
    assert_eq!(
        body,
        "unsupported Sec-WebSocket-Version (only 13 is supported)\n"
    );
    // A GET over HTTP/2 that asks for an upgrade.
    let get = http::Request::get(format!("http://{addr}/echo"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    let (status, _, body) = answer(&client, get).await;
    assert_eq!(status, 400);
    assert!(body.contains("RFC 8441"), "{body}");
}

#[tokio::test]
async fn an_axum_app_served_by_axum_serve_accepts_http2_websockets() {
    use axum::{routing::any, Router};
    use duplex::axum::WebSocketUpgrade;

    async fn echo(upgrade: WebSocketUpgrade) -> axum::response::Response {
        upgrade
            .protocols(["chat"])
            .config(Config::default().deflate(Some(DeflateConfig::default())))
            .on_upgrade(|mut ws| async move {
                while let Some(Ok(message)) = ws.recv().await {
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
            })
    }
    // `any`: over HTTP/2 the request is a CONNECT, not a GET.
    let app = Router::new().route("/ws", any(echo));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = h2_client::connection(addr).await;
    let (_, mut ws) = h2_client::websocket(
        &client,
        addr,
        "/ws",
        Some("chat"),
        Some(DeflateConfig::default()),
    )
    .await;
    assert_eq!(ws.subprotocol(), Some("chat"));
    assert!(ws.deflate_params().is_some());
    ws.send(Message::text("axum over h2")).await.unwrap();
    assert_eq!(
        timeout(WAIT, ws.recv()).await.unwrap().unwrap().unwrap(),
        Message::text("axum over h2")
    );
    timeout(Duration::from_secs(5), ws.close(CloseCode::NORMAL, ""))
        .await
        .unwrap()
        .unwrap();
    // And HTTP/1.1 clients still reach the same route.
    let (mut ws, _) = duplex::connect(&format!("ws://{addr}/ws")).await.unwrap();
    ws.send(Message::text("axum over h1")).await.unwrap();
    assert_eq!(
        timeout(WAIT, ws.recv()).await.unwrap().unwrap().unwrap(),
        Message::text("axum over h1")
    );
}
