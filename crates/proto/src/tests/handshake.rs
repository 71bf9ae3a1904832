//! RFC 6455 §4: the opening handshake end to end, from the client's request to the first
//! frames after the response.

use super::pair::{events, take_output};
use crate::{
    handshake::{
        accept_key,
        client::ClientHandshake,
        server::{parse_request, Accept},
        HandshakeError, MAX_HEAD_SIZE,
    },
    Config, Connection, Event, Message, Role,
};

#[test]
fn request_response_then_frames_in_the_same_reads() {
    let hs = ClientHandshake::new("example.com:9001", "/chat?room=7")
        .subprotocol("v2.chat")
        .subprotocol("chat")
        .header("Origin", "https://example.com");
    // The client sends its first message right behind the request, in the same write.
    let mut client = Connection::new(Role::Client, Config::default());
    client.send(Message::text("early")).unwrap();
    let mut wire = hs.request().unwrap();
    wire.extend(take_output(&mut client));

    let (request, used) = parse_request(&wire, MAX_HEAD_SIZE).unwrap().unwrap();
    assert_eq!(request.path(), "/chat");
    assert_eq!(request.query(), Some("room=7"));
    assert_eq!(request.origin(), Some("https://example.com"));
    assert_eq!(
        request.subprotocols().collect::<Vec<_>>(),
        ["v2.chat", "chat"]
    );
    let mut server = Connection::new(Role::Server, Config::default());
    server.receive_bytes(&wire[used..]);
    assert_eq!(
        events(&mut server),
        [Event::Message(Message::text("early"))]
    );

    // And the server's first frame rides behind its 101.
    let mut answer = Accept::default()
        .subprotocol("chat")
        .response(&request)
        .unwrap();
    server.send(Message::text("welcome")).unwrap();
    answer.extend(take_output(&mut server));
    let (response, used) = hs.parse_response(&answer).unwrap().unwrap();
    assert_eq!(response.subprotocol.as_deref(), Some("chat"));
    assert_eq!(
        response.headers["sec-websocket-accept"],
        accept_key(hs.key().as_bytes())
    );
    client.receive_bytes(&answer[used..]);
    assert_eq!(
        events(&mut client),
        [Event::Message(Message::text("welcome"))]
    );
}

#[test]
fn the_client_rejects_a_subprotocol_it_cannot_read() {
    // A value that is not visible ASCII cannot name an offered subprotocol (RFC 6455 §4.1:
    // the client fails the connection), so it must not pass as "no subprotocol".
    let hs = ClientHandshake::new("h", "/").subprotocol("chat");
    for header in [
        &b"Sec-WebSocket-Protocol: chat\xff"[..],
        b"Sec-WebSocket-Extensions: permessage-deflate\xff",
    ] {
        let mut raw = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n",
            accept_key(hs.key().as_bytes())
        )
        .into_bytes();
        raw.extend_from_slice(header);
        raw.extend_from_slice(b"\r\n\r\n");
        let result = hs.parse_response(&raw);
        assert!(
            matches!(
                result,
                Err(HandshakeError::UnofferedSubprotocol(_) | HandshakeError::UnofferedExtension(_))
            ),
            "{}: {result:?}",
            String::from_utf8_lossy(header)
        );
    }
}
