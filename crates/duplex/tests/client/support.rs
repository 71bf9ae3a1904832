//! Test servers: echo (plain or TLS), scripted raw HTTP answers, a CONNECT proxy, and a
//! throwaway PKI made with rcgen.

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use duplex::{tls::TlsAcceptor, Accept, Reject, Request, ServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// Fail the test instead of hanging if `fut` takes more than 20 s.
pub(crate) async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("test took longer than 20 s")
}

/// Serve WebSocket echo on 127.0.0.1 with `config`, letting `hook` decide on each request.
pub(crate) async fn echo_server<F>(config: ServerConfig, hook: F) -> SocketAddr
where
    F: Fn(&Request) -> Result<Accept, Reject> + Send + Sync + 'static,
{
    let hook = Arc::new(hook);
    serve(move |tcp| {
        let (config, hook) = (config.clone(), Arc::clone(&hook));
        async move { echo(tcp, config, move |r| hook(r)).await }
    })
    .await
}

/// Accept TCP connections on 127.0.0.1:0 and run `handle` on each in its own task.
pub(crate) async fn serve<H, F>(handle: H) -> SocketAddr
where
    H: Fn(TcpStream) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(handle(tcp));
        }
    });
    addr
}

/// Accept one WebSocket on `io` and echo until it closes; failures end the connection only.
pub(crate) async fn echo<S, F>(io: S, config: ServerConfig, hook: F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request) -> Result<Accept, Reject>,
{
    let Ok(mut ws) = duplex::accept_with(io, config, hook).await else {
        return;
    };
    while let Some(Ok(message)) = ws.recv().await {
        if ws.send(message).await.is_err() {
            break;
        }
    }
}

/// What a TLS server saw of a client hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) sni: Option<String>,
    pub(crate) alpn: Option<Vec<u8>>,
    /// The handshake resumed an earlier session.
    pub(crate) resumed: bool,
}

/// A `wss://` echo server; each completed TLS handshake reports what the client sent.
pub(crate) async fn tls_echo_server(
    acceptor: TlsAcceptor,
) -> (SocketAddr, mpsc::UnboundedReceiver<Hello>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve(move |tcp| {
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let session = tls.get_ref().1;
            let _ = tx.send(Hello {
                sni: session.server_name().map(str::to_owned),
                alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                resumed: session.handshake_kind()
                    == Some(duplex::tls::rustls::HandshakeKind::Resumed),
            });
            echo(tls, ServerConfig::default(), |_| Ok(Accept::default())).await;
        }
    })
    .await;
    (addr, rx)
}

/// A server that reads one request head and answers with `respond(sec_websocket_key)`, then
/// keeps the connection open until the client leaves (`None`: never answers).
pub(crate) async fn raw_server(respond: fn(&str) -> Option<String>) -> SocketAddr {
    serve(move |mut tcp| async move {
        let Some(head) = read_head(&mut tcp).await else {
            return;
        };
        let key = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        if let Some(response) = respond(&key) {
            let _ = tcp.write_all(response.as_bytes()).await;
        }
        let mut sink = [0; 1024];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await
}

/// Read an HTTP head (up to the blank line), at most 16 KiB.
async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 16 * 1024 || io.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    String::from_utf8(buf).ok()
}

/// An HTTP CONNECT proxy on 127.0.0.1 that records each request head.
pub(crate) struct ConnectProxy {
    pub(crate) addr: SocketAddr,
    pub(crate) requests: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    /// Start one; with `credentials` (`user:password`) it answers 407 to requests without
    /// them.
    pub(crate) async fn start(credentials: Option<&'static str>) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let addr = serve(move |mut client| {
            let seen = Arc::clone(&seen);
            async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                seen.lock().unwrap().push(head.clone());
                let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
                if let Some(credentials) = credentials {
                    let expected = format!("basic {}", STANDARD.encode(credentials));
                    let authorized = head.lines().any(|l| {
                        l.split_once(':').is_some_and(|(name, value)| {
                            name.eq_ignore_ascii_case("proxy-authorization")
                                && value.trim().eq_ignore_ascii_case(&expected)
                        })
                    });
                    if !authorized {
                        let _ = client
                            .write_all(
                                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                                  Proxy-Authenticate: Basic realm=\"test\"\r\n\
                                  Content-Length: 0\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                }
                if !head.starts_with("CONNECT ") {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut upstream) = TcpStream::connect(target.as_str()).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            }
        })
        .await;
        Self { addr, requests }
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// A test CA and a server certificate it signed, written as PEM files.
pub(crate) struct Pki {
    _dir: tempfile::TempDir,
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// Validity of a certificate: (not before, not after) as (year, month, day).
pub(crate) type Validity = ((i32, u8, u8), (i32, u8, u8));

impl Pki {
    /// A CA, and a server certificate for `names` (DNS names or IP addresses) signed by it,
    /// valid during `validity` (default: 2020 to 2100).
    pub(crate) fn new(names: &[&str], validity: Option<Validity>) -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "duplex test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut leaf = CertificateParams::new(names).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "duplex test server");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let ((y0, m0, d0), (y1, m1, d1)) = validity.unwrap_or(((2020, 1, 1), (2100, 1, 1)));
        leaf.not_before = rcgen::date_time_ymd(y0, m0, d0);
        leaf.not_after = rcgen::date_time_ymd(y1, m1, d1);
        let cert = leaf.signed_by(&key, &issuer).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Self {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("cert.pem", cert.pem()),
            key: write("key.pem", key.serialize_pem()),
            _dir: dir,
        }
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        duplex::tls::acceptor_from_pem(&self.cert, &self.key).unwrap()
    }
}
