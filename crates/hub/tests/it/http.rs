//! The HTTP side: API, health, metrics, pages.

use serde_json::{json, Value};

use crate::support::*;

const KEY: &str = "api-key-0123";

async fn with_key() -> TestServer {
    let mut c = config();
    c.api.key = Some(KEY.into());
    start_with(c).await
}

fn auth() -> String {
    format!("Authorization: Bearer {KEY}\r\n")
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn api_publish_reaches_subscribers() {
    let s = with_key().await;
    let mut c = s.client().await;
    c.subscribe("news").await;
    let (status, _, body) = post(
        s.addr,
        "/api/publish",
        &auth(),
        r#"{"channel":"news","data":{"headline":"hi"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reply = json_of(&body);
    assert_eq!(reply["offset"], 1);
    assert_eq!(reply["channel"], "news");
    let m = c.recv().await;
    assert_eq!(m["data"], json!({"headline":"hi"}));
    assert!(m["from"].is_null());
}

#[tokio::test]
async fn api_publish_errors() {
    let s = with_key().await;
    let cases: [(&str, &str, u16, &str); 7] = [
        ("", r#"{"channel":"a","data":1}"#, 401, "unauthorized"),
        (
            "Authorization: Bearer wrong-key-000\r\n",
            r#"{"channel":"a","data":1}"#,
            401,
            "unauthorized",
        ),
        ("AUTH", "not json", 400, "bad_json"),
        ("AUTH", r#"{"data":1}"#, 400, "bad_request"),
        ("AUTH", r#"{"channel":"a"}"#, 400, "bad_request"),
        (
            "AUTH",
            r#"{"channel":"bad name","data":1}"#,
            400,
            "bad_channel",
        ),
        (
            "AUTH",
            r#"{"channel":"zz:a","data":1}"#,
            400,
            "unknown_namespace",
        ),
    ];
    for (header, body, status, code) in cases {
        let header = if header == "AUTH" {
            auth()
        } else {
            header.to_owned()
        };
        let (got, _, text) = post(s.addr, "/api/publish", &header, body).await;
        assert_eq!(got, status, "{body}: {text}");
        assert_eq!(json_of(&text)["code"], code, "{body}");
    }
    let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(40_000));
    let (status, _, text) = post(s.addr, "/api/publish", &auth(), &big).await;
    assert_eq!(status, 413);
    assert_eq!(json_of(&text)["code"], "too_large");

    // Without a key the endpoint is disabled.
    let s = start().await;
    let (status, _, text) = post(
        s.addr,
        "/api/publish",
        &auth(),
        r#"{"channel":"a","data":1}"#,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(json_of(&text)["code"], "disabled");
}

#[tokio::test]
async fn channels_stats_health_and_metrics() {
    let s = start().await;
    let mut a = s.client().await;
    a.subscribe("b-room").await;
    a.subscribe("a-room").await;
    let mut b = s.client().await;
    b.subscribe("a-room").await;
    let (status, _, body) = get(s.addr, "/api/channels", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&body),
        json!({"channels":[{"channel":"a-room","subscribers":2},{"channel":"b-room","subscribers":1}]})
    );
    let (status, _, body) = get(s.addr, "/api/stats", "").await;
    assert_eq!(status, 200);
    let stats = json_of(&body);
    assert_eq!(stats["connections"], 2);
    assert_eq!(stats["subscriptions"], 3);
    assert_eq!(stats["channels"], 2);
    assert!(stats["messages_in"].as_u64().unwrap() >= 3);
    let (status, _, body) = get(s.addr, "/healthz", "").await;
    assert_eq!((status, json_of(&body)), (200, json!({"status":"ok"})));
    let (status, head, body) = get(s.addr, "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/openmetrics-text"));
    for name in [
        "duplex_connections 2",
        "duplex_subscriptions 3",
        "duplex_messages_received_total",
        "duplex_bytes_sent_total",
        "duplex_publications_total",
        "duplex_slow_consumer_total{action=\"disconnect\"} 0",
        "duplex_command_duration_seconds_bucket",
        "duplex_command_errors_total{code=\"bad_json\"} 0",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
}

#[tokio::test]
async fn protected_reads_need_the_key() {
    let mut c = config();
    c.api.key = Some(KEY.into());
    c.api.protect_reads = true;
    let s = start_with(c).await;
    assert_eq!(get(s.addr, "/api/stats", "").await.0, 401);
    assert_eq!(get(s.addr, "/api/channels", "").await.0, 401);
    assert_eq!(get(s.addr, "/metrics", "").await.0, 401);
    assert_eq!(get(s.addr, "/api/stats", &auth()).await.0, 200);
    assert_eq!(get(s.addr, "/metrics", &auth()).await.0, 200);
    assert_eq!(
        get(s.addr, "/healthz", "").await.0,
        200,
        "health stays open"
    );
}

#[tokio::test]
async fn pages_are_embedded() {
    let s = start().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/ticker", "text/html"),
        ("/stats", "text/html"),
        ("/duplex.js", "text/javascript"),
        ("/chat.js", "text/javascript"),
        ("/ticker.js", "text/javascript"),
        ("/stats.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let (status, head, body) = get(s.addr, path, "").await;
        assert_eq!(status, 200, "{path}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-type: {kind}")),
            "{path}: {head}"
        );
        assert!(!body.is_empty(), "{path}");
    }
    assert_eq!(get(s.addr, "/nope", "").await.0, 404);
}
