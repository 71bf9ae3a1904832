//! The `connect` hook: asked once per WebSocket, after the upgrade and before `welcome`.
//!
//! It runs after the 101 (or HTTP/2's 200), not before, because a browser cannot see why an
//! upgrade was refused: its `WebSocket` reports a bare failure whatever the status, so an
//! application could not tell "log in again" from "try later". Once the WebSocket is open,
//! a refusal is a Close frame with a code and a reason the page reads in `CloseEvent`. It
//! also keeps a slow backend out of the HTTP layer's timers: the connection already holds
//! its slot in the connection limits, and the call is bounded by `hooks.timeout`.

use std::borrow::Cow;
use std::sync::Arc;

use axum::http::Uri;

use super::wire::{ConnectRequest, ConnectResult};
use super::{Context, Hook, Verdict, CLOSE_FORBIDDEN};
use crate::auth::Identity;
use crate::hub::Shared;

/// A refusal: the close code and reason the client gets.
pub(crate) type Refusal = (u16, Cow<'static, str>);

/// Asks the `connect` hook at `uri` about connection `client`. When it allows, the
/// identity takes the user, `info` and `expire_at` it set, and the channels it named are
/// returned (to be subscribed server-side) with whether it set the deadline; otherwise the
/// close code and reason.
pub(crate) async fn admit(
    shared: &Shared,
    uri: &Uri,
    client: &str,
    context: &Context,
    protocol: Option<&str>,
    identity: &mut Identity,
) -> Result<(Vec<String>, bool), Refusal> {
    let body = ConnectRequest {
        client,
        node: &shared.node_id,
        transport: "websocket",
        protocol,
        ip: context.ip.to_string(),
        user: identity.user.as_deref(),
    };
    match shared
        .hooks
        .call::<_, ConnectResult>(Hook::Connect, uri, context, &body)
        .await
    {
        Ok(Verdict::Allow(result)) => {
            if let Some(user) = result.user {
                identity.user = Some(user.into());
            }
            if let Some(info) = result.info {
                identity.info = Some(Arc::from(info));
            }
            let expires = result.expire_at.is_some();
            if expires {
                identity.expires_at = result.expire_at;
            }
            Ok((result.channels, expires))
        }
        Ok(Verdict::Deny(message)) => {
            let reason = if message.is_empty() {
                Cow::Borrowed("forbidden")
            } else {
                // A Close frame's reason is at most 123 bytes (RFC 6455 §5.5).
                Cow::Owned(super::truncate(message, 123))
            };
            Err((CLOSE_FORBIDDEN, reason))
        }
        Ok(Verdict::Disconnect(code, reason)) => Err((code, Cow::Owned(reason))),
        Err(e) => {
            let (code, reason) = e.close();
            Err((code, Cow::Borrowed(reason)))
        }
    }
}
