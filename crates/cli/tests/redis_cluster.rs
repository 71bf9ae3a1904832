//! `duplex serve` nodes on a real Redis Cluster (3 masters, 3 replicas): channels spread over
//! every shard, delivery in order across nodes, presence and history; the server API's
//! cluster-wide operations and `presence_stats`; a master killed with
//! SIGKILL mid-stream while publications go on; and a channel's slot moved to another
//! master.
//!
//! They need `redis-server` and `redis-cli` (Redis 7 or later, for sharded pub/sub) on the
//! PATH, so they are ignored in a plain test run; `cargo xtask test --only cluster` installs
//! them and runs them.

mod cluster_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::{
    api, event_where, free_port, publish_http, refused, user_token, Follower, HubClient, Node,
    Upstream,
};
use serde_json::{json, Value};

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Starts one cluster-enabled `redis-server` on a free port and waits until it listens. A
/// port is only known free until someone else binds it (another test's connection may take
/// it first, and the server then exits): then it tries again on another, five times at most.
fn spawn_cluster_server(dir: &Path) -> (u16, Child) {
    for _ in 0..5 {
        let port = free_cluster_port();
        let data = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&data).expect("redis dir");
        let log = std::fs::File::create(data.join("log")).expect("redis log");
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            // The other shards keep serving while one has no master (see
            // docs/deployment.md).
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &data.display().to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install it, or run `cargo xtask test --only cluster`)");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (port, child);
            }
            if !matches!(child.try_wait(), Ok(None)) {
                eprintln!("redis-server could not start on {port}; trying another port");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("redis-server did not start on five free ports in a row")
}

/// Runs `redis-cli` with `args`, at most `wait`; its standard output.
fn redis_cli(args: &[&str], wait: Duration) -> String {
    let mut child = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli (install redis, or run `cargo xtask test --only cluster`)");
    let deadline = Instant::now() + wait;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli {args:?} did not finish within {wait:?}");
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read as _;
        let _ = stdout.read_to_string(&mut out);
    }
    out
}

/// One command to the server on `port`.
fn query(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["-p", &port];
    all.extend_from_slice(args);
    redis_cli(&all, Duration::from_secs(5))
}

/// A Redis Cluster of three masters with one replica each, every server killed on drop.
struct RedisCluster {
    ports: Vec<u16>,
    servers: BTreeMap<u16, Child>,
    dir: PathBuf,
}

impl RedisCluster {
    fn start(dir: &Path) -> Self {
        let mut ports = Vec::new();
        let mut servers = BTreeMap::new();
        for _ in 0..6 {
            let (port, child) = spawn_cluster_server(dir);
            ports.push(port);
            servers.insert(port, child);
        }
        let cluster = Self {
            ports,
            servers,
            dir: dir.to_owned(),
        };
        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        redis_cli(&args, Duration::from_secs(30));
        cluster.wait_ready(Duration::from_secs(20));
        cluster
    }

    fn seeds(&self) -> String {
        self.ports[..2]
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn alive(&self) -> impl Iterator<Item = u16> + '_ {
        self.servers.keys().copied()
    }

    /// Waits until every live server says `cluster_state:ok`, knows three masters with
    /// slots, and every replica's link to its master is up.
    fn wait_ready(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let ready = self.alive().all(|port| {
                let info = query(port, &["cluster", "info"]);
                let role = query(port, &["role"]);
                let linked = !role.starts_with("slave")
                    || query(port, &["info", "replication"]).contains("master_link_status:up");
                info.contains("cluster_state:ok") && linked
            }) && self.masters().len() == 3;
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the redis cluster never became ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Slot ranges of each live master, as one live server sees them.
    fn masters(&self) -> BTreeMap<u16, Vec<(u16, u16)>> {
        let Some(port) = self.alive().next() else {
            return BTreeMap::new();
        };
        let mut masters = BTreeMap::new();
        for line in query(port, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let Some(master) = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            let ranges = fields[8..]
                .iter()
                .filter_map(|r| match r.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => r.parse().ok().map(|s| (s, s)),
                })
                .collect();
            masters.insert(master, ranges);
        }
        masters
    }

