//! Publication keys and the latest value on subscribe, with the memory and Redis brokers.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duplex_hub::config::BrokerKind;
use duplex_hub::Config;
use serde_json::{json, value::RawValue, Value};

use crate::support::*;

/// A `redis-server` of the test's own on a free loopback port, persistence off, killed on
/// drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test");
        let until = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn latest_config(history_size: usize) -> Config {
    let mut c = config();
    c.namespaces.insert(
        "px".into(),
        toml::from_str(&format!(
            "latest_on_subscribe = true\nhistory_size = {history_size}\npresence = false"
        ))
        .unwrap(),
    );
    c
}

async fn publish(s: &TestServer, key: Option<&str>, data: Value) -> u64 {
    let data = RawValue::from_string(data.to_string()).unwrap();
    s.hub
        .publish_with_key("px:q", data, key)
        .await
        .unwrap()
        .offset
}

/// The checks both brokers must pass: the newest value of each key, in offset order, right
/// after the reply, with offsets the stream goes on from; `since` recovers as without the
/// option; `history_size = 1` keeps just the latest publication.
async fn latest_values(s: &TestServer) {
    // Nothing published yet: the reply and no value.
    let mut first = s.client().await;
    let reply = first
        .call(json!({"type":"subscribe","channel":"px:q"}))
        .await;
    assert_eq!(reply["offset"], 0);
    first.assert_silent(Duration::from_millis(100)).await;

    publish(s, Some("A"), json!(1)).await;
    publish(s, Some("B"), json!(2)).await;
    publish(s, Some("A"), json!(3)).await;
    publish(s, None, json!(4)).await;
    let mut c = s.client().await;
    let reply = c.call(json!({"type":"subscribe","channel":"px:q"})).await;
    assert_eq!(reply["offset"], 4, "{reply}");
    let epoch = reply["epoch"].clone();
    let got: Vec<Value> = [c.recv().await, c.recv().await, c.recv().await].into();
    let seen: Vec<(u64, Value, Value)> = got
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "message", "{m}");
            (
                m["offset"].as_u64().unwrap(),
                m["key"].clone(),
                m["data"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (2, json!("B"), json!(2)),
            (3, json!("A"), json!(3)),
            (4, Value::Null, json!(4)),
        ]
    );
    // Live publications go on from there, without a duplicate.
    publish(s, Some("B"), json!(5)).await;
    let m = c.recv().await;
    assert_eq!(
        (m["offset"].clone(), m["key"].clone()),
        (json!(5), json!("B"))
    );
    assert_eq!(
        first.recv_message().await["offset"],
        1,
        "the first subscriber got all"
    );

    // With `since`, recovery as always: exactly what was missed, no latest values.
    let mut r = s.client().await;
    let reply = r
        .call(json!({"type":"subscribe","channel":"px:q","since":{"epoch":epoch,"offset":4}}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(r.recv().await["offset"], 5);
    r.assert_silent(Duration::from_millis(100)).await;

    // A `since` that cannot be recovered (another epoch) starts afresh with latest values.
    let mut f = s.client().await;
    let reply = f
        .call(json!({"type":"subscribe","channel":"px:q","since":{"epoch":"gone","offset":2}}))
        .await;
    assert_eq!(
        (reply["recovered"].clone(), reply["offset"].clone()),
        (json!(false), json!(5))
    );
    let offsets: Vec<Value> = [f.recv().await, f.recv().await, f.recv().await]
        .iter()
        .map(|m| m["offset"].clone())
        .collect();
    assert_eq!(offsets, [json!(3), json!(4), json!(5)], "A, no key, B");
    f.assert_silent(Duration::from_millis(100)).await;

    // History items carry the key too.
    let h = c.call(json!({"type":"history","channel":"px:q"})).await;
    assert_eq!(h["publications"][0]["key"], "A", "{h}");
}

#[tokio::test]
async fn latest_on_subscribe_with_the_memory_broker() {
    let s = start_with(latest_config(10)).await;
    latest_values(&s).await;
}

#[tokio::test]
async fn latest_on_subscribe_with_the_redis_broker() {
    let redis = Redis::start();
    let mut c = latest_config(10);
    c.broker = BrokerKind::Redis;
    c.redis_url = Some(format!("redis://127.0.0.1:{}/", redis.port).into());
    let s = start_with(c).await;
    eventually(|| s.hub.broker_health().is_ok()).await;
    latest_values(&s).await;
}

#[tokio::test]
async fn a_history_of_one_is_the_latest_value() {
    let s = start_with(latest_config(1)).await;
    for n in 1..=3 {
        publish(&s, Some(&format!("k{n}")), json!(n)).await;
    }
    let mut c = s.client().await;
    let reply = c.call(json!({"type":"subscribe","channel":"px:q"})).await;
    assert_eq!(reply["offset"], 3);
    let m = c.recv().await;
    assert_eq!(
        (m["offset"].clone(), m["data"].clone()),
        (json!(3), json!(3))
    );
    c.assert_silent(Duration::from_millis(100)).await;
}

#[test]
fn latest_on_subscribe_needs_a_history() {
    let e = Config::from_toml("[namespaces.px]\nlatest_on_subscribe = true\nhistory_size = 0")
        .unwrap_err();
    assert!(e.to_string().contains("latest_on_subscribe"), "{e}");
    assert!(Config::from_toml("[namespaces.px]\nconflate_watermark = 0").is_err());
    assert!(Config::from_toml("[limits]\nmax_key_size = 0").is_err());
}

/// A key above `limits.max_key_size` is refused on every publish path, counted, and the
/// connection and its neighbours go on.
#[tokio::test]
async fn an_oversized_key_is_refused_and_counted() {
    let mut c = latest_config(10);
    c.api.key = Some("test-api-key".into());
    let s = start_with(c).await;
    let mut other = s.client().await;
    other
        .call(json!({"type":"subscribe","channel":"px:q"}))
        .await;
    let mut bad = s.client().await;
    let long = "k".repeat(257);
    let e = bad
        .call(json!({"type":"publish","channel":"px:q","data":1,"key":long}))
        .await;
    assert_eq!(
        (e["type"].clone(), e["code"].clone()),
        (json!("error"), json!("too_large"))
    );
    let e = bad
        .call(json!({"type":"publish","channel":"px:q","data":1,"key":""}))
        .await;
    assert_eq!(e["code"], "bad_request", "{e}");
    let e = bad
        .call(json!({"type":"publish","channel":"px:q","data":1,"key":{"a":1}}))
        .await;
    assert_eq!(e["code"], "bad_request", "{e}");
    let body = json!({"channel":"px:q","data":1,"key":long}).to_string();
    let (status, _, _) = post(
        s.addr,
        "/api/publish",
        "Authorization: Bearer test-api-key\r\n",
        &body,
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(
        metric(&s, "duplex_limit_hits_total{limit=\"publication_key\"}").await,
        2.0
    );
    // A key of the limit's length is fine, and the neighbour gets it with its key.
    let ok = bad
        .call(json!({"type":"publish","channel":"px:q","data":1,"key":"k".repeat(256)}))
        .await;
    assert_eq!(ok["type"], "reply", "{ok}");
    let m = other.recv().await;
    assert_eq!(m["key"].as_str().map(str::len), Some(256));
}
