//! `duplex autobahn-h2-bridge` (hidden): lets an HTTP/1.1-only WebSocket client test a server
//! over HTTP/2 (RFC 8441).
//!
//! Each accepted TCP connection sends one HTTP/1.1 upgrade request; the bridge opens one
//! extended CONNECT stream (`:protocol websocket`) for it on a single h2c connection to the
//! upstream server, forwarding the request's `Sec-WebSocket-Version`, `-Extensions` and
//! `-Protocol`. A `200` becomes a `101` with the `Sec-WebSocket-Accept` the bridge computes
//! itself (RFC 6455 §4.2.2; RFC 8441 §5 has no key over HTTP/2) and the upstream's
//! extension and subprotocol answers; anything else is passed on with its status. From then
//! on bytes are relayed both ways as they are, frames unparsed: every frame is written by
//! one end and read by the other. TCP FIN is END_STREAM and END_STREAM is FIN (RFC 8441
//! §5); a reset on one side resets the other.
//!
//! The bridge speaks HTTP/2 with the `h2` crate directly, not with duplex's client, so that
//! it shares no WebSocket code with the server under test. Flow control is honoured both
//! ways: data goes upstream only as the stream's send window allows, and the window is given
//! back only once the bytes are written to the TCP peer, so a slow reader slows the server.
//!
//! Every wait is bounded: the request head, the upstream's answer, and the other direction
//! once one has ended.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use bytes::{Bytes, BytesMut};
use h2::{client::SendRequest, RecvStream, SendStream};
use sha1::{Digest as _, Sha1};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
};

/// Options of `duplex autobahn-h2-bridge`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to accept HTTP/1.1 WebSocket clients on.
    #[arg(long, default_value = "127.0.0.1:9002")]
    listen: SocketAddr,
    /// The HTTP/2 (h2c, prior knowledge) WebSocket server to relay to.
    #[arg(long, default_value = "127.0.0.1:9001")]
    upstream: SocketAddr,
    /// How long a request head, and the upstream's answer to it, may take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    handshake_timeout: Duration,
    /// How long one direction may stay open after the other has ended.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    linger: Duration,
}

/// Largest HTTP/1.1 request head read from a client.
const MAX_HEAD: usize = 16 << 10;
/// The most bytes read from a client for one DATA frame (the default SETTINGS_MAX_FRAME_SIZE).
const CHUNK: usize = 16 << 10;
/// RFC 6455 §1.3: the GUID appended to the key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The request headers forwarded upstream (RFC 8441 §5: the same as over HTTP/1.1, without
/// `Sec-WebSocket-Key` and the upgrade headers).
const FORWARDED: &[&str] = &[
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "origin",
];

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let upstream = TcpStream::connect(args.upstream)
        .await
        .with_context(|| format!("cannot connect to {}", args.upstream))?;
    upstream.set_nodelay(true)?;
    let mut builder = h2::client::Builder::new();
    // Windows as large as the server's own defaults, so that a 16 MiB message flows without
    // a round trip per 64 KiB.
    builder
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    let (send, connection) =
        tokio::time::timeout(args.handshake_timeout, builder.handshake(upstream))
            .await
            .context("HTTP/2 handshake timed out")?
            .context("HTTP/2 handshake failed")?;
    let mut connection = std::pin::pin!(connection);
    // RFC 8441 §3: no extended CONNECT before the server's SETTINGS_ENABLE_CONNECT_PROTOCOL.
    // The SETTINGS arrive as the connection is driven; listen only once they have.
    let settled = async {
        while !send.is_extended_connect_protocol_enabled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        ended = &mut connection => {
            ended.context("the HTTP/2 connection failed")?;
            bail!("the upstream closed the HTTP/2 connection");
        }
        settled = tokio::time::timeout(args.handshake_timeout, settled) => settled
            .context("the upstream did not enable extended CONNECT (RFC 8441) in time")?,
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        upstream = %args.upstream,
        "HTTP/2 bridge listening"
    );
    loop {
        tokio::select! {
            // The one HTTP/2 connection carries every stream: when it ends, so does the bridge
            // (the run then fails visibly instead of relaying to nothing).
            ended = &mut connection => {
                ended.context("the HTTP/2 connection failed")?;
                bail!("the upstream closed the HTTP/2 connection");
            }
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let send = send.clone();
                let (timeout, linger) = (args.handshake_timeout, args.linger);
                let authority = args.upstream.to_string();
                tokio::spawn(async move {
                    if let Err(e) = bridge(tcp, send, &authority, timeout, linger).await {
                        tracing::debug!(%peer, error = %e, "bridged connection ended");
                    }
                });
            }
        }
    }
}

