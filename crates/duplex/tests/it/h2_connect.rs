//! `ClientBuilder::http2`, the client side of RFC 8441, against an in-process hyper server
//! that upgrades through `duplex::hyper`: several WebSockets on one HTTP/2 connection, the
//! fallbacks to HTTP/1.1, resets, flow control with 16 MiB messages, and hostile answers.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use duplex::{
    bytes::Bytes,
    deflate::DeflateConfig,
    hyper::{Body, Upgrade},
    Accept, ClientBuilder, CloseCode, Config, Error, MaybeTlsStream, Message,
};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::mpsc,
    time::timeout,
};

/// How long any step may take.
const WAIT: Duration = Duration::from_secs(20);

/// How the test server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// HTTP/2 with `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441 §3), HTTP/1.1 as well.
    Rfc8441,
    /// HTTP/2 without the setting, HTTP/1.1 as well.
    NoConnectProtocol,
    /// HTTP/1.1 only: an HTTP/2 preface is answered as a bad HTTP/1.1 request.
    Http1Only,
}

/// A running test server: what its sockets reported when they ended, and how many
/// connections of each version it accepted.
struct Server {
    addr: SocketAddr,
    reports: mpsc::UnboundedReceiver<String>,
    h2_connections: Arc<AtomicUsize>,
    http1_connections: Arc<AtomicUsize>,
    /// Connections whose serving ended (the client closed them).
    ended: Arc<AtomicUsize>,
}

impl Server {
    async fn report(&mut self) -> String {
        timeout(WAIT, self.reports.recv())
            .await
            .expect("a report in time")
            .expect("the server is running")
    }

    /// Wait until `n` connections have ended.
    async fn ended(&self, n: usize) {
        within(async {
            while self.ended.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.h2_connections.load(Ordering::SeqCst),
            self.http1_connections.load(Ordering::SeqCst),
        )
    }
}

/// The paths: `/moved` redirects to `/echo?moved` (308), `/forbidden` is refused with 403 and a body, `/big-header` answers with a
/// 16 KiB header, `/drop` reads one message and drops the socket without closing it (a
/// reset), `/flood` sends one 16 MiB message then reports `sent`; any other path selects
/// `chat` when offered, accepts permessage-deflate and echoes, then reports its close code.
async fn handle(
    mut req: hyper::Request<Incoming>,
    reports: mpsc::UnboundedSender<String>,
) -> Result<hyper::Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/moved" {
        let mut response = hyper::Response::new(Body::from(""));
        *response.status_mut() = hyper::StatusCode::PERMANENT_REDIRECT;
        let location = hyper::header::HeaderValue::from_static("/echo?moved");
        response
            .headers_mut()
            .insert(hyper::header::LOCATION, location);
        return Ok(response);
    }
    if path == "/forbidden" {
        let mut response = hyper::Response::new(Body::from("not for you"));
        *response.status_mut() = hyper::StatusCode::FORBIDDEN;
        return Ok(response);
    }
    let upgrade = match Upgrade::new(&mut req) {
        Ok(upgrade) => upgrade
            .protocols(["chat"])
            .config(Config::default().deflate(Some(DeflateConfig::default()))),
        Err(rejection) => return Ok(rejection.response()),
    };
    let (mut response, upgrading) = match upgrade.accept(Accept::default()) {
        Ok(answer) => answer,
        Err(rejection) => return Ok(rejection.response()),
    };
    if path == "/big-header" {
        let value = hyper::header::HeaderValue::from_str(&"x".repeat(16 * 1024)).unwrap();
        response.headers_mut().insert("x-big", value);
    }
    tokio::spawn(async move {
        let Ok(mut ws) = upgrading.await else {
            let _ = reports.send("upgrade failed".to_owned());
            return;
        };
        match path.as_str() {
            "/drop" => {
                let _ = ws.recv().await;
                drop(ws);
                let _ = reports.send("dropped".to_owned());
                return;
            }
            "/flood" => {
                let sent = ws.send(Message::binary(noise(16 << 20))).await.is_ok();
                let _ = reports.send(format!("sent {sent}"));
            }
            _ => {}
        }
        loop {
            match ws.recv().await {
                Some(Ok(message)) => {
                    if ws.send(message).await.is_err() {
                        break;
                    }
                }
                Some(Err(_)) => {}
                None => break,
            }
        }
        let report = match ws.closed() {
            Some(closed) => format!("closed {} clean={}", closed.code.0, closed.is_clean()),
            None => "not closed".to_owned(),
        };
        let _ = reports.send(report);
    });
    Ok(response)
}

