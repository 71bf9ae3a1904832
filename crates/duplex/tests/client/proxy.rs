use duplex::{ClientBuilder, CloseCode, Error, Message, ServerConfig};

use crate::support::{echo_server, tls_echo_server, within, ConnectProxy, Pki};

async fn echo_once(builder: ClientBuilder) -> duplex::Result<()> {
    let (mut ws, _) = builder.connect().await?;
    ws.send(Message::text("through the tunnel")).await?;
    assert_eq!(
        ws.recv().await.transpose()?,
        Some(Message::text("through the tunnel"))
    );
    ws.close(CloseCode::NORMAL, "").await
}

#[tokio::test]
async fn ws_through_a_connect_proxy() {
    within(async {
        let proxy = ConnectProxy::start(None).await;
        let server = echo_server(ServerConfig::default(), |_| Ok(Default::default())).await;
        let url = format!("ws://{server}/chat");
        echo_once(ClientBuilder::new(url).proxy(format!("http://{}", proxy.addr)))
            .await
            .unwrap();
        let requests = proxy.requests();
        assert_eq!(requests.len(), 1);
        assert!(
            requests[0].starts_with(&format!("CONNECT {server} HTTP/1.1\r\nHost: {server}\r\n")),
            "{requests:?}"
        );
        assert!(!requests[0].contains("Proxy-Authorization"));
    })
    .await;
}

#[tokio::test]
async fn wss_through_a_proxy_with_basic_auth() {
    within(async {
        let proxy = ConnectProxy::start(Some("user:pa ss")).await;
        let pki = Pki::new(&["localhost"], None);
        let (server, mut hellos) = tls_echo_server(pki.acceptor()).await;
        let url = format!("wss://localhost:{}/", server.port());
        // The password is percent-encoded in the URL and decoded for the header.
        let builder = ClientBuilder::new(url)
            .ca_file(&pki.ca)
            .proxy(format!("http://user:pa%20ss@{}", proxy.addr));
        echo_once(builder).await.unwrap();
        // The proxy was asked for the name, not an address, and TLS ran end to end.
        let requests = proxy.requests();
        assert!(
            requests[0].starts_with(&format!("CONNECT localhost:{} ", server.port())),
            "{requests:?}"
        );
        let sni = hellos.recv().await.unwrap().sni;
        assert_eq!(sni.as_deref(), Some("localhost"));
    })
    .await;
}

#[tokio::test]
async fn proxy_refusal_reports_its_status() {
    within(async {
        let proxy = ConnectProxy::start(Some("user:secret")).await;
        let server = echo_server(ServerConfig::default(), |_| Ok(Default::default())).await;
        let url = format!("ws://{server}/");
        for proxy_url in [
            format!("http://{}", proxy.addr),
            format!("http://user:wrong@{}", proxy.addr),
        ] {
            let err = ClientBuilder::new(&url)
                .proxy(proxy_url)
                .connect()
                .await
                .unwrap_err();
            match &err {
                Error::Proxy {
                    proxy: p,
                    status: Some(407),
                    message,
                } => {
                    assert_eq!(p, &proxy.addr.to_string());
                    assert!(
                        message.contains("407 Proxy Authentication Required"),
                        "{message}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn unreachable_proxy_is_named() {
    within(async {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = ClientBuilder::new("ws://127.0.0.1:1/")
            .proxy(closed.to_string())
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(&err, Error::Proxy { status: None, .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("proxy {closed}: connection refused ({closed})")
        );
    })
    .await;
}
