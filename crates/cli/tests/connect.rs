//! `duplex connect` driven through pipes, against `duplex echo` and small servers started by
//! each test on 127.0.0.1.

use std::{
    future::Future,
    io::{BufRead, BufReader, Lines, Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use duplex::{Accept, CloseCode, Message, Request, ServerConfig, WebSocket};
use tokio::net::{TcpListener, TcpStream};

const DUPLEX: &str = env!("CARGO_BIN_EXE_duplex");

/// A `duplex echo` process, stopped on drop.
struct Echo {
    child: Child,
    port: u16,
}

/// `duplex echo` on a free port, its log (stderr) piped back line by line.
fn spawn_echo(extra: &[&str], env: (&str, Option<&str>)) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut command = Command::new(DUPLEX);
    command
        .args(["echo", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match env {
        (key, Some(value)) => command.env(key, value),
        (key, None) => command.env_remove(key),
    };
    let mut child = command.spawn().unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

impl Echo {
    fn start(extra: &[&str]) -> Self {
        let (child, mut lines) = spawn_echo(extra, ("NO_COLOR", Some("1")));
        let port = loop {
            let line = lines
                .next()
                .expect("duplex echo exited before listening")
                .unwrap();
            if let Some(port) = line.contains("listening").then(|| port_in(&line)).flatten() {
                break port;
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, port }
    }
}

/// A log that goes to a pipe (a file, a collector) is plain text: no ANSI colour codes,
/// though `NO_COLOR` is not set.
#[test]
fn logs_to_a_pipe_carry_no_colour_codes() {
    let (mut child, mut lines) = spawn_echo(&[], ("NO_COLOR", None));
    let line = lines.next().expect("duplex echo printed nothing").unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening"), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "colour codes in a piped log: {line:?}"
    );
}

/// The port of the first `127.0.0.1:PORT` in a log line.
fn port_in(line: &str) -> Option<u16> {
    let rest = &line[line.find("127.0.0.1:")? + "127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a `duplex connect` run left behind.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Run `duplex connect ARGS` with `stdin` piped in, no proxy in the environment; at most 20 s.
fn connect(args: &[&str], stdin: &[u8]) -> Run {
    connect_with_env(args, stdin, &[])
}

fn connect_with_env(args: &[&str], stdin: &[u8], env: &[(&str, String)]) -> Run {
    let mut command = Command::new(DUPLEX);
    command.arg("connect").args(args);
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        command.env_remove(var);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("duplex connect {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: stdout.join().unwrap(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
    }
}

/// Serve on 127.0.0.1:0 from a background thread, running `handle` for each WebSocket
/// accepted with `config`.
fn server<H, F>(config: ServerConfig, handle: H) -> SocketAddr
where
    H: Fn(WebSocket<TcpStream>) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let config = config.clone();
                if let Ok(ws) = duplex::accept_with(tcp, config, |_| Ok(Accept::default())).await {
                    tokio::spawn(handle(ws));
                }
            }
        });
    });
    rx.recv().unwrap()
}

fn url(port: u16) -> String {
    format!("ws://127.0.0.1:{port}/")
}

#[test]
fn pipe_mode_round_trips_lines() {
    let echo = Echo::start(&[]);
    let run = connect(&[&url(echo.port)], b"one\ntwo\r\n\nthree, four\n");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "one\ntwo\n\nthree, four\n");
    assert_eq!(run.stderr, "closed: 1000 (normal closure)\n");
}

