//! Real processes for the multi-node tests: `redis-server`, `duplex serve` nodes on the Redis
//! broker and `nginx` in front, each on free loopback ports, each killed on drop; and a hub
//! protocol client that keeps a subscription across reconnects.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duplex::{MaybeTlsStream, Message, WebSocket};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const DUPLEX: &str = env!("CARGO_BIN_EXE_duplex");
pub const API_KEY: &str = "cluster-test-key";
/// The HS256 secret of nodes started with [`Node::start_with_user_limit`].
pub const JWT_SECRET: &str = "cluster-test-jwt-secret-0123456789";

/// The HTTP status a connection attempt was refused with, `None` when it was served.
pub fn refused(attempt: &duplex::Result<HubClient>) -> Option<u16> {
    match attempt {
        Ok(_) => None,
        Err(duplex::Error::Refused { status, .. }) => Some(*status),
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// A token of `user` signed with [`JWT_SECRET`], valid for an hour.
pub fn user_token(user: &str) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token")
}

/// A free port on 127.0.0.1 (bound and released; the OS does not hand it out again soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Prints a log file when a test fails, to see what the process did.
fn show_log_on_panic(what: &str, path: &Path) {
    if std::thread::panicking() {
        if let Ok(text) = std::fs::read_to_string(path) {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- last lines of {what} ----");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A `redis-server` with persistence off, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl Redis {
    pub fn start(dir: &Path) -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            dir: dir.to_owned(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.display().to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install it, or run `cargo xtask test --only cluster`)");
        self.child = Some(child);
        wait_listening(self.port, "redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: Redis loses everything (no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        show_log_on_panic("redis", &self.dir.join("redis.log"));
    }
}

/// One `duplex serve` node on the Redis broker, killed on drop.
pub struct Node {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

/// The test configuration of every node: a short presence TTL, fast failure while Redis is
/// down, a deep history, no rate limits in the way.
/// With `per_user`, the node also verifies HS256 tokens signed with [`JWT_SECRET`] and
/// allows that many connections per user (anonymous connections stay allowed).
fn node_config(name: &str, port: u16, redis: &Upstream<'_>, per_user: Option<usize>) -> String {
    let (per_user, auth) = match per_user {
        Some(n) => (
            format!("max_connections_per_user = {n}\n"),
            format!("\n[auth]\njwt_secret = \"{JWT_SECRET}\"\n"),
        ),
        None => (String::new(), String::new()),
    };
    let (broker, sentinel) = match redis {
        Upstream::Url(url) => (
            format!("broker = \"redis\"\nredis_url = \"{url}\""),
            String::new(),
        ),
        Upstream::Cluster(seeds) => (
            format!("broker = \"redis-cluster\"\nredis_cluster = \"{seeds}\""),
            String::new(),
        ),
        Upstream::Sentinel { sentinels, master } => (
            "broker = \"redis\"".to_owned(),
            format!("sentinels = {sentinels:?}\nsentinel_master = \"{master}\""),
        ),
    };
    format!(
        r#"listen = "127.0.0.1:{port}"
node = "{name}"
{broker}

[redis]
prefix = "test"
presence_ttl = "1500ms"
timeout = "1s"
{sentinel}

[api]
key = "{API_KEY}"

[limits]
commands_per_second = 100000
commands_burst = 100000
max_errors = 100000
max_queue_bytes = 16777216
trusted_proxies = ["127.0.0.1"]
{per_user}
[demo]
ticker = false

[channels]
history_size = 5000
history_ttl = "10m"
{auth}"#
    )
}

/// Where a node finds Redis.
pub enum Upstream<'a> {
    /// One Redis at this URL.
    Url(&'a str),
    /// A Redis Cluster, through these comma-separated seed URLs.
    Cluster(&'a str),
    Sentinel {
        sentinels: Vec<String>,
        master: &'a str,
    },
}

impl Node {
    pub fn start(dir: &Path, name: &str, redis_url: &str) -> Self {
        Self::start_with(dir, name, &Upstream::Url(redis_url))
    }

    /// A node on the Redis Cluster reached through `seeds` (comma-separated URLs).
    pub fn start_cluster(dir: &Path, name: &str, seeds: &str) -> Self {
        Self::start_with(dir, name, &Upstream::Cluster(seeds))
    }

    /// A node on the Redis `redis` names.
    pub fn start_with(dir: &Path, name: &str, redis: &Upstream<'_>) -> Self {
        Self::start_configured(dir, name, redis, None)
    }

    /// A node on the Redis `redis` names that verifies tokens of [`user_token`] and allows
    /// `per_user` connections per user.
    pub fn start_with_user_limit(
        dir: &Path,
        name: &str,
        redis: &Upstream<'_>,
        per_user: usize,
    ) -> Self {
        Self::start_configured(dir, name, redis, Some(per_user))
    }

    /// Waits (up to 10 s) until this node lists `other` among the nodes it heard from.
    pub async fn wait_hears(&self, other: &str) {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, v) = api(self, "info", json!({})).await;
            assert_eq!(status, 200, "{v}");
            let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
            if nodes.iter().any(|n| n["node"] == other) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{} never heard {other}: {v}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn start_configured(
        dir: &Path,
        name: &str,
        redis: &Upstream<'_>,
        per_user: Option<usize>,
    ) -> Self {
        let port = free_port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, node_config(name, port, redis, per_user)).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("node log");
        let child = Command::new(DUPLEX)
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("DUPLEX_REDIS_URL")
            .env_remove("DUPLEX_REDIS_CLUSTER")
            .env("NO_COLOR", "1")
            .env("DUPLEX_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("duplex serve");
        wait_listening(port, name);
        let node = Self {
            name: name.to_owned(),
            port,
            child: Some(child),
            log,
        };
        node.wait_healthy();
        node
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Waits until `/healthz` answers 200 (Redis reachable, pub/sub connected).
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _)) = http_blocking(self.addr(), "GET", "/healthz", None) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became healthy",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        show_log_on_panic(&self.name, &self.log);
    }
}

/// `nginx` in front of nodes, with the WebSocket settings of `deploy/nginx.conf`, killed on
/// drop. Runs from its own prefix directory: its own config, pid file and logs.
pub struct Nginx {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl Nginx {
    pub fn start(dir: &Path, upstreams: &[u16]) -> Self {
        let port = free_port();
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream duplex {{
{servers}    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://duplex;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_connect_timeout 2s;
            proxy_buffering off;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"#,
            dir = dir.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::File::create(&conf_path)
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (install it, or run `cargo xtask test --only cluster`)");
        wait_listening(port, "nginx");
        Self {
            port,
            child: Some(child),
            dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
        show_log_on_panic("nginx", &self.dir.join("logs/error.log"));
    }
}

/// A minimal HTTP/1.1 request with `Connection: close`; returns the status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await??;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A `GET` from synchronous code (also fine inside a runtime); returns status and body.
pub fn http_blocking(
    addr: SocketAddr,
    method: &str,
    path: &str,
    _body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Publishes `{"n": n}` through `POST /api/publish`; returns the HTTP status.
pub async fn publish_http(addr: SocketAddr, channel: &str, n: u64) -> u16 {
    let body = json!({"channel": channel, "data": {"n": n}}).to_string();
    match http(addr, "POST", "/api/publish", Some(&body)).await {
        Ok((status, _)) => status,
        Err(_) => 0,
    }
}

/// A hub protocol connection for commands (publish, presence).
pub struct HubClient {
    pub ws: WebSocket<MaybeTlsStream>,
    pub welcome: Value,
    next_id: u64,
}

impl HubClient {
    pub async fn connect(url: &str) -> duplex::Result<Self> {
        let (mut ws, _) = tokio::time::timeout(Duration::from_secs(5), duplex::connect(url))
            .await
            .map_err(|_| duplex::Error::Timeout("connect"))??;
        let welcome = next_json(&mut ws).await.unwrap_or(Value::Null);
        Ok(Self {
            ws,
            welcome,
            next_id: 1,
        })
    }

    pub fn client_id(&self) -> String {
        self.welcome["client"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Sends a command and returns the reply or error with its id; `events` gets the frames
    /// in between. `None` when the connection ends first.
    pub async fn call(&mut self, mut command: Value, events: &mut Vec<Value>) -> Option<Value> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .ok()?;
        loop {
            let v = tokio::time::timeout(Duration::from_secs(10), next_json(&mut self.ws))
                .await
                .ok()??;
            if v["id"] == json!(id) {
                return Some(v);
            }
            events.push(v);
        }
    }

    /// Publishes `{"n": n, "t": t}`; `Ok(offset)` on a reply, `Err(error frame)` otherwise.
    pub async fn publish(&mut self, channel: &str, n: u64, t: u64) -> Result<u64, Value> {
        let mut events = Vec::new();
        let cmd = json!({"type":"publish","channel":channel,"data":{"n":n,"t":t}});
        match self.call(cmd, &mut events).await {
            Some(v) if v["type"] == "reply" => Ok(v["offset"].as_u64().unwrap_or(0)),
            Some(v) => Err(v),
            None => Err(json!({"type":"error","code":"closed"})),
        }
    }

    /// The next event (a frame without an id), or `None` after `wait` or on close.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, next_json(&mut self.ws))
            .await
            .ok()
            .flatten()
    }
}

/// The next text frame as JSON; `None` when the connection ends.
pub async fn next_json(ws: &mut WebSocket<MaybeTlsStream>) -> Option<Value> {
    loop {
        let message = ws.recv().await?.ok()?;
        if let Some(text) = message.as_text() {
            return serde_json::from_str(text).ok();
        }
    }
}

/// What a [`Follower`] saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// `n` of every publication delivered, in delivery order (history reloads included).
    pub received: Vec<u64>,
    /// Offsets that did not follow the previous one by exactly one within an epoch.
    pub violations: Vec<String>,
    /// Connections made (1 + reconnects).
    pub connections: u32,
    /// Subscribe replies with `recovered: false` after a previous position.
    pub not_recovered: u32,
    /// Node of each connection, from `welcome`.
    pub nodes: Vec<String>,
    /// Delivery latencies in microseconds (from the `t` field), when asked for.
    pub latencies_us: Vec<u64>,
}

impl Seen {
    pub fn distinct(&self) -> BTreeSet<u64> {
        self.received.iter().copied().collect()
    }
}

/// A subscriber that behaves like `web/duplex.js`: keeps `(epoch, offset)`, reconnects when
/// its connection ends and resubscribes with `since`; when the server says `recovered: false`
/// it reloads the channel's retained history, as the protocol tells clients to do.
pub struct Follower {
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    pub fn start(url: String, channel: &str, clock: Option<Instant>) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(follow(
            url,
            channel.to_owned(),
            seen.clone(),
            stop.clone(),
            clock,
        ));
        Self { seen, stop, task }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the first connection's subscription is confirmed.
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.seen().nodes.is_empty() {
            assert!(Instant::now() < deadline, "follower never subscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `pred` holds for what was seen, at most `wait`.
    pub async fn wait_for(&self, wait: Duration, pred: impl Fn(&Seen) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if pred(&self.seen()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Release);
        self.task.abort();
        let seen = self.seen();
        let _ = self.task.await;
        seen
    }
}

async fn follow(
    url: String,
    channel: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    clock: Option<Instant>,
) {
    let mut position: Option<(String, u64)> = None;
    while !stop.load(Ordering::Acquire) {
        let Ok(mut client) = HubClient::connect(&url).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let node = client.welcome["node"].as_str().unwrap_or("?").to_owned();
        let mut cmd = json!({"type":"subscribe","channel":channel});
        if let Some((epoch, offset)) = &position {
            cmd["since"] = json!({"epoch": epoch, "offset": offset});
        }
        let mut events = Vec::new();
        let reply = client.call(cmd, &mut events).await;
        let Some(reply) = reply.filter(|r| r["type"] == "reply") else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let epoch = reply["epoch"].as_str().unwrap_or_default().to_owned();
        let offset = reply["offset"].as_u64().unwrap_or(0);
        let recovered = reply["recovered"] == json!(true);
        let mut reload = Vec::new();
        if !recovered {
            if position.is_some() {
                // The stream started over (new epoch) or the gap is out of the window: load
                // what is retained, as a client reloads its state.
                let mut more = Vec::new();
                let h = client
                    .call(json!({"type":"history","channel":channel}), &mut more)
                    .await;
                events.extend(more);
                let Some(h) = h.filter(|h| h["type"] == "reply") else {
                    continue;
                };
                reload = h["publications"].as_array().cloned().unwrap_or_default();
                let h_epoch = h["epoch"].as_str().unwrap_or_default();
                if h_epoch != epoch {
                    continue; // the epoch changed again in between: start over
                }
            }
            position = Some((epoch.clone(), offset));
        }
        {
            let Ok(mut s) = seen.lock() else { return };
            s.connections += 1;
            s.nodes.push(node);
            if !recovered && !reload.is_empty() {
                s.not_recovered += 1;
            }
            for p in &reload {
                if p["offset"].as_u64().is_some_and(|o| o <= offset) {
                    if let Some(n) = p["data"]["n"].as_u64() {
                        s.received.push(n);
                    }
                }
            }
        }
        let mut pending = events.into_iter();
        loop {
            let v = match pending.next() {
                Some(v) => v,
                None => match next_json(&mut client.ws).await {
                    Some(v) => v,
                    None => break,
                },
            };
            if v["type"] != "message" {
                continue;
            }
            let Some(o) = v["offset"].as_u64() else {
                continue;
            };
            let Some((epoch, last)) = position.as_mut() else {
                continue;
            };
            let Ok(mut s) = seen.lock() else { return };
            if o != *last + 1 {
                s.violations
                    .push(format!("epoch {epoch}: offset {o} after {last}"));
                if o <= *last {
                    continue;
                }
            }
            *last = o;
            if let Some(n) = v["data"]["n"].as_u64() {
                s.received.push(n);
            }
            if let (Some(clock), Some(t)) = (clock, v["data"]["t"].as_u64()) {
                let now = u64::try_from(clock.elapsed().as_micros()).unwrap_or(u64::MAX);
                s.latencies_us.push(now.saturating_sub(t));
            }
        }
    }
}

/// Calls `POST /api/<method>` on `node`; the status and JSON answer.
pub async fn api(node: &Node, method: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/{method}");
    let (status, text) = http(node.addr(), "POST", &path, Some(&body.to_string()))
        .await
        .expect("api call");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}

/// Events of `client` until one satisfies `pred` (or 10 s pass: `None`).
pub async fn event_where(client: &mut HubClient, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        let event = client.next_event(left).await?;
        if pred(&event) {
            return Some(event);
        }
    }
    None
}
