//! RFC 6455 §5.5.1 and §7: the closing handshake, close code validation, and the end of the
//! transport.

use bytes::Bytes;

use super::{
    frames::{self, wire},
    pair::{
        assert_close_sent, client_after, closed, events, sent_frames, server_after, take_output,
        Pair,
    },
};
use crate::{
    frame::OpCode, CloseCode, CloseError, CloseFrame, Config, Connection, Event, Message,
    ProtocolError, Role, SendError, Side, State,
};

const VALID: &[u16] = &[
    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3001, 3999, 4000,
    4321, 4999,
];

const INVALID: &[u16] = &[
    0, 1, 500, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 5001, 9999, 65535,
];

#[test]
fn every_valid_code_is_echoed() {
    for &code in VALID {
        let (server, out, ev) = server_after(&frames::close(code, "reason").masked().bytes());
        // §5.5.1: the reply carries the same status code.
        let [hi, lo] = code.to_be_bytes();
        assert_eq!(out, [0x88, 0x02, hi, lo], "code {code}");
        let c = closed(&ev);
        assert_eq!(c.code, CloseCode(code));
        assert_eq!(c.reason, "reason");
        assert_eq!(c.initiated_by, Side::Peer);
        assert!(c.is_clean());
        assert_eq!(server.state(), State::Closed);
        assert_eq!(
            server.peer_close(),
            Some(&CloseFrame::new(CloseCode(code), "reason"))
        );
    }
}

#[test]
fn the_client_echoes_masked() {
    let (client, out, ev) = client_after(&frames::close(4000, "bye").bytes());
    assert_eq!(assert_close_sent(Role::Client, &out, CloseCode(4000)), "");
    assert_eq!(closed(&ev).code, CloseCode(4000));
    assert_eq!(client.state(), State::Closed);
}

#[test]
fn every_invalid_code_fails_with_1002() {
    for &code in INVALID {
        for role in [Role::Server, Role::Client] {
            let bytes = frames::close(code, "")
                .masked_if(role == Role::Server)
                .bytes();
            let (_, out, ev) = super::pair::after(role, Config::default(), &bytes);
            assert_close_sent(role, &out, CloseCode::PROTOCOL);
            let c = closed(&ev);
            assert_eq!(c.code, CloseCode::PROTOCOL, "code {code}");
            assert_eq!(
                c.error,
                Some(CloseError::Protocol(ProtocolError::InvalidCloseCode(code)))
            );
            assert_eq!(c.initiated_by, Side::Local);
        }
    }
}

#[test]
fn a_one_byte_close_payload_fails_with_1002() {
    let (_, out, ev) = server_after(&frames::close_raw([0x03]).masked().bytes());
    assert_close_sent(Role::Server, &out, CloseCode::PROTOCOL);
    assert_eq!(
        closed(&ev).error,
        Some(CloseError::Protocol(ProtocolError::InvalidClosePayload))
    );
}

#[test]
fn an_invalid_utf8_reason_fails_with_1007() {
    for reason in [&b"\xff"[..], b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf"] {
        let (_, out, ev) = server_after(&frames::close(1000, reason).masked().bytes());
        assert_close_sent(Role::Server, &out, CloseCode::INVALID_DATA);
        assert_eq!(
            closed(&ev).error,
            Some(CloseError::Protocol(ProtocolError::InvalidUtf8)),
            "{reason:?}"
        );
    }
}

#[test]
fn a_multibyte_reason_is_delivered() {
    let reason = "au revoir — 再见 🙂";
    let (_, _, ev) = server_after(&frames::close(1000, reason).masked().bytes());
    assert_eq!(closed(&ev).reason, reason);
}

#[test]
fn an_empty_close_is_answered_with_an_empty_close() {
    let (_, out, ev) = server_after(&frames::close_raw("").masked().bytes());
    assert_eq!(out, [0x88, 0x00]);
    let c = closed(&ev);
    assert_eq!(c.code, CloseCode::NO_STATUS);
    assert!(c.reason.is_empty());
    assert!(c.is_clean());
}

#[test]
fn local_close_then_the_peers_reply() {
    let mut server = Connection::new(Role::Server, Config::default());
    server.close(CloseCode::NORMAL, "bye").unwrap();
    assert_eq!(take_output(&mut server), b"\x88\x05\x03\xe8bye");
    assert_eq!(server.state(), State::Closing);

    // §7.1.2: data may still arrive until the peer's Close; it is delivered.
    server.receive_bytes(&wire(&[
        frames::text("late").masked(),
        frames::close(1000, "").masked(),
    ]));
    let ev = events(&mut server);
    assert_eq!(ev[0], Event::Message(Message::text("late")));
    let c = closed(&ev);
    assert_eq!(c.code, CloseCode::NORMAL);
    assert_eq!(c.initiated_by, Side::Local);
    assert!(c.is_clean());
    assert_eq!(server.state(), State::Closed);
    assert!(take_output(&mut server).is_empty(), "no second Close frame");
}

