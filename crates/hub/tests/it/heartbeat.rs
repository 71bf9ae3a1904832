//! Server heartbeat: a peer that stops answering pings is closed.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed_with_1011() {
    let mut c = config();
    c.websocket.ping_interval = Duration::from_millis(200);
    c.websocket.pong_timeout = Duration::from_millis(200);
    let s = start_with(c).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(upgrade_request(s.addr, "/ws", "").as_bytes())
        .await
        .unwrap();
    // Read everything the server sends and never answer anything.
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the dead peer was not dropped"),
        }
    }
    let elapsed = started.elapsed();
    let ping = [0x89, 9, b'k', b'e', b'e', b'p'];
    assert!(bytes.windows(ping.len()).any(|w| w == ping), "no ping seen");
    // A Close frame with code 1011 (0x03F3).
    assert!(
        bytes
            .windows(4)
            .any(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xF3),
        "no 1011 close"
    );
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    eventually(|| s.hub.connections() == 0).await;
}

#[tokio::test]
async fn a_client_that_answers_stays_connected() {
    let mut c = config();
    c.websocket.ping_interval = Duration::from_millis(100);
    c.websocket.pong_timeout = Duration::from_millis(100);
    let s = start_with(c).await;
    let mut client = s.client().await;
    // The duplex client answers pings while it waits in recv.
    client.assert_silent(Duration::from_millis(600)).await;
    assert_eq!(
        client.call(serde_json::json!({"type":"ping"})).await["type"],
        "pong"
    );
}
