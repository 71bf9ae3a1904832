//! RFC 6455 §5.2 and §5.5: reserved opcodes and bits, the length field, control frame rules,
//! and Ping/Pong.

use bytes::Bytes;

use super::{
    frames::{self, wire},
    pair::{
        after, assert_close_sent, client_after, closed, sent_frames, server_after, take_output,
        Pair,
    },
};
use crate::{
    frame::OpCode, CloseCode, CloseError, Config, Connection, Event, Message, ProtocolError, Role,
    SendError, State,
};

/// Feed `frame` (masked as the role requires) to a fresh connection of each role and check that
/// it fails with `code` and `error`, writing exactly one Close frame.
#[track_caller]
fn fails_in_both_roles(frame: &frames::Frame, code: CloseCode, error: &ProtocolError) {
    for role in [Role::Server, Role::Client] {
        let bytes = frame.clone().masked_if(role == Role::Server).bytes();
        let (conn, out, ev) = after(role, Config::default(), &bytes);
        assert_close_sent(role, &out, code);
        assert_eq!(
            closed(&ev).error.as_ref(),
            Some(&CloseError::Protocol(error.clone())),
            "{role:?} {frame:?}"
        );
        assert_eq!(conn.state(), State::Closed);
    }
}

#[test]
fn reserved_opcodes_fail_with_1002() {
    for op in (3..=7).chain(11..=15) {
        fails_in_both_roles(
            &frames::binary("x").opcode(op),
            CloseCode::PROTOCOL,
            &ProtocolError::ReservedOpcode(op),
        );
    }
}

#[test]
fn reserved_opcode_after_valid_frames_keeps_what_came_before() {
    let bytes = wire(&[
        frames::text("ok").masked(),
        frames::binary("").opcode(0xB).masked(),
        frames::text("never").masked(),
    ]);
    let (_, out, ev) = server_after(&bytes);
    assert_eq!(ev[0], Event::Message(Message::text("ok")));
    assert_eq!(ev.len(), 2);
    assert_close_sent(Role::Server, &out, CloseCode::PROTOCOL);
}

#[test]
fn rsv_bits_without_an_extension_fail_with_1002() {
    type Set = fn(frames::Frame) -> frames::Frame;
    let bits: [Set; 3] = [
        frames::Frame::rsv1,
        frames::Frame::rsv2,
        frames::Frame::rsv3,
    ];
    for set in bits {
        for frame in [
            frames::text("x"),
            frames::binary(""),
            frames::ping("p"),
            frames::close(1000, ""),
            frames::text("x").fin(false),
        ] {
            fails_in_both_roles(
                &set(frame),
                CloseCode::PROTOCOL,
                &ProtocolError::ReservedBits,
            );
        }
    }
}

#[test]
fn rsv_bit_on_a_continuation_fails() {
    let bytes = wire(&[
        frames::text("a").fin(false).masked(),
        frames::continuation("b").rsv1().masked(),
    ]);
    let (_, out, ev) = server_after(&bytes);
    assert_close_sent(Role::Server, &out, CloseCode::PROTOCOL);
    assert_eq!(
        closed(&ev).error,
        Some(CloseError::Protocol(ProtocolError::ReservedBits))
    );
}

#[test]
fn control_frames_over_125_bytes_fail_with_1002() {
    let big = [b'a'; 126];
    for frame in [
        frames::ping(big),
        frames::pong(big),
        frames::close(1000, &big[..124]),
    ] {
        fails_in_both_roles(
            &frame,
            CloseCode::PROTOCOL,
            &ProtocolError::ControlFrameTooLong(126),
        );
    }
    // A declared length with no payload behind it fails on the header alone.
    fails_in_both_roles(
        &frames::ping("").len_override(70_000),
        CloseCode::PROTOCOL,
        &ProtocolError::ControlFrameTooLong(70_000),
    );
}

#[test]
fn a_125_byte_ping_is_fine() {
    let payload = [b'z'; 125];
    let (_, out, ev) = server_after(&frames::ping(payload).masked().bytes());
    assert_eq!(ev, [Event::Ping(Bytes::copy_from_slice(&payload))]);
    assert_eq!(out, frames::pong(payload).bytes());
}

#[test]
fn fragmented_control_frames_fail_with_1002() {
    for frame in [
        frames::ping("a"),
        frames::pong("a"),
        frames::close(1000, ""),
    ] {
        fails_in_both_roles(
            &frame.fin(false),
            CloseCode::PROTOCOL,
            &ProtocolError::FragmentedControlFrame,
        );
    }
}