#[test]
fn http2_falls_back_to_http1_and_says_so() {
    // A server that speaks HTTP/1.1 only: the HTTP/2 preface fails, a new connection upgrades.
    let addr = server(ServerConfig::default(), |mut ws| async move {
        while let Some(Ok(message)) = ws.recv().await {
            if ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let run = connect(&["--http2", &url(addr.port())], b"over 1.1\n");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "over 1.1\n");
    assert_eq!(
        run.stderr,
        "duplex: the server does not take WebSockets over HTTP/2; using HTTP/1.1\n\
         closed: 1000 (normal closure)\n"
    );
}

/// Run `command` to its end, killed after 30 s.
fn bounded(command: &mut Command) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{command:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `duplex bench echo --http2` refuses a server without RFC 8441 rather than measure
/// HTTP/1.1 in its place (it is tested over HTTP/2 in `peers`, against hypercorn).
#[test]
fn bench_echo_over_http2_refuses_an_http1_server() {
    let addr = server(ServerConfig::default(), |mut ws| async move {
        while let Some(Ok(message)) = ws.recv().await {
            if ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let output = Command::new(DUPLEX)
        .args([
            "bench", "echo", "--http2", "-c", "1", "-d", "1s", "--warmup", "0s", "-q",
        ])
        .args(["-u", &url(addr.port())])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not accept WebSockets over HTTP/2"),
        "{stderr}"
    );
}

#[test]
fn binary_mode_sends_bytes_and_prints_raw_or_hex() {
    let echo = Echo::start(&[]);
    let run = connect(&["--binary", "--hex", &url(echo.port)], &[0, 1, 0xab, 0xff]);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "0001abff\n");
    let run = connect(&["--binary", &url(echo.port)], &[0, 1, 0xab, 0xff]);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout, [0, 1, 0xab, 0xff, b'\n']);
}

/// Answers each message with `re: MESSAGE` 600 ms later, while reading on: a Close that
/// arrives meanwhile ends the connection before the replies go out.
async fn slow_replies(ws: WebSocket<TcpStream>) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            tokio::time::sleep(Duration::from_millis(600)).await;
            if sink
                .send(Message::text(format!("re: {text}")))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    while let Some(Ok(message)) = stream.recv().await {
        let _ = tx.send(message.as_text().unwrap_or("?").to_owned());
    }
}

#[test]
fn oneshot_waits_for_the_replies() {
    let addr = server(ServerConfig::default(), slow_replies);
    let run = connect(&["-1", &url(addr.port())], b"a\nb\n");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "re: a\nre: b\n");
    let run = connect(
        &["--oneshot", "--max-messages", "1", &url(addr.port())],
        b"a\nb\n",
    );
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "re: a\n");
    // --max-messages alone waits for that many as well: the end of stdin does not cut them.
    let run = connect(&["--max-messages", "2", &url(addr.port())], b"a\nb\n");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "re: a\nre: b\n");
    // Without either, the end of stdin closes at once and the slow replies are lost.
    let run = connect(&[&url(addr.port())], b"a\nb\n");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "");
}

#[test]
fn close_codes_are_reported_with_the_exit_status() {
    let addr = server(ServerConfig::default(), |mut ws| async move {
        if let Some(Ok(message)) = ws.recv().await {
            let (code, reason) = match message.as_text() {
                Some("fine") => (CloseCode::NORMAL, "all done"),
                _ => (CloseCode::from(4001), "not welcome"),
            };
            let _ = ws.close(code, reason).await;
        }
    });
    let run = connect(&["-1", &url(addr.port())], b"fine\n");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(
        run.stderr,
        "closed by the server: 1000 (normal closure) \"all done\"\n"
    );
    let run = connect(&["-1", &url(addr.port())], b"other\n");
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(
        run.stderr,
        "duplex: closed by the server: 4001 (private use) \"not welcome\"\n"
    );
}

#[test]
fn connection_failures_are_one_line_and_status_1() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let run = connect(&[&format!("ws://{closed}/")], b"");
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(
        run.stderr,
        format!("duplex: connection refused ({closed})\n")
    );
    assert!(run.stdout.is_empty());

    let run = connect(&["http://127.0.0.1/"], b"");
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("ws:// or wss://"), "{run:?}");
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["-H", "no colon", "ws://127.0.0.1:1/"][..],
        &["--ping-interval", "0", "ws://127.0.0.1:1/"],
        &["--ping-timeout", "1", "ws://127.0.0.1:1/"],
    ] {
        let run = connect(args, b"");
        assert_eq!(run.status.code(), Some(2), "{args:?}: {run:?}");
    }
}

