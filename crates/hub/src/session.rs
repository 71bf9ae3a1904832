//! One connection's command handling, independent of the socket.
//!
//! The connection driver feeds each incoming text message to [`Session::on_text`]; everything
//! the session wants to send goes into the peer's outbound queue, which the driver's writer
//! drains. Commands run one at a time, so replies leave in command order.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::value::RawValue;

use crate::api::registry::{Control, Inbox, Mailbox};
use crate::api::PresenceStats;
use crate::auth::{AuthError, Identity, MAX_INFO_SIZE};
use crate::broker::{HistoryQuery, PresenceEntry, StreamPosition};
use crate::channel;
use crate::config::NamespaceConfig;
use crate::frame::Frame;
use crate::hooks::events::Kind;
use crate::hooks::wire::{
    PublishRequest, PublishResult, RpcRequest, SubscribeRequest, SubscribeResult,
};
use crate::hooks::{self, Context, Hook, Verdict};
use crate::hub::{retention, Shared};
use crate::node::{GoLive, Peer, Policy};
use crate::protocol::{self, Command, CommandError, ErrorCode, Since};
use crate::queue::{Outbound, Pushed};

/// Close code for policy violations (RFC 6455 §7.4.1).
pub(crate) const POLICY: u16 = 1008;

/// The window over which `limits.max_errors` is counted.
const ERROR_WINDOW: Duration = Duration::from_secs(10);

/// Largest page of a paged reply (`history`, `presence`), in bytes of array items.
const MAX_PAGE_BYTES: usize = 256 * 1024;

/// The page size for a queue of `max_queue_bytes`: a quarter of it (so a page waits for the
/// queue to be three quarters drained, not empty), at most [`MAX_PAGE_BYTES`].
pub(crate) fn page_bytes(max_queue_bytes: usize) -> usize {
    (max_queue_bytes / 4).clamp(1, MAX_PAGE_BYTES)
}

/// The queue closed while a reply was being sent (slow consumer, shutdown, token expiry):
/// the rest of the reply is not sent.
#[derive(Debug)]
struct Gone;

/// Who asked for a subscription: the client with a command (answered with a `reply`, its
/// hook asked first), or the application through its `connect` hook (announced with a
/// `subscribed` frame; the application has already decided, so no hook and no token check).
#[derive(Debug, Clone, Copy)]
enum Asker {
    Client(Option<u64>),
    Backend,
}

#[derive(Debug)]
struct Subscription {
    presence: bool,
    join_leave: bool,
}

/// The state of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    hub: Arc<Shared>,
    peer: Arc<Peer>,
    identity: Identity,
    subscriptions: HashMap<Arc<str>, Subscription>,
    /// What the hooks of this connection are told about it.
    context: Context,
    commands: DefaultDirectRateLimiter,
    errors: DefaultDirectRateLimiter,
    /// The connection token's `exp`; the connection task closes the connection when it
    /// passes and re-arms its timer when a `refresh` changes it.
    expiry: tokio::sync::watch::Sender<Option<u64>>,
    /// The receiving end of the connection's mailbox until the connection task takes it.
    mailbox: Option<Inbox>,
}

