//! RFC 6455 §5.4: fragmented messages, control frames between fragments, and the two ways to
//! get the order of fragments wrong.

use bytes::Bytes;

use super::{
    frames::{self, wire},
    pair::{assert_close_sent, client_after, closed, feed_chunked, server_after, take_output},
};
use crate::{
    CloseCode, CloseError, Config, Connection, Event, Message, ProtocolError, Role, State,
};

#[test]
fn rfc_example_of_a_fragmented_text() {
    // RFC 6455 §5.7: "Hel" then "lo", unmasked, from a server.
    let (_, out, ev) = client_after(b"\x01\x03Hel\x80\x02lo");
    assert_eq!(ev, [Event::Message(Message::text("Hello"))]);
    assert!(out.is_empty());
}

#[test]
fn many_fragments_including_empty_ones() {
    let bytes = wire(&[
        frames::binary("").fin(false).masked(),
        frames::continuation("ab").fin(false).masked(),
        frames::continuation("").fin(false).masked(),
        frames::continuation("cde").fin(false).masked(),
        frames::continuation("").masked(),
    ]);
    let (_, out, ev) = server_after(&bytes);
    assert_eq!(ev, [Event::Message(Message::binary(&b"abcde"[..]))]);
    assert!(out.is_empty());
}

#[test]
fn control_frames_between_fragments_are_handled_at_once() {
    let bytes = wire(&[
        frames::text("He").fin(false).masked(),
        frames::ping("p1").masked(),
        frames::continuation("ll").fin(false).masked(),
        frames::pong("unsolicited").masked(),
        frames::ping("").masked(),
        frames::continuation("o").masked(),
    ]);
    let (_, out, ev) = server_after(&bytes);
    assert_eq!(
        ev,
        [
            Event::Ping(Bytes::from_static(b"p1")),
            Event::Pong(Bytes::from_static(b"unsolicited")),
            Event::Ping(Bytes::new()),
            Event::Message(Message::text("Hello")),
        ]
    );
    // Each ping is answered as it arrives, not after the message.
    assert_eq!(out, wire(&[frames::pong("p1"), frames::pong("")]));
}

#[test]
fn a_pong_goes_out_before_the_message_completes() {
    let mut server = Connection::new(Role::Server, Config::default());
    server.receive_bytes(&wire(&[
        frames::binary("a").fin(false).masked(),
        frames::ping("now").masked(),
    ]));
    assert_eq!(take_output(&mut server), frames::pong("now").bytes());
    assert_eq!(
        server.poll_event(),
        Some(Event::Ping(Bytes::from_static(b"now")))
    );
    assert_eq!(server.poll_event(), None);
    server.receive_bytes(&frames::continuation("b").masked().bytes());
    assert_eq!(
        server.poll_event(),
        Some(Event::Message(Message::binary(&b"ab"[..])))
    );
}

#[test]
fn a_close_between_fragments_ends_the_connection_cleanly() {
    let bytes = wire(&[
        frames::text("part").fin(false).masked(),
        frames::close(1001, "going").masked(),
        frames::continuation("never").masked(),
    ]);
    let (server, out, ev) = server_after(&bytes);
    assert_eq!(out, frames::close(1001, "").bytes());
    let c = closed(&ev);
    assert!(c.is_clean());
    assert_eq!(c.code, CloseCode::AWAY);
    assert_eq!(ev.len(), 1, "the unfinished message is dropped: {ev:?}");
    assert_eq!(server.state(), State::Closed);
}

#[test]
fn continuation_without_a_start_fails() {
    for frame in [
        frames::continuation("x").masked(),
        frames::continuation("x").fin(false).masked(),
        frames::continuation("").masked(),
    ] {
        let (_, out, ev) = server_after(&frame.bytes());
        assert_close_sent(Role::Server, &out, CloseCode::PROTOCOL);
        assert_eq!(
            closed(&ev).error,
            Some(CloseError::Protocol(ProtocolError::UnexpectedContinuation)),
            "{frame:?}"
        );
    }
}

#[test]
fn continuation_after_a_finished_message_fails() {
    let bytes = wire(&[
        frames::text("a").fin(false).masked(),
        frames::continuation("b").masked(),
        frames::continuation("c").masked(),
    ]);
    let (_, out, ev) = server_after(&bytes);
    assert_eq!(ev[0], Event::Message(Message::text("ab")));
    assert_close_sent(Role::Server, &out, CloseCode::PROTOCOL);
    assert_eq!(
        closed(&ev).error,
        Some(CloseError::Protocol(ProtocolError::UnexpectedContinuation))
    );
}

#[test]
fn a_new_data_frame_inside_an_open_message_fails() {
    for (first, second) in [
        (frames::text("a"), frames::text("b")),
        (frames::text("a"), frames::binary("b")),
        (frames::binary("a"), frames::binary("b").fin(false)),
        (frames::binary("a"), frames::text("")),
    ] {
        let bytes = wire(&[first.fin(false).masked(), second.masked()]);
        let (_, out, ev) = server_after(&bytes);
        assert_close_sent(Role::Server, &out, CloseCode::PROTOCOL);
        assert_eq!(
            closed(&ev).error,
            Some(CloseError::Protocol(ProtocolError::ExpectedContinuation))
        );
        assert_eq!(ev.len(), 1, "{ev:?}");
    }
}

#[test]
fn messages_follow_each_other_after_reassembly() {
    let bytes = wire(&[
        frames::text("one ").fin(false).masked(),
        frames::continuation("two").masked(),
        frames::binary([1, 2]).fin(false).masked(),
        frames::continuation([3]).masked(),
        frames::text("single").masked(),
    ]);
    for size in [1, 3, bytes.len()] {
        let mut server = Connection::new(Role::Server, Config::default());
        feed_chunked(&mut server, &bytes, &[size]);
        let ev: Vec<_> = std::iter::from_fn(|| server.poll_event()).collect();
        assert_eq!(
            ev,
            [
                Event::Message(Message::text("one two")),
                Event::Message(Message::binary(vec![1, 2, 3])),
                Event::Message(Message::text("single")),
            ],
            "size {size}"
        );
    }
}

#[test]
fn the_message_type_comes_from_the_first_fragment() {
    // Continuations carry no type: a text start makes the whole message text (and validated).
    let bytes = wire(&[
        frames::text(&"é".as_bytes()[..1]).fin(false).masked(),
        frames::continuation(&"é".as_bytes()[1..]).masked(),
    ]);
    let (_, _, ev) = server_after(&bytes);
    assert_eq!(ev, [Event::Message(Message::text("é"))]);
}
