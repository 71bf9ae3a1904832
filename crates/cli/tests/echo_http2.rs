//! `duplex echo --http2`: WebSockets over HTTP/2 (RFC 8441) with prior knowledge, HTTP/1.1 on
//! the same port, and `duplex autobahn-h2-bridge` relaying an HTTP/1.1 client to it.
//!
//! The HTTP/2 side is driven with the `h2` crate and hand-made WebSocket frames, so that what
//! is checked is the wire, not duplex's own client.

use std::{
    io::{BufRead, BufReader, Read as _},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use duplex::{deflate::DeflateConfig, ClientBuilder, Message};
use h2::{client::SendRequest, RecvStream, SendStream};
use tokio::net::TcpStream;

const DUPLEX: &str = env!("CARGO_BIN_EXE_duplex");
/// Every wait of these tests.
const DEADLINE: Duration = Duration::from_secs(10);

/// A `duplex` process, killed on drop.
struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Process {
    /// Starts `duplex ARGS --listen 127.0.0.1:0` and reads the bound address from its log.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(DUPLEX)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("exited before listening").unwrap();
            if let Some(at) = line.find("addr=") {
                let addr = line[at + 5..].split_whitespace().next().unwrap();
                break addr.parse().unwrap();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, addr }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn h2c(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    // RFC 8441 §3: extended CONNECT waits for the server's SETTINGS.
    tokio::time::timeout(DEADLINE, async {
        while !send.is_extended_connect_protocol_enabled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 within the deadline");
    send
}

/// Opens an extended CONNECT stream with `headers`; the response and the stream.
async fn connect(
    send: &SendRequest<Bytes>,
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> (http::response::Parts, RecvStream, SendStream<Bytes>) {
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{addr}/echo"))
        .extension(h2::ext::Protocol::from_static("websocket"))
        .header("sec-websocket-version", "13");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut send = send.clone().ready().await.unwrap();
    let (response, stream) = send.send_request(request.body(()).unwrap(), false).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = response.into_parts();
    (parts, body, stream)
}

/// A masked client frame (RFC 6455 §5.2) with a payload under 126 bytes.
fn client_frame(first: u8, payload: &[u8]) -> Bytes {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first, 0x80 | u8::try_from(payload.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    Bytes::from(frame)
}

/// Reads one unmasked server frame with a payload under 126 bytes: its first byte and payload.
async fn server_frame(body: &mut RecvStream, buf: &mut BytesMut) -> (u8, Vec<u8>) {
    loop {
        if buf.len() >= 2 {
            assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
            let len = usize::from(buf[1] & 0x7f);
            assert!(len < 126, "a short frame was expected");
            if buf.len() >= 2 + len {
                let frame = buf.split_to(2 + len);
                return (frame[0], frame[2..].to_vec());
            }
        }
        let data = tokio::time::timeout(DEADLINE, body.data())
            .await
            .unwrap()
            .expect("the stream ended")
            .unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
        buf.extend_from_slice(&data);
    }
}

/// Over h2c the server announces extended CONNECT, accepts `:protocol websocket` with 200
/// and no `Sec-WebSocket-Accept`, and echoes frames; two WebSockets share one connection, one
/// with permessage-deflate negotiated (RFC 7692) and the other without.
#[tokio::test]
async fn echo_serves_websockets_over_h2c_streams() {
    let echo = Process::start(&["echo", "--http2", "--subprotocol", "chat"]);
    let send = h2c(echo.addr).await;

    let (plain, mut plain_body, mut plain_stream) = connect(
        &send,
        echo.addr,
        &[("sec-websocket-protocol", "other, chat")],
    )
    .await;
    assert_eq!(plain.status, 200);
    assert!(plain.headers.get("sec-websocket-accept").is_none());
    assert_eq!(plain.headers["sec-websocket-protocol"], "chat");
    assert!(plain.headers.get("sec-websocket-extensions").is_none());

    let (deflated, mut deflated_body, mut deflated_stream) = connect(
        &send,
        echo.addr,
        &[("sec-websocket-extensions", "permessage-deflate")],
    )
    .await;
    assert_eq!(deflated.status, 200);
    let extensions = deflated.headers["sec-websocket-extensions"]
        .to_str()
        .unwrap();
    assert!(extensions.starts_with("permessage-deflate"), "{extensions}");

    let text = "over HTTP/2, ".repeat(5);
    plain_stream
        .send_data(client_frame(0x81, text.as_bytes()), false)
        .unwrap();
    deflated_stream
        .send_data(client_frame(0x81, text.as_bytes()), false)
        .unwrap();

    let mut buf = BytesMut::new();
    let (first, payload) = server_frame(&mut plain_body, &mut buf).await;
    assert_eq!((first, payload.as_slice()), (0x81, text.as_bytes()));

    // RFC 7692 §7.2.1: the echo is compressed (RSV1), its tail 00 00 ff ff removed.
    let mut buf = BytesMut::new();
    let (first, payload) = server_frame(&mut deflated_body, &mut buf).await;
    assert_eq!(first, 0x81 | 0x40, "a compressed final text frame");
    let mut inflated = String::new();
    let mut tail = payload;
    tail.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let _ = flate2::read::DeflateDecoder::new(tail.as_slice()).read_to_string(&mut inflated);
    assert_eq!(inflated, text);

    // A close is answered with a close, and the server then ends its side of the stream.
    plain_stream
        .send_data(client_frame(0x88, &1000u16.to_be_bytes()), false)
        .unwrap();
    let mut buf = BytesMut::new();
    let (first, payload) = server_frame(&mut plain_body, &mut buf).await;
    assert_eq!(
        (first, payload.as_slice()),
        (0x88, &1000u16.to_be_bytes()[..])
    );
    // (END_STREAM may come on an empty DATA frame.)
    while let Some(data) = tokio::time::timeout(DEADLINE, plain_body.data())
        .await
        .unwrap()
    {
        assert!(data.unwrap().is_empty(), "nothing after the close");
    }
    assert!(plain_body.is_end_stream());
}

/// What is not an extended CONNECT for `websocket` gets 400 and the reason, on a connection
/// that goes on serving WebSockets.
#[tokio::test]
async fn echo_refuses_other_http2_requests() {
    let echo = Process::start(&["echo", "--http2"]);
    let send = h2c(echo.addr).await;
    let request = http::Request::get(format!("http://{}/", echo.addr))
        .body(())
        .unwrap();
    let (response, _) = send.clone().send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 400);

    let (ok, _, _) = connect(&send, echo.addr, &[]).await;
    assert_eq!(ok.status, 200);
}

/// HTTP/1.1 clients are served on the same port as before.
#[tokio::test]
async fn echo_with_http2_still_serves_http1() {
    let echo = Process::start(&["echo", "--http2"]);
    let (mut ws, _) = ClientBuilder::new(format!("ws://{}/", echo.addr))
        .connect()
        .await
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.recv()).await.unwrap();
    assert_eq!(echoed.unwrap().unwrap(), Message::text("one"));
}

/// The bridge turns an HTTP/1.1 WebSocket client into an RFC 8441 stream: the handshake's
/// subprotocol and permessage-deflate come from the server, the `Sec-WebSocket-Accept` from
/// the bridge, and messages larger than every HTTP/2 window flow both ways.
#[tokio::test]
async fn the_bridge_relays_an_http1_client_to_echo_over_http2() {
    let echo = Process::start(&["echo", "--http2", "--subprotocol", "chat"]);
    let upstream = echo.addr.to_string();
    let bridge = Process::start(&["autobahn-h2-bridge", "--upstream", &upstream]);
    for deflate in [None, Some(DeflateConfig::default())] {
        let (mut ws, _) = ClientBuilder::new(format!("ws://{}/", bridge.addr))
            .subprotocol("chat")
            .deflate(deflate.clone())
            .connect()
            .await
            .unwrap();
        assert_eq!(ws.subprotocol(), Some("chat"));
        assert_eq!(ws.deflate_params().is_some(), deflate.is_some());
        // 4 MiB of varied bytes: several times the 1 MiB stream windows of both ends.
        let big: Vec<u8> = (0..4u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        ws.send(Message::text("after")).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, ws.recv()).await.unwrap();
        assert_eq!(echoed.unwrap().unwrap(), Message::binary(big));
        let echoed = tokio::time::timeout(DEADLINE, ws.recv()).await.unwrap();
        assert_eq!(echoed.unwrap().unwrap(), Message::text("after"));
        tokio::time::timeout(DEADLINE, ws.close(duplex::CloseCode::NORMAL, ""))
            .await
            .unwrap()
            .unwrap();
    }
}

/// With TLS, ALPN offers `h2` first (RFC 7301: the server's preference) and `http/1.1` to
/// clients that offer only that; a wss:// HTTP/1.1 client is served as before.
#[tokio::test]
async fn echo_with_http2_and_tls_offers_h2_then_http1() {
    use duplex::tls::rustls::{self, pki_types::CertificateDer, RootCertStore};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let echo = Process::start(&[
        "echo",
        "--http2",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(certified.cert.der().to_vec()))
        .unwrap();
    let client = |alpn: &[&[u8]]| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    };
    for (offered, chosen) in [
        (&[&b"http/1.1"[..], b"h2"][..], &b"h2"[..]),
        (&[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
    ] {
        let config = client(offered);
        let addr = echo.addr;
        let alpn = tokio::task::spawn_blocking(move || {
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(DEADLINE)).unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let mut tls = rustls::ClientConnection::new(config, name).unwrap();
            while tls.is_handshaking() {
                tls.complete_io(&mut tcp).unwrap();
            }
            tls.alpn_protocol().map(<[u8]>::to_vec)
        })
        .await
        .unwrap();
        assert_eq!(alpn.as_deref(), Some(chosen), "offered {offered:?}");
    }
    let (mut ws, _) = ClientBuilder::new(format!("wss://127.0.0.1:{}/", echo.addr.port()))
        .tls_config(client(&[b"http/1.1"]))
        .connect()
        .await
        .unwrap();
    ws.send(Message::text("over wss")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.recv()).await.unwrap();
    assert_eq!(echoed.unwrap().unwrap(), Message::text("over wss"));
}

/// A protocol violation over HTTP/2: the echo of what came before it and the 1002 close
/// reach the client, then END_STREAM; the server keeps the stream until the client ends its
/// side, since a stream reset while DATA waits to be written loses that DATA.
#[tokio::test]
async fn a_protocol_violation_over_http2_gets_the_close_before_the_stream_ends() {
    let echo = Process::start(&["echo", "--http2"]);
    let send = h2c(echo.addr).await;
    for _ in 0..20 {
        let (parts, mut body, mut stream) = connect(&send, echo.addr, &[]).await;
        assert_eq!(parts.status, 200);
        // Autobahn 4.1.5: a text message, then a frame with the reserved opcode 7, in one
        // DATA frame.
        let mut data = client_frame(0x81, b"Hello, world!").to_vec();
        data.extend_from_slice(&client_frame(0x87, b"reserved"));
        stream.send_data(Bytes::from(data), false).unwrap();
        let mut buf = BytesMut::new();
        let (first, payload) = server_frame(&mut body, &mut buf).await;
        assert_eq!((first, payload.as_slice()), (0x81, &b"Hello, world!"[..]));
        let (first, payload) = server_frame(&mut body, &mut buf).await;
        assert_eq!(first, 0x88, "a close frame");
        assert_eq!(payload[..2], 1002u16.to_be_bytes());
        // The client ends its side; the server's side has ended without a reset.
        stream.send_data(Bytes::new(), true).unwrap();
        while let Some(data) = tokio::time::timeout(DEADLINE, body.data()).await.unwrap() {
            assert!(data.unwrap().is_empty(), "nothing after the close");
        }
    }
}
