//! TLS for `wss://`: what can go wrong ([`TlsError`]), and with the `tls` feature, the client
//! configuration behind [`ClientBuilder`](crate::ClientBuilder) and an acceptor for servers
//! built from PEM files.
//!
//! A `wss://` echo server:
//!
//! ```no_run
//! # #[cfg(feature = "tls")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let acceptor = duplex::tls::acceptor_from_pem("cert.pem", "key.pem")?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9443").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     let acceptor = acceptor.clone();
//!     tokio::spawn(async move {
//!         let tls = acceptor.accept(tcp).await?;
//!         let mut ws = duplex::accept(tls).await?;
//!         while let Some(message) = ws.recv().await {
//!             ws.send(message?).await?;
//!         }
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//!     });
//! }
//! # }
//! ```
//!
//! # Reuse and session resumption
//!
//! A client configuration is built once per process for each distinct combination of
//! [`ca_file`](crate::ClientBuilder::ca_file)s, [`native_roots`](crate::ClientBuilder::native_roots)
//! and [`insecure`](crate::ClientBuilder::insecure), then reused by every connection with the
//! same options, whether through [`connect`](crate::connect) or a
//! [`ClientBuilder`](crate::ClientBuilder). Reconnecting to a server therefore resumes the TLS
//! session (rustls keeps the tickets of up to 256 servers in memory, per configuration), and
//! the CA files are not parsed again. A CA file is read again, into a new configuration, at the
//! first connect after its modification time or length changed; until then, the certificates
//! read last are trusted. A configuration given with
//! [`tls_config`](crate::ClientBuilder::tls_config) is used as it is: pass the same `Arc` to
//! resume sessions.
//!
//! The crypto provider is *ring*, chosen explicitly rather than through rustls' process-wide
//! default, so linking another rustls user with a different provider changes nothing here.

use std::{fmt, path::PathBuf, time::Duration};

#[cfg(feature = "tls")]
pub use imp::{acceptor_from_pem, certified_key_from_pem, server_config_from_pem};
#[cfg(feature = "tls")]
pub(crate) use imp::{handshake_error, server_name, ClientTls};
/// The rustls version this crate uses, to build a custom
/// [`tls_config`](crate::ClientBuilder::tls_config) or server configuration.
#[cfg(feature = "tls")]
pub use tokio_rustls::{rustls, TlsAcceptor};

/// Why a TLS connection could not be set up.
///
/// The certificate variants describe the server's certificate as seen by the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The server's certificate chain does not lead to a trusted root certificate: a private
    /// or self-signed CA that was not added with
    /// [`ca_file`](crate::ClientBuilder::ca_file).
    #[error("server certificate is signed by an unknown issuer (its CA is not trusted)")]
    UnknownIssuer,
    /// The certificate does not name the host that was connected to.
    #[error(
        "server certificate is not valid for {expected}{}",
        fmt_presented(presented)
    )]
    NameMismatch {
        /// The host name or address connected to.
        expected: String,
        /// The names the certificate is valid for.
        presented: Vec<String>,
    },
    /// The certificate is past its `notAfter` date.
    #[error("server certificate has expired{}", fmt_ago(*ago, "ago"))]
    Expired {
        /// How long ago it expired, when known.
        ago: Option<Duration>,
    },
    /// The certificate's `notBefore` date is in the future.
    #[error("server certificate is not valid yet{}", fmt_ago(*until, "from now"))]
    NotYetValid {
        /// How long until it becomes valid, when known.
        until: Option<Duration>,
    },
    /// The certificate was revoked.
    #[error("server certificate has been revoked")]
    Revoked,
    /// Another problem with the server's certificate.
    #[error("invalid server certificate: {0}")]
    Certificate(String),
    /// The server ended the handshake with a fatal alert.
    #[error("server aborted the TLS handshake with alert {0}")]
    Alert(String),
    /// The server answered with something other than TLS.
    #[error("server did not answer with TLS (is it a plain ws:// server?)")]
    NotTls,
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The URL's host cannot be used as a TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    InvalidName(String),
    /// A certificate, key or CA file that cannot be read or used.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No trusted root certificates could be loaded.
    #[error("no trusted root certificates: {0}")]
    NoRoots(String),
}

