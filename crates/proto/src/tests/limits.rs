//! Configured size limits: frames and messages over them fail the connection with 1009, as
//! soon as a header announces too much and before the payload is buffered.

use super::{
    frames::{self, wire},
    pair::{after, assert_close_sent, closed, events, take_output, Pair},
};
use crate::{
    CloseCode, CloseError, Config, Connection, Event, Message, ProtocolError, Role, SendError,
    State,
};

fn small() -> Config {
    Config::default().max_frame_size(100).max_message_size(250)
}

fn server(config: Config, bytes: &[u8]) -> (Connection, Vec<u8>, Vec<Event>) {
    after(Role::Server, config, bytes)
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = Config::default();
    assert_eq!(c.max_frame_size, 16 << 20);
    assert_eq!(c.max_message_size, 64 << 20);
}

#[test]
fn a_frame_at_the_limit_passes_and_one_byte_more_fails() {
    let (_, out, ev) = server(small(), &frames::binary([7; 100]).masked().bytes());
    assert_eq!(ev, [Event::Message(Message::binary(vec![7; 100]))]);
    assert!(out.is_empty());

    let (_, out, ev) = server(small(), &frames::binary([7; 101]).masked().bytes());
    assert_close_sent(Role::Server, &out, CloseCode::TOO_BIG);
    assert_eq!(
        closed(&ev).error,
        Some(CloseError::Protocol(ProtocolError::FrameTooLarge {
            size: 101,
            max: 100
        }))
    );
}

#[test]
fn an_oversized_frame_fails_on_its_header_alone() {
    // Only the header arrives: nothing of the announced gigabyte is waited for or buffered.
    let header = frames::binary("").len_override(1 << 30).masked().header();
    let (conn, out, ev) = server(Config::default(), &header);
    assert_close_sent(Role::Server, &out, CloseCode::TOO_BIG);
    assert_eq!(closed(&ev).code, CloseCode::TOO_BIG);
    assert_eq!(conn.state(), State::Closed);
}

#[test]
fn a_fragmented_message_over_the_limit_fails_at_the_crossing_fragment() {
    let ok = [
        frames::text("a".repeat(100)).fin(false).masked(),
        frames::continuation("b".repeat(100)).fin(false).masked(),
    ];
    let mut conn = Connection::new(Role::Server, small());
    conn.receive_bytes(&wire(&ok));
    assert_eq!(conn.state(), State::Open);
    // 200 so far; a 51-byte fragment makes 251 > 250, and its header is enough to tell.
    conn.receive_bytes(&frames::continuation("c".repeat(51)).masked().header());
    assert_close_sent(Role::Server, &take_output(&mut conn), CloseCode::TOO_BIG);
    assert_eq!(
        closed(&events(&mut conn)).error,
        Some(CloseError::Protocol(ProtocolError::MessageTooLarge {
            size: 251,
            max: 250
        }))
    );
}

#[test]
fn a_message_exactly_at_the_limit_passes() {
    let bytes = wire(&[
        frames::binary([1; 100]).fin(false).masked(),
        frames::continuation([2; 100]).fin(false).masked(),
        frames::continuation([3; 50]).masked(),
    ]);
    let (_, out, ev) = server(small(), &bytes);
    assert!(out.is_empty());
    match &ev[..] {
        [Event::Message(m)] => assert_eq!(m.len(), 250),
        other => panic!("{other:?}"),
    }
}

#[test]
fn control_frames_do_not_count_towards_the_message() {
    let bytes = wire(&[
        frames::binary([1; 100]).fin(false).masked(),
        frames::ping([0; 125]).masked(),
        frames::continuation([2; 100]).fin(false).masked(),
        frames::pong([0; 125]).masked(),
        frames::continuation([3; 50]).masked(),
    ]);
    let (_, out, ev) = server(small(), &bytes);
    assert_eq!(out, frames::pong([0; 125]).bytes());
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(matches!(&ev[2], Event::Message(m) if m.len() == 250));
}

#[test]
fn the_count_starts_again_with_each_message() {
    let one = [
        frames::text("x".repeat(100)).fin(false).masked(),
        frames::continuation("y".repeat(100)).fin(false).masked(),
        frames::continuation("z".repeat(50)).masked(),
    ];
    let bytes = wire(one.iter().chain(&one).chain(&one));
    let (conn, out, ev) = server(small(), &bytes);
    assert!(out.is_empty());
    assert_eq!(ev.len(), 3);
    assert_eq!(conn.state(), State::Open);
}

#[test]
fn the_client_enforces_its_limits_too() {
    let mut pair = Pair::with_configs(small(), Config::default());
    pair.server.send(Message::binary(vec![0; 100])).unwrap();
    pair.server.send(Message::binary(vec![0; 101])).unwrap();
    pair.drive_server();
    let ev = pair.client_events();
    assert!(matches!(&ev[0], Event::Message(m) if m.len() == 100));
    assert_eq!(closed(&ev).code, CloseCode::TOO_BIG);
    let out = take_output(&mut pair.client);
    assert_close_sent(Role::Client, &out, CloseCode::TOO_BIG);
    // The server reads the client's 1009 and finishes the handshake.
    pair.server.receive_bytes(&out);
    assert_eq!(closed(&pair.server_events()).code, CloseCode::TOO_BIG);
    assert_eq!(pair.server.send(Message::text("x")), Err(SendError::Closed));
}
