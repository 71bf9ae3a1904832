//! Several `duplex serve` nodes sharing channels through a real `redis-server`, with `nginx`
//! in front: delivery across nodes, a node killed with SIGKILL, Redis restarted empty, and
//! presence across nodes.
//!
//! They need `redis-server` and `nginx` on the PATH, so they are ignored in a plain test run;
//! `cargo xtask test --only cluster` installs both and runs them.

mod cluster_support;

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_support::{
    api, event_where, http, publish_http, refused, user_token, Follower, HubClient, Nginx, Node,
    Redis, Upstream,
};
use serde_json::{json, Value};

/// Redis and three nodes.
struct Cluster {
    // Dropped in field order: the nodes before Redis, the directory last.
    nodes: Vec<Node>,
    redis: Redis,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = Redis::start(dir.path());
        let nodes = (1..=3)
            .map(|i| Node::start(dir.path(), &format!("n{i}"), &redis.url()))
            .collect();
        Self { nodes, redis, dir }
    }

    fn nginx(&self) -> Nginx {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        Nginx::start(self.dir.path(), &ports)
    }
}

fn all(n: u64) -> Vec<u64> {
    (0..n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and nginx: cargo xtask test --only cluster"]
async fn cross_node_delivery_in_offset_order_without_duplicates() {
    let cluster = Cluster::start();
    let nginx = cluster.nginx();
    let mut followers = Vec::new();
    for node in &cluster.nodes {
        followers.push(Follower::start(node.ws_url(), "room", None));
    }
    for _ in 0..3 {
        followers.push(Follower::start(nginx.ws_url(), "room", None));
    }
    for f in &followers {
        f.ready().await;
    }
    let nodes_used: BTreeSet<String> = followers.iter().flat_map(|f| f.seen().nodes).collect();
    assert_eq!(
        nodes_used.len(),
        3,
        "followers on every node: {nodes_used:?}"
    );

    // Publishers on two nodes, alternating, plus the HTTP API of the third.
    const N: u64 = 300;
    let mut p1 = HubClient::connect(&cluster.nodes[0].ws_url())
        .await
        .unwrap();
    let mut p2 = HubClient::connect(&nginx.ws_url()).await.unwrap();
    let mut offsets = Vec::new();
    for n in 0..N {
        let offset = match n % 3 {
            0 => p1.publish("room", n, 0).await.expect("publish on n1"),
            1 => p2.publish("room", n, 0).await.expect("publish via nginx"),
            _ => {
                assert_eq!(publish_http(cluster.nodes[2].addr(), "room", n).await, 200);
                n + 1
            }
        };
        offsets.push(offset);
    }
    assert_eq!(offsets, (1..=N).collect::<Vec<_>>(), "offsets are 1..=N");
    for f in &followers {
        assert!(
            f.wait_for(Duration::from_secs(20), |s| s.received.len() as u64 >= N)
                .await,
            "a follower got {} of {N}",
            f.seen().received.len()
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for f in followers {
        let seen = f.stop().await;
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert_eq!(seen.received, all(N), "every publication once, in order");
        assert_eq!(seen.connections, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and nginx: cargo xtask test --only cluster"]
async fn killed_node_clients_reconnect_through_nginx_and_recover() {
    let mut cluster = Cluster::start();
    let nginx = cluster.nginx();
    // Round robin spreads them over the three nodes.
    let mut followers = Vec::new();
    for _ in 0..9 {
        followers.push(Follower::start(nginx.ws_url(), "feed", None));
    }
    for f in &followers {
        f.ready().await;
    }
    let victim = cluster.nodes[2].name.clone();
    let on_victim = followers
        .iter()
        .filter(|f| f.seen().nodes[0] == victim)
        .count();
    assert!(on_victim > 0, "some followers are on {victim}");

    const N: u64 = 600;
    let publisher_addr = cluster.nodes[0].addr();
    for n in 0..N {
        assert_eq!(publish_http(publisher_addr, "feed", n).await, 200);
        if n == N / 3 {
            cluster.nodes[2].kill();
        }
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for f in &followers {
        assert!(
            f.wait_for(Duration::from_secs(30), |s| s.received.len() as u64 >= N)
                .await,
            "a follower got {} of {N}: {:?}",
            f.seen().received.len(),
            f.seen().nodes
        );
    }
    let mut reconnected = 0;
    for f in followers {
        let seen = f.stop().await;
        eprintln!(
            "follower: nodes {:?}, {} received",
            seen.nodes,
            seen.received.len()
        );
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert_eq!(
            seen.received,
            all(N),
            "the complete sequence, once, in order"
        );
        if seen.nodes[0] == victim {
            assert!(seen.connections >= 2, "reconnected: {:?}", seen.nodes);
            assert!(
                seen.nodes[1..].iter().all(|n| *n != victim),
                "{:?}",
                seen.nodes
            );
            reconnected += 1;
        } else {
            assert_eq!(seen.connections, 1, "{:?}", seen.nodes);
        }
    }
    assert_eq!(reconnected, on_victim);
    assert!(cluster.nodes[0].alive() && cluster.nodes[1].alive());
}

/// Publishes `n`; records it when acknowledged. Errors must say `unavailable`.
async fn publish(publisher: &mut HubClient, n: u64, acked: &mut BTreeSet<u64>) -> bool {
    match publisher.publish("ticks", n, 0).await {
        Ok(_) => {
            acked.insert(n);
            true
        }
        Err(e) => {
            assert_eq!(e["code"], "unavailable", "{e}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and nginx: cargo xtask test --only cluster"]
async fn redis_restart_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start();
    let mut followers = Vec::new();
    for node in &cluster.nodes {
        for _ in 0..2 {
            followers.push(Follower::start(node.ws_url(), "ticks", None));
        }
    }
    for f in &followers {
        f.ready().await;
    }
    let mut publisher = HubClient::connect(&cluster.nodes[0].ws_url())
        .await
        .unwrap();
    let mut acked = BTreeSet::new();
    let mut refused = 0;
    let mut n = 0;
    while n < 200 {
        assert!(publish(&mut publisher, n, &mut acked).await);
        n += 1;
    }

    cluster.redis.kill();
    // While Redis is down: errors, never a silent drop; /healthz degraded.
    for _ in 0..5 {
        if !publish(&mut publisher, n, &mut acked).await {
            refused += 1;
        }
        n += 1;
    }
    let http = publish_http(cluster.nodes[1].addr(), "ticks", n).await;
    n += 1;
    assert_eq!(http, 503, "HTTP publish while Redis is down");
    let (status, body) = cluster_support::http(cluster.nodes[2].addr(), "GET", "/healthz", None)
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("degraded"), "{body}");
    assert_eq!(refused, 5, "every publish during the outage failed");

    cluster.redis.restart();
    for node in &cluster.nodes {
        node.wait_healthy();
    }
    let first_after = n;
    while n < first_after + 200 {
        // The first publishes may still meet the command connection reconnecting.
        let _ = publish(&mut publisher, n, &mut acked).await;
        n += 1;
    }
    assert!(
        acked.len() >= 390,
        "most publishes after the restart succeed: {}",
        acked.len()
    );
    for f in &followers {
        let ok = f
            .wait_for(Duration::from_secs(30), |s| acked.is_subset(&s.distinct()))
            .await;
        let seen = f.seen();
        let missing: Vec<u64> = acked.difference(&seen.distinct()).copied().collect();
        assert!(
            ok,
            "missing acknowledged publications {missing:?}; {seen:?}"
        );
    }
    for node in &mut cluster.nodes {
        assert!(node.alive(), "{} survived the Redis restart", node.name);
        for line in node.log_text().lines() {
            if line.contains("WARN") || line.contains("reset") || line.contains("catching") {
                eprintln!("{}: {line}", node.name);
            }
        }
    }
    for f in followers {
        let seen = f.stop().await;
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        eprintln!(
            "follower: {} connections, {} reloads, {} received, {} distinct",
            seen.connections,
            seen.not_recovered,
            seen.received.len(),
            seen.distinct().len()
        );
        assert!(seen.connections >= 2, "told to resubscribe: {seen:?}");
        let unique = seen.distinct().len();
        assert_eq!(unique, seen.received.len(), "no duplicate");
    }
}

/// The entry of `client` in a `presence_diff` frame's `joins` or `leaves`.
fn listed<'a>(ev: &'a Value, list: &str, client: &str) -> Option<&'a Value> {
    if ev["type"] != "presence_diff" {
        return None;
    }
    ev[list].as_array()?.iter().find(|e| e["client"] == client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and nginx: cargo xtask test --only cluster"]
async fn presence_across_nodes_and_cleanup_after_a_node_dies() {
    let mut cluster = Cluster::start();
    let mut a = HubClient::connect(&cluster.nodes[0].ws_url())
        .await
        .unwrap();
    let mut b = HubClient::connect(&cluster.nodes[1].ws_url())
        .await
        .unwrap();
    let mut observer = HubClient::connect(&cluster.nodes[2].ws_url())
        .await
        .unwrap();
    let mut events = Vec::new();
    let sub = |info: &str| json!({"type":"subscribe","channel":"lobby","info":{"name":info}});
    let reply = a.call(sub("a"), &mut events).await.unwrap();
    assert_eq!(reply["type"], "reply", "{reply}");
    let reply = b.call(sub("b"), &mut events).await.unwrap();
    assert_eq!(reply["type"], "reply", "{reply}");
    let b_id = b.client_id();

    // a (node 1) sees b (node 2) join.
    let mut joined = false;
    while let Some(ev) = a.next_event(Duration::from_secs(5)).await {
        if let Some(join) = listed(&ev, "joins", &b_id) {
            assert_eq!(join["info"]["name"], "b");
            joined = true;
            break;
        }
    }
    assert!(joined, "join delivered across nodes");

    // Node 3, with no subscriber of its own, lists both.
    let presence = json!({"type":"presence","channel":"lobby"});
    let reply = observer.call(presence.clone(), &mut events).await.unwrap();
    let mut clients: Vec<String> = reply["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap().to_owned())
        .collect();
    clients.sort();
    let mut expected = vec![a.client_id(), b_id.clone()];
    expected.sort();
    assert_eq!(clients, expected, "{reply}");

    // Presence survives several refresh periods (1.5 s TTL).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reply = observer.call(presence.clone(), &mut events).await.unwrap();
    assert_eq!(reply["clients"].as_array().unwrap().len(), 2, "{reply}");

    // Node 2 dies without cleaning up: b disappears within the TTL, with a leave event.
    cluster.nodes[1].kill();
    let mut left = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        match a.next_event(Duration::from_millis(500)).await {
            Some(ev) if listed(&ev, "leaves", &b_id).is_some() => {
                left = true;
                break;
            }
            _ => {}
        }
    }
    assert!(left, "leave announced for the dead node's client");
    let reply = observer.call(presence, &mut events).await.unwrap();
    let clients = reply["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{reply}");
    assert_eq!(clients[0]["client"], a.client_id().as_str());
}

/// Sends one inline command to Redis and returns the first line of the answer.
async fn redis_command(port: u16, command: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("redis");
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0; 256];
    let n = stream.read(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf[..n]).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and nginx: cargo xtask test --only cluster"]
async fn lost_pubsub_connections_are_caught_up_from_history() {
    let mut cluster = Cluster::start();
    let mut followers = Vec::new();
    for node in &cluster.nodes {
        followers.push(Follower::start(node.ws_url(), "news", None));
    }
    for f in &followers {
        f.ready().await;
    }
    const N: u64 = 400;
    let publisher = cluster.nodes[0].addr();
    let mut killed = 0;
    for n in 0..N {
        assert_eq!(publish_http(publisher, "news", n).await, 200);
        if n % 100 == 50 {
            // Every node's subscriber connection drops; Redis keeps its data. Publications
            // go on meanwhile and reach the nodes only through history.
            let answer = redis_command(cluster.redis.port, "CLIENT KILL TYPE pubsub").await;
            killed += answer.trim_start_matches(':').parse::<u32>().unwrap_or(0);
        }
    }
    assert!(killed >= 3, "pub/sub connections killed: {killed}");
    for f in &followers {
        assert!(
            f.wait_for(Duration::from_secs(20), |s| s.received.len() as u64 >= N)
                .await,
            "a follower got {} of {N}",
            f.seen().received.len()
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for f in followers {
        let seen = f.stop().await;
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert_eq!(seen.received, all(N), "every publication once, in order");
        assert_eq!(seen.connections, 1, "clients never noticed");
    }
    let filled = cluster
        .nodes
        .iter_mut()
        .filter(|n| n.log_text().contains("delivered missed publications"))
        .count();
    // The reconnect waits at least 50 ms, while publications go on every millisecond or so.
    assert!(filled >= 1, "some node filled its gap from history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo xtask test --only cluster"]
async fn the_server_api_acts_on_connections_of_every_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(dir.path());
    let a = Node::start(dir.path(), "a", &redis.url());
    let b = Node::start(dir.path(), "b", &redis.url());
    let mut on_b = HubClient::connect(&b.ws_url()).await.expect("client on b");
    let mut other = HubClient::connect(&b.ws_url()).await.expect("client on b");
    let id = on_b.client_id();

    // `subscribe` called on A subscribes the connection on B, which is told the position.
    let (status, v) = api(&a, "subscribe", json!({"client": id, "channel": "room"})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["all_nodes"], true, "{v}");
    assert_eq!(v["subscribed"], 0, "no such connection on A itself: {v}");
    let event = event_where(&mut on_b, |e| e["type"] == "subscribed")
        .await
        .expect("subscribed on B");
    assert_eq!(event["channel"], "room");
    // Publications published through A then reach it.
    assert_eq!(publish_http(a.addr(), "room", 7).await, 200);
    let m = event_where(&mut on_b, |e| e["type"] == "message")
        .await
        .expect("the publication on B");
    assert_eq!(m["data"]["n"], 7);

    // `unsubscribe` through A ends it on B.
    let (_, v) = api(&a, "unsubscribe", json!({"client": id, "channel": "room"})).await;
    assert_eq!(v["all_nodes"], true, "{v}");
    let event = event_where(&mut on_b, |e| e["type"] == "unsubscribed")
        .await
        .expect("unsubscribed on B");
    assert_eq!(event["channel"], "room");

    // `disconnect` through A closes the connection on B with the given code; the other
    // connection on B is still served.
    let (status, v) = api(
        &a,
        "disconnect",
        json!({"client": id, "code": 4001, "reason": "banned"}),
    )
    .await;
    assert_eq!((status, v["all_nodes"].as_bool()), (200, Some(true)), "{v}");
    assert!(event_where(&mut on_b, |_| false).await.is_none());
    assert_eq!(on_b.ws.close_frame().map(|f| f.code.0), Some(4001));
    assert!(other.publish("room", 1, 0).await.is_ok());

    // Bad input is refused on the calling node and told to no one.
    let (status, v) = api(
        &a,
        "subscribe",
        json!({"client": id, "channel": "bad name"}),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("bad_channel")),
        "{v}"
    );
    drop((a, b, redis, dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo xtask test --only cluster"]
async fn info_lists_every_node_from_their_heartbeats() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(dir.path());
    let a = Node::start(dir.path(), "a", &redis.url());
    let b = Node::start(dir.path(), "b", &redis.url());
    let _on_b = HubClient::connect(&b.ws_url()).await.expect("client on b");
    // Heartbeats are 3 s apart: within a few of them A knows B and its connection.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let nodes = loop {
        let (status, v) = api(&a, "info", json!({})).await;
        assert_eq!(status, 200, "{v}");
        let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
        let b_seen = nodes
            .iter()
            .any(|n| n["node"] == "b" && n["connections"] == 1);
        if b_seen || tokio::time::Instant::now() > until {
            break nodes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["node"].as_str()).collect();
    assert_eq!(names, ["a", "b"], "{nodes:?}");
    assert!(
        nodes
            .iter()
            .any(|n| n["node"] == "b" && n["connections"] == 1),
        "{nodes:?}"
    );
    drop((a, b, redis, dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo xtask test --only cluster"]
async fn channels_lists_a_channel_subscribed_only_on_another_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(dir.path());
    let a = Node::start(dir.path(), "a", &redis.url());
    let b = Node::start(dir.path(), "b", &redis.url());
    let mut on_b = HubClient::connect(&b.ws_url()).await.expect("client on b");
    let mut events = Vec::new();
    let reply = on_b
        .call(json!({"type":"subscribe","channel":"only-b"}), &mut events)
        .await
        .expect("subscribe reply");
    assert_eq!(reply["type"], "reply", "{reply}");
    let (status, v) = api(&a, "channels", json!({"pattern": "only-*"})).await;
    assert_eq!(status, 200, "{v}");
    // Listed by A, with no subscribers of A's own; the control channel is never listed.
    assert_eq!(
        v["channels"],
        json!([{"channel":"only-b","subscribers":0}]),
        "{v}"
    );
    let (_, all) = api(&a, "channels", json!({})).await;
    assert!(!all.to_string().contains("$duplex"), "{all}");
    let (_, v) = api(&b, "channels", json!({"pattern": "only-*"})).await;
    assert_eq!(v["channels"], json!([{"channel":"only-b","subscribers":1}]));
    drop((a, b, redis, dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo xtask test --only cluster"]
async fn an_idempotent_publish_retried_through_another_node_is_not_repeated() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(dir.path());
    let a = Node::start(dir.path(), "a", &redis.url());
    let b = Node::start(dir.path(), "b", &redis.url());
    let body = json!({"channel":"orders","data":{"n":1},"idempotency_key":"order-1"});
    let (status, first) = api(&a, "publish", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    // The retry goes to B, which remembers nothing itself: Redis has the key.
    let (status, again) = api(&b, "publish", body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first);
    let (_, history) = api(&b, "history", json!({"channel":"orders"})).await;
    assert_eq!(
        history["publications"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );
    // Another key is another publish.
    let other = json!({"channel":"orders","data":{"n":2},"idempotency_key":"order-2"});
    let (_, second) = api(&b, "publish", other).await;
    assert_eq!(
        second["offset"].as_u64(),
        first["offset"].as_u64().map(|o| o + 1),
        "{second}"
    );
    drop((a, b, redis, dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server: cargo xtask test --only cluster"]
async fn the_per_user_connection_limit_counts_every_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(dir.path());
    let url = redis.url();
    let a = Node::start_with_user_limit(dir.path(), "a", &Upstream::Url(&url), 2);
    let b = Node::start_with_user_limit(dir.path(), "b", &Upstream::Url(&url), 2);
    // B counts A's connections once it has heard A's heartbeat (3 s apart).
    b.wait_hears("a").await;
    // A user id with a brace, which must not end the key's hash tag.
    let url = |node: &Node, user: &str| format!("{}?token={}", node.ws_url(), user_token(user));
    let first = HubClient::connect(&url(&a, "ada}"))
        .await
        .expect("first on A");
    let _second = HubClient::connect(&url(&a, "ada}"))
        .await
        .expect("second on A");
    let third = HubClient::connect(&url(&b, "ada}")).await;
    assert_eq!(refused(&third), Some(429), "the third, on B");
    let (_, metrics) = http(b.addr(), "GET", "/metrics", None)
        .await
        .expect("metrics");
    assert!(
        metrics.contains("duplex_limit_hits_total{limit=\"connections_per_user\"} 1"),
        "{metrics}"
    );
    // Another user and an anonymous client are served on B meanwhile.
    let bob = HubClient::connect(&url(&b, "bob")).await;
    assert_eq!(refused(&bob), None, "another user on B");
    let anonymous = HubClient::connect(&b.ws_url()).await;
    assert_eq!(refused(&anonymous), None, "an anonymous client on B");

    // Once one of A's closes, B admits the user again.
    let mut first = first;
    let _ = first.ws.close(duplex::CloseCode::NORMAL, "bye").await;
    drop(first);
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    let admitted = loop {
        let attempt = HubClient::connect(&url(&b, "ada}")).await;
        match refused(&attempt) {
            None => break attempt,
            Some(429) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(status) => panic!("B still refuses the user: HTTP {status}"),
        }
    };
    assert!(admitted.is_ok());

    // Without Redis, B admits on its own count (one of the user's connections is on B).
    let mut redis = redis;
    redis.kill();
    let unchecked = HubClient::connect(&url(&b, "ada}")).await;
    assert_eq!(
        refused(&unchecked),
        None,
        "admitted on the node-local count"
    );
    let (_, metrics) = http(b.addr(), "GET", "/metrics", None)
        .await
        .expect("metrics");
    assert!(
        metrics.contains("duplex_user_limit_unchecked_total 1"),
        "{metrics}"
    );
    drop((a, b, redis, dir));
}
