//! The memory budget: channel spam, the channel cap, retained history per node and per
//! namespace, the history entry cap, anonymous channel creation, reads that create nothing.

use std::time::Duration;

use duplex::ClientBuilder;
use duplex_hub::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::*;

/// A test configuration from TOML (free port, no demo feed).
fn config_from(toml: &str) -> Config {
    let mut c = Config::from_toml(toml).expect("config");
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.demo.ticker = false;
    c
}

/// A JSON string value whose serialized form is exactly `len` bytes.
fn payload(len: usize) -> Value {
    Value::String("x".repeat(len - 2))
}

async fn publish(c: &mut Client, channel: &str, data: Value) -> Value {
    c.call(json!({"type":"publish","channel":channel,"data":data}))
        .await
}

fn assert_error(reply: &Value, code: &str) {
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
}

async fn history_bytes(s: &TestServer) -> f64 {
    metric(s, "duplex_history_bytes").await
}

async fn broker_channels(s: &TestServer) -> f64 {
    metric(s, "duplex_broker_channels").await
}

async fn hits(s: &TestServer, limit: &str) -> f64 {
    metric(s, &format!("duplex_limit_hits_total{{limit=\"{limit}\"}}")).await
}

/// Eight anonymous connections publish 32 KiB payloads, each to a fresh channel name, three
/// times the budget's worth (24 MiB against `memory.max_history_bytes` = 8 MiB, an eighth of
/// the default so the test stays quick on a debug build): retained history stays within the budget the whole
/// time, RSS grows by about the budget and no more, and a well-behaved client is served
/// meanwhile.
#[tokio::test]
async fn channel_spam_keeps_retained_history_within_the_budget() {
    // The command rate limit is per connection, and an attacker opens more connections; it
    // is raised here so the test runs quickly, the memory budget stays the default.
    let mut c = config();
    c.limits.commands_per_second = 5000;
    c.limits.commands_burst = 5000;
    c.memory.max_history_bytes = 8 << 20;
    let s = start_with(c).await;
    let budget = s.hub.config().memory.max_history_bytes;
    let rss_before = rss_bytes();
    const CONNECTIONS: usize = 8;
    const EACH: usize = 96; // 8 × 96 × 32 KiB = 24 MiB, three times the budget
    let mut spammers = Vec::new();
    for k in 0..CONNECTIONS {
        let mut c = s.client().await;
        spammers.push(tokio::spawn(async move {
            let data = payload(32 * 1024);
            let until = tokio::time::Instant::now() + Duration::from_secs(90);
            let mut accepted = 0;
            for i in 0..EACH {
                if tokio::time::Instant::now() > until {
                    break;
                }
                let reply = publish(&mut c, &format!("spam-{k}-{i}"), data.clone()).await;
                assert_eq!(reply["type"], "reply", "{reply}");
                accepted += 1;
            }
            accepted
        }));
    }
    let mut peak = 0.0f64;
    let mut served = false;
    while spammers.iter().any(|t| !t.is_finished()) {
        let bytes = history_bytes(&s).await;
        assert!(bytes <= budget as f64, "retained {bytes} > budget {budget}");
        peak = peak.max(bytes);
        if !served && bytes > budget as f64 / 2.0 {
            assert_served(&s, "127.0.0.2").await;
            served = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut accepted = 0;
    for t in spammers {
        accepted += t.await.unwrap();
    }
    assert_served(&s, "127.0.0.2").await;
    let bytes = history_bytes(&s).await;
    let growth = rss_bytes().saturating_sub(rss_before);
    println!(
        "channel spam: {accepted} publications of 32 KiB accepted; retained {bytes} bytes \
         (peak {peak}, budget {budget}); RSS +{} MiB; broker channels {}",
        growth >> 20,
        broker_channels(&s).await
    );
    assert!(served, "the budget was never half used");
    // However slow the machine, the spam must have passed the budget well before it ended.
    assert!(
        accepted * 32 * 1024 >= budget * 3 / 2,
        "only {accepted} publications"
    );
    assert!(
        bytes <= budget as f64 && bytes > budget as f64 / 2.0,
        "{bytes}"
    );
    assert!(hits(&s, "history_bytes").await > 0.0);
    // The budget plus transient buffers and allocator slack; without the budget all 24 MiB
    // stay resident.
    let bound = budget as u64 + (10 << 20);
    assert!(growth < bound, "RSS grew by {growth} bytes (bound {bound})");
}

/// At `memory.max_channels`, a new channel replaces the least recently used one nobody is
/// subscribed to; recovering an evicted channel gets `recovered: false` and a new epoch.
#[tokio::test]
async fn channel_cap_evicts_idle_channels_and_recovery_says_so() {
    let s = start_with(config_from("[memory]\nmax_channels = 20\n")).await;
    let mut spammer = s.client().await;
    let mut positions = Vec::new();
    for i in 0..40 {
        let reply = publish(&mut spammer, &format!("c{i}"), json!(i)).await;
        assert_eq!(reply["type"], "reply", "{reply}");
        positions.push(reply);
        assert!(broker_channels(&s).await <= 20.0);
    }
    assert_served(&s, "127.0.0.2").await;
    assert!(hits(&s, "channels").await >= 20.0);
    let mut c = Client::connect_from(&s, "127.0.0.3").await;
    // c0 was evicted: its old position means nothing now.
    let since = json!({"epoch": positions[0]["epoch"], "offset": 1});
    let reply = c
        .call(json!({"type":"subscribe","channel":"c0","since":since}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(reply["epoch"], positions[0]["epoch"], "{reply}");
    // c39 is recent: recovery from before its publication replays it.
    let since = json!({"epoch": positions[39]["epoch"], "offset": 0});
    let reply = c
        .call(json!({"type":"subscribe","channel":"c39","since":since}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(c.recv_message().await["data"], 39);
    assert!(broker_channels(&s).await <= 20.0);
}

/// When every held channel has subscribers, nothing can be evicted: a new subscription or a
/// publication to a new channel gets `over_capacity` (HTTP 507 on `/api/publish`).
#[tokio::test]
async fn channel_cap_refuses_when_every_channel_is_in_use() {
    let s = start_with(config_from(
        "[memory]\nmax_channels = 4\n[api]\nkey = \"0123456789abcdef\"\n",
    ))
    .await;
    let mut attacker = s.client().await;
    for ch in ["a", "b", "c", "d"] {
        attacker.subscribe(ch).await;
    }
    let reply = attacker
        .call(json!({"type":"subscribe","channel":"e"}))
        .await;
    assert_error(&reply, "over_capacity");
    let reply = publish(&mut attacker, "f", json!(1)).await;
    assert_error(&reply, "over_capacity");
    let body = json!({"channel":"g","data":1}).to_string();
    let (status, _, text) = post(
        s.addr,
        "/api/publish",
        "Authorization: Bearer 0123456789abcdef\r\n",
        &body,
    )
    .await;
    assert_eq!(status, 507, "{text}");
    assert!(text.contains("over_capacity"), "{text}");
    assert!(hits(&s, "channels").await >= 3.0);
    // Existing channels keep working.
    let reply = publish(&mut attacker, "a", json!(2)).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    // One channel freed: the next client gets it while the attacker holds the other three.
    let reply = attacker
        .call(json!({"type":"unsubscribe","channel":"d"}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_served(&s, "127.0.0.2").await;
    assert!(broker_channels(&s).await <= 4.0);
}

/// A namespace's `max_history_bytes` keeps a spammed namespace from taking history of the
/// others: the spam evicts only its own channels.
#[tokio::test]
async fn namespace_cap_protects_other_namespaces() {
    let s = start_with(config_from(
        "[memory]\nmax_history_bytes = 400000\n[namespaces.spam]\nmax_history_bytes = 200000\n",
    ))
    .await;
    let mut owner = s.client().await;
    let kept = publish(&mut owner, "keep", payload(10_000)).await;
    assert_eq!(kept["type"], "reply", "{kept}");
    let mut spammer = Client::connect_from(&s, "127.0.0.3").await;
    for i in 0..100 {
        let reply = publish(&mut spammer, &format!("spam:{i}"), payload(10_000)).await;
        assert_eq!(reply["type"], "reply", "{reply}");
        assert!(history_bytes(&s).await <= 200_000.0 + 11_000.0);
        if i == 50 {
            assert_served(&s, "127.0.0.2").await;
        }
    }
    assert!(hits(&s, "namespace_history_bytes").await > 0.0);
    let mut c = Client::connect_from(&s, "127.0.0.2").await;
    let since = json!({"epoch": kept["epoch"], "offset": 0});
    let reply = c
        .call(json!({"type":"subscribe","channel":"keep","since":since}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(c.recv_message().await["data"], payload(10_000));
}

/// `memory.max_history_entry`: a larger publication to a namespace with history gets
/// `too_large`; a namespace without history takes it.
#[tokio::test]
async fn history_entry_cap_refuses_larger_retained_publications() {
    let s = start_with(config_from(
        "[memory]\nmax_history_entry = 1024\n[namespaces.live]\nhistory_size = 0\n",
    ))
    .await;
    let mut c = s.client().await;
    let reply = publish(&mut c, "room", payload(2000)).await;
    assert_error(&reply, "too_large");
    assert!(
        reply["message"].as_str().unwrap().contains("1024"),
        "{reply}"
    );
    assert_eq!(hits(&s, "history_entry").await, 1.0);
    let reply = publish(&mut c, "room", payload(1024)).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    let reply = publish(&mut c, "live:room", payload(2000)).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_served(&s, "127.0.0.2").await;
}

const SECRET: &str = "test-secret-0123456789";

/// `anonymous_create = false`: anonymous clients may use channels that exist, not create
/// them; an authenticated user or the server may.
#[tokio::test]
async fn anonymous_clients_cannot_create_channels_when_off() {
    let mut config = config_from(
        "[namespaces.closed]\nanonymous_create = false\n[auth]\njwt_secret = \"test-secret-0123456789\"\n",
    );
    config.auth.anonymous = true;
    let s = start_with(config).await;
    let mut anon = s.client().await;
    let reply = anon
        .call(json!({"type":"subscribe","channel":"closed:new"}))
        .await;
    assert_error(&reply, "forbidden");
    let reply = publish(&mut anon, "closed:new2", json!(1)).await;
    assert_error(&reply, "forbidden");
    assert_eq!(hits(&s, "anonymous_create").await, 2.0);
    assert_served(&s, "127.0.0.2").await;
    // The server creates one; anonymous clients may then use it.
    s.hub
        .publish("closed:room", serde_json::value::to_raw_value(&1).unwrap())
        .await
        .unwrap();
    let reply = publish(&mut anon, "closed:room", json!(2)).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    anon.subscribe("closed:room").await;
    // A signed-in user may create.
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"ada","exp":exp,"channels":["closed:*"]}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut ada = Client::connect(ClientBuilder::new(format!("{}?token={token}", s.url()))).await;
    ada.subscribe("closed:ada").await;
}

/// `history` and `presence` on names the node does not hold create nothing.
#[tokio::test]
async fn reads_do_not_create_channels() {
    let s = start().await;
    let mut c = s.client().await;
    // 180 commands: within the default burst of 200.
    for i in 0..90 {
        let reply = c
            .call(json!({"type":"history","channel":format!("ghost-{i}")}))
            .await;
        assert_eq!(reply["type"], "reply", "{reply}");
        let reply = c
            .call(json!({"type":"presence","channel":format!("ghost-{i}")}))
            .await;
        assert_eq!(reply["type"], "reply", "{reply}");
        assert_eq!(reply["clients"], json!([]), "{reply}");
    }
    assert_eq!(broker_channels(&s).await, 0.0);
    assert_served(&s, "127.0.0.2").await;
    assert_eq!(
        broker_channels(&s).await,
        1.0,
        "only the served client's channel"
    );
}
