//! The bodies of the fuzz targets, shared by the libFuzzer binaries in `fuzz_targets/` and by
//! `tests/seeds.rs`, which replays the committed seeds with a plain `cargo test` on stable.
//!
//! Each function takes arbitrary bytes and panics only when `duplex-proto` misbehaves: a panic
//! inside the crate, or a broken invariant checked here.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use duplex_hub::protocol::{self, parse_command, Command, ErrorCode, MAX_ID};
use duplex_proto::{
    deflate::{DeflateConfig, DeflateParams},
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
        let whole = run(role, data, data.len().max(1), None);
        let bytewise = run(role, data, 1, None);
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

/// Compressed messages (RFC 7692) from the peer, fed to a server or a client connection with
/// permessage-deflate negotiated and small size limits (1 KiB frames, 4 KiB messages).
///
/// The input is turned into frames, so that the fuzzer spends its effort on the deflate
/// streams rather than on frame headers:
///
/// - byte 0 picks the role and the negotiated parameters: bit 0 `server_no_context_takeover`,
///   bit 1 `client_no_context_takeover`, bits 2-3 the server's window and bits 4-5 the
///   client's (15, 9, 11 or 13 bits), bit 6 the role (0 server, 1 client);
/// - then records: one byte of frame bits (bit 7 FIN, bit 6 RSV1, bits 5-4 RSV2/RSV3, bits
///   3-0 the opcode), one byte of payload length, then that many payload bytes (fewer at the end
///   of the input). Each record becomes one frame, masked for the server.
///
/// Checks: no panic; exactly one final `Closed`; no message is larger than the limit (a bomb
/// ends in 1009, never in a bigger message); every message received, compressed again by a
/// peer with the same parameters, comes out of a fresh connection unchanged; and what the
/// connection wrote (its own compressed message included) is accepted by that peer.
///
/// Inflation only ever sees whole frames, so unlike [`frame_reader`] this target does not
/// replay the input one byte per read: that would double the cost of each run for no new path.
pub fn inflate(data: &[u8]) {
    let Some((&bits, records)) = data.split_first() else {
        return;
    };
    let window = |n: u8| [15, 9, 11, 13][usize::from(n & 3)];
    let params = DeflateParams {
        server_no_context_takeover: bits & 1 != 0,
        client_no_context_takeover: bits & 2 != 0,
        server_max_window_bits: window(bits >> 2),
        client_max_window_bits: window(bits >> 4),
    };
    let (role, peer_role) = if bits & 0x40 == 0 {
        (Role::Server, Role::Client)
    } else {
        (Role::Client, Role::Server)
    };
    let wire = frames(records, role == Role::Server);
    let run = run(role, &wire, wire.len().max(1), Some(params.clone()));
    // Everything received, compressed again by a peer with the same parameters, comes out of
    // a fresh receiver unchanged. Its frames are as large as the message: the frame limit
    // does not apply here.
    let mut peer = Connection::with_deflate(peer_role, small_config(), Some(params.clone()));
    let big_frames = small_config().max_frame_size(2 * MAX_MESSAGE);
    let mut receiver = Connection::with_deflate(role, big_frames, Some(params));
    let mut out = BytesMut::new();
    for event in &run.events {
        let Event::Message(message) = event else {
            continue;
        };
        assert!(
            message.len() <= MAX_MESSAGE,
            "{role:?}: a message over the limit"
        );
        peer.send(message.clone())
            .expect("a fresh connection sends");
        out.clear();
        peer.poll_output(&mut out);
        receiver.receive_bytes(&out);
        match receiver.poll_event() {
            Some(Event::Message(again)) => assert_eq!(&again, message, "{role:?}: round trip"),
            other => panic!("{role:?}: a re-sent message arrived as {other:?}"),
        }
    }
    // The peer's own inflater is untouched by what it sent.
    peer.receive_bytes(&run.wire);
    while let Some(event) = peer.poll_event() {
        if let Event::Closed(c) = event {
            assert!(
                !matches!(c.error, Some(CloseError::Protocol(_))),
                "{role:?} wrote bytes its peer rejects: {c:?}"
            );
        }
    }
}

/// The frames described by `records` (see [`inflate`]), masked when `masked`.
fn frames(mut records: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x5a, 0x01, 0xc3, 0x7e];
    let mut wire = Vec::new();
    while let [bits, len, rest @ ..] = records {
        let len = usize::from(*len).min(rest.len());
        let (payload, next) = rest.split_at(len);
        wire.push(*bits);
        // `len` < 256: a 7-bit length, or the 16-bit form (RFC 6455 §5.2).
        if len < 126 {
            wire.push(u8::from(masked) << 7 | len as u8);
        } else {
            wire.push(u8::from(masked) << 7 | 126);
            wire.extend_from_slice(&(len as u16).to_be_bytes());
        }
        if masked {
            wire.extend_from_slice(&mask);
            wire.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        } else {
            wire.extend_from_slice(payload);
        }
        records = next;
    }
    wire
}