/// Serve one connection, HTTP/2 or HTTP/1.1 as `h2` says.
async fn serve<T>(io: T, h2: bool, mode: Mode, reports: mpsc::UnboundedSender<String>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, reports.clone()));
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        if mode == Mode::Rfc8441 {
            builder.enable_connect_protocol();
        }
        let _ = builder.serve_connection(TokioIo::new(io), service).await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await;
    }
}

/// A server on `127.0.0.1:0`; with `tls`, over TLS, the version picked by ALPN.
async fn server(mode: Mode, tls: Option<duplex::tls::TlsAcceptor>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, reports) = mpsc::unbounded_channel();
    let h2_connections = Arc::new(AtomicUsize::new(0));
    let http1_connections = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let (h2c, h1c) = (Arc::clone(&h2_connections), Arc::clone(&http1_connections));
    let ends = Arc::clone(&ended);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let end_count = EndCount(Arc::clone(&ends));
            let (tx, h2c, h1c, tls) = (tx.clone(), Arc::clone(&h2c), Arc::clone(&h1c), tls.clone());
            tokio::spawn(async move {
                let _ended = end_count;
                let count = |h2: bool| {
                    if h2 { &h2c } else { &h1c }.fetch_add(1, Ordering::SeqCst);
                };
                if let Some(acceptor) = tls {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    count(h2);
                    serve(tls, h2, mode, tx).await;
                } else {
                    let h2 = mode != Mode::Http1Only && starts_with_preface(&tcp).await;
                    count(h2);
                    serve(tcp, h2, mode, tx).await;
                }
            });
        }
    });
    Server {
        addr,
        reports,
        h2_connections,
        http1_connections,
        ended,
    }
}

/// Counts a connection as ended when its task finishes, whichever way.
struct EndCount(Arc<AtomicUsize>);

impl Drop for EndCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Whether the client opened with the HTTP/2 connection preface (RFC 9113 §3.4).
async fn starts_with_preface(tcp: &TcpStream) -> bool {
    let mut head = [0; 4];
    let mut seen = 0;
    while seen < head.len() {
        match tcp.peek(&mut head).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen = n,
        }
    }
    &head == b"PRI "
}

/// Bytes that do not compress well.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    timeout(WAIT, fut).await.expect("in time")
}

fn h2_stream(ws: &duplex::WebSocket<MaybeTlsStream>) -> &duplex::http2::H2Stream {
    ws.get_ref()
        .http2()
        .expect("the WebSocket runs over HTTP/2")
}

