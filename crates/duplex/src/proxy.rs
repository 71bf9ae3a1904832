//! HTTP CONNECT proxies (RFC 9110 §9.3.6): which one to use for a URL, and opening the
//! tunnel through it.

use std::net::IpAddr;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use bytes::BytesMut;
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// Largest proxy response head read; a CONNECT answer is a few lines.
const MAX_HEAD: usize = 8 * 1024;

/// An HTTP proxy to tunnel through.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The `Proxy-Authorization` value, from the URL's user and password.
    authorization: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credentials stay out of logs.
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("authorization", &self.authorization.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Proxy {
    /// Parse `http://[user:password@]host[:port]`; a bare `host:port` means `http://`.
    pub(crate) fn parse(raw: &str) -> Result<Self> {
        let bad = |why: &str| Error::Url(format!("proxy {raw}: {why}"));
        let with_scheme = if raw.contains("://") {
            raw.to_owned()
        } else {
            format!("http://{raw}")
        };
        let url = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "http" {
            return Err(bad(&format!(
                "{}:// proxies are not supported, only http://",
                url.scheme()
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let authorization = if url.username().is_empty() {
            None
        } else {
            let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
            let user = decode(url.username());
            let password = decode(url.password().unwrap_or(""));
            Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{user}:{password}"))
            ))
        };
        Ok(Self {
            host,
            port: url.port_or_known_default().unwrap_or(80),
            authorization,
        })
    }

    /// The proxy the environment names for a connection to `host:port`, if any: `https_proxy`
    /// (or `HTTPS_PROXY`) for TLS, `http_proxy` otherwise, then `all_proxy`/`ALL_PROXY`;
    /// none when `no_proxy` (or `NO_PROXY`) matches the host.
    ///
    /// Only the lower-case `http_proxy` is read, as curl does: CGI servers put a request's
    /// `Proxy:` header into `HTTP_PROXY`, so a client must not trust it ("httpoxy").
    pub(crate) fn from_env(
        tls: bool,
        host: &str,
        port: u16,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>> {
        let first = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| var(n).filter(|v| !v.trim().is_empty()))
        };
        if first(&["no_proxy", "NO_PROXY"]).is_some_and(|list| no_proxy_matches(&list, host, port))
        {
            return Ok(None);
        }
        let names: &[&str] = if tls {
            &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
        } else {
            &["http_proxy", "all_proxy", "ALL_PROXY"]
        };
        first(names).map(|v| Self::parse(v.trim())).transpose()
    }

    /// `host:port` as written in messages and CONNECT lines.
    pub(crate) fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    fn error(&self, status: Option<u16>, message: impl Into<String>) -> Error {
        Error::Proxy {
            proxy: self.authority(),
            status,
            message: message.into(),
        }
    }

    /// Ask the proxy, on `io`, to open a tunnel to `host:port`.
    ///
    /// # Errors
    /// [`Error::Proxy`] when it refuses (with its status), answers something else than HTTP,
    /// or closes the connection.
    pub(crate) async fn tunnel<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        host: &str,
        port: u16,
    ) -> Result<()> {
        let target = authority(host, port);
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &self.authorization {
            request.push_str("Proxy-Authorization: ");
            request.push_str(auth);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let io_error = |e: std::io::Error| self.error(None, format!("connection failed: {e}"));
        io.write_all(request.as_bytes()).await.map_err(io_error)?;
        io.flush().await.map_err(io_error)?;

        let mut buf = BytesMut::with_capacity(1024);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buf) {
                Ok(httparse::Status::Complete(used)) => {
                    let status = response.code.unwrap_or(0);
                    if !(200..300).contains(&status) {
                        let reason = response.reason.unwrap_or("").trim();
                        return Err(self.error(
                            Some(status),
                            format!("CONNECT {target} refused with HTTP {status} {reason}")
                                .trim_end()
                                .to_owned(),
                        ));
                    }
                    // The tunnel is silent until we speak, so nothing may follow the head.
                    if used != buf.len() {
                        return Err(
                            self.error(Some(status), "unexpected data after the CONNECT response")
                        );
                    }
                    return Ok(());
                }
                Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(self.error(None, "CONNECT response head is too large"))
                }
                Err(e) => {
                    return Err(self.error(None, format!("invalid CONNECT response: {e}")));
                }
            }
            if io.read_buf(&mut buf).await.map_err(io_error)? == 0 {
                return Err(self.error(None, "connection closed before the CONNECT response"));
            }
        }
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Whether a `no_proxy` list exempts `host:port`. Entries are separated by commas or spaces:
/// `*` (everything), a domain (`example.com` or `.example.com`, matching it and its
/// subdomains), an IP address or CIDR block (`10.0.0.0/8`), each optionally with `:port`.
fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    list.split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let (name, entry_port) = split_port(entry);
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(ip) = host_ip {
                return ip_matches(&name, ip);
            }
            let domain = name.trim_start_matches("*.").trim_start_matches('.');
            !domain.is_empty()
                && (host == domain
                    || host
                        .strip_suffix(domain)
                        .is_some_and(|rest| rest.ends_with('.')))
        })
}

