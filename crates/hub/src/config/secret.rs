//! Secrets in the configuration: a type whose `Debug` form hides them, redaction of URLs
//! and messages, and reading them from files.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// A secret string (key, password, URL with a password): serialized as itself, but its
/// `Debug` form is `"<redacted>"`, so it never appears in a debug dump of the configuration.
/// Dereferences to `str`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// What `--print-config` shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// `url` with the password of its user information replaced by `<redacted>`
/// (`redis://user:<redacted>@host:6379/0`). A URL that cannot be split into scheme and
/// authority is redacted whole.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.to_owned();
    };
    // The user information ends at the last `@` (RFC 3986 §3.2.1; a password may contain
    // an unencoded `@` in practice, and cutting late only redacts more).
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = rest.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}{host}"),
        None => url.to_owned(),
    }
}

/// The password in `url`'s user information, as written and percent-decoded.
fn url_password(url: &str) -> Option<(&str, String)> {
    let (_, rest) = url.split_once("://")?;
    let userinfo = &rest[..rest.rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    if password.is_empty() {
        return None;
    }
    let bytes = password.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| password.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                decoded.push(b);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    Some((password, String::from_utf8_lossy(&decoded).into_owned()))
}

/// `message` with every occurrence of `url`'s password (as written or percent-decoded)
/// replaced by `<redacted>`, for error messages from code that was given the URL.
pub fn redact_password_in(message: &str, url: &str) -> String {
    let Some((raw, decoded)) = url_password(url) else {
        return message.to_owned();
    };
    message.replace(raw, REDACTED).replace(&decoded, REDACTED)
}

/// A secret file's content without its trailing line break. The error names the file,
/// never its content.
pub(crate) fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{}: the secret file is empty",
            path.display()
        )));
    }
    if secret.contains(['\r', '\n']) {
        return Err(ConfigError::Invalid(format!(
            "{}: a secret file holds one line",
            path.display()
        )));
    }
    Ok(Secret::from(secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:<redacted>@h:1/0");
        assert_eq!(
            redact_url("rediss://u:p@ss@h/0"),
            "rediss://u:<redacted>@h/0"
        );
        assert_eq!(redact_url("redis://user@h"), "redis://user@h");
        assert_eq!(redact_url("not a url :pw@h"), "<redacted>");
        let url = "redis://:p%40ss@h";
        assert_eq!(
            redact_password_in("auth p%40ss / p@ss failed", url),
            "auth <redacted> / <redacted> failed"
        );
        assert_eq!(redact_password_in("fine", "redis://h"), "fine");
    }

    #[test]
    fn secrets_from_files() {
        let dir = std::env::temp_dir().join(format!("duplex-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let jwt = file("jwt", "jwt-secret-from-a-file\n");
        let key = file("key", "api-key-from-a-file\r\n");
        let url = file("url", "redis://:pw@127.0.0.1:6390/0\n");
        let short = file("short", "short\n");
        let two = file("two", "line one\nline two\n");
        let text = format!(
            "broker = \"redis\"\nredis_url_file = {url:?}\n[auth]\njwt_secret_file = {jwt:?}\n\
             [api]\nkey_file = {key:?}\n"
        );
        let c = Config::from_toml(&text).unwrap();
        assert!(c.auth.jwt_secret.is_none(), "read when the hub starts");
        assert!(c.to_toml_redacted().contains("jwt_secret_file"));
        let c = c.with_secret_files().unwrap();
        assert_eq!(c.auth.jwt_secret.as_deref(), Some("jwt-secret-from-a-file"));
        assert_eq!(c.api.key.as_deref(), Some("api-key-from-a-file"));
        assert_eq!(c.redis_url.as_deref(), Some("redis://:pw@127.0.0.1:6390/0"));
        assert!(c.auth.jwt_secret_file.is_none() && c.redis_url_file.is_none());

        let with = |toml: String| Config::from_toml(&toml).and_then(Config::with_secret_files);
        let e = with(format!("[auth]\njwt_secret_file = {short:?}")).unwrap_err();
        assert!(e.to_string().contains("at least 16 bytes"), "{e}");
        assert!(!e.to_string().contains("short\n"));
        let e = with(format!("[api]\nkey_file = {two:?}")).unwrap_err();
        assert!(!e.to_string().contains("line one"), "{e}");
        let missing = dir.join("missing").display().to_string();
        assert!(with(format!("[api]\nkey_file = {missing:?}")).is_err());
        assert!(
            Config::from_toml(&format!(
                "[auth]\njwt_secret = \"0123456789abcdef\"\njwt_secret_file = {jwt:?}"
            ))
            .is_err(),
            "mutually exclusive"
        );
        assert!(
            Config::from_toml(&format!("[api]\nkey = \"0123456789\"\nkey_file = {key:?}")).is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
