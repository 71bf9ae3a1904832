//! Authentication, Origin checks and connection limits.

use std::path::PathBuf;
use std::time::Duration;

use duplex::ClientBuilder;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::*;

const SECRET: &str = "test-secret-0123456789";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn data_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

async fn secured() -> TestServer {
    let mut c = config();
    c.auth.anonymous = false;
    c.auth.jwt_secret = Some(SECRET.into());
    start_with(c).await
}

async fn refused(s: &TestServer, extra: &str, path: &str) -> (u16, String) {
    upgrade_status(s.addr, &upgrade_request(s.addr, path, extra)).await
}

#[tokio::test]
async fn token_in_query_or_header_sets_the_user() {
    let s = secured().await;
    let token = hs256(json!({"sub":"ada","exp":now()+600}));
    let c = Client::connect(ClientBuilder::new(format!("{}?token={token}", s.url()))).await;
    assert_eq!(c.welcome["user"], "ada");
    let c = Client::connect(
        ClientBuilder::new(s.url()).header("Authorization", format!("Bearer {token}")),
    )
    .await;
    assert_eq!(c.welcome["user"], "ada");
}

#[tokio::test]
async fn publications_from_users_carry_the_user() {
    let s = secured().await;
    // Without audiences configured, a token needs a `channels` claim to use any channel.
    let token = hs256(json!({"sub":"ada","exp":now()+600,"channels":["lobby"]}));
    let mut c = Client::connect(ClientBuilder::new(format!("{}?token={token}", s.url()))).await;
    c.subscribe("lobby").await;
    let (_, events) = c
        .call_with_events(json!({"type":"publish","channel":"lobby","data":1}))
        .await;
    // The message may arrive before or after the reply.
    let m = match events.into_iter().find(|e| e["type"] == "message") {
        Some(m) => m,
        None => c.recv_message().await,
    };
    assert_eq!(m["from"], "ada");
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    let s = secured().await;
    let (status, head) = refused(&s, "", "/ws").await;
    assert_eq!(status, 401, "anonymous is off");
    // RFC 6750 §3: the scheme, and an `error` only when a token was sent (§3.1).
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer\r\n"),
        "{head}"
    );
    let expired = hs256(json!({"sub":"ada","exp":now()-10}));
    assert_eq!(
        refused(&s, "", &format!("/ws?token={expired}")).await.0,
        401
    );
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"ada","exp":now()+600}),
        &EncodingKey::from_secret(b"not-the-secret-at-all"),
    )
    .unwrap();
    let (status, head) = refused(&s, &format!("Authorization: Bearer {forged}\r\n"), "/ws").await;
    assert_eq!(status, 401);
    assert!(head.contains("invalid token: bad signature"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer error=\"invalid_token\""),
        "{head}"
    );
    let no_sub = hs256(json!({"exp":now()+600}));
    assert_eq!(refused(&s, "", &format!("/ws?token={no_sub}")).await.0, 401);
    assert_eq!(refused(&s, "", "/ws?token=garbage").await.0, 401);
    assert!(s.hub.stats().handshake_failures >= 5);
}

