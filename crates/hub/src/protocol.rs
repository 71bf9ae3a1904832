//! The `duplex.v1` wire format: parsing client commands and encoding server frames.
//!
//! Commands are parsed through a borrowed envelope of [`RawValue`]s, so that `data` is
//! forwarded byte for byte (no float rounding of big numbers, no re-serialization) and every
//! missing or mistyped field gets its own error message.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::broker::{PresenceEntry, Publication, StreamPosition};

/// Largest `id` a command may carry: 2⁵³−1, so JavaScript clients can hold it exactly.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// The default of `limits.max_json_depth`: how deeply arrays and objects may nest in a
/// client's `data` or `info` (see [`json_too_deep`]). 32 leaves room for every real payload
/// and keeps the frames that wrap it (`message` adds one level, a `history` reply three)
/// within the strictest common parsers: .NET `System.Text.Json` stops at 64, Ruby's `JSON`
/// at 100, serde_json at 128, Python's recursive `json` near 1000.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 32;

/// The error codes of `docs/protocol.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not a JSON object, or a binary frame.
    BadJson,
    /// A field is missing or mistyped.
    BadRequest,
    /// Unknown `type`.
    UnknownType,
    /// Channel name breaks the rules.
    BadChannel,
    /// Namespace not configured.
    UnknownNamespace,
    /// Not allowed by token claims or namespace options.
    Forbidden,
    /// `data` or `info` too large.
    TooLarge,
    /// Already subscribed to the channel.
    AlreadySubscribed,
    /// Not subscribed to the channel.
    NotSubscribed,
    /// Channel limit per connection reached.
    TooManyChannels,
    /// Command rate exceeded.
    RateLimited,
    /// The namespace has presence off.
    PresenceDisabled,
    /// The broker cannot serve the request now.
    Unavailable,
    /// Unexpected server error.
    Internal,
    /// A node-wide memory budget (channels, retained history) is used up.
    OverCapacity,
    /// JSON nested deeper than `limits.max_json_depth`.
    TooDeep,
    /// The application's hook could not be asked: refused, failed (a status other than
    /// 2xx) or answered something that is not a hook reply.
    BackendUnavailable,
    /// The application's hook did not answer within `hooks.timeout`.
    BackendTimeout,
    /// `hooks.max_in_flight` hook calls were running on the node; this one was not made.
    BackendBusy,
    /// The command needs a hook that is not configured (`rpc` without an `rpc` hook).
    NotAvailable,
}

impl ErrorCode {
    /// Every code, for metrics registration and docs.
    pub const ALL: [Self; 20] = [
        Self::BadJson,
        Self::BadRequest,
        Self::UnknownType,
        Self::BadChannel,
        Self::UnknownNamespace,
        Self::Forbidden,
        Self::TooLarge,
        Self::AlreadySubscribed,
        Self::NotSubscribed,
        Self::TooManyChannels,
        Self::RateLimited,
        Self::PresenceDisabled,
        Self::Unavailable,
        Self::Internal,
        Self::OverCapacity,
        Self::TooDeep,
        Self::BackendUnavailable,
        Self::BackendTimeout,
        Self::BackendBusy,
        Self::NotAvailable,
    ];

    /// The snake_case name sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadRequest => "bad_request",
            Self::UnknownType => "unknown_type",
            Self::BadChannel => "bad_channel",
            Self::UnknownNamespace => "unknown_namespace",
            Self::Forbidden => "forbidden",
            Self::TooLarge => "too_large",
            Self::AlreadySubscribed => "already_subscribed",
            Self::NotSubscribed => "not_subscribed",
            Self::TooManyChannels => "too_many_channels",
            Self::RateLimited => "rate_limited",
            Self::PresenceDisabled => "presence_disabled",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::OverCapacity => "over_capacity",
            Self::TooDeep => "too_deep",
            Self::BackendUnavailable => "backend_unavailable",
            Self::BackendTimeout => "backend_timeout",
            Self::BackendBusy => "backend_busy",
            Self::NotAvailable => "not_available",
        }
    }
}

/// A failed command: the code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct CommandError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Text for humans; names the offending field where there is one.
    pub message: String,
}

impl CommandError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

/// A recovery position sent by the client in `subscribe.since`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Since {
    /// The epoch the client saw.
    pub epoch: String,
    /// The last offset the client saw.
    pub offset: u64,
}