/// Seconds from now until `exp` (0 once it has passed).
fn seconds_until(exp: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    exp.saturating_sub(now)
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl Session {
    /// A session for a connection from loopback without hook headers; queues `welcome`.
    #[cfg(test)]
    pub(crate) fn new(hub: Arc<Shared>, identity: Identity) -> Self {
        let id = hub.new_client_id();
        let context = Context {
            headers: axum::http::HeaderMap::new(),
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
        };
        Self::accepted(hub, identity, id, context)
    }

    /// A session for an accepted connection with client id `id` (its `connect` hook, if
    /// any, has allowed it); queues the `welcome` frame.
    pub(crate) fn accepted(
        hub: Arc<Shared>,
        identity: Identity,
        id: Arc<str>,
        context: Context,
    ) -> Self {
        let limits = &hub.config.limits;
        let peer = Arc::new(Peer {
            id,
            queue: Outbound::with_gauge(limits.max_queue_bytes, hub.metrics.queued_bytes.clone()),
        });
        let commands = RateLimiter::direct_with_clock(
            Quota::per_second(nonzero(limits.commands_per_second))
                .allow_burst(nonzero(limits.commands_burst)),
            hub.clock.clone(),
        );
        let per_error = ERROR_WINDOW / limits.max_errors.max(1);
        let errors = RateLimiter::direct_with_clock(
            Quota::with_period(per_error)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(nonzero(limits.max_errors)),
            hub.clock.clone(),
        );
        let ping_ms =
            u64::try_from(hub.config.websocket.ping_interval.as_millis()).unwrap_or(u64::MAX);
        let welcome = protocol::welcome(
            &peer.id,
            identity.user.as_deref(),
            &hub.node_id,
            ping_ms,
            identity.expires_at.map(seconds_until),
        );
        peer.queue.push(Frame::text(welcome), false);
        let expiry = tokio::sync::watch::Sender::new(identity.expires_at);
        let mailbox = Mailbox::new(hub.config.api.mailbox_size);
        hub.registry
            .add(&peer, identity.user.as_ref(), &expiry, &mailbox);
        Self {
            hub,
            peer,
            identity,
            subscriptions: HashMap::new(),
            context,
            commands,
            errors,
            expiry,
            mailbox: Some(Inbox(mailbox)),
        }
    }

    /// The connection's mailbox of server API commands, once (the connection task reads
    /// it). It ends when the session leaves the registry.
    pub(crate) fn take_mailbox(&mut self) -> Option<Inbox> {
        self.mailbox.take()
    }

    /// Runs one server API command on this connection, between the client's commands: a
    /// subscription made here is like the client's own (queue, recovery, presence, every
    /// limit) but needs no permission, and is announced with a pushed `subscribed` (with
    /// the position, so the client can recover later) or `unsubscribed` event. The result
    /// goes back to the API call (which may have stopped waiting: then it is dropped).
    pub(crate) async fn on_control(&mut self, control: Control) {
        match control {
            Control::Subscribe { channel, reply } => {
                let result = self
                    .subscribe(Asker::Backend, &channel, None, None, None)
                    .await
                    .and_then(|pos| {
                        pos.ok_or_else(|| CommandError::new(ErrorCode::Internal, "not subscribed"))
                    });
                let _ = reply.send(result);
            }
            Control::Unsubscribe { channel, reply } => {
                let result = self.server_unsubscribe(&channel).await;
                let _ = reply.send(result);
            }
        }
    }

    async fn server_unsubscribe(&mut self, channel: &str) -> Result<(), CommandError> {
        crate::channel::validate(channel)
            .map_err(|e| CommandError::new(ErrorCode::BadChannel, e.to_string()))?;
        let Some(sub) = self.subscriptions.remove(channel) else {
            return Err(CommandError::new(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel:?}"),
            ));
        };
        self.leave(channel, &sub).await;
        self.send(protocol::server_unsubscribed(channel)).await;
        Ok(())
    }

    /// The connection token's `exp`, as it changes.
    pub(crate) fn expiry(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.expiry.subscribe()
    }

    /// `refresh`: a new connection token for the same user replaces the current one, its
    /// claims (`channels`, `publish`, `info`) govern the commands that follow (existing
    /// subscriptions stay), and its `exp` becomes the connection's deadline.
    async fn refresh(&mut self, id: Option<u64>, token: &str) -> Result<(), CommandError> {
        let Some(user) = self.identity.user.clone() else {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "an anonymous connection has no token to refresh",
            ));
        };
        let identity = self.hub.auth.authenticate(Some(token)).await.map_err(|e| {
            let code = if e == AuthError::KeysUnavailable {
                ErrorCode::Unavailable
            } else {
                ErrorCode::Forbidden
            };
            CommandError::new(code, format!("token refused: {e}"))
        })?;
        if identity.user.as_deref() != Some(&*user) {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "the token is for another user (refresh keeps the connection's user)",
            ));
        }
        let expires_at = identity.expires_at;
        self.identity = identity;
        self.expiry.send_replace(expires_at);
        let expires_in = expires_at.map_or(0, seconds_until);
        self.send(protocol::refreshed(id, expires_in)).await;
        Ok(())
    }

    /// The outbound side, for the writer.
    pub(crate) fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    /// The connection's identity.
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// What the hooks of this connection are told about it.
    pub(crate) fn context(&self) -> &Context {
        &self.context
    }

    /// Handles one text message.
    pub(crate) async fn on_text(&mut self, text: &str) {
        let max_depth = self.hub.config.limits.max_json_depth;
        let (id, command) = match protocol::parse_command_limited(text, max_depth) {
            Ok(parsed) => parsed,
            Err((id, err)) => {
                if err.code == ErrorCode::TooDeep {
                    self.hub.metrics.limit_hit("json_depth");
                }
                return self.fail(id, err).await;
            }
        };
        if self.commands.check().is_err() {
            return self
                .fail(
                    id,
                    CommandError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "more than {} commands per second",
                            self.hub.config.limits.commands_per_second
                        ),
                    ),
                )
                .await;
        }
        let kind = command.kind();
        let started = Instant::now();
        let result = self.execute(id, command).await;
        self.hub
            .metrics
            .command_duration(kind, started.elapsed().as_secs_f64());
        if let Err(err) = result {
            self.fail(id, err).await;
        }
    }

    /// Handles one binary message: not part of the protocol.
    pub(crate) async fn on_binary(&mut self) {
        self.fail(
            None,
            CommandError::new(
                ErrorCode::BadJson,
                "binary frames are not supported; send JSON text",
            ),
        )
        .await;
    }

    /// Queues one frame answering this connection's own command. It waits for room in the
    /// queue (up to `limits.max_reply_wait`) rather than overflowing it, so a reply bigger
    /// than the free room is delayed, not fatal; a client that reads nothing meanwhile is
    /// closed with 1013, counted like every slow consumer. `Err` once the queue is closed.
    async fn send_frame(&self, frame: Frame) -> Result<(), Gone> {
        let deadline = tokio::time::Instant::now() + self.hub.config.limits.max_reply_wait;
        match self.peer.queue.push_wait(frame, deadline).await {
            Pushed::Queued { .. } => Ok(()),
            Pushed::Overflow => {
                self.hub.metrics.slow_consumer_disconnect();
                tracing::info!(client = %self.peer.id, "reply not read in time: closed with 1013");
                Err(Gone)
            }
            Pushed::Closed | Pushed::Discarded => Err(Gone),
        }
    }

    async fn send(&self, json: String) {
        let _ = self.send_frame(Frame::text(json)).await;
    }

    /// Sends the pages of a paged reply one by one as the queue drains.
    async fn send_pages(&self, pages: impl Iterator<Item = String>) {
        for page in pages {
            if self.send_frame(Frame::text(page)).await.is_err() {
                return;
            }
        }
    }

    fn page_bytes(&self) -> usize {
        page_bytes(self.hub.config.limits.max_queue_bytes)
    }

    async fn fail(&mut self, id: Option<u64>, err: CommandError) {
        self.hub.metrics.command_error(err.code);
        self.send(protocol::error(id, &err)).await;
        if self.errors.check().is_err() {
            tracing::info!(client = %self.peer.id, "closing: too many errors");
            self.peer.queue.close(POLICY, "too many errors", false);
        }
    }

    async fn execute(&mut self, id: Option<u64>, command: Command<'_>) -> Result<(), CommandError> {
        match command {
            Command::Ping => {
                self.send(protocol::pong(id)).await;
                Ok(())
            }
            Command::Subscribe {
                channel,
                since,
                info,
                token,
            } => self
                .subscribe(Asker::Client(id), &channel, since, info, token)
                .await
                .map(drop),
            Command::Unsubscribe { channel } => self.unsubscribe(id, &channel).await,
            Command::Refresh { token } => self.refresh(id, &token).await,
            Command::Publish { channel, data, key } => {
                self.publish(id, &channel, data, key.as_deref()).await
            }
            Command::Presence { channel } => self.presence(id, &channel).await,
            Command::PresenceStats { channel } => self.presence_stats(id, &channel).await,
            Command::History {
                channel,
                limit,
                since,
            } => self.history(id, &channel, limit, since).await,
            Command::Rpc { method, data } => self.rpc(id, &method, data).await,
        }
    }

    /// A personal channel (namespace option `personal`) is only for the users it names.
    fn check_personal(&self, ns: &NamespaceConfig, channel: &str) -> Result<(), CommandError> {
        if ns.personal && !channel::personal_allows(channel, self.identity.user.as_deref()) {
            self.hub.metrics.limit_hit("personal_channel");
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                format!("channel {channel:?} is personal to other users"),
            ));
        }
        Ok(())
    }

    fn readable(&self, channel: &str) -> Result<NamespaceConfig, CommandError> {
        let ns = self.hub.resolve(channel)?;
        self.check_personal(&ns, channel)?;
        if !self.granted(&ns, channel) && !self.identity.may_subscribe(channel) {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                format!("the token does not allow channel {channel:?}"),
            ));
        }
        Ok(ns)
    }

    /// Subscribes the connection to the channels its `connect` hook named, each announced
    /// with a `subscribed` frame. A channel that cannot be subscribed (an unknown namespace,
    /// the node's channel cap) is logged and skipped: the connection is already allowed.
    pub(crate) async fn subscribe_server_side(&mut self, channels: &[String]) {
        for channel in channels {
            if self.peer.queue.is_closed() {
                return;
            }
            if let Err(e) = self
                .subscribe(Asker::Backend, channel, None, None, None)
                .await
            {
                tracing::info!(client = %self.peer.id, channel, error = %e,
                    "server-side subscription of the connect hook skipped");
            }
        }
    }

    /// Asks the hook `hook` of `namespace`, if it has one: `Ok(None)` when there is none,
    /// `Ok(Some(result))` when it allows. A denial is `forbidden` with the application's
    /// message; a `disconnect` closes the connection (and ends the command without a reply);
    /// a failure is its error code.
    async fn ask<B, T>(
        &self,
        hook: Hook,
        namespace: &str,
        body: &B,
    ) -> Result<Option<T>, Option<CommandError>>
    where
        B: serde::Serialize + Sync,
        T: serde::de::DeserializeOwned + hooks::Check + Send,
    {
        let Some(uri) = self.hub.hooks.endpoint(hook, namespace) else {
            return Ok(None);
        };
        match self.hub.hooks.call(hook, uri, &self.context, body).await {
            Ok(Verdict::Allow(result)) => Ok(Some(result)),
            Ok(Verdict::Deny(message)) => {
                let message = if message.is_empty() {
                    format!("the application refused this {}", hook.as_str())
                } else {
                    message
                };
                Err(Some(CommandError::new(ErrorCode::Forbidden, message)))
            }
            Ok(Verdict::Disconnect(code, reason)) => {
                tracing::debug!(client = %self.peer.id, code, "disconnected by the application");
                self.peer.queue.close(code, reason, false);
                Err(None)
            }
            Err(e) => Err(Some(e.command_error())),
        }
    }

    /// Whether a subscription token granted this connection `channel`: it is subscribed to
    /// it in a `subscription_token` namespace. Such a channel may then be read (presence,
    /// history) and, where clients may publish, published to, whatever the connection
    /// token's `channels` and `publish` claims say.
    fn granted(&self, ns: &NamespaceConfig, channel: &str) -> bool {
        ns.subscription_token && self.subscriptions.contains_key(channel)
    }

    /// The subscribe checks of a `subscription_token` namespace: the token is present,
    /// verifies, names `channel` and this connection's user. Returns the token's `info`.
    async fn check_subscription_token(
        &self,
        channel: &str,
        token: Option<&str>,
    ) -> Result<Option<Arc<RawValue>>, CommandError> {
        let Some(token) = token else {
            self.hub.metrics.subscription_token_refused();
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                format!("channel {channel:?} needs a subscription token (\"token\")"),
            ));
        };
        let user = self.identity.user.as_deref();
        self.hub
            .auth
            .verify_subscription(token, user, channel)
            .await
            .map_err(|e| {
                self.hub.metrics.subscription_token_refused();
                let code = if e == AuthError::KeysUnavailable {
                    ErrorCode::Unavailable
                } else {
                    ErrorCode::Forbidden
                };
                CommandError::new(code, format!("subscription token refused: {e}"))
            })
    }

    async fn subscribe(
        &mut self,
        asker: Asker,
        channel: &str,
        since: Option<Since>,
        info: Option<&RawValue>,
        token: Option<String>,
    ) -> Result<Option<StreamPosition>, CommandError> {
        let ns = self.hub.resolve(channel)?;
        self.check_personal(&ns, channel)?;
        // RFC 7519 §7.2 checks happen in `verify_subscription`; the token is checked before
        // anything else is looked at, so a refused one costs no broker round trip. The
        // application's own server-side subscriptions need neither token nor claims.
        let granted_info = match asker {
            Asker::Backend => None,
            Asker::Client(_) if ns.subscription_token => {
                self.check_subscription_token(channel, token.as_deref())
                    .await?
            }
            Asker::Client(_) => {
                // A token where none is needed is ignored (it grants nothing more).
                self.readable(channel)?;
                None
            }
        };
        if self.subscriptions.contains_key(channel) {
            return Err(CommandError::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to {channel:?}"),
            ));
        }
        let max = self.hub.config.limits.max_channels_per_connection;
        if self.subscriptions.len() >= max {
            return Err(CommandError::new(
                ErrorCode::TooManyChannels,
                format!("at most {max} channels per connection"),
            ));
        }
        if info.is_some_and(|i| i.get().len() > MAX_INFO_SIZE) {
            return Err(CommandError::new(
                ErrorCode::TooLarge,
                format!("info is above {MAX_INFO_SIZE} bytes"),
            ));
        }
        self.hub.check_create(channel, &ns, &self.identity, true)?;
        let mut since = since;
        let mut hook_info: Option<Arc<RawValue>> = None;
        if let Asker::Client(_) = asker {
            let body = SubscribeRequest {
                client: &self.peer.id,
                user: self.identity.user.as_deref(),
                channel,
                info,
                recover: since.is_some(),
            };
            let namespace = crate::channel::namespace_of(channel);
            match self
                .ask::<_, SubscribeResult>(Hook::Subscribe, namespace, &body)
                .await
            {
                Ok(None) => {}
                Ok(Some(result)) => {
                    if result.recover == Some(false) {
                        since = None;
                    }
                    hook_info = result.info.map(Arc::from);
                }
                Err(Some(e)) => return Err(e),
                Err(None) => return Ok(None),
            }
        }
        let hub = self.hub.clone();
        let policy = Policy::of(&ns, hub.config.limits.max_queue_bytes);
        hub.node
            .add(&*hub.broker, channel, &self.peer, policy)
            .await
            .map_err(|e| self.hub.broker_error(e))?;
        // From here on, publications to the channel are held for this peer until `go_live`.
        // Without `since`, a `latest_on_subscribe` namespace reads its retained history in
        // the same atomic step as the position, for the latest values.
        let mut latest = since.is_none() && ns.latest_on_subscribe;
        let query = HistoryQuery {
            since: since.as_ref().map(|s| s.offset),
            limit: Some(if since.is_some() || latest {
                ns.history_size
            } else {
                0
            }),
        };
        let mut history = match hub.broker.history(channel, query, retention(&ns)).await {
            Ok(h) => h,
            Err(e) => {
                hub.node.remove(&*hub.broker, channel, &self.peer).await;
                return Err(unavailable(e));
            }
        };
        let recovered = since
            .as_ref()
            .is_some_and(|s| *s.epoch == *history.position.epoch && history.complete);
        if since.is_some() && !recovered && ns.latest_on_subscribe {
            // Nothing to recover from (another epoch, or the window passed): the client
            // starts afresh, so it gets the latest values as without `since`, read again
            // with their position (deliveries after either read are held, so the newer
            // position is as gap-free).
            let fresh = HistoryQuery {
                since: None,
                limit: Some(ns.history_size),
            };
            history = match hub.broker.history(channel, fresh, retention(&ns)).await {
                Ok(h) => h,
                Err(e) => {
                    hub.node.remove(&*hub.broker, channel, &self.peer).await;
                    return Err(unavailable(e));
                }
            };
            latest = true;
        }
        // The reply, then the replay one publication at a time as the queue drains, while
        // live deliveries are still held (bounded by `max_held`, like a queue); then the held
        // ones, also as room frees up. Nothing here overflows the queue by itself.
        let reply = match asker {
            Asker::Client(id) => protocol::subscribed(id, channel, &history.position, recovered),
            Asker::Backend => protocol::server_subscribed(channel, &history.position),
        };
        let mut sent = self.send_frame(Frame::text(reply)).await;
        let replay = if recovered {
            history.publications.as_slice()
        } else {
            &[]
        };
        // A latest value older than the position (its successors expired or were trimmed
        // first) would take the client back in the stream: none is sent then.
        let current = history
            .publications
            .last()
            .is_some_and(|p| p.offset == history.position.offset);
        let latest_values = if latest && current {
            latest_per_key(&history.publications)
        } else {
            Vec::new()
        };
        if recovered || latest {
            let publications = replay.iter().chain(latest_values.iter().copied());
            for p in publications {
                if sent.is_err() {
                    break;
                }
                let frame = Frame::text(protocol::message(channel, p));
                sent = self.send_frame(frame).await;
            }
        }
        let after = history.position.offset;
        while let GoLive::NeedRoom(bytes) = hub.node.go_live(channel, &self.peer, after) {
            let deadline = tokio::time::Instant::now() + hub.config.limits.max_reply_wait;
            match self.peer.queue.wait_room(bytes, deadline).await {
                Ok(()) => {}
                Err(pushed) => {
                    // Closed: `go_live` has nothing left to do but stop holding.
                    hub.node.count(&self.peer, pushed);
                    let _ = hub.node.go_live(channel, &self.peer, after);
                    break;
                }
            }
        }
        // Recorded even when the connection is closing, so `finish` removes it from the node.
        let key: Arc<str> = channel.into();
        let user = self.identity.user.as_ref();
        hub.hooks
            .emit(Kind::Subscribe, &self.peer.id, user, Some(channel));
        self.subscriptions.insert(
            key,
            Subscription {
                presence: ns.presence,
                join_leave: ns.presence && ns.join_leave,
            },
        );
        if ns.presence {
            let entry = PresenceEntry {
                client: self.peer.id.clone(),
                user: self.identity.user.clone(),
                // The backend's word first (subscribe hook, subscription token, then
                // connection token), the client's own last.
                info: hook_info
                    .or(granted_info)
                    .or_else(|| self.identity.info.clone())
                    .or_else(|| {
                        info.and_then(|i| RawValue::from_string(i.get().to_owned()).ok())
                            .map(Arc::from)
                    }),
            };
            let announce = ns.join_leave;
            if let Err(e) = hub.broker.presence_add(channel, entry, announce).await {
                tracing::warn!(channel, error = %e, "presence add failed");
            }
        }
        Ok(Some(history.position))
    }

    async fn unsubscribe(&mut self, id: Option<u64>, channel: &str) -> Result<(), CommandError> {
        crate::channel::validate(channel)
            .map_err(|e| CommandError::new(ErrorCode::BadChannel, e.to_string()))?;
        let Some(sub) = self.subscriptions.remove(channel) else {
            return Err(CommandError::new(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {channel:?}"),
            ));
        };
        self.leave(channel, &sub).await;
        self.send(protocol::unsubscribed(id, channel)).await;
        Ok(())
    }

    async fn leave(&self, channel: &str, sub: &Subscription) {
        leave(&self.hub, &self.peer, channel, sub).await;
        let user = self.identity.user.as_ref();
        self.hub
            .hooks
            .emit(Kind::Unsubscribe, &self.peer.id, user, Some(channel));
    }

    async fn publish(
        &mut self,
        id: Option<u64>,
        channel: &str,
        data: &RawValue,
        key: Option<&str>,
    ) -> Result<(), CommandError> {
        let ns = self.hub.resolve(channel)?;
        self.check_personal(&ns, channel)?;
        if !ns.client_publish {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                format!("clients may not publish to {channel:?}"),
            ));
        }
        if !self.granted(&ns, channel) && !self.identity.may_publish(channel) {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                format!("the token does not allow publishing to {channel:?}"),
            ));
        }
        let max = self.hub.config.limits.max_publication_size;
        if data.get().len() > max {
            return Err(CommandError::new(
                ErrorCode::TooLarge,
                format!("data is {} bytes; the limit is {max}", data.get().len()),
            ));
        }
        let mut data: Arc<RawValue> = Arc::from(
            RawValue::from_string(data.get().to_owned())
                .map_err(|e| CommandError::new(ErrorCode::Internal, e.to_string()))?,
        );
        self.hub.check_create(channel, &ns, &self.identity, false)?;
        let body = PublishRequest {
            client: &self.peer.id,
            user: self.identity.user.as_deref(),
            channel,
            data: &data,
        };
        let namespace = crate::channel::namespace_of(channel);
        match self
            .ask::<_, PublishResult>(Hook::Publish, namespace, &body)
            .await
        {
            Ok(None) => {}
            // The replacement is held to the same size and depth limits by `Shared::publish`.
            Ok(Some(result)) => {
                if let Some(replaced) = result.data {
                    data = Arc::from(replaced);
                }
            }
            Err(Some(e)) => return Err(e),
            Err(None) => return Ok(()),
        }
        let from = self
            .identity
            .user
            .clone()
            .unwrap_or_else(|| self.peer.id.clone());
        let pos = self
            .hub
            .publish(channel, &ns, data, Some(from), key)
            .await?;
        self.send(protocol::published(id, channel, &pos)).await;
        Ok(())
    }

    /// The channel's presence entries, for a client allowed to read the channel.
    async fn presence_of(&self, channel: &str) -> Result<Vec<PresenceEntry>, CommandError> {
        let ns = self.readable(channel)?;
        if !ns.presence {
            return Err(CommandError::new(
                ErrorCode::PresenceDisabled,
                format!("presence is off for {channel:?}"),
            ));
        }
        self.hub.broker.presence(channel).await.map_err(unavailable)
    }

    async fn presence(&mut self, id: Option<u64>, channel: &str) -> Result<(), CommandError> {
        let clients = self.presence_of(channel).await?;
        let pages = protocol::presence_pages(id, channel, &clients, self.page_bytes());
        self.send_pages(pages).await;
        Ok(())
    }

    async fn presence_stats(&mut self, id: Option<u64>, channel: &str) -> Result<(), CommandError> {
        let stats = PresenceStats::of(&self.presence_of(channel).await?);
        let reply = protocol::presence_stats(id, channel, stats.clients, stats.users);
        self.send(reply).await;
        Ok(())
    }

    async fn history(
        &mut self,
        id: Option<u64>,
        channel: &str,
        limit: Option<usize>,
        since: Option<Since>,
    ) -> Result<(), CommandError> {
        let ns = self.readable(channel)?;
        let limit = limit.unwrap_or(ns.history_size).min(ns.history_size);
        let (h, complete) = self
            .hub
            .history_since(channel, &ns, since.as_ref(), limit)
            .await
            .map_err(unavailable)?;
        let pages = protocol::history_pages(
            id,
            channel,
            &h.position,
            &h.publications,
            complete,
            self.page_bytes(),
        );
        self.send_pages(pages).await;
        Ok(())
    }

    /// `rpc`: the application's `rpc` hook answers; its `result` is the reply's.
    async fn rpc(
        &mut self,
        id: Option<u64>,
        method: &str,
        data: Option<&RawValue>,
    ) -> Result<(), CommandError> {
        let data = data.unwrap_or(RawValue::NULL);
        let max = self.hub.config.limits.max_publication_size;
        if data.get().len() > max {
            return Err(CommandError::new(
                ErrorCode::TooLarge,
                format!("data is {} bytes; the limit is {max}", data.get().len()),
            ));
        }
        // A method is namespaced like a channel: `chat:kick` asks `chat`'s hook, if it has one.
        let namespace = crate::channel::namespace_of(method);
        if self.hub.hooks.endpoint(Hook::Rpc, namespace).is_none() {
            return Err(CommandError::new(
                ErrorCode::NotAvailable,
                format!("no rpc hook answers {method:?}"),
            ));
        }
        let body = RpcRequest {
            client: &self.peer.id,
            user: self.identity.user.as_deref(),
            method,
            data,
        };
        match self
            .ask::<_, Box<RawValue>>(Hook::Rpc, namespace, &body)
            .await
        {
            Ok(Some(result)) => {
                self.send(protocol::rpc_result(id, &result)).await;
                Ok(())
            }
            Ok(None) | Err(None) => Ok(()),
            Err(Some(e)) => Err(e),
        }
    }

    /// Leaves every channel (with `leave` events). Call once when the connection ends.
    pub(crate) async fn finish(&mut self) {
        let subs: Vec<_> = self.subscriptions.drain().collect();
        for (channel, sub) in subs {
            self.leave(&channel, &sub).await;
        }
    }
}

