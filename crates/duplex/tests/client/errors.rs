use std::time::Duration;

use duplex::{handshake::HandshakeError, ClientBuilder, Error, Reject, ServerConfig};

use crate::support::{echo_server, raw_server, within};

#[tokio::test]
async fn connection_refused_names_the_address() {
    within(async {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = duplex::connect(&format!("ws://{closed}/"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Connect { addr, source }
                if *addr == closed && source.kind() == std::io::ErrorKind::ConnectionRefused),
            "{err:?}"
        );
        assert_eq!(err.to_string(), format!("connection refused ({closed})"));
    })
    .await;
}

#[tokio::test]
async fn refusals_carry_the_status_and_body() {
    within(async {
        let addr = echo_server(ServerConfig::default(), |_| {
            Err(Reject::new(403, "origin not allowed"))
        })
        .await;
        let err = duplex::connect(&format!("ws://{addr}/")).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 403, body } if body == "origin not allowed"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "server refused the upgrade with HTTP 403: origin not allowed"
        );
    })
    .await;
}

#[tokio::test]
async fn a_wrong_accept_value_is_reported() {
    within(async {
        let addr = raw_server(|_| {
            Some(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n"
                    .into(),
            )
        })
        .await;
        let err = duplex::connect(&format!("ws://{addr}/")).await.unwrap_err();
        assert!(
            matches!(err, Error::Handshake(HandshakeError::BadAccept)),
            "{err:?}"
        );
        assert!(err.to_string().contains("Sec-WebSocket-Accept"));
    })
    .await;
}

#[tokio::test]
async fn silent_servers_time_out() {
    within(async {
        let addr = raw_server(|_| None).await;
        let err = ClientBuilder::new(format!("ws://{addr}/"))
            .handshake_timeout(Duration::from_millis(200))
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Timeout("opening handshake")),
            "{err:?}"
        );

        // A server that never answers the TLS hello either.
        let err = ClientBuilder::new(format!("wss://{addr}/"))
            .handshake_timeout(Duration::from_millis(200))
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout("TLS handshake")), "{err:?}");
        assert_eq!(err.to_string(), "TLS handshake timed out");
    })
    .await;
}

#[tokio::test]
async fn bad_urls_say_why() {
    let err = duplex::connect("http://127.0.0.1/").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid URL: http://127.0.0.1/: scheme must be ws:// or wss://, not http://"
    );
    let err = ClientBuilder::new("ws://127.0.0.1/")
        .proxy("socks5://127.0.0.1:1080")
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("only http://"), "{err}");
}
