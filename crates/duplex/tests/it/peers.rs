//! Interop with independent WebSocket implementations, both directions: Python `websockets`
//! and Node `ws` as clients of a duplex server, and as servers for the duplex client.
//!
//! Each peer is a small program (`tests/peers/python/peer.py`, `tests/peers/node/peer.mjs`)
//! that runs the scenario named by the request path and prints what it observed, one line at a
//! time. The test plays the duplex side of the scenario and checks both its own observations
//! and the peer's lines, so a fault on either side of the wire fails the test.
//!
//! These tests are `#[ignore]`d because they need Python and Node packages that a plain
//! `cargo test` does not install. `cargo xtask test` installs them (a venv under the target
//! directory, `npm ci` in `tests/peers/node`) and runs these tests in its `peers` step; after
//! that, `cargo nextest run --run-ignored only -E 'test(/^peers::/)'` runs them as well. Run
//! without the runtimes, they fail and say how to install them.

use std::{env, future::Future, path::PathBuf, process::Stdio, time::Duration};

use crate::support::Pki;
use bytes::Bytes;
use duplex::{
    deflate::{DeflateConfig, DeflateParams},
    ClientBuilder, CloseCode, Config, Event, MaybeTlsStream, Message, ServerConfig, Side,
    WebSocket,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader, Lines},
    net::TcpListener,
    process::{Child, ChildStdout, Command},
    task::JoinHandle,
    time::timeout,
};

/// Bound for each phase of a scenario; the peer programs give up on their own after 60 s.
const LIMIT: Duration = Duration::from_secs(90);

/// The message sizes of RFC 6455 §5.2 that matter: the 7-bit, 16-bit and 64-bit length forms
/// and the edges between them.
const SIZES: [usize; 5] = [0, 125, 126, 65_535, 65_536];

const SIXTEEN_MIB: usize = 16 * 1024 * 1024;

// WebSockets over HTTP/2 (RFC 8441): the duplex client against hypercorn.
#[cfg(feature = "http2")]
#[path = "peers_h2.rs"]
mod hypercorn;

/// Both roles use the client's transport type, so one scenario body serves both directions.
type Ws = WebSocket<MaybeTlsStream>;

/// An independent implementation.
#[derive(Clone, Copy, Debug)]
enum Peer {
    Python,
    Node,
    /// Python `hypercorn` serving WebSockets over HTTP/2 (RFC 8441) to an ASGI app.
    #[cfg_attr(not(feature = "http2"), allow(dead_code))]
    Hypercorn,
}

/// Which side the peer plays.
#[derive(Clone, Copy, Debug)]
enum Dir {
    /// The peer connects to a duplex server.
    PeerIsClient,
    /// The duplex client connects to the peer.
    PeerIsServer,
}

impl Peer {
    /// The command that starts the peer program, or a panic that says how to install it.
    fn command(self) -> Command {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        match self {
            Self::Python | Self::Hypercorn => {
                let python = env::var_os("DUPLEX_PEERS_PYTHON").map_or_else(
                    || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../peers/venv/bin/python"),
                    PathBuf::from,
                );
                assert!(
                    python.is_file(),
                    "the Python peer needs a venv with `websockets` and `hypercorn` at {}: run \
                     `cargo xtask test --only peers` (it creates the venv), or set \
                     DUPLEX_PEERS_PYTHON to a python that has them",
                    python.display()
                );
                let mut command = Command::new(python);
                let program = match self {
                    Self::Hypercorn => "h2_peer.py",
                    _ => "peer.py",
                };
                command.arg(root.join("tests/peers/python").join(program));
                command
            }
            Self::Node => {
                let dir = root.join("tests/peers/node");
                assert!(
                    dir.join("node_modules/ws").is_dir(),
                    "the Node peer needs `ws` in {}: run `cargo xtask test --only peers` \
                     (it runs `npm ci` there)",
                    dir.join("node_modules").display()
                );
                let mut command = Command::new("node");
                command.arg(dir.join("peer.mjs"));
                command
            }
        }
    }
}

