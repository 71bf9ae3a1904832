//! Who is connecting: JWT verification and the Origin check of the upgrade request.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::channel::matches_any;
use crate::config::{AuthConfig, ConfigError};

/// Largest serialized presence `info` (JWT claim or `subscribe` field), in bytes.
pub const MAX_INFO_SIZE: usize = 1024;

/// The authenticated (or anonymous) identity of a connection.
#[derive(Debug, Clone, Default)]
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

/// Why a token was refused (the handshake answers 401).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token and anonymous access is off.
    #[error("a token is required")]
    Missing,
    /// A token was sent but no key is configured to check it.
    #[error("tokens are not accepted: no key is configured")]
    NoKey,
    /// Signature, algorithm, claims or format.
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    info: Option<serde_json::Value>,
}

/// Token verification and Origin policy, built once from [`AuthConfig`].
pub struct Authenticator {
    key: Option<(DecodingKey, Validation)>,
    anonymous: bool,
    allowed_origins: Vec<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithm", &self.key.as_ref().map(|(_, v)| &v.algorithms))
            .field("anonymous", &self.anonymous)
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

impl Authenticator {
    /// Loads the configured key (reading the PEM file, if any).
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        let key = if let Some(secret) = &config.jwt_secret {
            Some((
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ))
        } else if let Some(path) = &config.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .map(|k| (k, Algorithm::RS256))
                .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (k, Algorithm::ES256)))
                .map_err(|_| {
                    ConfigError::Invalid(format!(
                        "{}: not an RSA or EC public key in PEM",
                        path.display()
                    ))
                })?;
            Some(key)
        } else {
            None
        };
        let key = key.map(|(key, alg)| {
            let mut v = Validation::new(alg);
            v.leeway = 0;
            v.validate_exp = true;
            v.validate_nbf = true;
            v.validate_aud = false;
            v.set_required_spec_claims(&["exp", "sub"]);
            (key, v)
        });
        Ok(Self {
            key,
            anonymous: config.anonymous,
            allowed_origins: config.allowed_origins.clone(),
        })
    }

    /// Checks `token` (from `?token=` or `Authorization: Bearer`) and returns the identity.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return if self.anonymous {
                Ok(Identity::default())
            } else {
                Err(AuthError::Missing)
            };
        };
        let Some((key, validation)) = &self.key else {
            return Err(AuthError::NoKey);
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let c = data.claims;
        if c.sub.is_empty() {
            return Err(AuthError::Invalid("empty \"sub\"".into()));
        }
        let info = match c.info {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Object(_)) => {
                let text = v.to_string();
                if text.len() > MAX_INFO_SIZE {
                    return Err(AuthError::Invalid(format!(
                        "\"info\" claim above {MAX_INFO_SIZE} bytes"
                    )));
                }
                RawValue::from_string(text).ok().map(Arc::from)
            }
            Some(_) => {
                return Err(AuthError::Invalid(
                    "\"info\" claim must be an object".into(),
                ))
            }
        };
        Ok(Identity {
            user: Some(c.sub.into()),
            channels: c.channels,
            publish: c.publish,
            info,
            expires_at: Some(c.exp),
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
            jwt_public_key_file: None,
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
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

    #[test]
    fn tokens() {
        let a = auth(false, &[]);
        assert!(matches!(a.authenticate(None), Err(AuthError::Missing)));
        let good = token(
            serde_json::json!({"sub":"ada","exp":future(),"channels":["chat:*"],"info":{"n":1}}),
            "0123456789abcdef0123",
        );
        let id = a.authenticate(Some(&good)).unwrap();
        assert_eq!(id.user.as_deref(), Some("ada"));
        assert!(id.may_subscribe("chat:x") && !id.may_subscribe("lobby"));
        assert!(id.may_publish("chat:x") && !id.may_publish("lobby"));
        assert_eq!(id.info.as_ref().map(|i| i.get()), Some(r#"{"n":1}"#));
        let expired = token(
            serde_json::json!({"sub":"ada","exp":1000}),
            "0123456789abcdef0123",
        );
        assert!(a.authenticate(Some(&expired)).is_err());
        let wrong = token(
            serde_json::json!({"sub":"ada","exp":future()}),
            "another-secret-0000",
        );
        assert!(a.authenticate(Some(&wrong)).is_err());
        let no_sub = token(serde_json::json!({"exp":future()}), "0123456789abcdef0123");
        assert!(a.authenticate(Some(&no_sub)).is_err());
        assert!(a.authenticate(Some("garbage")).is_err());
        assert!(auth(true, &[]).authenticate(None).unwrap().user.is_none());
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
