//! RFC 6455 §8.1: text is UTF-8, checked as it arrives, and the connection fails (1007) at the
//! first byte that cannot be part of valid UTF-8, even in the middle of a frame.

use bytes::Bytes;

use super::{
    frames::{self, wire},
    pair::{after, assert_close_sent, closed, events, feed_chunked, server_after, take_output},
};
use crate::{
    CloseCode, CloseError, Config, Connection, Event, Message, ProtocolError, Role, State,
};

fn invalid_utf8() -> Option<CloseError> {
    Some(CloseError::Protocol(ProtocolError::InvalidUtf8))
}

/// Feed `bytes` one byte at a time and return the index of the byte after which the server
/// closed, with its output.
fn closing_byte(bytes: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut server = Connection::new(Role::Server, Config::default());
    for (i, b) in bytes.iter().enumerate() {
        server.receive_bytes(std::slice::from_ref(b));
        // Take events as they come, so the connection keeps reading.
        let _ = events(&mut server);
        if server.state() == State::Closed {
            return Some((i, take_output(&mut server)));
        }
    }
    None
}

#[test]
fn invalid_text_fails_with_1007() {
    for bad in [
        &b"\xff"[..],
        b"abc\xc0\xaf",      // overlong '/'
        b"\xed\xa0\x80",     // a surrogate
        b"\xf4\x90\x80\x80", // past U+10FFFF
        b"\xe2\x82",         // truncated at the end of the message
        b"\x80",             // a lone continuation byte
    ] {
        for role in [Role::Server, Role::Client] {
            let bytes = frames::text(bad).masked_if(role == Role::Server).bytes();
            let (conn, out, ev) = after(role, Config::default(), &bytes);
            assert_close_sent(role, &out, CloseCode::INVALID_DATA);
            assert_eq!(closed(&ev).error, invalid_utf8(), "{bad:?}");
            assert_eq!(closed(&ev).code, CloseCode::INVALID_DATA);
            assert_eq!(ev.len(), 1, "no message for {bad:?}");
            assert_eq!(conn.state(), State::Closed);
        }
    }
}

#[test]
fn fails_at_the_bad_byte_before_the_frame_is_complete() {
    let mut payload = "valid prefix κόσμε ".as_bytes().to_vec();
    let bad_at = payload.len();
    payload.push(0xFF);
    payload.extend_from_slice(&[b'x'; 200]);
    let frame = frames::text(&payload).masked();
    let header_len = frame.header().len();
    let (closed_after, out) = closing_byte(&frame.bytes()).expect("the server never closed");
    assert_eq!(
        closed_after,
        header_len + bad_at,
        "closed at the wrong byte"
    );
    assert_close_sent(Role::Server, &out, CloseCode::INVALID_DATA);
}

#[test]
fn fails_at_the_second_byte_of_an_impossible_sequence() {
    // F4 90 can only start a code point above U+10FFFF: the 90 is the bad byte.
    let frame = frames::text(b"ok\xf4\x90\x80\x80 and more").masked();
    let (closed_after, _) = closing_byte(&frame.bytes()).unwrap();
    assert_eq!(closed_after, frame.header().len() + 3);
}

#[test]
fn fails_inside_a_later_fragment_before_it_is_complete() {
    // The first fragment ends inside a three-byte code point; the second fragment's first
    // byte cannot continue it.
    let first = frames::text(b"abc\xe2\x82").fin(false).masked();
    let second = frames::continuation(b"(not a continuation)").masked();
    let bytes = wire(&[first.clone(), second.clone()]);
    let (closed_after, out) = closing_byte(&bytes).unwrap();
    assert_eq!(closed_after, first.bytes().len() + second.header().len());
    assert_close_sent(Role::Server, &out, CloseCode::INVALID_DATA);
}

#[test]
fn an_unfinished_code_point_fails_when_the_message_ends() {
    let bytes = wire(&[
        frames::text(b"abc\xe2").fin(false).masked(),
        frames::continuation(b"\x82").masked(),
    ]);
    let (closed_after, out) = closing_byte(&bytes).unwrap();
    assert_eq!(
        closed_after,
        bytes.len() - 1,
        "only the final byte proves it"
    );
    assert_close_sent(Role::Server, &out, CloseCode::INVALID_DATA);
}

