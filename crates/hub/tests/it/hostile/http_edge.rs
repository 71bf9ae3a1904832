//! Hostile inputs before the upgrade: idle sockets, slowloris heads, oversized heads, slow
//! bodies, floods of unfinished requests, and shutdown. See mod.rs.

use std::time::{Duration, Instant};

use duplex_hub::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const KEY: &str = "api-key-0123";

/// Slack on top of a limit before a test calls the limit missed: generous, since the
/// machine may be busy.
const SLACK: Duration = Duration::from_secs(3);

fn short(header_timeout_ms: u64) -> Config {
    let mut c = config();
    c.limits.header_timeout = Duration::from_millis(header_timeout_ms);
    c
}

/// Reads until the server closes (EOF or reset) or `within` passes; returns what arrived and
/// whether the connection was closed.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let until = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut chunk)).await {
            Err(_) => return (got, false),
            Ok(Ok(0) | Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

fn status_of(bytes: &[u8]) -> u16 {
    String::from_utf8_lossy(bytes)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An unfinished request from `from`: a request line and one header, no blank line.
async fn unfinished(server: &TestServer, from: &str) -> TcpStream {
    let mut tcp = tcp_from(from, server.addr).await;
    tcp.write_all(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tcp
}

async fn get_from(server: &TestServer, from: &str, path: &str, extra: &str) -> (u16, String) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{extra}\r\n",
        server.addr
    );
    http_from(from, server.addr, &request).await
}

#[tokio::test]
async fn an_idle_socket_is_closed_at_the_header_timeout() {
    let s = start_with(short(1000)).await;
    let opened = Instant::now();
    let mut idle = tcp_from("127.0.0.1", s.addr).await;
    assert_served(&s, "127.0.0.2").await;
    let (got, closed) = read_until_closed(&mut idle, Duration::from_secs(1) + SLACK).await;
    assert!(
        closed,
        "an idle socket still open after the timeout + slack"
    );
    assert!(got.is_empty(), "no answer to a request never sent: {got:?}");
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed before the timeout: {:?}",
        opened.elapsed()
    );
    assert!(metric(&s, "duplex_limit_hits_total{limit=\"header_timeout\"}").await >= 1.0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_timeout() {
    let s = start_with(short(1000)).await;
    let mut tcp = tcp_from("127.0.0.1", s.addr).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&buf[..n]), 200);
    let answered = Instant::now();
    let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(1) + SLACK).await;
    assert!(closed, "an idle keep-alive connection outlived the timeout");
    assert!(answered.elapsed() >= Duration::from_millis(900));
}

/// The first head is due a header timeout after the accept, the wait for its first byte
/// (which tells HTTP/1.1 from the HTTP/2 preface) included.
#[tokio::test]
async fn a_late_first_byte_does_not_extend_the_first_heads_timer() {
    let s = start_with(short(1000)).await;
    let opened = Instant::now();
    let mut tcp = tcp_from("127.0.0.1", s.addr).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_served(&s, "127.0.0.2").await;
    let (got, closed) = read_until_closed(&mut tcp, Duration::from_secs(1) + SLACK).await;
    assert!(closed, "the unfinished head outlived its timer");
    assert!(got.is_empty(), "{got:?}");
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1700),
        "closed {elapsed:?} after the accept, not at the header timeout"
    );
    assert!(metric(&s, "duplex_limit_hits_total{limit=\"header_timeout\"}").await >= 1.0);
}

/// Each later head on a keep-alive connection has the whole header timeout again, however
/// long the first one took to start.
#[tokio::test]
async fn a_later_keep_alive_head_gets_the_whole_header_timeout() {
    let s = start_with(short(1000)).await;
    let mut tcp = tcp_from("127.0.0.1", s.addr).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // The first request 700 ms after the accept, within its timer.
    tokio::time::sleep(Duration::from_millis(700)).await;
    tcp.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&buf[..n]), 200);
    // 600 ms of keep-alive: longer than what was left of the first timer, shorter than a
    // whole one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    tcp.write_all(request).await.unwrap();
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status_of(&buf[..n]),
        200,
        "the second head was cut short: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn a_slowloris_trickle_does_not_extend_the_header_timeout() {
    let s = start_with(short(1000)).await;
    let tcp = tcp_from("127.0.0.1", s.addr).await;
    let opened = Instant::now();
    let (mut reader, mut writer) = tcp.into_split();
    // One byte every 200 ms, each a valid header byte, for at most 10 s.
    let trickle = tokio::spawn(async move {
        if writer
            .write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
            .await
            .is_err()
        {
            return 0;
        }
        let mut sent = 0;
        while sent < 50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(b"a").await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    assert_served(&s, "127.0.0.2").await;
    let until = tokio::time::Instant::now() + Duration::from_secs(1) + SLACK;
    let mut chunk = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout_at(until, reader.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0) | Err(_)) => break true,
            Ok(Ok(_)) => {}
        }
    };
    let elapsed = opened.elapsed();
    assert!(
        closed,
        "the trickle kept the connection open past the timeout"
    );
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    let sent = trickle.await.unwrap();
    assert!(
        sent < 50,
        "the trickle ran to its end: the server never closed"
    );
    assert!(metric(&s, "duplex_limit_hits_total{limit=\"header_timeout\"}").await >= 1.0);
}

