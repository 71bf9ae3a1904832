//! TLS on the listener: https and wss with ALPN, handshakes that stall or are garbage (each
//! closed while a well-behaved client is served), and certificate reload without dropping
//! open connections.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex::tls::rustls::{self, pki_types::CertificateDer, RootCertStore};
use duplex::ClientBuilder;
use duplex_hub::Config;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Slack on top of a limit before a test calls the limit missed.
const SLACK: Duration = Duration::from_secs(3);

/// A test CA, and server certificates it signs, each with its key, as PEM.
struct Pki {
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A server certificate: its DER (to recognise it) and PEM files' contents.
struct Leaf {
    der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "duplex hub test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        Self {
            ca_der: ca_cert.der().clone(),
            issuer: Issuer::new(ca, ca_key),
        }
    }

    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, name);
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client configuration that trusts the CA and never resumes a session (a resumed
    /// session would report the certificate of the session it resumes).
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// The certificate and key files a server reads.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(leaf: &Leaf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = Self {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        };
        files.write(&leaf.cert_pem, &leaf.key_pem);
        files
    }

    /// Replaces both files, each by a rename, as certificate tools do.
    fn write(&self, cert: &str, key: &str) {
        for (path, text) in [(&self.cert, cert), (&self.key, key)] {
            let tmp = path.with_extension("new");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }
}

fn tls_config(files: &Files) -> Config {
    let mut c = config();
    c.tls.cert = Some(files.cert.clone());
    c.tls.key = Some(files.key.clone());
    c.tls.reload_interval = Duration::from_millis(100);
    c
}

async fn wss(server: &TestServer, pki: &Pki) -> Client {
    let url = format!("wss://127.0.0.1:{}/ws", server.addr.port());
    Client::connect(ClientBuilder::new(url).tls_config(pki.client_config())).await
}

