//! RFC 6455 §5.1 and §5.3: clients mask every frame, servers none, and each side fails the
//! connection when the other breaks that rule.

use super::{
    frames::{self, KEY},
    pair::{
        assert_close_sent, client_after, closed, events, feed_chunked, sent_frames, server_after,
        take_output, Pair,
    },
};
use crate::{
    CloseCode, CloseError, Config, Connection, Event, Message, ProtocolError, Role, Side, State,
};

#[test]
fn server_unmasks_the_rfc_example() {
    let (_, out, ev) = server_after(&frames::text("Hello").masked().bytes());
    assert_eq!(ev, [Event::Message(Message::text("Hello"))]);
    assert!(out.is_empty());
}

#[test]
fn server_fails_on_an_unmasked_data_frame() {
    let (server, out, ev) = server_after(&frames::text("Hello").bytes());
    assert_close_sent(Role::Server, &out, CloseCode::PROTOCOL);
    let c = closed(&ev);
    assert_eq!(c.code, CloseCode::PROTOCOL);
    assert_eq!(c.initiated_by, Side::Local);
    assert_eq!(
        c.error,
        Some(CloseError::Protocol(ProtocolError::UnmaskedFrame))
    );
    assert_eq!(ev.len(), 1, "no message may be delivered: {ev:?}");
    assert_eq!(server.state(), State::Closed);
}

#[test]
fn server_fails_on_unmasked_control_and_empty_frames() {
    for frame in [
        frames::ping("p"),
        frames::pong(""),
        frames::close(1000, ""),
        frames::binary(""),
        frames::text("").fin(false),
    ] {
        let (_, out, ev) = server_after(&frame.bytes());
        assert_close_sent(Role::Server, &out, CloseCode::PROTOCOL);
        assert_eq!(
            closed(&ev).error,
            Some(CloseError::Protocol(ProtocolError::UnmaskedFrame)),
            "{frame:?}"
        );
    }
}

#[test]
fn server_fails_on_the_header_before_the_payload_arrives() {
    let bytes = frames::binary([0u8; 1000]).bytes();
    let mut server = Connection::new(Role::Server, Config::default());
    server.receive_bytes(&bytes[..4]);
    assert_eq!(server.state(), State::Closed);
    assert_close_sent(Role::Server, &take_output(&mut server), CloseCode::PROTOCOL);
}

#[test]
fn client_fails_on_a_masked_frame_with_a_masked_close() {
    let (client, out, ev) = client_after(&frames::text("Hello").masked().bytes());
    assert_close_sent(Role::Client, &out, CloseCode::PROTOCOL);
    assert_eq!(
        closed(&ev).error,
        Some(CloseError::Protocol(ProtocolError::MaskedFrame))
    );
    assert_eq!(client.state(), State::Closed);
}

#[test]
fn client_fails_on_a_masked_ping() {
    let (_, out, ev) = client_after(&frames::ping("x").masked().bytes());
    // No Pong: the ping itself broke the protocol.
    assert_close_sent(Role::Client, &out, CloseCode::PROTOCOL);
    assert_eq!(ev.len(), 1);
}

#[test]
fn every_key_offset_unmasks_across_reads() {
    let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let bytes = frames::binary(&payload).mask([1, 2, 3, 4]).bytes();
    for size in [1, 2, 3, 5, 7, 64, 999] {
        let mut server = Connection::new(Role::Server, Config::default());
        feed_chunked(&mut server, &bytes, &[size]);
        assert_eq!(
            events(&mut server),
            [Event::Message(Message::binary(payload.clone()))],
            "size {size}"
        );
    }
}

#[test]
fn each_frame_gets_its_own_key() {
    let mut pair = Pair::new();
    for _ in 0..4 {
        pair.client.send(Message::text("same")).unwrap();
    }
    let wire = pair.drive_client();
    let keys: Vec<[u8; 4]> = sent_frames(Role::Client, &wire)
        .iter()
        .map(|f| f.header.mask.expect("client frames are masked"))
        .collect();
    // RFC 6455 §5.3: the key must not be predictable. Four equal 32-bit random keys would be
    // a broken generator, not bad luck.
    assert!(keys.windows(2).any(|w| w[0] != w[1]), "{keys:?}");
    assert_ne!(keys[0], KEY);
    // The payload on the wire is not the plain text.
    assert!(!wire.windows(4).any(|w| w == b"same"));
    assert_eq!(pair.server_events().len(), 4);
}

#[test]
fn server_output_is_never_masked() {
    let mut pair = Pair::new();
    pair.server.send(Message::text("hi")).unwrap();
    pair.server.ping(b"p").unwrap();
    pair.server.close(CloseCode::AWAY, "restart").unwrap();
    let wire = pair.drive_server();
    assert_eq!(
        wire,
        frames::wire(&[
            frames::text("hi"),
            frames::ping("p"),
            frames::close(1001, "restart"),
        ])
    );
}
