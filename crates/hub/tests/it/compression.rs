//! `websocket.compression`: permessage-deflate (RFC 7692) negotiated at `/ws`, publications
//! compressed once and the same bytes sent to every compressing subscriber.

use duplex::bytes::BytesMut;
use duplex::{
    deflate::{client_accept, DeflateConfig},
    ClientBuilder,
};
use duplex_proto::{Connection, Event, Message, Role};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn compressing() -> duplex_hub::Config {
    let mut c = config();
    c.websocket.compression.enabled = true;
    c
}

/// A JSON value of about `len` bytes that compresses well.
fn big(len: usize) -> Value {
    json!({"rows": "price 101.25 volume 3000; ".repeat(len / 26)})
}

#[tokio::test]
async fn off_by_default_the_offer_is_declined() {
    let s = start().await;
    let c = Client::connect(
        ClientBuilder::new(s.url())
            .subprotocol("duplex.v1")
            .deflate(Some(DeflateConfig::default())),
    )
    .await;
    assert_eq!(c.ws.subprotocol(), Some("duplex.v1"));
    assert!(c.ws.deflate_params().is_none());
}

#[tokio::test]
async fn compressing_and_plain_clients_share_a_channel() {
    let s = start_with(compressing()).await;
    let builder = |deflate: bool| {
        ClientBuilder::new(s.url())
            .subprotocol("duplex.v1")
            .deflate(deflate.then(DeflateConfig::default))
    };
    let mut zipped = Client::connect(builder(true)).await;
    let mut plain = Client::connect(builder(false)).await;
    let mut publisher = Client::connect(builder(true)).await;
    assert_eq!(zipped.ws.subprotocol(), Some("duplex.v1"));
    assert!(zipped.ws.deflate_params().is_some());
    assert!(plain.ws.deflate_params().is_none());
    zipped.subscribe("quotes").await;
    plain.subscribe("quotes").await;
    // Small, large, small: below and above the threshold, compressed messages between
    // uncompressed ones.
    for data in [json!({"n": 1}), big(30_000), json!({"n": 3}), big(20_000)] {
        let reply = publisher
            .call(json!({"type":"publish","channel":"quotes","data":data.clone()}))
            .await;
        assert_eq!(reply["type"], "reply", "{reply}");
        for c in [&mut zipped, &mut plain] {
            let m = c.recv_message().await;
            assert_eq!(m["data"], data);
        }
    }
}

/// Reads one server frame's header from `wire` (server frames are unmasked): RSV1 and the
/// payload length.
fn header(wire: &[u8]) -> Option<(bool, usize, usize)> {
    let (b0, b1) = (*wire.first()?, *wire.get(1)?);
    let (len, at) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*wire.get(2)?, *wire.get(3)?])),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(wire.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    Some((b0 & 0x40 != 0, at, len))
}

/// A raw client that offered permessage-deflate: its socket, a client `Connection` with the
/// negotiated parameters, and what it read past the 101.
async fn raw_client(s: &TestServer) -> (TcpStream, Connection, BytesMut) {
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    let request = upgrade_request(
        s.addr,
        "/ws",
        "Sec-WebSocket-Protocol: duplex.v1\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(WAIT, tcp.read_buf(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed during the handshake");
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let extension = head
        .lines()
        .find_map(|l| l.strip_prefix("sec-websocket-extensions:"))
        .expect("the 101 accepts permessage-deflate")
        .trim()
        .to_owned();
    let _ = buf.split_to(head_end);
    let params = client_accept(&extension, &DeflateConfig::default()).unwrap();
    let config = duplex::Config::default().deflate(Some(DeflateConfig::default()));
    let conn = Connection::with_deflate(Role::Client, config, Some(params));
    (tcp, conn, buf)
}

/// Writes what `conn` has queued.
async fn flush(tcp: &mut TcpStream, conn: &mut Connection) {
    let mut out = BytesMut::new();
    conn.poll_output(&mut out);
    tcp.write_all(&out).await.unwrap();
}

/// A [`raw_client`] that subscribed to `channel`.
async fn raw_subscriber(s: &TestServer, channel: &str) -> (TcpStream, Connection, BytesMut) {
    let (mut tcp, mut conn, buf) = raw_client(s).await;
    conn.send(Message::text(
        json!({"type":"subscribe","channel":channel,"id":1}).to_string(),
    ))
    .unwrap();
    flush(&mut tcp, &mut conn).await;
    (tcp, conn, buf)
}

