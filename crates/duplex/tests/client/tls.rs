use duplex::{ClientBuilder, CloseCode, Error, Message, ServerConfig, TlsError};

use crate::support::{echo_server, tls_echo_server, within, Hello, Pki};

async fn round_trip(builder: ClientBuilder) -> duplex::Result<()> {
    let (mut ws, _) = builder.connect().await?;
    ws.send(Message::text("over tls")).await?;
    assert_eq!(
        ws.recv().await.transpose()?,
        Some(Message::text("over tls"))
    );
    ws.close(CloseCode::NORMAL, "").await
}

#[tokio::test]
async fn wss_with_the_ca_file_sends_sni_and_alpn() {
    within(async {
        let pki = Pki::new(&["localhost", "127.0.0.1"], None);
        let (addr, mut hellos) = tls_echo_server(pki.acceptor()).await;
        let url = format!("wss://localhost:{}/", addr.port());
        let (mut ws, response) = ClientBuilder::new(url)
            .ca_file(&pki.ca)
            .connect()
            .await
            .unwrap();
        assert_eq!(response.status, 101);
        let stream = ws.get_ref();
        assert!(stream.is_tls());
        let session = stream.tls_session().unwrap();
        assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
        ws.send(Message::binary(vec![7; 100_000])).await.unwrap();
        assert_eq!(
            ws.recv().await.transpose().unwrap(),
            Some(Message::binary(vec![7; 100_000]))
        );
        ws.close(CloseCode::NORMAL, "bye").await.unwrap();
        assert_eq!(
            hellos.recv().await,
            Some(Hello {
                sni: Some("localhost".into()),
                alpn: Some(b"http/1.1".to_vec()),
                resumed: false,
            })
        );

        // An IP address is verified against the certificate's addresses and sends no SNI.
        let url = format!("wss://127.0.0.1:{}/", addr.port());
        round_trip(ClientBuilder::new(url).ca_file(&pki.ca))
            .await
            .unwrap();
        assert_eq!(hellos.recv().await.map(|h| h.sni), Some(None));
    })
    .await;
}

/// Connections with the same options share one client configuration: the second handshake
/// resumes the first one's session, and the CA file is read again only once it changed.
#[tokio::test]
async fn reconnects_resume_the_session_and_read_the_ca_file_once() {
    within(async {
        let pki = Pki::new(&["localhost"], None);
        let (addr, mut hellos) = tls_echo_server(pki.acceptor()).await;
        let url = format!("wss://localhost:{}/", addr.port());
        let resumed = |hello: Option<Hello>| hello.expect("a TLS handshake").resumed;
        round_trip(ClientBuilder::new(&url).ca_file(&pki.ca))
            .await
            .unwrap();
        assert!(!resumed(hellos.recv().await), "the first handshake is full");
        // Another builder with the same options (and `connect` itself) reuses the config.
        round_trip(ClientBuilder::new(&url).ca_file(&pki.ca))
            .await
            .unwrap();
        assert!(
            resumed(hellos.recv().await),
            "the second handshake was not resumed"
        );

        // The file's bytes change, its modification time and length do not: it is not read
        // again (garbage in it would fail the connect).
        let pem = std::fs::read(&pki.ca).unwrap();
        let modified = std::fs::metadata(&pki.ca).unwrap().modified().unwrap();
        let set_modified = |time| {
            let file = std::fs::File::options().write(true).open(&pki.ca).unwrap();
            file.set_modified(time).unwrap();
        };
        std::fs::write(&pki.ca, vec![b'x'; pem.len()]).unwrap();
        set_modified(modified);
        round_trip(ClientBuilder::new(&url).ca_file(&pki.ca))
            .await
            .unwrap();
        assert!(resumed(hellos.recv().await));

        // Once the modification time changed, the next connect reads it again.
        set_modified(modified + std::time::Duration::from_secs(10));
        match ClientBuilder::new(&url).ca_file(&pki.ca).connect().await {
            Err(Error::Tls(TlsError::File { path, .. })) => assert_eq!(path, pki.ca),
            other => panic!("{other:?}"),
        }
        std::fs::write(&pki.ca, &pem).unwrap();
        round_trip(ClientBuilder::new(&url).ca_file(&pki.ca))
            .await
            .unwrap();
        assert!(
            !resumed(hellos.recv().await),
            "a new configuration starts without sessions"
        );
    })
    .await;
}

