//! The server API, `POST /api/<method>`: every method over real HTTP, each response checked
//! against its schema in `docs/openapi.json`, and every hostile input answered while another
//! client is served.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::support::*;

const KEY: &str = "api-key-0123";

fn openapi() -> Value {
    let text = include_str!("../../../../docs/openapi.json");
    serde_json::from_str(text).expect("docs/openapi.json is JSON")
}

/// Checks `body` against the schema of `method`'s response with `status`.
fn check_schema(method: &str, status: u16, body: &Value) {
    let mut doc = openapi();
    let pointer = format!("/paths/~1api~1{method}/post/responses/{status}");
    assert!(
        doc.pointer(&pointer).is_some(),
        "docs/openapi.json has no {status} response for {method}: {body}"
    );
    doc["$ref"] = json!(format!("#{pointer}/content/application~1json/schema"));
    let validator = jsonschema::draft202012::new(&doc).expect("a valid schema");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{method} {status}: {errors:?} in {body}");
}

async fn server() -> TestServer {
    let mut c = config();
    c.api.key = Some(KEY.into());
    start_with(c).await
}

/// Calls `method` with `body` and the key, checks the answer against the schema and returns
/// the status and JSON.
async fn call(s: &TestServer, method: &str, body: &str) -> (u16, Value) {
    call_with(s, method, &format!("Authorization: Bearer {KEY}\r\n"), body).await
}

async fn call_with(s: &TestServer, method: &str, headers: &str, body: &str) -> (u16, Value) {
    let (status, _, text) = post(s.addr, &format!("/api/{method}"), headers, body).await;
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    check_schema(method, status, &value);
    (status, value)
}

#[tokio::test]
async fn publish_reaches_subscribers_and_an_idempotent_retry_is_not_repeated() {
    let s = server().await;
    let mut c = s.client().await;
    c.subscribe("news").await;
    let (status, first) = call(
        &s,
        "publish",
        r#"{"channel":"news","data":{"n":1},"idempotency_key":"order-7"}"#,
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["offset"], 1);
    assert_eq!(c.recv_message().await["data"], json!({"n":1}));
    // The retry returns the first position and publishes nothing.
    let (status, again) = call(
        &s,
        "publish",
        r#"{"channel":"news","data":{"n":1},"idempotency_key":"order-7"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again, first);
    // The same key on another channel is another publish.
    let (_, other) = call(
        &s,
        "publish",
        r#"{"channel":"other","data":2,"idempotency_key":"order-7"}"#,
    )
    .await;
    assert_eq!(other["channel"], "other");
    assert_eq!(other["offset"], 1);
    let (_, next) = call(&s, "publish", r#"{"channel":"news","data":null}"#).await;
    assert_eq!(next["offset"], 2);
    let m = c.recv_message().await;
    assert_eq!(
        (m["offset"].clone(), m["data"].clone()),
        (json!(2), json!(null))
    );
    c.assert_silent(std::time::Duration::from_millis(100)).await;
}

#[tokio::test]
async fn concurrent_publishes_with_one_key_publish_once() {
    let s = server().await;
    let body = r#"{"channel":"once","data":1,"idempotency_key":"k"}"#;
    let answers = futures_join(&s, body, 8).await;
    for a in &answers {
        assert_eq!(a, &answers[0]);
    }
    let (_, h) = call(&s, "history", r#"{"channel":"once"}"#).await;
    assert_eq!(h["offset"], 1, "{h}");
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(1));
}

async fn futures_join(s: &TestServer, body: &'static str, n: usize) -> Vec<Value> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let auth = format!("Authorization: Bearer {KEY}\r\n");
            post(addr, "/api/publish", &auth, body).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        let (status, _, text) = t.await.expect("task");
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).expect("json");
        check_schema("publish", status, &v);
        out.push(v);
    }
    out
}

