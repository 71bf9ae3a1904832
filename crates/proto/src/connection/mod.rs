//! The sans-IO connection: feed it bytes, take out events and bytes.

mod reader;
mod state;
mod writer;

use std::{collections::VecDeque, io::IoSlice, sync::Arc, time::Instant};

use bytes::{Bytes, BytesMut};

use state::Input;
pub use state::State;
use writer::{Output, Payload};

use crate::{
    close::{CloseCode, CloseFrame},
    config::Config,
    deflate::{Deflate, DeflateParams},
    error::{CloseError, SendError},
    frame::OpCode,
    message::{Message, Utf8Bytes},
    prepared::{Prepared, PREPARED_WINDOW_BITS},
    random::RandomSource,
    role::Role,
};

/// Something that happened on the connection, returned by [`Connection::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A complete text or binary message.
    Message(Message),
    /// The peer sent a Ping; the Pong is already queued (RFC 6455 §5.5.2).
    Ping(Bytes),
    /// The peer sent a Pong.
    Pong(Bytes),
    /// The connection is closed. This is the last event.
    Closed(Closed),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Closed {
    /// The close code. After a clean closing handshake it is the code of the peer's Close
    /// frame, whoever started (when we started, that is normally our own code echoed back,
    /// RFC 6455 §5.5.1), or [`CloseCode::NO_STATUS`] if the peer's Close had no code. When we
    /// failed the connection for a protocol error, it is the code we sent (1002, 1007, 1009…);
    /// when the transport ended without a closing handshake, [`CloseCode::ABNORMAL`].
    pub code: CloseCode,
    /// The reason that came with the code.
    pub reason: Utf8Bytes,
    /// Who started the closing handshake (or failed the connection).
    pub initiated_by: Side,
    /// Set when the connection did not end with a clean closing handshake.
    pub error: Option<CloseError>,
}

impl Closed {
    /// A connection that ended without a closing handshake, seen from this side: code
    /// [`CloseCode::ABNORMAL`] (1006, RFC 6455 §7.1.5: never sent in a Close frame), no
    /// reason, and `error` as the cause.
    #[must_use]
    pub fn abnormal(error: CloseError) -> Self {
        Self {
            code: CloseCode::ABNORMAL,
            reason: Utf8Bytes::default(),
            initiated_by: Side::Local,
            error: Some(error),
        }
    }

    /// Whether both Close frames were exchanged.
    #[must_use]
    pub const fn is_clean(&self) -> bool {
        self.error.is_none()
    }
}

/// One side of the connection, seen from this endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// This endpoint.
    Local,
    /// The remote endpoint.
    Peer,
}

/// A WebSocket connection after the opening handshake, with no IO of its own.
///
/// The caller drives it:
/// - input: read from the transport into [`read_buf`](Self::read_buf) and call
///   [`receive`](Self::receive); call [`receive_eof`](Self::receive_eof) at end of stream and
///   [`handle_timeout`](Self::handle_timeout) when the deadline from
///   [`poll_timeout`](Self::poll_timeout) passes;
/// - commands: [`send`](Self::send), [`ping`](Self::ping), [`close`](Self::close);
/// - output, after any input or command: write [`output_chunks`](Self::output_chunks) to the
///   transport and report the count with [`advance_output`](Self::advance_output); take events
///   with [`poll_event`](Self::poll_event); re-arm the timer with `poll_timeout`.
///
/// When [`state`](Self::state) is [`State::Closed`] and the output is written, close the
/// transport. RFC 6455 §7.1.1: the server closes TCP first; a client waits for the server to
/// do so (up to the close timeout) before closing its own side.
///
/// ```
/// use duplex_proto::{Config, Connection, Event, Message, Role};
///
/// let mut client = Connection::new(Role::Client, Config::default());
/// let mut server = Connection::new(Role::Server, Config::default());
/// client.send(Message::text("hello")).unwrap();
/// let mut wire = bytes::BytesMut::new();
/// client.poll_output(&mut wire);
/// server.receive_bytes(&wire);
/// assert_eq!(server.poll_event(), Some(Event::Message(Message::text("hello"))));
/// ```
#[derive(Debug)]
pub struct Connection {
    role: Role,
    /// Shared by all the connections of a server: every idle connection would otherwise carry
    /// its own copy.
    config: Arc<Config>,
    state: State,
    read_buf: BytesMut,
    reader: reader::Reader,
    output: Output,
    events: VecDeque<Event>,
    /// Boxed: only a closing connection has one, and every open one would pay for the space.
    peer_close: Option<Box<CloseFrame>>,
    timers: Timers,
    /// Boxed: most connections never negotiate permessage-deflate, and the codec state would
    /// otherwise make every connection (idle ones included) about 300 bytes larger.
    deflate: Option<Box<Compression>>,
    deflate_params: Option<DeflateParams>,
    /// The transport ended; what is buffered is still read before the connection is closed.
    eof: bool,
    /// Where masking keys come from, when not the default CSPRNG. Boxed: only tests set one.
    random: Option<Box<RandomSource>>,
}