#[test]
fn invalid_utf8_on_stdin_fails_clearly() {
    let echo = Echo::start(&[]);
    let run = connect(&[&url(echo.port)], b"ok\n\xff\xfe\n");
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(run.stdout(), "ok\n");
    assert!(
        run.stderr
            .starts_with("duplex: line 2 of stdin is not valid UTF-8 (use --binary"),
        "{run:?}"
    );
}

#[test]
fn headers_origin_and_subprotocols_reach_the_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = TcpListener::from_std(listener).unwrap();
            let config = ServerConfig::default().subprotocols(["v2", "v1"]);
            let (tcp, _) = listener.accept().await.unwrap();
            let record = |req: &Request| {
                let seen = format!("{:?} {:?}", req.header("x-token"), req.origin());
                tx.lock().unwrap().send(seen).unwrap();
                Ok(Accept::default())
            };
            let mut ws = duplex::accept_with(tcp, config, record).await.unwrap();
            let chosen = ws.subprotocol().unwrap_or("-").to_owned();
            ws.send(Message::text(chosen)).await.unwrap();
            while ws.recv().await.is_some() {}
        });
    });
    let run = connect(
        &[
            "-H",
            "X-Token: abc",
            "-o",
            "https://example.test",
            "-s",
            "v1",
            "--subprotocol",
            "v2",
            "-1",
            "--max-messages",
            "1",
            &url(addr.port()),
        ],
        b"",
    );
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "v2\n");
    assert_eq!(
        rx.recv().unwrap(),
        "Some(\"abc\") Some(\"https://example.test\")"
    );
}

#[test]
fn keepalive_pings_show_pongs_and_time_out() {
    // A server that speaks once after a pause, receiving (so answering pings) meanwhile.
    let addr = server(ServerConfig::default(), |ws| async move {
        let (mut sink, mut stream) = ws.split();
        tokio::spawn(async move { while stream.recv().await.is_some() {} });
        tokio::time::sleep(Duration::from_millis(800)).await;
        let _ = sink.send(Message::text("late")).await;
    });
    let run = connect(
        &[
            "-1",
            "--max-messages",
            "1",
            "--ping-interval",
            "0.2",
            "--show-ping-pong",
            &url(addr.port()),
        ],
        b"",
    );
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "late\n");
    let pongs = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("< pong"))
        .count();
    assert!(pongs >= 1, "{run:?}");

    // A server that never reads, so never answers.
    let addr = server(ServerConfig::default(), |ws| async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(ws);
    });
    let started = Instant::now();
    let run = connect(
        &[
            "-1",
            "--ping-interval",
            "0.2",
            "--ping-timeout",
            "0.3",
            &url(addr.port()),
        ],
        b"",
    );
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(
        run.stderr,
        "duplex: no answer to a keepalive ping in time; connection dropped\n"
    );
    // 0.5 s to notice, plus up to the 5 s close timeout the transport waits for the server's
    // end of stream after a failure.
    assert!(started.elapsed() < Duration::from_secs(8));
}

/// A CA and a certificate for localhost signed by it, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn wss_with_cacert_and_insecure() {
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.path("cert.pem"),
        pki.path("key.pem"),
        pki.path("ca.pem"),
    );
    let echo = Echo::start(&["--tls-cert", arg(&cert), "--tls-key", arg(&key)]);
    let wss = format!("wss://localhost:{}/", echo.port);

    let run = connect(&["--cacert", arg(&ca), &wss], b"secret\n");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "secret\n");

    let run = connect(&[&wss], b"secret\n");
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(
        run.stderr,
        "duplex: TLS: server certificate is signed by an unknown issuer (its CA is not \
         trusted) (--cacert FILE trusts its CA; -k skips verification)\n"
    );

    let run = connect(&["-k", &wss], b"anyway\n");
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "anyway\n");
}

