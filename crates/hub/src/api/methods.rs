//! The server API's operations as methods on [`Hub`], for embedders and for the HTTP
//! handlers of `POST /api/<method>`. Each returns a typed result or a [`CommandError`]
//! with the protocol's error codes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::value::RawValue;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;

use super::cluster::Command;
use super::idempotency::{Full, MAX_KEY_BYTES};
use super::registry::{Control, Mailbox};
use crate::broker::{Claim, PresenceEntry, Publication, StreamPosition};
use crate::hub::ChannelInfo;
use crate::protocol::{CommandError, ErrorCode, Since};
use crate::Hub;

/// The answer of [`Hub::history`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HistoryResult {
    /// The channel's position when the history was read.
    pub position: StreamPosition,
    /// Publications: oldest first, or newest first with `reverse`.
    pub publications: Vec<Publication>,
    /// With `since`: whether every publication after it is included (`false` also when
    /// `since` names another epoch: then the latest publications are returned).
    pub complete: Option<bool>,
}

/// What [`Hub::history`] is asked for.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct HistoryRequest {
    /// At most this many (default: the namespace's `history_size`, at most
    /// `api.max_history_limit`).
    pub limit: Option<usize>,
    /// Only publications after this position.
    pub since: Option<Since>,
    /// Newest first.
    pub reverse: bool,
}

impl HistoryRequest {
    /// The latest publications, oldest first.
    pub fn latest() -> Self {
        Self::default()
    }

    /// At most `limit` publications.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only publications after `since`.
    #[must_use]
    pub fn since(mut self, since: Since) -> Self {
        self.since = Some(since);
        self
    }

    /// Newest first.
    #[must_use]
    pub fn reverse(mut self, reverse: bool) -> Self {
        self.reverse = reverse;
        self
    }
}

/// The answer of [`Hub::presence_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PresenceStats {
    /// Subscribed connections.
    pub clients: usize,
    /// Distinct authenticated users among them.
    pub users: usize,
}

impl PresenceStats {
    /// The counts of a channel's presence entries.
    pub(crate) fn of(entries: &[PresenceEntry]) -> Self {
        let users: HashSet<&str> = entries.iter().filter_map(|e| e.user.as_deref()).collect();
        Self {
            clients: entries.len(),
            users: users.len(),
        }
    }
}

/// One node in [`Hub::info`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct NodeInfo {
    /// Node id.
    pub node: String,
    /// Server version.
    pub version: String,
    /// Open WebSocket connections.
    pub connections: i64,
    /// Distinct authenticated users among them.
    pub users: u64,
    /// Active subscriptions.
    pub subscriptions: i64,
    /// Channels with local subscribers.
    pub channels: i64,
    /// Seconds since the node started.
    pub uptime_seconds: u64,
}

/// Whose connections [`Hub::disconnect`], [`Hub::subscribe`] and [`Hub::unsubscribe`] act
/// on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Every connection of this user on this node.
    User(String),
    /// The connection with this client id.
    Client(String),
}

/// The close code of `disconnect` when none is given: 1008, policy violation (RFC 6455
/// §7.4.1), the code the hub also closes with when a token expires.
pub const DEFAULT_DISCONNECT_CODE: u16 = 1008;

/// Longest `disconnect` reason in bytes: a Close frame's payload is at most 125 bytes, two
/// of them the code (RFC 6455 §5.5).
pub const MAX_REASON_BYTES: usize = 123;

/// Whether an application may close with `code`: 1000 (normal), 1001 (going away), 1008
/// (policy), 1011 (internal error), 1012 (service restart), 1013 (try again later), or
/// 3000–4999 (RFC 6455 §7.4.2: registered and private-use codes). The others are reserved
/// for the protocol itself (1002, 1007, 1009, 1010), must not be sent (1005, 1006, 1015),
/// or are unassigned.
fn closable(code: u16) -> bool {
    matches!(code, 1000 | 1001 | 1008 | 1011 | 1012 | 1013 | 3000..=4999)
}