#[tokio::test]
async fn several_websockets_share_one_connection() {
    let mut server = server(Mode::Rfc8441, None).await;
    let addr = server.addr;
    let url = |path: &str| format!("ws://{addr}{path}");
    let (mut first, response) = within(
        ClientBuilder::new(url("/one?x=1"))
            .http2(true)
            .subprotocol("chat")
            .deflate(Some(DeflateConfig::default()))
            .connect(),
    )
    .await
    .unwrap();
    // RFC 8441 §5: 200, and no Sec-WebSocket-Accept.
    assert_eq!(response.status, 200);
    assert!(response.headers.get("sec-websocket-accept").is_none());
    assert_eq!(first.subprotocol(), Some("chat"));
    assert!(first.deflate_params().is_some());
    let stream = h2_stream(&first);
    assert!(!stream.is_tls() && !first.get_ref().is_tls());
    assert!(first.get_ref().tcp().is_none());
    let connection = stream.connection().clone();
    let mut others = Vec::new();
    for i in 0..3 {
        let (ws, response) = within(connection.connect(ClientBuilder::new(url(&format!("/{i}")))))
            .await
            .unwrap();
        assert_eq!((response.status, ws.subprotocol()), (200, None));
        others.push(ws);
    }
    let mut ids: Vec<u32> = others.iter().map(|ws| h2_stream(ws).stream_id()).collect();
    ids.push(stream.stream_id());
    ids.sort_unstable();
    assert_eq!(ids, [1, 3, 5, 7]);

    // All four at once, each with its own messages.
    let echoes = others.iter_mut().enumerate().map(|(i, ws)| async move {
        for n in 0..20 {
            let text = format!("stream {i} message {n}");
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(
                ws.recv().await.transpose().unwrap(),
                Some(Message::text(text))
            );
        }
        ws.close(CloseCode::NORMAL, "done").await.unwrap();
        assert!(ws.recv().await.is_none());
        assert!(ws.closed().unwrap().is_clean());
    });
    let first_echo = async {
        first.send(Message::binary(vec![5; 70_000])).await.unwrap();
        assert_eq!(
            first.recv().await.transpose().unwrap(),
            Some(Message::binary(vec![5; 70_000]))
        );
    };
    within(async { tokio::join!(futures_util::future::join_all(echoes), first_echo) }).await;
    for _ in 0..3 {
        assert_eq!(server.report().await, "closed 1000 clean=true");
    }
    // The first WebSocket outlived the others' streams.
    first.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        within(first.recv()).await.transpose().unwrap(),
        Some(Message::text("still here"))
    );
    within(first.close(CloseCode::NORMAL, "")).await.unwrap();
    assert_eq!(server.report().await, "closed 1000 clean=true");
    assert_eq!(server.counts(), (1, 0), "one TCP connection, HTTP/2");

    // Another URL's origin is not this connection's.
    let other = format!("ws://localhost:{}/", server.addr.port());
    let e = connection
        .connect(ClientBuilder::new(other))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Url(m) if m.contains("not on this HTTP/2 connection")),
        "{e}"
    );
    // With every WebSocket and handle gone, the connection ends.
    assert_eq!(server.ended.load(Ordering::SeqCst), 0);
    drop((first, others, connection));
    server.ended(1).await;
}

