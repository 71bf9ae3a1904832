//! The reading contract: a connection reads one event at a time, so what the application does
//! in answer to an event goes out before the reaction to any later frame.

use bytes::Bytes;

use super::{
    frames::{self, wire},
    pair::{assert_close_sent, closed, events, sent_frames, take_output},
};
use crate::{frame::OpCode, CloseCode, Config, Connection, Event, Message, Role, State};

/// An echo server: takes every event and sends each message back.
fn echo(conn: &mut Connection) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Some(event) = conn.poll_event() {
        if let Event::Message(m) = &event {
            conn.send(m.clone()).unwrap();
        }
        seen.push(event);
    }
    seen
}

#[test]
fn replies_go_out_before_the_close_for_a_later_violation() {
    let mut server = Connection::new(Role::Server, Config::default());
    server.receive_bytes(&wire(&[
        frames::text("a").masked(),
        frames::text("b").masked(),
        frames::binary("").opcode(3).masked(),
    ]));
    let ev = echo(&mut server);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert_eq!(closed(&ev).code, CloseCode::PROTOCOL);
    let out = take_output(&mut server);
    let (replies, close) = out.split_at(6);
    assert_eq!(replies, wire(&[frames::text("a"), frames::text("b")]));
    assert_close_sent(Role::Server, close, CloseCode::PROTOCOL);
}

#[test]
fn a_ping_behind_a_message_is_answered_once_the_message_is_taken() {
    let mut server = Connection::new(Role::Server, Config::default());
    server.receive_bytes(&wire(&[
        frames::text("first").masked(),
        frames::ping("p").masked(),
    ]));
    assert_eq!(
        server.poll_event(),
        Some(Event::Message(Message::text("first")))
    );
    server.send(Message::text("reply")).unwrap();
    assert_eq!(
        server.poll_event(),
        Some(Event::Ping(Bytes::from_static(b"p")))
    );
    let sent: Vec<OpCode> = sent_frames(Role::Server, &take_output(&mut server))
        .iter()
        .map(super::pair::Sent::opcode)
        .collect();
    assert_eq!(sent, [OpCode::Text, OpCode::Pong]);
}

#[test]
fn has_events_tells_whether_polling_would_yield() {
    let mut server = Connection::new(Role::Server, Config::default());
    assert!(!server.has_events());
    let bytes = wire(&[frames::text("x").masked(), frames::text("y").masked()]);
    // Half a frame is not an event yet.
    server.read_buf().extend_from_slice(&bytes[..4]);
    server.receive();
    assert!(!server.has_events());
    server.read_buf().extend_from_slice(&bytes[4..]);
    server.receive();
    assert!(server.has_events());
    assert!(server.poll_event().is_some());
    // The second frame is complete in the buffer, not yet read.
    assert!(server.has_events());
    assert!(server.poll_event().is_some());
    assert!(!server.has_events());
    assert_eq!(server.poll_event(), None);
}

#[test]
fn an_invalid_header_counts_as_an_event() {
    let mut server = Connection::new(Role::Server, Config::default());
    server.receive_bytes(&wire(&[
        frames::text("x").masked(),
        frames::binary("").rsv2().masked(),
    ]));
    assert!(server.poll_event().is_some());
    assert!(
        server.has_events(),
        "the bad frame will fail the connection"
    );
    assert!(matches!(server.poll_event(), Some(Event::Closed(_))));
    assert_eq!(server.state(), State::Closed);
}

#[test]
fn eof_is_reported_after_the_events_before_it() {
    let mut server = Connection::new(Role::Server, Config::default());
    server.receive_bytes(&wire(&[
        frames::text("one").masked(),
        frames::text("two").masked(),
    ]));
    server.receive_eof();
    let ev = events(&mut server);
    assert_eq!(
        ev[..2],
        [
            Event::Message(Message::text("one")),
            Event::Message(Message::text("two")),
        ]
    );
    assert_eq!(closed(&ev).code, CloseCode::ABNORMAL);
    assert!(take_output(&mut server).is_empty());
}
