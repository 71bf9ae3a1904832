//! Verification keys fetched from a JWKS URL (RFC 7517), cached and refetched.
//!
//! An identity provider publishes its public keys at a URL and rotates them by publishing
//! the new key beside the old one before signing with it, then dropping the old one. The
//! cache follows that: it is refetched every `auth.jwks_refresh` (in the background, the
//! cached keys serve meanwhile), and at once when a token names a `kid` the cache does not
//! hold, at most once per `auth.jwks_min_refresh` so a stream of tokens with made-up `kid`s
//! cannot turn the hub into a load generator against the provider. A failed fetch keeps the
//! keys of the last good one.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::ConfigError;
use crate::metrics::Metrics;

/// Largest JWKS document read, in bytes. A provider's set holds a handful of keys of about
/// 1.5 KiB each (RSA 2048 with an X.509 chain is the large case).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Most keys kept from one document; a token without a `kid` is tried against each key
/// of its algorithm, so this also bounds the work one such token costs.
pub const MAX_JWKS_KEYS: usize = 32;

/// One verification key of the set.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    /// The algorithms this key verifies: its `alg` if the set names one, else every
    /// asymmetric algorithm of its type.
    pub(crate) algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct State {
    keys: Arc<[Key]>,
    /// The last successful fetch.
    fetched: Option<Instant>,
    /// The last attempt, successful or not.
    attempted: Option<Instant>,
}

/// Why a fetch failed (logged, and counted in `duplex_jwks_fetches_total{result}`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("the document is above {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS document: {0}")]
    Json(serde_json::Error),
    #[error("no usable key in the document")]
    NoKey,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl FetchError {
    fn label(&self) -> &'static str {
        match self {
            Self::Connect(_) | Self::Tls(_) | Self::Http(_) | Self::Timeout(_) => "unreachable",
            Self::Status(_) => "status",
            Self::TooLarge => "too_large",
            Self::Json(_) | Self::NoKey => "invalid",
        }
    }
}