/// The next message's frame as it was on the wire (RSV1, payload length) and its text.
async fn next_frame(
    tcp: &mut TcpStream,
    conn: &mut Connection,
    buf: &mut BytesMut,
) -> (bool, usize, String) {
    loop {
        if let Some((rsv1, at, len)) = header(buf) {
            if buf.len() >= at + len {
                let frame = buf.split_to(at + len);
                conn.receive_bytes(&frame);
                match conn.poll_event() {
                    Some(Event::Message(m)) => return (rsv1, len, m.as_text().unwrap().to_owned()),
                    other => panic!("{other:?}"),
                }
            }
        }
        let n = tokio::time::timeout(WAIT, tcp.read_buf(buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed");
    }
}

#[tokio::test]
async fn a_publication_is_compressed_on_the_wire_identically_for_every_subscriber() {
    let s = start_with(compressing()).await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let (mut tcp, mut conn, mut buf) = raw_subscriber(&s, "wire").await;
        let (_, _, welcome) = next_frame(&mut tcp, &mut conn, &mut buf).await;
        assert!(welcome.contains("\"welcome\""), "{welcome}");
        let (_, _, reply) = next_frame(&mut tcp, &mut conn, &mut buf).await;
        assert!(reply.contains("\"reply\""), "{reply}");
        subscribers.push((tcp, conn, buf));
    }
    let data = big(30_000);
    let raw = serde_json::value::to_raw_value(&data).unwrap();
    s.hub.publish("wire", raw).await.unwrap();
    let mut lengths = Vec::new();
    for (tcp, conn, buf) in &mut subscribers {
        // Joins of the later subscribers may come first.
        let (rsv1, len, message) = loop {
            let (rsv1, len, text) = next_frame(tcp, conn, buf).await;
            let message: Value = serde_json::from_str(&text).unwrap();
            if message["type"] != "presence_diff" {
                break (rsv1, len, message);
            }
        };
        let text = message.to_string();
        assert_eq!(message["data"], data);
        assert!(rsv1, "RFC 7692 §6: a compressed message has RSV1 set");
        assert!(
            len < text.len() / 10,
            "{len} bytes on the wire for {}",
            text.len()
        );
        lengths.push(len);
    }
    assert!(lengths.windows(2).all(|w| w[0] == w[1]), "{lengths:?}");
}

/// A few KiB of deflate that inflate to 16 MiB: bounded by `limits.max_message_size`, it ends
/// in 1009 while another client is served.
#[tokio::test]
async fn a_deflate_bomb_ends_in_1009_at_the_message_limit() {
    let s = start_with(compressing()).await;
    let series = "duplex_protocol_closes_total{code=\"1009\"}";
    let before = metric(&s, series).await;
    let (mut tcp, mut conn, mut buf) = raw_client(&s).await;
    conn.send(Message::binary(vec![0u8; 16 << 20])).unwrap();
    let mut out = BytesMut::new();
    conn.poll_output(&mut out);
    assert!(out.len() < 32 << 10, "{} bytes", out.len());
    let rss = rss_bytes();
    tcp.write_all(&out).await.unwrap();
    assert_served(&s, "127.0.0.2").await;
    let code = loop {
        let n = tokio::time::timeout(WAIT, tcp.read_buf(&mut buf))
            .await
            .expect("no Close in time")
            .unwrap();
        assert!(n > 0, "closed without a Close frame");
        conn.receive_bytes(&buf.split());
        let mut code = None;
        while let Some(event) = conn.poll_event() {
            if let Event::Closed(closed) = event {
                code = Some(closed.code);
            }
        }
        // Our half of the closing handshake, once the server's Close is in.
        flush(&mut tcp, &mut conn).await;
        if let Some(code) = code {
            break code;
        }
    };
    assert_eq!(code, duplex::CloseCode::TOO_BIG);
    drop(tcp);
    eventually(|| s.hub.connections() == 0).await;
    assert_eq!(metric(&s, series).await - before, 1.0);
    // Inflating stopped near the 64 KiB message limit, far below the 16 MiB it stands for.
    let grown = rss_bytes().saturating_sub(rss);
    assert!(grown < 8 << 20, "resident memory grew by {grown} bytes");
}
