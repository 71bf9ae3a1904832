//! Keys from a JWKS URL (served by a local HTTP server the tests control: rotation, outage,
//! hostile documents), and subscription tokens for `subscription_token` namespaces.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use duplex::ClientBuilder;
use duplex_hub::config::{MissingChannels, NamespaceOverrides};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::support::*;

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn data_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The test set's two keys, as `jwks.json` publishes them.
fn jwk(kid: &str) -> Value {
    let set: Value =
        serde_json::from_str(&std::fs::read_to_string(data_file("jwks.json")).unwrap()).unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap()
        .clone()
}

/// An RS256 token signed by the private key of `kid` (`k1` or `k2`).
fn signed(kid: Option<&str>, key: &str, claims: Value) -> String {
    let pem = std::fs::read(data_file(match key {
        "k1" => "rsa_private.pem",
        _ => "rsa2_private.pem",
    }))
    .unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

/// What the JWKS server answers.
#[derive(Clone)]
enum Answer {
    Keys(Vec<Value>),
    Body(String),
    Hang,
}

#[derive(Clone)]
struct Provider {
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
}

async fn serve_jwks(State(p): State<Provider>) -> (StatusCode, String) {
    p.fetches.fetch_add(1, Ordering::SeqCst);
    let answer = p.answer.lock().clone();
    match answer {
        Answer::Keys(keys) => (StatusCode::OK, json!({ "keys": keys }).to_string()),
        Answer::Body(body) => (StatusCode::OK, body),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            (StatusCode::OK, String::new())
        }
    }
}

/// A local identity provider: `GET /jwks`.
async fn provider(answer: Answer) -> (Provider, SocketAddr) {
    let p = Provider {
        answer: Arc::new(Mutex::new(answer)),
        fetches: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route("/jwks", get(serve_jwks))
        .with_state(p.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (p, addr)
}

async fn jwks_server(jwks: SocketAddr, min_refresh: Duration) -> TestServer {
    let mut c = config();
    c.auth.anonymous = true;
    c.auth.jwks_url = Some(format!("http://{jwks}/jwks"));
    c.auth.jwks_min_refresh = min_refresh;
    c.auth.jwks_timeout = Duration::from_millis(500);
    start_with(c).await
}

async fn status(s: &TestServer, token: &str) -> (u16, String) {
    upgrade_status(
        s.addr,
        &upgrade_request(s.addr, &format!("/ws?token={token}"), ""),
    )
    .await
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "exp": now() + 600})
}

