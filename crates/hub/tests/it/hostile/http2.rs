//! Hostile HTTP/2 (h2c, prior knowledge): connections left open with no stream, rapid
//! resets (CVE-2023-44487), PING and SETTINGS floods. See mod.rs.

use std::time::{Duration, Instant};

use duplex::bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::h2_client;
use crate::support::*;

/// Slack on top of a limit before a test calls the limit missed (the machine may be busy).
const SLACK: Duration = Duration::from_secs(3);

/// RFC 9113 §3.4.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 connection whose end can be awaited: the handle resolves when the server has
/// closed it.
async fn watched(addr: std::net::SocketAddr) -> (SendRequest<Bytes>, JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = tokio::time::timeout(WAIT, h2::client::handshake(tcp))
        .await
        .unwrap()
        .unwrap();
    let ended = tokio::spawn(async move {
        let _ = conn.await;
    });
    tokio::time::timeout(WAIT, async {
        while !client.is_extended_connect_protocol_enabled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the server's SETTINGS");
    (client, ended)
}

/// One HTTP/2 frame (RFC 9113 §4.1).
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads frames until a GOAWAY (its error code) or the end of the connection (`None`).
async fn goaway_code(tcp: &mut TcpStream, within: Duration) -> Option<u32> {
    let until = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..9 + len).collect();
            if frame[3] == 0x7 && len >= 8 {
                return Some(u32::from_be_bytes([
                    frame[13], frame[14], frame[15], frame[16],
                ]));
            }
        }
        match tokio::time::timeout_at(until, tcp.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("neither GOAWAY nor a close within {within:?}"),
        }
    }
}

/// A connection with no stream is closed at `http2_idle_timeout`; one with a WebSocket open
/// is not, and once its WebSocket has ended it is closed like the other.
#[tokio::test]
async fn an_http2_connection_without_streams_is_closed_at_its_idle_timeout() {
    let timeout = Duration::from_millis(600);
    let mut c = config();
    c.limits.http2_idle_timeout = timeout;
    let s = start_with(c).await;
    let opened = Instant::now();
    let (_idle, idle_ended) = watched(s.addr).await;
    let (busy, mut busy_ended) = watched(s.addr).await;
    let (_, ws) = h2_client::websocket(&busy, s.addr, "/ws", Some("duplex.v1"), None).await;
    let mut ws = Client::welcomed(ws).await;

    tokio::time::timeout(timeout + SLACK, idle_ended)
        .await
        .expect("a connection without streams outlived its idle timeout")
        .unwrap();
    assert!(opened.elapsed() >= timeout - Duration::from_millis(100));
    assert_served(&s, "127.0.0.2").await;

    // Three timeouts later the WebSocket's connection is open and the WebSocket served.
    tokio::time::sleep(timeout * 3).await;
    assert!(
        !busy_ended.is_finished(),
        "closed while a WebSocket was open"
    );
    ws.subscribe("still-here").await;
    ws.ws.close(duplex::CloseCode::NORMAL, "").await.unwrap();
    drop(ws);
    let closed_ws = Instant::now();
    tokio::time::timeout(timeout + SLACK, &mut busy_ended)
        .await
        .expect("idle after its WebSocket, the connection outlived the timeout")
        .unwrap();
    assert!(closed_ws.elapsed() >= timeout - Duration::from_millis(100));
    assert!(metric(&s, "duplex_limit_hits_total{limit=\"http2_idle_timeout\"}").await >= 2.0);
}

/// Requests keep a connection busy too: one answered just before the timeout starts it
/// again from its end.
#[tokio::test]
async fn an_http2_request_restarts_the_idle_timer() {
    let timeout = Duration::from_millis(800);
    let mut c = config();
    c.limits.http2_idle_timeout = timeout;
    let s = start_with(c).await;
    let (client, ended) = watched(s.addr).await;
    for _ in 0..3 {
        tokio::time::sleep(timeout / 2).await;
        let mut sender = tokio::time::timeout(WAIT, client.clone().ready())
            .await
            .unwrap()
            .unwrap();
        let get = duplex::http::Request::get(format!("http://{}/healthz", s.addr))
            .body(())
            .unwrap();
        let (response, _) = sender.send_request(get, true).unwrap();
        let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
    }
    assert!(!ended.is_finished(), "closed though it kept asking");
}

