//! Hostile inputs: see mod.rs. Replies larger than the outbound queue: a recovery replay,
//! `history` and `presence` go out through the queue as it drains (history and presence in
//! pages with `"more": true` on all but the last), never as one frame that closes the asker
//! with 1013; a client that really stops reading is still closed with 1013, and counted.

use std::time::{Duration, Instant};

use duplex::CloseCode;
use serde_json::{json, value::RawValue, Value};

use crate::support::*;

/// The default limits: 1 MiB queue, 32 KiB publications, 100 kept per channel.
const QUEUE: usize = 1024 * 1024;
const WINDOW: u64 = 100;

/// Publishes `WINDOW` publications of exactly `max_publication_size` (32 KiB) to `channel`
/// through the hub; returns the epoch.
async fn fill_window(server: &TestServer, channel: &str) -> String {
    let max = server.hub.config().limits.max_publication_size;
    let mut epoch = String::new();
    for n in 1..=WINDOW {
        // `"NNN-xxxx…"`: the quotes count, so the serialized data is exactly `max` bytes.
        let text = format!("{n:03}-{}", "x".repeat(max - 6));
        let data = RawValue::from_string(json!(text).to_string()).unwrap();
        assert_eq!(data.get().len(), max);
        let pos = server.hub.publish(channel, data).await.expect("publish");
        assert_eq!(pos.offset, n);
        epoch = pos.epoch.to_string();
    }
    epoch
}

/// Sends `command` with `id` and collects the pages of its reply, up to the one without
/// `"more": true`; frames of other ids (events) are skipped. Returns the pages.
async fn pages(c: &mut Client, id: u64, mut command: Value) -> Vec<Value> {
    command["id"] = json!(id);
    c.send(command).await;
    let mut pages = Vec::new();
    loop {
        let v = c.recv().await;
        if v["id"] != json!(id) {
            continue;
        }
        assert_eq!(v["type"], "reply", "{}", short(&v));
        let more = v["more"] == json!(true);
        pages.push(v);
        if !more {
            return pages;
        }
        assert!(pages.len() < 10_000, "endless pages");
    }
}

fn short(v: &Value) -> String {
    v.to_string().chars().take(300).collect()
}

fn disconnects(server: &TestServer) -> u64 {
    server.hub.stats().slow_consumer_disconnects
}

/// Before: the subscribe reply and all 100 replayed publications (3.2 MiB) were queued at
/// once into the 1 MiB queue: closed with 1013, no reply, and the documented recovery loops.
/// Now the replay goes out one publication at a time as the queue drains.
#[tokio::test]
async fn recovering_the_whole_window_through_a_1_mib_queue() {
    let s = start().await;
    assert_eq!(s.hub.config().limits.max_queue_bytes, QUEUE);
    let epoch = fill_window(&s, "big").await;
    let mut c = Client::connect_from(&s, "127.0.0.1").await;
    c.send(json!({"type":"subscribe","id":1,"channel":"big","since":{"epoch":epoch,"offset":0}}))
        .await;
    // The client does not read for a while: the server's queue and the socket fill up and
    // the replay has to wait for room. Another client is served meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_served(&s, "127.0.0.2").await;
    let reply = c.recv().await;
    assert_eq!(reply["id"], 1, "{}", short(&reply));
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], WINDOW);
    let mut offsets = Vec::new();
    let mut bytes = 0;
    while offsets.len() < WINDOW as usize {
        let m = c.recv().await;
        assert_eq!(m["type"], "message", "{}", short(&m));
        let n = m["offset"].as_u64().unwrap();
        assert!(m["data"].as_str().unwrap().starts_with(&format!("{n:03}-")));
        bytes += m["data"].as_str().unwrap().len();
        offsets.push(n);
    }
    assert_eq!(offsets, (1..=WINDOW).collect::<Vec<_>>(), "all, in order");
    assert!(
        bytes > 3 * QUEUE,
        "the window ({bytes} B) is bigger than the queue"
    );
    // Then its own join (in the channel's next presence_diff), then live.
    c.recv_presence().await;
    s.hub
        .publish("big", RawValue::from_string("\"live\"".into()).unwrap())
        .await
        .unwrap();
    assert_eq!(c.recv_message().await["offset"], WINDOW + 1);
    assert_eq!(disconnects(&s), 0, "nobody was closed with 1013");
    println!("recovered {WINDOW} publications ({bytes} B) in {WINDOW} frames after the reply");
}

