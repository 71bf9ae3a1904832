//! Slow consumers.

use std::time::Duration;

use serde_json::{json, value::RawValue};

use crate::support::*;

/// Resident set size of this process, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test]
async fn stalled_reader_gets_1013_memory_stays_bounded_and_others_are_served() {
    let mut config = config();
    config.limits.max_queue_bytes = 256 * 1024;
    let s = start_with(config).await;
    let mut stalled = s.client().await;
    stalled.subscribe("firehose").await;
    let mut healthy = s.client().await;
    healthy.subscribe("firehose").await;

    // A fast publisher of 4 KiB publications, up to 64 MiB: far more than the socket buffers
    // and the queue can hold. The stalled client does not read at all meanwhile. Once it has
    // been cut off, 1,000 more publications show that nothing piles up for it any more.
    let payload = format!("\"{}\"", "x".repeat(4096));
    let hub = s.hub.clone();
    let before = rss();
    let mut peak = before;
    let mut received = 0u64;
    let mut stop_at = 16_384u64;
    for i in 0..16_384u64 {
        if i == stop_at {
            break;
        }
        if stop_at == 16_384 && s.hub.stats().slow_consumer_disconnects > 0 {
            stop_at = i + 1000;
            println!(
                "stalled reader cut off after {i} publications ({} KiB)",
                i * 4
            );
        }
        let data = RawValue::from_string(payload.clone()).unwrap();
        hub.publish("firehose", data).await.unwrap();
        // The healthy subscriber keeps up.
        while received < i + 1 {
            let m = healthy.recv().await;
            if m["type"] == "message" {
                received += 1;
            }
        }
        if i % 1024 == 0 {
            peak = peak.max(rss());
        }
    }
    let disconnects = s.hub.stats().slow_consumer_disconnects;
    assert_eq!(disconnects, 1, "exactly the stalled client was cut off");
    let growth = peak.saturating_sub(before);
    println!("RSS before {before} B, peak growth {growth} B while {received} publications of 4 KiB were sent");
    assert!(growth < 32 * 1024 * 1024, "memory grew by {growth} bytes");

    // The stalled client now reads: what was in flight, then Close 1013.
    assert_eq!(stalled.closed().await, Some(duplex::CloseCode::TRY_AGAIN));
    // And the server still serves everyone else.
    let mut late = s.client().await;
    assert_eq!(late.call(json!({"type":"ping"})).await["type"], "pong");
    let reply = healthy
        .call(json!({"type":"publish","channel":"firehose","data":1}))
        .await;
    assert_eq!(reply["type"], "reply");
    eventually(|| s.hub.stats().connections == 2).await;
}

#[tokio::test]
async fn drop_oldest_namespace_keeps_the_reader_connected() {
    let mut config = config();
    config.limits.max_queue_bytes = 128 * 1024;
    config.namespaces.insert(
        "feed".into(),
        toml::from_str("slow_consumer = \"drop_oldest\"").unwrap(),
    );
    let s = start_with(config).await;
    let mut slow = s.client().await;
    slow.subscribe("feed:x").await;
    let payload = format!("\"{}\"", "y".repeat(4096));
    for _ in 0..8192 {
        let data = RawValue::from_string(payload.clone()).unwrap();
        s.hub.publish("feed:x", data).await.unwrap();
    }
    let stats = s.hub.stats();
    assert_eq!(stats.slow_consumer_disconnects, 0);
    assert!(stats.slow_consumer_drops > 0);
    // The reader drains what is left and is still connected: it gets a pong, and saw a gap.
    let mut last = 0;
    let mut gap = false;
    loop {
        let m = tokio::time::timeout(Duration::from_millis(500), slow.ws.recv()).await;
        let Ok(Some(Ok(m))) = m else { break };
        let v: serde_json::Value = serde_json::from_str(m.as_text().unwrap()).unwrap();
        let o = v["offset"].as_u64().unwrap();
        gap |= o != last + 1;
        last = o;
    }
    assert!(gap, "some publications were dropped");
    assert_eq!(last, 8192, "the newest publications survive");
    assert_eq!(slow.call(json!({"type":"ping"})).await["type"], "pong");
}