#[test]
fn no_data_after_close_is_sent() {
    let mut server = Connection::new(Role::Server, Config::default());
    server.close(CloseCode::NORMAL, "").unwrap();
    let _ = take_output(&mut server);
    assert_eq!(server.send(Message::text("x")), Err(SendError::Closed));
    assert_eq!(server.ping(b""), Err(SendError::Closed));
    assert_eq!(server.pong(b""), Err(SendError::Closed));
    // A ping that arrives while closing is reported, but §5.5.1 forbids answering it.
    server.receive_bytes(&frames::ping("late").masked().bytes());
    assert_eq!(
        server.poll_event(),
        Some(Event::Ping(Bytes::from_static(b"late")))
    );
    assert!(take_output(&mut server).is_empty());

    let (mut peer_closed, _, _) = server_after(&frames::close(1000, "").masked().bytes());
    assert_eq!(peer_closed.send(Message::text("x")), Err(SendError::Closed));
    assert_eq!(peer_closed.ping(b"x"), Err(SendError::Closed));
    assert!(take_output(&mut peer_closed).is_empty());
}

#[test]
fn bytes_after_the_peers_close_are_ignored() {
    let bytes = wire(&[
        frames::close(1000, "").masked(),
        frames::text("after").masked(),
        frames::ping("after").masked(),
    ]);
    let (mut server, out, ev) = server_after(&bytes);
    assert_eq!(out, frames::close(1000, "").bytes());
    assert_eq!(ev.len(), 1);
    // Including bytes that arrive in later reads, valid or not.
    server.receive_bytes(&frames::text("later").bytes());
    server.receive_eof();
    assert_eq!(server.poll_event(), None);
    assert!(take_output(&mut server).is_empty());
}

#[test]
fn close_rejects_codes_that_may_not_be_sent_and_long_reasons() {
    let mut conn = Connection::new(Role::Server, Config::default());
    for code in [1005, 1006, 1015, 999, 5000] {
        assert_eq!(
            conn.close(CloseCode(code), ""),
            Err(SendError::InvalidCloseCode(code))
        );
    }
    assert_eq!(
        conn.close(CloseCode::NORMAL, &"x".repeat(124)),
        Err(SendError::ControlPayloadTooLong(126))
    );
    assert_eq!(conn.state(), State::Open);
    assert_eq!(conn.output_len(), 0);
    // The longest reason that fits is fine.
    conn.close(CloseCode::NORMAL, &"x".repeat(123)).unwrap();
    let sent = sent_frames(Role::Server, &take_output(&mut conn));
    assert_eq!(sent[0].payload.len(), 125);
}

#[test]
fn closing_twice_sends_one_frame() {
    let mut conn = Connection::new(Role::Client, Config::default());
    conn.close(CloseCode::NORMAL, "a").unwrap();
    conn.close(CloseCode::AWAY, "b").unwrap();
    let sent = sent_frames(Role::Client, &take_output(&mut conn));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].close(), Some((CloseCode::NORMAL, "a")));
}

#[test]
fn either_side_can_start_the_closing_handshake() {
    for client_starts in [true, false] {
        let mut pair = Pair::new();
        pair.client.send(Message::text("last words")).unwrap();
        let (first, code) = if client_starts {
            (&mut pair.client, CloseCode::AWAY)
        } else {
            (&mut pair.server, CloseCode(4001))
        };
        first.close(code, "done").unwrap();
        pair.drive();
        let server_events = pair.server_events();
        assert_eq!(
            server_events[0],
            Event::Message(Message::text("last words"))
        );
        for (ev, local) in [
            (server_events, !client_starts),
            (pair.client_events(), client_starts),
        ] {
            let c = closed(&ev);
            assert!(c.is_clean());
            assert_eq!(c.code, code);
            let expected = if local { Side::Local } else { Side::Peer };
            assert_eq!(c.initiated_by, expected);
        }
        assert_eq!(pair.client.state(), State::Closed);
        assert_eq!(pair.server.state(), State::Closed);
    }
}