/// A parsed command.
#[derive(Debug)]
#[non_exhaustive]
pub enum Command<'a> {
    /// `subscribe`.
    Subscribe {
        /// Channel name (not yet validated).
        channel: String,
        /// Recovery position.
        since: Option<Since>,
        /// Client-supplied presence info (a JSON object).
        info: Option<&'a RawValue>,
        /// A subscription token (namespaces with `subscription_token`).
        token: Option<String>,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// `publish`.
    Publish {
        /// Channel name.
        channel: String,
        /// The JSON to publish, verbatim.
        data: &'a RawValue,
        /// The publication's key (its length is checked against `limits.max_key_size` by
        /// the publish path, which every publisher shares).
        key: Option<String>,
    },
    /// `presence`.
    Presence {
        /// Channel name.
        channel: String,
    },
    /// `presence_stats`: how many connections and distinct users are in the channel's
    /// presence, without the list.
    PresenceStats {
        /// Channel name.
        channel: String,
    },
    /// `history`.
    History {
        /// Channel name.
        channel: String,
        /// Most recent publications wanted (with `since`: the oldest after it).
        limit: Option<usize>,
        /// Only publications after this position.
        since: Option<Since>,
    },
    /// `ping`.
    Ping,
    /// `refresh`: a new connection token for the same user, before the current one expires.
    Refresh {
        /// The new connection token.
        token: String,
    },
    /// `rpc`: a call answered by the application's `rpc` hook.
    Rpc {
        /// The method name ([`MAX_METHOD_LEN`] bytes at most, checked).
        method: String,
        /// The call's argument, verbatim (`None`: not given, sent as `null`).
        data: Option<&'a RawValue>,
    },
}

/// Longest `rpc` method name, in bytes.
pub const MAX_METHOD_LEN: usize = 128;

/// Checks an `rpc` method name: 1 to [`MAX_METHOD_LEN`] bytes of ASCII letters, digits and
/// `_ - . : /`. Like a channel, the part before the first `:` is its namespace.
pub fn valid_method(method: &str) -> bool {
    !method.is_empty()
        && method.len() <= MAX_METHOD_LEN
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
}

impl Command<'_> {
    /// The command's `type`, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Publish { .. } => "publish",
            Self::Presence { .. } => "presence",
            Self::PresenceStats { .. } => "presence_stats",
            Self::History { .. } => "history",
            Self::Ping => "ping",
            Self::Refresh { .. } => "refresh",
            Self::Rpc { .. } => "rpc",
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    info: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    key: Option<&'a RawValue>,
}

/// Keeps an explicit `null` as `Some`: `"data": null` is a valid publication while a
/// missing `data` is an error.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one text frame with the default depth limit ([`DEFAULT_MAX_JSON_DEPTH`]); see
/// [`parse_command_limited`].
pub fn parse_command(
    text: &str,
) -> Result<(Option<u64>, Command<'_>), (Option<u64>, CommandError)> {
    parse_command_limited(text, DEFAULT_MAX_JSON_DEPTH)
}

/// Parses one text frame. On failure the error comes with the command's `id` when that much
/// could be read, so the error reply can carry it. A publication's `data` or a subscription's
/// `info` nested deeper than `max_json_depth` is refused with `too_deep`.
///
/// serde_json's own recursion limit (128) does not apply to them: a [`RawValue`] field (and
/// an unknown field, which is ignored) is skipped by an iterative scanner that keeps any
/// depth, so a 16,000-deep array passes the envelope intact. Hence [`json_too_deep`].
pub fn parse_command_limited(
    text: &str,
    max_json_depth: usize,
) -> Result<(Option<u64>, Command<'_>), (Option<u64>, CommandError)> {
    // Serde would also accept a JSON array for a struct; commands are objects only.
    if !text.trim_start().starts_with('{') {
        let msg = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => "a command must be a JSON object".to_owned(),
            Err(e) => format!("invalid JSON: {e}"),
        };
        return Err((None, CommandError::new(ErrorCode::BadJson, msg)));
    }
    let env: Envelope<'_> = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(e) if e.is_data() => {
            return Err((
                None,
                CommandError::new(ErrorCode::BadJson, format!("invalid command: {e}")),
            ))
        }
        Err(e) => {
            return Err((
                None,
                CommandError::new(ErrorCode::BadJson, format!("invalid JSON: {e}")),
            ))
        }
    };
    let id = match env.id {
        None => None,
        Some(raw) => match serde_json::from_str::<u64>(raw.get()) {
            Ok(id) if id <= MAX_ID => Some(id),
            _ => {
                return Err((
                    None,
                    CommandError::bad_request("\"id\" must be an integer between 0 and 2^53-1"),
                ))
            }
        },
    };
    command_from(&env, max_json_depth)
        .map(|c| (id, c))
        .map_err(|e| (id, e))
}

