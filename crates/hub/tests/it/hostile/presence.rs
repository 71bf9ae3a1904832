//! Hostile inputs: see mod.rs. Presence crowds (join/leave coalescing) and deeply nested
//! JSON.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// Frames sent by the server so far (`duplex_messages_sent_total`).
async fn sent(server: &TestServer) -> f64 {
    metric(server, "duplex_messages_sent_total").await
}

/// Waits until the server has sent nothing for `quiet` (bounded by `WAIT * 4`); returns the
/// frames sent.
async fn settled(server: &TestServer, quiet: Duration) -> f64 {
    let until = Instant::now() + WAIT * 4;
    let mut last = sent(server).await;
    loop {
        tokio::time::sleep(quiet).await;
        let now = sent(server).await;
        if now == last || Instant::now() > until {
            return now;
        }
        last = now;
    }
}

/// Reads every frame that arrives until `quiet` passes without one.
async fn drain(c: &mut Client, quiet: Duration) -> Vec<Value> {
    let mut got = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(quiet, c.ws.recv()).await {
        if let Some(text) = m.as_text() {
            got.push(serde_json::from_str(text).expect("JSON"));
        }
    }
    got
}

/// A room of N filling up in one burst: before, every join was a frame to every subscriber
/// (N(N+1)/2 frames, 500,500 for N = 1,000); now each subscriber gets at most one
/// `presence_diff` per `join_leave_interval`, so the fill costs O(N) frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_filling_up_costs_o_n_frames() {
    const N: usize = 1_000;
    let interval = Duration::from_millis(200); // the default
    let mut config = config();
    config.limits.max_connections_per_ip = N + 10;
    config.channels.join_leave_interval = interval;
    let s = start_with(config).await;
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N / 50 {
        let batch = (0..50).map(|_| s.client());
        clients.extend(futures_util::future::join_all(batch).await);
    }
    let before = settled(&s, Duration::from_millis(50)).await;
    let started = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(json!({"type":"subscribe","id":i,"channel":"crowd"}))
            .await;
    }
    // While the frames go out, another client is served in full.
    assert_served(&s, "127.0.0.2").await;
    let after = settled(&s, interval * 3).await;
    let fill = started.elapsed();
    // One reply per subscriber; assert_served costs it 5 frames on its own channel.
    let presence_frames = after - before - N as f64 - 5.0;
    let per_subscriber = presence_frames / N as f64;
    eprintln!(
        "{N} joins: {presence_frames} presence frames ({per_subscriber:.1} per subscriber) \
         within {fill:.2?}; one frame per join would have been {}",
        N * (N + 1) / 2
    );
    assert!(
        per_subscriber <= 25.0,
        "{presence_frames} presence frames for {N} joins"
    );
    // Everyone got its reply and at most one frame per interval; the roster is complete.
    let drained =
        futures_util::future::join_all(clients.iter_mut().map(|c| drain(c, interval))).await;
    // A flush per interval while the room filled, plus slack for timers that fire late on a
    // busy machine and deliver a flush that was due at the edge of the window.
    let limit = (fill.as_millis() / interval.as_millis()) as usize + 5;
    for frames in &drained {
        assert_eq!(frames[0]["type"], "reply", "{}", frames[0]);
        assert!(frames[1..].iter().all(|f| f["type"] == "presence_diff"));
        assert!(frames.len() - 1 <= limit, "{} frames", frames.len());
    }
    assert_eq!(s.hub.stats().subscriptions, N as i64);
}

/// One client subscribes and unsubscribes in a loop next to 50 subscribers: before, every
/// command sent a frame to all 50 (9,900 frames for 99 rounds). Now its changes collapse
/// into one entry (its last change) per interval.
#[tokio::test]
async fn churn_costs_one_frame_per_subscriber_per_interval() {
    let interval = Duration::from_millis(500);
    let mut config = config();
    config.channels.join_leave_interval = interval;
    let s = start_with(config).await;
    let mut room = Vec::new();
    for _ in 0..50 {
        let mut c = s.client().await;
        c.subscribe("churn").await;
        room.push(c);
    }
    let quiet = interval * 2;
    futures_util::future::join_all(room.iter_mut().map(|c| drain(c, quiet))).await;
    let before = sent(&s).await;
    let started = Instant::now();
    let mut attacker = s.client().await;
    let attacker_id = attacker.id().to_owned();
    for _ in 0..99 {
        let r = attacker
            .call(json!({"type":"subscribe","channel":"churn"}))
            .await;
        assert_eq!(r["type"], "reply", "{r}");
        let r = attacker
            .call(json!({"type":"unsubscribe","channel":"churn"}))
            .await;
        assert_eq!(r["type"], "reply", "{r}");
    }
    assert_served(&s, "127.0.0.2").await;
    let elapsed = started.elapsed();
    let got = futures_util::future::join_all(room.iter_mut().map(|c| drain(c, quiet))).await;
    let after = sent(&s).await;
    let limit = (elapsed.as_millis() / interval.as_millis()) as usize + 2;
    for frames in &got {
        assert!(
            !frames.is_empty() && frames.len() <= limit,
            "{} frames",
            frames.len()
        );
        for f in frames {
            assert_eq!(f["type"], "presence_diff", "{f}");
            let mut all = listed(f, "joins");
            all.extend(listed(f, "leaves"));
            assert_eq!(
                all,
                std::slice::from_ref(&attacker_id),
                "one entry per interval: {f}"
            );
        }
        let last = frames.last().unwrap();
        assert_eq!(
            listed(last, "leaves"),
            std::slice::from_ref(&attacker_id),
            "{last}"
        );
    }
    // 198 replies to the attacker, 5 frames for assert_served, and the room's diffs.
    let room_frames = after - before - 198.0 - 5.0 - 1.0;
    eprintln!("198 churn commands: {room_frames} frames to a room of 50 (before: 9,900)");
    assert!(room_frames <= (50 * limit) as f64, "{room_frames}");
}

