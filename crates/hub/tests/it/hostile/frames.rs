//! The frame layer (RFC 6455 §5–§8): protocol violations, invalid UTF-8, oversized and
//! endless messages, bad Close frames, binary messages, ping floods, stalled readers, dead
//! peers, command floods and garbage instead of HTTP.
//!
//! The attackers use raw sockets from 127.0.0.1 and a frame builder of their own, so that
//! they can send what no well-behaved WebSocket library would; the well-behaved client of
//! `assert_served` comes from 127.0.0.2 while they do.

use std::cell::Cell;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// RFC 6455 §7.4.1 status codes the server answers with.
const PROTOCOL_ERROR: u16 = 1002;
const INVALID_DATA: u16 = 1007;
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;
const INTERNAL: u16 = 1011;
const TRY_AGAIN: u16 = 1013;

/// Attack rounds run while `assert_served` is in progress: at least the first figure, at most
/// the second, so every attack really overlaps the well-behaved client.
const ROUNDS: (usize, usize) = (3, 200);

// ---- the attacker's tools ----

/// A client frame as an attacker writes it: any opcode, any RSV bits, masked or not, and a
/// declared payload length that need not match the payload that follows.
#[derive(Debug, Clone)]
struct RawFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    declared: Option<u64>,
    payload: Vec<u8>,
}