/// Whether arrays and objects nest deeper than `max` levels in `json` (a scalar has depth 0,
/// `[]` and `{}` depth 1, `[{"a":[]}]` depth 3). One pass over the bytes with a counter, no
/// recursion and no allocation; it stops at the first level past `max`. `json` is expected
/// to be valid JSON (a [`RawValue`]): brackets inside strings, escaped quotes included, are
/// not counted.
pub fn json_too_deep(json: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json.as_bytes() {
        if in_string {
            // RFC 8259 §7: inside a string, `\` escapes the next character (`\"` included);
            // multi-byte UTF-8 never contains these ASCII bytes.
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The `too_deep` error for the field `what`.
pub fn too_deep(what: &str, max: usize) -> CommandError {
    CommandError::new(
        ErrorCode::TooDeep,
        format!("{what} nests arrays and objects deeper than {max} levels"),
    )
}

fn since(env: &Envelope<'_>) -> Result<Option<Since>, CommandError> {
    match env.since {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str::<Since>(raw.get())
            .map(Some)
            .map_err(|_| {
                CommandError::bad_request(
                    "\"since\" must be {\"epoch\": string, \"offset\": non-negative integer}",
                )
            }),
    }
}

/// Longest subscription token accepted, in bytes (as sent, JSON-escaped). A JWT with an
/// RS512 signature and a presence `info` of the largest size fits with room to spare.
pub const MAX_TOKEN_SIZE: usize = 8 * 1024;

fn token(env: &Envelope<'_>) -> Result<Option<String>, CommandError> {
    match env.token {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) if raw.get().len() > MAX_TOKEN_SIZE => Err(CommandError::new(
            ErrorCode::TooLarge,
            format!("\"token\" is above {MAX_TOKEN_SIZE} bytes"),
        )),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|_| CommandError::bad_request("\"token\" must be a string")),
    }
}

fn command_from<'a>(env: &Envelope<'a>, max_depth: usize) -> Result<Command<'a>, CommandError> {
    let Some(ty) = env.ty else {
        return Err(CommandError::bad_request("missing field \"type\""));
    };
    let ty: String = serde_json::from_str(ty.get())
        .map_err(|_| CommandError::bad_request("\"type\" must be a string"))?;
    let channel = || -> Result<String, CommandError> {
        let raw = env
            .channel
            .ok_or_else(|| CommandError::bad_request("missing field \"channel\""))?;
        serde_json::from_str(raw.get())
            .map_err(|_| CommandError::bad_request("\"channel\" must be a string"))
    };
    Ok(match ty.as_str() {
        "subscribe" => {
            let since = since(env)?;
            let info = match env.info {
                None => None,
                Some(raw) if raw.get() == "null" => None,
                Some(raw) if raw.get().starts_with('{') => Some(raw),
                Some(_) => return Err(CommandError::bad_request("\"info\" must be an object")),
            };
            if info.is_some_and(|i| json_too_deep(i.get(), max_depth)) {
                return Err(too_deep("\"info\"", max_depth));
            }
            Command::Subscribe {
                channel: channel()?,
                since,
                info,
                token: token(env)?,
            }
        }
        "unsubscribe" => Command::Unsubscribe {
            channel: channel()?,
        },
        "publish" => {
            let channel = channel()?;
            let data = env
                .data
                .ok_or_else(|| CommandError::bad_request("missing field \"data\""))?;
            if json_too_deep(data.get(), max_depth) {
                return Err(too_deep("\"data\"", max_depth));
            }
            let key = match env.key {
                None => None,
                Some(raw) if raw.get() == "null" => None,
                Some(raw) => Some(
                    serde_json::from_str::<String>(raw.get())
                        .map_err(|_| CommandError::bad_request("\"key\" must be a string"))?,
                ),
            };
            Command::Publish { channel, data, key }
        }
        "presence" => Command::Presence {
            channel: channel()?,
        },
        "presence_stats" => Command::PresenceStats {
            channel: channel()?,
        },
        "history" => {
            let limit = match env.limit {
                None => None,
                Some(raw) if raw.get() == "null" => None,
                Some(raw) => Some(serde_json::from_str::<usize>(raw.get()).map_err(|_| {
                    CommandError::bad_request("\"limit\" must be a non-negative integer")
                })?),
            };
            Command::History {
                channel: channel()?,
                limit,
                since: since(env)?,
            }
        }
        "ping" => Command::Ping,
        "refresh" => Command::Refresh {
            token: token(env)?
                .ok_or_else(|| CommandError::bad_request("missing field \"token\""))?,
        },
        "rpc" => {
            let raw = env
                .method
                .ok_or_else(|| CommandError::bad_request("missing field \"method\""))?;
            let method: String = serde_json::from_str(raw.get())
                .map_err(|_| CommandError::bad_request("\"method\" must be a string"))?;
            if !valid_method(&method) {
                return Err(CommandError::bad_request(format!(
                    "\"method\" must be 1-{MAX_METHOD_LEN} bytes of ASCII letters, digits \
                     and _ - . : /"
                )));
            }
            if env.data.is_some_and(|d| json_too_deep(d.get(), max_depth)) {
                return Err(too_deep("\"data\"", max_depth));
            }
            Command::Rpc {
                method,
                data: env.data,
            }
        }
        other => {
            let mut shown: String = other.chars().take(64).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(CommandError::new(
                ErrorCode::UnknownType,
                format!("unknown command type {shown:?}"),
            ));
        }
    })
}

