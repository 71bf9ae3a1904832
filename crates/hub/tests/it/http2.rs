//! `/ws` over HTTP/2 with prior knowledge (h2c, RFC 8441 extended CONNECT) on the port that
//! serves HTTP/1.1, with the connection limits and the stream limit.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::h2_client::{self, H2Stream};
use crate::support::*;

/// A hub client over a new stream of `client`, welcomed.
async fn h2_hub_client(
    client: &h2::client::SendRequest<duplex::bytes::Bytes>,
    server: &TestServer,
) -> Client<H2Stream> {
    let (_, ws) = h2_client::websocket(client, server.addr, "/ws", Some("duplex.v1"), None).await;
    assert_eq!(ws.subprotocol(), Some("duplex.v1"));
    Client::welcomed(ws).await
}

/// Publishes `data` on `room` from `c`: the copy `c` gets as a subscriber (which may come
/// before the reply).
async fn publish<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>, data: &str) -> Value {
    let (reply, events) = c
        .call_with_events(json!({"type":"publish","channel":"room","data":data}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    match events.into_iter().find(|e| e["type"] == "message") {
        Some(mine) => mine,
        None => c.recv_message().await,
    }
}

#[tokio::test]
async fn http2_and_http1_clients_share_a_channel() {
    let s = start().await;
    let connection = h2_client::connection(s.addr).await;
    let mut over_h2 = h2_hub_client(&connection, &s).await;
    let mut over_h1 = s.client().await;
    over_h2.subscribe("room").await;
    over_h1.subscribe("room").await;
    // The second join reaches the first subscriber too.
    let diff = over_h2.recv_presence().await;
    assert_eq!(listed(&diff, "joins"), [over_h1.id().to_owned()]);

    let mine = publish(&mut over_h1, "from h1").await;
    assert_eq!(mine["data"], "from h1", "{mine}");
    let theirs = over_h2.recv_message().await;
    assert_eq!(theirs["data"], "from h1", "{theirs}");
    let mine = publish(&mut over_h2, "from h2").await;
    assert_eq!(mine["data"], "from h2", "{mine}");
    let theirs = over_h1.recv_message().await;
    assert_eq!(theirs["data"], "from h2", "{theirs}");
    assert_eq!(
        metric(&s, "duplex_websocket_upgrades_total{version=\"2\"}").await,
        1.0
    );
    assert_eq!(
        metric(&s, "duplex_websocket_upgrades_total{version=\"1.1\"}").await,
        1.0
    );
    // An ordinary request on the same HTTP/2 connection.
    let mut sender = connection.clone().ready().await.unwrap();
    let get = duplex::http::Request::get(format!("http://{}/healthz", s.addr))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(get, true).unwrap();
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn each_websocket_of_an_http2_connection_counts_against_max_connections() {
    let mut config = config();
    config.limits.max_connections = 2;
    let s = start_with(config).await;
    let connection = h2_client::connection(s.addr).await;
    // The first takes the connection's slot, the second one of its own.
    let _a = h2_hub_client(&connection, &s).await;
    let _b = h2_hub_client(&connection, &s).await;
    let (parts, _) = h2_client::open(
        &connection,
        h2_client::request(s.addr, "/ws", &[("sec-websocket-protocol", "duplex.v1")]),
    )
    .await;
    assert_eq!(parts.status, 503);
    assert_eq!(s.hub.connections(), 2);
}

#[tokio::test]
async fn the_stream_limit_holds_on_one_http2_connection() {
    let mut config = config();
    config.limits.http2_max_concurrent_streams = 2;
    let s = start_with(config).await;
    let connection = h2_client::connection(s.addr).await;
    let a = h2_hub_client(&connection, &s).await;
    let _b = h2_hub_client(&connection, &s).await;
    // The server announced 2 streams: a third waits for one to end (the client queues it,
    // as RFC 9113 §5.1.2 asks; a client that does not gets REFUSED_STREAM).
    let mut sender = connection.clone().ready().await.unwrap();
    let third = h2_client::request(s.addr, "/ws", &[("sec-websocket-protocol", "duplex.v1")]);
    let (mut response, _send) = sender.send_request(third, false).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut response)
            .await
            .is_err(),
        "a third stream was served"
    );
    assert_eq!(s.hub.connections(), 2);
    // One socket ends: the waiting stream is served.
    let mut a = a;
    a.ws.close(duplex::CloseCode::NORMAL, "").await.unwrap();
    drop(a);
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_stalled_http2_preface_is_closed_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut config = config();
    config.limits.header_timeout = Duration::from_millis(300);
    let s = start_with(config).await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // The first bytes of the preface, then nothing.
    tcp.write_all(b"PRI * HTTP/2").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
    eventually(|| s.hub.metrics_text().contains("limit=\"header_timeout\"} 1")).await;
}

#[tokio::test]
async fn the_origin_is_checked_against_the_authority_over_http2() {
    let s = start().await;
    let connection = h2_client::connection(s.addr).await;
    let same = format!("http://{}", s.addr);
    for (origin, status) in [(same.as_str(), 200), ("https://evil.example", 403)] {
        let req = h2_client::request(
            s.addr,
            "/ws",
            &[("sec-websocket-protocol", "duplex.v1"), ("origin", origin)],
        );
        let (parts, _) = h2_client::open(&connection, req).await;
        assert_eq!(parts.status, status, "{origin}");
    }
}