#[test]
fn code_points_split_across_fragments_and_reads_are_valid() {
    let text = "€𝄞κ\u{10FFFF}a".as_bytes();
    for cut in 0..=text.len() {
        let bytes = wire(&[
            frames::text(&text[..cut]).fin(false).masked(),
            frames::continuation(&text[cut..]).masked(),
        ]);
        for size in [1, 2, 5, bytes.len()] {
            let mut server = Connection::new(Role::Server, Config::default());
            feed_chunked(&mut server, &bytes, &[size]);
            let ev = events(&mut server);
            assert_eq!(
                ev,
                [Event::Message(Message::Text(
                    Bytes::copy_from_slice(text).try_into().unwrap()
                ))],
                "cut {cut} size {size}"
            );
        }
    }
}

#[test]
fn a_code_point_may_straddle_a_ping() {
    let bytes = wire(&[
        frames::text(b"\xf0\x9f").fin(false).masked(),
        // The ping's payload is not part of the text and is not validated with it.
        frames::ping(b"\xff").masked(),
        frames::continuation(b"\x99\x82").masked(),
    ]);
    let (_, out, ev) = server_after(&bytes);
    assert_eq!(
        ev,
        [
            Event::Ping(Bytes::from_static(b"\xff")),
            Event::Message(Message::text("🙂")),
        ]
    );
    assert_eq!(out, frames::pong(b"\xff").bytes());
}

#[test]
fn binary_messages_are_not_validated() {
    let (_, out, ev) = server_after(&frames::binary(b"\xff\xfe\xc0").masked().bytes());
    assert_eq!(ev, [Event::Message(Message::binary(&b"\xff\xfe\xc0"[..]))]);
    assert!(out.is_empty());
    let bytes = wire(&[
        frames::binary(b"\xe2").fin(false).masked(),
        frames::continuation(b"\xff").masked(),
    ]);
    assert_eq!(server_after(&bytes).2.len(), 1);
}

#[test]
fn each_text_message_starts_a_fresh_validator() {
    // A complete message leaves no partial state behind for the next one.
    let bytes = wire(&[
        frames::text("é").masked(),
        frames::binary(b"\xe2").masked(),
        frames::text(b"\x82\xac").masked(),
    ]);
    let (_, out, ev) = server_after(&bytes);
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert_close_sent(Role::Server, &out, CloseCode::INVALID_DATA);
}

/// The index of the first byte at which `data` can no longer be the start of valid UTF-8:
/// where a streaming validator that fails fast must stop. `None` if every prefix is valid
/// (possibly ending inside a code point).
fn detection_point(data: &[u8]) -> Option<usize> {
    let start = match std::str::from_utf8(data) {
        Ok(_) => return None,
        Err(e) => e.valid_up_to(),
    };
    (start..data.len()).find(
        |&i| matches!(std::str::from_utf8(&data[start..=i]), Err(e) if e.error_len().is_some()),
    )
}

/// Valid text with bytes that often break UTF-8 spliced in.
fn mostly_text() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let odd = prop::sample::select(vec![
        0x80u8, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF,
    ]);
    (
        "\\PC{0,30}",
        proptest::collection::vec((any::<prop::sample::Index>(), odd), 0..3),
    )
        .prop_map(|(s, inserts)| {
            let mut data = s.into_bytes();
            for (at, byte) in inserts {
                let at = at.index(data.len() + 1);
                data.insert(at, byte);
            }
            data
        })
}

proptest::proptest! {
    /// A text frame is failed with 1007 exactly when the byte that makes it invalid arrives
    /// (or, for a code point cut off by the end of the message, when the frame ends), however
    /// the bytes are split into reads.
    #[test]
    fn the_connection_fails_at_the_detection_point(data in mostly_text()) {
        let frame = frames::text(&data).masked();
        let header = frame.header().len();
        let expected = match (detection_point(&data), std::str::from_utf8(&data)) {
            (Some(i), _) => Some(header + i),
            (None, Err(_)) => Some(header + data.len() - 1),
            (None, Ok(_)) => None,
        };
        let got = closing_byte(&frame.bytes()).map(|(i, _)| i);
        // An empty invalid message cannot exist, so `data.len() - 1` above never underflows.
        proptest::prop_assert_eq!(got, expected);
    }
}
