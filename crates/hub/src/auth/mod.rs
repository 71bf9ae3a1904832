//! Who is connecting: JWT verification (a static key or a JWKS URL), subscription tokens,
//! and the Origin check of the upgrade request.

mod jwks;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::channel::matches_any;
use crate::config::{read_secret, AuthConfig, ConfigError, MissingChannels};
use crate::metrics::Metrics;

pub use jwks::{MAX_JWKS_BYTES, MAX_JWKS_KEYS};

/// Reads a JWKS document (RFC 7517) as the hub reads `auth.jwks_url`'s answer: the key ids
/// (`kid`, `None` for a key without one) of the keys it would verify tokens with, in order,
/// or why the document is refused. For diagnostics and the fuzz targets; the hub itself
/// keeps the parsed keys.
pub fn jwks_key_ids(document: &[u8]) -> Result<Vec<Option<String>>, String> {
    if document.len() > MAX_JWKS_BYTES {
        return Err(format!("the document is above {MAX_JWKS_BYTES} bytes"));
    }
    jwks::parse(document)
        .map(|keys| keys.into_iter().map(|k| k.kid).collect())
        .map_err(|e| e.to_string())
}

/// Largest serialized presence `info` (JWT claim or `subscribe` field), in bytes.
pub const MAX_INFO_SIZE: usize = 1024;

/// Longest `sub` accepted, in bytes. The user id goes into every publication, presence entry
/// and event of the connection, so a token-sized one would multiply in every fan-out.
pub const MAX_USER_SIZE: usize = 256;

/// The authenticated (or anonymous) identity of a connection.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Identity {
    /// The JWT `sub`; `None` when anonymous.
    pub user: Option<Arc<str>>,
    /// Channel patterns allowed for subscribe/presence/history (`None`: all).
    pub channels: Option<Vec<String>>,
    /// Channel patterns allowed for publish (`None`: as `channels`).
    pub publish: Option<Vec<String>>,
    /// Profile from the `info` claim.
    pub info: Option<Arc<RawValue>>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// May this identity subscribe to (and query) `channel`?
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.channels
            .as_ref()
            .is_none_or(|p| matches_any(p, channel))
    }

    /// May this identity publish to `channel`?
    pub fn may_publish(&self, channel: &str) -> bool {
        match (&self.publish, &self.channels) {
            (Some(p), _) | (None, Some(p)) => matches_any(p, channel),
            (None, None) => true,
        }
    }
}

/// Why a token was refused (the handshake answers 401). The `Display` form is the body of
/// the 401 response: it says what is wrong in the words of `docs/protocol.md`, never the
/// verifying library's own text (that goes to the debug log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token and anonymous access is off.
    #[error("a token is required")]
    Missing,
    /// A token was sent but no key is configured to check it.
    #[error("tokens are not accepted: no key is configured")]
    NoKey,
    /// Not three base64url parts of JSON, or a header that names no known algorithm.
    #[error("invalid token: malformed")]
    Malformed,
    /// The signature does not verify with the configured key.
    #[error("invalid token: bad signature")]
    BadSignature,
    /// The header's `alg` is not the configured key's algorithm.
    #[error("invalid token: wrong algorithm")]
    WrongAlgorithm,
    /// `exp` has passed.
    #[error("invalid token: expired")]
    Expired,
    /// `nbf` has not come yet.
    #[error("invalid token: not yet valid")]
    NotYetValid,
    /// `aud` names none of `auth.audiences` (or names one while none is configured).
    #[error("invalid token: wrong audience")]
    WrongAudience,
    /// `iss` is not `auth.issuer`.
    #[error("invalid token: wrong issuer")]
    WrongIssuer,
    /// A required claim (`sub`, `exp`, and `aud`/`iss` when configured) is absent.
    #[error("invalid token: missing claim \"{0}\"")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or value.
    #[error("invalid token: claim \"{0}\" {1}")]
    BadClaim(&'static str, &'static str),
    /// The token names a `kid` (or, without one, an algorithm) that no key of the JWKS has,
    /// even after refetching it.
    #[error("invalid token: unknown key")]
    UnknownKey,
    /// Keys come from `auth.jwks_url` and none could be fetched yet (the handshake answers
    /// 503: the client is not at fault).
    #[error("signing keys are unavailable")]
    KeysUnavailable,
    /// A subscription token where a connection token belongs, or the reverse.
    #[error("invalid token: {0}")]
    WrongKind(&'static str),
}