/// Live publications that arrive during a long replay are held and follow it, gap-free.
#[tokio::test]
async fn publications_during_a_paged_replay_follow_it_in_order() {
    let s = start().await;
    let epoch = fill_window(&s, "busy").await;
    let mut c = s.client().await;
    c.send(json!({"type":"subscribe","id":1,"channel":"busy","since":{"epoch":epoch,"offset":0}}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 0..10 {
        let data = RawValue::from_string(format!("{{\"live\":{n}}}")).unwrap();
        s.hub.publish("busy", data).await.unwrap();
    }
    assert_eq!(c.recv().await["recovered"], true);
    let mut offsets = Vec::new();
    while offsets.len() < WINDOW as usize + 10 {
        let m = c.recv().await;
        if m["type"] == "message" {
            offsets.push(m["offset"].as_u64().unwrap());
        }
    }
    assert_eq!(offsets, (1..=WINDOW + 10).collect::<Vec<_>>());
    assert_eq!(disconnects(&s), 0);
}

/// Before: `history` answered in one 3.2 MiB frame: closed with 1013. Now in pages of at
/// most a quarter of the queue (256 KiB), `"more": true` on all but the last.
#[tokio::test]
async fn history_of_the_whole_window_comes_in_pages() {
    let s = start().await;
    let epoch = fill_window(&s, "hist").await;
    let mut c = Client::connect_from(&s, "127.0.0.1").await;
    let (id, command) = (7, json!({"type":"history","channel":"hist","limit":100}));
    let reader = pages(&mut c, id, command);
    let (window, ()) = tokio::join!(reader, assert_served(&s, "127.0.0.2"));
    let mut offsets = Vec::new();
    for page in &window {
        assert_eq!(page["epoch"], epoch.as_str());
        assert_eq!(page["offset"], WINDOW);
        assert!(page.to_string().len() <= QUEUE / 4 + 40 * 1024, "page size");
        offsets.extend(
            page["publications"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["offset"].as_u64().unwrap()),
        );
    }
    assert_eq!(offsets, (1..=WINDOW).collect::<Vec<_>>());
    assert!(window.len() > 4, "{} pages", window.len());
    assert!(window.last().unwrap().get("more").is_none());
    println!("history: {WINDOW} publications in {} pages", window.len());

    // With `since`: every page carries `complete`.
    let since = json!({"type":"history","channel":"hist","since":{"epoch":epoch,"offset":50}});
    let after = pages(&mut c, 8, since).await;
    let n: usize = after
        .iter()
        .map(|p| p["publications"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, 50);
    assert!(after.iter().all(|p| p["complete"] == true));
    assert_eq!(disconnects(&s), 0);
}

/// Before: `presence` on a crowded channel was one frame larger than the queue: 1013. Now in
/// pages. 150 members with 1000-byte `info` (about 160 KiB) against a 64 KiB queue.
#[tokio::test]
async fn crowded_presence_larger_than_the_queue_comes_complete() {
    const MEMBERS: usize = 150;
    let mut config = config();
    config.limits.max_queue_bytes = 64 * 1024;
    config.namespaces.insert(
        "crowd".into(),
        toml::from_str("join_leave = false").unwrap(),
    );
    let s = start_with(config).await;
    let info = json!({"bio": "b".repeat(1000)});
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let mut m = s.client().await;
        let reply = m
            .call(json!({"type":"subscribe","channel":"crowd:hall","info":info}))
            .await;
        assert_eq!(reply["type"], "reply", "{reply}");
        members.push(m);
    }
    let mut c = Client::connect_from(&s, "127.0.0.1").await;
    let command = json!({"type":"presence","channel":"crowd:hall"});
    let (pages, ()) = tokio::join!(pages(&mut c, 3, command), assert_served(&s, "127.0.0.2"));
    let mut ids: Vec<String> = pages
        .iter()
        .flat_map(|p| p["clients"].as_array().unwrap().clone())
        .map(|e| {
            assert_eq!(e["info"], info);
            e["client"].as_str().unwrap().to_owned()
        })
        .collect();
    let total: usize = pages.iter().map(|p| p.to_string().len()).sum();
    assert!(
        total > 2 * 64 * 1024,
        "presence ({total} B) is bigger than the queue"
    );
    ids.sort();
    let mut want: Vec<String> = members.iter().map(|m| m.id().to_owned()).collect();
    want.sort();
    assert_eq!(ids, want, "every member exactly once");
    assert_eq!(disconnects(&s), 0);
    println!(
        "presence: {MEMBERS} entries ({total} B) in {} pages through a 64 KiB queue",
        pages.len()
    );
}

/// A subscriber that really stops reading is still closed with 1013 and counted, and so is
/// a client that asks for history again and again without reading the replies: its
/// replies wait `limits.max_reply_wait` for room, then it is closed.
#[tokio::test]
async fn a_client_that_stops_reading_is_still_closed_with_1013_and_counted() {
    let mut config = config();
    config.limits.max_reply_wait = Duration::from_secs(1);
    let s = start_with(config).await;
    fill_window(&s, "hoard").await;
    let series = "duplex_slow_consumer_total{action=\"disconnect\"}";
    assert_eq!(metric(&s, series).await, 0.0);

    // 1. History, over and over, never read: 20 × 3.2 MiB, far more than the socket buffers.
    let mut hoarder = Client::connect_from(&s, "127.0.0.1").await;
    for id in 1..=20 {
        hoarder
            .send(json!({"type":"history","id":id,"channel":"hoard"}))
            .await;
    }
    let started = Instant::now();
    while disconnects(&s) == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "never cut off");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cut = started.elapsed();
    assert_served(&s, "127.0.0.2").await;
    assert_eq!(hoarder.closed().await, Some(CloseCode::TRY_AGAIN));
    assert!(cut < Duration::from_secs(15), "cut off after {cut:?}");
    println!("history hoarder closed with 1013 after {cut:?} (max_reply_wait 1 s)");

    // 2. A subscriber that stops reading live publications: the fan-out rule, as before.
    let mut stalled = Client::connect_from(&s, "127.0.0.1").await;
    stalled.subscribe("firehose").await;
    let payload = format!("\"{}\"", "f".repeat(16 * 1024));
    for _ in 0..2048 {
        if disconnects(&s) == 2 {
            break;
        }
        let data = RawValue::from_string(payload.clone()).unwrap();
        s.hub.publish("firehose", data).await.unwrap();
        tokio::task::yield_now().await;
    }
    eventually(|| disconnects(&s) == 2).await;
    assert_served(&s, "127.0.0.2").await;
    assert_eq!(stalled.closed().await, Some(CloseCode::TRY_AGAIN));
    assert_eq!(metric(&s, series).await, 2.0, "both counted in the metric");
}
