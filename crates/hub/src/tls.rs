//! TLS on the listener: the rustls configuration, ALPN, and the certificate reload.
//!
//! The certificate and key are read when the server binds (a bad pair stops it there) and
//! again on SIGHUP or when either file's modification time or size changes. A new pair is
//! swapped into the certificate resolver: handshakes that start afterwards present it, open
//! connections keep the session they negotiated. A pair that fails to load (unreadable,
//! not PEM, or a key that does not match the certificate) is logged and counted in
//! `duplex_tls_reloads_total{result="error"}`, and the previous pair stays in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use duplex::tls::rustls::server::{ClientHello, ResolvesServerCert};
use duplex::tls::rustls::sign::CertifiedKey;
use duplex::tls::rustls::{self, ServerConfig};
use duplex::tls::TlsAcceptor;
use duplex::TlsError;
use parking_lot::{Mutex, RwLock};

use crate::config::TlsConfig;
use crate::metrics::Metrics;

/// The ALPN protocols offered, most preferred first (RFC 7301 §3.2: the server picks the
/// first of its own list that the client offered). `h2` comes first: over it, WebSockets
/// are bootstrapped with extended CONNECT (RFC 8441) and share the page's connection. A
/// client that offers no ALPN gets HTTP/1.1; one that offers only protocols outside this
/// list is refused with the `no_application_protocol` alert (RFC 7301 §3.2).
pub(crate) const ALPN_PROTOCOLS: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The HTTP version a connection speaks: from the protocol ALPN settled on, or for a
/// cleartext connection from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpVersion {
    Http1,
    Http2,
}

impl HttpVersion {
    /// The version for a negotiated ALPN protocol; `None` (a TLS client that offered no
    /// ALPN) is HTTP/1.1.
    pub(crate) fn from_alpn(alpn: Option<&[u8]>) -> Self {
        // Only protocols of `ALPN_PROTOCOLS` can be negotiated.
        debug_assert!(alpn.is_none_or(|p| ALPN_PROTOCOLS.contains(&p)));
        if alpn == Some(b"h2") {
            Self::Http2
        } else {
            Self::Http1
        }
    }
}

/// The certificate presented to new handshakes; replaced on reload.
#[derive(Debug)]
struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

/// Size and modification time of the two files, to notice a change cheaply.
type Stamp = [Option<(SystemTime, u64)>; 2];

/// TLS of one listener.
pub(crate) struct ListenerTls {
    acceptor: TlsAcceptor,
    store: Arc<CertStore>,
    cert: PathBuf,
    key: PathBuf,
    /// The files' stamp at the last load attempt, successful or not: a failed pair is not
    /// tried again (and logged again) until a file changes.
    seen: Mutex<Stamp>,
    pub(crate) reload_interval: Duration,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("reload_interval", &self.reload_interval)
            .finish_non_exhaustive()
    }
}

impl ListenerTls {
    /// Reads the pair and builds the server configuration; `None` when TLS is off.
    pub(crate) fn new(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
            return Ok(None);
        };
        let seen = stamp(cert, key);
        let pair = duplex::tls::certified_key_from_pem(cert, key)?;
        let store = Arc::new(CertStore {
            current: RwLock::new(pair),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Handshake(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        server.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        Ok(Some(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            store,
            cert: cert.clone(),
            key: key.clone(),
            seen: Mutex::new(seen),
            reload_interval: config.reload_interval,
        }))
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Loads the pair again if a file changed since the last attempt (or always, with
    /// `force`), and swaps it in when it is valid.
    pub(crate) fn reload(&self, force: bool, metrics: &Metrics) {
        let now = stamp(&self.cert, &self.key);
        {
            let mut seen = self.seen.lock();
            if !force && *seen == now {
                return;
            }
            *seen = now;
        }
        match duplex::tls::certified_key_from_pem(&self.cert, &self.key) {
            Ok(pair) => {
                *self.store.current.write() = pair;
                metrics.tls_reload("ok");
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                metrics.tls_reload("error");
                tracing::error!(
                    error = %e,
                    "cannot reload the TLS certificate; still serving the previous one"
                );
            }
        }
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    [one(cert), one(key)]
}

/// Reloads `tls` on SIGHUP and when its files change, until `stop` resolves. The SIGHUP
/// handler is installed before this returns, so a signal sent once the server is up never
/// meets the default action (which ends the process).
pub(crate) fn watch(
    tls: Arc<ListenerTls>,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; TLS reload by file changes only");
            None
        }
    };
    #[cfg(not(unix))]
    let mut hup = None::<()>;
    async move {
        tokio::pin!(stop);
        let poll = !tls.reload_interval.is_zero();
        let mut ticks = tokio::time::interval(tls.reload_interval.max(Duration::from_millis(10)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = hangup(&mut hup) => {
                    tracing::info!("SIGHUP received: reloading the TLS certificate");
                    tls.reload(true, &metrics);
                }
                _ = ticks.tick(), if poll => tls.reload(false, &metrics),
            }
        }
    }
}

/// Resolves at the next SIGHUP; never when it cannot be watched.
#[cfg(unix)]
async fn hangup(hup: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(hup) = hup.as_mut() {
        if hup.recv().await.is_some() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

#[cfg(not(unix))]
async fn hangup(_: &mut Option<()>) {
    std::future::pending::<()>().await;
}
