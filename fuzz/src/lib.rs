//! The bodies of the fuzz targets, shared by the libFuzzer binaries in `fuzz_targets/` and by
//! `tests/seeds.rs`, which replays the committed seeds with a plain `cargo test` on stable.
//!
//! Each function takes arbitrary bytes and panics only when `duplex-proto` misbehaves: a panic
//! inside the crate, or a broken invariant checked here.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use duplex_proto::{
    frame::FrameHeader,
    handshake::{
        accept_key,
        client::ClientHandshake,
        server::{parse_request, Accept, Reject},
    },
    mask::apply_mask,
    CloseCode, CloseError, Config, Connection, Event, Message, Role,
};

/// The head size limit the handshake targets use: the default.
const MAX_HEAD: usize = duplex_proto::handshake::MAX_HEAD_SIZE;

/// Feed `data` as frames from the peer to a server and to a client connection (with small size
/// limits, so that inputs of a few kilobytes reach them).
///
/// Checks that delivering the bytes in one read or one byte at a time gives the same events
/// and the same frames out, and that what the connection wrote is valid for its peer.
pub fn frame_reader(data: &[u8]) {
    for role in [Role::Server, Role::Client] {
        let whole = run(role, data, data.len().max(1));
        let bytewise = run(role, data, 1);
        assert_eq!(
            whole.events, bytewise.events,
            "{role:?}: events depend on reads"
        );
        assert_eq!(
            unmasked_frames(&whole.wire),
            unmasked_frames(&bytewise.wire),
            "{role:?}: output depends on reads"
        );
        let peer_role = match role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        };
        let mut peer = Connection::new(peer_role, Config::default());
        peer.receive_bytes(&whole.wire);
        while let Some(event) = peer.poll_event() {
            if let Event::Closed(c) = event {
                assert!(
                    !matches!(c.error, Some(CloseError::Protocol(_))),
                    "{role:?} wrote bytes its peer rejects: {c:?}"
                );
            }
        }
    }
}

struct Run {
    events: Vec<Event>,
    wire: Vec<u8>,
}

fn run(role: Role, data: &[u8], chunk: usize) -> Run {
    let config = Config::default()
        .max_frame_size(1024)
        .max_message_size(4096)
        .ping_interval(Some(Duration::from_secs(1)));
    let mut conn = Connection::new(role, config);
    let start = Instant::now();
    for piece in data.chunks(chunk) {
        conn.receive_bytes(piece);
    }
    // Whatever timer the input left armed fires (a keepalive ping, or a pong timeout).
    if let Some(deadline) = conn.poll_timeout(start) {
        conn.handle_timeout(deadline);
    }
    // Commands in whatever state the input left the connection in.
    let _ = conn.send(Message::text("after"));
    let _ = conn.ping(b"after");
    let _ = conn.close(CloseCode::NORMAL, "after");
    conn.receive_eof();
    let mut wire = BytesMut::new();
    conn.poll_output(&mut wire);
    let events: Vec<Event> = std::iter::from_fn(|| conn.poll_event()).collect();
    let closed = events
        .iter()
        .filter(|e| matches!(e, Event::Closed(_)))
        .count();
    assert_eq!(closed, 1, "{role:?}: one Closed event expected: {events:?}");
    assert!(matches!(events.last(), Some(Event::Closed(_))));
    Run {
        events,
        wire: wire.to_vec(),
    }
}

/// Headers (without their keys) and unmasked payloads of the frames in `wire`.
fn unmasked_frames(mut wire: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut frames = Vec::new();
    while !wire.is_empty() {
        let (mut header, len) = match FrameHeader::parse(wire) {
            Ok(Some(h)) => h,
            other => panic!("the connection wrote an invalid frame: {other:?}"),
        };
        let end = len + usize::try_from(header.payload_len).expect("frame length fits");
        let mut payload = wire[len..end].to_vec();
        if let Some(key) = header.mask.take() {
            apply_mask(&mut payload, key, 0);
        }
        frames.push((header, payload));
        wire = &wire[end..];
    }
    frames
}

/// Parse `data` as an upgrade request.
///
/// Checks that a request is parsed from its head alone, that an accepted request yields a
/// `101` and a refused one a well-formed error response with its documented status.
pub fn handshake_server(data: &[u8]) {
    match parse_request(data, MAX_HEAD) {
        Ok(Some((request, used))) => {
            assert!(used <= data.len() && used <= MAX_HEAD);
            let again = parse_request(&data[..used], MAX_HEAD);
            assert!(matches!(again, Ok(Some((_, n))) if n == used));
            let _ = (request.path(), request.query(), request.origin());
            let _ = request.subprotocols().count() + request.extensions().count();
            let response = Accept::default().response(&request);
            assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
            let accept = accept_key(request.key().as_bytes());
            assert!(response
                .windows(accept.len())
                .any(|w| w == accept.as_bytes()));
        }
        Ok(None) => assert!(data.len() <= MAX_HEAD),
        Err(e) => {
            assert!(matches!(e.status(), 400 | 426 | 431), "{e:?}");
            let response = Reject::from(&e).response();
            let status = format!("HTTP/1.1 {} ", e.status());
            assert!(response.starts_with(status.as_bytes()));
        }
    }
}

/// Parse `data` as the server's answer to a request offering the `chat` subprotocol and
/// permessage-deflate.
///
/// The accept value depends on a random key, so every `@accept@` in the input is replaced with
/// the right one; otherwise the fuzzer could never get past that check.
pub fn handshake_client(data: &[u8]) {
    let hs = ClientHandshake::new("example.com", "/chat")
        .subprotocol("chat")
        .extensions("permessage-deflate; client_max_window_bits");
    let data = replace(
        data,
        b"@accept@",
        accept_key(hs.key().as_bytes()).as_bytes(),
    );
    match hs.parse_response(&data) {
        Ok(Some((response, used))) => {
            assert!(used <= data.len() && used <= MAX_HEAD);
            assert_eq!(response.status, 101);
            // §4.1: whatever the server selected must be something we offered.
            let values = |name: &str| -> Vec<Vec<u8>> {
                response
                    .headers
                    .get_all(name)
                    .iter()
                    .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                    .map(|v| v.trim_ascii().to_vec())
                    .filter(|v| !v.is_empty())
                    .collect()
            };
            for p in values("sec-websocket-protocol") {
                assert_eq!(p, b"chat", "unoffered subprotocol accepted");
            }
            for e in values("sec-websocket-extensions") {
                let name = e.split(|&b| b == b';').next().unwrap_or_default();
                assert!(
                    name.trim_ascii()
                        .eq_ignore_ascii_case(b"permessage-deflate"),
                    "unoffered extension accepted: {:?}",
                    String::from_utf8_lossy(&e)
                );
            }
            if let Some(p) = &response.subprotocol {
                assert_eq!(p, "chat");
            }
        }
        Ok(None) => assert!(data.len() <= MAX_HEAD),
        Err(_) => {}
    }
}

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}