#[test]
fn simultaneous_closes_finish_both_sides() {
    let mut pair = Pair::new();
    pair.client.close(CloseCode::NORMAL, "c").unwrap();
    pair.server.close(CloseCode::AWAY, "s").unwrap();
    let client_wire = take_output(&mut pair.client);
    let server_wire = take_output(&mut pair.server);
    pair.server.receive_bytes(&client_wire);
    pair.client.receive_bytes(&server_wire);
    // Each side got the other's Close while closing: neither answers again.
    assert_eq!(pair.client.output_len() + pair.server.output_len(), 0);
    let c = closed(&pair.client_events()).clone();
    let s = closed(&pair.server_events()).clone();
    assert_eq!((c.code, c.initiated_by), (CloseCode::AWAY, Side::Local));
    assert_eq!((s.code, s.initiated_by), (CloseCode::NORMAL, Side::Local));
}

#[test]
fn eof_without_a_close_is_abnormal() {
    for role in [Role::Server, Role::Client] {
        let mut conn = Connection::new(role, Config::default());
        // Even in the middle of a frame.
        conn.receive_bytes(
            &frames::text("partial")
                .masked_if(role == Role::Server)
                .bytes()[..4],
        );
        conn.receive_eof();
        let ev = events(&mut conn);
        let c = closed(&ev);
        assert_eq!(c.code, CloseCode::ABNORMAL);
        assert_eq!(c.error, Some(CloseError::UnexpectedEof));
        assert_eq!(c.initiated_by, Side::Peer);
        assert_eq!(ev.len(), 1);
        assert_eq!(conn.state(), State::Closed);
        // §7.1.5: 1006 is never sent; there is nobody to send it to.
        assert!(take_output(&mut conn).is_empty());
    }
}

#[test]
fn eof_while_closing_is_abnormal_and_eof_after_close_is_quiet() {
    let mut conn = Connection::new(Role::Client, Config::default());
    conn.close(CloseCode::NORMAL, "").unwrap();
    let _ = take_output(&mut conn);
    conn.receive_eof();
    assert_eq!(
        closed(&events(&mut conn)).error,
        Some(CloseError::UnexpectedEof)
    );

    let (mut done, _, _) = client_after(&frames::close(1000, "").bytes());
    done.receive_eof();
    assert_eq!(done.poll_event(), None);
}

#[test]
fn the_failing_close_reason_names_the_violation_and_fits() {
    let (_, out, _) = server_after(&frames::binary("").opcode(5).masked().bytes());
    let reason = assert_close_sent(Role::Server, &out, CloseCode::PROTOCOL);
    assert!(reason.contains("opcode"), "{reason:?}");
    let sent = sent_frames(Role::Server, &out);
    assert_eq!(sent[0].opcode(), OpCode::Close);
}

#[test]
fn a_violation_while_closing_fails_without_a_second_close() {
    let mut server = Connection::new(Role::Server, Config::default());
    server.close(CloseCode::NORMAL, "").unwrap();
    let _ = take_output(&mut server);
    server.receive_bytes(&frames::text(b"\xff").masked().bytes());
    // §5.5.1: after our Close nothing more is sent, not even the 1007.
    assert!(take_output(&mut server).is_empty());
    let ev = events(&mut server);
    let c = closed(&ev);
    assert_eq!(c.code, CloseCode::INVALID_DATA);
    assert_eq!(
        c.error,
        Some(CloseError::Protocol(ProtocolError::InvalidUtf8))
    );
    assert_eq!(server.state(), State::Closed);
}

#[test]
fn the_reported_code_is_the_one_received() {
    // §7.1.5: "the WebSocket Connection Close Code is ... the status code contained in the
    // first Close control frame received", even when the peer answers ours with another code.
    let mut server = Connection::new(Role::Server, Config::default());
    server.close(CloseCode(4000), "ours").unwrap();
    server.receive_bytes(&frames::close(1001, "theirs").masked().bytes());
    let ev = events(&mut server);
    let c = closed(&ev);
    assert_eq!((c.code, c.reason.as_str()), (CloseCode::AWAY, "theirs"));
    assert_eq!(c.initiated_by, Side::Local);
}

#[test]
fn eof_right_behind_a_close_that_is_not_read_yet_is_still_clean() {
    // The server sends a message and its Close, then closes TCP (§7.1.1); the client's reader
    // sees the bytes and the end of stream before the application takes any event.
    let mut client = Connection::new(Role::Client, Config::default());
    client.receive_bytes(&wire(&[frames::text("last"), frames::close(1000, "bye")]));
    client.receive_eof();
    let ev = events(&mut client);
    assert_eq!(ev[0], Event::Message(Message::text("last")));
    let c = closed(&ev);
    assert!(c.is_clean(), "{c:?}");
    assert_eq!((c.code, c.reason.as_str()), (CloseCode::NORMAL, "bye"));
    assert_close_sent(Role::Client, &take_output(&mut client), CloseCode::NORMAL);
}