/// permessage-deflate state: the codec and a reused buffer for outgoing messages.
#[derive(Debug)]
struct Compression {
    codec: Deflate,
    scratch: BytesMut,
}

#[derive(Debug, Default)]
struct Timers {
    /// The closing handshake started and its deadline is not armed yet.
    arm_close: bool,
    close: Option<Instant>,
    /// Something arrived since the keepalive timer was last armed.
    activity: bool,
    ping: Option<Instant>,
    pong: Option<Instant>,
}

impl Connection {
    /// A connection in the open state, for the given role.
    #[must_use]
    pub fn new(role: Role, config: impl Into<Arc<Config>>) -> Self {
        Self::with_deflate(role, config, None)
    }

    /// A connection in the open state with the permessage-deflate parameters agreed in the
    /// opening handshake (see [`deflate::negotiate`](crate::deflate::negotiate) and
    /// [`deflate::client_accept`](crate::deflate::client_accept)). Level and threshold come
    /// from [`Config::deflate`].
    #[must_use]
    pub fn with_deflate(
        role: Role,
        config: impl Into<Arc<Config>>,
        deflate: Option<DeflateParams>,
    ) -> Self {
        let config = config.into();
        let mut reader = reader::Reader::new(&config);
        let codec = deflate.map(|params| {
            reader.enable_deflate();
            let settings = config.deflate.clone().unwrap_or_default();
            Box::new(Compression {
                codec: Deflate::new(role, &params, settings.level, settings.threshold),
                scratch: BytesMut::new(),
            })
        });
        Self {
            deflate: codec,
            deflate_params: deflate,
            role,
            reader,
            config,
            state: State::Open,
            read_buf: BytesMut::new(),
            output: Output::default(),
            events: VecDeque::new(),
            peer_close: None,
            timers: Timers {
                activity: true,
                ..Timers::default()
            },
            eof: false,
            random: None,
        }
    }

    /// Take the client's masking keys from `source` instead of the operating system's
    /// cryptographically secure generator.
    ///
    /// **For deterministic tests only.** RFC 6455 §5.3: the masking key "MUST be derived from
    /// a strong source of entropy" and be unpredictable, so that an application cannot choose
    /// the bytes an intermediary sees; see [`RandomSource`]. A server does not mask, so its
    /// connections never draw from the source.
    #[must_use]
    pub fn with_random(mut self, source: RandomSource) -> Self {
        self.random = (!source.is_default()).then(|| Box::new(source));
        self
    }

    /// The source set with [`with_random`](Self::with_random), taken out (to move it to
    /// another connection); this connection goes back to the default source.
    pub fn take_random(&mut self) -> RandomSource {
        self.random.take().map(|b| *b).unwrap_or_default()
    }

    /// This endpoint's role.
    #[must_use]
    pub const fn role(&self) -> Role {
        self.role
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configuration, as shared with other connections.
    #[must_use]
    pub const fn shared_config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The lifecycle state.
    #[must_use]
    pub const fn state(&self) -> State {
        self.state
    }

    /// The permessage-deflate parameters in force, if it was negotiated.
    #[must_use]
    pub const fn deflate_params(&self) -> Option<&DeflateParams> {
        self.deflate_params.as_ref()
    }

    /// The Close frame the peer sent, once it has arrived.
    #[must_use]
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        self.peer_close.as_deref()
    }

    // ---- input ----

