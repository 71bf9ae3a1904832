//! The generator's side of the wire: the opening handshake, pre-built masked frames and an
//! allocation-free frame reader over a raw `TcpStream` (or, with `bench echo --http2`, a raw
//! HTTP/2 stream).
//!
//! The hot path never goes through [`duplex::WebSocket`]: a frame to send is built (and masked)
//! once and written as it is, and received frames are parsed in place in one reused buffer.
//! Reusing a masking key breaks RFC 6455 §5.3 ("unpredictable"), which only matters against
//! intermediaries that could be confused by attacker-chosen bytes; a load generator speaking to
//! its own server on loopback is not that case, and the server still unmasks every byte.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    ops::Range,
    pin::Pin,
    task::{Context, Poll},
};

use anyhow::{bail, Context as _};
use bytes::BufMut;
use duplex::http2::H2Stream;
use duplex_proto::{
    frame::{FrameHeader, OpCode},
    handshake::client::ClientHandshake,
    mask,
};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpSocket, TcpStream},
};

/// Where to connect: a `ws://` URL resolved once.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    host: String,
    path: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        let url = url::Url::parse(url).with_context(|| format!("bad URL {url:?}"))?;
        if url.scheme() != "ws" {
            bail!("only ws:// URLs can be benchmarked (got {})", url.scheme());
        }
        let addr = url
            .socket_addrs(|| Some(80))?
            .into_iter()
            .next()
            .context("the URL's host has no address")?;
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        Ok(Self { addr, host, path })
    }
}

/// What the handshake offers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Offer {
    /// Offer permessage-deflate (RFC 7692) with `client_no_context_takeover`, so that one
    /// pre-compressed frame can be sent again and again.
    pub(crate) deflate: bool,
    pub(crate) subprotocol: Option<String>,
}

/// The transport of one WebSocket: a TCP connection, or a stream of an HTTP/2 connection
/// (RFC 8441) whose frames the `duplex` library's HTTP/2 task reads and writes.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Http2(Box<H2Stream>),
}