/// Within one interval the last change of a client wins. A join then a leave reaches the
/// room as just the leave (a roster that took `presence` in between drops it again; nobody
/// sees a join). A leave then a join (a rename: resubscribing with new `info`) reaches it as
/// just the join, with the new `info`.
#[tokio::test]
async fn within_an_interval_the_last_change_of_a_client_wins() {
    let mut config = config();
    config.channels.join_leave_interval = Duration::from_millis(500);
    let s = start_with(config).await;
    let mut keeper = s.client().await;
    keeper.subscribe("rename").await;
    let mut x = s.client().await;
    x.call(json!({"type":"subscribe","channel":"rename"})).await;
    x.call(json!({"type":"unsubscribe","channel":"rename"}))
        .await;
    let diff = keeper.recv_presence().await;
    assert_eq!(
        diff,
        json!({"type":"presence_diff","channel":"rename","joined":0,"left":1,"joins":[],
            "leaves":[{"client":x.id(),"user":null,"info":null}]})
    );
    x.assert_silent(Duration::from_millis(50)).await;
    let mut bob = s.client().await;
    let sub = |name: &str| json!({"type":"subscribe","channel":"rename","info":{"name":name}});
    bob.call(sub("Bob")).await;
    let diff = keeper.recv_presence().await;
    assert_eq!(listed(&diff, "joins"), [bob.id()]);
    bob.call(json!({"type":"unsubscribe","channel":"rename"}))
        .await;
    bob.call(sub("Robert")).await;
    let diff = keeper.recv_presence().await;
    assert_eq!(
        (diff["joined"].as_u64(), diff["left"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(diff["joins"][0]["client"], bob.id());
    assert_eq!(diff["joins"][0]["info"], json!({"name":"Robert"}));
    assert_served(&s, "127.0.0.2").await;
    keeper.assert_silent(Duration::from_millis(600)).await;
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// A 16,000-deep array (it broke a Python subscriber's parser when forwarded) is refused on
/// every path: client `publish` and `subscribe` `info` with `too_deep`, `POST /api/publish`
/// with 400 `too_deep`. Exactly at the limit still passes.
#[tokio::test]
async fn deeply_nested_json_is_refused_with_too_deep() {
    const KEY: &str = "api-key-0123";
    let mut config = config();
    config.api.key = Some(KEY.into());
    let s = start_with(config).await;
    let mut subscriber = s.client().await;
    subscriber.subscribe("deep").await;
    let mut c = Client::connect_from(&s, "127.0.0.1").await;
    let deep = nested(16_000);

    c.send_text(&format!(
        r#"{{"type":"publish","id":7,"channel":"deep","data":{deep}}}"#
    ))
    .await;
    let err = c.recv().await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["id"], 7);
    assert_eq!(err["code"], "too_deep", "{err}");

    c.send_text(&format!(
        r#"{{"type":"subscribe","id":8,"channel":"deep2","info":{{"x":{deep}}}}}"#
    ))
    .await;
    let err = c.recv().await;
    assert_eq!(
        (err["id"].as_u64(), err["code"].as_str()),
        (Some(8), Some("too_deep"))
    );

    let (status, _, body) = post(
        s.addr,
        "/api/publish",
        &format!("Authorization: Bearer {KEY}\r\n"),
        &format!(r#"{{"channel":"deep","data":{deep}}}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["code"], "too_deep", "{body}");

    assert_served(&s, "127.0.0.2").await;
    assert_eq!(
        metric(&s, r#"duplex_limit_hits_total{limit="json_depth"}"#).await,
        3.0
    );
    // Nothing deep reached the subscriber; 32 levels (the default limit) do.
    let at_limit = nested(32);
    let reply = c
        .call(
            serde_json::from_str(&format!(
                r#"{{"type":"publish","channel":"deep","data":{at_limit}}}"#
            ))
            .unwrap(),
        )
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    let m = subscriber.recv_message().await;
    assert_eq!(m["offset"], 1, "{m}");
    assert_eq!(m["data"].to_string(), at_limit);
}
