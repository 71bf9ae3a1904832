//! Negotiating permessage-deflate parameters (RFC 7692 §7.1).

use std::fmt::Write as _;

use crate::HandshakeError;

/// The extension token.
const NAME: &str = "permessage-deflate";

/// The smallest window zlib can compress with in raw deflate mode. RFC 7692 allows 8, but a
/// peer that asks us to compress with a 256-byte window is declined rather than deceived.
const MIN_COMPRESS_BITS: u8 = 9;

/// What this endpoint asks for and accepts when negotiating permessage-deflate.
///
/// Which side a field binds depends on the role: `server_*` fields govern what the server
/// compresses, `client_*` fields what the client compresses.
///
/// ```
/// use duplex_proto::deflate::DeflateConfig;
///
/// let config = DeflateConfig::default().level(1).threshold(256).server_max_window_bits(Some(12));
/// assert_eq!(config.level, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Compression level, 0 (store) to 9 (smallest). Default 6, zlib's default.
    pub level: u32,
    /// Messages shorter than this many bytes are sent uncompressed. Default 64: below that,
    /// compression rarely saves anything and costs CPU.
    pub threshold: usize,
    /// Server: always drop the compression context after each message (saves memory between
    /// messages, costs ratio). Client: ask the server to. Default `false`.
    pub server_no_context_takeover: bool,
    /// Server: require the client to drop its context after each message. Client: promise to
    /// (offered as a hint, which some servers require to accept). Default `false`.
    pub client_no_context_takeover: bool,
    /// Server: the largest window (9-15 bits) we compress with. Client: ask the server to
    /// compress with at most this window. Default `None` (15).
    pub server_max_window_bits: Option<u8>,
    /// Server: limit the client's window to this (when it offers to accept a limit). Client:
    /// the largest window we compress with. Default `None` (15).
    pub client_max_window_bits: Option<u8>,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            level: 6,
            threshold: 64,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: None,
        }
    }
}

impl DeflateConfig {
    /// Set [`level`](Self::level) (clamped to 0-9).
    #[must_use]
    pub fn level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    /// Set [`threshold`](Self::threshold).
    #[must_use]
    pub const fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// Set [`server_no_context_takeover`](Self::server_no_context_takeover).
    #[must_use]
    pub const fn server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }

    /// Set [`client_no_context_takeover`](Self::client_no_context_takeover).
    #[must_use]
    pub const fn client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }

    /// Set [`server_max_window_bits`](Self::server_max_window_bits) (clamped to 9-15).
    #[must_use]
    pub fn server_max_window_bits(mut self, bits: Option<u8>) -> Self {
        self.server_max_window_bits = bits.map(|b| b.clamp(MIN_COMPRESS_BITS, 15));
        self
    }

    /// Set [`client_max_window_bits`](Self::client_max_window_bits) (clamped to 9-15).
    #[must_use]
    pub fn client_max_window_bits(mut self, bits: Option<u8>) -> Self {
        self.client_max_window_bits = bits.map(|b| b.clamp(MIN_COMPRESS_BITS, 15));
        self
    }
}

