//! Fan-out to many local subscribers: everyone gets every publication, once, in order.
//! Prints the time from publish to the last subscriber's receipt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex::ClientBuilder;
use serde_json::{json, value::RawValue};
use tokio::sync::Barrier;

use crate::support::*;

const SUBSCRIBERS: usize = 1_000;
const PUBLICATIONS: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publication_reaches_1000_subscribers() {
    let mut config = config();
    config.limits.max_connections_per_ip = 0;
    // No join/leave storm: 1,000 joins would be 1,000,000 frames.
    config.channels.join_leave = false;
    let s = start_with(config).await;
    let ready = Arc::new(Barrier::new(SUBSCRIBERS + 1));
    let mut tasks = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let url = s.url();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(ClientBuilder::new(url)).await;
            let reply = c.call(json!({"type":"subscribe","channel":"fan"})).await;
            assert_eq!(reply["type"], "reply");
            ready.wait().await;
            let mut arrivals = Vec::with_capacity(PUBLICATIONS as usize);
            for want in 1..=PUBLICATIONS {
                let m = c.recv().await;
                assert_eq!(m["offset"], want);
                arrivals.push(Instant::now());
            }
            arrivals
        }));
    }
    ready.wait().await;
    let mut sent = Vec::new();
    let mut enqueue = Vec::new();
    for i in 0..PUBLICATIONS {
        let data =
            RawValue::from_string(format!(r#"{{"n":{i},"pad":"{}"}}"#, "p".repeat(100))).unwrap();
        sent.push(Instant::now());
        // Encoding once and queueing a reference for every subscriber happen inside publish.
        s.hub.publish("fan", data).await.unwrap();
        enqueue.push(sent[sent.len() - 1].elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut last = vec![Duration::ZERO; PUBLICATIONS as usize];
    for t in tasks {
        let arrivals = tokio::time::timeout(WAIT * 4, t).await.unwrap().unwrap();
        for (i, at) in arrivals.iter().enumerate() {
            last[i] = last[i].max(at.duration_since(sent[i]));
        }
    }
    last.sort();
    enqueue.sort();
    println!(
        "fan-out to {SUBSCRIBERS} subscribers: encode + enqueue median {:?}, max {:?}",
        enqueue[enqueue.len() / 2],
        enqueue[enqueue.len() - 1]
    );
    println!(
        "fan-out to {SUBSCRIBERS} subscribers: publish → last receipt median {:?}, max {:?}",
        last[last.len() / 2],
        last[last.len() - 1]
    );
    assert_eq!(s.hub.stats().slow_consumer_disconnects, 0);
}
