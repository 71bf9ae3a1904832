//! Hostile inputs: see mod.rs. Handshake headers: duplicate `Host`, `Sec-WebSocket-Key` and
//! `Sec-WebSocket-Version` (400 with the reason), and compressed frames the hub never
//! negotiated (1002).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{assert_served, metric, start, tcp_from, upgrade_request, WAIT};

/// Sends `request` from 127.0.0.1 and reads the response head and its `Content-Length` body;
/// returns the status, the whole response and the still open connection.
async fn exchange(addr: SocketAddr, request: &str) -> (u16, String, TcpStream) {
    let mut tcp = tcp_from("127.0.0.1", addr).await;
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let done = |buf: &[u8]| -> bool {
        let text = String::from_utf8_lossy(buf);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        body.len() >= length
    };
    while !done(&buf) {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("response timed out")
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text, tcp)
}

#[tokio::test]
async fn duplicate_key_version_or_host_gets_400_with_its_reason() {
    let server = start().await;
    let addr = server.addr;
    let cases = [
        (
            "Host: attacker.example\r\n".to_owned(),
            "duplicate Host header",
        ),
        (
            "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n".to_owned(),
            "duplicate Sec-WebSocket-Key header",
        ),
        // The same key twice is a duplicate too.
        (
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n".to_owned(),
            "duplicate Sec-WebSocket-Key header",
        ),
        (
            "Sec-WebSocket-Version: 13\r\n".to_owned(),
            "duplicate Sec-WebSocket-Version header",
        ),
        // A second version that is not 13: the duplicate is what is wrong (400, not 426).
        (
            "Sec-WebSocket-Version: 8\r\n".to_owned(),
            "duplicate Sec-WebSocket-Version header",
        ),
    ];
    let before = metric(
        &server,
        "duplex_handshake_failures_total{reason=\"bad_request\"}",
    )
    .await;
    // The refused connections stay open (HTTP keep-alive) while a good client is served.
    let mut open = Vec::new();
    for (extra, reason) in &cases {
        let request = upgrade_request(addr, "/ws", extra);
        let (status, text, tcp) = exchange(addr, &request).await;
        assert_eq!(status, 400, "{extra:?}: {text}");
        assert!(
            text.ends_with(&format!("\r\n\r\n{reason}\n")),
            "{extra:?}: {text}"
        );
        assert!(
            !text.to_ascii_lowercase().contains("sec-websocket-accept"),
            "{text}"
        );
        open.push(tcp);
    }
    assert_served(&server, "127.0.0.2").await;
    let after = metric(
        &server,
        "duplex_handshake_failures_total{reason=\"bad_request\"}",
    )
    .await;
    assert!(after - before >= cases.len() as f64, "{before} -> {after}");
    // The same request without the duplicate is upgraded.
    let (status, text, _tcp) = exchange(addr, &upgrade_request(addr, "/ws", "")).await;
    assert_eq!(status, 101, "{text}");
    drop(open);
}

#[tokio::test]
async fn a_deflate_bomb_to_the_hub_is_a_protocol_error() {
    // The hub does not negotiate permessage-deflate, so a compressed frame (RSV1) is refused
    // before a byte of it is inflated (RFC 6455 §5.2: 1002).
    let server = start().await;
    let addr = server.addr;
    let request = upgrade_request(
        addr,
        "/ws",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    );
    let (status, head, mut tcp) = exchange(addr, &request).await;
    assert_eq!(status, 101, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("permessage-deflate"),
        "{head}"
    );
    // A few bytes of deflate standing for a lot of zeros, masked, RSV1 set.
    let payload = [
        0x62, 0x60, 0x18, 0x05, 0xa3, 0x60, 0x14, 0x0c, 0x77, 0x00, 0x00,
    ];
    let mask = [1, 2, 3, 4];
    let mut frame = vec![0x80 | 0x40 | 0x2, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    assert_served(&server, "127.0.0.2").await;
    // Skip the welcome text frame(s), then read the Close.
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    let code = loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("no Close in time")
            .unwrap();
        assert!(n > 0, "closed without a Close frame: {all:?}");
        all.extend_from_slice(&chunk[..n]);
        if let Some(code) = close_code(&all) {
            break code;
        }
    };
    assert_eq!(code, 1002);
}

/// The code of the first Close frame in a stream of unmasked server frames.
fn close_code(mut wire: &[u8]) -> Option<u16> {
    while wire.len() >= 2 {
        let (len, start) = match wire[1] & 0x7f {
            126 if wire.len() >= 4 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if wire.len() < start + len {
            return None;
        }
        if wire[0] & 0x0f == 0x8 && len >= 2 {
            return Some(u16::from_be_bytes([wire[start], wire[start + 1]]));
        }
        wire = &wire[start + len..];
    }
    None
}