    /// The buffer to read transport bytes into (append, then call [`receive`](Self::receive)).
    ///
    /// Reading straight into it avoids a copy; complete unfragmented messages are handed out as
    /// slices of it.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.read_buf
    }

    /// Process the bytes added to [`read_buf`](Self::read_buf): frames become events, and
    /// pings, close replies and protocol failures become output. Processing stops at the first
    /// event and resumes as events are taken with [`poll_event`](Self::poll_event).
    pub fn receive(&mut self) {
        self.process();
    }

    /// Append `data` to the read buffer and process it.
    pub fn receive_bytes(&mut self, data: &[u8]) {
        self.read_buf.extend_from_slice(data);
        self.process();
    }

    /// The transport reached end of stream.
    ///
    /// After a finished closing handshake this is expected; otherwise, once the frames already
    /// received are read, the connection closed abnormally (RFC 6455 §7.1.5: code 1006).
    pub fn receive_eof(&mut self) {
        // Frames that arrived before the end (such as the peer's Close, which the server sends
        // right before closing TCP) are read first, as the events before them are taken.
        self.eof = true;
        self.process();
    }

    /// Run the timers whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.close.is_some_and(|d| d <= now) {
            self.timers.close = None;
            if self.state.can_receive() {
                self.finish_failed(CloseError::CloseTimeout, Side::Local);
            }
        }
        if self.timers.pong.is_some_and(|d| d <= now) {
            self.timers.pong = None;
            if self.state.can_send() {
                self.queue_close(CloseCode::INTERNAL, "keepalive ping timeout");
                self.finish_failed(CloseError::KeepaliveTimeout, Side::Local);
            }
        }
        if self.timers.ping.is_some_and(|d| d <= now) {
            self.timers.ping = None;
            if self.state.can_send() {
                let mask = self.mask_key();
                self.output.frame(
                    OpCode::Ping,
                    true,
                    false,
                    mask,
                    Payload::Borrowed(b"keepalive"),
                );
                self.timers.pong = Some(now + self.config.pong_timeout);
            }
        }
    }

    // ---- commands ----

    /// Queue a message.
    ///
    /// # Errors
    /// [`SendError::Closed`] once a Close frame was sent or received (RFC 6455 §5.5.1).
    pub fn send(&mut self, message: Message) -> Result<(), SendError> {
        if !self.state.can_send() {
            return Err(SendError::Closed);
        }
        let (opcode, payload) = match &message {
            Message::Text(t) => (OpCode::Text, t.clone().into_bytes()),
            Message::Binary(b) => (OpCode::Binary, b.clone()),
        };
        let mask = self.mask_key();
        match &mut self.deflate {
            Some(deflate) if deflate.codec.should_compress(payload.len()) => {
                let mut buf = std::mem::take(&mut deflate.scratch);
                buf.clear();
                deflate.codec.compress(&payload, &mut buf);
                // RFC 7692 §6: RSV1 on the (only) frame of a compressed message.
                self.output
                    .frame(opcode, true, true, mask, Payload::Borrowed(&buf));
                if buf.capacity() <= 64 * 1024 {
                    deflate.scratch = buf;
                }
            }
            _ => self
                .output
                .frame(opcode, true, false, mask, Payload::Shared(&payload)),
        }
        Ok(())
    }

    /// Queue a frame that was encoded once for many connections.
    ///
    /// A server writes the prepared bytes as they are — or, with permessage-deflate, the
    /// prepared compressed bytes (see [`Prepared`]); a client, which must mask with its own
    /// key, frames the payload again.
    ///
    /// # Errors
    /// [`SendError::Closed`] once a Close frame was sent or received.
    pub fn send_prepared(&mut self, prepared: &Prepared) -> Result<(), SendError> {
        if !self.state.can_send() {
            return Err(SendError::Closed);
        }
        match self.role {
            Role::Server => match self.deflate.as_deref_mut() {
                Some(deflate)
                    if deflate.codec.should_compress(prepared.payload().len())
                        && deflate
                            .codec
                            .accepts_window(PREPARED_WINDOW_BITS, prepared.payload().len()) =>
                {
                    match prepared.compressed_frame(deflate.codec.level()) {
                        Some(frame) => {
                            self.output.raw(frame);
                            // The peer's window now holds this message; ours does not.
                            deflate.codec.forget_history();
                        }
                        None => self.output.raw(prepared.frame()),
                    }
                }
                _ => self.output.raw(prepared.frame()),
            },
            // Masked with our own key (RFC 6455 §5.3), so framed again, and compressed by
            // this connection's own codec when negotiated.
            Role::Client => return self.send(prepared.message()),
        }
        Ok(())
    }

    /// Queue a Ping.
    ///
    /// # Errors
    /// [`SendError::Closed`] after the closing handshake started,
    /// [`SendError::ControlPayloadTooLong`] for a payload over 125 bytes (RFC 6455 §5.5).
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.control(OpCode::Ping, payload)
    }

    /// Queue an unsolicited Pong (a unidirectional heartbeat, RFC 6455 §5.5.3).
    ///
    /// # Errors
    /// As for [`ping`](Self::ping).
    pub fn pong(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.control(OpCode::Pong, payload)
    }

    /// Start the closing handshake. Calling it again, or after the peer's Close, does nothing.
    ///
    /// # Errors
    /// [`SendError::InvalidCloseCode`] for a code that may not be sent (1005, 1006, 1015, ...),
    /// [`SendError::ControlPayloadTooLong`] for a reason over 123 bytes.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode(code.0));
        }
        if reason.len() > CloseFrame::MAX_REASON {
            return Err(SendError::ControlPayloadTooLong(reason.len() + 2));
        }
        if self.state.can_send() {
            self.queue_close(code, reason);
            self.timers.arm_close = true;
            self.state = self.state.on(Input::SendClose);
        }
        Ok(())
    }

    // ---- output ----

    /// The next event, if any.
    ///
    /// Input is processed lazily, one event at a time: a frame is read only once the events
    /// before it are taken. So whatever the caller sends in answer to a message goes out before
    /// the reaction to a later frame (such as the Close that fails the connection on a
    /// protocol violation further down the same read).
    #[must_use = "events must be handled"]
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            self.process();
        }
        self.events.pop_front()
    }

    /// Whether events are waiting to be taken with [`poll_event`](Self::poll_event).
    ///
    /// An IO layer can hold back writes while this is true, so that everything a batch of
    /// input produces goes out in one write.
    #[must_use]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
            || (self.state.can_receive() && self.reader.frame_ready(&self.read_buf))
    }

    /// Fill `dst` with the pending output, in order; returns how many slices were filled.
    pub fn output_chunks<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        self.output.chunks(dst)
    }

    /// Mark `n` bytes of the output as written.
    pub fn advance_output(&mut self, n: usize) {
        self.output.advance(n);
    }

    /// Bytes waiting to be written.
    #[must_use]
    pub const fn output_len(&self) -> usize {
        self.output.len()
    }

    /// Append all pending output to `buf`.
    pub fn poll_output(&mut self, buf: &mut BytesMut) {
        self.output.drain_into(buf);
    }

    /// The next deadline at which [`handle_timeout`](Self::handle_timeout) must be called.
    ///
    /// Timers started since the last call are armed relative to `now`.
    #[must_use = "the deadline must be scheduled"]
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        if std::mem::take(&mut self.timers.arm_close) && self.state.can_receive() {
            self.timers.close = Some(now + self.config.close_timeout);
        }
        match self.config.ping_interval {
            Some(interval) if self.state.can_send() => {
                if std::mem::take(&mut self.timers.activity) {
                    self.timers.pong = None;
                    self.timers.ping = Some(now + interval);
                }
            }
            _ => {
                self.timers.ping = None;
                self.timers.pong = None;
            }
        }
        [self.timers.close, self.timers.ping, self.timers.pong]
            .into_iter()
            .flatten()
            .min()
    }

    /// Release the read and write buffers while they are empty, so an idle connection holds
    /// almost no memory. They grow again on the next use.
    pub fn release_buffers(&mut self) {
        if self.read_buf.is_empty() && !self.reader.in_frame() {
            self.read_buf = BytesMut::new();
            self.reader.release();
        }
        self.output.release();
    }

    /// Take the read buffer's memory while it holds nothing (no partial frame, no message in
    /// progress), e.g. to keep it in a pool while the connection is idle. `None` when bytes are
    /// buffered or the buffer has no memory. [`read_buf`](Self::read_buf) starts empty again;
    /// put a buffer back in it before the next read.
    pub fn take_idle_read_buf(&mut self) -> Option<BytesMut> {
        (self.read_buf.is_empty() && self.read_buf.capacity() > 0 && !self.reader.in_frame())
            .then(|| std::mem::take(&mut self.read_buf))
    }

    // ---- internals shared with the reader ----

    fn mask_key(&mut self) -> Option<[u8; 4]> {
        if !self.role.masks_outgoing() {
            return None;
        }
        // RFC 6455 §5.3: the key must be unpredictable, so by default it comes from a CSPRNG.
        let mut key = [0; 4];
        match &mut self.random {
            Some(source) => source.fill(&mut key),
            None => rand::fill(&mut key),
        }
        Some(key)
    }

    fn control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), SendError> {
        if !self.state.can_send() {
            return Err(SendError::Closed);
        }
        if payload.len() > 125 {
            return Err(SendError::ControlPayloadTooLong(payload.len()));
        }
        let mask = self.mask_key();
        self.output
            .frame(opcode, true, false, mask, Payload::Borrowed(payload));
        Ok(())
    }

    fn queue_close(&mut self, code: CloseCode, reason: &str) {
        let mut payload = BytesMut::with_capacity(2 + reason.len());
        CloseFrame::new(
            code,
            Utf8Bytes::from(truncate(reason, CloseFrame::MAX_REASON).to_owned()),
        )
        .encode(&mut payload);
        let mask = self.mask_key();
        self.output.frame(
            OpCode::Close,
            true,
            false,
            mask,
            Payload::Borrowed(&payload),
        );
    }

    /// End the connection without a clean closing handshake.
    fn finish_failed(&mut self, error: CloseError, initiated_by: Side) {
        let (code, reason) = match &error {
            CloseError::Protocol(e) => (e.close_code(), Utf8Bytes::from(e.to_string())),
            _ => (CloseCode::ABNORMAL, Utf8Bytes::new()),
        };
        self.finish(Closed {
            code,
            reason,
            initiated_by,
            error: Some(error),
        });
    }

    fn finish(&mut self, closed: Closed) {
        self.state = self.state.on(Input::Fail);
        self.read_buf.clear();
        self.reader.reset();
        self.timers = Timers::default();
        self.events.push_back(Event::Closed(closed));
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