#[tokio::test]
async fn unknown_issuer_without_the_ca_file() {
    within(async {
        let pki = Pki::new(&["localhost"], None);
        let (addr, _) = tls_echo_server(pki.acceptor()).await;
        let url = format!("wss://localhost:{}/", addr.port());
        let err = ClientBuilder::new(url).connect().await.unwrap_err();
        assert!(
            matches!(err, Error::Tls(TlsError::UnknownIssuer)),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "TLS: server certificate is signed by an unknown issuer (its CA is not trusted)"
        );
    })
    .await;
}

#[tokio::test]
async fn name_mismatch_names_both_sides() {
    within(async {
        let pki = Pki::new(&["other.example"], None);
        let (addr, _) = tls_echo_server(pki.acceptor()).await;
        let url = format!("wss://127.0.0.1:{}/", addr.port());
        let err = ClientBuilder::new(url)
            .ca_file(&pki.ca)
            .connect()
            .await
            .unwrap_err();
        match &err {
            Error::Tls(TlsError::NameMismatch {
                expected,
                presented,
            }) => {
                assert_eq!(expected, "127.0.0.1");
                assert_eq!(presented, &["other.example"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "TLS: server certificate is not valid for 127.0.0.1 (it is valid for other.example)"
        );
    })
    .await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates() {
    within(async {
        let pki = Pki::new(&["localhost"], Some(((2000, 1, 1), (2001, 1, 1))));
        let (addr, _) = tls_echo_server(pki.acceptor()).await;
        let url = format!("wss://localhost:{}/", addr.port());
        let err = ClientBuilder::new(url)
            .ca_file(&pki.ca)
            .connect()
            .await
            .unwrap_err();
        match &err {
            Error::Tls(TlsError::Expired { ago: Some(ago) }) => {
                assert!(ago.as_secs() > 20 * 365 * 86_400, "{ago:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err
            .to_string()
            .starts_with("TLS: server certificate has expired ("));

        let pki = Pki::new(&["localhost"], Some(((2090, 1, 1), (2100, 1, 1))));
        let (addr, _) = tls_echo_server(pki.acceptor()).await;
        let url = format!("wss://localhost:{}/", addr.port());
        let err = ClientBuilder::new(url)
            .ca_file(&pki.ca)
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Tls(TlsError::NotYetValid { until: Some(_) })),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn insecure_skips_verification() {
    within(async {
        let pki = Pki::new(&["other.example"], Some(((2000, 1, 1), (2001, 1, 1))));
        let (addr, _) = tls_echo_server(pki.acceptor()).await;
        let url = format!("wss://127.0.0.1:{}/", addr.port());
        round_trip(ClientBuilder::new(url).insecure(true))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn wss_to_a_plain_server_says_it_is_not_tls() {
    within(async {
        let addr = echo_server(ServerConfig::default(), |_| Ok(Default::default())).await;
        let url = format!("wss://127.0.0.1:{}/", addr.port());
        let err = ClientBuilder::new(url)
            .insecure(true)
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Tls(TlsError::NotTls)), "{err:?}");
    })
    .await;
}

#[test]
fn unusable_pem_files_are_named() {
    let pki = Pki::new(&["localhost"], None);
    let other = Pki::new(&["localhost"], None);
    // The key of another certificate.
    let err = duplex::tls::server_config_from_pem(&pki.cert, &other.key).unwrap_err();
    assert!(
        matches!(&err, TlsError::File { path, .. } if path == &other.key),
        "{err:?}"
    );
    // A key file where the certificates should be.
    let err = duplex::tls::server_config_from_pem(&pki.key, &pki.key).unwrap_err();
    assert!(
        matches!(&err, TlsError::File { path, reason } if path == &pki.key && reason.contains("PEM")),
        "{err:?}"
    );
    let err = duplex::tls::server_config_from_pem(&pki.cert, &pki.cert).unwrap_err();
    assert!(
        matches!(&err, TlsError::File { path, .. } if path == &pki.cert),
        "{err:?}"
    );
}