/// The parameters both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after each message.
    pub client_no_context_takeover: bool,
    /// The server's compression window, in bits.
    pub server_max_window_bits: u8,
    /// The client's compression window, in bits.
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    fn default() -> Self {
        Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

/// The parameters of one offer or response element.
#[derive(Debug, Default, PartialEq, Eq)]
struct Element {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// Parse one `permessage-deflate; a; b=c` element. `None` if it is another extension; an error
/// string if it is ours but invalid (RFC 7692 §7.1: unknown, duplicate or invalid parameters).
fn parse_element(element: &str) -> Option<Result<Element, String>> {
    let mut parts = element.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut e = Element::default();
    let mut seen = Vec::new();
    for part in parts.filter(|p| !p.is_empty()) {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (part, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return Some(Err(format!("duplicate parameter {name}")));
        }
        let bits = |v: Option<&str>| -> Result<u8, String> {
            v.and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
                .ok_or_else(|| format!("invalid value for {name}"))
        };
        match (name.as_str(), value) {
            ("server_no_context_takeover", None) => e.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => e.client_no_context_takeover = true,
            ("server_max_window_bits", v) => match bits(v) {
                Ok(b) => e.server_max_window_bits = Some(b),
                Err(err) => return Some(Err(err)),
            },
            ("client_max_window_bits", None) => e.client_max_window_bits = Some(None),
            ("client_max_window_bits", v) => match bits(v) {
                Ok(b) => e.client_max_window_bits = Some(Some(b)),
                Err(err) => return Some(Err(err)),
            },
            _ => return Some(Err(format!("unknown or malformed parameter {part}"))),
        }
        seen.push(name);
    }
    Some(Ok(e))
}

/// Server side: pick the first acceptable `permessage-deflate` offer among the client's
/// `Sec-WebSocket-Extensions` elements (RFC 7692 §5, §7.1).
///
/// Returns the agreed parameters and the response header value, or `None` to decline (no
/// offer, or none acceptable: invalid ones are declined, as the RFC requires).
///
/// ```
/// use duplex_proto::deflate::{negotiate, DeflateConfig};
///
/// let offers = ["permessage-deflate; client_max_window_bits; server_max_window_bits=10"];
/// let (params, response) = negotiate(offers, &DeflateConfig::default()).unwrap();
/// assert_eq!(params.server_max_window_bits, 10);
/// assert_eq!(response, "permessage-deflate; server_max_window_bits=10");
/// ```
pub fn negotiate<'a>(
    offers: impl IntoIterator<Item = &'a str>,
    config: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    offers.into_iter().find_map(|offer| {
        let offer = parse_element(offer)?.ok()?;
        accept_offer(&offer, config)
    })
}

fn accept_offer(offer: &Element, config: &DeflateConfig) -> Option<(DeflateParams, String)> {
    let mut params = DeflateParams {
        server_no_context_takeover: offer.server_no_context_takeover
            || config.server_no_context_takeover,
        client_no_context_takeover: config.client_no_context_takeover,
        ..DeflateParams::default()
    };
    let ours = config.server_max_window_bits.unwrap_or(15);
    let server_bits = match offer.server_max_window_bits {
        Some(requested) => Some(requested.min(ours)),
        None => config.server_max_window_bits,
    };
    if let Some(bits) = server_bits {
        if bits < MIN_COMPRESS_BITS {
            return None;
        }
        params.server_max_window_bits = bits;
    }
    // §7.1.2.2: the response may limit the client's window only if the offer allowed it.
    let client_bits = match (offer.client_max_window_bits, config.client_max_window_bits) {
        (Some(Some(offered)), Some(ours)) => Some(offered.min(ours)),
        (Some(None), Some(ours)) => Some(ours),
        _ => None,
    };
    if let Some(bits) = client_bits {
        params.client_max_window_bits = bits;
    }
    let mut response = String::from(NAME);
    if params.server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if params.client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = server_bits {
        let _ = write!(response, "; server_max_window_bits={bits}");
    }
    if let Some(bits) = client_bits {
        let _ = write!(response, "; client_max_window_bits={bits}");
    }
    Some((params, response))
}

/// Client side: the `Sec-WebSocket-Extensions` offer for `config`.
///
/// It always offers `client_max_window_bits`, so a server may limit our window.
#[must_use]
pub fn client_offer(config: &DeflateConfig) -> String {
    let mut offer = String::from(NAME);
    if config.client_no_context_takeover {
        offer.push_str("; client_no_context_takeover");
    }
    match config.client_max_window_bits {
        Some(bits) => {
            let _ = write!(offer, "; client_max_window_bits={bits}");
        }
        None => offer.push_str("; client_max_window_bits"),
    }
    if config.server_no_context_takeover {
        offer.push_str("; server_no_context_takeover");
    }
    if let Some(bits) = config.server_max_window_bits {
        let _ = write!(offer, "; server_max_window_bits={bits}");
    }
    offer
}

/// Client side: check the server's response to [`client_offer`] and return the agreed
/// parameters.
///
/// # Errors
/// An invalid or duplicated parameter, a window larger than we asked for, or a client window
/// we cannot compress with (RFC 7692 §7.1: the client must fail the connection).
pub fn client_accept(
    response: &str,
    config: &DeflateConfig,
) -> Result<DeflateParams, HandshakeError> {
    let invalid =
        |why: String| HandshakeError::Extension(format!("permessage-deflate response: {why}"));
    let mut elements = response.split(',').map(str::trim).filter(|e| !e.is_empty());
    let element = elements.next().ok_or_else(|| invalid("empty".into()))?;
    if elements.next().is_some() {
        return Err(invalid("more than one extension selected".into()));
    }
    let e = parse_element(element)
        .ok_or_else(|| invalid(format!("unexpected extension {element}")))?
        .map_err(invalid)?;
    let mut params = DeflateParams {
        server_no_context_takeover: e.server_no_context_takeover,
        client_no_context_takeover: e.client_no_context_takeover
            || config.client_no_context_takeover,
        ..DeflateParams::default()
    };
    if let Some(bits) = e.server_max_window_bits {
        params.server_max_window_bits = bits;
    }
    if let Some(requested) = config.server_max_window_bits {
        if params.server_max_window_bits > requested {
            return Err(invalid(format!(
                "server window of {} bits exceeds the {requested} requested",
                params.server_max_window_bits
            )));
        }
    }
    match e.client_max_window_bits {
        Some(Some(bits)) if bits < MIN_COMPRESS_BITS => {
            return Err(invalid(format!("cannot compress with a {bits}-bit window")));
        }
        Some(Some(bits)) => params.client_max_window_bits = bits,
        Some(None) => return Err(invalid("client_max_window_bits needs a value".into())),
        None => {}
    }
    if let Some(ours) = config.client_max_window_bits {
        params.client_max_window_bits = params.client_max_window_bits.min(ours);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(offers: &[&str]) -> Option<(DeflateParams, String)> {
        negotiate(offers.iter().copied(), &DeflateConfig::default())
    }

    #[test]
    fn plain_offer_is_accepted() {
        let (p, r) = neg(&["permessage-deflate"]).unwrap();
        assert_eq!(p, DeflateParams::default());
        assert_eq!(r, "permessage-deflate");
    }

    #[test]
    fn first_acceptable_offer_wins() {
        let (p, r) = neg(&[
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; bogus",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits",
            "permessage-deflate",
        ])
        .unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(r, "permessage-deflate; server_no_context_takeover");
    }

    #[test]
    fn invalid_offers_are_declined() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; foo",
        ] {
            assert_eq!(neg(&[bad]), None, "{bad}");
        }
    }

    #[test]
    fn windows_are_limited() {
        let config = DeflateConfig::default()
            .server_max_window_bits(Some(11))
            .client_max_window_bits(Some(10));
        let (p, r) = negotiate(["permessage-deflate; client_max_window_bits=12"], &config).unwrap();
        assert_eq!(
            (p.server_max_window_bits, p.client_max_window_bits),
            (11, 10)
        );
        assert_eq!(
            r,
            "permessage-deflate; server_max_window_bits=11; client_max_window_bits=10"
        );
        // The client did not offer client_max_window_bits: we may not impose one.
        let (p, r) = negotiate(["permessage-deflate"], &config).unwrap();
        assert_eq!(p.client_max_window_bits, 15);
        assert!(!r.contains("client_max_window_bits"));
    }

    #[test]
    fn client_side_round_trip() {
        let config = DeflateConfig::default()
            .client_no_context_takeover(true)
            .server_max_window_bits(Some(10));
        let offer = client_offer(&config);
        assert_eq!(
            offer,
            "permessage-deflate; client_no_context_takeover; client_max_window_bits; server_max_window_bits=10"
        );
        let (server_params, response) =
            negotiate([offer.as_str()], &DeflateConfig::default()).unwrap();
        let client_params = client_accept(&response, &config).unwrap();
        assert_eq!(
            client_params.server_max_window_bits,
            server_params.server_max_window_bits
        );
        assert!(client_params.client_no_context_takeover);
    }

    #[test]
    fn client_rejects_bad_responses() {
        let config = DeflateConfig::default().server_max_window_bits(Some(10));
        for bad in [
            "permessage-deflate; server_max_window_bits=12",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=8",
            "permessage-deflate; unknown",
            "permessage-deflate, permessage-deflate",
            "x-other",
        ] {
            assert!(client_accept(bad, &config).is_err(), "{bad}");
        }
    }
}