#[tokio::test]
async fn an_oversized_head_gets_431() {
    let mut c = config();
    c.limits.max_header_bytes = 4096;
    let s = start_with(c).await;
    for (size, what) in [
        (5000, "just over the limit"),
        (300_000, "300 KB of headers"),
    ] {
        let mut tcp = tcp_from("127.0.0.1", s.addr).await;
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        // The server stops reading at the limit, so the rest of the write may fail.
        let _ = tcp.write_all(head.as_bytes()).await;
        let (got, closed) = read_until_closed(&mut tcp, WAIT).await;
        assert_eq!(
            status_of(&got),
            431,
            "{what}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(closed, "{what}: the connection is closed after the 431");
    }
    // Many small headers add up too.
    let mut tcp = tcp_from("127.0.0.1", s.addr).await;
    let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..90 {
        head.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(60)));
    }
    head.push_str("\r\n");
    let _ = tcp.write_all(head.as_bytes()).await;
    let (got, _) = read_until_closed(&mut tcp, WAIT).await;
    assert_eq!(status_of(&got), 431);
    // A head under the limit is served.
    let (status, _) = get_from(
        &s,
        "127.0.0.1",
        "/healthz",
        &format!("X-Ok: {}\r\n", "c".repeat(3000)),
    )
    .await;
    assert_eq!(status, 200);
    assert_served(&s, "127.0.0.2").await;
    assert!(metric(&s, "duplex_limit_hits_total{limit=\"header_size\"}").await >= 3.0);
}

#[tokio::test]
async fn a_slow_body_gets_408_at_the_request_timeout() {
    let mut c = config();
    c.api.key = Some(KEY.into());
    c.limits.request_timeout = Duration::from_millis(1000);
    let s = start_with(c).await;
    let mut tcp = tcp_from("127.0.0.1", s.addr).await;
    let opened = Instant::now();
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"channel\""
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    assert_served(&s, "127.0.0.2").await;
    let (got, closed) = read_until_closed(&mut tcp, Duration::from_secs(1) + SLACK).await;
    assert_eq!(status_of(&got), 408, "{}", String::from_utf8_lossy(&got));
    assert!(closed);
    assert!(opened.elapsed() >= Duration::from_millis(900));
    assert!(metric(&s, "duplex_limit_hits_total{limit=\"request_timeout\"}").await >= 1.0);
}

#[tokio::test]
async fn a_flood_of_unfinished_requests_past_the_per_ip_limit_is_refused() {
    let mut c = config();
    c.limits.max_connections = 100;
    c.limits.max_connections_per_ip = 20;
    c.limits.header_timeout = Duration::from_secs(30);
    let s = start_with(c).await;
    let mut flood = Vec::new();
    for _ in 0..20 {
        flood.push(unfinished(&s, "127.0.0.1").await);
    }
    // 280 more, as in the report's 300: each is answered 429 at once, unread.
    for i in 0..280 {
        let mut tcp = tcp_from("127.0.0.1", s.addr).await;
        let (got, closed) = read_until_closed(&mut tcp, WAIT).await;
        assert!(closed, "attempt {i} was left open");
        assert_eq!(
            status_of(&got),
            429,
            "attempt {i}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    // Everyone else is served meanwhile: WebSockets, the API, metrics, the pages.
    assert_served(&s, "127.0.0.2").await;
    assert_eq!(get_from(&s, "127.0.0.3", "/api/stats", "").await.0, 200);
    assert_eq!(get_from(&s, "127.0.0.3", "/api/channels", "").await.0, 200);
    assert_eq!(get_from(&s, "127.0.0.3", "/", "").await.0, 200);
    let (status, text) = get_from(&s, "127.0.0.3", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("duplex_limit_hits_total{limit=\"connections_per_ip\"} 280"),
        "{text}"
    );
    // The flood's own connections are still unanswered, not dropped.
    for tcp in &mut flood {
        let (got, closed) = read_until_closed(tcp, Duration::from_millis(10)).await;
        assert!(!closed && got.is_empty());
    }
}

#[tokio::test]
async fn unfinished_requests_count_against_the_total_limit() {
    let mut c = short(2000);
    c.limits.max_connections = 10;
    c.limits.max_connections_per_ip = 0;
    let s = start_with(c).await;
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(unfinished(&s, "127.0.0.1").await);
    }
    let (status, text) = get_from(&s, "127.0.0.2", "/healthz", "").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("too many connections"), "{text}");
    assert!(metric(&s, "duplex_limit_hits_total{limit=\"connections_total\"}").await >= 1.0);
    // The header timeout frees the slots: the flood holds the server for seconds only.
    for tcp in &mut flood {
        let (_, closed) = read_until_closed(tcp, Duration::from_secs(2) + SLACK).await;
        assert!(closed, "an unfinished request outlived the header timeout");
    }
    // The slot is given back as the socket is closed; let that finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_served(&s, "127.0.0.2").await;
}