#[tokio::test]
async fn without_the_setting_it_falls_back_to_http1() {
    for mode in [Mode::NoConnectProtocol, Mode::Http1Only] {
        let mut server = server(mode, None).await;
        let url = format!("ws://{}/", server.addr);
        let (mut ws, response) = within(ClientBuilder::new(url).http2(true).connect())
            .await
            .unwrap();
        assert_eq!(response.status, 101, "{mode:?}");
        assert!(ws.get_ref().http2().is_none() && ws.get_ref().tcp().is_some());
        ws.send(Message::text("over 1.1")).await.unwrap();
        assert_eq!(
            within(ws.recv()).await.transpose().unwrap(),
            Some(Message::text("over 1.1"))
        );
        within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
        assert_eq!(server.report().await, "closed 1000 clean=true");
        // The HTTP/2 attempt, then a new connection for HTTP/1.1.
        let expected = if mode == Mode::Http1Only {
            (0, 2)
        } else {
            (1, 1)
        };
        assert_eq!(server.counts(), expected, "{mode:?}");
    }
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn wss_negotiates_h2_by_alpn_and_falls_back_on_the_same_connection() {
    let pki = crate::support::Pki::new(&["localhost"], None);
    let acceptor = |alpn: &[&[u8]]| {
        let config = duplex::tls::server_config_from_pem(&pki.cert, &pki.key).unwrap();
        let mut config = (*config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        duplex::tls::TlsAcceptor::from(Arc::new(config))
    };
    let mut h2 = server(Mode::Rfc8441, Some(acceptor(&[b"h2", b"http/1.1"]))).await;
    let url = format!("wss://localhost:{}/", h2.addr.port());
    let (mut ws, response) = within(
        ClientBuilder::new(&url)
            .ca_file(&pki.ca)
            .http2(true)
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    assert!(h2_stream(&ws).is_tls() && ws.get_ref().is_tls());
    let (mut second, _) = within(
        h2_stream(&ws)
            .connection()
            .connect(ClientBuilder::new(&url)),
    )
    .await
    .unwrap();
    for socket in [&mut ws, &mut second] {
        socket.send(Message::text("tls")).await.unwrap();
        assert_eq!(
            within(socket.recv()).await.transpose().unwrap(),
            Some(Message::text("tls"))
        );
        within(socket.close(CloseCode::NORMAL, "")).await.unwrap();
        assert_eq!(h2.report().await, "closed 1000 clean=true");
    }
    assert_eq!(h2.counts(), (1, 0));
    // Without `http2`, ALPN offers only http/1.1, as before.
    let (ws, response) = within(ClientBuilder::new(&url).ca_file(&pki.ca).connect())
        .await
        .unwrap();
    assert_eq!(response.status, 101);
    assert!(ws.get_ref().http2().is_none());
    drop(ws);
    assert_eq!(h2.counts(), (1, 1));

    // A server that picks http/1.1 in ALPN: the upgrade runs on the same TLS connection.
    let mut h1 = server(Mode::Rfc8441, Some(acceptor(&[b"http/1.1"]))).await;
    let url = format!("wss://localhost:{}/", h1.addr.port());
    let (mut ws, response) = within(
        ClientBuilder::new(&url)
            .ca_file(&pki.ca)
            .http2(true)
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 101);
    let session = ws.get_ref().tls_session().unwrap();
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    assert_eq!(h1.report().await, "closed 1000 clean=true");
    assert_eq!(h1.counts(), (0, 1));

    // h2 picked, but no extended CONNECT: a new TLS connection offering http/1.1 only.
    let mut plain_h2 = server(
        Mode::NoConnectProtocol,
        Some(acceptor(&[b"h2", b"http/1.1"])),
    )
    .await;
    let url = format!("wss://localhost:{}/", plain_h2.addr.port());
    let (mut ws, response) = within(
        ClientBuilder::new(&url)
            .ca_file(&pki.ca)
            .http2(true)
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 101);
    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    assert_eq!(plain_h2.report().await, "closed 1000 clean=true");
    assert_eq!(plain_h2.counts(), (1, 1));
}

#[tokio::test]
async fn a_reset_stream_is_an_abnormal_closure() {
    let mut server = server(Mode::Rfc8441, None).await;
    let addr = server.addr;
    let url = |path: &str| format!("ws://{addr}{path}");
    let (mut ws, _) = within(ClientBuilder::new(url("/echo")).http2(true).connect())
        .await
        .unwrap();
    let connection = h2_stream(&ws).connection().clone();

    // The server drops its socket without a Close frame: the stream ends, the WebSocket
    // fails as a TCP connection closed early would, with 1006.
    let (mut dropped, _) = within(connection.connect(ClientBuilder::new(url("/drop"))))
        .await
        .unwrap();
    dropped.send(Message::text("bye")).await.unwrap();
    assert_eq!(server.report().await, "dropped");
    assert!(matches!(within(dropped.recv()).await, Some(Err(_))));
    assert!(within(dropped.recv()).await.is_none());
    let closed = dropped.closed().unwrap();
    assert_eq!(
        (closed.code, closed.is_clean()),
        (CloseCode::ABNORMAL, false)
    );

    // The client resets its stream: the server's socket ends with 1006.
    let (mut reset, _) = within(connection.connect(ClientBuilder::new(url("/echo2"))))
        .await
        .unwrap();
    reset.send(Message::text("x")).await.unwrap();
    assert!(within(reset.recv()).await.is_some());
    reset.get_mut().http2_mut().unwrap().reset();
    assert_eq!(server.report().await, "closed 1006 clean=false");

    // Neither touched the other stream.
    ws.send(Message::text("alive")).await.unwrap();
    assert_eq!(
        within(ws.recv()).await.transpose().unwrap(),
        Some(Message::text("alive"))
    );
    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    assert_eq!(server.report().await, "closed 1000 clean=true");
}

/// Send `message` while receiving its echo, then close.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(ws: duplex::WebSocket<S>, message: Message) {
    let (mut sink, mut stream) = ws.split();
    let expected = message.clone();
    let (sent, received) = tokio::join!(sink.send(message), stream.recv());
    sent.unwrap();
    assert!(received.transpose().unwrap() == Some(expected));
    sink.close(CloseCode::NORMAL, "").await.unwrap();
    assert!(stream.recv().await.is_none());
}

#[tokio::test]
async fn sixteen_mib_messages_cross_flow_control_on_two_streams() {
    let mut server = server(Mode::Rfc8441, None).await;
    let addr = server.addr;
    let url = |path: &str| format!("ws://{addr}{path}");
    let (a, _) = within(ClientBuilder::new(url("/a")).http2(true).connect())
        .await
        .unwrap();
    let connection = h2_stream(&a).connection().clone();
    let (b, _) = within(connection.connect(ClientBuilder::new(url("/b"))))
        .await
        .unwrap();
    let big_a = Message::binary(noise(16 << 20));
    let big_b = Message::text("é".repeat(8 << 20));
    within(async { tokio::join!(round_trip(a, big_a), round_trip(b, big_b)) }).await;
    for _ in 0..2 {
        assert_eq!(server.report().await, "closed 1000 clean=true");
    }
}

/// What the raw `h2` server does on its one stream, once it has answered 200.
#[derive(Debug, Clone, Copy)]
enum Raw {
    /// Send one unmasked 16 MiB binary frame, only as fast as flow control lets it (each
    /// chunk takes the capacity the client granted), counting the bytes sent.
    Flood,
    /// Read one DATA frame, then reset the stream with RST_STREAM (`CANCEL`).
    Reset,
}

/// An RFC 8441 server made with the `h2` crate directly, for what hyper's server does not
/// let a test control (it buffers a whole write; it ends a dropped stream with END_STREAM).
async fn raw_h2_server(behaviour: Raw) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let mut connection = h2::server::Builder::new()
            .enable_connect_protocol()
            .handshake::<_, Bytes>(tcp)
            .await
            .unwrap();
        let Some(Ok((request, mut respond))) = connection.accept().await else {
            return;
        };
        tokio::spawn(async move { while let Some(Ok(_)) = connection.accept().await {} });
        assert_eq!(request.method(), hyper::Method::CONNECT);
        let mut recv = request.into_body();
        let mut send = respond
            .send_response(hyper::Response::new(()), false)
            .unwrap();
        match behaviour {
            Raw::Reset => {
                let _ = recv.data().await;
                send.send_reset(h2::Reason::CANCEL);
                // Keep the stream's handles until the client has seen the reset.
                tokio::time::sleep(WAIT).await;
            }
            Raw::Flood => {
                let len = 16usize << 20;
                let mut frame = vec![0x82, 127];
                frame.extend_from_slice(&(len as u64).to_be_bytes());
                frame.extend_from_slice(&noise(len));
                let mut frame = Bytes::from(frame);
                while !frame.is_empty() {
                    send.reserve_capacity(frame.len());
                    let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .unwrap()
                        .unwrap();
                    let chunk = frame.split_to(granted.min(frame.len()));
                    counter.fetch_add(chunk.len(), Ordering::SeqCst);
                    send.send_data(chunk, false).unwrap();
                }
                tokio::time::sleep(WAIT).await;
            }
        }
    });
    (addr, sent)
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_the_server_back() {
    let (addr, sent) = raw_h2_server(Raw::Flood).await;
    let (mut ws, response) = within(
        ClientBuilder::new(format!("ws://{addr}/"))
            .http2(true)
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    // While the client does not read, the server may send one stream window and no more:
    // capacity goes back only as the WebSocket consumes the data.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = sent.load(Ordering::SeqCst);
    assert!(before > 0, "nothing sent");
    assert!(
        before <= duplex::http2::STREAM_WINDOW as usize,
        "{before} bytes sent to a client that did not read"
    );
    let message = within(ws.recv()).await.transpose().unwrap().unwrap();
    assert_eq!(message.len(), 16 << 20);
    assert_eq!(sent.load(Ordering::SeqCst), (16 << 20) + 10);
}

#[tokio::test]
async fn a_reset_from_the_server_is_an_abnormal_closure() {
    let (addr, _) = raw_h2_server(Raw::Reset).await;
    let (mut ws, _) = within(
        ClientBuilder::new(format!("ws://{addr}/"))
            .http2(true)
            .connect(),
    )
    .await
    .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    // RFC 8441 §5: RST_STREAM is the TCP reset of HTTP/1.1: an IO error, then 1006.
    match within(ws.recv()).await {
        Some(Err(Error::Io(e))) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(within(ws.recv()).await.is_none());
    let closed = ws.closed().unwrap();
    assert_eq!(
        (closed.code, closed.is_clean()),
        (CloseCode::ABNORMAL, false)
    );
    // A send after it fails too, and does not hang.
    assert!(within(ws.send(Message::text("late"))).await.is_err());
}

#[tokio::test]
async fn refusals_and_hostile_answers_fail_the_handshake() {
    let server = server(Mode::Rfc8441, None).await;
    let addr = server.addr;
    let url = |path: &str| format!("ws://{addr}{path}");
    match within(ClientBuilder::new(url("/forbidden")).http2(true).connect()).await {
        Err(Error::Refused { status, body }) => {
            assert_eq!((status, body.as_str()), (403, "not for you"))
        }
        other => panic!("{other:?}"),
    }
    // A redirect in answer to the extended CONNECT: followed when asked, on a new connection.
    match within(ClientBuilder::new(url("/moved")).http2(true).connect()).await {
        Err(Error::Redirected { status, location }) => {
            assert_eq!((status, location.as_str()), (308, "/echo?moved"));
        }
        other => panic!("{other:?}"),
    }
    let (ws, _) = within(
        ClientBuilder::new(url("/moved"))
            .http2(true)
            .follow_redirects(1)
            .connect(),
    )
    .await
    .unwrap();
    assert!(ws.get_ref().http2().is_some());
    drop(ws);
    // A response header list over 8 KiB (SETTINGS_MAX_HEADER_LIST_SIZE) is not taken.
    let result = within(ClientBuilder::new(url("/big-header")).http2(true).connect()).await;
    assert!(result.is_err(), "{result:?}");
    // A header HTTP/2 forbids is refused before anything is sent.
    let result = ClientBuilder::new(url("/"))
        .http2(true)
        .header("TE", "trailers")
        .connect()
        .await;
    // Over HTTP/1.1 TE is a valid header: the check is the HTTP/2 request's.
    assert!(
        matches!(&result, Err(Error::InvalidHeader(e)) if e.name == "TE"),
        "{result:?}"
    );
    // A server that is not there is a connect error, not a fallback.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = format!("ws://{}/", closed.local_addr().unwrap());
    drop(closed);
    let result = within(ClientBuilder::new(gone).http2(true).connect()).await;
    assert!(matches!(result, Err(Error::Connect { .. })), "{result:?}");
}

#[tokio::test]
async fn a_silent_server_is_a_timeout_not_a_hang() {
    use tokio::io::AsyncReadExt;
    // Accepts TCP and reads what comes, but says nothing: no SETTINGS, no PONG.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended, mut ended_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink).await;
        let _ = ended.send(sink.starts_with(b"PRI * HTTP/2.0"));
    });
    let started = std::time::Instant::now();
    let result = within(
        ClientBuilder::new(format!("ws://{addr}/"))
            .http2(true)
            .handshake_timeout(Duration::from_millis(300))
            .connect(),
    )
    .await;
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The abandoned connection is closed, not left open by its task.
    let preface_then_eof = timeout(Duration::from_secs(5), ended_rx.recv()).await;
    assert_eq!(preface_then_eof, Ok(Some(true)));
}