#[test]
fn a_64_bit_length_with_the_top_bit_set_fails_with_1002() {
    for len in [1 << 63, u64::MAX, (1 << 63) | 5] {
        fails_in_both_roles(
            &frames::binary("").len_override(len),
            CloseCode::PROTOCOL,
            &ProtocolError::InvalidLength,
        );
    }
}

#[test]
fn the_largest_valid_64_bit_length_is_too_big_not_invalid() {
    let (_, out, ev) = server_after(&frames::binary("").len64(i64::MAX as u64).masked().bytes());
    assert_close_sent(Role::Server, &out, CloseCode::TOO_BIG);
    assert!(matches!(
        closed(&ev).error,
        Some(CloseError::Protocol(ProtocolError::FrameTooLarge { .. }))
    ));
}

#[test]
fn a_non_minimal_length_encoding_is_accepted() {
    // §5.2 requires the sender to use the minimal encoding; being strict about it on receipt
    // buys nothing, so it is accepted like other implementations do.
    let bytes = frames::text("abc").len64(3).masked().bytes();
    let (_, out, ev) = server_after(&bytes);
    assert_eq!(ev, [Event::Message(Message::text("abc"))]);
    assert!(out.is_empty());
}

#[test]
fn a_ping_is_answered_with_the_same_payload() {
    let (_, out, ev) = server_after(&frames::ping("Hello").masked().bytes());
    assert_eq!(ev, [Event::Ping(Bytes::from_static(b"Hello"))]);
    assert_eq!(out, b"\x8a\x05Hello");

    let (_, out, ev) = server_after(&frames::ping("").masked().bytes());
    assert_eq!(ev, [Event::Ping(Bytes::new())]);
    assert_eq!(out, b"\x8a\x00");

    // A client's pong is masked with a fresh key but carries the same payload.
    let payload: Vec<u8> = (0..125).collect();
    let (_, out, ev) = client_after(&frames::ping(&payload).bytes());
    assert_eq!(ev, [Event::Ping(Bytes::from(payload.clone()))]);
    let sent = sent_frames(Role::Client, &out);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].opcode(), OpCode::Pong);
    assert!(sent[0].header.fin);
    assert_eq!(sent[0].payload, payload);
}

#[test]
fn every_ping_gets_its_own_pong_in_order() {
    let bytes = wire(&[
        frames::ping("1").masked(),
        frames::ping("2").masked(),
        frames::ping("3").masked(),
    ]);
    let (_, out, ev) = server_after(&bytes);
    assert_eq!(ev.len(), 3);
    assert_eq!(
        out,
        wire(&[frames::pong("1"), frames::pong("2"), frames::pong("3")])
    );
}

#[test]
fn unsolicited_pongs_are_reported_and_not_answered() {
    let (server, out, ev) = server_after(&frames::pong("heartbeat").masked().bytes());
    assert_eq!(ev, [Event::Pong(Bytes::from_static(b"heartbeat"))]);
    assert!(out.is_empty());
    assert_eq!(server.state(), State::Open);
}

#[test]
fn ping_and_pong_round_trip_through_a_pair() {
    let mut pair = Pair::new();
    pair.client.ping(b"are you there").unwrap();
    pair.drive();
    assert_eq!(
        pair.server_events(),
        [Event::Ping(Bytes::from_static(b"are you there"))]
    );
    assert_eq!(
        pair.client_events(),
        [Event::Pong(Bytes::from_static(b"are you there"))]
    );
    pair.server.pong(b"one-way").unwrap();
    pair.drive();
    assert_eq!(
        pair.client_events(),
        [Event::Pong(Bytes::from_static(b"one-way"))]
    );
    assert_eq!(pair.server.output_len(), 0);
}

#[test]
fn control_payloads_over_125_bytes_cannot_be_sent() {
    let mut conn = Connection::new(Role::Client, Config::default());
    assert_eq!(
        conn.ping(&[0; 126]),
        Err(SendError::ControlPayloadTooLong(126))
    );
    assert_eq!(
        conn.pong(&[0; 200]),
        Err(SendError::ControlPayloadTooLong(200))
    );
    assert_eq!(conn.ping(&[0; 125]), Ok(()));
    let sent = sent_frames(Role::Client, &take_output(&mut conn));
    assert_eq!(sent.len(), 1, "nothing is queued for the refused payloads");
}