// ---------------------------------------------------------------------------------------
// Server → client frames. Each function returns the serialized JSON text.

#[derive(Serialize)]
struct Envelope2<'a, T> {
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(flatten)]
    body: T,
}

fn encode<T: Serialize>(ty: &str, id: Option<u64>, body: T) -> String {
    // Serializing these plain structs (strings, integers, RawValues) cannot fail.
    serde_json::to_string(&Envelope2 { ty, id, body }).unwrap_or_default()
}

/// `{"type":"welcome",...}`.
///
/// `expires_in`: seconds until the connection token's `exp` (absent without one), relative
/// so that a client with a wrong clock still refreshes in time.
pub fn welcome(
    client: &str,
    user: Option<&str>,
    node: &str,
    ping_interval_ms: u64,
    expires_in: Option<u64>,
) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        client: &'a str,
        user: Option<&'a str>,
        node: &'a str,
        version: &'a str,
        ping_interval_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_in: Option<u64>,
    }
    encode(
        "welcome",
        None,
        Body {
            client,
            user,
            node,
            version: crate::SUBPROTOCOL,
            ping_interval_ms,
            expires_in,
        },
    )
}

/// The reply to `refresh`: seconds until the new token's `exp`.
pub fn refreshed(id: Option<u64>, expires_in: u64) -> String {
    #[derive(Serialize)]
    struct Body {
        expires_in: u64,
    }
    encode("reply", id, Body { expires_in })
}

/// `{"type":"error",...}`.
pub fn error(id: Option<u64>, err: &CommandError) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        code: &'a str,
        message: &'a str,
    }
    encode(
        "error",
        id,
        Body {
            code: err.code.as_str(),
            message: &err.message,
        },
    )
}

/// `{"type":"pong"}`.
pub fn pong(id: Option<u64>) -> String {
    #[derive(Serialize)]
    struct Body {}
    encode("pong", id, Body {})
}

/// The reply to `subscribe`.
pub fn subscribed(id: Option<u64>, channel: &str, pos: &StreamPosition, recovered: bool) -> String {
    subscription("reply", id, channel, pos, recovered)
}

/// The server-side subscription event: `{"type":"subscribed","channel",...}`, pushed when
/// the hub subscribes the connection itself (the `connect` hook's `channels`).
pub fn server_subscribed(channel: &str, pos: &StreamPosition) -> String {
    subscription("subscribed", None, channel, pos, false)
}

/// `subscribe`'s reply and the pushed `subscribed` event carry the same fields.
fn subscription(
    ty: &str,
    id: Option<u64>,
    channel: &str,
    pos: &StreamPosition,
    recovered: bool,
) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
        epoch: &'a str,
        offset: u64,
        recovered: bool,
    }
    encode(
        ty,
        id,
        Body {
            channel,
            epoch: &pos.epoch,
            offset: pos.offset,
            recovered,
        },
    )
}

/// The reply to `rpc`: `{"type":"reply","id",...,"result":...}` with the backend's result.
pub fn rpc_result(id: Option<u64>, result: &RawValue) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        result: &'a RawValue,
    }
    encode("reply", id, Body { result })
}

/// The reply to `presence_stats`: `{"type":"reply","id","channel","clients","users"}`.
pub fn presence_stats(id: Option<u64>, channel: &str, clients: usize, users: usize) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
        clients: usize,
        users: usize,
    }
    encode(
        "reply",
        id,
        Body {
            channel,
            clients,
            users,
        },
    )
}

/// The reply to `unsubscribe`.
pub fn unsubscribed(id: Option<u64>, channel: &str) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
    }
    encode("reply", id, Body { channel })
}