/// `conflate` under a fast publisher of 100 keys: a reader that stops reading its socket
/// stays connected, the node's queued bytes stay under the queue limit, another subscriber
/// gets every publication, and when the stalled reader resumes it gets, in offset order,
/// the newest value of every key.
#[tokio::test]
async fn conflate_keeps_the_newest_value_per_key_for_a_stalled_reader() {
    const KEYS: u64 = 100;
    const PUBLICATIONS: u64 = 20_000;
    let mut config = config();
    config.limits.max_queue_bytes = 256 * 1024;
    config.namespaces.insert(
        "quotes".into(),
        toml::from_str("slow_consumer = \"conflate\"\npresence = false").unwrap(),
    );
    let s = start_with(config).await;
    let mut stalled = s.client().await;
    stalled
        .call(json!({"type":"subscribe","channel":"quotes:fx"}))
        .await;
    let mut healthy = s.client().await;
    healthy
        .call(json!({"type":"subscribe","channel":"quotes:fx"}))
        .await;

    let payload = format!("\"{}\"", "q".repeat(2048));
    let before = rss_bytes();
    let (mut peak_rss, mut peak_queued) = (before, 0i64);
    let mut newest = std::collections::HashMap::new();
    let mut received = 0u64;
    for i in 1..=PUBLICATIONS {
        let key = format!("k{}", i % KEYS);
        let data = RawValue::from_string(format!("[{i},{payload}]")).unwrap();
        let pos = s
            .hub
            .publish_with_key("quotes:fx", data, Some(&key))
            .await
            .unwrap();
        newest.insert(key, pos.offset);
        // The healthy subscriber keeps up with everything.
        while received < i {
            let m = healthy.recv().await;
            assert_eq!(
                m["offset"].as_u64(),
                Some(received + 1),
                "no gap for a reader"
            );
            received += 1;
        }
        if i % 500 == 0 {
            peak_rss = peak_rss.max(rss_bytes());
            peak_queued = peak_queued.max(s.hub.stats().queued_bytes);
        }
    }
    let stats = s.hub.stats();
    println!(
        "conflate: {} superseded, peak queued {peak_queued} B, RSS growth {} B",
        stats.conflated,
        peak_rss.saturating_sub(before)
    );
    assert_eq!(stats.slow_consumer_disconnects, 0, "nobody was cut off");
    assert!(stats.conflated > 0, "the stalled queue conflated");
    assert!(
        peak_queued <= 2 * 256 * 1024,
        "queued bytes {peak_queued} stay within the two queues' limits"
    );
    assert!(
        peak_rss.saturating_sub(before) < 64 << 20,
        "memory stays bounded"
    );
    assert!(
        metric(&s, "duplex_conflated_total").await >= 1.0,
        "the metric counts it"
    );

    // The stalled reader resumes: offsets only grow, and every key ends on its newest value.
    let mut last_offset = 0;
    let mut got = std::collections::HashMap::new();
    while last_offset < PUBLICATIONS {
        let m = stalled.recv().await;
        let offset = m["offset"].as_u64().unwrap();
        assert!(
            offset > last_offset,
            "in offset order: {offset} after {last_offset}"
        );
        last_offset = offset;
        got.insert(m["key"].as_str().unwrap().to_owned(), offset);
    }
    assert_eq!(
        got, newest,
        "the newest value of every key, and only keys published"
    );
    assert_eq!(stalled.call(json!({"type":"ping"})).await["type"], "pong");
}

/// One run of the slow-consumer measurement: peak queued bytes, peak RSS growth, what the
/// healthy subscriber received, and the counters.
async fn measure(policy: &str) -> String {
    const KEYS: u64 = 100;
    const RATE: u64 = 5_000;
    const SECONDS: u64 = 10;
    let mut config = config();
    config.namespaces.insert(
        "m".into(),
        toml::from_str(&format!(
            "slow_consumer = \"{policy}\"\npresence = false\nhistory_size = 0"
        ))
        .unwrap(),
    );
    let s = start_with(config).await;
    let mut stalled = s.client().await;
    stalled
        .call(json!({"type":"subscribe","channel":"m:q"}))
        .await;
    let mut healthy = s.client().await;
    healthy
        .call(json!({"type":"subscribe","channel":"m:q"}))
        .await;
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while n < RATE * SECONDS {
            match tokio::time::timeout(WAIT, healthy.ws.recv()).await {
                Ok(Some(Ok(_))) => n += 1,
                _ => break,
            }
        }
        n
    });
    let payload = format!("\"{}\"", "p".repeat(2048));
    let before = rss_bytes();
    let (mut peak_rss, mut peak_queued) = (before, 0i64);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let started = std::time::Instant::now();
    let mut i = 0u64;
    for _ in 0..SECONDS * 100 {
        tick.tick().await;
        for _ in 0..RATE / 100 {
            i += 1;
            let data = RawValue::from_string(format!("[{i},{payload}]")).unwrap();
            let key = format!("k{}", i % KEYS);
            s.hub
                .publish_with_key("m:q", data, Some(&key))
                .await
                .unwrap();
        }
        peak_queued = peak_queued.max(s.hub.stats().queued_bytes);
        peak_rss = peak_rss.max(rss_bytes());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let received = reader.await.unwrap();
    let stats = s.hub.stats();
    format!(
        "| `{policy}` | {i} in {elapsed:.1} s | {received} | {:.0} KiB | {:.1} MiB | {} | {} | {} |",
        peak_queued as f64 / 1024.0,
        peak_rss.saturating_sub(before) as f64 / (1 << 20) as f64,
        stats.slow_consumer_disconnects,
        stats.slow_consumer_drops,
        stats.conflated,
    )
}

/// The three policies under the same publisher with one stalled subscriber (numbers for
/// docs/benchmarks.md; run with `--run-ignored only --no-capture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 30-second measurement"]
async fn measure_slow_consumer_policies() {
    println!("| policy | published | healthy received | peak queued | peak RSS growth | 1013 | dropped | conflated |");
    println!("|---|---|---|---|---|---|---|---|");
    for policy in ["conflate", "drop_oldest", "disconnect"] {
        println!("{}", measure(policy).await);
    }
}
