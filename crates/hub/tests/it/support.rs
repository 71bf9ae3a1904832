//! Test helpers.

use std::net::SocketAddr;
use std::time::Duration;

use duplex::{ClientBuilder, CloseCode, MaybeTlsStream, Message, WebSocket};
use duplex_hub::{Config, Hub, Server};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single wait in a test may take.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// A server running in the test's runtime.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) hub: Hub,
    pub(crate) task: tokio::task::JoinHandle<Result<(), duplex_hub::ServerError>>,
}

/// How long joins and leaves are collected in tests (the default is 200 ms): short, so that
/// `Client::subscribe` need not wait long for the client's own join.
pub(crate) const JOIN_LEAVE_INTERVAL: Duration = Duration::from_millis(10);

/// A configuration for tests: a free port, no demo feed, a short `join_leave_interval`.
pub(crate) fn config() -> Config {
    let mut c = Config::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.demo.ticker = false;
    c.channels.join_leave_interval = JOIN_LEAVE_INTERVAL;
    c
}

/// The client ids a `presence_diff` lists under `list` (`"joins"` or `"leaves"`).
pub(crate) fn listed(diff: &Value, list: &str) -> Vec<String> {
    diff[list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["client"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn start() -> TestServer {
    start_with(config()).await
}

pub(crate) async fn start_with(config: Config) -> TestServer {
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addr();
    let hub = server.hub().clone();
    let task = tokio::spawn(server.run(std::future::pending()));
    TestServer { addr, hub, task }
}

impl TestServer {
    pub(crate) fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub(crate) async fn client(&self) -> Client {
        Client::connect(ClientBuilder::new(self.url())).await
    }
}

/// A JSON-speaking WebSocket client (over TCP or TLS; over an HTTP/2 stream in the HTTP/2
/// tests).
pub(crate) struct Client<S = MaybeTlsStream> {
    pub(crate) ws: WebSocket<S>,
    pub(crate) welcome: Value,
    next_id: u64,
}

impl Client {
    pub(crate) async fn connect(builder: ClientBuilder) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, builder.connect())
            .await
            .expect("connect timed out")
            .expect("connect");
        Self::welcomed(ws).await
    }

    /// Connects to `server` from the loopback address `from` (e.g. `127.0.0.2`), so that
    /// per-IP limits count it apart from a flood on `127.0.0.1`.
    pub(crate) async fn connect_from(server: &TestServer, from: &str) -> Self {
        let tcp = tcp_from(from, server.addr).await;
        let builder = ClientBuilder::new(server.url()).subprotocol("duplex.v1");
        let (ws, _) = tokio::time::timeout(WAIT, builder.connect_on(MaybeTlsStream::Plain(tcp)))
            .await
            .expect("connect timed out")
            .expect("connect");
        Self::welcomed(ws).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// The client of `ws`, once the server's welcome has arrived.
    pub(crate) async fn welcomed(ws: WebSocket<S>) -> Self {
        let mut c = Self {
            ws,
            welcome: Value::Null,
            next_id: 1,
        };
        c.welcome = c.recv().await;
        assert_eq!(c.welcome["type"], "welcome", "{}", c.welcome);
        c
    }

    pub(crate) fn id(&self) -> &str {
        self.welcome["client"].as_str().unwrap()
    }

    pub(crate) async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    pub(crate) async fn send(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// The next frame as JSON; panics on timeout or close.
    pub(crate) async fn recv(&mut self) -> Value {
        let message = tokio::time::timeout(WAIT, self.ws.recv())
            .await
            .expect("recv timed out")
            .expect("connection closed")
            .expect("connection failed");
        serde_json::from_str(message.as_text().expect("text frame")).expect("JSON")
    }

    /// Sends `command` with a fresh id and returns the answer carrying that id; frames in
    /// between (events) are returned too, in order.
    pub(crate) async fn call_with_events(&mut self, mut command: Value) -> (Value, Vec<Value>) {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.send(command).await;
        let mut events = Vec::new();
        loop {
            let v = self.recv().await;
            if v["id"] == json!(id) {
                return (v, events);
            }
            events.push(v);
        }
    }

    pub(crate) async fn call(&mut self, command: Value) -> Value {
        self.call_with_events(command).await.0
    }

    /// Subscribes to a channel with join/leave events and asserts success; consumes the
    /// `presence_diff` frames after the reply up to the one that lists the client's own join
    /// (sent within the namespace's `join_leave_interval`). Nothing else may come between.
    pub(crate) async fn subscribe(&mut self, channel: &str) -> Value {
        let reply = self
            .call(json!({"type":"subscribe","channel":channel}))
            .await;
        assert_eq!(reply["type"], "reply", "{reply}");
        loop {
            let diff = self.recv_presence().await;
            if listed(&diff, "joins").iter().any(|c| c == self.id()) {
                return reply;
            }
        }
    }

    /// The next frame, which must be a `presence_diff`.
    pub(crate) async fn recv_presence(&mut self) -> Value {
        let diff = self.recv().await;
        assert_eq!(diff["type"], "presence_diff", "{diff}");
        diff
    }

    /// The next frame that is not a `presence_diff` (join/leave) event.
    pub(crate) async fn recv_message(&mut self) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] != "presence_diff" {
                return v;
            }
        }
    }

    /// Reads frames until the server closes; returns the close code.
    pub(crate) async fn closed(&mut self) -> Option<CloseCode> {
        let until = tokio::time::Instant::now() + WAIT * 2;
        loop {
            match tokio::time::timeout_at(until, self.ws.recv()).await {
                Err(_) => panic!("no close within the deadline"),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) => return self.ws.close_frame().map(|f| f.code),
            }
        }
    }

    /// Asserts that nothing arrives for `quiet`.
    pub(crate) async fn assert_silent(&mut self, quiet: Duration) {
        if let Ok(m) = tokio::time::timeout(quiet, self.ws.recv()).await {
            panic!("unexpected frame: {m:?}");
        }
    }
}