    /// The master that owns `channel`'s slot (the channel is the hash tag of its keys).
    fn master_of(&self, channel: &str) -> Option<u16> {
        let port = self.alive().next()?;
        let slot: u16 = query(port, &["cluster", "keyslot", channel])
            .trim()
            .parse()
            .ok()?;
        self.masters()
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|(port, _)| port)
    }

    /// One channel name per master: `(channel, master port)`, three in all.
    fn spread_channels(&self) -> Vec<(String, u16)> {
        let mut by_master: BTreeMap<u16, String> = BTreeMap::new();
        for i in 0..200 {
            let channel = format!("ch{i}");
            if let Some(master) = self.master_of(&channel) {
                by_master.entry(master).or_insert(channel);
            }
            if by_master.len() == 3 {
                break;
            }
        }
        assert_eq!(
            by_master.len(),
            3,
            "channels on every master: {by_master:?}"
        );
        by_master.into_iter().map(|(m, c)| (c, m)).collect()
    }

    /// SIGKILL.
    fn kill(&mut self, port: u16) {
        if let Some(mut child) = self.servers.remove(&port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let ports: Vec<u16> = self.servers.keys().copied().collect();
        for port in ports {
            self.kill(port);
        }
        if std::thread::panicking() {
            for port in &self.ports {
                let log = self.dir.join(format!("redis-{port}/log"));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                eprintln!("---- last lines of redis {port} ----");
                let lines: Vec<&str> = text.lines().rev().take(15).collect();
                for line in lines.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// The Redis Cluster and two nodes on it.
struct Setup {
    // Dropped in field order: the nodes before Redis, the directory last.
    nodes: Vec<Node>,
    redis: RedisCluster,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = RedisCluster::start(dir.path());
        let nodes = (1..=2)
            .map(|i| Node::start_cluster(dir.path(), &format!("n{i}"), &redis.seeds()))
            .collect();
        Self {
            nodes,
            redis,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli: cargo xtask test --only cluster"]
async fn channels_spread_over_every_shard_in_order_with_presence_and_history() {
    const N: u64 = 150;
    let setup = Setup::start();
    let channels = setup.redis.spread_channels();
    println!("channels and their masters: {channels:?}");
    let mut followers = Vec::new();
    for (channel, _) in &channels {
        for node in &setup.nodes {
            followers.push((
                channel.clone(),
                Follower::start(node.ws_url(), channel, None),
            ));
        }
    }
    for (_, f) in &followers {
        f.ready().await;
    }
    // One publisher per channel, each on the other node than the previous one.
    let mut publishers = Vec::new();
    for (i, (channel, _)) in channels.iter().enumerate() {
        let url = setup.nodes[i % 2].ws_url();
        let channel = channel.clone();
        publishers.push(tokio::spawn(async move {
            let mut client = HubClient::connect(&url).await.expect("connect");
            for n in 0..N {
                let offset = client.publish(&channel, n, 0).await;
                assert_eq!(offset, Ok(n + 1), "publish {n} to {channel}");
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher");
    }
    for (channel, f) in &followers {
        assert!(
            f.wait_for(Duration::from_secs(10), |s| s.received.len() as u64 >= N)
                .await,
            "{channel}: {} of {N} delivered",
            f.seen().received.len()
        );
    }
    // A moment for anything extra (a duplicate) to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (channel, f) in followers {
        let seen = f.stop().await;
        assert_eq!(seen.received, (0..N).collect::<Vec<_>>(), "{channel}");
        assert!(
            seen.violations.is_empty(),
            "{channel}: {:?}",
            seen.violations
        );
        assert_eq!(seen.connections, 1, "{channel}: no reset");
    }

    // History of every shard, read on the node that did not publish.
    let mut events = Vec::new();
    for (i, (channel, _)) in channels.iter().enumerate() {
        let mut client = HubClient::connect(&setup.nodes[(i + 1) % 2].ws_url())
            .await
            .expect("connect");
        let h = client
            .call(
                json!({"type":"history","channel":channel,"limit":10}),
                &mut events,
            )
            .await
            .expect("history reply");
        assert_eq!(h["type"], "reply", "{h}");
        assert_eq!(h["offset"], json!(N), "{h}");
        let ns: Vec<u64> = h["publications"]
            .as_array()
            .expect("publications")
            .iter()
            .filter_map(|p| p["data"]["n"].as_u64())
            .collect();
        assert_eq!(ns, (N - 10..N).collect::<Vec<_>>(), "{channel}");
    }

    // Presence across nodes, on every shard.
    for (channel, _) in &channels {
        let mut member = HubClient::connect(&setup.nodes[0].ws_url())
            .await
            .expect("connect");
        let sub = json!({"type":"subscribe","channel":channel,"info":{"name":"ada"}});
        let reply = member
            .call(sub, &mut events)
            .await
            .expect("subscribe reply");
        assert_eq!(reply["type"], "reply", "{reply}");
        let mut observer = HubClient::connect(&setup.nodes[1].ws_url())
            .await
            .expect("connect");
        let reply = observer
            .call(json!({"type":"presence","channel":channel}), &mut events)
            .await
            .expect("presence reply");
        let clients: Vec<&str> = reply["clients"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["client"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(clients, [member.client_id().as_str()], "{channel}: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli: cargo xtask test --only cluster"]
async fn the_server_api_and_presence_stats_work_across_nodes_on_every_shard() {
    let setup = Setup::start();
    let channels = setup.redis.spread_channels();
    let (n1, n2) = (&setup.nodes[0], &setup.nodes[1]);
    let mut events = Vec::new();

    // Channels subscribed only on n2, one per shard: n1 lists all three (every master is
    // asked for its shard channels), with no subscribers of its own.
    let mut on_n2 = HubClient::connect(&n2.ws_url())
        .await
        .expect("client on n2");
    for (channel, _) in &channels {
        let sub = json!({"type":"subscribe","channel":channel,"info":{"name":"bob"}});
        let reply = on_n2.call(sub, &mut events).await.expect("subscribe reply");
        assert_eq!(reply["type"], "reply", "{reply}");
    }
    let (status, v) = api(n1, "channels", json!({"pattern": "ch*"})).await;
    assert_eq!(status, 200, "{v}");
    let mut expected: Vec<Value> = channels
        .iter()
        .map(|(c, _)| json!({"channel": c, "subscribers": 0}))
        .collect();
    expected.sort_by(|a, b| a["channel"].as_str().cmp(&b["channel"].as_str()));
    assert_eq!(v["channels"], Value::Array(expected), "{v}");
    let (_, all) = api(n1, "channels", json!({})).await;
    assert!(!all.to_string().contains("$duplex"), "{all}");

    // presence and presence_stats on every shard: a member on each node, asked on n1.
    let mut on_n1 = HubClient::connect(&n1.ws_url())
        .await
        .expect("client on n1");
    for (channel, _) in &channels {
        let sub = json!({"type":"subscribe","channel":channel,"info":{"name":"ada"}});
        let reply = on_n1.call(sub, &mut events).await.expect("subscribe reply");
        assert_eq!(reply["type"], "reply", "{reply}");
        let (status, stats) = api(n1, "presence_stats", json!({"channel": channel})).await;
        assert_eq!(status, 200, "{stats}");
        assert_eq!(stats["clients"], 2, "{channel}: {stats}");
        let (status, presence) = api(n2, "presence", json!({"channel": channel})).await;
        assert_eq!(status, 200, "{presence}");
        let mut clients: Vec<&str> = presence["clients"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["client"].as_str()).collect())
            .unwrap_or_default();
        clients.sort_unstable();
        let mut both = [on_n1.client_id(), on_n2.client_id()];
        both.sort_unstable();
        assert_eq!(clients, both, "{channel}: {presence}");
    }

    // Server-side subscribe, unsubscribe and disconnect called on n1 act on n2's connection,
    // for a channel of each shard.
    let mut target = HubClient::connect(&n2.ws_url())
        .await
        .expect("client on n2");
    let id = target.client_id();
    for (i, (channel, _)) in channels.iter().enumerate() {
        let (status, v) = api(n1, "subscribe", json!({"client": id, "channel": channel})).await;
        assert_eq!((status, v["all_nodes"].as_bool()), (200, Some(true)), "{v}");
        let event = event_where(&mut target, |e| e["type"] == "subscribed")
            .await
            .expect("subscribed on n2");
        assert_eq!(event["channel"], json!(channel), "{event}");
        let n = 100 + i as u64;
        assert_eq!(publish_http(n1.addr(), channel, n).await, 200);
        let m = event_where(&mut target, |e| e["type"] == "message")
            .await
            .expect("the publication on n2");
        assert_eq!(
            (&m["channel"], &m["data"]["n"]),
            (&json!(channel), &json!(n))
        );
        let (_, v) = api(n1, "unsubscribe", json!({"client": id, "channel": channel})).await;
        assert_eq!(v["all_nodes"], true, "{v}");
        let event = event_where(&mut target, |e| e["type"] == "unsubscribed")
            .await
            .expect("unsubscribed on n2");
        assert_eq!(event["channel"], json!(channel), "{event}");
    }
    let body = json!({"client": id, "code": 4001, "reason": "banned"});
    let (status, v) = api(n1, "disconnect", body).await;
    assert_eq!((status, v["all_nodes"].as_bool()), (200, Some(true)), "{v}");
    assert!(event_where(&mut target, |_| false).await.is_none());
    assert_eq!(target.ws.close_frame().map(|f| f.code.0), Some(4001));

    // info on n1 lists both nodes from their heartbeats (3 s apart).
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let names = loop {
        let (status, v) = api(n1, "info", json!({})).await;
        assert_eq!(status, 200, "{v}");
        let names: Vec<String> = v["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|n| n["node"].as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if names.len() == 2 || tokio::time::Instant::now() > until {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(names, ["n1", "n2"]);

    // An idempotent publish retried through the other node is one publication.
    let (channel, _) = &channels[1];
    let body = json!({"channel": channel, "data": {"n": 7}, "idempotency_key": "order-7"});
    let (status, first) = api(n1, "publish", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = api(n2, "publish", body).await;
    assert_eq!((status, &again), (200, &first));
    let (_, history) = api(n2, "history", json!({"channel": channel, "limit": 5})).await;
    let sevens = history["publications"]
        .as_array()
        .map(|p| p.iter().filter(|p| p["data"]["n"] == 7).count());
    assert_eq!(sevens, Some(1), "{history}");
}

/// What one publisher saw: `n` of each acknowledged publication, and for each failed one
/// when it started (since the start of the test), how long it took and its status.
#[derive(Debug, Default)]
struct Published {
    acked: Vec<u64>,
    failed: Vec<(Duration, Duration, u16)>,
    slowest: Duration,
    /// How many were sent.
    sent: u64,
}

/// Publishes `{"n": 0, 1, ...}` to `channel` over the HTTP API until `stop`, every 10 ms.
async fn publish_until(
    addr: std::net::SocketAddr,
    channel: String,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> Published {
    let mut out = Published::default();
    let mut n = 0;
    while !stop.load(Ordering::Acquire) {
        let t = Instant::now();
        let status = publish_http(addr, &channel, n).await;
        let took = t.elapsed();
        out.slowest = out.slowest.max(took);
        if status == 200 {
            out.acked.push(n);
        } else {
            out.failed.push((t - start, took, status));
        }
        n += 1;
        out.sent = n;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli: cargo xtask test --only cluster"]
async fn a_master_killed_mid_stream_fails_over_without_losing_acknowledged_publications() {
    let mut setup = Setup::start();
    let channels = setup.redis.spread_channels();
    let (victim_channel, victim) = channels[0].clone();
    println!("channels and their masters: {channels:?}; killing {victim}");
    let mut followers = Vec::new();
    for (channel, _) in &channels {
        for node in &setup.nodes {
            followers.push((
                channel.clone(),
                Follower::start(node.ws_url(), channel, None),
            ));
        }
    }
    for (_, f) in &followers {
        f.ready().await;
    }
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(i, (channel, _))| {
            let addr = setup.nodes[i % 2].addr();
            tokio::spawn(publish_until(addr, channel.clone(), stop.clone(), start))
        })
        .collect();
    // `/healthz` of the first node, every 100 ms: when it said 503.
    let health = {
        let addr = setup.nodes[0].addr();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut degraded = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let at = start.elapsed();
                if let Ok((503, body)) = cluster_support::http(addr, "GET", "/healthz", None).await
                {
                    degraded.push((at, body));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            degraded
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = start.elapsed();
    setup.redis.kill(victim);

    // The replica takes over: the cluster is ok again without the victim.
    let redis = &setup.redis;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let masters = redis.masters();
        if masters.len() == 3 && !masters.contains_key(&victim) {
            let any = redis.alive().next().unwrap_or_default();
            if query(any, &["cluster", "info"]).contains("cluster_state:ok") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no replica took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted_at = start.elapsed();
    // Publications go on for a while on the new master.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Release);
    let mut published = BTreeMap::new();
    for ((channel, _), p) in channels.iter().zip(publishers) {
        published.insert(channel.clone(), p.await.expect("publisher"));
    }
    let degraded = health.await.expect("health poller");
    println!(
        "n1 /healthz said 503 {} times, from {:?} to {:?}: {:?}",
        degraded.len(),
        degraded.first().map(|d| d.0),
        degraded.last().map(|d| d.0),
        degraded.first().map(|d| d.1.trim())
    );
    assert!(
        !degraded.is_empty(),
        "the node reported itself degraded during the failover"
    );
    let victim_pub = &published[&victim_channel];
    assert_eq!(
        victim_pub.acked.last().copied(),
        victim_pub.sent.checked_sub(1),
        "publishing resumed on the promoted replica"
    );
    if let (Some(first), Some(last)) = (victim_pub.failed.first(), victim_pub.failed.last()) {
        println!(
            "master killed at {killed_at:?}, replica promoted by {promoted_at:?}; publishes to \
             {victim_channel} failed from {:?} to {:?} ({:?}, {} publishes, statuses {:?}); \
             slowest publish {:?}",
            first.0,
            last.0 + last.1,
            (last.0 + last.1).saturating_sub(first.0),
            victim_pub.failed.len(),
            victim_pub
                .failed
                .iter()
                .map(|f| f.2)
                .collect::<BTreeSet<_>>(),
            victim_pub.slowest,
        );
    } else {
        println!("master killed at {killed_at:?}; no publish failed");
    }
    for (channel, p) in &published {
        // Failing loudly: 503 within the command timeout (1 s) plus the request's own time.
        for &(at, took, status) in &p.failed {
            assert_eq!(status, 503, "{channel}: publish at {at:?}");
            assert!(
                took < Duration::from_secs(3),
                "{channel}: publish at {at:?} took {took:?}"
            );
        }
        println!(
            "{channel}: {} acknowledged, {} failed, slowest {:?}",
            p.acked.len(),
            p.failed.len(),
            p.slowest
        );
        if *channel != victim_channel {
            assert!(
                p.failed.is_empty(),
                "{channel} is on a surviving shard: {:?}",
                p.failed
            );
        }
    }

    // Every subscriber ends with every acknowledged publication, or was reset.
    for (channel, f) in &followers {
        let acked: BTreeSet<u64> = published[channel].acked.iter().copied().collect();
        let done = f
            .wait_for(Duration::from_secs(10), |s| {
                let seen = s.distinct();
                acked.iter().all(|n| seen.contains(n))
            })
            .await;
        let seen = f.seen();
        let missing: Vec<u64> = acked.difference(&seen.distinct()).copied().collect();
        let reset = seen.connections > 1;
        println!(
            "{channel}: follower on {:?}: {} delivered, {} missing, resets {}, violations {:?}",
            seen.nodes,
            seen.received.len(),
            missing.len(),
            seen.connections - 1,
            seen.violations
        );
        assert!(
            done || reset,
            "{channel}: acknowledged but not delivered: {missing:?}"
        );
        if !reset {
            assert!(
                seen.violations.is_empty(),
                "{channel}: {:?}",
                seen.violations
            );
            let distinct = seen.distinct();
            assert_eq!(distinct.len(), seen.received.len(), "{channel}: duplicates");
        }
        if *channel != victim_channel {
            assert!(!reset, "{channel} is on a surviving shard: no reset");
        }
    }
    for (_, f) in followers {
        f.stop().await;
    }
    // Both nodes report themselves healthy again, after renewing subscriptions.
    for node in &setup.nodes {
        node.wait_healthy();
        let log = node.log_text();
        assert!(
            log.contains("redis cluster subscriptions renewed"),
            "{}: subscriptions renewed after the failover",
            node.name
        );
    }
}

impl RedisCluster {
    /// Moves the slot of `channel` from its master to another master, keys included, as
    /// `redis-cli --cluster reshard` does for each slot. Returns the new master.
    fn move_slot_of(&self, channel: &str) -> u16 {
        let source = self.master_of(channel).expect("the channel's master");
        let target = self
            .masters()
            .into_keys()
            .find(|&m| m != source)
            .expect("another master");
        let slot = query(source, &["cluster", "keyslot", channel])
            .trim()
            .to_owned();
        let id = |port: u16| query(port, &["cluster", "myid"]).trim().to_owned();
        let (source_id, target_id) = (id(source), id(target));
        query(
            target,
            &["cluster", "setslot", &slot, "importing", &source_id],
        );
        query(
            source,
            &["cluster", "setslot", &slot, "migrating", &target_id],
        );
        let keys = query(source, &["cluster", "getkeysinslot", &slot, "1000"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if !keys.is_empty() {
            let target_port = target.to_string();
            let mut args = vec![
                "migrate",
                "127.0.0.1",
                &target_port,
                "",
                "0",
                "5000",
                "KEYS",
            ];
            args.extend(keys.iter().copied());
            let out = query(source, &args);
            assert!(out.contains("OK"), "migrate: {out}");
        }
        for port in [target, source] {
            query(port, &["cluster", "setslot", &slot, "node", &target_id]);
        }
        for port in self.masters().into_keys() {
            query(port, &["cluster", "setslot", &slot, "node", &target_id]);
        }
        target
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli: cargo xtask test --only cluster"]
async fn a_slot_moved_to_another_master_keeps_its_stream() {
    const N: u64 = 50;
    let setup = Setup::start();
    let (channel, master) = setup.redis.spread_channels().remove(0);
    let followers: Vec<Follower> = setup
        .nodes
        .iter()
        .map(|n| Follower::start(n.ws_url(), &channel, None))
        .collect();
    for f in &followers {
        f.ready().await;
    }
    let mut publisher = HubClient::connect(&setup.nodes[0].ws_url())
        .await
        .expect("connect");
    for n in 0..N {
        assert_eq!(publisher.publish(&channel, n, 0).await, Ok(n + 1));
    }
    let target = setup.redis.move_slot_of(&channel);
    println!("{channel}: slot moved from {master} to {target}");
    assert_eq!(setup.redis.master_of(&channel), Some(target));
    // Publishing goes on on the new master, with the stream's offsets (its keys moved).
    for n in N..2 * N {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match publisher.publish(&channel, n, 0).await {
                Ok(offset) => {
                    assert_eq!(offset, n + 1);
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "publish {n}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    for f in &followers {
        assert!(
            f.wait_for(Duration::from_secs(10), |s| s.received.len() as u64
                >= 2 * N)
                .await,
            "{} of {} delivered after the move",
            f.seen().received.len(),
            2 * N
        );
    }
    for f in followers {
        let seen = f.stop().await;
        assert_eq!(seen.received, (0..2 * N).collect::<Vec<_>>());
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert_eq!(seen.connections, 1, "no reset");
    }
    for node in &setup.nodes {
        let log = node.log_text();
        assert!(
            log.contains("redis dropped a subscription; resubscribing"),
            "{}: the old master ended the subscription",
            node.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli: cargo xtask test --only cluster"]
async fn the_per_user_connection_limit_counts_every_node_on_the_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = RedisCluster::start(dir.path());
    let seeds = redis.seeds();
    let n1 = Node::start_with_user_limit(dir.path(), "n1", &Upstream::Cluster(&seeds), 1);
    let n2 = Node::start_with_user_limit(dir.path(), "n2", &Upstream::Cluster(&seeds), 1);
    n2.wait_hears("n1").await;
    let url = |node: &Node| format!("{}?token={}", node.ws_url(), user_token("ada"));
    let mut first = HubClient::connect(&url(&n1)).await.expect("ada on n1");
    assert_eq!(refused(&HubClient::connect(&url(&n2)).await), Some(429));
    let _ = first.ws.close(duplex::CloseCode::NORMAL, "bye").await;
    drop(first);
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match refused(&HubClient::connect(&url(&n2)).await) {
            None => break,
            Some(429) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(status) => panic!("n2 still refuses the user: HTTP {status}"),
        }
    }
    drop((n1, n2, redis, dir));
}
