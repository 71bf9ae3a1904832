//! Hostile inputs: see mod.rs.
//!
//! Tokens: time claims at and beyond the limits of `u64` and `Instant`, audience and issuer
//! mismatches, tokens without a `channels` claim, and what a refusal tells the client.

use std::time::Duration;

use duplex::ClientBuilder;
use duplex_hub::config::{AuthConfig, MissingChannels};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const SECRET: &str = "hostile-secret-0123456789";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn signed(alg: Algorithm, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn hs256(claims: Value) -> String {
    signed(Algorithm::HS256, &claims)
}

/// base64url without padding (RFC 7515 §2), for tokens the library would not build.
fn b64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// A server that verifies HS256 tokens and still admits anonymous clients (so that
/// `assert_served` can connect), with `auth` adjusted by the test.
async fn server(adjust: impl FnOnce(&mut AuthConfig)) -> TestServer {
    let mut c = config();
    c.auth.jwt_secret = Some(SECRET.into());
    adjust(&mut c.auth);
    start_with(c).await
}

async fn connect(s: &TestServer, token: &str) -> Client {
    Client::connect(ClientBuilder::new(format!("{}?token={token}", s.url()))).await
}

/// An upgrade request with `token` in the query; returns the status, the head and the body
/// (read up to `Content-Length`: a refused upgrade leaves the connection open).
async fn refusal(s: &TestServer, token: Option<&str>) -> (u16, String, String) {
    let path = token.map_or("/ws".to_owned(), |t| format!("/ws?token={t}"));
    let mut tcp = tcp_from("127.0.0.1", s.addr).await;
    tcp.write_all(upgrade_request(s.addr, &path, "").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if body.len() >= length || head.starts_with("HTTP/1.1 101") {
                let status = head.split(' ').nth(1).and_then(|c| c.parse().ok());
                return (status.unwrap_or(0), head.to_owned(), body.to_owned());
            }
        }
        let n = tokio::time::timeout_at(until, tcp.read(&mut chunk))
            .await
            .expect("response timed out")
            .unwrap();
        assert!(n > 0, "connection closed mid-response: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Asserts a 401 whose body is exactly `words` (one line) and whose head carries the
/// RFC 6750 challenge.
async fn assert_refused(s: &TestServer, token: &str, words: &str) {
    let (status, head, body) = refusal(s, Some(token)).await;
    assert_eq!(status, 401, "{words}: {head}");
    assert_eq!(body, format!("{words}\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer error=\"invalid_token\""),
        "{head}"
    );
}

/// Polls the `duplex_connections` gauge until it is `value`.
async fn gauge_reaches(s: &TestServer, value: f64) {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let open = metric(s, "duplex_connections").await;
        if open == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "duplex_connections is {open}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn extreme_time_claims_are_served_or_refused_without_panic() {
    let s = server(|_| {}).await;
    let t = now();
    // Valid NumericDates (RFC 7519 §2: possibly fractional) that are far away: served, and
    // the connection does not expire while the test runs.
    let far = [
        json!({"exp": u64::MAX}),
        json!({"exp": i64::MAX}),
        json!({"exp": 1.0e19}),
        json!({"exp": t + 200 * 365 * 24 * 3600}),
        json!({"exp": t as f64 + 600.5}),
        json!({"exp": t + 600, "nbf": t as f64 - 10.5, "iat": u64::MAX}),
        json!({"exp": u64::MAX, "nbf": 0, "iat": -1}),
    ];
    let mut open = Vec::new();
    for (i, times) in far.iter().enumerate() {
        let mut claims = json!({"sub": format!("u{i}"), "channels": ["*"]});
        for (k, v) in times.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let mut c = connect(&s, &hs256(claims)).await;
        assert_eq!(c.welcome["user"], format!("u{i}"), "{times}");
        assert_eq!(c.call(json!({"type":"ping"})).await["type"], "pong");
        open.push(c);
    }
    // Out of range or not yet valid: refused with the claim's name, nothing else happens.
    let refused = [
        (json!({"exp": t + 600, "nbf": u64::MAX}), "invalid token: not yet valid"),
        (json!({"exp": t + 600, "nbf": 1.0e19}), "invalid token: not yet valid"),
        (json!({"exp": -1}), "invalid token: missing claim \"exp\""),
        (json!({"exp": -1.5}), "invalid token: missing claim \"exp\""),
        (json!({"exp": 1.0e30}), "invalid token: missing claim \"exp\""),
        (json!({"exp": "tomorrow"}), "invalid token: missing claim \"exp\""),
        (json!({"exp": t + 600, "nbf": -1}), "invalid token: claim \"nbf\" is not a NumericDate (seconds since the epoch, at least 0)"),
        (json!({"exp": null}), "invalid token: missing claim \"exp\""),
        (json!({"exp": 0}), "invalid token: expired"),
    ];
    for (times, words) in &refused {
        let mut claims = json!({"sub": "ada"});
        for (k, v) in times.as_object().unwrap() {
            claims[k] = v.clone();
        }
        assert_refused(&s, &hs256(claims), words).await;
    }
    assert_served(&s, "127.0.0.2").await;
    gauge_reaches(&s, open.len() as f64).await;
    assert_eq!(
        metric(
            &s,
            "duplex_handshake_failures_total{reason=\"unauthorized\"}"
        )
        .await,
        refused.len() as f64
    );
    // Every connection still works, and none was torn down by a bogus deadline.
    for c in &mut open {
        assert_eq!(c.call(json!({"type":"ping"})).await["type"], "pong");
    }
    drop(open);
    gauge_reaches(&s, 0.0).await;
    eventually(|| s.hub.connections() == 0).await;
}

#[tokio::test]
async fn audience_and_issuer_are_enforced_when_set() {
    let s = server(|a| {
        a.audiences = vec!["duplex".into(), "duplex-staging".into()];
        a.issuer = Some("https://id.example".into());
    })
    .await;
    let t = now() + 600;
    let iss = "https://id.example";
    for aud in [json!("duplex"), json!(["other", "duplex-staging"])] {
        let c = connect(&s, &hs256(json!({"sub":"ada","exp":t,"aud":aud,"iss":iss}))).await;
        assert_eq!(c.welcome["user"], "ada", "{aud}");
    }
    let cases = [
        (
            json!({"aud":"other","iss":iss}),
            "invalid token: wrong audience",
        ),
        (
            json!({"aud":["a","b"],"iss":iss}),
            "invalid token: wrong audience",
        ),
        (json!({"aud":[],"iss":iss}), "invalid token: wrong audience"),
        (json!({"iss":iss}), "invalid token: missing claim \"aud\""),
        (
            json!({"aud":"duplex","iss":"https://evil.example"}),
            "invalid token: wrong issuer",
        ),
        (
            json!({"aud":"duplex","iss":["https://id.example"]}),
            "invalid token: claim \"iss\" must be a string",
        ),
        (
            json!({"aud":"duplex"}),
            "invalid token: missing claim \"iss\"",
        ),
    ];
    for (claims, words) in cases {
        let mut claims = claims;
        claims["sub"] = json!("ada");
        claims["exp"] = json!(t);
        assert_refused(&s, &hs256(claims), words).await;
        assert_served(&s, "127.0.0.2").await;
    }

    // Without `auth.audiences`, a token addressed to some audience is not for this hub
    // (RFC 7519 §4.1.3); one without `aud` is accepted, and `iss` is not checked.
    let s = server(|_| {}).await;
    let words = "invalid token: wrong audience";
    assert_refused(&s, &hs256(json!({"sub":"ada","exp":t,"aud":"crm"})), words).await;
    let c = connect(&s, &hs256(json!({"sub":"ada","exp":t,"iss":"anyone"}))).await;
    assert_eq!(c.welcome["user"], "ada");
    assert_served(&s, "127.0.0.2").await;
}

/// Subscribe, history and publish on `lobby`: each answer's `type`, or its error `code`.
async fn lobby_answers(c: &mut Client) -> Vec<String> {
    let mut answers = Vec::new();
    for command in [
        json!({"type":"subscribe","channel":"lobby"}),
        json!({"type":"history","channel":"lobby"}),
        json!({"type":"publish","channel":"lobby","data":1}),
    ] {
        let v = c.call(command).await;
        let word = if v["type"] == "error" {
            &v["code"]
        } else {
            &v["type"]
        };
        answers.push(word.as_str().unwrap_or("?").to_owned());
    }
    answers
}

#[tokio::test]
async fn a_token_without_channels_gets_no_channel_unless_configured() {
    let t = now() + 600;
    let forbidden = ["forbidden", "forbidden", "forbidden"];
    let allowed = ["reply", "reply", "reply"];

    // Default (`auto`) without audiences: none.
    let s = server(|a| assert_eq!(a.missing_channels, MissingChannels::Auto)).await;
    let mut c = connect(&s, &hs256(json!({"sub":"ada","exp":t}))).await;
    assert_eq!(lobby_answers(&mut c).await, forbidden);
    let mut c = connect(&s, &hs256(json!({"sub":"ada","exp":t,"channels":null}))).await;
    assert_eq!(lobby_answers(&mut c).await, forbidden, "null is absent");
    // An explicit claim still grants; anonymous clients are not tokens.
    let mut c = connect(
        &s,
        &hs256(json!({"sub":"ada","exp":t,"channels":["lobby"]})),
    )
    .await;
    assert_eq!(lobby_answers(&mut c).await, allowed);
    assert_served(&s, "127.0.0.2").await;

    // `auto` with audiences: the token was issued for this hub, all.
    let s = server(|a| a.audiences = vec!["duplex".into()]).await;
    let mut c = connect(&s, &hs256(json!({"sub":"ada","exp":t,"aud":"duplex"}))).await;
    assert_eq!(lobby_answers(&mut c).await, allowed);

    // Explicit `none` wins over audiences; explicit `all` is the old behaviour.
    let s = server(|a| {
        a.audiences = vec!["duplex".into()];
        a.missing_channels = MissingChannels::None;
    })
    .await;
    let mut c = connect(&s, &hs256(json!({"sub":"ada","exp":t,"aud":"duplex"}))).await;
    assert_eq!(lobby_answers(&mut c).await, forbidden);
    // `publish` alone grants publishing only.
    let token = hs256(json!({"sub":"ada","exp":t,"aud":"duplex","publish":["lobby"]}));
    let mut c = connect(&s, &token).await;
    assert_eq!(
        lobby_answers(&mut c).await,
        ["forbidden", "forbidden", "reply"]
    );
    assert_served(&s, "127.0.0.2").await;

    let s = server(|a| a.missing_channels = MissingChannels::All).await;
    let mut c = connect(&s, &hs256(json!({"sub":"ada","exp":t}))).await;
    assert_eq!(lobby_answers(&mut c).await, allowed);
}

#[tokio::test]
async fn refusals_name_the_problem_not_the_library() {
    let s = server(|_| {}).await;
    let t = now() + 600;
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"ada","exp":t}),
        &EncodingKey::from_secret(b"not-the-secret-at-all"),
    )
    .unwrap();
    let good = hs256(json!({"sub":"ada","exp":t}));
    let (head_and_claims, signature) = good.rsplit_once('.').unwrap();
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(format!(r#"{{"sub":"ada","exp":{t}}}"#).as_bytes())
    );
    // Another first character of the signature: still base64url, no longer the signature.
    let other = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{head_and_claims}.{other}{}", &signature[1..]);
    let big_info = json!({"sub":"ada","exp":t,"info":{"bio":"x".repeat(2000)}});
    let cases = [
        ("garbage".to_owned(), "invalid token: malformed"),
        ("a.b.c".to_owned(), "invalid token: malformed"),
        (tampered, "invalid token: bad signature"),
        (forged, "invalid token: bad signature"),
        (unsigned, "invalid token: malformed"),
        (
            signed(Algorithm::HS256, &json!([1, 2, 3])),
            "invalid token: malformed",
        ),
        (
            signed(Algorithm::HS384, &json!({"sub":"ada","exp":t})),
            "invalid token: wrong algorithm",
        ),
        (
            hs256(json!({"sub":"ada","exp":now() - 10})),
            "invalid token: expired",
        ),
        (
            hs256(json!({"sub":"ada","exp":t,"nbf":t})),
            "invalid token: not yet valid",
        ),
        (
            hs256(json!({"exp":t})),
            "invalid token: missing claim \"sub\"",
        ),
        (
            hs256(json!({"sub":42,"exp":t})),
            "invalid token: missing claim \"sub\"",
        ),
        (
            hs256(json!({"sub":"","exp":t})),
            "invalid token: claim \"sub\" must be a non-empty string",
        ),
        (
            hs256(json!({"sub":"ada","exp":t,"channels":"lobby"})),
            "invalid token: claim \"channels\" must be an array of strings",
        ),
        (
            hs256(json!({"sub":"ada","exp":t,"publish":[1]})),
            "invalid token: claim \"publish\" must be an array of strings",
        ),
        (
            hs256(json!({"sub":"ada","exp":t,"info":"me"})),
            "invalid token: claim \"info\" must be an object",
        ),
        (
            hs256(big_info),
            "invalid token: claim \"info\" is above 1024 bytes",
        ),
    ];
    // What the JWT and JSON libraries say, which the client must not see.
    let library = [
        "Error",
        "Json",
        "Base64",
        "base64",
        "Invalid",
        "Signature",
        "expected",
        "line",
        "kind",
    ];
    for (token, words) in &cases {
        let (status, head, body) = refusal(&s, Some(token)).await;
        assert_eq!(
            (status, body.as_str()),
            (401, format!("{words}\n").as_str()),
            "{head}"
        );
        for text in library {
            assert!(!body.contains(text), "{text:?} in {body:?}");
        }
    }
    assert_served(&s, "127.0.0.2").await;

    // No token while anonymous access is off: the challenge names no error (RFC 6750 §3.1).
    let mut c = config();
    c.auth.anonymous = false;
    c.auth.jwt_secret = Some(SECRET.into());
    let closed = start_with(c).await;
    let (status, head, body) = refusal(&closed, None).await;
    assert_eq!((status, body.as_str()), (401, "a token is required\n"));
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("www-authenticate: bearer")),
        "{head}"
    );

    // A token where no key is configured.
    let keyless = start_with(config()).await;
    let (status, _, body) = refusal(&keyless, Some(&good)).await;
    assert_eq!(
        (status, body.as_str()),
        (401, "tokens are not accepted: no key is configured\n")
    );
    assert_served(&keyless, "127.0.0.2").await;
}