impl AuthError {
    /// The protocol's word for a refusal by the verifying library.
    fn from_library(e: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => Self::BadSignature,
            K::InvalidAlgorithm | K::MissingAlgorithm => Self::WrongAlgorithm,
            K::ExpiredSignature => Self::Expired,
            K::ImmatureSignature => Self::NotYetValid,
            K::InvalidAudience => Self::WrongAudience,
            K::InvalidIssuer => Self::WrongIssuer,
            K::MissingRequiredClaim(claim) => Self::MissingClaim(claim_name(claim)),
            K::InvalidClaimFormat(claim) => Self::BadClaim(claim_name(claim), NOT_NUMERIC_DATE),
            // Base64, JSON, UTF-8, an unknown `alg`, a key that cannot verify this token.
            _ => Self::Malformed,
        }
    }
}

const NOT_NUMERIC_DATE: &str = "is not a NumericDate (seconds since the epoch, at least 0)";

fn claim_name(claim: &str) -> &'static str {
    match claim {
        "exp" => "exp",
        "nbf" => "nbf",
        "sub" => "sub",
        "aud" => "aud",
        "iss" => "iss",
        _ => "?",
    }
}

/// RFC 7519 §2 NumericDate: seconds since the epoch, possibly fractional. Rounded down (an
/// expiry never moves later); the verifying library has already refused negative, non-finite
/// and out-of-range values, and this checks again rather than trust it.
fn numeric_date(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    // `as` saturates; the range check keeps the saturation out of reach anyway.
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.floor() as u64)
}

/// The `info` claim: absent or `null` is `None`, otherwise an object of at most
/// [`MAX_INFO_SIZE`] bytes.
fn info_claim(claims: &Map<String, Value>) -> Result<Option<Arc<RawValue>>, AuthError> {
    match claims.get("info") {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => {
            let text = v.to_string();
            if text.len() > MAX_INFO_SIZE {
                // MAX_INFO_SIZE, spelled out for a `&'static str`.
                return Err(AuthError::BadClaim("info", "is above 1024 bytes"));
            }
            Ok(RawValue::from_string(text).ok().map(Arc::from))
        }
        Some(_) => Err(AuthError::BadClaim("info", "must be an object")),
    }
}

/// A channel-pattern claim: absent or `null` is `None`, otherwise an array of strings.
fn patterns(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<Vec<String>>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or(AuthError::BadClaim(name, "must be an array of strings")),
        Some(_) => Err(AuthError::BadClaim(name, "must be an array of strings")),
    }
}

/// Where verification keys come from.
enum Keys {
    /// No key: only anonymous connections.
    None,
    /// One configured key (HS256 secret, RS256 or ES256 public key).
    Static(DecodingKey),
    /// The keys published at `auth.jwks_url`.
    Jwks(Arc<jwks::Jwks>),
}

/// Token verification and Origin policy, built once from [`AuthConfig`].
pub struct Authenticator {
    keys: Keys,
    /// The checks every token gets; `algorithms` is the static key's algorithm, or set per
    /// JWKS key.
    validation: Validation,
    anonymous: bool,
    /// A token without a `channels` claim may use every channel (else none).
    missing_channels_all: bool,
    /// `auth.issuer` is set.
    check_issuer: bool,
    allowed_origins: Vec<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            Keys::None => "none".to_owned(),
            Keys::Static(_) => format!("{:?}", self.validation.algorithms),
            Keys::Jwks(jwks) => format!("{jwks:?}"),
        };
        f.debug_struct("Authenticator")
            .field("keys", &keys)
            .field("audiences", &self.validation.aud)
            .field("issuer", &self.validation.iss)
            .field("anonymous", &self.anonymous)
            .field("missing_channels_all", &self.missing_channels_all)
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