#[tokio::test]
async fn rs256_and_es256_public_keys() {
    for (alg, private, public) in [
        (Algorithm::RS256, "rsa_private.pem", "rsa_public.pem"),
        (Algorithm::ES256, "ec_private.pem", "ec_public.pem"),
    ] {
        let mut c = config();
        c.auth.jwt_public_key_file = Some(data_file(public));
        let s = start_with(c).await;
        let pem = std::fs::read(data_file(private)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let token = jsonwebtoken::encode(
            &Header::new(alg),
            &json!({"sub":"bob","exp":now()+60}),
            &key,
        )
        .unwrap();
        let client =
            Client::connect(ClientBuilder::new(format!("{}?token={token}", s.url()))).await;
        assert_eq!(client.welcome["user"], "bob", "{alg:?}");
        // An HS256 token is refused by a public-key server (no algorithm confusion).
        let hs = hs256(json!({"sub":"bob","exp":now()+60}));
        assert_eq!(refused(&s, "", &format!("/ws?token={hs}")).await.0, 401);
    }
}

#[tokio::test]
async fn channel_claims_restrict_subscribe_and_publish() {
    let s = secured().await;
    let token = hs256(json!({
        "sub":"ada","exp":now()+600,
        "channels":["chat:*","lobby"],"publish":["lobby"],
        "info":{"name":"Ada Lovelace"}
    }));
    let mut c = Client::connect(ClientBuilder::new(format!("{}?token={token}", s.url()))).await;
    let err = c.call(json!({"type":"subscribe","channel":"secret"})).await;
    assert_eq!(err["code"], "forbidden");
    let err = c.call(json!({"type":"history","channel":"secret"})).await;
    assert_eq!(err["code"], "forbidden");
    // `chat:*` needs the namespace; the default namespace's `lobby` is allowed.
    c.call(json!({"type":"subscribe","channel":"lobby","info":{"name":"spoofed"}}))
        .await;
    let p = c.call(json!({"type":"presence","channel":"lobby"})).await;
    assert_eq!(
        p["clients"][0]["info"]["name"], "Ada Lovelace",
        "the token's info wins"
    );
    // A second connection of the same user: two clients, one user.
    let mut again = Client::connect(ClientBuilder::new(format!("{}?token={token}", s.url()))).await;
    again.subscribe("lobby").await;
    let stats = c
        .call(json!({"type":"presence_stats","channel":"lobby"}))
        .await;
    assert_eq!(
        (&stats["clients"], &stats["users"]),
        (&json!(2), &json!(1)),
        "{stats}"
    );
    let err = c
        .call(json!({"type":"presence_stats","channel":"secret"}))
        .await;
    assert_eq!(err["code"], "forbidden");
    let err = c
        .call(json!({"type":"publish","channel":"lobby2","data":1}))
        .await;
    assert_eq!(err["code"], "forbidden");
    let ok = c
        .call(json!({"type":"publish","channel":"lobby","data":1}))
        .await;
    assert_eq!(ok["type"], "reply");
}

#[tokio::test]
async fn token_expiry_closes_an_open_connection_with_1008() {
    let s = secured().await;
    let token = hs256(json!({"sub":"ada","exp":now()+2}));
    let mut c = Client::connect(ClientBuilder::new(format!("{}?token={token}", s.url()))).await;
    assert_eq!(c.call(json!({"type":"ping"})).await["type"], "pong");
    assert_eq!(c.closed().await, Some(duplex::CloseCode::POLICY));
}

#[tokio::test]
async fn cross_site_origins_are_refused_with_403() {
    let mut c = config();
    c.auth.allowed_origins = vec!["https://app.example.com".into()];
    let s = start_with(c).await;
    let (status, _) = refused(&s, "Origin: https://evil.example\r\n", "/ws").await;
    assert_eq!(status, 403);
    let same = format!("Origin: http://{}\r\n", s.addr);
    assert_eq!(refused(&s, &same, "/ws").await.0, 101);
    let listed = "Origin: https://app.example.com\r\n";
    assert_eq!(refused(&s, listed, "/ws").await.0, 101);
    assert_eq!(
        refused(&s, "", "/ws").await.0,
        101,
        "no Origin: not a browser"
    );
}

#[tokio::test]
async fn connection_limits_total_and_per_ip() {
    let mut c = config();
    c.limits.max_connections = 2;
    let s = start_with(c).await;
    let _a = s.client().await;
    let _b = s.client().await;
    assert_eq!(refused(&s, "", "/ws").await.0, 503);
    drop(_a);
    eventually(|| s.hub.connections() == 1).await;
    let _c = s.client().await;

    let mut c = config();
    c.limits.max_connections_per_ip = 1;
    let s = start_with(c).await;
    let first = s.client().await;
    assert_eq!(refused(&s, "", "/ws").await.0, 429);
    drop(first);
    eventually(|| s.hub.connections() == 0).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _again = s.client().await;
}

#[tokio::test]
async fn connection_limit_per_user() {
    let mut c = config();
    c.auth.jwt_secret = Some(SECRET.into());
    c.limits.max_connections_per_user = 2;
    let s = start_with(c).await;
    let ada = hs256(json!({"sub":"ada","exp":now()+600}));
    let url = format!("{}?token={ada}", s.url());
    let first = Client::connect(ClientBuilder::new(url.clone())).await;
    let _second = Client::connect(ClientBuilder::new(url.clone())).await;
    let path = format!("/ws?token={ada}");
    let (status, head) = refused(&s, "", &path).await;
    assert_eq!(status, 429, "{head}");
    let hits = metric(
        &s,
        "duplex_limit_hits_total{limit=\"connections_per_user\"}",
    )
    .await;
    assert_eq!(hits, 1.0);
    // Another user and anonymous clients are served meanwhile.
    let bob = hs256(json!({"sub":"bob","exp":now()+600}));
    let b = Client::connect(ClientBuilder::new(format!("{}?token={bob}", s.url()))).await;
    assert_eq!(b.welcome["user"], "bob");
    assert_served(&s, "127.0.0.1").await;
    // A slot frees up when one of the user's connections closes.
    drop(first);
    eventually(|| s.hub.connections() == 2).await;
    let again = Client::connect(ClientBuilder::new(url)).await;
    assert_eq!(again.welcome["user"], "ada");
}

#[tokio::test]
async fn personal_channels_are_only_for_the_users_they_name() {
    let mut c = config();
    c.auth.jwt_secret = Some(SECRET.into());
    c.api.key = Some("api-key-0123".into());
    for ns in ["user", "dm"] {
        let mut o = duplex_hub::config::NamespaceOverrides::default();
        o.personal = Some(true);
        c.namespaces.insert(ns.into(), o);
    }
    let s = start_with(c).await;
    let user = |sub: &str| {
        let t = hs256(json!({"sub":sub,"exp":now()+600,"channels":["*"],"publish":["*"]}));
        ClientBuilder::new(format!("{}?token={t}", s.url()))
    };
    let mut ada = Client::connect(user("42")).await;
    let mut bob = Client::connect(user("43")).await;
    let mut eve = Client::connect(user("4")).await;
    let mut anon = s.client().await;
    ada.subscribe("user:#42").await;
    ada.subscribe("dm:#42,43").await;
    bob.subscribe("dm:#42,43").await;
    let refused = [
        (1, json!({"type":"subscribe","channel":"user:#42"})),
        (2, json!({"type":"subscribe","channel":"dm:#42,43"})),
        (3, json!({"type":"subscribe","channel":"user:#42"})),
        (1, json!({"type":"publish","channel":"user:#42","data":1})),
        (1, json!({"type":"history","channel":"user:#42"})),
        (2, json!({"type":"presence","channel":"dm:#42,43"})),
    ];
    for (who, cmd) in refused {
        let client = match who {
            1 => &mut bob,
            2 => &mut eve,
            _ => &mut anon,
        };
        let reply = client.call(cmd.clone()).await;
        assert_eq!(reply["code"], "forbidden", "{cmd}: {reply}");
    }
    let hits = metric(&s, "duplex_limit_hits_total{limit=\"personal_channel\"}").await;
    assert_eq!(hits, 6.0);
    // `#` outside a personal namespace is an ordinary character.
    eve.subscribe("lobby#42").await;
    // The server API may publish to a personal channel.
    let (status, _, body) = post(
        s.addr,
        "/api/publish",
        "Authorization: Bearer api-key-0123\r\n",
        r#"{"channel":"user:#42","data":{"for":"ada"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ada.recv_message().await["data"], json!({"for":"ada"}));
    assert_served(&s, "127.0.0.1").await;
}