/// A CONNECT proxy on 127.0.0.1 that counts the tunnels it opened.
fn connect_proxy() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let mut client = tokio::io::BufReader::new(tcp);
                    let mut request = String::new();
                    let mut line = String::new();
                    while client.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                        if line == "\r\n" {
                            break;
                        }
                        request.push_str(&line);
                        line.clear();
                    }
                    let target = request.split(' ').nth(1).unwrap_or_default().to_owned();
                    record.lock().unwrap().push(target.clone());
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client.into_inner();
                    if client
                        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .await
                        .is_ok()
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
    });
    (rx.recv().unwrap(), seen)
}

#[test]
fn proxies_from_the_flag_and_the_environment() {
    let echo = Echo::start(&[]);
    let (proxy, seen) = connect_proxy();
    let target = format!("127.0.0.1:{}", echo.port);

    let run = connect(
        &["--proxy", &format!("http://{proxy}"), &url(echo.port)],
        b"via\n",
    );
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "via\n");
    assert_eq!(*seen.lock().unwrap(), [target]);

    let env = [("http_proxy", format!("http://{proxy}"))];
    let run = connect_with_env(&[&url(echo.port)], b"env\n", &env);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(seen.lock().unwrap().len(), 2);

    // --no-proxy, and no_proxy naming the host, both go direct.
    let run = connect_with_env(&["--no-proxy", &url(echo.port)], b"direct\n", &env);
    assert!(run.status.success(), "{run:?}");
    let env = [
        env[0].clone(),
        ("no_proxy", "localhost,127.0.0.0/8".to_owned()),
    ];
    let run = connect_with_env(&[&url(echo.port)], b"direct\n", &env);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(run.stdout(), "direct\n");
    assert_eq!(seen.lock().unwrap().len(), 2);
}

/// `duplex connect --compress` against the Python `websockets` server of the peer tests.
///
/// `#[ignore]`d like the peer tests in `crates/duplex/tests/it/peers.rs`, because they need the
/// Python venv that `cargo xtask test --only peers` creates; that step runs them too.
mod peers {
    use std::{
        env,
        io::{BufRead, BufReader, Read},
        path::PathBuf,
        process::{Command, Stdio},
    };

    use super::connect;

    /// The peer server, stopped on drop; its stdout lines after `listening PORT`.
    struct PythonServer {
        child: std::process::Child,
        port: u16,
        lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    }

    impl PythonServer {
        fn start(deflate: &str) -> Self {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
            let python = env::var_os("DUPLEX_PEERS_PYTHON").map_or_else(
                || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../peers/venv/bin/python"),
                PathBuf::from,
            );
            assert!(
                python.is_file(),
                "these tests need the peer venv at {}: run `cargo xtask test --only peers`, or \
                 set DUPLEX_PEERS_PYTHON to a python that has `websockets`",
                python.display()
            );
            let mut child = Command::new(python)
                .arg(root.join("tests/peers/python/peer.py"))
                .args(["server", "--deflate", deflate])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let first = lines.next().expect("the peer exited").unwrap();
            let port = first
                .strip_prefix("listening ")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
            Self { child, port, lines }
        }

        /// Everything the peer reported after serving its one connection.
        fn report(mut self) -> Vec<String> {
            let lines = self.lines.by_ref().map(Result::unwrap).collect();
            let status = self.child.wait().unwrap();
            let mut stderr = String::new();
            if let Some(mut err) = self.child.stderr.take() {
                let _ = err.read_to_string(&mut stderr);
            }
            assert!(status.success(), "the peer failed ({status}): {lines:?}");
            lines
        }
    }

    impl Drop for PythonServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// hypercorn serving `tests/peers/python/h2_peer.py` (WebSockets over HTTP/2 with prior
    /// knowledge, and over HTTP/1.1), stopped on drop.
    struct Hypercorn {
        child: std::process::Child,
        port: u16,
    }