/// A running peer program.
struct Running {
    peer: Peer,
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
}

impl Running {
    fn spawn(peer: Peer, args: &[&str]) -> Self {
        let mut child = peer
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {peer:?} peer: {e}"));
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut stderr = child.stderr.take().expect("stderr is piped");
        // Read stderr as it comes, so a chatty peer never blocks on a full pipe.
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Self {
            peer,
            child,
            stdout,
            stderr,
        }
    }

    /// The port a peer server announced with its first line, `listening PORT`.
    async fn listening_port(&mut self) -> u16 {
        let line = timeout(LIMIT, self.stdout.next_line())
            .await
            .expect("the peer server did not announce its port in time")
            .expect("reading the peer's stdout");
        let Some(line) = line else {
            let stderr = (&mut self.stderr).await.unwrap_or_default();
            panic!(
                "the {:?} peer exited before listening:\n{stderr}",
                self.peer
            );
        };
        line.strip_prefix("listening ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the peer: {line:?}"))
    }

    /// Waits for the peer to exit and returns what it reported; panics with its stderr if it
    /// failed.
    async fn finish(mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let read_all = async {
            while let Some(line) = self.stdout.next_line().await.expect("reading peer stdout") {
                lines.push(line);
            }
        };
        timeout(LIMIT, read_all)
            .await
            .unwrap_or_else(|_| panic!("the {:?} peer did not finish in time", self.peer));
        let status = timeout(LIMIT, self.child.wait())
            .await
            .expect("the peer did not exit in time")
            .expect("waiting for the peer");
        let stderr = self.stderr.await.unwrap_or_default();
        assert!(
            status.success(),
            "the {:?} peer failed ({status}); it reported {lines:?}; stderr:\n{stderr}",
            self.peer
        );
        lines
    }
}

/// Runs one scenario: starts the peer in the role `dir` gives it, connects the two, lets
/// `ours` play the duplex side, and returns the peer's report lines.
async fn session<F, Fut>(peer: Peer, dir: Dir, scenario: &str, ours: F) -> Vec<String>
where
    F: FnOnce(Ws) -> Fut,
    Fut: Future<Output = ()>,
{
    let (ws, running) = match dir {
        Dir::PeerIsClient => {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local address");
            let url = format!("ws://{addr}/{scenario}");
            let mut running = Running::spawn(peer, &["client", &url]);
            let tcp = tokio::select! {
                accepted = timeout(LIMIT, listener.accept()) => {
                    accepted.expect("the peer did not connect in time").expect("accept").0
                }
                status = running.child.wait() => {
                    let stderr = (&mut running.stderr).await.unwrap_or_default();
                    panic!("the {peer:?} peer exited ({status:?}) before connecting:\n{stderr}");
                }
            };
            let ws = duplex::accept(MaybeTlsStream::Plain(tcp))
                .await
                .expect("server handshake with the peer");
            (ws, running)
        }
        Dir::PeerIsServer => {
            let mut running = Running::spawn(peer, &["server"]);
            let port = running.listening_port().await;
            let url = format!("ws://127.0.0.1:{port}/{scenario}");
            let (ws, _response) = timeout(LIMIT, duplex::connect(&url))
                .await
                .expect("the client handshake did not finish in time")
                .expect("client handshake with the peer");
            (ws, running)
        }
    };
    timeout(LIMIT, ours(ws))
        .await
        .expect("the duplex side did not finish in time");
    running.finish().await
}