/// What one connection did with a server-side [`Hub::subscribe`] or [`Hub::unsubscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientOutcome {
    /// The connection's client id.
    pub client: String,
    /// `subscribe`: the position the client was told (with the pushed `subscribed`
    /// event); `unsubscribe`: `None`. An error when the connection refused the command (a
    /// limit, already subscribed, not subscribed), its mailbox was full (`over_capacity`),
    /// or it closed or did not answer within `api.command_timeout` (`unavailable`).
    pub result: Result<Option<StreamPosition>, CommandError>,
}

/// What [`Hub::subscribe`] and [`Hub::unsubscribe`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcomes {
    /// One outcome per connection of the target on this node.
    pub clients: Vec<ClientOutcome>,
    /// Whether the command was also sent to every other node (Redis broker), which apply
    /// it to their own connections without answering.
    pub all_nodes: bool,
}

/// What [`Hub::disconnect`] and [`Hub::refresh_user`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Done {
    /// Connections of the target on this node.
    pub here: usize,
    /// Whether the command was also sent to every other node (Redis broker).
    pub all_nodes: bool,
}

/// A command on its way to one connection's mailbox, or already refused.
enum Posted<T> {
    Sent(String, oneshot::Receiver<Result<T, CommandError>>),
    Refused(String, CommandError),
}

impl Hub {
    /// The local connections of `target`: their client id and mailbox.
    fn mailboxes(&self, target: &Target) -> Vec<(String, Arc<Mailbox>)> {
        let entries = match target {
            Target::User(user) => self.shared.registry.entries_of(user),
            Target::Client(client) => self
                .shared
                .registry
                .client_entry(client)
                .into_iter()
                .collect(),
        };
        entries
            .into_iter()
            .filter_map(|e| Some((e.peer.upgrade()?.id.to_string(), e.mailbox)))
            .collect()
    }

    /// Posts one command per connection of `target` without waiting for the answers (a
    /// full mailbox is counted and skipped): how another node's command is applied here.
    pub(crate) fn post<T>(
        &self,
        target: &Target,
        make: impl Fn(oneshot::Sender<Result<T, CommandError>>) -> Control,
    ) {
        for (client, mailbox) in self.mailboxes(target) {
            let (tx, _rx) = oneshot::channel();
            if let Err(TrySendError::Full(_)) = mailbox.try_send(make(tx)) {
                self.shared.metrics.limit_hit("api_mailbox");
                tracing::info!(%client, "mailbox full: another node's command skipped");
            }
        }
    }