/// The server-side end of a subscription: `{"type":"unsubscribed","channel"}`, pushed when
/// the server API unsubscribes the connection.
pub fn server_unsubscribed(channel: &str) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
    }
    encode("unsubscribed", None, Body { channel })
}

/// The reply to `publish` (and the body of `POST /api/publish` without the envelope).
pub fn published(id: Option<u64>, channel: &str, pos: &StreamPosition) -> String {
    encode("reply", id, PositionBody::new(channel, pos))
}

/// `{"channel","epoch","offset"}`, the HTTP publish response.
#[derive(Debug, Serialize)]
pub struct PositionBody<'a> {
    channel: &'a str,
    epoch: &'a str,
    offset: u64,
}

impl<'a> PositionBody<'a> {
    /// Borrowing constructor.
    pub fn new(channel: &'a str, pos: &'a StreamPosition) -> Self {
        Self {
            channel,
            epoch: &pos.epoch,
            offset: pos.offset,
        }
    }
}

/// Room one item of a paged reply or one `message` frame needs besides its `data` (or a
/// presence entry besides its `info`): the envelope, the channel name (at most 255 bytes,
/// never escaped), the epoch, offsets, ids and a `from`/`user` of up to about 3 KiB.
/// `limits.max_queue_bytes` must hold one publication plus this much, so that any single
/// frame the server sends fits the queue.
pub const FRAME_OVERHEAD: usize = 4096;

/// Splits a reply with one long array into pages of about `page_bytes` of array items each
/// (at least one item per page): a lazy iterator of the serialized frames, so only one
/// page is encoded at a time. `envelope(items, more)` wraps a page's items (a JSON array)
/// in the reply; `more` is `true` on every page but the last. An empty array gives one page.
struct Pages<I: Iterator<Item = String>, F> {
    items: std::iter::Peekable<I>,
    envelope: F,
    page_bytes: usize,
    done: bool,
}

impl<I, F> Iterator for Pages<I, F>
where
    I: Iterator<Item = String>,
    F: FnMut(&RawValue, bool) -> String,
{
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let mut array = String::from("[");
        while let Some(item) = self.items.peek() {
            let first = array.len() == 1;
            if !first && array.len() + item.len() + 2 > self.page_bytes {
                break;
            }
            if !first {
                array.push(',');
            }
            array.push_str(item);
            self.items.next();
        }
        array.push(']');
        let more = self.items.peek().is_some();
        self.done = !more;
        // Items are serialized JSON values joined by commas: a valid array.
        let array = RawValue::from_string(array).ok()?;
        Some((self.envelope)(&array, more))
    }
}

fn pages<I, F>(items: I, page_bytes: usize, envelope: F) -> Pages<I, F>
where
    I: Iterator<Item = String>,
    F: FnMut(&RawValue, bool) -> String,
{
    Pages {
        items: items.peekable(),
        envelope,
        page_bytes,
        done: false,
    }
}

/// `skip_serializing_if` for the `more` flag of paged replies.
fn is_false(b: &bool) -> bool {
    !*b
}

/// The reply to `presence`, in pages of about `page_bytes` of list items (at least one per page): each page is
/// `{"type":"reply","id","channel","clients":[...]}`, all but the last with `"more":true`.
pub fn presence_pages<'a>(
    id: Option<u64>,
    channel: &'a str,
    clients: &'a [PresenceEntry],
    page_bytes: usize,
) -> impl Iterator<Item = String> + 'a {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
        clients: &'a RawValue,
        #[serde(skip_serializing_if = "is_false")]
        more: bool,
    }
    let items = clients
        .iter()
        .map(|c| serde_json::to_string(c).unwrap_or_default());
    pages(items, page_bytes, move |clients, more| {
        encode(
            "reply",
            id,
            Body {
                channel,
                clients,
                more,
            },
        )
    })
}

/// The reply to `history`, in pages of about `page_bytes` of list items (at least one per page): each page is
/// `{"type":"reply","id","channel","epoch","offset","publications":[...]}` with the same
/// position (and `complete`, sent when the query had `since`), all but the last with
/// `"more":true`.
pub fn history_pages<'a>(
    id: Option<u64>,
    channel: &'a str,
    pos: &'a StreamPosition,
    pubs: &'a [Publication],
    complete: Option<bool>,
    page_bytes: usize,
) -> impl Iterator<Item = String> + 'a {
    #[derive(Serialize)]
    struct Item<'a> {
        offset: u64,
        data: &'a RawValue,
        from: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
        epoch: &'a str,
        offset: u64,
        publications: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        complete: Option<bool>,
        #[serde(skip_serializing_if = "is_false")]
        more: bool,
    }
    let items = pubs.iter().map(|p| {
        serde_json::to_string(&Item {
            offset: p.offset,
            data: &p.data,
            from: p.from.as_deref(),
            key: p.key.as_deref(),
        })
        .unwrap_or_default()
    });
    pages(items, page_bytes, move |publications, more| {
        encode(
            "reply",
            id,
            Body {
                channel,
                epoch: &pos.epoch,
                offset: pos.offset,
                publications,
                complete,
                more,
            },
        )
    })
}

