//! A client and a server [`Connection`] joined in memory, plus helpers to drive one connection
//! by hand and to read back what it wrote.
//!
//! Everything is deterministic except the client's masking keys, which the helpers undo.

use std::time::Instant;

use bytes::BytesMut;

use crate::{
    frame::{FrameHeader, OpCode},
    mask::apply_mask,
    CloseCode, Config, Connection, Event, Role,
};

/// Two connected endpoints and a synthetic clock.
///
/// A connection reads lazily, one event at a time, so after each delivery the pair takes every
/// event from the receiving side (as an application reading in a loop would) and keeps it for
/// [`client_events`](Self::client_events) and [`server_events`](Self::server_events).
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) client: Connection,
    pub(crate) server: Connection,
    /// The time handed to `poll_timeout`/`handle_timeout`; tests move it forward by hand.
    pub(crate) now: Instant,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
}

impl Pair {
    pub(crate) fn new() -> Self {
        Self::with_configs(Config::default(), Config::default())
    }

    pub(crate) fn with_configs(client: Config, server: Config) -> Self {
        Self {
            client: Connection::new(Role::Client, client),
            server: Connection::new(Role::Server, server),
            now: Instant::now(),
            client_events: Vec::new(),
            server_events: Vec::new(),
        }
    }

    /// The client's events so far, taken.
    pub(crate) fn client_events(&mut self) -> Vec<Event> {
        self.client_events.extend(events(&mut self.client));
        std::mem::take(&mut self.client_events)
    }

    /// The server's events so far, taken.
    pub(crate) fn server_events(&mut self) -> Vec<Event> {
        self.server_events.extend(events(&mut self.server));
        std::mem::take(&mut self.server_events)
    }

    /// Move the client's pending output to the server, in one piece. Returns the bytes moved.
    pub(crate) fn drive_client(&mut self) -> Vec<u8> {
        let wire = take_output(&mut self.client);
        self.server.receive_bytes(&wire);
        self.server_events.extend(events(&mut self.server));
        wire
    }

    /// Move the server's pending output to the client, in one piece. Returns the bytes moved.
    pub(crate) fn drive_server(&mut self) -> Vec<u8> {
        let wire = take_output(&mut self.server);
        self.client.receive_bytes(&wire);
        self.client_events.extend(events(&mut self.client));
        wire
    }

    /// Move the client's pending output to the server in pieces of the given sizes (cycled;
    /// a size of 0 delivers an empty read).
    pub(crate) fn drive_client_chunked(&mut self, sizes: &[usize]) -> Vec<u8> {
        let wire = take_output(&mut self.client);
        feed_chunked(&mut self.server, &wire, sizes);
        self.server_events.extend(events(&mut self.server));
        wire
    }

    /// Move the server's pending output to the client in pieces of the given sizes.
    pub(crate) fn drive_server_chunked(&mut self, sizes: &[usize]) -> Vec<u8> {
        let wire = take_output(&mut self.server);
        feed_chunked(&mut self.client, &wire, sizes);
        self.client_events.extend(events(&mut self.client));
        wire
    }

    /// Exchange bytes both ways until neither side has anything left to write.
    pub(crate) fn drive(&mut self) {
        // Each round trip either empties both queues or answers something (a pong, a close
        // echo); a conversation of hand-written tests never needs more than a few rounds.
        for _ in 0..16 {
            if self.client.output_len() == 0 && self.server.output_len() == 0 {
                return;
            }
            self.drive_client();
            self.drive_server();
        }
        panic!("the pair kept producing output after 16 rounds");
    }
}

/// Everything `conn` has queued for the transport.
pub(crate) fn take_output(conn: &mut Connection) -> Vec<u8> {
    let mut buf = BytesMut::new();
    conn.poll_output(&mut buf);
    buf.to_vec()
}

/// Every event `conn` has queued.
pub(crate) fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

/// Feed `data` to `conn` in pieces whose sizes cycle through `sizes`, the way reads from a
/// socket may split it. Zero sizes are empty reads; an all-zero `sizes` is treated as `[1]`.
pub(crate) fn feed_chunked(conn: &mut Connection, data: &[u8], sizes: &[usize]) {
    let sizes: &[usize] = if sizes.iter().all(|&s| s == 0) {
        &[1]
    } else {
        sizes
    };
    let mut rest = data;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        conn.receive_bytes(piece);
        rest = tail;
    }
}

/// A server that has received `data` in one read, with its output and events.
pub(crate) fn server_after(data: &[u8]) -> (Connection, Vec<u8>, Vec<Event>) {
    after(Role::Server, Config::default(), data)
}

/// A client that has received `data` in one read, with its output and events.
pub(crate) fn client_after(data: &[u8]) -> (Connection, Vec<u8>, Vec<Event>) {
    after(Role::Client, Config::default(), data)
}

/// A connection of `role` that has received `data` in one read, with its output and events.
pub(crate) fn after(role: Role, config: Config, data: &[u8]) -> (Connection, Vec<u8>, Vec<Event>) {
    let mut conn = Connection::new(role, config);
    conn.receive_bytes(data);
    // Events first: taking them lets the connection read on, which may queue more output.
    let events = events(&mut conn);
    let out = take_output(&mut conn);
    (conn, out, events)
}