/// A raw HTTP/1.1 exchange; returns the status, the head and the body.
pub(crate) async fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (status, text) = exchange(tcp, request).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

/// Writes `request`, reads until the server closes; returns the status and the whole text.
pub(crate) async fn exchange(mut tcp: TcpStream, request: &str) -> (u16, String) {
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("HTTP response timed out")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A GET with optional extra header lines (each ending in `\r\n`).
pub(crate) async fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n"),
    )
    .await
}

/// A POST of a JSON body.
pub(crate) async fn post(
    addr: SocketAddr,
    path: &str,
    extra: &str,
    body: &str,
) -> (u16, String, String) {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        ),
    )
    .await
}

/// A WebSocket upgrade request with the given extra header lines; `version` and `key` are
/// the values to send.
pub(crate) fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Sends an upgrade request and returns the status and head (reads only the head, since a
/// successful upgrade keeps the connection open).
pub(crate) async fn upgrade_status(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("response timed out")
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        if n == 0 || buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Polls `f` until it is true or the wait runs out.
pub(crate) async fn eventually(mut f: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < until,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP connection to `addr` from the loopback address `from` (e.g. `127.0.0.2`).
pub(crate) async fn tcp_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("TCP connect timed out")
        .unwrap()
}

/// A raw HTTP/1.1 exchange over a connection from `from`; returns the status and the text.
pub(crate) async fn http_from(from: &str, addr: SocketAddr, request: &str) -> (u16, String) {
    exchange(tcp_from(from, addr).await, request).await
}

/// Asserts that a well-behaved client from `from` is served in full while whatever the test
/// set up goes on: `GET /healthz` answers 200, a WebSocket opens, subscribes, publishes and
/// receives its own publication.
pub(crate) async fn assert_served(server: &TestServer, from: &str) {
    let health = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let (status, text) = http_from(from, server.addr, &health).await;
    assert_eq!(status, 200, "healthz while under attack: {text}");
    let mut c = Client::connect_from(server, from).await;
    let channel = format!("served-{}", c.id().replace('-', "_"));
    c.subscribe(&channel).await;
    let (reply, events) = c
        .call_with_events(json!({"type":"publish","channel":channel,"data":{"ok":true}}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    // The publication may reach its publisher before or after the reply.
    let message = match events.into_iter().find(|e| e["type"] == "message") {
        Some(m) => m,
        None => c.recv_message().await,
    };
    assert_eq!(message["data"], json!({"ok":true}), "{message}");
}

/// This process's resident set size in bytes (the test's server runs in it; nextest runs
/// each test in a process of its own).
pub(crate) fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The value of one series of the server's `/metrics`, e.g.
/// `duplex_limit_hits_total{limit="header_timeout"}`; 0 when absent.
pub(crate) async fn metric(server: &TestServer, series: &str) -> f64 {
    let text = server.hub.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
