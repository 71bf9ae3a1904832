//! The JSON each hook is sent and the `result` it may answer (`docs/hooks.md`).
//!
//! Results ignore fields they do not know, so an application may answer more than the hub
//! reads; what they hold is checked by the caller against the same limits as a client's
//! input (user and `info` sizes, channel names, JSON depth).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Bounds, Check};
use crate::auth::{MAX_INFO_SIZE, MAX_USER_SIZE};
use crate::protocol::json_too_deep;

/// The body of a `connect` call.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectRequest<'a> {
    pub(crate) client: &'a str,
    pub(crate) node: &'a str,
    pub(crate) transport: &'static str,
    /// The selected subprotocol (`duplex.v1`), or `null` when the client offered none.
    pub(crate) protocol: Option<&'a str>,
    pub(crate) ip: String,
    /// The token's `sub`, `null` for an anonymous connection.
    pub(crate) user: Option<&'a str>,
}

/// What a `connect` hook may set.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ConnectResult {
    /// Replaces the connection's user (the token's `sub`, or none).
    pub(crate) user: Option<String>,
    /// Replaces the presence `info` of every subscription of the connection.
    pub(crate) info: Option<Box<RawValue>>,
    /// Channels the connection is subscribed to at once, server-side.
    pub(crate) channels: Vec<String>,
    /// When the connection expires, in seconds since the Unix epoch (in place of the
    /// token's `exp`); the `refresh` hook, if set, is asked then.
    pub(crate) expire_at: Option<u64>,
}

/// The body of a `subscribe` call.
#[derive(Debug, Serialize)]
pub(crate) struct SubscribeRequest<'a> {
    pub(crate) client: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) channel: &'a str,
    /// The `info` the client sent with its `subscribe`.
    pub(crate) info: Option<&'a RawValue>,
    /// Whether the client asked for recovery (`since`).
    pub(crate) recover: bool,
}

/// What a `subscribe` hook may set.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct SubscribeResult {
    /// Presence `info` for this subscription, in place of the client's or the token's.
    pub(crate) info: Option<Box<RawValue>>,
    /// `false`: no recovery for this subscription, whatever `since` the client sent.
    pub(crate) recover: Option<bool>,
}

/// The body of a `publish` call.
#[derive(Debug, Serialize)]
pub(crate) struct PublishRequest<'a> {
    pub(crate) client: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) channel: &'a str,
    pub(crate) data: &'a RawValue,
}

/// What a `publish` hook may set.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PublishResult {
    /// Published in place of the client's `data`.
    pub(crate) data: Option<Box<RawValue>>,
}

/// The body of an `rpc` call; the reply's `result` is any JSON, passed to the client.
#[derive(Debug, Serialize)]
pub(crate) struct RpcRequest<'a> {
    pub(crate) client: &'a str,
    pub(crate) user: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) data: &'a RawValue,
}

/// The body of a `refresh` call.
#[derive(Debug, Serialize)]
pub(crate) struct RefreshRequest<'a> {
    pub(crate) client: &'a str,
    pub(crate) user: Option<&'a str>,
    /// The connection's presence `info`, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) info: Option<&'a RawValue>,
}

/// What a `refresh` hook answers: a new deadline, or that the connection has expired.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RefreshResult {
    /// The connection's new deadline, in seconds since the Unix epoch.
    pub(crate) expire_at: Option<u64>,
    /// `true`: close the connection now, as for an expired token.
    pub(crate) expired: bool,
}

/// The furthest ahead a backend may set a connection's deadline: a year. Further is a
/// mistake (milliseconds for seconds, most often), not a deadline.
pub(crate) const MAX_EXPIRE_AHEAD: u64 = 366 * 24 * 3600;

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An `expire_at` from a backend: in the future, and at most [`MAX_EXPIRE_AHEAD`] away.
fn check_expire_at(expire_at: u64, now: u64) -> Result<(), String> {
    if expire_at <= now {
        return Err("\"expire_at\" is not in the future".to_owned());
    }
    if expire_at.saturating_sub(now) > MAX_EXPIRE_AHEAD {
        return Err(format!(
            "\"expire_at\" is more than {MAX_EXPIRE_AHEAD} s ahead (seconds, not milliseconds)"
        ));
    }
    Ok(())
}

/// A presence `info` from a backend: an object within the size and depth of a client's.
fn check_info(info: Option<&RawValue>, bounds: &Bounds) -> Result<(), String> {
    let Some(info) = info else { return Ok(()) };
    if !info.get().starts_with('{') {
        return Err("\"info\" must be an object".to_owned());
    }
    if info.get().len() > MAX_INFO_SIZE {
        return Err(format!("\"info\" is above {MAX_INFO_SIZE} bytes"));
    }
    if json_too_deep(info.get(), bounds.max_json_depth) {
        return Err("\"info\" nests too deep".to_owned());
    }
    Ok(())
}

impl Check for ConnectResult {
    fn check(&self, bounds: &Bounds) -> Result<(), String> {
        if let Some(user) = &self.user {
            if user.is_empty() || user.len() > MAX_USER_SIZE {
                return Err(format!("\"user\" must be 1-{MAX_USER_SIZE} bytes"));
            }
        }
        check_info(self.info.as_deref(), bounds)?;
        if self.channels.len() > bounds.max_channels {
            return Err(format!(
                "more \"channels\" than limits.max_channels_per_connection ({})",
                bounds.max_channels
            ));
        }
        for channel in &self.channels {
            crate::channel::validate(channel).map_err(|e| format!("{channel:?}: {e}"))?;
        }
        if let Some(at) = self.expire_at {
            check_expire_at(at, now_secs())?;
        }
        Ok(())
    }
}