/// CVE-2023-44487: streams opened and reset at once, faster than they can be served. The
/// HTTP/2 layer counts the streams reset before they were accepted and, past
/// `max_pending_accept_reset_streams`, ends the connection with GOAWAY ENHANCE_YOUR_CALM.
#[tokio::test]
async fn rapid_reset_gets_goaway_enhance_your_calm() {
    let s = start().await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let authority = s.addr.to_string();
    // HPACK (RFC 7541): :method GET, :scheme http (static entries 2 and 6), :path and
    // :authority as literals without indexing (names: static entries 4 and 1).
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x01, u8::try_from(authority.len()).unwrap()]);
    block.extend_from_slice(authority.as_bytes());
    let mut attack = PREFACE.to_vec();
    attack.extend(frame(0x4, 0, 0, &[]));
    for i in 0..1000u32 {
        let stream = 2 * i + 1;
        // HEADERS with END_STREAM | END_HEADERS, then RST_STREAM CANCEL.
        attack.extend(frame(0x1, 0x5, stream, &block));
        attack.extend(frame(0x3, 0, stream, &0x8u32.to_be_bytes()));
    }
    // The server may close before it has read everything.
    let _ = tcp.write_all(&attack).await;
    let code = goaway_code(&mut tcp, WAIT + SLACK).await;
    assert_eq!(code, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM");
    assert_served(&s, "127.0.0.2").await;
    eventually(|| {
        s.hub
            .metrics_text()
            .contains("duplex_limit_hits_total{limit=\"http2_flood\"}")
    })
    .await;
}

/// PING and SETTINGS each need an answer (RFC 9113 §6.7, §6.5.3). A client that floods
/// them and never reads gets no more read from it than the answers it takes: the server
/// holds one pending answer, so its memory does not grow, and after the flood the same
/// connection still answers.
#[tokio::test]
async fn ping_and_settings_floods_are_read_no_faster_than_answered() {
    let s = start().await;
    for (name, one) in [
        ("PING", frame(0x6, 0, 0, &[7; 8])),
        ("SETTINGS", frame(0x4, 0, 0, &[])),
    ] {
        let tcp = TcpStream::connect(s.addr).await.unwrap();
        let (mut reader, mut writer) = tcp.into_split();
        // 32 MiB of frames: more than the socket buffers of both ends hold, so a server
        // that stops reading stops the writer.
        let chunk: Vec<u8> = one.iter().copied().cycle().take(one.len() * 4096).collect();
        let rounds = (32 << 20) / chunk.len();
        let flood = tokio::spawn(async move {
            let mut head = PREFACE.to_vec();
            head.extend(frame(0x4, 0, 0, &[]));
            writer.write_all(&head).await.unwrap();
            for _ in 0..rounds {
                if writer.write_all(&chunk).await.is_err() {
                    return false;
                }
            }
            true
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !flood.is_finished(),
            "{name}: 32 MiB read without an answer taken"
        );
        assert_served(&s, "127.0.0.2").await;
        // Reading the answers lets the flood through: every frame is answered.
        let mut chunk = vec![0u8; 256 * 1024];
        let drained = tokio::time::timeout(Duration::from_secs(60), async {
            while !flood.is_finished() {
                if matches!(reader.read(&mut chunk).await, Ok(0) | Err(_)) {
                    break;
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "{name}: the flood did not drain");
        assert!(
            flood.await.unwrap(),
            "{name}: the server closed the connection"
        );
    }
}

/// A header block above `limits.max_header_bytes` (SETTINGS_MAX_HEADER_LIST_SIZE) is not
/// served: the stream is answered 431 (RFC 6585 §5), and the connection goes on.
#[tokio::test]
async fn an_oversized_http2_header_block_is_refused() {
    let mut c = config();
    c.limits.max_header_bytes = 4096;
    let s = start_with(c).await;
    let client = h2_client::connection(s.addr).await;
    let big = "a".repeat(8192);
    let request = h2_client::request(
        s.addr,
        "/ws",
        &[("sec-websocket-protocol", "duplex.v1"), ("x-big", &big)],
    );
    let mut sender = tokio::time::timeout(WAIT, client.clone().ready())
        .await
        .unwrap()
        .unwrap();
    let (response, _send) = sender.send_request(request, false).unwrap();
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 431, "an oversized block was served");
    assert_served(&s, "127.0.0.2").await;
    // The same connection still serves a WebSocket of normal size.
    let (_, ws) = h2_client::websocket(&client, s.addr, "/ws", Some("duplex.v1"), None).await;
    let _ = Client::welcomed(ws).await;
}