/// Text of `len` bytes (ASCII, so any length is valid UTF-8).
fn text(len: usize) -> Message {
    let text: String = (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    Message::text(text)
}

/// Binary of `len` bytes in a pattern that does not repeat every 4 bytes, so a masking
/// mistake cannot cancel out.
fn binary(len: usize) -> Message {
    Message::binary((0..len).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
}

async fn recv(ws: &mut Ws) -> Message {
    match ws.recv().await {
        Some(Ok(message)) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn next_event(ws: &mut Ws) -> Event {
    match ws.next_event().await {
        Some(Ok(event)) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Sends `message` to an echoing peer and checks that the same message comes back.
async fn round_trip(ws: &mut Ws, message: Message) {
    ws.send(message.clone()).await.expect("send");
    let echoed = recv(ws).await;
    assert!(
        echoed == message,
        "sent {message:?}, the peer echoed {echoed:?}"
    );
}

/// Runs the closing handshake from our side and checks that it was clean.
async fn close(mut ws: Ws, code: CloseCode, reason: &str) {
    ws.close(code, reason).await.expect("closing handshake");
    let closed = ws.closed().expect("closed after the handshake");
    assert_eq!(closed.initiated_by, Side::Local);
    assert_eq!(closed.error, None);
}

/// Text, binary and empty messages at every length-encoding edge, both ways.
async fn echo_sizes(peer: Peer, dir: Dir) {
    let lines = session(peer, dir, "echo", |mut ws| async move {
        for len in SIZES {
            round_trip(&mut ws, text(len)).await;
            round_trip(&mut ws, binary(len)).await;
        }
        close(ws, CloseCode::NORMAL, "done").await;
    })
    .await;
    assert_eq!(lines, ["closed 1000 done"]);
}

/// 16 MiB messages, both ways.
async fn echo_16_mib(peer: Peer, dir: Dir) {
    let lines = session(peer, dir, "echo", |mut ws| async move {
        round_trip(&mut ws, text(SIXTEEN_MIB)).await;
        round_trip(&mut ws, binary(SIXTEEN_MIB)).await;
        close(ws, CloseCode::NORMAL, "done").await;
    })
    .await;
    assert_eq!(lines, ["closed 1000 done"]);
}

/// Fragmented messages from the peer are reassembled, across UTF-8 sequences split between
/// fragments (and, from Node, with a Ping between two fragments).
async fn fragmented(peer: Peer, dir: Dir) {
    let lines = session(peer, dir, "fragmented", |mut ws| async move {
        assert_eq!(
            recv(&mut ws).await,
            Message::text("fragmented t\u{e9}xt \u{20ac}")
        );
        let expected: Vec<u8> = (0..3)
            .flat_map(|n| (0..65_537).map(move |i| ((i * 7 + n) % 256) as u8))
            .collect();
        let got = recv(&mut ws).await;
        assert!(
            got == Message::binary(expected),
            "binary reassembly differs: {got:?}"
        );
        close(ws, CloseCode::NORMAL, "done").await;
    })
    .await;
    assert_eq!(lines, ["sent fragmented", "closed 1000 done"]);
}

/// The peer pings us and gets its Pong; we ping the peer and get ours.
async fn ping_pong(peer: Peer, dir: Dir) {
    let lines = session(peer, dir, "ping", |mut ws| async move {
        assert_eq!(
            next_event(&mut ws).await,
            Event::Ping(Bytes::from_static(b"peer-ping"))
        );
        assert_eq!(
            next_event(&mut ws).await,
            Event::Message(Message::text("pinged"))
        );
        ws.ping(Bytes::from_static(b"duplex-ping"))
            .await
            .expect("ping");
        ws.send(Message::text("after-ping")).await.expect("send");
        assert_eq!(
            next_event(&mut ws).await,
            Event::Pong(Bytes::from_static(b"duplex-ping"))
        );
        close(ws, CloseCode::NORMAL, "done").await;
    })
    .await;
    assert_eq!(
        lines,
        ["pong peer-ping", "ping duplex-ping", "closed 1000 done"]
    );
}

/// Codes for the close tests: normal, going away, policy, and both ends of the application
/// range (RFC 6455 §7.4).
const CLOSE_CODES: [u16; 5] = [1000, 1001, 1008, 3000, 4999];

/// The peer closes with each code and a non-ASCII reason; we see both and answer.
async fn close_from_peer(peer: Peer, dir: Dir) {
    for code in CLOSE_CODES {
        let scenario = format!("close-from-peer/{code}");
        let lines = session(peer, dir, &scenario, |mut ws| async move {
            match ws.recv().await {
                None => {}
                other => panic!("expected the peer's close, got {other:?}"),
            }
            let frame = ws.close_frame().expect("the peer's Close frame");
            assert_eq!(frame.code, CloseCode(code));
            assert_eq!(
                frame.reason.as_str(),
                format!("peer closes with {code} \u{2713}")
            );
            let closed = ws.closed().expect("closed");
            assert_eq!(closed.initiated_by, Side::Peer);
            assert_eq!(closed.error, None);
        })
        .await;
        // RFC 6455 §5.5.1: the answering Close echoes the status code.
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(&format!("closed {code}")),
            "code {code}: the peer reported {lines:?}"
        );
    }
}

/// We close with each code and a non-ASCII reason; the peer sees both.
async fn close_from_duplex(peer: Peer, dir: Dir) {
    for code in CLOSE_CODES {
        let reason = format!("duplex closes with {code} \u{2713}");
        let ours = reason.clone();
        let lines = session(peer, dir, "close-from-duplex", |ws| async move {
            close(ws, CloseCode(code), &ours).await;
        })
        .await;
        assert_eq!(lines, [format!("closed {code} {reason}")]);
    }
}

/// Four tests per scenario: each peer, in each role.
macro_rules! both_ways {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::{Dir, Peer};

            #[tokio::test]
            #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
            async fn python_client() {
                super::$scenario(Peer::Python, Dir::PeerIsClient).await;
            }

            #[tokio::test]
            #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
            async fn python_server() {
                super::$scenario(Peer::Python, Dir::PeerIsServer).await;
            }

            #[tokio::test]
            #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
            async fn node_client() {
                super::$scenario(Peer::Node, Dir::PeerIsClient).await;
            }

            #[tokio::test]
            #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
            async fn node_server() {
                super::$scenario(Peer::Node, Dir::PeerIsServer).await;
            }
        }
    )*};
}

both_ways!(
    echo_sizes,
    echo_16_mib,
    fragmented,
    ping_pong,
    close_from_peer,
    close_from_duplex,
);

// ---------------------------------------------------------------------------------------------
// permessage-deflate (RFC 7692) with the Python peer, plain and over TLS.
// ---------------------------------------------------------------------------------------------

/// Whether the compressors keep their context from one message to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Takeover {
    /// Both sides' defaults: the LZ77 window carries over between messages.
    Kept,
    /// Both `*_no_context_takeover` parameters negotiated (RFC 7692 §7.1.1), each requested
    /// by one side: the duplex end asks for the peer's reset and the peer asks for ours.
    Reset,
}

/// What the duplex side offers or accepts in the compressed sessions.
fn our_deflate(dir: Dir, takeover: Takeover) -> DeflateConfig {
    let config = DeflateConfig::default();
    match (takeover, dir) {
        (Takeover::Kept, _) => config,
        // Our server requires the client (the peer) to reset; the peer requests our reset.
        (Takeover::Reset, Dir::PeerIsClient) => config.client_no_context_takeover(true),
        // Our client requests the server's (the peer's) reset; the peer requires ours.
        (Takeover::Reset, Dir::PeerIsServer) => config.server_no_context_takeover(true),
    }
}

/// The parameters both ends must agree on, and the response header that says so.
fn expected_deflate(dir: Dir, takeover: Takeover) -> (DeflateParams, &'static str) {
    let reset = takeover == Takeover::Reset;
    match dir {
        // websockets offers `client_max_window_bits`; duplex accepts it with its own
        // defaults (15-bit windows, no limit imposed on the client).
        Dir::PeerIsClient => (
            DeflateParams {
                server_no_context_takeover: reset,
                client_no_context_takeover: reset,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            },
            if reset {
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            } else {
                "permessage-deflate"
            },
        ),
        // websockets' default server limits both windows to 12 bits; in "no-takeover" mode it
        // keeps 15-bit windows and resets both contexts.
        Dir::PeerIsServer => {
            if reset {
                (
                    DeflateParams {
                        server_no_context_takeover: true,
                        client_no_context_takeover: true,
                        server_max_window_bits: 15,
                        client_max_window_bits: 15,
                    },
                    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                )
            } else {
                (
                    DeflateParams {
                        server_no_context_takeover: false,
                        client_no_context_takeover: false,
                        server_max_window_bits: 12,
                        client_max_window_bits: 12,
                    },
                    "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
                )
            }
        }
    }
}

/// Bytes that do not compress: xorshift64 output, seeded so a failure is reproducible.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The messages of the compressed sessions: below and above the compression threshold,
/// repetitive text of 1 MiB and more (which shrinks a thousandfold), random binary (which
/// does not shrink at all), and the same message twice in a row (which a compressor that
/// keeps its context sends in a few bytes the second time).
fn deflate_messages() -> Vec<Message> {
    let repeated = "duplex permessage-deflate \u{e9}\u{20ac} ".repeat(40_000);
    assert!(repeated.len() >= 1 << 20);
    vec![
        Message::text(""),
        Message::text("short"),
        text(1000),
        text(65_536),
        Message::text(repeated.clone()),
        Message::text(repeated),
        binary(100_000),
        Message::binary(random_bytes(300_000, 7)),
        Message::binary(random_bytes(1 << 20, 11)),
        Message::binary(vec![0; 3 << 20]),
    ]
}

/// Echoes every message of [`deflate_messages`] through the peer and closes.
async fn deflate_body<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) {
    for message in deflate_messages() {
        ws.send(message.clone()).await.expect("send");
        let echoed = match ws.recv().await {
            Some(Ok(echoed)) => echoed,
            other => panic!("expected an echo, got {other:?}"),
        };
        assert!(
            echoed == message,
            "a message of {} bytes came back different ({} bytes)",
            message.len(),
            echoed.len()
        );
    }
    ws.close(CloseCode::NORMAL, "done")
        .await
        .expect("closing handshake");
    let closed = ws.closed().expect("closed after the handshake");
    assert_eq!(closed.error, None);
}

