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
        Ok(())
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
    fn replaced_data_and_rpc_results_are_bounded() {
        let p: PublishResult = serde_json::from_str(r#"{"data":"0123456789abcdefg"}"#).unwrap();
        assert!(p.check(&BOUNDS).is_err());
        let p: PublishResult = serde_json::from_str(r#"{"data":[1]}"#).unwrap();
        assert_eq!(p.check(&BOUNDS), Ok(()));
        let deep: Box<RawValue> = serde_json::from_str("[[[[[1]]]]]").unwrap();
        assert!(deep.check(&BOUNDS).is_err());
    }
}