    /// Posts one command per connection of `target` (`make` builds it around the reply
    /// sender) and waits for every answer until `api.command_timeout`.
    async fn command<T>(
        &self,
        target: &Target,
        make: impl Fn(oneshot::Sender<Result<T, CommandError>>) -> Control,
    ) -> Vec<(String, Result<T, CommandError>)> {
        let size = self.config().api.mailbox_size;
        let posted: Vec<Posted<T>> = self
            .mailboxes(target)
            .into_iter()
            .map(|(client, mailbox)| {
                let (tx, rx) = oneshot::channel();
                match mailbox.try_send(make(tx)) {
                    Ok(()) => Posted::Sent(client, rx),
                    Err(TrySendError::Full(_)) => {
                        self.shared.metrics.limit_hit("api_mailbox");
                        let e = CommandError::new(
                            ErrorCode::OverCapacity,
                            format!(
                                "the connection has {size} server commands waiting \
                                 (api.mailbox_size); this one was not queued"
                            ),
                        );
                        Posted::Refused(client, e)
                    }
                    Err(TrySendError::Closed(_)) => Posted::Refused(client, gone()),
                }
            })
            .collect();
        let deadline = tokio::time::Instant::now() + self.config().api.command_timeout;
        let mut outcomes = Vec::with_capacity(posted.len());
        // Every command is posted before the first wait, so they run concurrently; the one
        // deadline bounds the whole call.
        for p in posted {
            outcomes.push(match p {
                Posted::Refused(client, e) => (client, Err(e)),
                Posted::Sent(client, rx) => {
                    let result = match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(result)) => result,
                        Ok(Err(_)) => Err(gone()),
                        Err(_) => Err(CommandError::new(
                            ErrorCode::Unavailable,
                            "the connection did not answer within api.command_timeout \
                             (the command may still take effect)",
                        )),
                    };
                    (client, result)
                }
            });
        }
        outcomes
    }

    /// Subscribes the connections of `target` on this node to `channel`, each in its own
    /// loop as if the client had subscribed (its queue, recovery, presence and limits:
    /// `limits.max_channels_per_connection`, the node's channel caps), but with no
    /// permission check and no `subscribe` hook: the application decides. Each client is
    /// told with a pushed `subscribed` event carrying the position. One outcome per
    /// connection of this node; a refusal by one does not stop the others. With the Redis
    /// broker the command also goes to every other node (see [`Outcomes::all_nodes`]).
    pub async fn subscribe(
        &self,
        target: &Target,
        channel: &str,
    ) -> Result<Outcomes, CommandError> {
        // Refused once here rather than by every connection.
        self.shared.resolve(channel)?;
        let all_nodes = self
            .tell_other_nodes(Command::Subscribe {
                target: target.clone(),
                channel: channel.to_owned(),
            })
            .await;
        let channel: Arc<str> = channel.into();
        let outcomes = self
            .command(target, |reply| Control::Subscribe {
                channel: channel.clone(),
                reply,
            })
            .await;
        let clients = outcomes
            .into_iter()
            .map(|(client, result)| ClientOutcome {
                client,
                result: result.map(Some),
            })
            .collect();
        Ok(Outcomes { clients, all_nodes })
    }

    /// Unsubscribes the connections of `target` on this node from `channel`, each told
    /// with a pushed `unsubscribed` event; a connection that is not subscribed answers
    /// `not_subscribed`.
    pub async fn unsubscribe(
        &self,
        target: &Target,
        channel: &str,
    ) -> Result<Outcomes, CommandError> {
        crate::channel::validate(channel)
            .map_err(|e| CommandError::new(ErrorCode::BadChannel, e.to_string()))?;
        let all_nodes = self
            .tell_other_nodes(Command::Unsubscribe {
                target: target.clone(),
                channel: channel.to_owned(),
            })
            .await;
        let channel: Arc<str> = channel.into();
        let outcomes = self
            .command(target, |reply| Control::Unsubscribe {
                channel: channel.clone(),
                reply,
            })
            .await;
        let clients = outcomes
            .into_iter()
            .map(|(client, result)| ClientOutcome {
                client,
                result: result.map(|()| None),
            })
            .collect();
        Ok(Outcomes { clients, all_nodes })
    }

    /// Closes the connections of `target` with `code` and `reason`: this node's (counted in
    /// [`Done::here`]) and, with the Redis broker, every other node's.
    pub async fn disconnect(
        &self,
        target: &Target,
        code: u16,
        reason: &str,
    ) -> Result<Done, CommandError> {
        let here = self.disconnect_local(target, code, reason)?;
        let all_nodes = self
            .tell_other_nodes(Command::Disconnect {
                target: target.clone(),
                code,
                reason: reason.to_owned(),
            })
            .await;
        Ok(Done { here, all_nodes })
    }

    /// Closes the connections of `target` on this node; how many.
    pub(crate) fn disconnect_local(
        &self,
        target: &Target,
        code: u16,
        reason: &str,
    ) -> Result<usize, CommandError> {
        if !closable(code) {
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                format!(
                    "code {code} may not be sent: use 1000, 1001, 1008, 1011-1013 or 3000-4999"
                ),
            ));
        }
        if reason.len() > MAX_REASON_BYTES {
            self.shared.metrics.limit_hit("disconnect_reason");
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                format!(
                    "reason is {} bytes; the limit is {MAX_REASON_BYTES}",
                    reason.len()
                ),
            ));
        }
        let peers = match target {
            Target::User(user) => self.shared.registry.of_user(user),
            Target::Client(client) => self.shared.registry.client(client).into_iter().collect(),
        };
        let reason: Arc<str> = reason.into();
        for peer in &peers {
            peer.queue.close(code, reason.clone(), false);
        }
        Ok(peers.len())
    }

    /// Changes the token deadline of every connection of `user`: `Some(exp)` (seconds since
    /// the Unix epoch) extends or shortens it, as a client's `refresh` does; `None` expires
    /// the connections now (closed with 1008 "token expired", as at `exp`). On this node
    /// and, with the Redis broker, on every other node.
    pub async fn refresh_user(&self, user: &str, exp: Option<u64>) -> Done {
        let here = self.refresh_local(user, exp);
        let all_nodes = self
            .tell_other_nodes(Command::Refresh {
                user: user.to_owned(),
                exp,
            })
            .await;
        Done { here, all_nodes }
    }

    /// [`Hub::refresh_user`] on this node; how many connections there were.
    pub(crate) fn refresh_local(&self, user: &str, exp: Option<u64>) -> usize {
        let entries = self.shared.registry.entries_of(user);
        for e in &entries {
            match exp {
                Some(exp) => {
                    e.expiry.send_replace(Some(exp));
                }
                None => {
                    if let Some(peer) = e.peer.upgrade() {
                        peer.queue
                            .close(crate::session::POLICY, "token expired", false);
                    }
                }
            }
        }
        entries.len()
    }

    /// Publishes like [`Hub::publish_with_key`] (`key` is the publication's key); with an
    /// `idempotency_key`, a retry with the same idempotency key on the same channel within
    /// `api.idempotency_window` publishes nothing and returns the first publish's position.
    /// Idempotency keys are remembered by this node (see `docs/api.md`).
    pub async fn publish_idempotent(
        &self,
        channel: &str,
        data: Box<RawValue>,
        key: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<StreamPosition, CommandError> {
        let publication_key = key;
        let Some(key) = idempotency_key else {
            return self.publish_with_key(channel, data, publication_key).await;
        };
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            self.shared.metrics.limit_hit("idempotency_key");
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                format!("idempotency_key must be 1 to {MAX_KEY_BYTES} bytes"),
            ));
        }
        // Checked before the key is remembered, so a bad channel takes no room.
        self.shared.resolve(channel)?;
        let cell = self
            .shared
            .idempotency
            .cell(channel, key, Instant::now())
            .map_err(|Full| {
                self.shared.metrics.limit_hit("idempotency_keys");
                CommandError::new(
                    ErrorCode::OverCapacity,
                    format!(
                        "this node remembers its limit of {} idempotency keys",
                        self.config().api.max_idempotency_keys
                    ),
                )
            })?;
        // The node's cell makes concurrent calls here one; the broker's claim makes calls
        // through different nodes one (Redis; the memory broker has one node).
        let pos = cell
            .get_or_try_init(|| self.publish_claimed(channel, data, publication_key, key))
            .await?;
        Ok(pos.clone())
    }

    /// Publishes once per idempotency key across nodes: claims the key with the broker,
    /// publishes and records the position; a key claimed by an earlier call answers its
    /// position, waiting (until `api.command_timeout`) while that publish still runs.
    async fn publish_claimed(
        &self,
        channel: &str,
        data: Box<RawValue>,
        publication_key: Option<&str>,
        key: &str,
    ) -> Result<StreamPosition, CommandError> {
        let window = self.config().api.idempotency_window;
        let broker = &self.shared.broker;
        let deadline = tokio::time::Instant::now() + self.config().api.command_timeout;
        loop {
            let claim = broker
                .claim_idempotency(channel, key, window)
                .await
                .map_err(|e| self.shared.broker_error(e))?;
            match claim {
                None => return self.publish_with_key(channel, data, publication_key).await,
                Some(Claim::First) => {
                    let result = self.publish_with_key(channel, data, publication_key).await;
                    let settled = broker
                        .settle_idempotency(channel, key, result.as_ref().ok(), window)
                        .await;
                    if let Err(e) = settled {
                        tracing::warn!(channel, error = %e, "idempotency key not recorded");
                    }
                    return result;
                }
                Some(Claim::Done(position)) => return Ok(position),
                Some(Claim::Pending) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(CommandError::new(
                            ErrorCode::Unavailable,
                            "a publish with this idempotency key is still running; retry",
                        ));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Publishes one `data` to each of `channels` (at most `api.max_broadcast_channels`,
    /// no duplicates); one result per channel, in order. A failure on one channel does not
    /// stop the others.
    pub async fn broadcast(
        &self,
        channels: &[String],
        data: Box<RawValue>,
        key: Option<&str>,
    ) -> Result<Vec<Result<StreamPosition, CommandError>>, CommandError> {
        let max = self.config().api.max_broadcast_channels;
        if channels.len() > max {
            self.shared.metrics.limit_hit("broadcast_channels");
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                format!(
                    "broadcast names {} channels; the limit is {max}",
                    channels.len()
                ),
            ));
        }
        if channels.is_empty() {
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                "broadcast needs at least one channel",
            ));
        }
        let mut seen = HashSet::with_capacity(channels.len());
        if let Some(dup) = channels.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                format!("channel {dup:?} appears twice"),
            ));
        }
        let data: Arc<RawValue> = Arc::from(data);
        let mut results = Vec::with_capacity(channels.len());
        for channel in channels {
            let result = match self.shared.resolve(channel) {
                Ok(ns) => {
                    self.shared
                        .publish(channel, &ns, data.clone(), None, key)
                        .await
                }
                Err(e) => Err(e),
            };
            results.push(result);
        }
        Ok(results)
    }

    /// The channel's history and position, read atomically by the broker.
    pub async fn history(
        &self,
        channel: &str,
        request: HistoryRequest,
    ) -> Result<HistoryResult, CommandError> {
        let ns = self.shared.resolve(channel)?;
        let max = self.config().api.max_history_limit;
        if request.limit.is_some_and(|l| l > max) {
            self.shared.metrics.limit_hit("history_limit");
            return Err(CommandError::new(
                ErrorCode::BadRequest,
                format!("limit is above api.max_history_limit ({max})"),
            ));
        }
        let limit = request
            .limit
            .unwrap_or(ns.history_size)
            .min(ns.history_size)
            .min(max);
        let (h, complete) = self
            .shared
            .history_since(channel, &ns, request.since.as_ref(), limit)
            .await
            .map_err(|e| self.shared.broker_error(e))?;
        let mut publications = h.publications;
        if request.reverse {
            publications.reverse();
        }
        Ok(HistoryResult {
            position: h.position,
            publications,
            complete,
        })
    }

    /// Who is subscribed to `channel` on every node (namespaces with `presence` on).
    pub async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, CommandError> {
        let ns = self.shared.resolve(channel)?;
        if !ns.presence {
            return Err(CommandError::new(
                ErrorCode::PresenceDisabled,
                format!("presence is off for {channel:?}"),
            ));
        }
        self.shared
            .broker
            .presence(channel)
            .await
            .map_err(|e| self.shared.broker_error(e))
    }

    /// How many connections and distinct users are subscribed to `channel`.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, CommandError> {
        Ok(PresenceStats::of(&self.presence(channel).await?))
    }

    /// Channels with subscribers whose name matches `pattern` (`*` any run of characters,
    /// `?` one character; at most `api.max_pattern_bytes`), sorted by name: this node's and,
    /// with the Redis broker, every node's (`subscribers` counts this node's, 0 for a
    /// channel subscribed only elsewhere).
    pub async fn channels_matching(
        &self,
        pattern: Option<&str>,
    ) -> Result<Vec<ChannelInfo>, CommandError> {
        let max = self.config().api.max_pattern_bytes;
        if let Some(p) = pattern {
            if p.len() > max {
                self.shared.metrics.limit_hit("channel_pattern");
                return Err(CommandError::new(
                    ErrorCode::BadRequest,
                    format!("pattern is {} bytes; the limit is {max}", p.len()),
                ));
            }
        }
        let mut all = self.channels();
        let elsewhere = self
            .shared
            .broker
            .channels()
            .await
            .map_err(|e| self.shared.broker_error(e))?;
        if let Some(names) = elsewhere {
            let local: HashSet<String> = all.iter().map(|c| c.channel.clone()).collect();
            let mut names: Vec<String> = names
                .into_iter()
                // Internal channels (the control channel) are not channel names.
                .filter(|n| crate::channel::validate(n).is_ok() && !local.contains(n))
                .collect();
            names.sort_unstable();
            names.dedup();
            all.extend(names.into_iter().map(|channel| ChannelInfo {
                channel,
                subscribers: 0,
            }));
            all.sort_by(|a, b| a.channel.cmp(&b.channel));
        }
        if let Some(p) = pattern {
            all.retain(|c| glob_match(p, &c.channel));
        }
        Ok(all)
    }

    /// This node's numbers, as [`Hub::info`] and its heartbeats show them.
    pub(crate) fn node_info(&self) -> NodeInfo {
        let s = self.stats();
        NodeInfo {
            node: s.node,
            version: s.version.to_owned(),
            connections: s.connections,
            users: self.shared.registry.users() as u64,
            subscriptions: s.subscriptions,
            channels: s.channels,
            uptime_seconds: s.uptime_seconds,
        }
    }

    /// The nodes of the hub, sorted by id: this one and, with the Redis broker, every node
    /// heard from within the last three heartbeats.
    pub fn info(&self) -> Vec<NodeInfo> {
        let mut nodes = self.shared.nodes.live();
        nodes.retain(|n| n.node != self.shared.node_id);
        nodes.push(self.node_info());
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        nodes
    }
}

