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