impl Authenticator {
    /// Loads the configured key (reading the PEM or secret file, if any). With
    /// `auth.jwks_url`, nothing is fetched yet: see [`Authenticator::prefetch`].
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        Self::with_metrics(config, Arc::new(Metrics::new()))
    }

    pub(crate) fn with_metrics(
        config: &AuthConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let secret = match (&config.jwt_secret, &config.jwt_secret_file) {
            (Some(secret), _) => Some(secret.clone()),
            (None, Some(path)) => Some(read_secret(path)?),
            (None, None) => None,
        };
        let (keys, algorithm) = if let Some(secret) = secret {
            (
                Keys::Static(DecodingKey::from_secret(secret.as_bytes())),
                Algorithm::HS256,
            )
        } else if let Some(path) = &config.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let (key, alg) = DecodingKey::from_rsa_pem(&pem)
                .map(|k| (k, Algorithm::RS256))
                .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
                .map_err(|_| {
                    ConfigError::Invalid(format!(
                        "{}: not an RSA or EC public key in PEM",
                        path.display()
                    ))
                })?;
            (Keys::Static(key), alg)
        } else if let Some(url) = &config.jwks_url {
            let jwks = jwks::Jwks::new(
                url,
                config.jwks_timeout,
                config.jwks_refresh,
                config.jwks_min_refresh,
                metrics,
            )?;
            (Keys::Jwks(Arc::new(jwks)), Algorithm::RS256)
        } else {
            (Keys::None, Algorithm::HS256)
        };
        let mut v = Validation::new(algorithm);
        v.leeway = 0;
        v.validate_exp = true;
        v.validate_nbf = true;
        // RFC 7519 §4.1.3: with no audience configured, a token that names one is
        // refused; with audiences configured, `aud` must name one of them.
        v.validate_aud = true;
        let mut required = vec!["exp", "sub"];
        if !config.audiences.is_empty() {
            v.set_audience(&config.audiences);
            required.push("aud");
        }
        if let Some(issuer) = &config.issuer {
            v.set_issuer(&[issuer]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        let missing_channels_all = match config.missing_channels {
            MissingChannels::All => true,
            MissingChannels::None => false,
            // Only `aud` binds a token to this hub: an issuer also signs tokens for its
            // other applications.
            _ => !config.audiences.is_empty(),
        };
        Ok(Self {
            keys,
            validation: v,
            anonymous: config.anonymous,
            missing_channels_all,
            check_issuer: config.issuer.is_some(),
            allowed_origins: config.allowed_origins.clone(),
        })
    }

    /// With `auth.jwks_url`: fetches the key set now, so the first client does not wait for
    /// it. Does nothing with a static key.
    pub async fn prefetch(&self) {
        if let Keys::Jwks(jwks) = &self.keys {
            jwks.prefetch().await;
        }
    }

    /// Checks `token` (from `?token=` or `Authorization: Bearer`) and returns the identity.
    /// With `auth.jwks_url`, this may wait for a fetch of the key set (bounded by
    /// `auth.jwks_timeout`): when the cache is empty, or does not know the token's `kid`.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return if self.anonymous {
                Ok(Identity::default())
            } else {
                Err(AuthError::Missing)
            };
        };
        let claims = self.verify(token).await?;
        // A subscription token names its channel; it must not open a connection.
        if claims.contains_key("channel") {
            tracing::debug!("subscription token used to connect: refused");
            return Err(AuthError::WrongKind(
                "a subscription token cannot open a connection",
            ));
        }
        let identity = self.identity(&claims);
        if let Err(refused) = &identity {
            tracing::debug!(%refused, "token refused");
        }
        identity
    }

    /// Checks a subscription token for `channel` on a connection of `user` (`None` when
    /// anonymous, which the token states as `"sub": ""`): signed by the same keys as
    /// connection tokens, with the same `aud`/`iss` rules, `channel` equal to `channel` and
    /// `sub` equal to the connection's user. Returns the token's presence `info`, if any.
    pub async fn verify_subscription(
        &self,
        token: &str,
        user: Option<&str>,
        channel: &str,
    ) -> Result<Option<Arc<RawValue>>, AuthError> {
        let claims = self.verify(token).await?;
        match claims.get("channel") {
            Some(Value::String(c)) if c == channel => {}
            Some(Value::String(_)) => {
                return Err(AuthError::BadClaim("channel", "names another channel"))
            }
            Some(_) => return Err(AuthError::BadClaim("channel", "must be a string")),
            None => {
                return Err(AuthError::WrongKind(
                    "not a subscription token (no \"channel\" claim)",
                ))
            }
        }
        match claims.get("sub") {
            Some(Value::String(s)) if s == user.unwrap_or("") => {}
            Some(Value::String(_)) => {
                return Err(AuthError::BadClaim("sub", "is not the connection's user"))
            }
            _ => return Err(AuthError::BadClaim("sub", "must be a string")),
        }
        info_claim(&claims)
    }

    /// Verifies the signature and the registered claims of `token`.
    async fn verify(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        let refused = |e: jsonwebtoken::errors::Error| {
            let refused = AuthError::from_library(&e);
            tracing::debug!(error = %e, %refused, "token refused");
            refused
        };
        match &self.keys {
            Keys::None => Err(AuthError::NoKey),
            Keys::Static(key) => jsonwebtoken::decode(token, key, &self.validation)
                .map(|t| t.claims)
                .map_err(refused),
            Keys::Jwks(jwks) => {
                let header = jsonwebtoken::decode_header(token).map_err(refused)?;
                let keys = jwks
                    .keys(header.kid.as_deref())
                    .await
                    .ok_or(AuthError::KeysUnavailable)?;
                let mut candidates = keys
                    .iter()
                    .filter(|k| header.kid.is_none() || k.kid == header.kid)
                    .peekable();
                if candidates.peek().is_none() {
                    return Err(AuthError::UnknownKey);
                }
                let mut last = AuthError::WrongAlgorithm;
                for key in candidates.filter(|k| k.algorithms.contains(&header.alg)) {
                    let mut v = self.validation.clone();
                    v.algorithms = vec![header.alg];
                    match jsonwebtoken::decode(token, &key.key, &v) {
                        Ok(t) => return Ok(t.claims),
                        // Without a `kid`, another key of the set may have signed it.
                        Err(e)
                            if header.kid.is_none()
                                && *e.kind()
                                    == jsonwebtoken::errors::ErrorKind::InvalidSignature =>
                        {
                            last = AuthError::BadSignature;
                        }
                        Err(e) => return Err(refused(e)),
                    }
                }
                Err(last)
            }
        }
    }

    /// The identity of verified claims (`exp`, `nbf`, `aud`, `iss` and the signature are
    /// checked already).
    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, AuthError> {
        let user = match claims.get("sub") {
            Some(Value::String(s)) if s.len() > MAX_USER_SIZE => {
                // MAX_USER_SIZE, spelled out for a `&'static str`.
                return Err(AuthError::BadClaim("sub", "is above 256 bytes"));
            }
            Some(Value::String(s)) if !s.is_empty() => Arc::<str>::from(s.as_str()),
            None => return Err(AuthError::MissingClaim("sub")),
            Some(_) => return Err(AuthError::BadClaim("sub", "must be a non-empty string")),
        };
        // RFC 7519 §4.1.1: `iss` is one string (the library also takes an array).
        if self.check_issuer && !claims.get("iss").is_some_and(Value::is_string) {
            return Err(AuthError::BadClaim("iss", "must be a string"));
        }
        let expires_at = claims
            .get("exp")
            .ok_or(AuthError::MissingClaim("exp"))
            .and_then(|v| numeric_date(v).ok_or(AuthError::BadClaim("exp", NOT_NUMERIC_DATE)))?;
        let info = info_claim(claims)?;
        let publish = patterns(claims, "publish")?;
        let channels = match patterns(claims, "channels")? {
            None if !self.missing_channels_all => Some(Vec::new()),
            channels => channels,
        };
        Ok(Identity {
            user: Some(user),
            channels,
            publish,
            info,
            expires_at: Some(expires_at),
        })
    }

    /// RFC 6455 §10.2: the server decides which origins may open connections. Same-origin
    /// requests, listed origins, and requests without `Origin` (not from a browser) pass.
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
    }
}