/// The fetched key set of one `auth.jwks_url`.
pub(crate) struct Jwks {
    url: Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
    refresh: Duration,
    min_refresh: Duration,
    state: RwLock<State>,
    /// One fetch at a time; the others wait for its result.
    fetching: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("url", &self.url)
            .field("keys", &self.state.read().keys.len())
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// Checks the URL; nothing is fetched until the first token (or [`Jwks::prefetch`]).
    pub(crate) fn new(
        url: &str,
        timeout: Duration,
        refresh: Duration,
        min_refresh: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let invalid = |why: &str| ConfigError::Invalid(format!("auth.jwks_url {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| invalid("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("the scheme must be https (or http)")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = https.then(|| {
            let roots = duplex::tls::rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let config = duplex::tls::rustls::ClientConfig::builder_with_provider(Arc::new(
                duplex::tls::rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
            config.map(|c| tokio_rustls::TlsConnector::from(Arc::new(c)))
        });
        let tls = tls
            .transpose()
            .map_err(|e| invalid(&format!("TLS setup: {e}")))?;
        Ok(Self {
            url: uri,
            host,
            port,
            tls,
            timeout,
            refresh,
            min_refresh,
            state: RwLock::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// Fetches the set now (when the server starts, so the first client does not wait).
    pub(crate) async fn prefetch(&self) {
        self.fetch_once(Instant::now()).await;
    }

    /// The keys that may have signed a token with this `kid`: from the cache, or from a
    /// fetch when the cache is empty or does not know the `kid`. Empty when there is no
    /// such key; `None` when no key set could ever be fetched.
    pub(crate) async fn keys(self: &Arc<Self>, kid: Option<&str>) -> Option<Arc<[Key]>> {
        let (keys, fetched, attempted) = {
            let s = self.state.read();
            (s.keys.clone(), s.fetched, s.attempted)
        };
        let now = Instant::now();
        let known = match kid {
            Some(kid) => keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
            None => !keys.is_empty(),
        };
        let may_fetch = attempted.is_none_or(|at| now.duration_since(at) >= self.min_refresh);
        if fetched.is_some() && known {
            if fetched.is_some_and(|at| now.duration_since(at) >= self.refresh) && may_fetch {
                // Stale but usable: refresh behind the client's back.
                let this = self.clone();
                tokio::spawn(async move { this.fetch_once(now).await });
            }
            return Some(keys);
        }
        if may_fetch {
            self.fetch_once(now).await;
        }
        let s = self.state.read();
        s.fetched.map(|_| s.keys.clone())
    }

    /// Fetches unless another fetch began at or after `asked` (its result is as fresh).
    async fn fetch_once(&self, asked: Instant) {
        let _turn = self.fetching.lock().await;
        if self.state.read().attempted.is_some_and(|at| at >= asked) {
            return;
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.fetch())
            .await
            .unwrap_or(Err(FetchError::Timeout(self.timeout)));
        let mut s = self.state.write();
        s.attempted = Some(started);
        match result {
            Ok(keys) => {
                tracing::debug!(url = %self.url, keys = keys.len(), "JWKS fetched");
                self.metrics.jwks_fetch("ok");
                self.metrics
                    .jwks_keys
                    .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
                s.keys = keys.into();
                s.fetched = Some(started);
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, kept = s.keys.len(), "JWKS fetch failed; keeping the keys of the last good fetch");
                self.metrics.jwks_fetch(e.label());
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, FetchError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(FetchError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let body = match &self.tls {
            Some(tls) => {
                let name = duplex::tls::rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| {
                        FetchError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                    })?;
                let stream = tls.connect(name, tcp).await.map_err(FetchError::Tls)?;
                self.get(TokioIo::new(stream)).await?
            }
            None => self.get(TokioIo::new(tcp)).await?,
        };
        parse(&body)
    }

    async fn get<I>(&self, io: I) -> Result<Bytes, FetchError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let http = |e: hyper::Error| FetchError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http)?;
        // The connection ends with this fetch (and the task with it, or with the timeout
        // that drops the caller's future and so the sender).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = self
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let authority = self.url.authority().map_or("", |a| a.as_str()).to_owned();
        let request = Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(http)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge
                } else {
                    FetchError::Http(e.to_string())
                }
            })
    }
}

#[derive(Deserialize)]
struct Document<'a> {
    #[serde(borrow)]
    keys: Vec<&'a RawValue>,
}

/// The usable keys of a JWKS document: public keys of a known type, at most
/// [`MAX_JWKS_KEYS`]. Symmetric (`oct`) keys are skipped: a secret has no place in a
/// published key set, and accepting one would let anyone who can read the URL sign tokens.
/// A key the library cannot read is skipped rather than failing the whole set, so one
/// new key type at the provider does not lock every client out.
pub(crate) fn parse(body: &[u8]) -> Result<Vec<Key>, FetchError> {
    let doc: Document<'_> = serde_json::from_slice(body).map_err(FetchError::Json)?;
    let mut keys = Vec::new();
    for raw in doc.keys {
        if keys.len() == MAX_JWKS_KEYS {
            tracing::warn!("JWKS: more than {MAX_JWKS_KEYS} keys; the rest are ignored");
            break;
        }
        let Ok(jwk) = serde_json::from_str::<Jwk>(raw.get()) else {
            tracing::debug!("JWKS: skipped a key that does not parse");
            continue;
        };
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
        {
            continue;
        }
        let family = family_algorithms(&jwk.algorithm);
        if family.is_empty() {
            continue;
        }
        let algorithms = match jwk.common.key_algorithm {
            None => family,
            Some(alg) => match Algorithm::from_str(&alg.to_string()) {
                Ok(alg) if family.contains(&alg) => vec![alg],
                // An `alg` that does not fit the key (or is not a signature algorithm).
                _ => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id,
            key,
            algorithms,
        });
    }
    if keys.is_empty() {
        return Err(FetchError::NoKey);
    }
    Ok(keys)
}

/// The signature algorithms a public key of this type verifies.
fn family_algorithms(params: &AlgorithmParameters) -> Vec<Algorithm> {
    use Algorithm as A;
    match params {
        AlgorithmParameters::RSA(_) => {
            vec![A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512]
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![A::ES256],
            EllipticCurve::P384 => vec![A::ES384],
            _ => Vec::new(),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![A::EdDSA]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA: &str = include_str!("../../tests/data/jwks.json");

    #[test]
    fn parses_the_test_set() {
        let keys = parse(RSA.as_bytes()).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].kid.as_deref(), Some("k1"));
        assert_eq!(keys[0].algorithms, vec![Algorithm::RS256]);
    }

    #[test]
    fn skips_secrets_unknown_types_and_mismatched_algorithms() {
        let doc = r#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"s"},
            {"kty":"XYZ","kid":"x"},
            {"kty":"RSA","alg":"ES256","n":"sXch","e":"AQAB","kid":"m"},
            {"kty":"RSA","use":"enc","n":"sXch","e":"AQAB","kid":"e"}
        ]}"#;
        assert!(matches!(parse(doc.as_bytes()), Err(FetchError::NoKey)));
        assert!(matches!(parse(b"{}"), Err(FetchError::Json(_))));
        assert!(matches!(parse(b"[1,2]"), Err(FetchError::Json(_))));
    }

    #[test]
    fn keeps_at_most_the_cap() {
        let one = r#"{"kty":"RSA","n":"sXch","e":"AQAB"}"#;
        let doc = format!(r#"{{"keys":[{}]}}"#, vec![one; MAX_JWKS_KEYS + 5].join(","));
        assert_eq!(parse(doc.as_bytes()).unwrap().len(), MAX_JWKS_KEYS);
    }

    #[test]
    fn refuses_urls_it_cannot_fetch() {
        let m = Arc::new(Metrics::new());
        let d = Duration::from_secs(1);
        for url in ["ftp://x/keys", "not a url", "https:///keys", "/keys"] {
            assert!(Jwks::new(url, d, d, d, m.clone()).is_err(), "{url}");
        }
        assert!(Jwks::new("https://idp.example/keys", d, d, d, m.clone()).is_ok());
        assert!(Jwks::new("http://127.0.0.1:9/k", d, d, d, m).is_ok());
    }
}
