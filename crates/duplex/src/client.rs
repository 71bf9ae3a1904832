//! Opening client connections: DNS, TCP, an optional HTTP CONNECT proxy, TLS for `wss://`,
//! the opening handshake, and optional redirects.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::BytesMut;
use duplex_proto::{
    deflate::{self, DeflateConfig},
    handshake::client::{ClientHandshake, Response},
    Config, HandshakeError, Role,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::{timeout_at, Instant},
};

use crate::{
    error::{Error, Result},
    proxy::{authority, Proxy},
    stream::MaybeTlsStream,
    WebSocket,
};

/// Connect to a `ws://` or `wss://` URL with the default settings.
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
///
/// ```no_run
/// # async fn run() -> duplex::Result<()> {
/// use std::time::Duration;
///
/// let (ws, _response) = duplex::ClientBuilder::new("wss://chat.example/live")
///     .header("Authorization", "Bearer 0123")
///     .subprotocol("chat.v2")
///     .proxy_from_env(true)
///     .follow_redirects(3)
///     .connect_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// assert_eq!(ws.subprotocol(), Some("chat.v2"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) subprotocols: Vec<String>,
    pub(crate) config: Config,
    /// Set by [`deflate`](Self::deflate): wins over `config.deflate` whatever the order of
    /// the calls.
    deflate: Option<Option<DeflateConfig>>,
    connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    proxy: ProxyChoice,
    max_redirects: u32,
    /// Set by [`http2`](Self::http2).
    #[cfg_attr(not(feature = "http2"), allow(dead_code))]
    http2: bool,
    #[cfg(feature = "tls")]
    tls: crate::tls::ClientTls,
}

#[derive(Debug, Clone)]
enum ProxyChoice {
    Direct,
    FromEnv,
    Explicit(String),
}