fn fmt_presented(presented: &[String]) -> String {
    if presented.is_empty() {
        String::new()
    } else {
        format!(" (it is valid for {})", presented.join(", "))
    }
}

fn fmt_ago(d: Option<Duration>, suffix: &str) -> String {
    d.map_or_else(String::new, |d| format!(" ({} {suffix})", Human(d)))
}

/// A duration rounded to its largest unit, for messages.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        let (n, unit) = match s {
            0..120 => (s, "second"),
            120..7_200 => (s / 60, "minute"),
            7_200..172_800 => (s / 3_600, "hour"),
            _ => (s / 86_400, "day"),
        };
        write!(f, "{n} {unit}{}", if n == 1 { "" } else { "s" })
    }
}

#[cfg(feature = "tls")]
mod imp {
    use std::{
        collections::HashMap,
        io,
        path::{Path, PathBuf},
        sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError},
        time::SystemTime,
    };

    use tokio_rustls::rustls::{
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{ring, CryptoProvider},
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
        CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme,
    };
    use tokio_rustls::{rustls, TlsAcceptor};

    use super::{Duration, TlsError};

    /// The ALPN protocol a WebSocket handshake runs over (RFC 6455 §4.1: an HTTP/1.1 GET).
    const ALPN_HTTP1: &[u8] = b"http/1.1";
    /// HTTP/2 over TLS (RFC 9113 §3.2), offered first by clients asking for RFC 8441.
    const ALPN_H2: &[u8] = b"h2";

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(ring::default_provider())
    }

    /// Build a server configuration from a PEM certificate chain (leaf first) and a PEM
    /// private key (PKCS#8, PKCS#1 or SEC1), offering ALPN `http/1.1`.
    ///
    /// # Errors
    /// [`TlsError::File`] when a file cannot be read, holds no certificate or key, or the key
    /// does not match the certificate.
    pub fn server_config_from_pem(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let (cert_path, key_path) = (cert_chain.as_ref(), key.as_ref());
        let certs = read_certs(cert_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| file_error(key_path, &e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Handshake(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::File {
                path: key_path.to_owned(),
                reason: format!("cannot be used with {}: {e}", cert_path.display()),
            })?;
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Arc::new(config))
    }

    /// A certificate chain (leaf first) and its private key from PEM files, checked to
    /// match, for a server that swaps certificates while running: a
    /// [`ResolvesServerCert`](rustls::server::ResolvesServerCert) that returns the newest pair.
    ///
    /// # Errors
    /// [`TlsError::File`] when a file cannot be read, holds no certificate or key, or the key
    /// does not match the certificate (or its algorithm is not supported).
    pub fn certified_key_from_pem(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let (cert_path, key_path) = (cert_chain.as_ref(), key.as_ref());
        let certs = read_certs(cert_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| file_error(key_path, &e))?;
        rustls::sign::CertifiedKey::from_der(certs, key, &provider())
            .map(Arc::new)
            .map_err(|e| TlsError::File {
                path: key_path.to_owned(),
                reason: format!("cannot be used with {}: {e}", cert_path.display()),
            })
    }

    /// A [`TlsAcceptor`] from PEM files; see [`server_config_from_pem`].
    ///
    /// # Errors
    /// As for [`server_config_from_pem`].
    pub fn acceptor_from_pem(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsAcceptor, TlsError> {
        server_config_from_pem(cert_chain, key).map(TlsAcceptor::from)
    }

    /// Every certificate in a PEM file; at least one.
    fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| file_error(path, &e))?;
        if certs.is_empty() {
            return Err(TlsError::File {
                path: path.to_owned(),
                reason: "no PEM certificate found".into(),
            });
        }
        Ok(certs)
    }

    fn file_error(path: &Path, e: &rustls::pki_types::pem::Error) -> TlsError {
        let reason = match e {
            rustls::pki_types::pem::Error::Io(io) => io.to_string(),
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM item of the expected kind".into()
            }
            other => format!("invalid PEM: {other}"),
        };
        TlsError::File {
            path: path.to_owned(),
            reason,
        }
    }

    /// How a client verifies servers; see the `ClientBuilder` methods that set each field.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct ClientTls {
        pub(crate) ca_files: Vec<std::path::PathBuf>,
        pub(crate) native_roots: bool,
        pub(crate) insecure: bool,
        pub(crate) config: Option<Arc<rustls::ClientConfig>>,
    }

    /// The options a built client configuration depends on.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct CacheKey {
        ca_files: Vec<PathBuf>,
        native_roots: bool,
        insecure: bool,
        h2: bool,
    }

    /// What each CA file looked like (modification time, length) when it was read.
    type Stamps = Vec<(SystemTime, u64)>;

    /// Distinct option sets kept; past it the cache starts over (a process uses a few).
    const CACHE_ENTRIES: usize = 32;

    /// The client configurations built so far in this process, by options: reused, so that
    /// reconnects resume TLS sessions (the session store belongs to the configuration) and
    /// CA files are not parsed again.
    static CLIENT_CONFIGS: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);

    type Cache = HashMap<CacheKey, (Stamps, Arc<rustls::ClientConfig>)>;

    /// The stamps of `paths`, or `None` if one cannot be read (it is then not cached).
    fn stamps(paths: &[PathBuf]) -> Option<Stamps> {
        paths
            .iter()
            .map(|p| {
                let meta = std::fs::metadata(p).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }

    impl ClientTls {
        /// The configuration to connect with: the one given with `tls_config`, or the one
        /// built for these options, reused from the process-wide cache while the CA files are
        /// unchanged (same modification time and length). With `h2`, ALPN offers `h2` before
        /// `http/1.1`.
        pub(crate) fn client_config(
            &self,
            h2: bool,
        ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
            if let Some(config) = &self.config {
                return Ok(Arc::clone(config));
            }
            let key = CacheKey {
                ca_files: self.ca_files.clone(),
                native_roots: self.native_roots,
                insecure: self.insecure,
                h2,
            };
            let stamps = stamps(&self.ca_files);
            let cache = || {
                CLIENT_CONFIGS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            };
            if let Some(stamps) = &stamps {
                if let Some((seen, config)) = cache().get(&key) {
                    if seen == stamps {
                        return Ok(Arc::clone(config));
                    }
                }
            }
            // Built without the lock held: it reads files.
            let config = self.build(h2)?;
            if let Some(stamps) = stamps {
                let mut cache = cache();
                if cache.len() >= CACHE_ENTRIES && !cache.contains_key(&key) {
                    cache.clear();
                }
                cache.insert(key, (stamps, Arc::clone(&config)));
            }
            Ok(config)
        }

        /// A new configuration from these options.
        fn build(&self, h2: bool) -> Result<Arc<rustls::ClientConfig>, TlsError> {
            let provider = provider();
            let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Handshake(e.to_string()))?;
            let mut config = if self.insecure {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                    .with_no_client_auth()
            } else {
                builder
                    .with_root_certificates(self.roots()?)
                    .with_no_client_auth()
            };
            config.alpn_protocols = if h2 {
                vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
            } else {
                vec![ALPN_HTTP1.to_vec()]
            };
            Ok(Arc::new(config))
        }

        /// The CA files, plus the OS roots if asked for; the bundled roots when neither.
        fn roots(&self) -> Result<RootCertStore, TlsError> {
            let mut roots = RootCertStore::empty();
            for path in &self.ca_files {
                for cert in read_certs(path)? {
                    roots.add(cert).map_err(|e| TlsError::File {
                        path: path.clone(),
                        reason: format!("unusable CA certificate: {e}"),
                    })?;
                }
            }
            if self.native_roots {
                let (added, _ignored) = roots.add_parsable_certificates(native_roots()?.clone());
                if added == 0 {
                    return Err(TlsError::NoRoots(
                        "the OS certificate store holds no usable certificate".into(),
                    ));
                }
            }
            if self.ca_files.is_empty() && !self.native_roots {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            Ok(roots)
        }
    }

    /// The OS trust store, loaded once per process (it is a few hundred files to parse).
    fn native_roots() -> Result<&'static Vec<CertificateDer<'static>>, TlsError> {
        static ROOTS: OnceLock<Result<Vec<CertificateDer<'static>>, String>> = OnceLock::new();
        ROOTS
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    let why = found.errors.first().map_or_else(
                        || "the OS certificate store is empty".to_owned(),
                        ToString::to_string,
                    );
                    Err(why)
                } else {
                    Ok(found.certs)
                }
            })
            .as_ref()
            .map_err(|e| TlsError::NoRoots(e.clone()))
    }

    /// The server name to send (SNI) and verify: a DNS name, or an IP address (sent without
    /// SNI, checked against the certificate's IP addresses).
    pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
        ServerName::try_from(host.to_owned()).map_err(|_| TlsError::InvalidName(host.to_owned()))
    }

    /// Turn a failed TLS handshake into a readable error; transport failures stay IO errors.
    pub(crate) fn handshake_error(e: io::Error, host: &str) -> crate::Error {
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return if e.kind() == io::ErrorKind::UnexpectedEof {
                crate::Error::Tls(TlsError::Handshake(
                    "the server closed the connection during the handshake".into(),
                ))
            } else {
                crate::Error::Io(e)
            };
        };
        crate::Error::Tls(from_rustls(tls, host))
    }

    fn from_rustls(e: &rustls::Error, host: &str) -> TlsError {
        let secs = |a: UnixTime, b: UnixTime| {
            Some(Duration::from_secs(a.as_secs().saturating_sub(b.as_secs())))
        };
        match e {
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::UnknownIssuer => TlsError::UnknownIssuer,
                CertificateError::NotValidForName => TlsError::NameMismatch {
                    expected: host.to_owned(),
                    presented: Vec::new(),
                },
                CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                } => TlsError::NameMismatch {
                    expected: expected.to_str().into_owned(),
                    presented: presented.iter().map(|p| clean_name(p)).collect(),
                },
                CertificateError::Expired => TlsError::Expired { ago: None },
                CertificateError::ExpiredContext { time, not_after } => TlsError::Expired {
                    ago: secs(*time, *not_after),
                },
                CertificateError::NotValidYet => TlsError::NotYetValid { until: None },
                CertificateError::NotValidYetContext { time, not_before } => {
                    TlsError::NotYetValid {
                        until: secs(*not_before, *time),
                    }
                }
                CertificateError::Revoked => TlsError::Revoked,
                other => TlsError::Certificate(other.to_string()),
            },
            rustls::Error::AlertReceived(alert) => TlsError::Alert(format!("{alert:?}")),
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
                TlsError::NotTls
            }
            other => TlsError::Handshake(other.to_string()),
        }
    }

    /// webpki reports names as `DnsName("a.example")` or `IpAddress(127.0.0.1)`.
    fn clean_name(presented: &str) -> String {
        let inner = presented
            .strip_prefix("DnsName(")
            .or_else(|| presented.strip_prefix("IpAddress("))
            .and_then(|s| s.strip_suffix(')'));
        inner.map_or(presented, |s| s.trim_matches('"')).to_owned()
    }

    /// Accepts any server certificate, while still checking that the server holds the key
    /// for the one it presented. For `insecure(true)`: testing against self-signed servers.
    #[derive(Debug)]
    struct NoVerification(Arc<CryptoProvider>);

    impl ServerCertVerifier for NoVerification {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_are_cleaned() {
            assert_eq!(clean_name("DnsName(\"a.example\")"), "a.example");
            assert_eq!(clean_name("IpAddress(127.0.0.1)"), "127.0.0.1");
            assert_eq!(clean_name("odd"), "odd");
        }

        #[test]
        fn certificate_errors_are_named() {
            let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
            assert_eq!(from_rustls(&e, "h"), TlsError::UnknownIssuer);
            let e = rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                time: UnixTime::since_unix_epoch(Duration::from_secs(10 * 86_400)),
                not_after: UnixTime::since_unix_epoch(Duration::from_secs(86_400)),
            });
            assert_eq!(
                from_rustls(&e, "h").to_string(),
                "server certificate has expired (9 days ago)"
            );
            let e = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
            assert_eq!(
                from_rustls(&e, "h").to_string(),
                "server certificate is not valid for h"
            );
        }

        #[test]
        fn missing_files_are_named() {
            let e = acceptor_from_pem("/nonexistent/cert.pem", "/nonexistent/key.pem")
                .err()
                .map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.starts_with("/nonexistent/cert.pem: ")),
                "{e:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        let h = |s| Human(Duration::from_secs(s)).to_string();
        assert_eq!(h(1), "1 second");
        assert_eq!(h(90), "90 seconds");
        assert_eq!(h(3_600), "60 minutes");
        assert_eq!(h(86_400 * 3), "3 days");
    }
}