/// Echo through the Python peer with permessage-deflate negotiated, `dir` both ways, over
/// TLS when `tls`. Both ends report what was negotiated, and both reports must match.
async fn deflate_echo(dir: Dir, tls: bool, takeover: Takeover) {
    let pki = tls.then(|| Pki::new(&["127.0.0.1", "localhost"], None));
    let mode = match takeover {
        Takeover::Kept => "default",
        Takeover::Reset => "no-takeover",
    };
    let ours = our_deflate(dir, takeover);
    let (params, header) = expected_deflate(dir, takeover);
    let config = Config::default()
        .max_message_size(64 << 20)
        .deflate(Some(ours.clone()));
    let running = match dir {
        Dir::PeerIsClient => {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local address");
            let scheme = if tls { "wss" } else { "ws" };
            let url = format!("{scheme}://{addr}/echo");
            let mut args = vec!["client".to_owned(), url, "--deflate".into(), mode.into()];
            if let Some(pki) = &pki {
                args.extend(["--cafile".into(), pki.ca.display().to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut running = Running::spawn(Peer::Python, &args);
            let tcp = tokio::select! {
                accepted = timeout(LIMIT, listener.accept()) => {
                    accepted.expect("the peer did not connect in time").expect("accept").0
                }
                status = running.child.wait() => {
                    let stderr = (&mut running.stderr).await.unwrap_or_default();
                    panic!("the Python peer exited ({status:?}) before connecting:\n{stderr}");
                }
            };
            let server = ServerConfig::default().connection(config);
            let hook = |_: &duplex::Request| Ok(duplex::Accept::default());
            if let Some(pki) = &pki {
                let tls = pki.acceptor().accept(tcp).await.expect("TLS handshake");
                let mut ws = duplex::accept_with(tls, server, hook)
                    .await
                    .expect("server handshake with the peer");
                assert_eq!(ws.deflate_params(), Some(&params));
                timeout(LIMIT, deflate_body(&mut ws))
                    .await
                    .expect("in time");
            } else {
                let mut ws = duplex::accept_with(tcp, server, hook)
                    .await
                    .expect("server handshake with the peer");
                assert_eq!(ws.deflate_params(), Some(&params));
                timeout(LIMIT, deflate_body(&mut ws))
                    .await
                    .expect("in time");
            }
            running
        }
        Dir::PeerIsServer => {
            let mut args = vec!["server".to_owned(), "--deflate".into(), mode.into()];
            if let Some(pki) = &pki {
                args.extend([
                    "--tls".into(),
                    pki.cert.display().to_string(),
                    pki.key.display().to_string(),
                ]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut running = Running::spawn(Peer::Python, &args);
            let port = running.listening_port().await;
            let scheme = if tls { "wss" } else { "ws" };
            let mut builder = ClientBuilder::new(format!("{scheme}://127.0.0.1:{port}/echo"))
                .config(config)
                .deflate(Some(ours));
            if let Some(pki) = &pki {
                builder = builder.ca_file(&pki.ca);
            }
            let (mut ws, response) = timeout(LIMIT, builder.connect())
                .await
                .expect("the client handshake did not finish in time")
                .expect("client handshake with the peer");
            assert_eq!(response.extensions.as_deref(), Some(header));
            assert_eq!(ws.deflate_params(), Some(&params));
            timeout(LIMIT, deflate_body(&mut ws))
                .await
                .expect("in time");
            running
        }
    };
    let lines = running.finish().await;
    assert_eq!(
        lines,
        [
            format!("extensions {header}"),
            "closed 1000 done".to_owned()
        ]
    );
}

/// The compressed sessions: each direction, plain and TLS, with and without context takeover.
macro_rules! deflate_cases {
    ($($name:ident: $dir:ident, $tls:expr, $takeover:ident;)*) => {$(
        #[tokio::test]
        #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
        async fn $name() {
            super::deflate_echo(super::Dir::$dir, $tls, super::Takeover::$takeover).await;
        }
    )*};
}

mod deflate {
    deflate_cases! {
        python_client_ws: PeerIsClient, false, Kept;
        python_client_ws_no_takeover: PeerIsClient, false, Reset;
        python_client_wss: PeerIsClient, true, Kept;
        python_client_wss_no_takeover: PeerIsClient, true, Reset;
        python_server_ws: PeerIsServer, false, Kept;
        python_server_ws_no_takeover: PeerIsServer, false, Reset;
        python_server_wss: PeerIsServer, true, Kept;
        python_server_wss_no_takeover: PeerIsServer, true, Reset;
    }
}

// ---------------------------------------------------------------------------------------------
// The axum and hyper integrations: what the 101 confirmed is what the socket uses.
// ---------------------------------------------------------------------------------------------

/// What the upgraded socket reported inside the axum callback or the hyper task.
#[cfg(feature = "hyper")]
type Negotiated = (Option<String>, Option<DeflateParams>);

/// An axum app that upgrades with `duplex::axum`, choosing a subprotocol and accepting
/// permessage-deflate from its `Config`; the peer connects offering both. The socket in the
/// callback must carry the subprotocol and the deflate parameters of the `101`, and the
/// compressed echo of [`deflate_messages`] must come back intact.
#[cfg(feature = "axum")]
async fn axum_upgrade(peer: Peer) {
    use std::sync::{Arc, Mutex};

    use duplex::axum::WebSocketUpgrade;

    let (tx, rx) = tokio::sync::oneshot::channel::<Negotiated>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let handler = move |upgrade: WebSocketUpgrade| {
        let tx = Arc::clone(&tx);
        async move {
            upgrade
                .protocols(["duplex.v9", "chat"])
                .config(Config::default().deflate(Some(DeflateConfig::default())))
                .on_upgrade(move |mut ws| async move {
                    let seen = (
                        ws.subprotocol().map(str::to_owned),
                        ws.deflate_params().cloned(),
                    );
                    deflate_body(&mut ws).await;
                    if let Some(tx) = tx.lock().unwrap().take() {
                        let _ = tx.send(seen);
                    }
                })
        }
    };
    let app = axum::Router::new().route("/echo", axum::routing::get(handler));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    negotiated_with(peer, addr, rx, "axum").await;
    server.abort();
}

/// Run `peer` as a client of the server at `addr`, offering `chat` (and `other`) and
/// permessage-deflate; `rx` reports what the server's socket negotiated. Both sides must
/// agree that `chat` and permessage-deflate are on, and the compressed echo must pass.
#[cfg(feature = "hyper")]
async fn negotiated_with(
    peer: Peer,
    addr: std::net::SocketAddr,
    rx: tokio::sync::oneshot::Receiver<Negotiated>,
    via: &str,
) {
    let url = format!("ws://{addr}/echo");
    let mut args = vec!["client", url.as_str()];
    if matches!(peer, Peer::Python) {
        args.extend(["--deflate", "default"]);
    }
    args.extend(["--subprotocol", "chat", "--subprotocol", "other"]);
    let running = Running::spawn(peer, &args);
    let (subprotocol, params) = timeout(LIMIT, rx)
        .await
        .unwrap_or_else(|_| panic!("the {via} handler did not finish in time"))
        .unwrap_or_else(|_| panic!("the {via} handler ended without reporting"));
    let mut lines = running.finish().await;
    assert_eq!(subprotocol.as_deref(), Some("chat"));
    assert!(
        params.is_some(),
        "permessage-deflate was not negotiated through {via}"
    );
    lines.sort();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0], "closed 1000 done");
    assert!(
        lines[1].starts_with("extensions permessage-deflate"),
        "{lines:?}"
    );
    assert_eq!(lines[2], "subprotocol chat");
}

/// The plain hyper 1 upgrade (`duplex::hyper`, no axum): a `hyper::server::conn::http1`
/// server with upgrades on, selecting a subprotocol and accepting permessage-deflate from its
/// `Config`; as [`axum_upgrade`], the peer and the socket must agree on both.
#[cfg(feature = "hyper")]
async fn hyper_upgrade(peer: Peer) {
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    use duplex::hyper::{Body, Upgrade};
    use hyper::{server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;

    let (tx, rx) = tokio::sync::oneshot::channel::<Negotiated>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = Arc::clone(&tx);
            let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let tx = Arc::clone(&tx);
                async move {
                    let upgrade = match Upgrade::new(&mut req) {
                        Ok(upgrade) => upgrade
                            .protocols(["duplex.v9", "chat"])
                            .config(Config::default().deflate(Some(DeflateConfig::default()))),
                        Err(rejection) => return Ok::<_, Infallible>(rejection.response()),
                    };
                    let (response, upgrading) = match upgrade.accept(duplex::Accept::default()) {
                        Ok(answer) => answer,
                        Err(rejection) => return Ok(rejection.response()),
                    };
                    tokio::spawn(async move {
                        let mut ws = upgrading.await.expect("hyper hands over the connection");
                        let seen = (
                            ws.subprotocol().map(str::to_owned),
                            ws.deflate_params().cloned(),
                        );
                        deflate_body(&mut ws).await;
                        if let Some(tx) = tx.lock().unwrap().take() {
                            let _ = tx.send(seen);
                        }
                    });
                    Ok::<hyper::Response<Body>, Infallible>(response)
                }
            });
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::spawn(connection);
        }
    });
    negotiated_with(peer, addr, rx, "hyper").await;
    server.abort();
}

#[cfg(feature = "hyper")]
mod hyper_upgrade {
    use super::Peer;

    #[tokio::test]
    #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
    async fn python_client() {
        super::hyper_upgrade(Peer::Python).await;
    }

    #[tokio::test]
    #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
    async fn node_client() {
        super::hyper_upgrade(Peer::Node).await;
    }
}

#[cfg(feature = "axum")]
mod axum_upgrade {
    use super::Peer;

    #[tokio::test]
    #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
    async fn python_client() {
        super::axum_upgrade(Peer::Python).await;
    }

    #[tokio::test]
    #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
    async fn node_client() {
        super::axum_upgrade(Peer::Node).await;
    }
}
