//! RFC 6455 §4.2.1 checks of `duplex::axum::WebSocketUpgrade`, seen through `/ws`.

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
