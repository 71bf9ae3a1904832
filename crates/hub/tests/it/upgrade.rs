//! RFC 6455 §4.2.1 checks of an upgrade to `/ws`, read by the server itself or by the
//! router (`duplex::axum::WebSocketUpgrade`).

use std::time::Duration;

use bytes::BytesMut;
use duplex::{Config, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn valid_upgrade_is_accepted_with_the_right_accept_and_subprotocol() {
    let s = start().await;
    let req = upgrade_request(s.addr, "/ws", "Sec-WebSocket-Protocol: chat, duplex.v1\r\n");
    let (status, head) = upgrade_status(s.addr, &req).await;
    assert_eq!(status, 101, "{head}");
    let head = head.to_ascii_lowercase();
    // RFC 6455 §1.3's example key and answer.
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("sec-websocket-protocol: duplex.v1"));
    let req = upgrade_request(s.addr, "/ws", "");
    let (_, head) = upgrade_status(s.addr, &req).await;
    assert!(!head.to_ascii_lowercase().contains("sec-websocket-protocol"));
}

#[tokio::test]
async fn client_builder_negotiates_duplex_v1() {
    let s = start().await;
    let c = Client::connect(duplex::ClientBuilder::new(s.url()).subprotocol("duplex.v1")).await;
    assert_eq!(c.ws.subprotocol(), Some("duplex.v1"));
}

#[tokio::test]
async fn bad_upgrades_get_400_or_426() {
    let s = start().await;
    let a = s.addr;
    let base = |lines: &str| format!("GET /ws HTTP/1.1\r\nHost: {a}\r\n{lines}\r\n");
    let cases = [
        (base("Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"), 400, "Upgrade: websocket"),
        (base("Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"), 400, "Connection: Upgrade"),
        (base("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"), 400, "Sec-WebSocket-Key"),
        (base("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n"), 400, "base64"),
        (base("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n"), 426, "13"),
        (base("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), 426, "13"),
        (format!("GET /ws HTTP/1.0\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"), 400, "HTTP/1.1"),
    ];
    for (request, status, reason) in cases {
        let (got, head) = upgrade_status(a, &request).await;
        assert_eq!(got, status, "{request}\n{head}");
        assert!(head.contains(reason), "{head}");
        if status == 426 {
            assert!(head
                .to_ascii_lowercase()
                .contains("sec-websocket-version: 13"));
        }
    }
    // A plain GET of /ws is not an upgrade either.
    assert_eq!(get(a, "/ws", "").await.0, 400);
    assert!(s.hub.stats().handshake_failures >= 8);
}

/// The server reads the head of an upgrade to `/ws` itself: one that arrives a few bytes at a
/// time is still one request, and the frames sent right behind it are the connection's first
/// (the server reads them once it has answered).
#[tokio::test]
async fn an_upgrade_in_pieces_with_a_frame_behind_it_is_served() {
    let s = start().await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let request = upgrade_request(s.addr, "/ws?x=1", "Sec-WebSocket-Protocol: duplex.v1\r\n");
    let command = br#"{"id":7,"type":"subscribe","channel":"pieces"}"#;
    let mut bytes = request.into_bytes();
    // A masked text frame (RFC 6455 §5.2) with a zero masking key: its payload as is.
    let len = u8::try_from(command.len()).unwrap();
    bytes.extend_from_slice(&[0x81, 0x80 | len, 0, 0, 0, 0]);
    bytes.extend_from_slice(command);
    let split = bytes.len() - command.len() - 30;
    let (head, rest) = bytes.split_at(split);
    for piece in head.chunks(7) {
        tcp.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The head's last bytes and the frame in one write.
    tcp.write_all(rest).await.unwrap();
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(WAIT, tcp.read_buf(&mut buf))
            .await
            .expect("response timed out")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
    };
    let leftover = buf.split_off(end);
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-protocol: duplex.v1"), "{head}");
    let ws = WebSocket::from_raw(tcp, Role::Client, Config::default(), leftover);
    let mut c = Client::welcomed(ws).await;
    let reply = loop {
        let v = c.recv().await;
        if v["id"] == 7 {
            break v;
        }
    };
    assert_eq!(reply["type"], "reply", "{reply}");
    // Another client is served as usual.
    s.client().await.subscribe("other").await;
}

/// Requests that are not an upgrade to `/ws` at all, or not only one, are HTTP's: a pipelined
/// pair of GETs gets its two answers, and an upgrade to another path gets 404.
#[tokio::test]
async fn other_requests_on_the_connection_are_served_by_http() {
    let s = start().await;
    let a = s.addr;
    let two = format!("GET /healthz HTTP/1.1\r\nHost: {a}\r\n\r\nGET /healthz HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n");
    let (_, answer) = exchange(TcpStream::connect(a).await.unwrap(), &two).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    let (status, head) = upgrade_status(a, &upgrade_request(a, "/wsx", "")).await;
    assert_eq!(status, 404, "{head}");
    let (status, head) = upgrade_status(a, &upgrade_request(a, "/ws/", "")).await;
    assert_eq!(status, 404, "{head}");
}