    impl Hypercorn {
        fn start() -> Self {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
            let python = env::var_os("DUPLEX_PEERS_PYTHON").map_or_else(
                || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../peers/venv/bin/python"),
                PathBuf::from,
            );
            let mut child = Command::new(python)
                .arg(root.join("tests/peers/python/h2_peer.py"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("the peer venv: run `cargo xtask test --only peers`");
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let first = lines.next().expect("the peer exited").unwrap();
            let port = first
                .strip_prefix("listening ")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
            // The rest of its report is not needed; keep the pipe drained.
            std::thread::spawn(move || lines.for_each(drop));
            Self { child, port }
        }
    }

    impl Drop for Hypercorn {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
    fn http2_round_trips_lines_through_hypercorn() {
        let server = Hypercorn::start();
        let url = format!("ws://127.0.0.1:{}/echo", server.port);
        let input = format!("one\n{}\nlast\n", "x".repeat(200_000));
        let run = connect(&["--http2", "-1", &url], input.as_bytes());
        assert!(run.status.success(), "{run:?}");
        assert!(run.stdout() == input, "the echoed lines differ");
        // Over HTTP/2: no line about a fallback.
        assert_eq!(run.stderr, "closed: 1000 (normal closure)\n");
    }

    /// `duplex bench echo --http2` lives next to `connect --http2`: both need hypercorn.
    #[test]
    #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
    fn bench_echo_over_http2_through_hypercorn() {
        let server = Hypercorn::start();
        let url = format!("ws://127.0.0.1:{}/echo", server.port);
        let output = super::bounded(
            Command::new(super::DUPLEX)
                .args(["bench", "echo", "--http2", "--streams", "3", "-c", "5"])
                .args(["-d", "1s", "--warmup", "0s", "--json", "-q", "-u", &url]),
        );
        assert!(output.status.success(), "{output:?}");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["params"]["http2"], true);
        assert_eq!(report["params"]["streams"], 3);
        assert_eq!(
            (report["errors"].as_u64(), report["mismatches"].as_u64()),
            (Some(0), Some(0))
        );
        assert!(report["messages"].as_u64().unwrap_or(0) > 0, "{report}");
    }

    /// Lines of several sizes, one of 1 MiB that compresses well.
    fn input() -> String {
        let big = "compress me \u{e9}\u{20ac} ".repeat(60_000);
        format!("one\n{}\n{big}\nlast\n", "x".repeat(70_000))
    }

    #[test]
    #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
    fn compress_negotiates_deflate_with_python_websockets() {
        let server = PythonServer::start("default");
        let url = format!("ws://127.0.0.1:{}/echo", server.port);
        let input = input();
        // --oneshot with --max-messages: close only after every echo is back.
        let run = connect(
            &["--compress", "-1", "--max-messages", "4", &url],
            input.as_bytes(),
        );
        assert!(run.status.success(), "{run:?}");
        assert!(run.stdout() == input, "the echoed lines differ");
        assert_eq!(run.stderr, "closed: 1000 (normal closure)\n");
        assert_eq!(
            server.report(),
            [
                "extensions permessage-deflate; server_max_window_bits=12; \
                 client_max_window_bits=12",
                "closed 1000 ",
            ]
        );
    }

    #[test]
    #[ignore = "needs the peer runtimes: run `cargo xtask test --only peers`"]
    fn without_compress_nothing_is_negotiated() {
        let server = PythonServer::start("default");
        let url = format!("ws://127.0.0.1:{}/echo", server.port);
        let run = connect(&["-1", "--max-messages", "1", &url], b"plain\n");
        assert!(run.status.success(), "{run:?}");
        assert_eq!(run.stdout(), "plain\n");
        assert_eq!(server.report(), ["extensions none", "closed 1000 "]);
    }
}
