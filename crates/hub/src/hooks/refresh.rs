//! The `refresh` hook: asked when a connection reaches the deadline its `connect` hook (or an
//! earlier `refresh` answer) set.
//!
//! The call runs inside the connection's task, beside its commands, never in their way: the
//! connection is served while it waits. A backend that fails, times out or answers garbage
//! does not end the connection at once: the call is made again `hooks.refresh_retry` later,
//! up to [`REFRESH_ATTEMPTS`] times in a row, each failure counted in
//! `duplex_hook_calls_total{hook="refresh"}`; only then is the connection closed as expired.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::Uri;
use serde_json::value::RawValue;

use super::config::REFRESH_ATTEMPTS;
use super::wire::{RefreshRequest, RefreshResult};
use super::{Context, Hook, Verdict};
use crate::hub::Shared;

/// What the backend decided about a connection that reached its deadline.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The connection lives on until this time (seconds since the Unix epoch).
    Extended(u64),
    /// Closed as an expired token is: `expired: true`, a denial, or every attempt failed.
    Expired,
    /// `{"disconnect": ...}`: closed with the backend's code and reason.
    Disconnect(u16, String),
}

/// A running `refresh`, boxed: an idle connection holds a pointer, not the call's state.
pub(crate) type Refreshing = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// What a `refresh` call is about: the connection, as it is when its deadline passes.
pub(crate) struct Subject {
    pub(crate) client: Arc<str>,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) info: Option<Arc<RawValue>>,
    /// The connection's hook context (its allowlisted headers and address).
    pub(crate) context: Context,
}

/// Asks the `refresh` hook at `uri`, again after each failure, until it decides or
/// [`REFRESH_ATTEMPTS`] calls have failed.
pub(crate) fn start(shared: Arc<Shared>, uri: Uri, subject: Subject) -> Refreshing {
    Box::pin(async move {
        let body = RefreshRequest {
            client: &subject.client,
            user: subject.user.as_deref(),
            info: subject.info.as_deref(),
        };
        for attempt in 1..=REFRESH_ATTEMPTS {
            match shared
                .hooks
                .call::<_, RefreshResult>(Hook::Refresh, &uri, &subject.context, &body)
                .await
            {
                Ok(Verdict::Allow(result)) => return decide(&result),
                Ok(Verdict::Deny(_)) => return Outcome::Expired,
                Ok(Verdict::Disconnect(code, reason)) => return Outcome::Disconnect(code, reason),
                // Logged and counted by `call`.
                Err(_) if attempt < REFRESH_ATTEMPTS => {
                    tokio::time::sleep(shared.hooks.refresh_retry()).await;
                }
                Err(_) => {}
            }
        }
        tracing::warn!(
            client = %subject.client,
            attempts = REFRESH_ATTEMPTS,
            "the refresh hook failed every attempt; the connection expires"
        );
        Outcome::Expired
    })
}

/// A checked result: `expired` wins over a deadline.
fn decide(result: &RefreshResult) -> Outcome {
    match result.expire_at {
        Some(at) if !result.expired => Outcome::Extended(at),
        _ => Outcome::Expired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_wins_over_a_deadline() {
        let r = |expire_at, expired| RefreshResult { expire_at, expired };
        assert_eq!(decide(&r(Some(9), false)), Outcome::Extended(9));
        assert_eq!(decide(&r(Some(9), true)), Outcome::Expired);
        assert_eq!(decide(&r(None, true)), Outcome::Expired);
    }
}