#[tokio::test]
async fn jwks_keys_verify_tokens_and_a_rotated_in_key_is_fetched() {
    let (p, addr) = provider(Answer::Keys(vec![jwk("k1")])).await;
    let s = jwks_server(addr, Duration::from_millis(200)).await;
    let c = Client::connect(ClientBuilder::new(format!(
        "{}?token={}",
        s.url(),
        signed(Some("k1"), "k1", claims("ada"))
    )))
    .await;
    assert_eq!(c.welcome["user"], "ada");

    // A token from a key the provider does not publish (yet): refused, after one refetch.
    let k2 = signed(Some("k2"), "k2", claims("bob"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (code, head) = status(&s, &k2).await;
    assert_eq!(code, 401, "{head}");
    assert!(head.contains("unknown key"), "{head}");
    // A token signed by k2 that claims to be k1 does not verify.
    let forged = signed(Some("k1"), "k2", claims("eve"));
    assert_eq!(status(&s, &forged).await.0, 401);

    // The provider rotates k2 in: the next k2 token finds it with one more fetch.
    *p.answer.lock() = Answer::Keys(vec![jwk("k1"), jwk("k2")]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = p.fetches.load(Ordering::SeqCst);
    let c = Client::connect(ClientBuilder::new(format!("{}?token={k2}", s.url()))).await;
    assert_eq!(c.welcome["user"], "bob");
    assert_eq!(p.fetches.load(Ordering::SeqCst), before + 1);
    // Without a `kid`, each key of the token's algorithm is tried.
    let no_kid = signed(None, "k2", claims("cy"));
    let c = Client::connect(ClientBuilder::new(format!("{}?token={no_kid}", s.url()))).await;
    assert_eq!(c.welcome["user"], "cy");
    let metrics = s.hub.metrics_text();
    assert!(
        metrics.contains("duplex_jwks_fetches_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("duplex_jwks_keys 2"), "{metrics}");
}

#[tokio::test]
async fn made_up_kids_do_not_multiply_fetches() {
    let (p, addr) = provider(Answer::Keys(vec![jwk("k1")])).await;
    let s = jwks_server(addr, Duration::from_secs(30)).await;
    // The first token waits for the key set (or the prefetch has it already).
    let ok = signed(Some("k1"), "k1", claims("ada"));
    let c = Client::connect(ClientBuilder::new(format!("{}?token={ok}", s.url()))).await;
    assert_eq!(c.welcome["user"], "ada");
    let fetched = p.fetches.load(Ordering::SeqCst);
    assert!((1..=2).contains(&fetched), "{fetched}");
    for i in 0..20 {
        let token = signed(Some(&format!("made-up-{i}")), "k1", claims("eve"));
        assert_eq!(status(&s, &token).await.0, 401);
    }
    // At most one refetch within jwks_min_refresh, whatever the tokens said.
    assert!(p.fetches.load(Ordering::SeqCst) <= fetched + 1);
}

#[tokio::test]
async fn a_provider_that_is_down_or_hangs_gets_503_within_the_timeout() {
    // Nothing listens on a port that was just freed.
    let gone = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (_hanging, hang_addr) = provider(Answer::Hang).await;
    for addr in [gone, hang_addr] {
        let s = jwks_server(addr, Duration::from_millis(100)).await;
        let token = signed(Some("k1"), "k1", claims("ada"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let started = Instant::now();
        let (code, head) = status(&s, &token).await;
        assert_eq!(code, 503, "{head}");
        assert!(head.contains("signing keys are unavailable"), "{head}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // Anonymous clients are served meanwhile.
        let mut other = s.client().await;
        assert_eq!(
            other.call(json!({"type":"ping","id":1})).await["type"],
            "pong"
        );
        let metrics = s.hub.metrics_text();
        assert!(
            metrics.contains("duplex_jwks_fetches_total{result=\"unreachable\"}"),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn hostile_documents_are_refused_and_the_last_good_keys_kept() {
    let (p, addr) = provider(Answer::Keys(vec![jwk("k1")])).await;
    let s = jwks_server(addr, Duration::from_millis(100)).await;
    let ok = signed(Some("k1"), "k1", claims("ada"));
    Client::connect(ClientBuilder::new(format!("{}?token={ok}", s.url()))).await;
    let secret = json!({"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ","kid":"k3"});
    let hostile = [
        (
            "x".repeat(duplex_hub::auth::MAX_JWKS_BYTES + 1),
            "too_large",
        ),
        ("not json".to_owned(), "invalid"),
        (json!({ "keys": [secret] }).to_string(), "invalid"),
    ];
    for (body, label) in hostile {
        *p.answer.lock() = Answer::Body(body);
        tokio::time::sleep(Duration::from_millis(150)).await;
        // An unknown kid makes the hub refetch; the document is refused.
        let unknown = signed(Some("k3"), "k1", claims("eve"));
        assert_eq!(status(&s, &unknown).await.0, 401);
        let metrics = s.hub.metrics_text();
        assert!(
            metrics.contains(&format!("duplex_jwks_fetches_total{{result=\"{label}\"}}")),
            "{label}: {metrics}"
        );
        // k1 still verifies: a bad fetch keeps the last good keys.
        let c = Client::connect(ClientBuilder::new(format!("{}?token={ok}", s.url()))).await;
        assert_eq!(c.welcome["user"], "ada");
    }
}

const SECRET: &str = "test-secret-0123456789";

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn private_server() -> TestServer {
    let mut c = config();
    c.auth.jwt_secret = Some(SECRET.into());
    c.auth.missing_channels = MissingChannels::None;
    let mut ns = NamespaceOverrides::default();
    ns.subscription_token = Some(true);
    c.namespaces.insert("private".into(), ns);
    start_with(c).await
}

fn sub_token(user: &str, channel: &str, exp: u64) -> String {
    hs256(json!({"sub": user, "channel": channel, "exp": exp, "info": {"role": "member"}}))
}

async fn subscribe_with(c: &mut Client, channel: &str, token: Option<&str>) -> Value {
    c.call(json!({"type":"subscribe","id":7,"channel":channel,"token":token}))
        .await
}

#[tokio::test]
async fn subscription_tokens_grant_one_channel_to_one_user() {
    let s = private_server().await;
    // A connection token with no `channels` claim: no channel at all, by its claims.
    let conn = hs256(claims("ada"));
    let mut ada = Client::connect(ClientBuilder::new(format!("{}?token={conn}", s.url()))).await;
    let mut other = s.client().await;
    let room = "private:room";
    let refused = [
        (None, "needs a subscription token"),
        (
            Some(sub_token("ada", "private:other", now() + 60)),
            "names another channel",
        ),
        (
            Some(sub_token("bob", room, now() + 60)),
            "not the connection's user",
        ),
        (Some(sub_token("ada", room, now() - 10)), "expired"),
        (Some(conn.clone()), "not a subscription token"),
        (Some("garbage".to_owned()), "malformed"),
    ];
    for (token, why) in refused {
        let reply = subscribe_with(&mut ada, room, token.as_deref()).await;
        assert_eq!(reply["type"], "error", "{why}: {reply}");
        assert_eq!(reply["code"], "forbidden", "{why}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(why),
            "{why}: {reply}"
        );
        // Another client is served all along.
        assert_eq!(
            other.call(json!({"type":"ping","id":1})).await["type"],
            "pong"
        );
    }
    // Without the namespace option, the claims rule as before: this token grants nothing.
    let reply = subscribe_with(
        &mut ada,
        "lobby",
        Some(&sub_token("ada", "lobby", now() + 60)),
    )
    .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");

    let reply = subscribe_with(&mut ada, room, Some(&sub_token("ada", room, now() + 60))).await;
    assert_eq!(reply["type"], "reply", "{reply}");
    // The channel is now readable and writable for this connection.
    let presence = ada
        .call(json!({"type":"presence","id":8,"channel":room}))
        .await;
    assert_eq!(
        presence["clients"][0]["info"]["role"], "member",
        "{presence}"
    );
    let published = ada
        .call(json!({"type":"publish","id":9,"channel":room,"data":{"t":"hi"}}))
        .await;
    assert_eq!(published["type"], "reply", "{published}");
    assert_eq!(published["offset"], 1, "{published}");
    assert!(s
        .hub
        .metrics_text()
        .contains("duplex_subscription_tokens_refused_total 6"));
}

#[tokio::test]
async fn a_subscription_token_does_not_open_a_connection_and_an_oversized_one_is_refused() {
    let s = private_server().await;
    let sub = sub_token("ada", "private:room", now() + 60);
    let (code, head) = status(&s, &sub).await;
    assert_eq!(code, 401, "{head}");
    let mut c = s.client().await;
    let huge = "x".repeat(duplex_hub::protocol::MAX_TOKEN_SIZE + 1);
    let reply = subscribe_with(&mut c, "private:room", Some(&huge)).await;
    assert_eq!(reply["code"], "too_large", "{reply}");
    assert_eq!(c.call(json!({"type":"ping","id":2})).await["type"], "pong");
    // Anonymous connections present `"sub": ""`.
    let reply = subscribe_with(
        &mut c,
        "private:room",
        Some(&sub_token("", "private:room", now() + 60)),
    )
    .await;
    assert_eq!(reply["type"], "reply", "{reply}");
}

async fn secured() -> TestServer {
    let mut c = config();
    c.auth.anonymous = true;
    c.auth.jwt_secret = Some(SECRET.into());
    c.auth.missing_channels = MissingChannels::All;
    start_with(c).await
}

#[tokio::test]
async fn refresh_extends_a_connection_past_its_first_token() {
    let s = secured().await;
    let first = hs256(json!({"sub":"ada","exp":now()+2}));
    let mut c = Client::connect(ClientBuilder::new(format!("{}?token={first}", s.url()))).await;
    let left = c.welcome["expires_in"].as_u64().unwrap();
    assert!((1..=2).contains(&left), "{}", c.welcome);
    c.subscribe("lobby").await;
    let second = hs256(json!({"sub":"ada","exp":now()+600,"info":{"v":2}}));
    let reply = c
        .call(json!({"type":"refresh","id":3,"token":second}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert!(reply["expires_in"].as_u64().unwrap() > 590, "{reply}");
    // Past the first token's exp the connection is still open and subscribed.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(c.call(json!({"type":"ping","id":4})).await["type"], "pong");
    s.hub
        .publish("lobby", serde_json::value::to_raw_value(&json!(1)).unwrap())
        .await
        .unwrap();
    assert_eq!(c.recv_message().await["data"], 1);

    // A refresh to a token that expires soon moves the deadline closer: 1008 then.
    let soon = hs256(json!({"sub":"ada","exp":now()+1}));
    assert_eq!(
        c.call(json!({"type":"refresh","id":5,"token":soon})).await["type"],
        "reply"
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), c.closed()).await;
    assert_eq!(closed.unwrap(), Some(duplex::CloseCode::POLICY));
}

#[tokio::test]
async fn refresh_refuses_another_user_a_bad_token_and_anonymous_connections() {
    let s = secured().await;
    let token = hs256(json!({"sub":"ada","exp":now()+600}));
    let mut c = Client::connect(ClientBuilder::new(format!("{}?token={token}", s.url()))).await;
    let mut other = s.client().await;
    let refused = [
        (
            json!(hs256(json!({"sub":"bob","exp":now()+600}))),
            "forbidden",
            "another user",
        ),
        (
            json!(hs256(json!({"sub":"ada","exp":now()-5}))),
            "forbidden",
            "expired",
        ),
        (json!("garbage"), "forbidden", "malformed"),
        (
            json!(sub_token("ada", "lobby", now() + 60)),
            "forbidden",
            "subscription token",
        ),
        (json!(null), "bad_request", "missing field"),
        (
            json!("x".repeat(duplex_hub::protocol::MAX_TOKEN_SIZE + 1)),
            "too_large",
            "token",
        ),
    ];
    for (t, code, why) in refused {
        let reply = c.call(json!({"type":"refresh","id":1,"token":t})).await;
        assert_eq!(reply["code"], code, "{why}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(why),
            "{why}: {reply}"
        );
        assert_eq!(
            other.call(json!({"type":"ping","id":2})).await["type"],
            "pong"
        );
    }
    // The connection keeps its user.
    assert_eq!(c.call(json!({"type":"ping","id":3})).await["type"], "pong");
    let reply = other
        .call(json!({"type":"refresh","id":4,"token":token}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("anonymous"),
        "{reply}"
    );
}

/// An upgrade whose checks outlast `limits.request_timeout` (here: a key provider that
/// accepts the connection and never answers) gets 408 like any request, whether the server
/// read the upgrade itself or the router did, and others are served meanwhile.
#[tokio::test]
async fn an_upgrade_waiting_on_a_silent_key_provider_gets_408_at_the_request_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let provider = silent.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut c = config();
    c.auth.jwks_url = Some(format!("http://{provider}/jwks"));
    c.auth.jwks_timeout = Duration::from_secs(30);
    c.limits.request_timeout = Duration::from_millis(500);
    let s = start_with(c).await;
    let started = Instant::now();
    let (code, head) = status(&s, &signed(Some("k1"), "k1", claims("ada"))).await;
    assert_eq!(code, 408, "{head}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(metric(&s, "duplex_limit_hits_total{limit=\"request_timeout\"}").await >= 1.0);
    assert_served(&s, "127.0.0.2").await;
}