#[tokio::test]
async fn large_unfinished_heads_keep_memory_bounded() {
    let s = start_with(config()).await; // the defaults: 16 KiB heads, 10 s header timeout
    let big = vec![b'a'; 300 * 1024];
    let before = rss_bytes();
    // 100 connections that try to send 300 KB of headers each: refused at 16 KiB.
    let mut refused = 0;
    for _ in 0..100 {
        let mut tcp = unfinished(&s, "127.0.0.1").await;
        let _ = tcp.write_all(b"X-Big: ").await;
        let _ = tcp.write_all(&big).await;
        let (got, _) = read_until_closed(&mut tcp, WAIT).await;
        if status_of(&got) == 431 {
            refused += 1;
        }
    }
    assert_eq!(refused, 100);
    // 100 connections that hold just under the limit, unfinished, until the timeout.
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut tcp = unfinished(&s, "127.0.0.1").await;
        tcp.write_all(b"X-Big: ").await.unwrap();
        tcp.write_all(&big[..15 * 1024]).await.unwrap();
        held.push(tcp);
    }
    assert_served(&s, "127.0.0.2").await;
    let grown = rss_bytes().saturating_sub(before);
    // Before the head limit this flood held ~65 MB; now each connection costs its
    // buffer of at most a few tens of KiB.
    assert!(
        grown < 16 * 1024 * 1024,
        "RSS grew by {} MiB",
        grown / 1024 / 1024
    );
    for tcp in &mut held {
        let (got, closed) = read_until_closed(tcp, Duration::from_millis(5)).await;
        assert!(!closed && got.is_empty(), "held heads are not answered yet");
    }
}

#[tokio::test]
async fn protect_reads_covers_metrics_and_the_api() {
    let mut c = config();
    c.api.key = Some(KEY.into());
    c.api.protect_reads = true;
    let s = start_with(c).await;
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    for path in ["/metrics", "/api/stats", "/api/channels"] {
        let (status, text) = get_from(&s, "127.0.0.1", path, "").await;
        assert_eq!(status, 401, "{path}: {text}");
        assert!(
            !text.contains("duplex_connections"),
            "{path} leaked metrics"
        );
        assert_eq!(
            get_from(&s, "127.0.0.1", path, &auth).await.0,
            200,
            "{path}"
        );
    }
    assert_eq!(get_from(&s, "127.0.0.1", "/healthz", "").await.0, 200);
    assert_served(&s, "127.0.0.2").await;
}

#[tokio::test]
async fn shutdown_answers_503_while_draining_and_waits_for_no_unfinished_request() {
    let mut c = config();
    c.shutdown_timeout = Duration::from_secs(20);
    c.limits.header_timeout = Duration::from_secs(30);
    let s = start_with(c).await;
    // A WebSocket that never reads keeps the drain going until its close times out.
    let mut ws = tcp_from("127.0.0.2", s.addr).await;
    ws.write_all(upgrade_request(s.addr, "/ws", "").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 1024];
    let n = tokio::time::timeout(WAIT, ws.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&head[..n]), 101);
    eventually(|| s.hub.connections() == 1).await;
    let mut pending = unfinished(&s, "127.0.0.1").await;
    let mut idle = tcp_from("127.0.0.1", s.addr).await;

    let started = Instant::now();
    s.hub.shutdown();
    // Unfinished and idle connections are closed at once, not at the header timeout.
    for tcp in [&mut pending, &mut idle] {
        let (got, closed) = read_until_closed(tcp, SLACK).await;
        assert!(closed && got.is_empty(), "{got:?}");
    }
    // The listener stays open while draining and every HTTP answer is 503.
    let (status, text) = get_from(&s, "127.0.0.3", "/api/stats", "").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("shutting down"), "{text}");
    let (status, text) = get_from(&s, "127.0.0.3", "/healthz", "").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("shutting_down"), "{text}");
    let (status, _) = upgrade_status(s.addr, &upgrade_request(s.addr, "/ws", "")).await;
    assert_eq!(status, 503);
    // An unfinished request opened during the drain does not hold it up either.
    let _late = unfinished(&s, "127.0.0.1").await;

    tokio::time::timeout(Duration::from_secs(15), s.task)
        .await
        .expect("the drain ended with the last WebSocket, not at the deadline")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        TcpStream::connect(s.addr).await.is_err(),
        "the listener closes when the drain ends"
    );
    drop(ws);
}

#[tokio::test]
async fn shutdown_without_websockets_does_not_wait_for_an_unfinished_request() {
    let mut c = config();
    c.shutdown_timeout = Duration::from_secs(20);
    c.limits.header_timeout = Duration::from_secs(30);
    let s = start_with(c).await;
    let mut pending = unfinished(&s, "127.0.0.1").await;
    let started = Instant::now();
    s.hub.shutdown();
    tokio::time::timeout(SLACK, s.task)
        .await
        .expect("shutdown waited on an unfinished request")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < SLACK);
    let (_, closed) = read_until_closed(&mut pending, SLACK).await;
    assert!(closed);
}