impl ClientBuilder {
    /// Options for connecting to `url` (`ws://` or `wss://host[:port]/path?query`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            headers: Vec::new(),
            subprotocols: Vec::new(),
            config: Config::default(),
            deflate: None,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            proxy: ProxyChoice::Direct,
            max_redirects: 0,
            http2: false,
            #[cfg(feature = "tls")]
            tls: crate::tls::ClientTls::default(),
        }
    }

    /// Open the WebSocket over HTTP/2 (RFC 8441) when the server allows it, as a stream of an
    /// HTTP/2 connection that can carry more (see [`http2`](crate::http2)). Default off.
    ///
    /// Over `wss://` the TLS handshake offers ALPN `h2`, then `http/1.1`; over `ws://` the
    /// client speaks HTTP/2 with prior knowledge (h2c). It falls back to the HTTP/1.1 upgrade
    /// when the server picks `http/1.1`, when it does not announce
    /// `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441 §3; on a new connection), and over
    /// `ws://` when it does not answer in HTTP/2 (on a new connection). Which one was used:
    /// [`MaybeTlsStream::http2`]. With [`tls_config`](Self::tls_config), its own ALPN list
    /// is used as it is. [`connect_on`](Self::connect_on) always speaks HTTP/1.1 on the
    /// transport it is given.
    #[cfg(feature = "http2")]
    #[must_use]
    pub const fn http2(mut self, enabled: bool) -> Self {
        self.http2 = enabled;
        self
    }

    /// These options with [`deflate`](Self::deflate) applied to the connection's config.
    pub(crate) fn resolved(mut self) -> Self {
        if let Some(deflate) = self.deflate.take() {
            self.config.deflate = deflate;
        }
        self
    }

    /// Add a request header (e.g. `Authorization`, `Cookie`, `Origin`).
    ///
    /// The name must be an HTTP token and the value visible ASCII, spaces and tabs; headers
    /// the handshake writes itself (`Host`, `Upgrade`, `Connection`, `Sec-WebSocket-*`,
    /// `Content-Length`, `Transfer-Encoding`; see
    /// [`RESERVED_REQUEST_HEADERS`](duplex_proto::handshake::client::RESERVED_REQUEST_HEADERS))
    /// are refused. A header that breaks these rules is kept, and [`connect`](Self::connect)
    /// then fails with [`Error::InvalidHeader`] naming the first one, before anything is sent:
    /// a value with CR or LF never reaches the wire.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offer a subprotocol, in order of preference. The one the server selects is
    /// [`WebSocket::subprotocol`]; a server that selects one that was not offered fails the
    /// handshake (RFC 6455 §4.1).
    #[must_use]
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocols.push(protocol.into());
        self
    }

    /// Offer permessage-deflate (RFC 7692) with these settings; `None` offers no compression
    /// (the default). Takes precedence over [`Config::deflate`] of [`config`](Self::config),
    /// whichever of the two is called first.
    #[must_use]
    pub fn deflate(mut self, settings: Option<DeflateConfig>) -> Self {
        self.deflate = Some(settings);
        self
    }

    /// Settings of the connection once open. Its [`Config::deflate`] applies unless
    /// [`deflate`](Self::deflate) is called as well.
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Time allowed to resolve the host and establish TCP, including the proxy tunnel.
    /// Default 10 s.
    #[must_use]
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for the TLS handshake and the opening handshake. Default 10 s.
    #[must_use]
    pub const fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Tunnel through this HTTP proxy with `CONNECT`: `http://[user:password@]host[:port]`
    /// (a bare `host:port` works too). The user and password, percent-decoded, are sent as
    /// Basic `Proxy-Authorization`. An explicit proxy wins over
    /// [`proxy_from_env`](Self::proxy_from_env).
    #[must_use]
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = ProxyChoice::Explicit(url.into());
        self
    }

    /// Take the proxy from the environment, as curl does: `http_proxy` for `ws://`,
    /// `https_proxy` (or `HTTPS_PROXY`) for `wss://`, then `all_proxy`; hosts matching
    /// `no_proxy` (domains, `.suffix`, IPs, CIDR blocks, `*`) go direct. Upper-case
    /// `HTTP_PROXY` is ignored: CGI servers set it from a request header. Default off.
    #[must_use]
    pub fn proxy_from_env(mut self, enabled: bool) -> Self {
        match (&self.proxy, enabled) {
            (ProxyChoice::Explicit(_), _) => {}
            (_, true) => self.proxy = ProxyChoice::FromEnv,
            (_, false) => self.proxy = ProxyChoice::Direct,
        }
        self
    }

    /// Follow up to `max` redirects (301, 302, 303, 307, 308 with a `Location`), reconnecting
    /// to the new URL. `http(s)://` locations are taken as `ws(s)://`; a redirect from
    /// `wss://` to `ws://` is refused. Headers are kept, except `Authorization` and `Cookie`
    /// when the scheme, host or port changes. Default 0: a redirect is
    /// [`Error::Redirected`].
    #[must_use]
    pub const fn follow_redirects(mut self, max: u32) -> Self {
        self.max_redirects = max;
        self
    }

    /// Trust the CA certificates in this PEM file (may be called more than once). They
    /// replace the bundled web PKI roots; add [`native_roots`](Self::native_roots) to keep
    /// the OS store as well.
    ///
    /// The file is read at the first connect with these options, and again only once its
    /// modification time or length changed: the configuration built from it is shared by
    /// later connections, which resume their TLS sessions (see [`tls`](crate::tls#reuse-and-session-resumption)).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca_files.push(path.into());
        self
    }

    /// Trust the operating system's certificate store instead of the bundled web PKI roots
    /// (Mozilla's list, the default). Together with [`ca_file`](Self::ca_file), both are
    /// trusted.
    #[cfg(feature = "tls")]
    #[must_use]
    pub const fn native_roots(mut self, enabled: bool) -> Self {
        self.tls.native_roots = enabled;
        self
    }

    /// Accept any server certificate without verifying it. The connection is still
    /// encrypted, but anyone on the path can intercept it: for testing against self-signed
    /// servers only.
    #[cfg(feature = "tls")]
    #[must_use]
    pub const fn insecure(mut self, enabled: bool) -> Self {
        self.tls.insecure = enabled;
        self
    }

    /// Use this rustls configuration for `wss://` as it is, instead of the one built from
    /// [`ca_file`](Self::ca_file), [`native_roots`](Self::native_roots) and
    /// [`insecure`](Self::insecure). Set its ALPN to `http/1.1` if the server expects it.
    /// Sessions are resumed across connections that share the same `Arc` (rustls keeps them
    /// in the configuration).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls_config(mut self, config: std::sync::Arc<crate::tls::rustls::ClientConfig>) -> Self {
        self.tls.config = Some(config);
        self
    }

    /// Connect and run the opening handshake.
    ///
    /// # Errors
    /// Each says what failed: [`Error::Url`] for a bad URL, [`Error::Dns`], [`Error::Connect`]
    /// (with the address), [`Error::Proxy`] (with its status), [`Error::Tls`] (unknown CA,
    /// name mismatch, expiry, ...), [`Error::Timeout`], [`Error::Refused`] when the server
    /// answers with another status than 101 (over HTTP/2: than 2xx; with the start of the
    /// body),
    /// [`Error::Redirected`] or [`Error::TooManyRedirects`], [`Error::Handshake`] for an
    /// invalid 101 response (a wrong `Sec-WebSocket-Accept`, an unoffered subprotocol), and
    /// [`Error::InvalidHeader`] for a header of [`header`](Self::header) that cannot be sent
    /// (checked before connecting). A runtime built without Tokio's time driver, which the
    /// timeouts need, is an [`Error::Io`] of kind `Other` saying so, also before connecting.
    pub async fn connect(self) -> Result<(WebSocket<MaybeTlsStream>, Response)> {
        crate::timer::check()?;
        self.check_headers()?;
        let this = self.resolved();
        this.connect_resolved().await
    }

    async fn connect_resolved(self) -> Result<(WebSocket<MaybeTlsStream>, Response)> {
        let mut url = self.url.clone();
        let mut headers = self.headers.clone();
        let mut followed = 0;
        loop {
            let target = Target::parse(&url)?;
            let outcome = self.attempt(&target, &headers).await?;
            let (status, location) = match outcome {
                Outcome::Open(ws, response) => return Ok((*ws, response)),
                Outcome::Redirect { status, location } => (status, location),
            };
            if self.max_redirects == 0 {
                return Err(Error::Redirected { status, location });
            }
            if followed == self.max_redirects {
                return Err(Error::TooManyRedirects {
                    limit: self.max_redirects,
                    location,
                });
            }
            let next = redirect_url(&url, &location)?;
            if !target.same_origin(&Target::parse(&next)?) {
                // Credentials meant for one server are not handed to another.
                headers.retain(|(name, _)| {
                    !name.eq_ignore_ascii_case("authorization")
                        && !name.eq_ignore_ascii_case("cookie")
                });
            }
            tracing::debug!(from = %url, to = %next, status, "following redirect");
            url = next;
            followed += 1;
        }
    }

    /// One connection to `target` and its opening handshake: over HTTP/2 when asked for and
    /// the server allows it, over HTTP/1.1 otherwise.
    async fn attempt(
        &self,
        target: &Target,
        headers: &[(String, String)],
    ) -> Result<Outcome<MaybeTlsStream>> {
        let tcp = self.open(target).await?;
        let deadline = Instant::now() + self.handshake_timeout;
        #[cfg(feature = "http2")]
        if self.http2 {
            let io = timeout_at(deadline, self.secure(tcp, target, true))
                .await
                .map_err(|_| Error::Timeout("TLS handshake"))??;
            if io.is_tls() && !io.alpn_h2() {
                tracing::debug!("ALPN chose HTTP/1.1");
                return self.handshake_by(io, target, headers, deadline).await;
            }
            let h2c = !io.is_tls();
            let established = timeout_at(deadline, crate::http2::establish(io, target.clone()))
                .await
                .map_err(|_| Error::Timeout("HTTP/2 connection preface"))?;
            match established {
                Ok(Some(connection)) => {
                    let opened = connection.open(self, target, headers, |s| {
                        MaybeTlsStream::Http2(Box::new(s))
                    });
                    return timeout_at(deadline, opened)
                        .await
                        .map_err(|_| Error::Timeout("opening handshake"))?;
                }
                Ok(None) => tracing::debug!(
                    "no SETTINGS_ENABLE_CONNECT_PROTOCOL from the server: HTTP/1.1 instead"
                ),
                Err(e) if h2c => {
                    tracing::debug!(error = %e, "no HTTP/2 with prior knowledge: HTTP/1.1 instead");
                }
                Err(e) => return Err(e),
            }
            // A new connection for HTTP/1.1: this one speaks HTTP/2.
            let tcp = self.open(target).await?;
            let deadline = Instant::now() + self.handshake_timeout;
            let io = timeout_at(deadline, self.secure(tcp, target, false))
                .await
                .map_err(|_| Error::Timeout("TLS handshake"))??;
            return self.handshake_by(io, target, headers, deadline).await;
        }
        let io = timeout_at(deadline, self.secure(tcp, target, false))
            .await
            .map_err(|_| Error::Timeout("TLS handshake"))??;
        self.handshake_by(io, target, headers, deadline).await
    }

    /// The HTTP/1.1 opening handshake on `io`, by `deadline`.
    async fn handshake_by(
        &self,
        io: MaybeTlsStream,
        target: &Target,
        headers: &[(String, String)],
        deadline: Instant,
    ) -> Result<Outcome<MaybeTlsStream>> {
        timeout_at(deadline, self.handshake(io, target, headers))
            .await
            .map_err(|_| Error::Timeout("opening handshake"))?
    }

    /// Run the opening handshake on an established transport (no proxy, TLS or redirects:
    /// the transport is used as it is).
    ///
    /// # Errors
    /// As for [`connect`](Self::connect), from the handshake on.
    pub async fn connect_on<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        io: S,
    ) -> Result<(WebSocket<S>, Response)> {
        crate::timer::check()?;
        self.check_headers()?;
        let this = self.resolved();
        let target = Target::parse(&this.url)?;
        let deadline = Instant::now() + this.handshake_timeout;
        let outcome = timeout_at(deadline, this.handshake(io, &target, &this.headers))
            .await
            .map_err(|_| Error::Timeout("opening handshake"))??;
        match outcome {
            Outcome::Open(ws, response) => Ok((*ws, response)),
            Outcome::Redirect { status, location } => Err(Error::Redirected { status, location }),
        }
    }

    /// Refuse, before connecting, a header or subprotocol that cannot be sent.
    pub(crate) fn check_headers(&self) -> Result<()> {
        let mut hs = ClientHandshake::new("host", "/");
        for p in &self.subprotocols {
            hs = hs.subprotocol(p.clone());
        }
        for (name, value) in &self.headers {
            hs = hs.header(name.clone(), value.clone());
        }
        if self.http2 {
            // Also what HTTP/2 forbids (RFC 9113 §8.2.2), though HTTP/1.1 may be used.
            return hs.h2_headers().map(drop).map_err(Error::InvalidHeader);
        }
        hs.check().map_err(Error::InvalidHeader)
    }

    /// Resolve, connect TCP and open the proxy tunnel, within the connect timeout.
    async fn open(&self, target: &Target) -> Result<TcpStream> {
        let deadline = Instant::now() + self.connect_timeout;
        let proxy = match &self.proxy {
            ProxyChoice::Direct => None,
            ProxyChoice::Explicit(raw) => Some(Proxy::parse(raw)?),
            ProxyChoice::FromEnv => Proxy::from_env(target.tls, &target.host, target.port, |n| {
                std::env::var(n).ok()
            })?,
        };
        let tcp = match proxy {
            None => tcp_connect(&target.host, target.port, deadline, self.connect_timeout).await?,
            Some(proxy) => {
                let proxy_error = |e: Error| Error::Proxy {
                    proxy: proxy.authority(),
                    status: None,
                    message: e.to_string(),
                };
                let mut tcp = tcp_connect(&proxy.host, proxy.port, deadline, self.connect_timeout)
                    .await
                    .map_err(proxy_error)?;
                timeout_at(deadline, proxy.tunnel(&mut tcp, &target.host, target.port))
                    .await
                    .map_err(|_| Error::Proxy {
                        proxy: proxy.authority(),
                        status: None,
                        message: format!("no answer to CONNECT within {:?}", self.connect_timeout),
                    })??;
                tcp
            }
        };
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    /// Run TLS over `tcp` for `wss://`, offering ALPN `h2` first when `h2` is set.
    #[cfg_attr(not(feature = "tls"), allow(clippy::unused_async, unused_variables))]
    async fn secure(&self, tcp: TcpStream, target: &Target, h2: bool) -> Result<MaybeTlsStream> {
        if !target.tls {
            return Ok(MaybeTlsStream::Plain(tcp));
        }
        #[cfg(feature = "tls")]
        {
            let config = self.tls.client_config(h2)?;
            let name = crate::tls::server_name(&target.host)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| crate::tls::handshake_error(e, &target.host))?;
            Ok(MaybeTlsStream::Tls(Box::new(tls)))
        }
        #[cfg(not(feature = "tls"))]
        Err(Error::Url(format!("{}: {WSS_NEEDS_TLS}", self.url)))
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut io: S,
        target: &Target,
        headers: &[(String, String)],
    ) -> Result<Outcome<S>> {
        let mut hs = ClientHandshake::new(target.host_header(), target.resource.clone());
        for p in &self.subprotocols {
            hs = hs.subprotocol(p.clone());
        }
        for (name, value) in headers {
            hs = hs.header(name.clone(), value.clone());
        }
        if let Some(settings) = &self.config.deflate {
            hs = hs.extensions(deflate::client_offer(settings));
        }
        io.write_all(&hs.request()?).await?;
        io.flush().await?;
        let mut buf = BytesMut::with_capacity(1024);
        loop {
            match hs.parse_response(&buf) {
                Ok(Some((response, used))) => {
                    let _ = buf.split_to(used);
                    let subprotocol = response.subprotocol.clone();
                    let deflate = match (&response.extensions, &self.config.deflate) {
                        (Some(selected), Some(settings)) => {
                            Some(deflate::client_accept(selected, settings)?)
                        }
                        _ => None,
                    };
                    let ws = WebSocket::from_raw(io, Role::Client, self.config.clone(), buf)
                        .with_deflate(deflate)
                        .with_subprotocol(subprotocol);
                    return Ok(Outcome::Open(Box::new(ws), response));
                }
                Ok(None) => {}
                Err(HandshakeError::Status { status }) => {
                    if let Some(location) = redirect_location(status, &buf) {
                        return Ok(Outcome::Redirect { status, location });
                    }
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

/// How an opening handshake ended, short of an error.
pub(crate) enum Outcome<S> {
    Open(Box<WebSocket<S>>, Response),
    Redirect { status: u16, location: String },
}

#[cfg(not(feature = "tls"))]
const WSS_NEEDS_TLS: &str = "wss:// needs the `tls` feature of duplex";

/// Resolve `host` (unless it is an address) and connect to its addresses in turn, all before
/// `deadline`.
async fn tcp_connect(
    host: &str,
    port: u16,
    deadline: Instant,
    budget: Duration,
) -> Result<TcpStream> {
    let dns_error = |source| Error::Dns {
        host: host.to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        timeout_at(deadline, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| {
                dns_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {budget:?}"),
                ))
            })?
            .map_err(dns_error)?
            .collect()
    };
    let mut last = None;
    for addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(source)) => last = Some(Error::Connect { addr, source }),
            Err(_) => {
                return Err(Error::Connect {
                    addr,
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connection timed out after {budget:?}"),
                    ),
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        dns_error(io::Error::new(
            io::ErrorKind::NotFound,
            "the name has no addresses",
        ))
    }))
}

