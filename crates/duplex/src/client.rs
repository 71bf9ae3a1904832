//! Opening client connections.

use std::time::Duration;

use bytes::BytesMut;
use duplex_proto::{
    handshake::client::{ClientHandshake, Response},
    Config, HandshakeError, Role,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    error::{Error, Result},
    stream::MaybeTlsStream,
    WebSocket,
};

/// Connect to a `ws://` URL with the default settings.
///
/// ```no_run
/// # async fn run() -> duplex::Result<()> {
/// use duplex::Message;
///
/// let (mut ws, _response) = duplex::connect("ws://127.0.0.1:9001/").await?;
/// ws.send(Message::text("hello")).await?;
/// if let Some(reply) = ws.recv().await {
///     println!("{:?}", reply?);
/// }
/// ws.close(duplex::CloseCode::NORMAL, "done").await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// See [`ClientBuilder::connect`].
pub async fn connect(url: &str) -> Result<(WebSocket<MaybeTlsStream>, Response)> {
    ClientBuilder::new(url).connect().await
}

/// Options for a client connection.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    headers: Vec<(String, String)>,
    subprotocols: Vec<String>,
    config: Config,
    connect_timeout: Duration,
    handshake_timeout: Duration,
}

impl ClientBuilder {
    /// Options for connecting to `url` (`ws://host[:port]/path?query`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            headers: Vec::new(),
            subprotocols: Vec::new(),
            config: Config::default(),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// Add a request header (e.g. `Authorization`, `Cookie`, `Origin`).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offer a subprotocol, in order of preference.
    #[must_use]
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocols.push(protocol.into());
        self
    }

    /// Settings of the connection once open.
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Time allowed to establish TCP. Default 10 s.
    #[must_use]
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for the opening handshake. Default 10 s.
    #[must_use]
    pub const fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Connect and run the opening handshake.
    ///
    /// # Errors
    /// [`Error::Url`] for a bad URL, [`Error::Io`] if TCP fails, [`Error::Timeout`],
    /// [`Error::Refused`] when the server answers with another status than 101, and
    /// [`Error::Handshake`] for an invalid 101 response.
    pub async fn connect(self) -> Result<(WebSocket<MaybeTlsStream>, Response)> {
        let target = Target::parse(&self.url)?;
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| Error::Timeout("TCP connect"))?
        .map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("connecting to {}:{}: {e}", target.host, target.port),
            ))
        })?;
        tcp.set_nodelay(true)?;
        let io = MaybeTlsStream::Plain(tcp);
        let handshake_timeout = self.handshake_timeout;
        tokio::time::timeout(handshake_timeout, self.handshake(io, &target))
            .await
            .map_err(|_| Error::Timeout("opening handshake"))?
    }

    /// Run the opening handshake on an established transport.
    ///
    /// # Errors
    /// As for [`connect`](Self::connect), minus the TCP part.
    pub async fn connect_on<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        io: S,
    ) -> Result<(WebSocket<S>, Response)> {
        let target = Target::parse(&self.url)?;
        self.handshake(io, &target).await
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        mut io: S,
        target: &Target,
    ) -> Result<(WebSocket<S>, Response)> {
        let mut hs = ClientHandshake::new(target.host_header(), target.resource.clone());
        for p in &self.subprotocols {
            hs = hs.subprotocol(p.clone());
        }
        for (name, value) in &self.headers {
            hs = hs.header(name.clone(), value.clone());
        }
        io.write_all(&hs.request()).await?;
        io.flush().await?;
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            match hs.parse_response(&buf) {
                Ok(Some((response, used))) => {
                    let _ = buf.split_to(used);
                    let subprotocol = response.subprotocol.clone();
                    let ws = WebSocket::from_raw(io, Role::Client, self.config, buf)
                        .with_subprotocol(subprotocol);
                    return Ok((ws, response));
                }
                Ok(None) => {}
                Err(HandshakeError::Status { status }) => {
                    return Err(Error::Refused {
                        status,
                        body: read_body_prefix(&mut io, &mut buf).await,
                    });
                }
                Err(e) => return Err(e.into()),
            }
            if io.read_buf(&mut buf).await? == 0 {
                return Err(Error::Handshake(HandshakeError::Malformed(
                    "connection closed before the handshake response".into(),
                )));
            }
        }
    }
}

/// Up to 512 bytes of the body that follows a refusal, for the error message.
async fn read_body_prefix<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> String {
    const MAX: usize = 512;
    let head_end = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let read = async {
        while buf.len() < 8192 + MAX {
            if head_end(buf).is_some_and(|end| buf.len() > end) {
                // Give the rest of a short body a moment to arrive with it.
                let _ = tokio::time::timeout(Duration::from_millis(50), io.read_buf(buf)).await;
                break;
            }
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    let body = head_end(buf).map_or(&buf[..0], |end| &buf[end..]);
    let body = &body[..body.len().min(MAX)];
    String::from_utf8_lossy(body).trim().to_owned()
}

/// The parts of a `ws://` URL the handshake needs.
#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    default_port: bool,
    resource: String,
}

impl Target {
    fn parse(raw: &str) -> Result<Self> {
        let url = url::Url::parse(raw).map_err(|e| Error::Url(format!("{raw}: {e}")))?;
        match url.scheme() {
            "ws" => {}
            "wss" => {
                return Err(Error::Url(format!(
                    "{raw}: wss:// is not supported by this build"
                )))
            }
            other => {
                return Err(Error::Url(format!(
                    "{raw}: scheme must be ws:// or wss://, not {other}://"
                )))
            }
        }
        let host = url
            .host_str()
            .ok_or_else(|| Error::Url(format!("{raw}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let mut resource = url.path().to_owned();
        if resource.is_empty() {
            resource.push('/');
        }
        if let Some(q) = url.query() {
            resource.push('?');
            resource.push_str(q);
        }
        Ok(Self {
            host,
            port,
            default_port: url.port().is_none(),
            resource,
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("ws://127.0.0.1:9001/runCase?case=1&agent=x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9001));
        assert_eq!(t.resource, "/runCase?case=1&agent=x");
        assert_eq!(t.host_header(), "127.0.0.1:9001");
        let t = Target::parse("ws://[::1]/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.host_header().as_str()),
            ("::1", 80, "[::1]")
        );
        assert!(matches!(Target::parse("http://x/"), Err(Error::Url(_))));
        assert!(matches!(Target::parse("not a url"), Err(Error::Url(_))));
    }
}