/// Extracts the token from a query string (`token=...`, percent-decoded).
pub fn token_from_query(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("token=")?;
        percent_decode(value)
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(anonymous: bool, origins: &[&str]) -> Authenticator {
        Authenticator::new(&AuthConfig {
            anonymous,
            jwt_secret: Some("0123456789abcdef0123".into()),
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            missing_channels: MissingChannels::All,
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn future() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[tokio::test]
    async fn tokens() {
        let a = auth(false, &[]);
        assert!(matches!(
            a.authenticate(None).await,
            Err(AuthError::Missing)
        ));
        let good = token(
            serde_json::json!({"sub":"ada","exp":future(),"channels":["chat:*"],"info":{"n":1}}),
            "0123456789abcdef0123",
        );
        let id = a.authenticate(Some(&good)).await.unwrap();
        assert_eq!(id.user.as_deref(), Some("ada"));
        assert!(id.may_subscribe("chat:x") && !id.may_subscribe("lobby"));
        assert!(id.may_publish("chat:x") && !id.may_publish("lobby"));
        assert_eq!(id.info.as_ref().map(|i| i.get()), Some(r#"{"n":1}"#));
        let expired = token(
            serde_json::json!({"sub":"ada","exp":1000}),
            "0123456789abcdef0123",
        );
        assert!(a.authenticate(Some(&expired)).await.is_err());
        let wrong = token(
            serde_json::json!({"sub":"ada","exp":future()}),
            "another-secret-0000",
        );
        assert!(a.authenticate(Some(&wrong)).await.is_err());
        let longest = "u".repeat(MAX_USER_SIZE);
        let at_limit = token(
            serde_json::json!({"sub":longest,"exp":future()}),
            "0123456789abcdef0123",
        );
        assert_eq!(
            a.authenticate(Some(&at_limit))
                .await
                .unwrap()
                .user
                .as_deref(),
            Some(longest.as_str())
        );
        let too_long = token(
            serde_json::json!({"sub":format!("{longest}u"),"exp":future()}),
            "0123456789abcdef0123",
        );
        assert_eq!(
            a.authenticate(Some(&too_long)).await.unwrap_err(),
            AuthError::BadClaim("sub", "is above 256 bytes")
        );
        let no_sub = token(serde_json::json!({"exp":future()}), "0123456789abcdef0123");
        assert!(a.authenticate(Some(&no_sub)).await.is_err());
        assert!(a.authenticate(Some("garbage")).await.is_err());
        assert!(auth(true, &[])
            .authenticate(None)
            .await
            .unwrap()
            .user
            .is_none());
    }

    #[tokio::test]
    async fn refusals_and_missing_channels() {
        let with = |adjust: fn(&mut AuthConfig)| {
            let mut c = AuthConfig {
                jwt_secret: Some("0123456789abcdef0123".into()),
                ..AuthConfig::default()
            };
            adjust(&mut c);
            Authenticator::new(&c).unwrap()
        };
        let t = future();
        let key = "0123456789abcdef0123";
        let strict = with(|_| {});
        let bare = token(serde_json::json!({"sub":"ada","exp":t}), key);
        let id = strict.authenticate(Some(&bare)).await.unwrap();
        assert!(!id.may_subscribe("lobby") && !id.may_publish("lobby"));
        let id = with(|c| c.missing_channels = MissingChannels::All)
            .authenticate(Some(&bare))
            .await
            .unwrap();
        assert!(id.may_subscribe("lobby") && id.may_publish("lobby"));
        let aud = token(serde_json::json!({"sub":"ada","exp":t,"aud":"duplex"}), key);
        assert_eq!(
            strict.authenticate(Some(&aud)).await.unwrap_err(),
            AuthError::WrongAudience
        );
        let bound = with(|c| c.audiences = vec!["duplex".into()]);
        assert!(bound
            .authenticate(Some(&aud))
            .await
            .unwrap()
            .may_subscribe("lobby"));
        assert_eq!(
            bound.authenticate(Some(&bare)).await.unwrap_err(),
            AuthError::MissingClaim("aud")
        );
        let max = token(serde_json::json!({"sub":"ada","exp":u64::MAX}), key);
        assert_eq!(
            strict.authenticate(Some(&max)).await.unwrap().expires_at,
            Some(u64::MAX)
        );
        let frac = token(serde_json::json!({"sub":"ada","exp":t as f64 + 0.9}), key);
        assert_eq!(
            strict.authenticate(Some(&frac)).await.unwrap().expires_at,
            Some(t)
        );
        assert_eq!(
            strict
                .authenticate(Some("x.y.z"))
                .await
                .unwrap_err()
                .to_string(),
            "invalid token: malformed"
        );
    }

    #[test]
    fn origins() {
        let a = auth(true, &["https://app.example.com"]);
        assert!(a.origin_allowed(None, Some("h:1")));
        assert!(a.origin_allowed(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(a.origin_allowed(Some("https://app.example.com"), Some("x")));
        assert!(!a.origin_allowed(Some("https://evil.example"), Some("127.0.0.1:8080")));
        assert!(!a.origin_allowed(Some("null"), Some("127.0.0.1:8080")));
        assert!(auth(true, &["*"]).origin_allowed(Some("https://evil.example"), None));
    }

    #[test]
    fn query_tokens() {
        assert_eq!(token_from_query("a=1&token=x%2Ey").as_deref(), Some("x.y"));
        assert_eq!(token_from_query("a=1"), None);
        assert_eq!(token_from_query("token=%zz"), None);
    }
}