/// Takes `peer` out of `channel` on this node and out of its presence.
async fn leave(hub: &Shared, peer: &Arc<Peer>, channel: &str, sub: &Subscription) {
    hub.node.remove(&*hub.broker, channel, peer).await;
    if sub.presence {
        if let Err(e) = hub
            .broker
            .presence_remove(channel, &peer.id, sub.join_leave)
            .await
        {
            tracing::warn!(channel, error = %e, "presence remove failed");
        }
    }
}

impl Drop for Session {
    /// A session that ends without [`finish`](Session::finish) (its connection task
    /// panicked, or was cancelled) still leaves its channels, on a task of its own, so
    /// neither the node's subscriber lists nor presence keep a connection that is gone.
    fn drop(&mut self) {
        self.hub
            .registry
            .remove(&self.peer.id, self.identity.user.as_deref());
        if self.subscriptions.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tracing::warn!(client = %self.peer.id, "connection ended without leaving its channels");
        let subscriptions: Vec<_> = self.subscriptions.drain().collect();
        let (hub, peer) = (Arc::clone(&self.hub), Arc::clone(&self.peer));
        runtime.spawn(async move {
            for (channel, sub) in subscriptions {
                leave(&hub, &peer, &channel, &sub).await;
            }
        });
    }
}

/// The latest values in `publications` (oldest first): the newest publication of each key,
/// publications without a key counting as one key, in offset order. The last one is always
/// the channel's latest publication, so the client's position continues from it. Offsets
/// skip where older values were left out, as under `conflate`.
fn latest_per_key(publications: &[crate::broker::Publication]) -> Vec<&crate::broker::Publication> {
    let mut seen = std::collections::HashSet::new();
    let mut latest: Vec<_> = publications
        .iter()
        .rev()
        .filter(|p| seen.insert(p.key.as_deref()))
        .collect();
    latest.reverse();
    latest
}

fn unavailable(e: crate::broker::BrokerError) -> CommandError {
    CommandError::new(ErrorCode::Unavailable, e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Config, Hub};

    #[tokio::test]
    async fn a_session_dropped_without_finish_still_leaves_its_channels() {
        let mut config = Config::default();
        config.demo.ticker = false;
        let hub = Hub::new(config).unwrap();
        let mut session = Session::new(hub.shared.clone(), Identity::default());
        session
            .on_text(r#"{"type":"subscribe","id":1,"channel":"lobby"}"#)
            .await;
        assert_eq!(hub.channels().len(), 1);
        // As when the connection task panics between commands.
        drop(session);
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        while !hub.channels().is_empty() {
            assert!(tokio::time::Instant::now() < until, "still subscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