impl Stream {
    /// Send RST on close instead of FIN (TCP only).
    pub(crate) fn set_zero_linger(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_zero_linger(),
            Self::Http2(_) => Ok(()),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Http2(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Http2(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Http2(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Http2(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An open connection: the socket, the bytes read past the handshake, and what was agreed.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: Stream,
    pub(crate) rx: RecvBuf,
    /// permessage-deflate was accepted by the server.
    pub(crate) deflate: bool,
}

/// Open a TCP connection (from `local`, when given) and run the opening handshake.
pub(crate) async fn connect(
    target: &Target,
    local: Option<IpAddr>,
    offer: &Offer,
    rx_capacity: usize,
) -> anyhow::Result<Conn> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = local {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("cannot bind to {ip}"))?;
    }
    let mut stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let mut handshake = ClientHandshake::new(target.host.clone(), target.path.clone());
    if offer.deflate {
        handshake = handshake.extensions("permessage-deflate; client_no_context_takeover");
    }
    if let Some(p) = &offer.subprotocol {
        handshake = handshake.subprotocol(p.clone());
    }
    stream.write_all(&handshake.request()?).await?;
    let mut rx = RecvBuf::new(rx_capacity);
    loop {
        if rx.read(&mut stream).await? == 0 {
            bail!("the server closed the connection during the handshake");
        }
        if let Some((response, len)) = handshake.parse_response(rx.filled())? {
            rx.consume(len);
            let deflate = response
                .extensions
                .as_deref()
                .is_some_and(|e| e.contains("permessage-deflate"));
            if deflate && !offer.deflate {
                bail!("the server enabled permessage-deflate without an offer");
            }
            return Ok(Conn {
                stream: Stream::Tcp(stream),
                rx,
                deflate,
            });
        }
    }
}

/// Open one HTTP/2 connection to `url` with prior knowledge (h2c) and `streams` WebSockets
/// on it, each its own stream (RFC 8441). Fails if the server does not accept WebSockets
/// over HTTP/2, rather than measure HTTP/1.1 instead.
pub(crate) async fn connect_h2(
    url: &str,
    offer: &Offer,
    streams: usize,
    rx_capacity: usize,
) -> anyhow::Result<Vec<Conn>> {
    let builder = || {
        let mut builder = duplex::ClientBuilder::new(url).http2(true);
        if offer.deflate {
            builder = builder.deflate(Some(
                duplex::deflate::DeflateConfig::default().client_no_context_takeover(true),
            ));
        }
        if let Some(p) = &offer.subprotocol {
            builder = builder.subprotocol(p.clone());
        }
        builder
    };
    let conn = |ws: duplex::WebSocket<duplex::MaybeTlsStream>| {
        let params = ws.deflate_params();
        // The pre-compressed frame uses a 15-bit window (RFC 7692 §7.1.2.1).
        if params.is_some_and(|p| p.client_max_window_bits < 15) {
            bail!("the server limited the client's window: the compressed frame would not fit");
        }
        let deflate = params.is_some();
        // Nothing was read past the response yet: no frame is lost with the WebSocket.
        match ws.into_inner() {
            duplex::MaybeTlsStream::Http2(stream) => Ok(Conn {
                stream: Stream::Http2(stream),
                rx: RecvBuf::new(rx_capacity),
                deflate,
            }),
            _ => bail!("the server does not accept WebSockets over HTTP/2 (RFC 8441)"),
        }
    };
    let (first, _) = builder().connect().await?;
    let connection = first
        .get_ref()
        .http2()
        .map(|s| s.connection().clone())
        .context("the server does not accept WebSockets over HTTP/2 (RFC 8441)")?;
    let mut conns = vec![conn(first)?];
    for _ in 1..streams {
        let (ws, _) = connection.connect(builder()).await?;
        conns.push(conn(ws)?);
    }
    Ok(conns)
}

/// A read buffer of fixed capacity: read into the free tail, parse frames from the front.
#[derive(Debug)]
pub(crate) struct RecvBuf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl RecvBuf {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            data: vec![0; capacity.max(4096)],
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Read once from `stream`; 0 at end of stream.
    pub(crate) async fn read<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> io::Result<usize> {
        if self.end == self.data.len() {
            if self.start == 0 {
                // A frame larger than the buffer: grow (only ever for unexpected input).
                let len = self.data.len();
                self.data.resize(len * 2, 0);
            } else {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
        }
        let n = stream.read(&mut self.data[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next complete server frame: its header and where its payload lies in
    /// [`filled`](Self::filled)'s buffer (see [`payload`](Self::payload)). The frame is consumed.
    pub(crate) fn next_frame(&mut self) -> anyhow::Result<Option<(FrameHeader, Range<usize>)>> {
        let buf = self.filled();
        let Some((header, header_len)) = FrameHeader::parse(buf)? else {
            return Ok(None);
        };
        if header.mask.is_some() {
            bail!("the server sent a masked frame");
        }
        let total = header_len + usize::try_from(header.payload_len)?;
        if buf.len() < total {
            return Ok(None);
        }
        let payload = self.start + header_len..self.start + total;
        self.consume(total);
        Ok(Some((header, payload)))
    }

    /// The bytes of a payload returned by [`next_frame`](Self::next_frame), valid until the
    /// next read.
    pub(crate) fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.data[range]
    }
}

/// One masked client frame.
pub(crate) fn client_frame(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let key: [u8; 4] = rand::random();
    let header = FrameHeader {
        fin: true,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: Some(key),
        payload_len: payload.len() as u64,
    };
    let mut out = Vec::with_capacity(header.encoded_len() + payload.len());
    header.encode(&mut out);
    let start = out.len();
    out.put_slice(payload);
    mask::apply_mask(&mut out[start..], key, 0);
    out
}

/// A masked Close frame with code 1000.
pub(crate) fn close_frame() -> Vec<u8> {
    client_frame(OpCode::Close, false, &1000u16.to_be_bytes())
}

/// The raw DEFLATE of one message for permessage-deflate without context takeover
/// (RFC 7692 §7.2.1: the trailing `00 00 ff ff` of the sync flush is removed).
pub(crate) fn deflate_message(payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    loop {
        let consumed = usize::try_from(c.total_in())?;
        c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)?;
        if usize::try_from(c.total_in())? == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    Ok(out)
}

/// Inflates the server's compressed messages, keeping the server's context between messages
/// (the generator does not ask for `server_no_context_takeover`).
#[derive(Debug)]
pub(crate) struct Inflater {
    d: Decompress,
    pub(crate) out: Vec<u8>,
}

impl Inflater {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            d: Decompress::new(false),
            out: Vec::with_capacity(max + 64),
        }
    }

    /// Inflate one frame's payload, appending to `out`; `fin` ends the message.
    pub(crate) fn feed(&mut self, data: &[u8], fin: bool) -> anyhow::Result<()> {
        self.inflate(data)?;
        if fin {
            self.inflate(&[0, 0, 0xff, 0xff])?;
        }
        Ok(())
    }

    fn inflate(&mut self, mut data: &[u8]) -> anyhow::Result<()> {
        while !data.is_empty() {
            if self.out.len() == self.out.capacity() {
                self.out.reserve(self.out.capacity().max(1024));
            }
            let before = self.d.total_in();
            self.d
                .decompress_vec(data, &mut self.out, FlushDecompress::Sync)?;
            let used = usize::try_from(self.d.total_in() - before)?;
            data = &data[used..];
            if used == 0 && self.out.len() < self.out.capacity() {
                bail!("inflate made no progress");
            }
        }
        Ok(())
    }
}

/// A payload of `len` bytes: printable text that compresses about as well as chat or JSON
/// traffic (a small alphabet, pseudo-random order), so deflate points are neither trivial nor
/// incompressible.
pub(crate) fn payload(len: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz {}\":,0123456789";
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize]
        })
        .collect()
}