/// The certificate the server presented to `client`.
fn peer_cert(client: &Client) -> Vec<u8> {
    let session = client.ws.get_ref().tls_session().expect("a TLS connection");
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

/// A wss client from the CA's point of view is served in full: it subscribes, publishes
/// and receives its own publication.
async fn assert_served_over_tls(server: &TestServer, pki: &Pki) {
    let mut c = wss(server, pki).await;
    let channel = format!("served-{}", c.id().replace('-', "_"));
    c.subscribe(&channel).await;
    let (reply, events) = c
        .call_with_events(json!({"type":"publish","channel":channel,"data":{"ok":true}}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    let message = match events.into_iter().find(|e| e["type"] == "message") {
        Some(m) => m,
        None => c.recv_message().await,
    };
    assert_eq!(message["data"], json!({"ok":true}), "{message}");
}

/// Waits (at most `WAIT`) until `series` reaches `at_least`.
async fn wait_metric(server: &TestServer, series: &str, at_least: f64) {
    let until = Instant::now() + WAIT;
    while metric(server, series).await < at_least {
        assert!(Instant::now() < until, "{series} stayed below {at_least}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the server closes (EOF or reset) or `within` passes; returns what arrived and
/// whether the connection was closed.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let until = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut chunk)).await {
            Err(_) => return (got, false),
            Ok(Ok(0) | Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn wss_and_https_are_served_with_alpn_http1() {
    let pki = Pki::new();
    let a = pki.leaf("server A");
    let files = Files::new(&a);
    let s = start_with(tls_config(&files)).await;
    let c = wss(&s, &pki).await;
    let session = c.ws.get_ref().tls_session().unwrap();
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(peer_cert(&c), a.der);
    assert_served_over_tls(&s, &pki).await;

    // Plain HTTP on the TLS port is a failed handshake, not a request.
    let (status, _) = http_from(
        "127.0.0.1",
        s.addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(status, 200);
    wait_metric(
        &s,
        "duplex_tls_handshake_failures_total{reason=\"error\"}",
        1.0,
    )
    .await;
}

/// A client that opens TCP and never finishes its handshake (nothing sent, or half a
/// ClientHello) holds its slot until the header timeout, and no longer; one that sends
/// garbage is closed at once; a well-behaved client is served meanwhile.
#[tokio::test]
async fn stalled_and_garbage_handshakes_are_closed() {
    let pki = Pki::new();
    let files = Files::new(&pki.leaf("server A"));
    let mut c = tls_config(&files);
    c.limits.header_timeout = Duration::from_millis(1000);
    c.limits.max_connections_per_ip = 2;
    let s = start_with(c).await;

    let opened = Instant::now();
    let mut silent = tcp_from("127.0.0.3", s.addr).await;
    let mut half = tcp_from("127.0.0.3", s.addr).await;
    // A TLS record header announcing a 512-byte handshake message, and 5 bytes of it.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .await
        .unwrap();
    // Both hold a slot of 127.0.0.3: a third connection from it is refused at accept.
    let mut third = tcp_from("127.0.0.3", s.addr).await;
    let (got, closed) = read_until_closed(&mut third, SLACK).await;
    assert!(closed && got.is_empty(), "over the per-IP limit: {got:?}");
    assert!(metric(&s, "duplex_limit_hits_total{limit=\"connections_per_ip\"}").await >= 1.0);

    // Garbage: a record that is not a handshake; the server answers with an alert at most.
    let mut garbage = tcp_from("127.0.0.2", s.addr).await;
    garbage.write_all(&[0x42; 64]).await.unwrap();
    let (_, closed) = read_until_closed(&mut garbage, SLACK).await;
    assert!(closed, "a garbage ClientHello left open");

    assert_served_over_tls(&s, &pki).await;
    for (name, tcp) in [("silent", &mut silent), ("half", &mut half)] {
        let (got, closed) = read_until_closed(tcp, Duration::from_secs(1) + SLACK).await;
        assert!(closed, "a {name} handshake outlived the header timeout");
        assert!(got.is_empty(), "{name}: {got:?}");
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed before the header timeout: {:?}",
        opened.elapsed()
    );
    wait_metric(
        &s,
        "duplex_tls_handshake_failures_total{reason=\"timeout\"}",
        2.0,
    )
    .await;
    assert!(metric(&s, "duplex_tls_handshake_failures_total{reason=\"error\"}").await >= 1.0);
    assert!(metric(&s, "duplex_limit_hits_total{limit=\"header_timeout\"}").await >= 2.0);
    // The slots were given back: a handshake from 127.0.0.3 completes again.
    let tcp = tcp_from("127.0.0.3", s.addr).await.into_std().unwrap();
    let config = pki.client_config();
    let handshake = tokio::task::spawn_blocking(move || {
        let mut tcp = tcp;
        tcp.set_nonblocking(false)?;
        tcp.set_read_timeout(Some(WAIT))?;
        let name = "127.0.0.1".try_into().expect("a server name");
        let mut tls = rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)?;
        }
        Ok::<_, std::io::Error>(())
    });
    tokio::time::timeout(WAIT + SLACK, handshake)
        .await
        .expect("handshake timed out")
        .unwrap()
        .expect("127.0.0.3 is served again once its slots are freed");
}

/// A new pair is picked up without dropping open connections; a bad one is refused and the
/// last good one kept.
#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let pki = Pki::new();
    let (a, b) = (pki.leaf("server A"), pki.leaf("server B"));
    let files = Files::new(&a);
    let s = start_with(tls_config(&files)).await;
    let mut old = wss(&s, &pki).await;
    assert_eq!(peer_cert(&old), a.der);
    let channel = "reload";
    old.subscribe(channel).await;

    files.write(&b.cert_pem, &b.key_pem);
    wait_metric(&s, "duplex_tls_reloads_total{result=\"ok\"}", 1.0).await;
    let mut new = wss(&s, &pki).await;
    assert_eq!(
        peer_cert(&new),
        b.der,
        "a new client still sees the old certificate"
    );

    // The connection made with A works: it receives what the new one publishes.
    new.call(json!({"type":"publish","channel":channel,"data":"after reload"}))
        .await;
    let message = old.recv_message().await;
    assert_eq!(message["data"], "after reload", "{message}");
    assert_eq!(peer_cert(&old), a.der);

    // A key that does not match the certificate, then garbage: both refused, B kept.
    files.write(&a.cert_pem, &b.key_pem);
    wait_metric(&s, "duplex_tls_reloads_total{result=\"error\"}", 1.0).await;
    assert_eq!(peer_cert(&wss(&s, &pki).await), b.der);
    files.write("not a certificate\n", "not a key\n");
    wait_metric(&s, "duplex_tls_reloads_total{result=\"error\"}", 2.0).await;
    assert_eq!(peer_cert(&wss(&s, &pki).await), b.der);
    assert_eq!(
        metric(&s, "duplex_tls_reloads_total{result=\"ok\"}").await,
        1.0
    );
    old.send(json!({"type":"ping","id":7})).await;
    let pong = loop {
        let frame = old.recv().await;
        if frame["type"] != "presence_diff" {
            break frame;
        }
    };
    assert_eq!(
        pong,
        json!({"type":"pong","id":7}),
        "the connection made with A"
    );
}

/// Shutdown closes a handshake under way at once; one that starts while draining is
/// completed and its request answered 503, as on a plain listener.
#[tokio::test]
async fn shutdown_closes_unfinished_handshakes_and_answers_later_ones_503() {
    let pki = Pki::new();
    let files = Files::new(&pki.leaf("server A"));
    let mut c = tls_config(&files);
    c.shutdown_timeout = Duration::from_secs(20);
    c.limits.header_timeout = Duration::from_secs(30);
    c.limits.max_connections_per_ip = 2;
    let s = start_with(c).await;
    // A WebSocket that never reads keeps the drain going.
    let hold = wss(&s, &pki).await;
    eventually(|| s.hub.connections() == 1).await;
    let mut pending = [
        tcp_from("127.0.0.4", s.addr).await,
        tcp_from("127.0.0.4", s.addr).await,
    ];
    // Connections are accepted in order: once a third from the address is refused, the
    // two before it hold their slots, their handshakes under way.
    let mut probe = tcp_from("127.0.0.4", s.addr).await;
    let (_, refused) = read_until_closed(&mut probe, WAIT).await;
    assert!(refused, "a third connection from 127.0.0.4 was not refused");

    s.hub.shutdown();
    for tcp in &mut pending {
        let (got, closed) = read_until_closed(tcp, SLACK).await;
        assert!(
            closed && got.is_empty(),
            "a handshake under way outlived the start of shutdown: {got:?}"
        );
    }
    let url = format!("wss://127.0.0.1:{}/ws", s.addr.port());
    let late = ClientBuilder::new(url)
        .tls_config(pki.client_config())
        .connect();
    match tokio::time::timeout(WAIT, late).await {
        Ok(Err(duplex::Error::Refused { status: 503, body })) => {
            assert!(body.contains("shutting down"), "{body}");
        }
        Ok(Err(e)) => panic!("a handshake during the drain: {e}"),
        Ok(Ok(_)) => panic!("a WebSocket accepted during the drain"),
        Err(_) => panic!("a handshake during the drain timed out"),
    }
    drop(hold);
    tokio::time::timeout(Duration::from_secs(15), s.task)
        .await
        .expect("the drain did not end")
        .unwrap()
        .unwrap();
}