#[tokio::test]
async fn broadcast_answers_per_channel() {
    let s = server().await;
    let mut a = s.client().await;
    a.subscribe("a").await;
    let mut b = s.client().await;
    b.subscribe("b").await;
    let (status, v) = call(
        &s,
        "broadcast",
        r#"{"channels":["a","bad name","b","zz:x"],"data":{"hi":1}}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let r = &v["results"];
    assert_eq!(r[0]["offset"], 1);
    assert_eq!(r[1]["error"]["code"], "bad_channel");
    assert_eq!(r[2]["channel"], "b");
    assert_eq!(r[3]["error"]["code"], "unknown_namespace");
    assert_eq!(a.recv_message().await["data"], json!({"hi":1}));
    assert_eq!(b.recv_message().await["data"], json!({"hi":1}));
    let (status, v) = call(&s, "broadcast", r#"{"channels":["a","a"],"data":1}"#).await;
    assert_eq!((status, v["code"].clone()), (400, json!("bad_request")));
    let (status, _) = call(&s, "broadcast", r#"{"channels":[],"data":1}"#).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn history_with_limit_since_and_reverse() {
    let s = server().await;
    for n in 1..=5 {
        call(&s, "publish", &format!(r#"{{"channel":"h","data":{n}}}"#)).await;
    }
    let (status, all) = call(&s, "history", r#"{"channel":"h"}"#).await;
    assert_eq!(status, 200, "{all}");
    let offsets = |v: &Value| -> Vec<u64> {
        v["publications"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["offset"].as_u64()).collect())
            .unwrap_or_default()
    };
    assert_eq!(offsets(&all), [1, 2, 3, 4, 5]);
    assert_eq!(all["publications"][0]["from"], Value::Null);
    let (_, last) = call(&s, "history", r#"{"channel":"h","limit":2}"#).await;
    assert_eq!(offsets(&last), [4, 5]);
    let (_, rev) = call(&s, "history", r#"{"channel":"h","limit":2,"reverse":true}"#).await;
    assert_eq!(offsets(&rev), [5, 4]);
    let epoch = all["epoch"].as_str().unwrap_or_default();
    let body = json!({"channel":"h","since":{"epoch":epoch,"offset":3}}).to_string();
    let (_, since) = call(&s, "history", &body).await;
    assert_eq!(offsets(&since), [4, 5]);
    assert_eq!(since["complete"], true);
    let body = json!({"channel":"h","since":{"epoch":"other","offset":3}}).to_string();
    let (_, other) = call(&s, "history", &body).await;
    assert_eq!(other["complete"], false);
    assert_eq!(offsets(&other), [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn presence_presence_stats_channels_and_info() {
    let s = server().await;
    let mut a = s.client().await;
    a.subscribe("lobby").await;
    let mut b = s.client().await;
    b.subscribe("lobby").await;
    b.subscribe("room").await;
    let (status, p) = call(&s, "presence", r#"{"channel":"lobby"}"#).await;
    assert_eq!(status, 200, "{p}");
    let clients: BTreeSet<String> = p["clients"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["client"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        clients,
        BTreeSet::from([a.id().to_owned(), b.id().to_owned()])
    );
    let (_, st) = call(&s, "presence_stats", r#"{"channel":"lobby"}"#).await;
    assert_eq!(
        (st["clients"].clone(), st["users"].clone()),
        (json!(2), json!(0))
    );

    let (_, ch) = call(&s, "channels", "").await;
    assert_eq!(
        ch["channels"],
        json!([{"channel":"lobby","subscribers":2},{"channel":"room","subscribers":1}])
    );
    let (_, ch) = call(&s, "channels", r#"{"pattern":"ro*"}"#).await;
    assert_eq!(ch["channels"], json!([{"channel":"room","subscribers":1}]));
    let (_, ch) = call(&s, "channels", r#"{"pattern":"l?bby"}"#).await;
    assert_eq!(ch["channels"][0]["channel"], "lobby");

    let (status, info) = call(&s, "info", "{}").await;
    assert_eq!(status, 200);
    let node = &info["nodes"][0];
    assert_eq!(node["node"], s.hub.node_id());
    assert_eq!(node["connections"], 2);
    assert_eq!(node["subscriptions"], 3);
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn the_same_operations_are_hub_methods() {
    let s = server().await;
    let data = serde_json::value::RawValue::from_string("7".into()).expect("json");
    let results = s
        .hub
        .broadcast(&["x".to_owned(), "y".to_owned()], data, None)
        .await
        .expect("broadcast");
    assert!(results.iter().all(|r| matches!(r, Ok(p) if p.offset == 1)));
    let h = s
        .hub
        .history("x", duplex_hub::api::HistoryRequest::latest())
        .await
        .expect("history");
    assert_eq!(h.publications.len(), 1);
    let err = s
        .hub
        .presence_stats("bad name")
        .await
        .expect_err("bad channel");
    assert_eq!(err.code, duplex_hub::protocol::ErrorCode::BadChannel);
}

#[tokio::test]
async fn openapi_paths_are_the_routers_methods() {
    let doc = openapi();
    let paths: BTreeSet<String> = doc["paths"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let methods: BTreeSet<String> = duplex_hub::api::METHODS
        .iter()
        .map(|m| format!("/api/{m}"))
        .collect();
    assert_eq!(paths, methods);
    // And the router serves each of them (none is an unknown method).
    let s = server().await;
    for m in duplex_hub::api::METHODS {
        let (status, _, text) = post(
            s.addr,
            &format!("/api/{m}"),
            &format!("Authorization: Bearer {KEY}\r\n"),
            "{}",
        )
        .await;
        assert!(!text.contains("unknown_method"), "{m}: {status} {text}");
    }
}

/// Each hostile input gets its answer, its metric counts, and a well-behaved client is
/// served meanwhile.
#[tokio::test]
async fn hostile_inputs_get_their_answers_while_others_are_served() {
    let mut c = config();
    c.api.key = Some(KEY.into());
    c.api.max_body_bytes = 1024;
    c.api.max_broadcast_channels = 3;
    c.api.max_pattern_bytes = 8;
    c.api.max_history_limit = 10;
    c.api.max_idempotency_keys = 2;
    let s = start_with(c).await;
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(2000));
    let long_key = format!(
        r#"{{"channel":"a","data":1,"idempotency_key":"{}"}}"#,
        "k".repeat(257)
    );
    // (method, header lines, body, status, error code, limit counted)
    type Case<'a> = (&'a str, String, String, u16, &'a str, Option<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        (
            "publish",
            String::new(),
            r#"{"channel":"a","data":1}"#.into(),
            401,
            "unauthorized",
            Some("api_key"),
        ),
        (
            "publish",
            "Authorization: Bearer wrong-key-000\r\n".into(),
            "{}".into(),
            401,
            "unauthorized",
            Some("api_key"),
        ),
        (
            "publish",
            auth.clone(),
            "{not json".into(),
            400,
            "bad_json",
            None,
        ),
        ("publish", auth.clone(), "[1]".into(), 400, "bad_json", None),
        (
            "publish",
            auth.clone(),
            r#"{"channel":"a","data":1,"extra":1}"#.into(),
            400,
            "bad_request",
            None,
        ),
        (
            "publish",
            auth.clone(),
            big,
            413,
            "too_large",
            Some("api_body"),
        ),
        (
            "publish",
            auth.clone(),
            long_key,
            400,
            "bad_request",
            Some("idempotency_key"),
        ),
        (
            "broadcast",
            auth.clone(),
            r#"{"channels":["a","b","c","d"],"data":1}"#.into(),
            400,
            "bad_request",
            Some("broadcast_channels"),
        ),
        (
            "channels",
            auth.clone(),
            r#"{"pattern":"123456789"}"#.into(),
            400,
            "bad_request",
            Some("channel_pattern"),
        ),
        (
            "history",
            auth.clone(),
            r#"{"channel":"a","limit":11}"#.into(),
            400,
            "bad_request",
            Some("history_limit"),
        ),
        (
            "presence",
            auth.clone(),
            r#"{"channel":"zz:a"}"#.into(),
            400,
            "unknown_namespace",
            None,
        ),
        (
            "history",
            auth.clone(),
            r#"{}"#.into(),
            400,
            "bad_request",
            None,
        ),
    ];
    for (method, headers, body, status, code, limit) in cases {
        let before = match limit {
            Some(l) => metric(&s, &format!("duplex_limit_hits_total{{limit=\"{l}\"}}")).await,
            None => 0.0,
        };
        let (got, v) = call_with(&s, method, &headers, &body).await;
        assert_eq!(
            (got, v["code"].as_str()),
            (status, Some(code)),
            "{method} {body:.80}: {v}"
        );
        if let Some(l) = limit {
            let after = metric(&s, &format!("duplex_limit_hits_total{{limit=\"{l}\"}}")).await;
            assert_eq!(after, before + 1.0, "{l}");
        }
        assert_served(&s, "127.0.0.1").await;
    }
    // Unknown methods: 404, after the key.
    let (status, _, text) = post(s.addr, "/api/nope", &auth, "{}").await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("unknown_method"), "{text}");
    let (status, _, _) = post(s.addr, "/api/nope", "", "{}").await;
    assert_eq!(status, 401);
    // The idempotency store holds two keys; the third is refused, known ones still answer.
    for k in ["1", "2"] {
        let body = format!(r#"{{"channel":"a","data":1,"idempotency_key":"{k}"}}"#);
        assert_eq!(call(&s, "publish", &body).await.0, 200);
    }
    let (status, v) = call(
        &s,
        "publish",
        r#"{"channel":"a","data":1,"idempotency_key":"3"}"#,
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (507, Some("over_capacity")),
        "{v}"
    );
    let (status, v) = call(
        &s,
        "publish",
        r#"{"channel":"a","data":1,"idempotency_key":"1"}"#,
    )
    .await;
    assert_eq!((status, v["offset"].as_u64()), (200, Some(1)), "{v}");
    let hits = metric(&s, "duplex_limit_hits_total{limit=\"idempotency_keys\"}").await;
    assert_eq!(hits, 1.0);
    assert_served(&s, "127.0.0.1").await;
}

#[tokio::test]
async fn the_api_is_disabled_without_a_key() {
    let s = start().await;
    let (status, v) = call_with(&s, "info", "", "{}").await;
    assert_eq!((status, v["code"].as_str()), (404, Some("disabled")));
}

#[tokio::test]
async fn disconnect_closes_a_users_connections_or_one_client() {
    let mut c = config();
    c.api.key = Some(KEY.into());
    c.auth.jwt_secret = Some("test-secret-0123456789".into());
    let s = start_with(c).await;
    let token = |sub: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub":sub,"exp":jsonwebtoken::get_current_timestamp()+600,"channels":["*"]}),
            &jsonwebtoken::EncodingKey::from_secret(b"test-secret-0123456789"),
        )
        .expect("token")
    };
    let connect =
        |sub: &str| duplex::ClientBuilder::new(format!("{}?token={}", s.url(), token(sub)));
    let mut ada1 = Client::connect(connect("ada")).await;
    let mut ada2 = Client::connect(connect("ada")).await;
    let mut bob = Client::connect(connect("bob")).await;
    let mut anon = s.client().await;
    let (status, v) = call(
        &s,
        "disconnect",
        r#"{"user":"ada","code":4001,"reason":"banned"}"#,
    )
    .await;
    assert_eq!((status, v["disconnected"].as_u64()), (200, Some(2)), "{v}");
    for c in [&mut ada1, &mut ada2] {
        assert_eq!(c.closed().await.map(|c| c.0), Some(4001));
    }
    let (_, v) = call(&s, "disconnect", &json!({"client": anon.id()}).to_string()).await;
    assert_eq!(v["disconnected"], 1);
    assert_eq!(anon.closed().await.map(|c| c.0), Some(1008));
    // Bob is still served.
    assert_eq!(bob.subscribe("lobby").await["type"], "reply");
    let (_, v) = call(&s, "disconnect", r#"{"user":"nobody"}"#).await;
    assert_eq!(v["disconnected"], 0);
    // Bad codes, long reasons, neither or both targets: 400, counted where a limit.
    let long = json!({"user":"bob","reason":"r".repeat(124)}).to_string();
    let before = metric(&s, "duplex_limit_hits_total{limit=\"disconnect_reason\"}").await;
    for body in [
        r#"{"user":"bob","code":1006}"#,
        r#"{"user":"bob","code":1002}"#,
        r#"{"user":"bob","code":5000}"#,
        r#"{}"#,
        r#"{"user":"bob","client":"x"}"#,
        &long,
    ] {
        let (status, v) = call(&s, "disconnect", body).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("bad_request")),
            "{body}: {v}"
        );
    }
    let after = metric(&s, "duplex_limit_hits_total{limit=\"disconnect_reason\"}").await;
    assert_eq!(after, before + 1.0);
    bob.assert_silent(std::time::Duration::from_millis(50))
        .await;
    assert_served(&s, "127.0.0.1").await;
}

#[tokio::test]
async fn refresh_moves_or_ends_a_users_token_deadline() {
    let mut c = config();
    c.api.key = Some(KEY.into());
    c.auth.jwt_secret = Some("test-secret-0123456789".into());
    let s = start_with(c).await;
    let now = jsonwebtoken::get_current_timestamp();
    let connect = |sub: &str| {
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub":sub,"exp":now+600,"channels":["*"]}),
            &jsonwebtoken::EncodingKey::from_secret(b"test-secret-0123456789"),
        )
        .expect("token");
        duplex::ClientBuilder::new(format!("{}?token={t}", s.url()))
    };
    let mut ada = Client::connect(connect("ada")).await;
    let mut bob = Client::connect(connect("bob")).await;
    let mut cy = Client::connect(connect("cy")).await;
    // Bob's deadline moves to now + 1 s: he is closed like at token expiry.
    let started = std::time::Instant::now();
    let body = json!({"user":"bob","exp":now+1}).to_string();
    let (status, v) = call(&s, "refresh", &body).await;
    assert_eq!((status, v["connections"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(bob.closed().await.map(|c| c.0), Some(1008));
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // Ada expires now.
    let (_, v) = call(&s, "refresh", r#"{"user":"ada","expire":true}"#).await;
    assert_eq!(v["connections"], 1);
    assert_eq!(ada.closed().await.map(|c| c.0), Some(1008));
    // Cy's deadline is extended; he stays.
    let body = json!({"user":"cy","exp":now+3600}).to_string();
    assert_eq!(call(&s, "refresh", &body).await.1["connections"], 1);
    assert_eq!(cy.subscribe("lobby").await["type"], "reply");
    for body in [
        r#"{"user":"cy"}"#,
        r#"{"user":"cy","exp":1,"expire":true}"#,
        r#"{"exp":1}"#,
        r#"{"user":"cy","exp":-1}"#,
    ] {
        let (status, v) = call(&s, "refresh", body).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some("bad_request")),
            "{body}: {v}"
        );
    }
    assert_served(&s, "127.0.0.1").await;
}

/// An independent client (Python's urllib) speaks the API as documented.
#[tokio::test]
async fn python_urllib_calls_the_api() {
    let s = server().await;
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/peers/python/api_client.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .args([
            format!("http://{}", s.addr),
            KEY.to_owned(),
            "py".to_owned(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the Python client did not finish in time")
        .expect("wait for python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(calls.len(), 5, "{stdout}");
    for c in &calls {
        let status = c["status"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        check_schema(c["method"].as_str().unwrap_or_default(), status, &c["body"]);
    }
    let statuses: Vec<u64> = calls.iter().filter_map(|c| c["status"].as_u64()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 401]);
    assert_eq!(
        calls[0]["body"], calls[1]["body"],
        "the retry is not published again"
    );
    assert_eq!(
        calls[2]["body"]["publications"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        calls[2]["body"]["publications"][0]["data"],
        json!({"from":"python"})
    );
    assert_eq!(calls[3]["body"]["nodes"][0]["node"], s.hub.node_id());
}

/// Connects a client for user `sub` with a token allowing only `allowed` channels.
fn user_client(s: &TestServer, sub: &str, allowed: &[&str]) -> duplex::ClientBuilder {
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub":sub,"exp":jsonwebtoken::get_current_timestamp()+600,"channels":allowed}),
        &jsonwebtoken::EncodingKey::from_secret(b"test-secret-0123456789"),
    )
    .expect("token");
    duplex::ClientBuilder::new(format!("{}?token={t}", s.url()))
}

#[tokio::test]
async fn subscribe_and_unsubscribe_act_inside_a_users_connections() {
    let mut c = config();
    c.api.key = Some(KEY.into());
    c.auth.jwt_secret = Some("test-secret-0123456789".into());
    let s = start_with(c).await;
    // The token allows nothing: a server-side subscription needs no permission.
    let mut ada1 = Client::connect(user_client(&s, "ada", &[])).await;
    let mut ada2 = Client::connect(user_client(&s, "ada", &[])).await;
    let mut bob = Client::connect(user_client(&s, "bob", &[])).await;
    let refused = bob.call(json!({"type":"subscribe","channel":"news"})).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let (_, first) = call(&s, "publish", r#"{"channel":"news","data":1}"#).await;
    let (status, v) = call(&s, "subscribe", r#"{"user":"ada","channel":"news"}"#).await;
    assert_eq!((status, v["subscribed"].as_u64()), (200, Some(2)), "{v}");
    let clients = v["clients"].as_array().expect("clients");
    let ids: BTreeSet<&str> = clients
        .iter()
        .filter_map(|c| c["client"].as_str())
        .collect();
    assert_eq!(ids, BTreeSet::from([ada1.id(), ada2.id()]));
    for entry in clients {
        assert_eq!(entry["offset"], first["offset"], "{v}");
        assert_eq!(entry["epoch"], first["epoch"], "{v}");
    }
    // Each client is told, with the position it can recover from later.
    for c in [&mut ada1, &mut ada2] {
        let event = c.recv_message().await;
        assert_eq!(event["type"], "subscribed", "{event}");
        assert_eq!(event["channel"], "news");
        assert_eq!(event["offset"], first["offset"]);
        assert!(
            event.get("id").is_none(),
            "a pushed event has no id: {event}"
        );
    }
    call(&s, "publish", r#"{"channel":"news","data":2}"#).await;
    for c in [&mut ada1, &mut ada2] {
        let m = c.recv_message().await;
        assert_eq!(
            (m["type"].as_str(), &m["data"]),
            (Some("message"), &json!(2))
        );
    }
    // Twice is refused per connection, in the reply.
    let body = json!({"client": ada1.id(), "channel": "news"}).to_string();
    let (status, v) = call(&s, "subscribe", &body).await;
    assert_eq!((status, v["subscribed"].as_u64()), (200, Some(0)), "{v}");
    assert_eq!(v["clients"][0]["error"]["code"], "already_subscribed");
    // Unsubscribing one client pushes `unsubscribed`; its publications stop.
    let (status, v) = call(&s, "unsubscribe", &body).await;
    assert_eq!((status, v["unsubscribed"].as_u64()), (200, Some(1)), "{v}");
    assert_eq!(v["clients"][0], json!({"client": ada1.id()}));
    let event = ada1.recv_message().await;
    assert_eq!(event, json!({"type":"unsubscribed","channel":"news"}));
    let (status, v) = call(&s, "unsubscribe", &body).await;
    assert_eq!(status, 200);
    assert_eq!(v["clients"][0]["error"]["code"], "not_subscribed", "{v}");
    call(&s, "publish", r#"{"channel":"news","data":3}"#).await;
    assert_eq!(ada2.recv_message().await["data"], 3);
    // No connections: an empty answer.
    let (_, v) = call(&s, "subscribe", r#"{"user":"nobody","channel":"news"}"#).await;
    assert_eq!(
        v,
        json!({"channel":"news","subscribed":0,"clients":[],"all_nodes":false})
    );
    // Bad targets and channels: 400 before any connection is asked.
    for (method, body, code) in [
        ("subscribe", r#"{"channel":"news"}"#, "bad_request"),
        (
            "subscribe",
            r#"{"user":"ada","client":"x","channel":"news"}"#,
            "bad_request",
        ),
        ("subscribe", r#"{"user":"ada"}"#, "bad_request"),
        (
            "subscribe",
            r#"{"user":"ada","channel":"bad channel"}"#,
            "bad_channel",
        ),
        (
            "subscribe",
            r#"{"user":"ada","channel":"nope:x"}"#,
            "unknown_namespace",
        ),
        (
            "unsubscribe",
            r#"{"user":"ada","channel":""}"#,
            "bad_channel",
        ),
    ] {
        let (status, v) = call(&s, method, body).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
    }
    ada1.assert_silent(std::time::Duration::from_millis(50))
        .await;
    assert_served(&s, "127.0.0.1").await;
}

#[tokio::test]
async fn server_side_subscriptions_keep_the_connection_limits() {
    let mut c = config();
    c.api.key = Some(KEY.into());
    c.limits.max_channels_per_connection = 1;
    let s = start_with(c).await;
    let mut full = s.client().await;
    full.subscribe("mine").await;
    let mut other = s.client().await;
    let body = |c: &Client| json!({"client": c.id(), "channel": "more"}).to_string();
    let (status, v) = call(&s, "subscribe", &body(&full)).await;
    assert_eq!((status, v["subscribed"].as_u64()), (200, Some(0)), "{v}");
    assert_eq!(v["clients"][0]["client"], full.id());
    assert_eq!(v["clients"][0]["error"]["code"], "too_many_channels", "{v}");
    // The refused connection is told nothing and keeps its subscription; another is served.
    full.assert_silent(std::time::Duration::from_millis(50))
        .await;
    let (_, v) = call(&s, "subscribe", &body(&other)).await;
    assert_eq!(v["subscribed"], 1, "{v}");
    assert_eq!(other.recv_message().await["type"], "subscribed");
    call(&s, "publish", r#"{"channel":"mine","data":"m"}"#).await;
    assert_eq!(full.recv_message().await["data"], "m");
    assert_served(&s, "127.0.0.1").await;
}