/// Split an optional `:port` off a `no_proxy` entry (`[::1]:80`, `host:80`, `::1`).
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, port)) => (ip, port.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (entry, None),
        };
    }
    match entry.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (entry, None),
    }
}

/// Whether `ip` is the address, or inside the CIDR block, `entry`.
fn ip_matches(entry: &str, ip: IpAddr) -> bool {
    let (addr, bits) = match entry.split_once('/') {
        Some((addr, bits)) => match bits.parse::<u32>() {
            Ok(bits) => (addr, Some(bits)),
            Err(_) => return false,
        },
        None => (entry, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let bits = bits.unwrap_or(32).min(32);
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let bits = bits.unwrap_or(128).min(128);
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        let p = Proxy::parse("http://proxy.example:3128").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.authorization),
            ("proxy.example", 3128, None)
        );
        let p = Proxy::parse("10.0.0.1:8080").unwrap();
        assert_eq!(p.authority(), "10.0.0.1:8080");
        let p = Proxy::parse("http://us%40er:p%3Ass@[::1]/").unwrap();
        assert_eq!(p.authority(), "[::1]:80");
        assert_eq!(
            p.authorization.as_deref(),
            Some(format!("Basic {}", STANDARD.encode("us@er:p:ss")).as_str())
        );
        assert!(format!("{p:?}").contains('…') && !format!("{p:?}").contains("Basic"));
        assert!(matches!(Proxy::parse("https://p:443"), Err(Error::Url(_))));
        assert!(matches!(
            Proxy::parse("socks5://p:1080"),
            Err(Error::Url(_))
        ));
    }

    #[test]
    fn environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let vars = env(&[
            ("http_proxy", "http://plain:1"),
            ("HTTPS_PROXY", "http://secure:2"),
            ("no_proxy", "localhost, .internal.example,10.0.0.0/8"),
        ]);
        let pick = |tls, host| {
            Proxy::from_env(tls, host, 80, vars)
                .unwrap()
                .map(|p| p.authority())
        };
        assert_eq!(pick(false, "a.example").as_deref(), Some("plain:1"));
        assert_eq!(pick(true, "a.example").as_deref(), Some("secure:2"));
        assert_eq!(pick(false, "localhost"), None);
        assert_eq!(pick(true, "db.internal.example"), None);
        assert_eq!(pick(false, "10.1.2.3"), None);
        assert_eq!(pick(false, "11.1.2.3").as_deref(), Some("plain:1"));
        // Upper-case HTTP_PROXY is not trusted; empty values mean none.
        let vars = env(&[("HTTP_PROXY", "http://evil:1"), ("https_proxy", " ")]);
        assert_eq!(Proxy::from_env(false, "a", 80, vars).unwrap(), None);
        assert_eq!(Proxy::from_env(true, "a", 443, vars).unwrap(), None);
        let vars = env(&[("ALL_PROXY", "http://all:3")]);
        let p = Proxy::from_env(true, "a", 443, vars).unwrap();
        assert_eq!(p.map(|p| p.authority()).as_deref(), Some("all:3"));
    }

    #[test]
    fn no_proxy_lists() {
        let m = no_proxy_matches;
        assert!(m("*", "anything", 1));
        assert!(m("example.com", "example.com", 80));
        assert!(m("example.com", "a.b.example.com", 80));
        assert!(m(".example.com", "a.example.com", 80));
        assert!(m("*.example.com", "a.example.com", 80));
        assert!(!m("example.com", "notexample.com", 80));
        assert!(m("Example.COM.", "example.com", 80));
        assert!(m("example.com:8080", "example.com", 8080));
        assert!(!m("example.com:8080", "example.com", 80));
        assert!(m("127.0.0.1", "127.0.0.1", 80));
        assert!(m("127.0.0.0/8", "127.9.9.9", 80));
        assert!(!m("127.0.0.0/8", "128.0.0.1", 80));
        assert!(m("::1", "::1", 80));
        assert!(m("[::1]:80", "::1", 80));
        assert!(m("fd00::/8", "fd12::1", 80));
        assert!(!m("10.0.0.0/8", "example.com", 80));
        assert!(m("0.0.0.0/0", "1.2.3.4", 80));
        assert!(!m("", "a", 80));
    }
}