impl Check for RefreshResult {
    fn check(&self, _: &Bounds) -> Result<(), String> {
        if self.expired {
            return Ok(());
        }
        match self.expire_at {
            Some(at) => check_expire_at(at, now_secs()),
            None => Err("the reply has neither \"expire_at\" nor \"expired\": true".to_owned()),
        }
    }
}

impl Check for SubscribeResult {
    fn check(&self, bounds: &Bounds) -> Result<(), String> {
        check_info(self.info.as_deref(), bounds)
    }
}

impl Check for PublishResult {
    fn check(&self, bounds: &Bounds) -> Result<(), String> {
        let Some(data) = &self.data else {
            return Ok(());
        };
        if data.get().len() > bounds.max_publication_size {
            return Err("\"data\" is above limits.max_publication_size".to_owned());
        }
        if json_too_deep(data.get(), bounds.max_json_depth) {
            return Err("\"data\" nests too deep".to_owned());
        }
        Ok(())
    }
}

/// An `rpc` result, passed to the client as it is: within the client's JSON depth.
impl Check for Box<RawValue> {
    fn check(&self, bounds: &Bounds) -> Result<(), String> {
        if json_too_deep(self.get(), bounds.max_json_depth) {
            return Err("\"result\" nests too deep".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_json_depth: 4,
        max_channels: 2,
        max_publication_size: 16,
    };

    fn connect(json: &str) -> Result<(), String> {
        serde_json::from_str::<ConnectResult>(json)
            .map_err(|e| e.to_string())?
            .check(&BOUNDS)
    }

    #[test]
    fn connect_results_are_held_to_the_clients_limits() {
        assert_eq!(connect(r#"{"user":"42","channels":["a","b:c"]}"#), Ok(()));
        assert_eq!(connect("{}"), Ok(()));
        assert!(connect(r#"{"user":""}"#).is_err());
        assert!(connect(&format!(r#"{{"user":"{}"}}"#, "u".repeat(257))).is_err());
        assert!(connect(r#"{"channels":["a","b","c"]}"#).is_err());
        assert!(connect(r#"{"channels":["bad name"]}"#).is_err());
        assert!(connect(r#"{"info":[1]}"#).is_err());
        assert!(connect(r#"{"info":{"a":[[[[1]]]]}}"#).is_err());
    }

    #[test]
    fn a_connect_expiry_is_in_the_future_and_within_a_year() {
        let now = now_secs();
        assert_eq!(connect(&format!(r#"{{"expire_at":{}}}"#, now + 60)), Ok(()));
        assert!(connect(&format!(r#"{{"expire_at":{now}}}"#)).is_err());
        assert!(connect(r#"{"expire_at":1}"#).is_err());
        let ms = (now + 60) * 1000;
        assert!(connect(&format!(r#"{{"expire_at":{ms}}}"#)).is_err());
        assert!(connect(r#"{"expire_at":-5}"#).is_err());
        assert!(connect(r#"{"expire_at":"soon"}"#).is_err());
        assert!(connect(&format!(r#"{{"expire_at":{}}}"#, u64::MAX)).is_err());
        assert_eq!(check_expire_at(u64::MAX, u64::MAX - 1), Ok(()));
        assert!(check_expire_at(now + MAX_EXPIRE_AHEAD + 1, now).is_err());
        assert_eq!(check_expire_at(now + MAX_EXPIRE_AHEAD, now), Ok(()));
    }

    fn refresh(json: &str) -> Result<RefreshResult, String> {
        let r = serde_json::from_str::<RefreshResult>(json).map_err(|e| e.to_string())?;
        r.check(&BOUNDS).map(|()| r)
    }

    #[test]
    fn a_refresh_extends_or_expires_and_anything_else_is_a_failure() {
        let at = now_secs() + 30;
        let extended = refresh(&format!(r#"{{"expire_at":{at},"extra":1}}"#)).unwrap();
        assert_eq!(extended.expire_at, Some(at));
        assert!(!extended.expired);
        assert!(refresh(r#"{"expired":true}"#).unwrap().expired);
        assert!(
            refresh(r#"{"expired":true,"expire_at":1}"#)
                .unwrap()
                .expired
        );
        for bad in [
            "{}",
            r#"{"expired":false}"#,
            r#"{"expire_at":1}"#,
            r#"{"expire_at":null}"#,
            r#"{"expired":"yes"}"#,
            r#"{"expire_at":1.5}"#,
            "[]",
        ] {
            assert!(refresh(bad).is_err(), "{bad}");
        }
        let body = RefreshRequest {
            client: "c1",
            user: Some("alice"),
            info: None,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"client":"c1","user":"alice"}"#
        );
    }

    #[test]
    fn replaced_data_and_rpc_results_are_bounded() {
        let p: PublishResult = serde_json::from_str(r#"{"data":"0123456789abcdefg"}"#).unwrap();
        assert!(p.check(&BOUNDS).is_err());
        let p: PublishResult = serde_json::from_str(r#"{"data":[1]}"#).unwrap();
        assert_eq!(p.check(&BOUNDS), Ok(()));
        let deep: Box<RawValue> = serde_json::from_str("[[[[[1]]]]]").unwrap();
        assert!(deep.check(&BOUNDS).is_err());
    }
}
