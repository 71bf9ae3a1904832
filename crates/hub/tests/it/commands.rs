//! Every command and every error reply.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn welcome_then_ping_pong() {
    let s = start().await;
    let mut c = s.client().await;
    assert!(c.welcome["user"].is_null());
    assert_eq!(c.welcome["version"], "duplex.v1");
    assert_eq!(c.welcome["ping_interval_ms"], 25_000);
    assert_eq!(c.welcome["node"], s.hub.node_id());
    c.send(json!({"type":"ping","id":42})).await;
    assert_eq!(c.recv().await, json!({"type":"pong","id":42}));
    c.send(json!({"type":"ping"})).await;
    assert_eq!(c.recv().await, json!({"type":"pong"}));
}

#[tokio::test]
async fn publish_reaches_every_subscriber_including_the_publisher() {
    let s = start().await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    let reply = a.subscribe("lobby").await;
    assert_eq!(reply["offset"], 0);
    assert_eq!(reply["recovered"], false);
    assert!(reply["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    b.subscribe("lobby").await;
    // a sees b's join.
    let diff = a.recv_presence().await;
    assert_eq!(listed(&diff, "joins"), [b.id()], "{diff}");
    assert_eq!(diff["channel"], "lobby");

    let (reply, events) = a
        .call_with_events(json!({"type":"publish","channel":"lobby","data":{"text":"hi"}}))
        .await;
    assert_eq!(reply["offset"], 1);
    assert_eq!(reply["epoch"], reply["epoch"]);
    let expected =
        json!({"type":"message","channel":"lobby","offset":1,"data":{"text":"hi"},"from":a.id()});
    let mine = if events.is_empty() {
        a.recv().await
    } else {
        events[0].clone()
    };
    assert_eq!(mine, expected);
    assert_eq!(b.recv().await, expected);
}

#[tokio::test]
async fn publish_without_subscription_and_null_data() {
    let s = start().await;
    let mut sub = s.client().await;
    sub.subscribe("room").await;
    let mut publisher = s.client().await;
    let reply = publisher
        .call(json!({"type":"publish","channel":"room","data":null}))
        .await;
    assert_eq!(reply["type"], "reply");
    let m = sub.recv().await;
    assert_eq!(m["data"], json!(null));
    assert!(m.as_object().unwrap().contains_key("data"));
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_announces_leave() {
    let s = start().await;
    let mut a = s.client().await;
    let mut b = s.client().await;
    a.subscribe("lobby").await;
    b.subscribe("lobby").await;
    assert_eq!(
        listed(&a.recv_presence().await, "joins"),
        [b.id()],
        "a sees b join"
    );
    let reply = b
        .call(json!({"type":"unsubscribe","channel":"lobby"}))
        .await;
    assert_eq!(
        reply,
        json!({"type":"reply","id":reply["id"],"channel":"lobby"})
    );
    let diff = a.recv_presence().await;
    assert_eq!(listed(&diff, "leaves"), [b.id()], "{diff}");
    assert_eq!(
        (diff["joined"].as_u64(), diff["left"].as_u64()),
        (Some(0), Some(1))
    );
    a.call(json!({"type":"publish","channel":"lobby","data":1}))
        .await;
    b.assert_silent(Duration::from_millis(200)).await;
    let err = b
        .call(json!({"type":"unsubscribe","channel":"lobby"}))
        .await;
    assert_eq!(err["code"], "not_subscribed");
}

#[tokio::test]
async fn presence_lists_clients_with_info_and_leave_on_disconnect() {
    let s = start().await;
    let mut a = s.client().await;
    a.call(json!({"type":"subscribe","channel":"lobby","info":{"name":"Ada"}}))
        .await;
    let mut b = s.client().await;
    b.subscribe("lobby").await;
    let reply = b.call(json!({"type":"presence","channel":"lobby"})).await;
    let clients = reply["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    let ada = clients.iter().find(|c| c["client"] == a.id()).unwrap();
    assert_eq!(ada["info"], json!({"name":"Ada"}));
    assert!(ada["user"].is_null());
    let a_id = a.id().to_owned();
    drop(a);
    let leave = b.recv_presence().await;
    assert_eq!(
        listed(&leave, "leaves"),
        std::slice::from_ref(&a_id),
        "{leave}"
    );
    assert_eq!(leave["leaves"][0]["info"], json!({"name":"Ada"}));
    let reply = b.call(json!({"type":"presence","channel":"lobby"})).await;
    assert_eq!(reply["clients"].as_array().unwrap().len(), 1);
    // The counts without the list: anonymous connections are no users.
    let mut c = s.client().await;
    c.subscribe("lobby").await;
    let stats = b
        .call(json!({"type":"presence_stats","channel":"lobby"}))
        .await;
    assert_eq!(
        (
            &stats["type"],
            &stats["channel"],
            &stats["clients"],
            &stats["users"]
        ),
        (&json!("reply"), &json!("lobby"), &json!(2), &json!(0)),
        "{stats}"
    );
}

#[tokio::test]
async fn history_returns_latest_oldest_first() {
    let s = start().await;
    let mut c = s.client().await;
    for i in 1..=5 {
        c.call(json!({"type":"publish","channel":"log","data":i}))
            .await;
    }
    let reply = c
        .call(json!({"type":"history","channel":"log","limit":3}))
        .await;
    assert_eq!(reply["offset"], 5);
    let offsets: Vec<_> = reply["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"].as_u64().unwrap()))
        .collect();
    assert_eq!(offsets, [(3, 3), (4, 4), (5, 5)]);
    assert_eq!(reply["publications"][0]["from"], c.id());
    let all = c.call(json!({"type":"history","channel":"log"})).await;
    assert_eq!(all["publications"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn namespaces_and_their_rules() {
    let mut config = config();
    config.demo.ticker = true; // defines the ticker namespace
    let s = start_with(config).await;
    let mut c = s.client().await;
    let err = c
        .call(json!({"type":"publish","channel":"ticker:prices","data":1}))
        .await;
    assert_eq!(err["code"], "forbidden");
    let err = c
        .call(json!({"type":"presence","channel":"ticker:prices"}))
        .await;
    assert_eq!(err["code"], "presence_disabled");
    let err = c
        .call(json!({"type":"presence_stats","channel":"ticker:prices"}))
        .await;
    assert_eq!(err["code"], "presence_disabled");
    let err = c.call(json!({"type":"subscribe","channel":"nope:x"})).await;
    assert_eq!(err["code"], "unknown_namespace");
    // The demo feed publishes through the normal path; no presence, so no join.
    let reply = c
        .call(json!({"type":"subscribe","channel":"ticker:prices"}))
        .await;
    assert_eq!(reply["type"], "reply");
    let tick = c.recv().await;
    assert_eq!(tick["type"], "message");
    assert!(tick["from"].is_null());
    assert!(tick["data"]["price"].as_f64().is_some());
}

#[tokio::test]
async fn every_bad_command_gets_an_error_and_the_connection_stays_open() {
    let s = start().await;
    let mut c = s.client().await;
    let cases = [
        ("not json", "bad_json"),
        ("[1,2,3]", "bad_json"),
        (r#"{"id":1}"#, "bad_request"),
        (r#"{"type":"dance","id":2}"#, "unknown_type"),
        (r#"{"type":"subscribe","id":3}"#, "bad_request"),
        (
            r#"{"type":"subscribe","id":4,"channel":"has space"}"#,
            "bad_channel",
        ),
        (r#"{"type":"subscribe","id":5,"channel":""}"#, "bad_channel"),
        (r#"{"type":"publish","id":6,"channel":"a"}"#, "bad_request"),
        (
            r#"{"type":"subscribe","id":7,"channel":"a","since":{"epoch":1}}"#,
            "bad_request",
        ),
        (
            r#"{"type":"history","id":8,"channel":"a","limit":"x"}"#,
            "bad_request",
        ),
        (r#"{"type":"ping","id":-5}"#, "bad_request"),
    ];
    for (text, code) in cases {
        c.send_text(text).await;
        let err = c.recv().await;
        assert_eq!(err["type"], "error", "{text}");
        assert_eq!(err["code"], code, "{text}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Errors carry the id when it could be read.
    c.send_text(r#"{"type":"dance","id":9}"#).await;
    assert_eq!(c.recv().await["id"], 9);
    c.ws.send(duplex::Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(c.recv().await["code"], "bad_json");
    c.subscribe("a").await;
    let err = c.call(json!({"type":"subscribe","channel":"a"})).await;
    assert_eq!(err["code"], "already_subscribed");
    let big = "x".repeat(40_000);
    let err = c
        .call(json!({"type":"publish","channel":"a","data":big}))
        .await;
    assert_eq!(err["code"], "too_large");
    let info = json!({"name": "y".repeat(2000)});
    let err = c
        .call(json!({"type":"subscribe","channel":"b","info":info}))
        .await;
    assert_eq!(err["code"], "too_large");
    assert_eq!(c.call(json!({"type":"ping"})).await["type"], "pong");
}

#[tokio::test]
async fn channel_limit_per_connection() {
    let mut config = config();
    config.limits.max_channels_per_connection = 2;
    let s = start_with(config).await;
    let mut c = s.client().await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    let err = c.call(json!({"type":"subscribe","channel":"c"})).await;
    assert_eq!(err["code"], "too_many_channels");
    c.call(json!({"type":"unsubscribe","channel":"a"})).await;
    c.subscribe("c").await;
}

#[tokio::test]
async fn rate_limit_then_abuse_closes_with_1008() {
    let mut config = config();
    config.limits.commands_per_second = 1;
    config.limits.commands_burst = 3;
    config.limits.max_errors = 5;
    let s = start_with(config).await;
    let mut c = s.client().await;
    for _ in 0..3 {
        c.send(json!({"type":"ping"})).await;
        assert_eq!(c.recv().await["type"], "pong");
    }
    c.send(json!({"type":"ping","id":1})).await;
    let err = c.recv().await;
    assert_eq!(err["code"], "rate_limited");
    assert_eq!(err["id"], 1);
    // Keep going: after max_errors errors the server closes with 1008.
    for _ in 0..10 {
        if c.ws.send(duplex::Message::text("{}")).await.is_err() {
            break;
        }
    }
    assert_eq!(c.closed().await, Some(duplex::CloseCode::POLICY));
    // Others are still served.
    let mut other = s.client().await;
    assert_eq!(other.call(json!({"type":"ping"})).await["type"], "pong");
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let mut config = config();
    config.limits.max_message_size = 1024;
    config.limits.max_publication_size = 512;
    let s = start_with(config).await;
    let mut c = s.client().await;
    let _ = c.ws.send(duplex::Message::text("x".repeat(4096))).await;
    assert_eq!(c.closed().await, Some(duplex::CloseCode::TOO_BIG));
}

#[tokio::test]
async fn history_since_a_position() {
    let mut config = config();
    config.channels.history_size = 4;
    let s = start_with(config).await;
    let mut c = s.client().await;
    let mut epoch = json!(null);
    for i in 1..=6 {
        epoch = c
            .call(json!({"type":"publish","channel":"log","data":i}))
            .await["epoch"]
            .clone();
    }
    let offsets = |v: &serde_json::Value| -> Vec<u64> {
        v["publications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect()
    };
    let r = c
        .call(
            json!({"type":"history","channel":"log","since":{"epoch":epoch,"offset":3},"limit":2}),
        )
        .await;
    assert_eq!(
        (offsets(&r), r["complete"].clone()),
        (vec![4, 5], json!(true))
    );
    // Offsets 1 and 2 have left the 4-entry window.
    let r = c
        .call(json!({"type":"history","channel":"log","since":{"epoch":epoch,"offset":1}}))
        .await;
    assert_eq!(
        (offsets(&r), r["complete"].clone()),
        (vec![3, 4, 5, 6], json!(false))
    );
    let r = c
        .call(
            json!({"type":"history","channel":"log","since":{"epoch":"old","offset":5},"limit":1}),
        )
        .await;
    assert_eq!(
        (offsets(&r), r["complete"].clone()),
        (vec![6], json!(false))
    );
    let r = c.call(json!({"type":"history","channel":"log"})).await;
    assert!(r.get("complete").is_none());
}