/// One client connection: its handshake, then the relay.
async fn bridge(
    tcp: TcpStream,
    send: SendRequest<Bytes>,
    authority: &str,
    timeout: Duration,
    linger: Duration,
) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let (mut reader, mut writer) = tcp.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let head = tokio::time::timeout(timeout, read_head(&mut reader, &mut buf))
        .await
        .context("request head timed out")??;
    let Some(key) = head.key.clone() else {
        writer
            .write_all(&refusal(400, "not a WebSocket upgrade\n"))
            .await?;
        return Ok(());
    };
    let opened = tokio::time::timeout(timeout, open(send, authority, &head)).await;
    let (response, upstream) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => {
            writer.write_all(&refusal(502, &format!("{e:#}\n"))).await?;
            return Err(e);
        }
        Err(_) => {
            writer
                .write_all(&refusal(504, "upstream timed out\n"))
                .await?;
            bail!("the upstream did not answer in time");
        }
    };
    let (parts, mut from_upstream) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        // The refusal's body, bounded, so that the client sees the server's reason.
        let mut body = Vec::new();
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout(timeout, from_upstream.data()).await {
            let _ = from_upstream.flow_control().release_capacity(chunk.len());
            let room = MAX_HEAD.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_HEAD {
                break;
            }
        }
        let text = String::from_utf8_lossy(&body);
        writer
            .write_all(&refusal(parts.status.as_u16(), &text))
            .await?;
        return Ok(());
    }
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {}\r\n",
        accept_key(&key)
    );
    for name in ["sec-websocket-extensions", "sec-websocket-protocol"] {
        for value in parts.headers.get_all(name) {
            if let Ok(value) = value.to_str() {
                answer.push_str(&format!("{name}: {value}\r\n"));
            }
        }
    }
    answer.push_str("\r\n");
    writer.write_all(answer.as_bytes()).await?;
    relay(
        reader,
        writer,
        buf.freeze(),
        upstream,
        from_upstream,
        linger,
    )
    .await
}

/// The parts of an HTTP/1.1 upgrade request the bridge needs.
struct Head {
    path: String,
    key: Option<String>,
    /// The forwarded headers, in order.
    headers: Vec<(&'static str, String)>,
}

/// Reads a request head into `buf`; what follows it stays in `buf` (a client may send its
/// first frame with the request).
async fn read_head(reader: &mut OwnedReadHalf, buf: &mut BytesMut) -> anyhow::Result<Head> {
    loop {
        if reader.read_buf(buf).await? == 0 {
            bail!("closed before the end of the request head");
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = request.parse(buf)? else {
            if buf.len() > MAX_HEAD {
                bail!("request head over {MAX_HEAD} bytes");
            }
            continue;
        };
        let mut head = Head {
            path: request.path.unwrap_or("/").to_owned(),
            key: None,
            headers: Vec::new(),
        };
        let upgrade = request.method == Some("GET")
            && request.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("upgrade")
                    && String::from_utf8_lossy(h.value).eq_ignore_ascii_case("websocket")
            });
        for header in request.headers.iter() {
            let value = String::from_utf8_lossy(header.value).into_owned();
            if header.name.eq_ignore_ascii_case("sec-websocket-key") {
                head.key = upgrade.then_some(value);
            } else if let Some(name) = FORWARDED
                .iter()
                .find(|n| header.name.eq_ignore_ascii_case(n))
            {
                head.headers.push((name, value));
            }
        }
        let _ = buf.split_to(len);
        return Ok(head);
    }
}

