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

/// A deterministic source for the tests: xorshift64 from `seed`.
fn seeded(seed: u64) -> crate::RandomSource {
    let mut state = seed;
    crate::RandomSource::new(move |buf: &mut [u8]| {
        for b in buf {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state.to_le_bytes()[0];
        }
    })
}

/// Everything a client writes for the same commands: messages, a Ping, an answer to the
/// server's Ping and its Close.
fn client_output(conn: Connection) -> Vec<u8> {
    let mut conn = conn;
    conn.send(Message::text("hello")).unwrap();
    conn.send(Message::binary(vec![0xAB; 300])).unwrap();
    conn.ping(b"p").unwrap();
    conn.receive_bytes(&frames::ping("from server").bytes());
    while conn.poll_event().is_some() {}
    conn.close(CloseCode::NORMAL, "bye").unwrap();
    take_output(&mut conn)
}

/// Two clients with the same seeded source write byte-identical frames, masking keys
/// included; the default source (a CSPRNG) does not repeat them.
#[test]
fn a_seeded_random_source_makes_client_output_reproducible() {
    let client = |seed: Option<u64>| {
        let conn = Connection::new(Role::Client, Config::default());
        match seed {
            Some(seed) => conn.with_random(seeded(seed)),
            None => conn,
        }
    };
    let first = client_output(client(Some(7)));
    assert_eq!(first, client_output(client(Some(7))));
    assert_ne!(first, client_output(client(Some(8))));
    assert_ne!(client_output(client(None)), client_output(client(None)));
    // The frames are still masked (RFC 6455 §5.3): the server reads them as sent.
    let mut server = Connection::new(Role::Server, Config::default());
    server.receive_bytes(&first);
    assert_eq!(
        server.poll_event(),
        Some(Event::Message(Message::text("hello")))
    );
    // The source can be moved to another connection, which then draws from it.
    let mut a = client(Some(7));
    let mut b = Connection::new(Role::Client, Config::default()).with_random(a.take_random());
    assert!(a.take_random().is_default());
    let mut c = client(Some(7));
    b.send(Message::text("x")).unwrap();
    c.send(Message::text("x")).unwrap();
    assert_eq!(take_output(&mut b), take_output(&mut c));
}

/// The same source gives the same `Sec-WebSocket-Key`, so the whole request is reproducible.
#[test]
fn a_seeded_random_source_makes_the_handshake_request_reproducible() {
    use crate::handshake::client::ClientHandshake;
    let request = |seed| {
        ClientHandshake::new("example.com", "/chat")
            .with_random(&mut seeded(seed))
            .request()
            .unwrap()
    };
    assert_eq!(request(1), request(1));
    assert_ne!(request(1), request(2));
    let fresh = || ClientHandshake::new("example.com", "/").key().to_owned();
    assert_ne!(fresh(), fresh());
}