struct Run {
    events: Vec<Event>,
    wire: Vec<u8>,
}

/// The connection settings of the frame targets: small limits, keepalive on, permessage-deflate
/// configured (it is used only when `deflate` parameters are given).
fn small_config() -> Config {
    Config::default()
        .max_frame_size(1024)
        .max_message_size(MAX_MESSAGE)
        .ping_interval(Some(Duration::from_secs(1)))
        .deflate(Some(DeflateConfig::default().threshold(0)))
}

/// The message limit of the frame targets.
const MAX_MESSAGE: usize = 4096;

fn run(role: Role, data: &[u8], chunk: usize, deflate: Option<DeflateParams>) -> Run {
    let mut conn = Connection::with_deflate(role, small_config(), deflate);
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
            let response = Accept::default()
                .response(&request)
                .expect("the default answer has nothing to refuse");
            assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
            // `parse_request` reads HTTP/1.1, where the key is required (RFC 6455 §4.2.1).
            let key = request.key().expect("an HTTP/1.1 upgrade has a key");
            let accept = accept_key(key.as_bytes());
            assert!(response
                .windows(accept.len())
                .any(|w| w == accept.as_bytes()));
        }
        Ok(None) => assert!(data.len() <= MAX_HEAD),
        Err(e) => {
            assert!(matches!(e.status(), 400 | 426 | 431), "{e:?}");
            let response = Reject::from(&e)
                .response()
                .expect("the answer to a parse error has valid headers");
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

/// One text frame from a hub client, for `duplex_hub::protocol::parse_command`.
///
/// Checks: no panic (deep nesting included); an `id` given back, with the command or with its
/// error, is at most `MAX_ID`; parsing is deterministic; the error reply is one JSON object
/// carrying that `id` and a documented code; a `publish` forwards `data` as valid JSON.
pub fn hub_command(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_command(text) {
        Ok((id, command)) => {
            assert!(id.is_none_or(|id| id <= MAX_ID), "id {id:?} over MAX_ID");
            let kind = command.kind();
            if let Command::Publish { data, .. } = &command {
                serde_json::from_str::<serde::de::IgnoredAny>(data.get())
                    .expect("publish data is valid JSON");
            }
            match parse_command(text) {
                Ok((again, command)) => assert!(again == id && command.kind() == kind),
                Err(e) => panic!("parsed once, then {e:?}"),
            }
        }
        Err((id, error)) => {
            assert!(id.is_none_or(|id| id <= MAX_ID), "id {id:?} over MAX_ID");
            assert!(ErrorCode::ALL.contains(&error.code));
            let reply = protocol::error(id, &error);
            let value: serde_json::Value =
                serde_json::from_str(&reply).expect("the error reply is JSON");
            assert_eq!(value["type"], "error", "{reply}");
            assert_eq!(value["code"], error.code.as_str(), "{reply}");
            match id {
                Some(id) => assert_eq!(value["id"], id, "{reply}"),
                None => assert!(value.get("id").is_none_or(serde_json::Value::is_null)),
            }
            assert!(matches!(parse_command(text), Err((again, _)) if again == id));
        }
    }
}

/// A JWKS document, as `auth.jwks_url` answers, for `duplex_hub::auth::jwks_key_ids`.
///
/// Checks: no panic; at most `MAX_JWKS_KEYS` keys are kept, only from documents within
/// `MAX_JWKS_BYTES`; reading is deterministic; a refusal says why in words.
pub fn jwks(data: &[u8]) {
    use duplex_hub::auth::{jwks_key_ids, MAX_JWKS_BYTES, MAX_JWKS_KEYS};
    let first = jwks_key_ids(data);
    match &first {
        Ok(kids) => {
            assert!(!kids.is_empty(), "an accepted document has a key");
            assert!(kids.len() <= MAX_JWKS_KEYS, "{} keys kept", kids.len());
            assert!(data.len() <= MAX_JWKS_BYTES);
        }
        Err(why) => assert!(!why.is_empty()),
    }
    assert_eq!(jwks_key_ids(data), first, "reading is deterministic");
}