/// `{"type":"message",...}`: the frame every subscriber receives for a publication.
pub fn message(channel: &str, p: &Publication) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
        offset: u64,
        data: &'a RawValue,
        from: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
    }
    encode(
        "message",
        None,
        Body {
            channel,
            offset: p.offset,
            data: &p.data,
            from: p.from.as_deref(),
            key: p.key.as_deref(),
        },
    )
}

/// `{"type":"presence_diff",...}`: the joins and leaves of one channel over one
/// `join_leave_interval`, one frame per subscriber however many there were. `joined` and
/// `left` count them; the lists are sent when `lists` is `Some` (the batch was small enough),
/// and left out otherwise, so a client knows to ask `presence` if it wants the names.
pub fn presence_diff(
    channel: &str,
    joined: usize,
    left: usize,
    lists: Option<(&[&PresenceEntry], &[&PresenceEntry])>,
) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a str,
        joined: usize,
        left: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        joins: Option<&'a [&'a PresenceEntry]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        leaves: Option<&'a [&'a PresenceEntry]>,
    }
    encode(
        "presence_diff",
        None,
        Body {
            channel,
            joined,
            left,
            joins: lists.map(|l| l.0),
            leaves: lists.map(|l| l.1),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of(text: &str) -> (Option<u64>, ErrorCode, String) {
        match parse_command(text) {
            Ok((_, c)) => panic!("parsed {c:?}"),
            Err((id, e)) => (id, e.code, e.message),
        }
    }

    #[test]
    fn parses_every_command() {
        let (id, c) =
            parse_command(r#"{"type":"publish","id":3,"channel":"a","data":null}"#).unwrap();
        assert_eq!(id, Some(3));
        assert!(
            matches!(c, Command::Publish { ref channel, data, key: None } if channel == "a" && data.get() == "null")
        );
        let (_, c) = parse_command(
            r#"{"type":"subscribe","channel":"a","since":{"epoch":"e","offset":4},"info":{"n":1}}"#,
        )
        .unwrap();
        match c {
            Command::Subscribe { since, info, .. } => {
                assert_eq!(
                    since,
                    Some(Since {
                        epoch: "e".into(),
                        offset: 4
                    })
                );
                assert_eq!(info.map(RawValue::get), Some(r#"{"n":1}"#));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_command(r#"{"type":"ping"}"#),
            Ok((None, Command::Ping))
        ));
        assert!(matches!(
            parse_command(r#"{"type":"history","channel":"a","limit":5,"extra":[1]}"#),
            Ok((None, Command::History { limit: Some(5), .. }))
        ));
    }

    #[test]
    fn data_is_forwarded_verbatim() {
        let text =
            r#"{"type":"publish","channel":"a","data":{"big":123456789012345678901234567890}}"#;
        let (_, c) = parse_command(text).unwrap();
        let Command::Publish { data, .. } = c else {
            panic!()
        };
        assert_eq!(data.get(), r#"{"big":123456789012345678901234567890}"#);
    }

    #[test]
    fn a_publication_key_is_parsed_stored_and_sent_only_when_present() {
        let (_, c) =
            parse_command(r#"{"type":"publish","channel":"a","data":1,"key":"EUR\/USD"}"#).unwrap();
        let Command::Publish { key, .. } = c else {
            panic!()
        };
        assert_eq!(key.as_deref(), Some("EUR/USD"));
        let (_, c) =
            parse_command(r#"{"type":"publish","channel":"a","data":1,"key":null}"#).unwrap();
        assert!(matches!(c, Command::Publish { key: None, .. }));
        let (_, code, msg) = err_of(r#"{"type":"publish","channel":"a","data":1,"key":7}"#);
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(msg.contains("\"key\""), "{msg}");

        let mut p = Publication {
            offset: 3,
            data: std::sync::Arc::from(RawValue::from_string("1".into()).unwrap()),
            from: None,
            key: Some("k".into()),
        };
        let v: serde_json::Value = serde_json::from_str(&message("c", &p)).unwrap();
        assert_eq!(v["key"], "k");
        let pos = StreamPosition {
            epoch: "e".into(),
            offset: 3,
        };
        let page = history_pages(None, "c", &pos, std::slice::from_ref(&p), None, 1000)
            .next()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&page).unwrap();
        assert_eq!(v["publications"][0]["key"], "k");
        p.key = None;
        let v: serde_json::Value = serde_json::from_str(&message("c", &p)).unwrap();
        assert!(v.get("key").is_none(), "no key, no field: {v}");
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(err_of("not json").1, ErrorCode::BadJson);
        assert_eq!(err_of("[1,2]").1, ErrorCode::BadJson);
        assert_eq!(
            err_of(r#"{"id":1}"#),
            (
                Some(1),
                ErrorCode::BadRequest,
                "missing field \"type\"".into()
            )
        );
        assert_eq!(
            err_of(r#"{"type":"nope","id":2}"#).1,
            ErrorCode::UnknownType
        );
        assert_eq!(
            err_of(r#"{"type":"publish","channel":"a"}"#).2,
            "missing field \"data\""
        );
        assert_eq!(
            err_of(r#"{"type":"publish","channel":5,"data":1}"#).2,
            "\"channel\" must be a string"
        );
        assert_eq!(err_of(r#"{"type":"ping","id":-1}"#).0, None);
        assert_eq!(
            err_of(r#"{"type":"ping","id":9007199254740992}"#).1,
            ErrorCode::BadRequest
        );
        assert_eq!(
            err_of(r#"{"type":"subscribe","channel":"a","since":{"offset":1}}"#).1,
            ErrorCode::BadRequest
        );
        assert_eq!(
            err_of(r#"{"type":"subscribe","channel":"a","info":[1]}"#).1,
            ErrorCode::BadRequest
        );
        assert_eq!(
            err_of(r#"{"type":"history","channel":"a","limit":-1}"#).1,
            ErrorCode::BadRequest
        );
        assert_eq!(err_of(r#"{"type":1}"#).1, ErrorCode::BadRequest);
    }

    #[test]
    fn frames_are_json() {
        let v: serde_json::Value = serde_json::from_str(&pong(Some(7))).unwrap();
        assert_eq!(v, serde_json::json!({"type":"pong","id":7}));
        let e = CommandError::new(ErrorCode::BadChannel, "x");
        let v: serde_json::Value = serde_json::from_str(&error(None, &e)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"error","code":"bad_channel","message":"x"})
        );
    }

    #[test]
    fn history_is_paged_by_bytes_and_only_the_last_page_lacks_more() {
        let pos = StreamPosition {
            epoch: "e".into(),
            offset: 10,
        };
        let pubs: Vec<Publication> = (1..=10)
            .map(|n| Publication {
                offset: n,
                data: std::sync::Arc::from(
                    RawValue::from_string(format!("\"{}\"", "x".repeat(100))).unwrap(),
                ),
                from: Some("ada".into()),
                key: None,
            })
            .collect();
        let pages: Vec<serde_json::Value> =
            history_pages(Some(5), "c", &pos, &pubs, Some(true), 400)
                .map(|p| serde_json::from_str(&p).unwrap())
                .collect();
        assert!(pages.len() > 3, "{} pages", pages.len());
        let mut offsets = Vec::new();
        for (i, page) in pages.iter().enumerate() {
            assert_eq!(page["id"], 5);
            assert_eq!(page["epoch"], "e");
            assert_eq!(page["offset"], 10);
            assert_eq!(page["complete"], true);
            assert_eq!(
                page["more"].as_bool().is_some(),
                i + 1 < pages.len(),
                "{page}"
            );
            let items = page["publications"].as_array().unwrap();
            assert!(!items.is_empty());
            offsets.extend(items.iter().map(|p| p["offset"].as_u64().unwrap()));
        }
        assert_eq!(offsets, (1..=10).collect::<Vec<_>>());
        // A page budget smaller than one item still makes progress, one item per page.
        assert_eq!(history_pages(None, "c", &pos, &pubs, None, 1).count(), 10);
        // Nothing retained: one page with an empty array and no `more`.
        let empty: Vec<String> = history_pages(None, "c", &pos, &[], None, 400).collect();
        assert_eq!(empty.len(), 1);
        let v: serde_json::Value = serde_json::from_str(&empty[0]).unwrap();
        assert_eq!(v["publications"], serde_json::json!([]));
        assert!(v.get("more").is_none() && v.get("complete").is_none());
    }

    #[test]
    fn presence_pages_hold_every_entry_once() {
        let clients: Vec<PresenceEntry> = (0..50)
            .map(|n| PresenceEntry {
                client: format!("c{n}").into(),
                user: None,
                info: None,
            })
            .collect();
        let pages: Vec<serde_json::Value> = presence_pages(Some(1), "lobby", &clients, 256)
            .map(|p| serde_json::from_str(&p).unwrap())
            .collect();
        assert!(pages.len() > 1);
        let all: Vec<&str> = pages
            .iter()
            .flat_map(|p| p["clients"].as_array().unwrap())
            .map(|c| c["client"].as_str().unwrap())
            .collect();
        assert_eq!(all.len(), 50);
        assert_eq!(all[49], "c49");
        assert_eq!(pages.last().unwrap().get("more"), None);
        assert_eq!(pages[0]["more"], true);
    }

    /// The deepest nesting of `json`, by the scanner.
    fn depth(json: &str) -> usize {
        (0..=json.len()).find(|&d| !json_too_deep(json, d)).unwrap()
    }

    #[test]
    fn depth_scanner_counts_arrays_and_objects_only() {
        assert_eq!(depth("1"), 0);
        assert_eq!(depth(r#""text""#), 0);
        assert_eq!(depth("[]"), 1);
        assert_eq!(depth("{}"), 1);
        assert_eq!(depth(r#"[{"a":[]}]"#), 3);
        assert_eq!(depth(r#"{"a":[1,[2]],"b":{"c":{}}}"#), 3);
        assert_eq!(depth("[[],[],[[]]]"), 3, "siblings do not add up");
    }

    #[test]
    fn depth_scanner_skips_strings_and_escapes() {
        assert_eq!(depth(r#""[[[{{{""#), 0);
        assert_eq!(depth(r#"["]]]]", "[[[["]"#), 1);
        // An escaped quote does not end the string; an escaped backslash does not escape
        // the quote after it.
        assert_eq!(depth(r#"["\"[[[", 1]"#), 1);
        assert_eq!(depth(r#"["\\", [[1]]]"#), 3);
        assert_eq!(depth(r#"{"k\"}":"\\\"[["}"#), 1);
        assert_eq!(depth(r#"["\u005b\u005b", "é[ü"]"#), 1);
    }

    #[test]
    fn depth_limit_is_inclusive() {
        let nested = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(
            !json_too_deep(&nested(32), 32),
            "exactly at the limit passes"
        );
        assert!(json_too_deep(&nested(33), 32));
        assert!(!json_too_deep("7", 0));
        assert!(json_too_deep("[]", 0));
        // 16,000 levels: refused in one pass, no stack used.
        assert!(json_too_deep(&nested(16_000), DEFAULT_MAX_JSON_DEPTH));
    }

    #[test]
    fn deep_data_and_info_are_refused_with_too_deep() {
        let deep = format!("{}{}", "[".repeat(16_000), "]".repeat(16_000));
        // serde_json's recursion limit does not reach into the RawValue: the envelope parses.
        let publish = format!(r#"{{"type":"publish","id":4,"channel":"a","data":{deep}}}"#);
        let (id, code, message) = err_of(&publish);
        assert_eq!((id, code), (Some(4), ErrorCode::TooDeep));
        assert!(message.contains("\"data\""), "{message}");
        let info = format!(r#"{{"type":"subscribe","channel":"a","info":{{"x":{deep}}}}}"#);
        assert_eq!(err_of(&info).1, ErrorCode::TooDeep);
        let ok = format!(
            r#"{{"type":"publish","channel":"a","data":{}{}}}"#,
            "[".repeat(32),
            "]".repeat(32)
        );
        assert!(parse_command(&ok).is_ok());
        assert!(parse_command_limited(&ok, 31).is_err());
        // Unknown fields are skipped whatever their depth, and not forwarded.
        let extra = format!(r#"{{"type":"ping","extra":{deep}}}"#);
        assert!(matches!(parse_command(&extra), Ok((None, Command::Ping))));
    }

    #[test]
    fn presence_diff_lists_or_counts() {
        let e = PresenceEntry {
            client: "n-1".into(),
            user: None,
            info: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&presence_diff("c", 1, 0, Some((&[&e][..], &[][..])))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"presence_diff","channel":"c","joined":1,"left":0,
                "joins":[{"client":"n-1","user":null,"info":null}],"leaves":[]})
        );
        let v: serde_json::Value = serde_json::from_str(&presence_diff("c", 500, 3, None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"presence_diff","channel":"c","joined":500,"left":3})
        );
    }
}