/// A frame read back from a connection's output, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sent {
    pub(crate) header: FrameHeader,
    pub(crate) payload: Vec<u8>,
}

impl Sent {
    pub(crate) fn opcode(&self) -> OpCode {
        self.header.opcode
    }

    /// The close code and reason, for a Close frame with a payload.
    pub(crate) fn close(&self) -> Option<(CloseCode, &str)> {
        assert_eq!(self.opcode(), OpCode::Close);
        let (code, reason) = self.payload.split_first_chunk::<2>()?;
        let reason = std::str::from_utf8(reason).expect("close reason is UTF-8");
        Some((CloseCode(u16::from_be_bytes(*code)), reason))
    }
}

/// Split the output of a connection of role `from` into frames, checking on the way that every
/// frame is masked exactly when `from` is a client (RFC 6455 §5.1) and that no bytes trail.
pub(crate) fn sent_frames(from: Role, mut wire: &[u8]) -> Vec<Sent> {
    let mut frames = Vec::new();
    while !wire.is_empty() {
        let (header, len) = FrameHeader::parse(wire)
            .expect("connection wrote an invalid header")
            .expect("connection wrote a truncated header");
        assert_eq!(
            header.mask.is_some(),
            from.masks_outgoing(),
            "masking of {header:?} from a {from:?}"
        );
        let end = len + header.payload_len as usize;
        let mut payload = wire
            .get(len..end)
            .expect("connection wrote a truncated payload")
            .to_vec();
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key, 0);
        }
        frames.push(Sent { header, payload });
        wire = &wire[end..];
    }
    frames
}

/// Assert that `wire`, written by a `from`, is exactly one Close frame with `code`: FIN set,
/// no RSV bits, masked only by a client, a UTF-8 reason that fits in a control frame. Returns
/// the reason.
#[track_caller]
pub(crate) fn assert_close_sent(from: Role, wire: &[u8], code: CloseCode) -> String {
    let frames = sent_frames(from, wire);
    assert_eq!(frames.len(), 1, "expected one Close frame, got {frames:?}");
    let frame = &frames[0];
    let h = frame.header;
    assert!(h.fin && !h.rsv1 && !h.rsv2 && !h.rsv3, "{h:?}");
    assert!(frame.payload.len() <= 125, "{h:?}");
    let (sent, reason) = frame.close().expect("Close frame without a status code");
    assert_eq!(sent, code, "reason {reason:?}");
    reason.to_owned()
}

/// The single `Closed` event at the end of `events`; checks that nothing follows it.
#[track_caller]
pub(crate) fn closed(events: &[Event]) -> &crate::Closed {
    let closed: Vec<_> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Event::Closed(c) => Some((i, c)),
            _ => None,
        })
        .collect();
    match closed[..] {
        [(i, c)] if i + 1 == events.len() => c,
        _ => panic!("expected one final Closed event, got {events:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Message, State};

    #[test]
    fn messages_cross_in_both_directions() {
        let mut pair = Pair::new();
        pair.client.send(Message::text("from client")).unwrap();
        pair.server
            .send(Message::binary(&b"from server"[..]))
            .unwrap();
        pair.drive();
        assert_eq!(
            pair.server_events(),
            [Event::Message(Message::text("from client"))]
        );
        assert_eq!(
            pair.client_events(),
            [Event::Message(Message::binary(&b"from server"[..]))]
        );
    }

    #[test]
    fn byte_by_byte_delivery_of_every_length_class() {
        let mut pair = Pair::new();
        let sizes = [0, 1, 125, 126, 65535, 65536, 70_000];
        for &len in &sizes {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            pair.client.send(Message::binary(payload.clone())).unwrap();
            pair.server.send(Message::binary(payload)).unwrap();
        }
        pair.drive_client_chunked(&[1, 7, 0, 4096]);
        pair.drive_server_chunked(&[3, 1, 65536]);
        for ev in [pair.server_events(), pair.client_events()] {
            let got: Vec<usize> = ev
                .into_iter()
                .map(|e| match e {
                    Event::Message(Message::Binary(b)) => {
                        assert!(b.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
                        b.len()
                    }
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(got, sizes);
        }
    }

    #[test]
    fn sent_frames_unmasks_client_output() {
        let mut client = Connection::new(Role::Client, Config::default());
        client.send(Message::text("hello")).unwrap();
        let frames = sent_frames(Role::Client, &take_output(&mut client));
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].opcode(), OpCode::Text);
        assert_eq!(frames[0].payload, b"hello");
    }

    #[test]
    fn a_clean_close_leaves_both_sides_closed() {
        let mut pair = Pair::new();
        pair.client.close(CloseCode::NORMAL, "done").unwrap();
        pair.drive();
        assert_eq!(pair.client.state(), State::Closed);
        assert_eq!(pair.server.state(), State::Closed);
        assert!(closed(&pair.client_events()).is_clean());
        assert!(closed(&pair.server_events()).is_clean());
    }
}