/// Opens the extended CONNECT stream for `head` and waits for its response.
async fn open(
    send: SendRequest<Bytes>,
    authority: &str,
    head: &Head,
) -> anyhow::Result<(http::Response<RecvStream>, SendStream<Bytes>)> {
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{authority}{}", head.path))
        .extension(h2::ext::Protocol::from_static("websocket"));
    for (name, value) in &head.headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(()).context("building the CONNECT request")?;
    let mut send = send.ready().await.context("the HTTP/2 connection")?;
    let (response, stream) = send
        .send_request(request, false)
        .context("sending the CONNECT request")?;
    let response = response.await.context("the CONNECT response")?;
    Ok((response, stream))
}

/// Relays bytes both ways until both directions have ended (or one fails, which resets the
/// other). `early` is what the client sent after its request head.
async fn relay(
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    early: Bytes,
    upstream: SendStream<Bytes>,
    downstream: RecvStream,
    linger: Duration,
) -> anyhow::Result<()> {
    let up = std::pin::pin!(to_upstream(reader, early, upstream));
    let down = std::pin::pin!(to_client(downstream, writer));
    // The first direction to end decides: an error ends both at once (dropping the stream's
    // handles resets it, dropping the socket closes it); a clean end gives the other
    // direction `linger` to finish.
    let (first, rest) = match futures_util::future::select(up, down).await {
        futures_util::future::Either::Left((result, down)) => {
            (result, futures_util::future::Either::Left(down))
        }
        futures_util::future::Either::Right((result, up)) => {
            (result, futures_util::future::Either::Right(up))
        }
    };
    first?;
    tokio::time::timeout(linger, rest)
        .await
        .context("the other direction did not end in time")?
}

/// Client → server: each read becomes DATA as the send window allows; EOF is END_STREAM.
async fn to_upstream(
    mut reader: OwnedReadHalf,
    early: Bytes,
    mut stream: SendStream<Bytes>,
) -> anyhow::Result<()> {
    send_all(&mut stream, early).await?;
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        buf.reserve(CHUNK);
        match reader.read_buf(&mut buf).await {
            Ok(0) => {
                // The server may have closed the stream already (its END_STREAM, then the
                // stream's end): then there is nothing left to end.
                let _ = stream.send_data(Bytes::new(), true);
                return Ok(());
            }
            Ok(_) => send_all(&mut stream, buf.split().freeze()).await?,
            Err(e) => {
                stream.send_reset(h2::Reason::CANCEL);
                return Err(e.into());
            }
        }
    }
}

/// Sends `data` on `stream`, no more at a time than its send window allows.
async fn send_all(stream: &mut SendStream<Bytes>, mut data: Bytes) -> anyhow::Result<()> {
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| stream.poll_capacity(cx))
            .await
            .context("the stream closed")??;
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        stream.send_data(chunk, false)?;
    }
    Ok(())
}

/// Server → client: DATA is written to the client, then its window is given back;
/// END_STREAM is FIN, a reset is a reset.
async fn to_client(mut stream: RecvStream, mut writer: OwnedWriteHalf) -> anyhow::Result<()> {
    loop {
        match stream.data().await {
            Some(Ok(data)) => {
                writer.write_all(&data).await?;
                stream.flow_control().release_capacity(data.len())?;
            }
            Some(Err(e)) => {
                // Abortive close: the client sees a reset, as it would from a server that
                // dropped its connection.
                let _ = writer.as_ref().set_zero_linger();
                return Err(e.into());
            }
            None => {
                writer.shutdown().await?;
                return Ok(());
            }
        }
    }
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

/// A plain HTTP/1.1 answer that closes the connection.
fn refusal(status: u16, body: &str) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_refusal_has_its_length() {
        let text = String::from_utf8(refusal(400, "no\n")).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("content-length: 3\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nno\n"), "{text}");
    }
}
