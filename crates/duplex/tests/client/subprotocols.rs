use duplex::{handshake::HandshakeError, ClientBuilder, Error, Message, ServerConfig};
use tokio::net::TcpListener;

use crate::support::{raw_server, within};

/// A server that accepts with `config` and sends the subprotocol it agreed to as its first
/// message (`-` for none).
async fn reporting_server(config: ServerConfig) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let config = config.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = duplex::accept_with(tcp, config, |_| Ok(Default::default())).await
                else {
                    return;
                };
                let chosen = ws.subprotocol().unwrap_or("-").to_owned();
                let _ = ws.send(Message::text(chosen)).await;
                while let Some(Ok(_)) = ws.recv().await {}
            });
        }
    });
    format!("ws://{addr}/")
}

async fn negotiate(url: &str, offers: &[&str]) -> duplex::Result<(Option<String>, String)> {
    let mut builder = ClientBuilder::new(url);
    for offer in offers {
        builder = builder.subprotocol(*offer);
    }
    let (mut ws, response) = builder.connect().await?;
    assert_eq!(response.subprotocol.as_deref(), ws.subprotocol());
    let server_saw = ws.recv().await.transpose()?.unwrap();
    let server_saw = server_saw.as_text().unwrap().to_owned();
    ws.close(duplex::CloseCode::NORMAL, "").await?;
    Ok((ws.subprotocol().map(str::to_owned), server_saw))
}

#[tokio::test]
async fn server_preference_order_decides() {
    within(async {
        let url = reporting_server(ServerConfig::default().subprotocols(["v3", "v2", "v1"])).await;
        let chosen = |p: &str| (Some(p.to_owned()), p.to_owned());
        // The client's order does not matter: the server's does.
        assert_eq!(negotiate(&url, &["v1", "v2"]).await.unwrap(), chosen("v2"));
        assert_eq!(negotiate(&url, &["v1", "v3"]).await.unwrap(), chosen("v3"));
        assert_eq!(negotiate(&url, &["x", "v1"]).await.unwrap(), chosen("v1"));
        // Nothing in common, and not required: no subprotocol.
        let none = (None, "-".to_owned());
        assert_eq!(negotiate(&url, &["x"]).await.unwrap(), none);
        assert_eq!(negotiate(&url, &[]).await.unwrap(), none);
    })
    .await;
}

#[tokio::test]
async fn required_subprotocol_missing_is_400() {
    within(async {
        let config = ServerConfig::default()
            .subprotocols(["chat.v2", "chat.v1"])
            .require_subprotocol(true);
        let url = reporting_server(config).await;
        for offers in [&["other"][..], &[]] {
            match negotiate(&url, offers).await {
                Err(Error::Refused { status: 400, body }) => {
                    assert!(body.contains("chat.v2, chat.v1"), "{body}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            negotiate(&url, &["chat.v1"]).await.unwrap().0.as_deref(),
            Some("chat.v1")
        );
    })
    .await;
}

#[tokio::test]
async fn a_subprotocol_that_was_not_offered_fails_the_client() {
    within(async {
        let addr = raw_server(|key| {
            Some(format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\
                 Sec-WebSocket-Protocol: evil\r\n\r\n",
                duplex::handshake::accept_key(key.as_bytes())
            ))
        })
        .await;
        let url = format!("ws://{addr}/");
        for offers in [&["good"][..], &[]] {
            let err = negotiate(&url, offers).await.unwrap_err();
            assert!(
                matches!(
                    &err,
                    Error::Handshake(HandshakeError::UnofferedSubprotocol(p)) if p == "evil"
                ),
                "{err:?}"
            );
        }
    })
    .await;
}