fn gone() -> CommandError {
    CommandError::new(ErrorCode::Unavailable, "the connection closed")
}

/// Whether `text` matches the glob `pattern` (`*` any run, `?` one character, every other
/// character itself). Iterative with one backtrack point: O(pattern × text) at worst.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_matches_stars_and_question_marks() {
        let cases = [
            ("*", "", true),
            ("*", "news", true),
            ("news", "news", true),
            ("news", "new", false),
            ("chat:*", "chat:room", true),
            ("chat:*", "news", false),
            ("*:room", "chat:room", true),
            ("c?at:*m", "chat:room", true),
            ("c?at:*m", "chat:roo", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "x", true),
            ("?", "", false),
            ("é?", "éa", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p:?} vs {t:?}");
        }
    }

    #[test]
    fn glob_with_many_stars_stays_fast() {
        let p = "*a".repeat(128);
        let t = "a".repeat(255) + "b";
        let started = std::time::Instant::now();
        assert!(!glob_match(&p, &t));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod mailbox_tests {
    use std::time::Duration;

    use super::Target;
    use crate::auth::Identity;
    use crate::protocol::ErrorCode;
    use crate::session::Session;
    use crate::{Config, Hub};

    #[tokio::test]
    async fn a_full_mailbox_is_refused_and_counted_and_every_wait_has_a_deadline() {
        let mut config = Config::default();
        config.demo.ticker = false;
        config.api.mailbox_size = 1;
        config.api.command_timeout = Duration::from_millis(100);
        let hub = Hub::new(config).unwrap();
        // No connection loop drains this session's mailbox.
        let session = Session::new(hub.shared.clone(), Identity::default());
        let target = Target::Client(session.peer().id.to_string());
        let started = std::time::Instant::now();
        let first = hub.subscribe(&target, "news").await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        let code = |o: &super::Outcomes| o.clients[0].result.as_ref().unwrap_err().code;
        assert_eq!(code(&first), ErrorCode::Unavailable, "{first:?}");
        // The first command still waits in the mailbox of one.
        let second = hub.unsubscribe(&target, "news").await.unwrap();
        assert_eq!(code(&second), ErrorCode::OverCapacity, "{second:?}");
        let metrics = hub.shared.metrics.render();
        assert!(
            metrics.contains("duplex_limit_hits_total{limit=\"api_mailbox\"} 1"),
            "{metrics}"
        );
        drop(session);
        assert!(hub
            .subscribe(&target, "news")
            .await
            .unwrap()
            .clients
            .is_empty());
    }
}
