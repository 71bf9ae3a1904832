//! The duplex client over HTTP/2 (RFC 8441, `ClientBuilder::http2`) against an independent
//! server: Python `hypercorn` (its own HTTP/2 stack, `h2`, and WebSocket stack, `wsproto`)
//! serving the ASGI app of `tests/peers/python/h2_peer.py` with h2c prior knowledge.
//!
//! The peer prints a line when a WebSocket opens (`open PATH 2`: the HTTP version the ASGI
//! scope saw) and when it ends (`closed PATH CODE`), which the tests check as well as what
//! the client sees: that the five WebSockets of a test share one TCP connection is seen by
//! hypercorn, as the client port of each ASGI scope.

use std::time::Duration;

use bytes::Bytes;
use duplex::{ClientBuilder, CloseCode, Event, MaybeTlsStream, Message, Side};
use tokio::{io::AsyncWriteExt, time::timeout};

use super::{binary, recv, round_trip, text, Peer, Running, Ws, LIMIT, SIXTEEN_MIB, SIZES};

/// A running hypercorn and the URL base of its port.
struct Hypercorn {
    running: Running,
    base: String,
}

impl Hypercorn {
    async fn start() -> Self {
        let mut running = Running::spawn(Peer::Hypercorn, &[]);
        let port = running.listening_port().await;
        Self {
            running,
            base: format!("ws://127.0.0.1:{port}"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A WebSocket to `path` over HTTP/2; it fails the test if HTTP/1.1 was used instead.
    async fn connect(&mut self, path: &str) -> Ws {
        let (ws, response) = timeout(
            LIMIT,
            ClientBuilder::new(self.url(path)).http2(true).connect(),
        )
        .await
        .expect("the handshake did not finish in time")
        .expect("handshake with hypercorn");
        assert_eq!(response.status, 200, "RFC 8441 §5: 200 opens the WebSocket");
        assert!(ws.get_ref().http2().is_some(), "not over HTTP/2");
        assert_eq!(self.line().await, format!("open {path} 2"));
        ws
    }

    /// The peer's next line.
    async fn line(&mut self) -> String {
        match timeout(LIMIT, self.running.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = self.running.child.start_kill();
                let stderr = (&mut self.running.stderr).await.unwrap_or_default();
                panic!("no line from hypercorn ({other:?}); stderr:\n{stderr}");
            }
        }
    }

    /// Stop the peer, and wait for it to be gone.
    async fn stop(mut self) {
        let _ = self.running.child.start_kill();
        let _ = timeout(LIMIT, self.running.child.wait()).await;
    }
}

/// The client's clean close: the server's answering Close echoes the code (RFC 6455
/// §5.5.1). hypercorn tells the ASGI app 1006 whenever the client closed first (it reports
/// the code of the app's own close only), so the peer's line carries no code worth checking.
async fn close(peer: &mut Hypercorn, mut ws: Ws, path: &str, code: u16) {
    let started = std::time::Instant::now();
    timeout(LIMIT, ws.close(CloseCode(code), "done"))
        .await
        .expect("the closing handshake did not finish in time")
        .expect("closing handshake");
    // hypercorn never ends its half of the stream: the client does not wait for it.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let closed = ws.closed().expect("closed after the handshake");
    assert_eq!(
        (closed.initiated_by, closed.error.clone()),
        (Side::Local, None)
    );
    assert_eq!(ws.close_frame().map(|f| f.code), Some(CloseCode(code)));
    assert!(peer.line().await.starts_with(&format!("closed {path} ")));
}

/// One masked client frame (RFC 6455 §5.2), written by hand to send fragments.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65_535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&KEY);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    out
}

#[tokio::test]
#[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
async fn echo_text_binary_and_16_mib() {
    let mut peer = Hypercorn::start().await;
    let mut ws = peer.connect("/echo").await;
    for len in SIZES {
        round_trip(&mut ws, text(len)).await;
        round_trip(&mut ws, binary(len)).await;
    }
    round_trip(&mut ws, text(SIXTEEN_MIB)).await;
    round_trip(&mut ws, binary(SIXTEEN_MIB)).await;
    close(&mut peer, ws, "/echo", 1000).await;
    peer.stop().await;
}

#[tokio::test]
#[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
async fn fragmented_messages_with_a_ping_between_fragments() {
    let mut peer = Hypercorn::start().await;
    let mut ws = peer.connect("/echo").await;
    // Text split inside two UTF-8 sequences, a Ping between two fragments (RFC 6455 §5.4),
    // then binary in three fragments: written as whole frames with nothing else queued.
    let text = "fragmented t\u{e9}xt \u{20ac}".as_bytes();
    let parts: Vec<u8> = (0..3)
        .flat_map(|n| (0..65_537).map(move |i| ((i * 7 + n) % 256) as u8))
        .collect();
    let mut wire = frame(false, 0x1, &text[..13]);
    wire.extend(frame(true, 0x9, b"between"));
    wire.extend(frame(false, 0x0, &text[13..19]));
    wire.extend(frame(true, 0x0, &text[19..]));
    wire.extend(frame(false, 0x2, &parts[..65_537]));
    wire.extend(frame(false, 0x0, &parts[65_537..131_074]));
    wire.extend(frame(true, 0x0, &parts[131_074..]));
    let io = ws.get_mut();
    io.write_all(&wire).await.expect("write the frames");
    io.flush().await.expect("flush");
    let mut events = Vec::new();
    while events.len() < 3 {
        match timeout(LIMIT, ws.next_event())
            .await
            .expect("events in time")
        {
            Some(Ok(event)) => events.push(event),
            other => panic!("expected an event, got {other:?}"),
        }
    }
    assert_eq!(events[0], Event::Pong(Bytes::from_static(b"between")));
    assert_eq!(
        events[1],
        Event::Message(Message::text("fragmented t\u{e9}xt \u{20ac}"))
    );
    assert!(
        events[2] == Event::Message(Message::binary(parts)),
        "binary reassembly differs"
    );
    close(&mut peer, ws, "/echo", 1000).await;
    peer.stop().await;
}

#[tokio::test]
#[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
async fn ping_is_answered() {
    let mut peer = Hypercorn::start().await;
    let mut ws = peer.connect("/echo").await;
    ws.ping(Bytes::from_static(b"duplex-ping"))
        .await
        .expect("ping");
    match timeout(LIMIT, ws.next_event())
        .await
        .expect("a pong in time")
    {
        Some(Ok(Event::Pong(payload))) => assert_eq!(payload, "duplex-ping"),
        other => panic!("expected the pong, got {other:?}"),
    }
    close(&mut peer, ws, "/echo", 1000).await;
    peer.stop().await;
}

#[tokio::test]
#[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
async fn close_codes_both_ways() {
    let mut peer = Hypercorn::start().await;
    for code in [1000, 1001, 1008, 3000, 4999] {
        // The server closes: the client sees its code and reason, and answers.
        let path = format!("/close/{code}");
        let mut ws = peer.connect(&path).await;
        ws.send(Message::text("close please")).await.expect("send");
        assert!(timeout(LIMIT, ws.recv())
            .await
            .expect("the close in time")
            .is_none());
        let frame = ws.close_frame().expect("the server's Close frame");
        assert_eq!(
            (frame.code, frame.reason.as_str()),
            (CloseCode(code), &*format!("bye {code}"))
        );
        let closed = ws.closed().expect("closed");
        assert_eq!(
            (closed.initiated_by, closed.error.clone()),
            (Side::Peer, None)
        );
        assert_eq!(peer.line().await, format!("sent close {code}"));
        // The client closes: the server echoes the code.
        let ws = peer.connect("/echo").await;
        close(&mut peer, ws, "/echo", code).await;
    }
    peer.stop().await;
}

#[tokio::test]
#[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
async fn several_websockets_over_one_connection() {
    let mut peer = Hypercorn::start().await;
    let mut first = peer.connect("/whoami").await;
    let connection = first
        .get_ref()
        .http2()
        .expect("over HTTP/2")
        .connection()
        .clone();
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let url = peer.url("/whoami");
        let (ws, response) = timeout(LIMIT, connection.connect(ClientBuilder::new(url)))
            .await
            .expect("in time")
            .expect("another stream");
        assert_eq!(response.status, 200);
        assert_eq!(peer.line().await, "open /whoami 2");
        sockets.push(ws);
    }
    // hypercorn sees one client port for all five: one TCP connection.
    first.send(Message::text("who")).await.expect("send");
    let Message::Text(me) = recv(&mut first).await else {
        panic!("expected text");
    };
    assert!(me.as_str().ends_with(" 2"), "{me:?}");
    let answers = futures_util::future::join_all(sockets.iter_mut().map(|ws| async {
        ws.send(Message::text("who")).await.expect("send");
        recv(ws).await
    }))
    .await;
    for answer in answers {
        assert_eq!(answer, Message::Text(me.clone()));
    }
    // Streams end one by one; the others go on.
    let mut sockets = sockets.into_iter();
    for ws in sockets.by_ref().take(2) {
        close(&mut peer, ws, "/whoami", 1000).await;
    }
    first.send(Message::text("still")).await.expect("send");
    assert_eq!(recv(&mut first).await, Message::Text(me.clone()));
    for ws in sockets {
        close(&mut peer, ws, "/whoami", 1000).await;
    }
    close(&mut peer, first, "/whoami", 1000).await;
    peer.stop().await;
}

/// The same client without `http2`: HTTP/1.1 to the same server, as a control.
#[tokio::test]
#[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
async fn without_http2_the_same_server_is_reached_over_http1() {
    let mut peer = Hypercorn::start().await;
    let (mut ws, response) = timeout(LIMIT, duplex::connect(&peer.url("/echo")))
        .await
        .expect("in time")
        .expect("handshake");
    assert_eq!(response.status, 101);
    assert!(matches!(ws.get_ref(), MaybeTlsStream::Plain(_)));
    assert_eq!(peer.line().await, "open /echo 1.1");
    round_trip(&mut ws, text(1000)).await;
    close(&mut peer, ws, "/echo", 1000).await;
    peer.stop().await;
}