impl RawFrame {
    fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            fin: true,
            rsv: 0,
            opcode,
            masked: true,
            declared: None,
            payload: payload.into(),
        }
    }

    fn text(text: &str) -> Self {
        Self::new(TEXT, text.as_bytes())
    }

    /// Not the final fragment (FIN clear).
    fn more(mut self) -> Self {
        self.fin = false;
        self
    }

    /// RSV1..RSV3 as the three low bits (`0b100` is RSV1).
    fn rsv(mut self, bits: u8) -> Self {
        self.rsv = bits;
        self
    }

    fn unmasked(mut self) -> Self {
        self.masked = false;
        self
    }

    /// Declare `len` payload bytes in the header, whatever the payload really is.
    fn declare(mut self, len: u64) -> Self {
        self.declared = Some(len);
        self
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 0b111) << 4) | (self.opcode & 0x0F));
        let mask_bit = if self.masked { 0x80 } else { 0 };
        let len = self.declared.unwrap_or(self.payload.len() as u64);
        // §5.2: 7-bit length, or 126 and a 16-bit length, or 127 and a 64-bit length.
        if let Ok(short @ 0..=125) = u8::try_from(len) {
            out.push(mask_bit | short);
        } else if let Ok(medium) = u16::try_from(len) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&medium.to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        if self.masked {
            let key = [0x37, 0xfa, 0x21, 0x3d];
            out.extend_from_slice(&key);
            out.extend(
                self.payload
                    .iter()
                    .zip(key.iter().cycle())
                    .map(|(b, k)| b ^ k),
            );
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

fn encode_all(frames: &[RawFrame]) -> Vec<u8> {
    frames.iter().flat_map(RawFrame::encode).collect()
}

/// A Close frame with `code` and no reason.
fn close_with(code: u16) -> RawFrame {
    RawFrame::new(CLOSE, code.to_be_bytes())
}

/// A frame from the server.
#[derive(Debug)]
struct ServerFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl ServerFrame {
    /// The status code of a Close frame (1005 when it carries none, RFC 6455 §7.1.5).
    fn close_code(&self) -> u16 {
        match self.payload[..] {
            [a, b, ..] => u16::from_be_bytes([a, b]),
            _ => 1005,
        }
    }

    fn json(&self) -> Value {
        assert_eq!(self.opcode, TEXT, "{self:?}");
        serde_json::from_slice(&self.payload).expect("JSON")
    }
}

/// Parses server frames out of whatever has been read; keeps only the unparsed rest.
#[derive(Debug, Default)]
struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

impl FrameReader {
    fn parse(&mut self) -> Option<ServerFrame> {
        let b = &self.buf[self.start..];
        let [b0, b1, ..] = *b else { return None };
        // §5.1: a server MUST NOT mask the frames it sends.
        assert_eq!(b1 & 0x80, 0, "a masked frame from the server");
        let (len, at): (usize, usize) = match b1 & 0x7F {
            126 => (usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(b.get(2..10)?);
                let len = usize::try_from(u64::from_be_bytes(len)).expect("frame length");
                (len, 10)
            }
            n => (usize::from(n), 2),
        };
        let payload = b.get(at..at.checked_add(len)?)?.to_vec();
        self.start += at + len;
        Some(ServerFrame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0F,
            payload,
        })
    }

    /// Reads more; `false` at end of stream or reset. Panics when nothing comes for `WAIT`.
    async fn fill(&mut self, rd: &mut (impl AsyncRead + Unpin)) -> bool {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 256 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(WAIT, rd.read(&mut chunk)).await {
            Err(_) => panic!("the server sent nothing for {WAIT:?}"),
            Ok(Ok(0) | Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next frame; `None` at end of stream.
    async fn frame(&mut self, rd: &mut (impl AsyncRead + Unpin)) -> Option<ServerFrame> {
        loop {
            if let Some(f) = self.parse() {
                return Some(f);
            }
            if !self.fill(rd).await {
                return None;
            }
        }
    }

    /// The next data frame as JSON, skipping control frames; panics at a Close or the end.
    async fn json(&mut self, rd: &mut (impl AsyncRead + Unpin)) -> Value {
        loop {
            let f = self.frame(rd).await.expect("the server closed TCP");
            match f.opcode {
                PING | PONG => continue,
                CLOSE => panic!("closed with {}", f.close_code()),
                _ => return f.json(),
            }
        }
    }

    /// Reads until the server's Close frame and returns its code; every data frame before it
    /// goes to `seen`. Panics if the connection ends without one, or it takes too long.
    async fn close_code_after(
        &mut self,
        rd: &mut (impl AsyncRead + Unpin),
        mut seen: impl FnMut(ServerFrame),
    ) -> u16 {
        let read = async {
            while let Some(f) = self.frame(rd).await {
                match f.opcode {
                    CLOSE => return f.close_code(),
                    PING | PONG => {}
                    _ => seen(f),
                }
            }
            panic!("the connection ended without a Close frame");
        };
        tokio::time::timeout(WAIT * 2, read)
            .await
            .expect("no Close frame in time")
    }
}

/// An open WebSocket connection from 127.0.0.1 on a raw socket.
#[derive(Debug)]
struct Attacker {
    tcp: TcpStream,
    reader: FrameReader,
}

impl Attacker {
    /// Opens a WebSocket and reads the `welcome`.
    async fn connect(server: &TestServer) -> Self {
        Self::connect_with(server, None).await
    }

    /// As [`connect`](Self::connect), with a receive buffer of `recv_buffer` bytes, so that
    /// a peer that stops reading fills up soon.
    async fn connect_with(server: &TestServer, recv_buffer: Option<u32>) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        if let Some(n) = recv_buffer {
            socket.set_recv_buffer_size(n).unwrap();
        }
        let tcp = tokio::time::timeout(WAIT, socket.connect(server.addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let mut a = Self {
            tcp,
            reader: FrameReader::default(),
        };
        let request = upgrade_request(server.addr, "/ws", "Sec-WebSocket-Protocol: duplex.v1\r\n");
        a.tcp.write_all(request.as_bytes()).await.unwrap();
        let head_end = loop {
            if let Some(i) = a.reader.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(a.reader.fill(&mut a.tcp).await, "closed in the handshake");
        };
        let head = String::from_utf8_lossy(&a.reader.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        a.reader.start = head_end;
        let welcome = a.json().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        a
    }

    /// Writes `bytes`; the server may close (and reset) the connection meanwhile, which is
    /// not an error here: the answer is read afterwards.
    async fn send(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(WAIT, self.tcp.write_all(bytes)).await;
    }

    async fn send_frames(&mut self, frames: &[RawFrame]) {
        self.send(&encode_all(frames)).await;
    }

    async fn frame(&mut self) -> Option<ServerFrame> {
        self.reader.frame(&mut self.tcp).await
    }

    async fn json(&mut self) -> Value {
        self.reader.json(&mut self.tcp).await
    }

    async fn close_code(&mut self) -> u16 {
        self.reader.close_code_after(&mut self.tcp, |_| {}).await
    }

    /// Sends a `ping` command and expects its `pong`: the connection is still served.
    async fn assert_alive(&mut self) {
        self.send_frames(&[RawFrame::text(r#"{"type":"ping","id":777}"#)])
            .await;
        let pong = self.json().await;
        assert_eq!(pong, json!({"type":"pong","id":777}));
    }
}

/// Writes as much of `bytes` as the peer takes before `deadline`; returns how much that was.
async fn write_until(
    wr: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    deadline: tokio::time::Instant,
) -> usize {
    let mut done = 0;
    while done < bytes.len() {
        match tokio::time::timeout_at(deadline, wr.write(&bytes[done..])).await {
            Ok(Ok(n)) if n > 0 => done += n,
            _ => break,
        }
    }
    done
}

/// Opens a connection, sends `frames` and returns the code of the server's Close.
async fn close_code_for(server: &TestServer, frames: &[RawFrame]) -> u16 {
    let mut a = Attacker::connect(server).await;
    a.send_frames(frames).await;
    a.close_code().await
}

/// Runs `attack` in rounds from 127.0.0.1 (at least `ROUNDS.0`, and for as long as the
/// well-behaved client of 127.0.0.2 takes to be served, up to `ROUNDS.1`).
async fn while_served<F, Fut>(server: &TestServer, attack: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let served = Cell::new(false);
    let rounds = async {
        let mut round = 0;
        while round < ROUNDS.1 && (round < ROUNDS.0 || !served.get()) {
            attack(round).await;
            round += 1;
        }
    };
    let check = async {
        assert_served(server, "127.0.0.2").await;
        served.set(true);
    };
    tokio::join!(rounds, check);
}

/// Every case, on a connection of its own, gets a Close with `expected`, repeatedly, while a
/// well-behaved client is served; afterwards no connection is left over, and every one of
/// those closes is counted in `duplex_protocol_closes_total` under its code.
async fn each_closes_with(server: &TestServer, expected: u16, cases: &[(&str, Vec<RawFrame>)]) {
    let series = format!("duplex_protocol_closes_total{{code=\"{expected}\"}}");
    let before = metric(server, &series).await;
    let closes = Cell::new(0_u32);
    while_served(server, |round| {
        let closes = &closes;
        async move {
            for (name, frames) in cases {
                let code = close_code_for(server, frames).await;
                assert_eq!(code, expected, "{name} (round {round})");
                closes.set(closes.get() + 1);
            }
        }
    })
    .await;
    eventually(|| server.hub.connections() == 0).await;
    let counted = metric(server, &series).await - before;
    assert_eq!(counted, f64::from(closes.get()), "{series}");
}

fn rss_mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---- protocol violations: 1002 ----

#[tokio::test]
async fn an_unmasked_client_frame_is_closed_with_1002() {
    let s = start().await;
    let ping = RawFrame::text(r#"{"type":"ping"}"#);
    each_closes_with(
        &s,
        PROTOCOL_ERROR,
        &[
            // §5.1: "a server MUST close the connection upon receiving a frame that is not
            // masked".
            ("unmasked text", vec![ping.clone().unmasked()]),
            ("unmasked ping", vec![RawFrame::new(PING, "x").unmasked()]),
            ("unmasked close", vec![close_with(1000).unmasked()]),
            (
                "masked first fragment, unmasked continuation",
                vec![
                    RawFrame::text("{").more(),
                    RawFrame::new(CONTINUATION, "}").unmasked(),
                ],
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn reserved_opcodes_and_reserved_bits_are_closed_with_1002() {
    let s = start().await;
    // §5.2: opcodes 0x3-0x7 and 0xB-0xF are reserved; "if an unknown opcode is received, the
    // receiving endpoint MUST _Fail the WebSocket Connection_".
    let mut named: Vec<(String, Vec<RawFrame>)> = (0x3..=0x7)
        .chain(0xB..=0xF)
        .map(|op| (format!("opcode {op:#x}"), vec![RawFrame::new(op, "x")]))
        .collect();
    // §5.2: RSV1-3 "MUST be 0 unless an extension is negotiated that defines meanings";
    // no extension was negotiated here (RSV1 means compressed only with permessage-deflate).
    for (bits, name) in [(0b100, "RSV1"), (0b010, "RSV2"), (0b001, "RSV3")] {
        named.push((
            format!("{name} on text"),
            vec![RawFrame::text(r#"{"type":"ping"}"#).rsv(bits)],
        ));
        named.push((
            format!("{name} on ping"),
            vec![RawFrame::new(PING, "x").rsv(bits)],
        ));
        named.push((
            format!("{name} on a continuation"),
            vec![
                RawFrame::text("{").more(),
                RawFrame::new(CONTINUATION, "}").rsv(bits),
            ],
        ));
    }
    let cases: Vec<(&str, Vec<RawFrame>)> =
        named.iter().map(|(n, f)| (n.as_str(), f.clone())).collect();
    each_closes_with(&s, PROTOCOL_ERROR, &cases).await;
}

#[tokio::test]
async fn fragmented_and_oversized_control_frames_are_closed_with_1002() {
    let s = start().await;
    let big = vec![b'p'; 126];
    let mut close_126 = 1000u16.to_be_bytes().to_vec();
    close_126.extend_from_slice(&[b'r'; 124]);
    each_closes_with(
        &s,
        PROTOCOL_ERROR,
        &[
            // §5.5: "All control frames MUST have a payload length of 125 bytes or less and
            // MUST NOT be fragmented."
            ("fragmented ping", vec![RawFrame::new(PING, "x").more()]),
            ("fragmented pong", vec![RawFrame::new(PONG, "x").more()]),
            ("fragmented close", vec![close_with(1000).more()]),
            ("ping of 126 bytes", vec![RawFrame::new(PING, big.clone())]),
            ("pong of 126 bytes", vec![RawFrame::new(PONG, big)]),
            ("close of 126 bytes", vec![RawFrame::new(CLOSE, close_126)]),
            // Declared, not sent: the header alone is enough to refuse it.
            (
                "ping declaring 64 KiB",
                vec![RawFrame::new(PING, "").declare(65_536)],
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn broken_fragmentation_and_length_encoding_are_closed_with_1002() {
    let s = start().await;
    each_closes_with(
        &s,
        PROTOCOL_ERROR,
        &[
            // §5.4: a continuation must follow a non-final data frame, and the fragments of
            // one message are not interleaved with another data message.
            (
                "continuation without a message",
                vec![RawFrame::new(CONTINUATION, "x")],
            ),
            (
                "new text in the middle of a fragmented message",
                vec![RawFrame::text("{").more(), RawFrame::text("{}")],
            ),
            (
                "binary in the middle of a fragmented text",
                vec![RawFrame::text("{").more(), RawFrame::new(BINARY, "x")],
            ),
            // §5.2: "the most significant bit MUST be 0" of a 64-bit length.
            (
                "64-bit length with the top bit set",
                vec![RawFrame::text("").declare(1 << 63)],
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_close_with_an_invalid_code_is_closed_with_1002() {
    let s = start().await;
    // §7.4.1/§7.4.2: 1004-1006 and 1015 are reserved and MUST NOT be set in a Close frame,
    // 0-999 are not used, 1016-2999 belong to the protocol, and nothing goes above 4999.
    let mut cases: Vec<(String, Vec<RawFrame>)> =
        [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000]
            .into_iter()
            .map(|code| (format!("close {code}"), vec![close_with(code)]))
            .collect();
    cases.push(("close u16::MAX".into(), vec![close_with(u16::MAX)]));
    // §5.5.1: a body, if any, starts with a two-byte code.
    cases.push(("one-byte close".into(), vec![RawFrame::new(CLOSE, [0x03])]));
    let cases: Vec<(&str, Vec<RawFrame>)> =
        cases.iter().map(|(n, f)| (n.as_str(), f.clone())).collect();
    each_closes_with(&s, PROTOCOL_ERROR, &cases).await;

    // Valid codes are echoed (§5.5.1), which shows the server tells them apart.
    for code in [1000, 1001, 3000, 4999] {
        assert_eq!(close_code_for(&s, &[close_with(code)]).await, code);
    }
    let mut a = Attacker::connect(&s).await;
    a.send_frames(&[RawFrame::new(CLOSE, "")]).await;
    let f = a.frame().await.expect("a Close");
    assert_eq!(
        (f.opcode, f.payload.len()),
        (CLOSE, 0),
        "an empty Close is answered empty"
    );
}

// ---- text that is not UTF-8: 1007 ----

#[tokio::test]
async fn invalid_utf8_in_text_is_closed_with_1007_also_across_fragments() {
    let s = start().await;
    let bad = |bytes: &[u8]| {
        let mut text = br#"{"type":"ping","x":""#.to_vec();
        text.extend_from_slice(bytes);
        text.extend_from_slice(br#""}"#);
        vec![RawFrame::new(TEXT, text)]
    };
    // The first fragment ends inside a three-byte sequence (E2 82 ..); the second goes on
    // with a byte that cannot continue it.
    let split = vec![
        RawFrame::new(TEXT, &b"{\"type\":\"ping\",\"x\":\"\xE2\x82"[..]).more(),
        RawFrame::new(CONTINUATION, &b"(\"}"[..]),
    ];
    let mut close_bad_reason = 1000u16.to_be_bytes().to_vec();
    close_bad_reason.extend_from_slice(b"bye \xff");
    each_closes_with(
        &s,
        INVALID_DATA,
        &[
            ("invalid byte", bad(b"\xff")),
            ("invalid continuation", bad(b"\xC3\x28")),
            ("overlong encoding of /", bad(b"\xC0\xAF")),
            ("UTF-16 surrogate", bad(b"\xED\xA0\x80")),
            ("above U+10FFFF", bad(b"\xF4\x90\x80\x80")),
            ("split across fragments", split),
            // The message ends in the middle of a character.
            (
                "truncated at the end of the message",
                vec![
                    RawFrame::new(TEXT, &b"{\"x\":\"\xE2\x82"[..]).more(),
                    RawFrame::new(CONTINUATION, ""),
                ],
            ),
            // §8.1 fail fast: the rest of the message never comes, and need not.
            (
                "invalid first fragment, never finished",
                vec![RawFrame::new(TEXT, &b"{\"x\":\"\xff"[..]).more()],
            ),
            (
                "invalid start of a frame whose rest never comes",
                vec![RawFrame::new(TEXT, &b"{\"x\":\"\xff"[..]).declare(60_000)],
            ),
            // §5.5.1 / §8.1: the reason of a Close is UTF-8 too.
            ("close reason", vec![RawFrame::new(CLOSE, close_bad_reason)]),
        ],
    )
    .await;

    // A character split across fragments the right way is fine.
    let mut a = Attacker::connect(&s).await;
    let publish = "{\"type\":\"publish\",\"channel\":\"utf8\",\"data\":\"\u{20AC}\",\"id\":5}";
    let cut = publish.find('\u{20AC}').unwrap() + 1;
    a.send_frames(&[
        RawFrame::new(TEXT, &publish.as_bytes()[..cut]).more(),
        RawFrame::new(PING, "between fragments"),
        RawFrame::new(CONTINUATION, &publish.as_bytes()[cut..]),
    ])
    .await;
    let reply = a.json().await;
    assert_eq!(
        (&reply["type"], &reply["id"]),
        (&json!("reply"), &json!(5)),
        "{reply}"
    );
}

// ---- size: 1009 ----

#[tokio::test]
async fn a_message_over_max_message_size_is_closed_with_1009() {
    let s = start().await;
    let max = s.hub.config().limits.max_message_size;
    let fragment = vec![b'x'; 4096];
    let fragments = max / fragment.len() + 1;
    let mut fragmented: Vec<RawFrame> = (0..fragments)
        .map(|_| RawFrame::new(CONTINUATION, fragment.clone()).more())
        .collect();
    fragmented[0].opcode = TEXT;
    each_closes_with(
        &s,
        TOO_BIG,
        &[
            (
                "one text frame of max + 1",
                vec![RawFrame::new(TEXT, vec![b'x'; max + 1])],
            ),
            (
                "one binary frame of max + 1",
                vec![RawFrame::new(BINARY, vec![0; max + 1])],
            ),
            ("fragments of 4 KiB adding up to more than max", fragmented),
            // Declared only: refused on the header, before any of the body.
            (
                "a header declaring max + 1",
                vec![RawFrame::text("").declare(max as u64 + 1)],
            ),
            (
                "a header declaring 1 TiB",
                vec![RawFrame::text("").declare(1 << 40)],
            ),
            (
                "a continuation declaring 2^62 after a small fragment",
                vec![
                    RawFrame::text("{").more(),
                    RawFrame::new(CONTINUATION, "").declare(1 << 62),
                ],
            ),
        ],
    )
    .await;

    // A message of exactly the limit is read in full and answered (it is not JSON).
    let mut a = Attacker::connect(&s).await;
    a.send_frames(&[RawFrame::new(TEXT, vec![b'x'; max])]).await;
    let err = a.json().await;
    assert_eq!(err["code"], "bad_json", "{err}");
    a.assert_alive().await;
}

#[tokio::test]
async fn a_huge_declared_length_is_closed_with_1009_at_once_and_memory_stays_flat() {
    let s = start().await;
    let before = rss_bytes();
    let body = vec![b'x'; 1024 * 1024];
    let pushed = Cell::new(0usize);
    // 20 attackers at a time each declare 1 TiB (and then 2^62 bytes) and push up to 4 MiB
    // of body after the header: the server must refuse the header, not read the body.
    while_served(&s, |round| {
        let (s, body, pushed) = (&s, &body, &pushed);
        async move {
            let attackers = (0..20).map(|i| async move {
                let mut a = Attacker::connect(s).await;
                let len = if i % 2 == 0 { 1 << 40 } else { 1 << 62 };
                a.send_frames(&[RawFrame::text("").declare(len)]).await;
                let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
                let mut n = 0;
                for _ in 0..4 {
                    let w = write_until(&mut a.tcp, body, deadline).await;
                    n += w;
                    if w < body.len() {
                        break;
                    }
                }
                pushed.set(pushed.get() + n);
                assert_eq!(a.close_code().await, TOO_BIG, "round {round}, attacker {i}");
            });
            futures_util::future::join_all(attackers).await;
        }
    })
    .await;
    let growth = rss_bytes().saturating_sub(before);
    println!(
        "RSS growth {:.1} MiB; the attackers managed to push {:.1} MiB of body",
        rss_mib(growth),
        rss_mib(pushed.get() as u64)
    );
    assert!(growth < 48 * 1024 * 1024, "RSS grew by {growth} bytes");
    eventually(|| s.hub.connections() == 0).await;
}

// ---- binary messages: an error reply ----

#[tokio::test]
async fn a_binary_message_gets_the_bad_json_error_and_the_connection_stays() {
    let s = start().await;
    let s = &s;
    while_served(s, |_| async move {
        let mut a = Attacker::connect(s).await;
        a.send_frames(&[RawFrame::new(BINARY, &b"{\"type\":\"ping\"}"[..])])
            .await;
        let err = a.json().await;
        assert_eq!(err["type"], "error", "{err}");
        assert_eq!(err["code"], "bad_json", "{err}");
        // Fragmented binary too.
        a.send_frames(&[
            RawFrame::new(BINARY, vec![0u8; 10]).more(),
            RawFrame::new(CONTINUATION, vec![1u8; 10]),
        ])
        .await;
        assert_eq!(a.json().await["code"], "bad_json");
        a.assert_alive().await;
    })
    .await;
}

// ---- ping floods ----

/// A ping with a 125-byte payload numbered `n`.
fn numbered_ping(n: usize) -> RawFrame {
    let mut payload = format!("{n:08}").into_bytes();
    payload.resize(125, b'.');
    RawFrame::new(PING, payload)
}

#[tokio::test]
async fn a_ping_flood_gets_a_pong_per_ping_with_memory_flat() {
    let s = start().await;
    let mut a = Attacker::connect(&s).await;
    let before = rss_bytes();
    let mut peak = before;
    const BATCH: usize = 500;
    const BATCHES: usize = 40;
    let flood = async {
        for batch in 0..BATCHES {
            let pings: Vec<RawFrame> = (0..BATCH)
                .map(|i| numbered_ping(batch * BATCH + i))
                .collect();
            a.send_frames(&pings).await;
            for i in 0..BATCH {
                let f = a.frame().await.expect("the server closed during the flood");
                assert!(f.opcode == PONG && f.fin, "{f:?}");
                // §5.5.3: the Pong carries the Ping's payload.
                assert_eq!(f.payload, numbered_ping(batch * BATCH + i).payload);
            }
            peak = peak.max(rss_bytes());
        }
    };
    tokio::join!(flood, assert_served(&s, "127.0.0.2"));
    a.assert_alive().await;
    let growth = peak.saturating_sub(before);
    println!(
        "{} pings answered; RSS growth {:.1} MiB",
        BATCH * BATCHES,
        rss_mib(growth)
    );
    assert!(growth < 32 * 1024 * 1024, "RSS grew by {growth} bytes");
}

#[tokio::test]
async fn a_ping_flood_from_a_peer_that_never_reads_is_pushed_back_with_memory_flat() {
    let s = start().await;
    let mut a = Attacker::connect_with(&s, Some(16 * 1024)).await;
    let ping_len = numbered_ping(0).encode().len();
    // 64 MiB of pings (about half a million): if the server answered them all without
    // waiting for the reader, the pongs alone would take that much memory.
    let chunk = encode_all(&(0..8192).map(numbered_ping).collect::<Vec<_>>());
    let total = 64 * 1024 * 1024;
    let before = rss_bytes();
    let mut written = 0;
    let flood = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while written < total {
            let n = write_until(&mut a.tcp, &chunk, deadline).await;
            written += n;
            if n < chunk.len() {
                break;
            }
        }
    };
    tokio::join!(flood, assert_served(&s, "127.0.0.2"));
    let growth = rss_bytes().saturating_sub(before);
    println!(
        "the server took {:.1} MiB of pings from a peer that reads nothing; RSS growth {:.1} MiB",
        rss_mib(written as u64),
        rss_mib(growth)
    );
    assert!(
        written < total,
        "the server read everything without writing its pongs"
    );
    assert!(growth < 32 * 1024 * 1024, "RSS grew by {growth} bytes");

    // The attacker starts reading: every complete ping gets its pong, then the connection
    // is served as usual.
    let pings = written.div_ceil(ping_len);
    let rest = &chunk[written % chunk.len()..][..(ping_len - written % ping_len) % ping_len];
    let (mut rd, mut wr) = a.tcp.split();
    let reader = &mut a.reader;
    let finish = async {
        wr.write_all(rest).await.unwrap();
        let command = RawFrame::text(r#"{"type":"ping","id":9}"#).encode();
        wr.write_all(&command).await.unwrap();
    };
    let drain = async {
        for _ in 0..pings {
            let f = reader.frame(&mut rd).await.expect("the server closed");
            assert_eq!(f.opcode, PONG, "{f:?}");
        }
        reader.json(&mut rd).await
    };
    let ((), pong) = tokio::join!(finish, drain);
    assert_eq!(pong, json!({"type":"pong","id":9}));
}

// ---- slow and dead peers ----

#[tokio::test]
async fn a_stalled_reader_on_a_busy_channel_is_closed_with_1013_and_memory_stays_bounded() {
    let mut config = config();
    config.limits.max_queue_bytes = 256 * 1024;
    let s = start_with(config).await;
    let mut a = Attacker::connect_with(&s, Some(16 * 1024)).await;
    a.send_frames(&[RawFrame::text(
        r#"{"type":"subscribe","channel":"firehose","id":1}"#,
    )])
    .await;
    let reply = a.json().await;
    assert_eq!(
        (&reply["type"], &reply["id"]),
        (&json!("reply"), &json!(1)),
        "{reply}"
    );
    // From here on the attacker reads nothing, while the channel gets up to 64 MiB.
    let series = r#"duplex_slow_consumer_total{action="disconnect"}"#;
    let payload = format!("\"{}\"", "x".repeat(4096));
    let before = rss_bytes();
    let mut peak = before;
    let mut stop_at = None;
    for i in 0..16_384u64 {
        if stop_at == Some(i) {
            break;
        }
        if i == 64 {
            assert_served(&s, "127.0.0.2").await;
        }
        if stop_at.is_none() && s.hub.stats().slow_consumer_disconnects > 0 {
            println!("cut off after {i} publications of 4 KiB");
            // Publications go on after the cut-off, and others are served meanwhile.
            stop_at = Some(i + 1000);
            assert_served(&s, "127.0.0.2").await;
        }
        let data = serde_json::value::RawValue::from_string(payload.clone()).unwrap();
        s.hub.publish("firehose", data).await.unwrap();
        if i % 256 == 0 {
            peak = peak.max(rss_bytes());
        }
    }
    let growth = peak.saturating_sub(before);
    println!("RSS growth {:.1} MiB", rss_mib(growth));
    assert_eq!(
        metric(&s, series).await,
        1.0,
        "exactly the stalled reader was cut off"
    );
    assert!(growth < 32 * 1024 * 1024, "RSS grew by {growth} bytes");
    // What was in flight, then the Close.
    let mut messages = 0u64;
    let code = a
        .reader
        .close_code_after(&mut a.tcp, |_| messages += 1)
        .await;
    println!("{messages} frames were in flight before the Close");
    assert_eq!(code, TRY_AGAIN);
    drop(a);
    eventually(|| s.hub.connections() == 0).await;
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_dropped_after_interval_plus_timeout() {
    let mut config = config();
    let interval = Duration::from_millis(300);
    let timeout = Duration::from_millis(300);
    config.websocket.ping_interval = interval;
    config.websocket.pong_timeout = timeout;
    let s = start_with(config).await;
    let started = Instant::now();
    let mut a = Attacker::connect(&s).await;
    let mut pings = 0;
    let dropped = async {
        // Read everything, answer nothing.
        loop {
            let f = a.frame().await.expect("TCP closed before the Close frame");
            match f.opcode {
                PING => pings += 1,
                CLOSE => return f.close_code(),
                _ => panic!("unexpected {f:?}"),
            }
        }
    };
    let (code, ()) = tokio::join!(dropped, assert_served(&s, "127.0.0.2"));
    let elapsed = started.elapsed();
    assert_eq!(code, INTERNAL, "keepalive timeout");
    assert_eq!(
        pings, 1,
        "one ping, then the Close when its pong is overdue"
    );
    assert!(elapsed >= interval + timeout, "{elapsed:?}");
    assert!(elapsed < interval + timeout + WAIT, "{elapsed:?}");
    // The server closes TCP after its Close (§7.1.1).
    assert!(a.frame().await.is_none());
    eventually(|| s.hub.connections() == 0).await;
}

// ---- command floods ----

#[tokio::test]
async fn a_command_flood_gets_rate_limited_errors_then_1008() {
    let mut config = config();
    config.limits.commands_per_second = 1;
    config.limits.commands_burst = 20;
    config.limits.max_errors = 20;
    let s = start_with(config).await;
    let mut a = Attacker::connect(&s).await;
    // 5,000 commands in one go; the attacker reads the answers afterwards.
    let flood: Vec<RawFrame> = (0..5000)
        .map(|i| RawFrame::text(&format!(r#"{{"type":"ping","id":{i}}}"#)))
        .collect();
    let ((), ()) = tokio::join!(a.send_frames(&flood), assert_served(&s, "127.0.0.2"));
    let (mut pongs, mut errors) = (0u64, 0u64);
    let code = a
        .reader
        .close_code_after(&mut a.tcp, |f| {
            let v = f.json();
            match v["type"].as_str() {
                Some("pong") => {
                    assert_eq!(errors, 0, "a pong after the first error: {v}");
                    pongs += 1;
                }
                Some("error") => {
                    assert_eq!(v["code"], "rate_limited", "{v}");
                    errors += 1;
                }
                _ => panic!("unexpected {v}"),
            }
        })
        .await;
    let close_seen = Instant::now();
    println!("{pongs} pongs, {errors} rate_limited errors, then {code}");
    assert_eq!(code, POLICY);
    // The burst is served; a slow machine may refill a few tokens (1 per second).
    assert!((20..=30).contains(&pongs), "{pongs} pongs");
    // max_errors within 10 s, and the one that crosses it, then the Close.
    assert!((21..=30).contains(&errors), "{errors} errors");
    let counted = metric(&s, r#"duplex_command_errors_total{code="rate_limited"}"#).await;
    assert_eq!(counted, errors as f64);
    // The attacker never answers the Close: the server drops TCP after its close timeout
    // (5 s, RFC 6455 §7.1.1 lets the server close TCP first).
    let eof = tokio::time::timeout(Duration::from_secs(5) + WAIT, async {
        let mut chunk = [0u8; 4096];
        while matches!(a.tcp.read(&mut chunk).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(eof.is_ok(), "the server kept a peer that ignores its Close");
    println!("TCP closed {:?} after the Close", close_seen.elapsed());
    drop(a);
    eventually(|| s.hub.connections() == 0).await;
}

// ---- not HTTP at all ----

#[tokio::test]
async fn garbage_instead_of_an_http_request_gets_400_or_a_close_and_others_are_served() {
    let s = start().await;
    let frame = RawFrame::text(r#"{"type":"ping"}"#).encode();
    let mut tls_hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    tls_hello.extend_from_slice(&[0xAB; 64]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "binary noise",
            (0..=255u8).rev().cycle().take(4096).collect(),
        ),
        ("a TLS ClientHello", tls_hello),
        ("a WebSocket frame before any handshake", frame),
        ("a line of junk", b"HELLO THERE\r\n\r\n".to_vec()),
        ("NUL bytes", vec![0; 1024]),
        (
            "an HTTP/1.1 request line without a method",
            b"/ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "a bad HTTP version",
            b"GET /ws HTTP/9.7\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "a header line without a colon",
            b"GET /ws HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
        ),
    ];
    let cases = &cases;
    let s = &s;
    while_served(s, |round| async move {
        for (name, bytes) in cases {
            let mut tcp = TcpStream::connect(s.addr).await.unwrap();
            let _ = tcp.write_all(bytes).await;
            let mut answer = Vec::new();
            // The server must answer, or close, without waiting for more.
            let read = tokio::time::timeout(WAIT, async {
                let mut chunk = [0u8; 1024];
                loop {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => answer.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            assert!(
                read.is_ok(),
                "{name}: neither answered nor closed (round {round})"
            );
            let text = String::from_utf8_lossy(&answer);
            assert!(
                answer.is_empty() || text.starts_with("HTTP/1.1 400 "),
                "{name}: {text}"
            );
        }
    })
    .await;
    // The server notices each close on its own schedule; wait for it, bounded.
    eventually(|| s.hub.connections() == 0).await;
}
