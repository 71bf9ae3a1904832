//! Scale-out measurement: publications per second and delivery latency with subscribers on
//! one node versus the same subscribers spread over two nodes, both on the Redis broker.
//!
//! ```text
//! cargo test --release -p duplex-cli --test scale_bench -- --ignored --nocapture
//! ```
//!
//! Prints one line per layout; `docs/benchmarks.md` ("Scale-out") has the figures.

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::{Follower, HubClient, Node, Redis};
use hdrhistogram::Histogram;

/// Subscribers in each layout.
const SUBSCRIBERS: usize = 40;
/// Concurrent publishing connections, each waiting for its reply before the next publish.
const PUBLISHERS: usize = 8;
/// Publications per publisher.
const PER_PUBLISHER: u64 = 2500;

struct Figures {
    publications_per_second: f64,
    p50_us: u64,
    p99_us: u64,
    deliveries: u64,
}

async fn run(nodes: &[Node], layout: &[usize], channel: &str) -> Figures {
    let clock = Instant::now();
    let mut followers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let node = &nodes[layout[i % layout.len()]];
        followers.push(Follower::start(node.ws_url(), channel, Some(clock)));
    }
    for f in &followers {
        f.ready().await;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let url = nodes[0].ws_url();
        let channel = channel.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = HubClient::connect(&url).await.expect("publisher");
            for i in 0..PER_PUBLISHER {
                let n = p as u64 * PER_PUBLISHER + i;
                let t = u64::try_from(clock.elapsed().as_micros()).unwrap_or(u64::MAX);
                client.publish(&channel, n, t).await.expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
    let elapsed = started.elapsed();
    let total = PUBLISHERS as u64 * PER_PUBLISHER;
    for f in &followers {
        assert!(
            f.wait_for(Duration::from_secs(60), |s| s.received.len() as u64
                >= total)
                .await,
            "a subscriber got {} of {total}",
            f.seen().received.len()
        );
    }
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    for f in followers {
        let seen = f.stop().await;
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        for l in seen.latencies_us {
            histogram.record(l.max(1)).expect("record");
        }
    }
    Figures {
        publications_per_second: total as f64 / elapsed.as_secs_f64(),
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        deliveries: histogram.len(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; needs redis-server"]
async fn scale_out_one_node_versus_two() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(dir.path());
    let nodes = vec![
        Node::start(dir.path(), "n1", &redis.url()),
        Node::start(dir.path(), "n2", &redis.url()),
    ];
    // Warm-up: connections, scripts loaded, allocator.
    let _ = run(&nodes, &[0, 1], "warmup").await;
    for (name, layout, channel) in [
        ("one node ", &[0][..], "one"),
        ("two nodes", &[0, 1][..], "two"),
    ] {
        let f = run(&nodes, layout, channel).await;
        println!(
            "{name}: {SUBSCRIBERS} subscribers, {PUBLISHERS} publishers: {:.0} publications/s, \
             delivery p50 {:.2} ms, p99 {:.2} ms ({} deliveries)",
            f.publications_per_second,
            f.p50_us as f64 / 1000.0,
            f.p99_us as f64 / 1000.0,
            f.deliveries
        );
    }
    drop(nodes);
    drop(redis);
}
