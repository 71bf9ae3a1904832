//! Graceful shutdown.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn every_client_gets_1001_and_the_server_stops_within_the_deadline() {
    let mut config = config();
    config.shutdown_timeout = Duration::from_secs(5);
    let s = start_with(config).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = s.client().await;
        c.subscribe("lobby").await;
        clients.push(c);
    }
    let started = std::time::Instant::now();
    s.hub.shutdown();
    for c in &mut clients {
        assert_eq!(c.closed().await, Some(duplex::CloseCode::AWAY));
    }
    tokio::time::timeout(Duration::from_secs(6), s.task)
        .await
        .expect("server stopped in time")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(s.hub.connections(), 0);
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
}

/// WebSockets over HTTP/2 are closed with 1001 too: their connection, with no HTTP request
/// in flight, is not dropped before its streams have closed.
#[tokio::test]
async fn websockets_over_http2_get_1001_at_shutdown() {
    let mut config = config();
    config.shutdown_timeout = Duration::from_secs(5);
    let s = start_with(config).await;
    let connection = crate::h2_client::connection(s.addr).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (_, ws) =
            crate::h2_client::websocket(&connection, s.addr, "/ws", Some("duplex.v1"), None).await;
        let mut c = Client::welcomed(ws).await;
        c.subscribe("lobby").await;
        clients.push(c);
    }
    s.hub.shutdown();
    for c in &mut clients {
        assert_eq!(c.closed().await, Some(duplex::CloseCode::AWAY));
    }
    tokio::time::timeout(Duration::from_secs(6), s.task)
        .await
        .expect("server stopped in time")
        .unwrap()
        .unwrap();
    assert_eq!(s.hub.connections(), 0);
}
