//! permessage-deflate on real connections (RFC 7692): shared compressed [`Prepared`] frames
//! interleaved with each connection's own compressed messages.

use proptest::{collection::vec, prelude::*};

use super::pair::{events, sent_frames, take_output};
use crate::{
    deflate::{DeflateConfig, DeflateParams},
    Config, Connection, Event, Message, Prepared, Role,
};

/// A server and a client that agreed on `params`, compressing from `threshold` bytes.
fn pair(params: DeflateParams, threshold: usize) -> (Connection, Connection) {
    let config = Config::default().deflate(Some(DeflateConfig {
        threshold,
        ..DeflateConfig::default()
    }));
    (
        Connection::with_deflate(Role::Server, config.clone(), Some(params)),
        Connection::with_deflate(Role::Client, config, Some(params)),
    )
}

/// Moves the server's output to the client; returns the wire bytes and the messages read.
fn deliver(server: &mut Connection, client: &mut Connection) -> (Vec<u8>, Vec<Message>) {
    let wire = take_output(server);
    client.receive_bytes(&wire);
    let messages = events(client)
        .into_iter()
        .map(|e| match e {
            Event::Message(m) => m,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    (wire, messages)
}

/// Text that compresses well, and differs by `n`.
fn text(n: usize) -> String {
    format!("{n}: the quick brown fox jumps over the lazy dog. ").repeat(20)
}

#[test]
fn a_prepared_frame_is_compressed_once_and_shared_by_every_connection() {
    let prepared = Prepared::text(text(1));
    let mut wires = Vec::new();
    for _ in 0..3 {
        let (mut server, mut client) = pair(DeflateParams::default(), 64);
        server.send_prepared(&prepared).unwrap();
        let (wire, messages) = deliver(&mut server, &mut client);
        assert_eq!(messages, [Message::text(text(1))]);
        let frames = sent_frames(Role::Server, &wire);
        assert!(
            frames[0].header.rsv1,
            "RFC 7692 §6: RSV1 marks a compressed message"
        );
        assert!(wire.len() < text(1).len() / 4, "{} bytes", wire.len());
        wires.push(wire);
    }
    assert!(
        wires.windows(2).all(|w| w[0] == w[1]),
        "the same bytes on every connection"
    );
    // Not compressed again: the same allocation goes out.
    let (mut server, _client) = pair(DeflateParams::default(), 64);
    server.send_prepared(&prepared).unwrap();
    let again = prepared.compressed_frame(9).unwrap();
    assert_eq!(
        again.as_ptr(),
        prepared.compressed_frame(1).unwrap().as_ptr()
    );
}

/// With context takeover, the connection's next own message would refer back into history
/// the peer's window no longer matches; it must decode all the same.
#[test]
fn own_messages_after_a_shared_frame_still_inflate_with_context_takeover() {
    let (mut server, mut client) = pair(DeflateParams::default(), 0);
    let shared = Prepared::text(text(7));
    server.send(Message::text(text(1))).unwrap();
    server.send_prepared(&shared).unwrap();
    // Repeats the first message: with history kept, this is a back-reference to it.
    server.send(Message::text(text(1))).unwrap();
    server.send(Message::text(text(1))).unwrap();
    let (wire, messages) = deliver(&mut server, &mut client);
    assert_eq!(
        messages,
        [text(1), text(7), text(1), text(1)].map(Message::text)
    );
    let frames = sent_frames(Role::Server, &wire);
    assert!(frames.iter().all(|f| f.header.rsv1));
    // History is kept again after the reset: the last repeat costs less than the one after
    // the shared frame.
    assert!(
        frames[3].payload.len() < frames[2].payload.len(),
        "{frames:?}"
    );
}

#[test]
fn a_peer_with_a_smaller_window_gets_large_shared_messages_uncompressed() {
    let params = DeflateParams {
        server_max_window_bits: 9,
        ..DeflateParams::default()
    };
    let (mut server, mut client) = pair(params, 0);
    let large = Prepared::text(text(2)); // over 512 bytes
    let small = Prepared::text("small, small, small, small, small, small".repeat(10)); // 400
    server.send_prepared(&large).unwrap();
    server.send_prepared(&small).unwrap();
    let (wire, messages) = deliver(&mut server, &mut client);
    assert_eq!(messages, [large.message(), small.message()]);
    let frames = sent_frames(Role::Server, &wire);
    assert!(
        !frames[0].header.rsv1,
        "distances could pass a 512-byte window"
    );
    assert!(
        frames[1].header.rsv1,
        "a message within the window is always safe"
    );
}

#[test]
fn below_the_threshold_or_incompressible_goes_uncompressed() {
    let (mut server, mut client) = pair(DeflateParams::default(), 64);
    let short = Prepared::text("tick");
    // Bytes that deflate cannot shrink.
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            // xorshift64: no pattern deflate could use.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let noise = Prepared::binary(noise);
    server.send_prepared(&short).unwrap();
    server.send_prepared(&noise).unwrap();
    let (wire, messages) = deliver(&mut server, &mut client);
    assert_eq!(messages, [short.message(), noise.message()]);
    assert!(sent_frames(Role::Server, &wire)
        .iter()
        .all(|f| !f.header.rsv1));
    assert_eq!(&wire[..short.frame().len()], &short.frame()[..]);
}

#[test]
fn a_client_compresses_a_prepared_message_with_its_own_codec() {
    let (mut server, mut client) = pair(DeflateParams::default(), 0);
    client.send_prepared(&Prepared::text(text(3))).unwrap();
    let wire = take_output(&mut client);
    let frames = sent_frames(Role::Client, &wire);
    assert!(frames[0].header.rsv1 && frames[0].header.mask.is_some());
    server.receive_bytes(&wire);
    assert!(
        matches!(&events(&mut server)[..], [Event::Message(m)] if *m == Message::text(text(3)))
    );
}

/// What a server sends next: its own message, or one of a few shared ones.
#[derive(Debug, Clone)]
enum Send {
    Own(usize),
    Shared(usize),
}

fn send() -> impl Strategy<Value = Send> {
    prop_oneof![
        (0usize..6).prop_map(Send::Own),
        (0usize..3).prop_map(Send::Shared)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any mix of own and shared messages, under any parameters, arrives intact, and the
    /// wire bytes of each shared message are the same every time.
    #[test]
    fn any_mix_of_own_and_shared_messages_arrives_intact(
        sends in vec(send(), 1..24),
        server_bits in 9u8..=15,
        server_reset: bool,
        threshold in 0usize..300,
        delivery_every in 1usize..5,
    ) {
        let params = DeflateParams {
            server_no_context_takeover: server_reset,
            server_max_window_bits: server_bits,
            ..DeflateParams::default()
        };
        let (mut server, mut client) = pair(params, threshold);
        let shared: Vec<Prepared> = (0..3)
            .map(|i| Prepared::text(text(100 + i).repeat(i + 1)))
            .collect();
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for (i, s) in sends.iter().enumerate() {
            match s {
                Send::Own(n) => {
                    let m = Message::text(text(*n)[..(n * 97) % 1000].to_owned());
                    expected.push(m.clone());
                    server.send(m).unwrap();
                }
                Send::Shared(n) => {
                    expected.push(shared[*n].message());
                    server.send_prepared(&shared[*n]).unwrap();
                }
            }
            if i % delivery_every == 0 {
                got.extend(deliver(&mut server, &mut client).1);
            }
        }
        got.extend(deliver(&mut server, &mut client).1);
        prop_assert_eq!(got, expected);
    }
}
