//! `duplex serve` with TLS from the environment (`DUPLEX_TLS_CERT`, `DUPLEX_TLS_KEY`), and
//! the certificate reloaded on SIGHUP while a connection stays open.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duplex::tls::rustls::{self, pki_types::CertificateDer, RootCertStore};
use duplex::{ClientBuilder, MaybeTlsStream, Message, WebSocket};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

const DUPLEX: &str = env!("CARGO_BIN_EXE_duplex");

/// How long any single wait may take.
const WAIT: Duration = Duration::from_secs(10);

/// A `duplex serve` process, killed on drop; its log lines are collected.
struct Serve {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    fn start(dir: &Path, cert: &Path, key: &Path) -> Self {
        // File changes are not polled: only SIGHUP reloads.
        let config = dir.join("duplex.toml");
        std::fs::write(&config, "[tls]\nreload_interval = \"0s\"\n").unwrap();
        let mut child = Command::new(DUPLEX)
            .args(["serve", "--listen", "127.0.0.1:0", "--demo-ticker", "false"])
            .arg("--config")
            .arg(&config)
            .env("DUPLEX_TLS_CERT", cert)
            .env("DUPLEX_TLS_KEY", key)
            .env("DUPLEX_LOG_LEVEL", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (log, port_tx) = (log.clone(), port_tx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(at) = line.find("https://127.0.0.1:") {
                        let rest = &line[at + "https://127.0.0.1:".len()..];
                        let digits: String =
                            rest.chars().take_while(char::is_ascii_digit).collect();
                        if let Ok(port) = digits.parse::<u16>() {
                            let _ = port_tx.send(port);
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let port = port_rx.recv_timeout(WAIT);
        let mut serve = Self {
            child,
            port: 0,
            log,
        };
        serve.port = port.unwrap_or_else(|_| panic!("no https listening line: {:?}", serve.log()));
        serve
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until a log line contains `text`, `n` times.
    fn wait_log(&self, text: &str, n: usize) {
        let until = Instant::now() + WAIT;
        while self.log().iter().filter(|l| l.contains(text)).count() < n {
            assert!(Instant::now() < until, "no {text:?} in {:#?}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Pki {
    ca: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "duplex cli test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = ca.self_signed(&ca_key).unwrap();
        Self {
            ca: cert.der().clone(),
            issuer: Issuer::new(ca, ca_key),
        }
    }

    /// A server certificate for 127.0.0.1: (DER, certificate PEM, key PEM).
    fn leaf(&self, name: &str) -> (Vec<u8>, String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.der().to_vec(), cert.pem(), key.serialize_pem())
    }

    /// Trusts the CA; no session resumption, so each connection shows the current
    /// certificate.
    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

fn write(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A wss connection to the hub, past its `welcome`.
async fn connect(port: u16, pki: &Pki) -> WebSocket<MaybeTlsStream> {
    let url = format!("wss://127.0.0.1:{port}/ws");
    let connect = ClientBuilder::new(url).tls_config(pki.client()).connect();
    let (mut ws, _) = tokio::time::timeout(WAIT, connect)
        .await
        .expect("connect timed out")
        .expect("connect");
    let welcome = recv(&mut ws).await;
    assert!(welcome.contains("\"welcome\""), "{welcome}");
    ws
}

async fn recv(ws: &mut WebSocket<MaybeTlsStream>) -> String {
    let message = tokio::time::timeout(WAIT, ws.recv())
        .await
        .expect("recv timed out")
        .expect("closed")
        .expect("failed");
    message.as_text().expect("text").to_owned()
}

fn peer_cert(ws: &WebSocket<MaybeTlsStream>) -> Vec<u8> {
    let session = ws.get_ref().tls_session().expect("TLS");
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let pki = Pki::new();
    let (a, a_cert, a_key) = pki.leaf("server A");
    let (b, b_cert, b_key) = pki.leaf("server B");
    write(&cert, &a_cert);
    write(&key, &a_key);
    let serve = Serve::start(dir.path(), &cert, &key);

    let mut old = connect(serve.port, &pki).await;
    assert_eq!(peer_cert(&old), a);
    write(&cert, &b_cert);
    write(&key, &b_key);
    // With polling off the new files wait for the signal.
    assert_eq!(peer_cert(&connect(serve.port, &pki).await), a);
    serve.hangup();
    serve.wait_log("TLS certificate reloaded", 1);
    assert_eq!(peer_cert(&connect(serve.port, &pki).await), b);

    // A broken pair is refused with its reason, and B kept.
    write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
    );
    serve.hangup();
    serve.wait_log("cannot reload the TLS certificate", 1);
    assert!(
        serve.log().iter().any(|l| l.contains("key.pem")),
        "the error names the file: {:#?}",
        serve.log()
    );
    assert_eq!(peer_cert(&connect(serve.port, &pki).await), b);

    // The connection made before both reloads still works.
    old.send(Message::text(r#"{"type":"ping","id":1}"#))
        .await
        .unwrap();
    assert_eq!(recv(&mut old).await, r#"{"type":"pong","id":1}"#);
}
