//! Recovery with `since`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn offset(v: &Value) -> u64 {
    v["offset"].as_u64().expect("offset")
}

#[tokio::test]
async fn reconnect_with_since_gets_exactly_the_missed_ten_in_order() {
    let s = start().await;
    let mut publisher = s.client().await;
    let mut a = s.client().await;
    let reply = a.subscribe("room").await;
    let epoch = reply["epoch"].clone();
    for i in 1..=3 {
        publisher
            .call(json!({"type":"publish","channel":"room","data":{"n":i}}))
            .await;
    }
    let mut last = 0;
    for _ in 0..3 {
        let m = a.recv().await;
        assert_eq!(m["type"], "message");
        last = offset(&m);
    }
    assert_eq!(last, 3);
    drop(a);

    for i in 4..=13 {
        publisher
            .call(json!({"type":"publish","channel":"room","data":{"n":i}}))
            .await;
    }
    let mut a = s.client().await;
    let reply = a
        .call(json!({"type":"subscribe","channel":"room","since":{"epoch":epoch,"offset":last}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], 13);
    assert_eq!(reply["epoch"], epoch);
    let mut got = Vec::new();
    for _ in 0..10 {
        let m = a.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["data"]["n"], offset(&m));
        got.push(offset(&m));
    }
    assert_eq!(got, (4..=13).collect::<Vec<_>>());
    // Then its own join (presence is announced once the replay is queued).
    assert_eq!(listed(&a.recv_presence().await, "joins"), [a.id()]);
    a.assert_silent(Duration::from_millis(100)).await;
    publisher
        .call(json!({"type":"publish","channel":"room","data":{"n":14}}))
        .await;
    assert_eq!(offset(&a.recv().await), 14);
}

/// Publications keep arriving while the client recovers: whatever the interleaving of the
/// history read and live delivery, the client sees every offset once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_racing_live_publications_has_no_gap_and_no_duplicate() {
    let mut config = config();
    config.channels.history_size = 1000;
    let s = start_with(config).await;
    let hub = s.hub.clone();
    // A subscriber keeps the channel's epoch alive.
    let mut keeper = s.client().await;
    let epoch = keeper.subscribe("race").await["epoch"].clone();
    let _ = &mut keeper;
    for i in 1..=20 {
        let data = serde_json::value::RawValue::from_string(i.to_string()).unwrap();
        hub.publish("race", data).await.unwrap();
    }
    let publishing = tokio::spawn(async move {
        for i in 21..=400 {
            let data = serde_json::value::RawValue::from_string(i.to_string()).unwrap();
            hub.publish("race", data).await.unwrap();
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut c = s.client().await;
    let reply = c
        .call(json!({"type":"subscribe","channel":"race","since":{"epoch":epoch,"offset":10}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    publishing.await.unwrap();
    let mut expected = 11;
    while expected <= 400 {
        let m = c.recv_message().await;
        assert_eq!(m["type"], "message");
        assert_eq!(offset(&m), expected, "gap or duplicate");
        expected += 1;
    }
    // Nothing but (maybe) the client's own join may follow.
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(100), c.ws.recv()).await
    {
        assert!(
            m.as_text()
                .unwrap()
                .starts_with(r#"{"type":"presence_diff""#),
            "{m:?}"
        );
    }
}

#[tokio::test]
async fn beyond_the_window_or_another_epoch_is_not_recovered() {
    let mut config = config();
    config.channels.history_size = 5;
    let s = start_with(config).await;
    let mut keeper = s.client().await;
    let epoch = keeper.subscribe("w").await["epoch"].clone();
    let mut p = s.client().await;
    for i in 1..=10 {
        p.call(json!({"type":"publish","channel":"w","data":i}))
            .await;
    }
    let mut c = s.client().await;
    let reply = c
        .call(json!({"type":"subscribe","channel":"w","since":{"epoch":epoch,"offset":2}}))
        .await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["offset"], 10);
    assert_eq!(
        c.recv().await["type"],
        "presence_diff",
        "no replay before the join"
    );
    c.assert_silent(Duration::from_millis(100)).await;

    let mut d = s.client().await;
    let reply = d
        .call(json!({"type":"subscribe","channel":"w","since":{"epoch":"other","offset":9}}))
        .await;
    assert_eq!(reply["recovered"], false);
    assert_eq!(d.recv().await["type"], "presence_diff");
    d.assert_silent(Duration::from_millis(100)).await;

    // Within the window (offsets 6..=10 kept) it works.
    let mut e = s.client().await;
    let reply = e
        .call(json!({"type":"subscribe","channel":"w","since":{"epoch":epoch,"offset":5}}))
        .await;
    assert_eq!(reply["recovered"], true);
    for want in 6..=10 {
        assert_eq!(offset(&e.recv_message().await), want);
    }
    // A position from the future is not recoverable either.
    let mut f = s.client().await;
    let reply = f
        .call(json!({"type":"subscribe","channel":"w","since":{"epoch":epoch,"offset":99}}))
        .await;
    assert_eq!(reply["recovered"], false);
}