/// The `Location` of a redirect response whose head is at the start of `head`.
fn redirect_location(status: u16, head: &[u8]) -> Option<String> {
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(head).ok()?;
    response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("location"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The absolute `ws(s)://` URL a redirect from `current` to `location` leads to.
fn redirect_url(current: &str, location: &str) -> Result<String> {
    let bad = |why: String| Error::Url(format!("redirect to {location:?}: {why}"));
    let base = url::Url::parse(current).map_err(|e| bad(e.to_string()))?;
    let mut next = base.join(location).map_err(|e| bad(e.to_string()))?;
    let scheme = match next.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(bad(format!("unsupported scheme {other}://"))),
    };
    if base.scheme() == "wss" && scheme == "ws" {
        return Err(bad("refusing to leave wss:// for ws://".into()));
    }
    if next.set_scheme(scheme).is_err() {
        return Err(bad(format!("cannot use it as a {scheme}:// URL")));
    }
    next.set_fragment(None);
    Ok(next.into())
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

/// The parts of a `ws://` or `wss://` URL the connection needs.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    default_port: bool,
    pub(crate) resource: String,
}

impl Target {
    pub(crate) fn parse(raw: &str) -> Result<Self> {
        let url = url::Url::parse(raw).map_err(|e| Error::Url(format!("{raw}: {e}")))?;
        let tls = match url.scheme() {
            "ws" => false,
            #[cfg(feature = "tls")]
            "wss" => true,
            #[cfg(not(feature = "tls"))]
            "wss" => return Err(Error::Url(format!("{raw}: {WSS_NEEDS_TLS}"))),
            other => {
                return Err(Error::Url(format!(
                    "{raw}: scheme must be ws:// or wss://, not {other}://"
                )))
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| Error::Url(format!("{raw}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let mut resource = url.path().to_owned();
        if resource.is_empty() {
            resource.push('/');
        }
        if let Some(q) = url.query() {
            resource.push('?');
            resource.push_str(q);
        }
        Ok(Self {
            tls,
            host,
            port,
            default_port: url.port().is_none(),
            resource,
        })
    }

    pub(crate) fn host_header(&self) -> String {
        if self.default_port {
            authority(&self.host, 0).trim_end_matches(":0").to_owned()
        } else {
            authority(&self.host, self.port)
        }
    }

    /// Same scheme, host and port: where credentials may follow a redirect.
    pub(crate) fn same_origin(&self, other: &Self) -> bool {
        self.tls == other.tls
            && self.port == other.port
            && self.host.eq_ignore_ascii_case(&other.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `deflate` and `config` in either order: `deflate` wins; `config` alone applies.
    #[tokio::test]
    async fn deflate_and_config_do_not_depend_on_their_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let server = crate::ServerConfig::default()
            .connection(Config::default().deflate(Some(DeflateConfig::default())));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    if let Ok(mut ws) =
                        crate::accept_with(tcp, server, |_| Ok(Default::default())).await
                    {
                        while let Some(Ok(_)) = ws.recv().await {}
                    }
                });
            }
        });
        let on = || Some(DeflateConfig::default());
        let with = || Config::default().deflate(on());
        let cases = [
            (
                "deflate then config",
                ClientBuilder::new(&url)
                    .deflate(on())
                    .config(Config::default()),
                true,
            ),
            (
                "config then deflate",
                ClientBuilder::new(&url)
                    .config(Config::default())
                    .deflate(on()),
                true,
            ),
            (
                "config alone",
                ClientBuilder::new(&url).config(with()),
                true,
            ),
            (
                "deflate(None) after config",
                ClientBuilder::new(&url).config(with()).deflate(None),
                false,
            ),
            (
                "deflate(None) before config",
                ClientBuilder::new(&url).deflate(None).config(with()),
                false,
            ),
            ("neither", ClientBuilder::new(&url), false),
        ];
        for (name, builder, offered) in cases {
            let (mut ws, _) = builder.connect().await.unwrap();
            assert_eq!(ws.deflate_params().is_some(), offered, "{name}");
            ws.close(crate::CloseCode::NORMAL, "").await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_bad_header_fails_connect_before_anything_is_sent() {
        let cases = [
            (
                "X-Token",
                "a\r\nSet-Cookie: s=1",
                "the value contains CR or LF",
            ),
            ("X-Token", "a\nb", "the value contains CR or LF"),
            ("X-Token", "caf\u{e9}", "the value is not ASCII"),
            (
                "X-Token",
                "a\x01b",
                "the value contains a control character",
            ),
            (
                "X-Token\r\nX-Evil",
                "1",
                "the name is not an HTTP token (RFC 9110 §5.6.2)",
            ),
            (
                "T\u{f6}ken",
                "1",
                "the name is not an HTTP token (RFC 9110 §5.6.2)",
            ),
            (
                "Sec-WebSocket-Key",
                "AAAAAAAAAAAAAAAAAAAAAA==",
                "the handshake sets this header itself",
            ),
            (
                "host",
                "other.example",
                "the handshake sets this header itself",
            ),
        ];
        for (name, value, reason) in cases {
            // Port 1 on loopback: had it tried to connect, the error would be another one.
            let builder = ClientBuilder::new("ws://127.0.0.1:1/")
                .header("Authorization", "Bearer t")
                .header(name, value);
            match builder.clone().connect().await {
                Err(Error::InvalidHeader(e)) => {
                    assert_eq!((e.name.as_str(), e.reason), (name, reason));
                }
                other => panic!("{name:?}: {value:?}: {other:?}"),
            }
            // On a given transport nothing is written either.
            let (mine, mut theirs) = tokio::io::duplex(4096);
            let result = builder.connect_on(mine).await;
            assert!(matches!(result, Err(Error::InvalidHeader(_))), "{result:?}");
            let mut sent = Vec::new();
            theirs.read_to_end(&mut sent).await.unwrap();
            assert!(sent.is_empty(), "{:?}", String::from_utf8_lossy(&sent));
        }
        let bad_protocol = ClientBuilder::new("ws://127.0.0.1:1/").subprotocol("chat\r\nX: 1");
        assert!(matches!(
            bad_protocol.connect().await,
            Err(Error::InvalidHeader(e)) if e.name == "Sec-WebSocket-Protocol"
        ));
    }

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

    #[cfg(feature = "tls")]
    #[test]
    fn wss_targets() {
        let t = Target::parse("wss://example.com/x").unwrap();
        assert!(t.tls);
        assert_eq!((t.port, t.host_header().as_str()), (443, "example.com"));
        let u = Target::parse("wss://EXAMPLE.com:443/y").unwrap();
        assert!(t.same_origin(&u));
        assert!(!t.same_origin(&Target::parse("ws://example.com:443/").unwrap()));
        assert!(!t.same_origin(&Target::parse("wss://example.com:8443/").unwrap()));
    }

    #[test]
    fn redirects() {
        let r = |cur, loc| redirect_url(cur, loc).map_err(|e| e.to_string());
        assert_eq!(r("ws://a:1/x?q", "/y").unwrap(), "ws://a:1/y");
        assert_eq!(r("ws://a/x/z", "w").unwrap(), "ws://a/x/w");
        assert_eq!(r("ws://a/", "http://b:8/c#f").unwrap(), "ws://b:8/c");
        assert_eq!(r("ws://a/", "https://b/c").unwrap(), "wss://b/c");
        assert!(r("wss://a/", "ws://b/").unwrap_err().contains("refusing"));
        assert!(r("ws://a/", "ftp://b/").unwrap_err().contains("ftp://"));
        let head = b"HTTP/1.1 301 Moved\r\nlocation:  /new \r\n\r\n";
        assert_eq!(redirect_location(301, head).as_deref(), Some("/new"));
        assert_eq!(redirect_location(404, head), None);
        assert_eq!(redirect_location(302, b"HTTP/1.1 302 X\r\n\r\n"), None);
    }
}
