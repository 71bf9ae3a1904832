//! Where the Redis broker sends its commands and pub/sub: one fixed Redis, or the current
//! master of a Redis Sentinel deployment.
//!
//! With Sentinel, the master is asked of the Sentinels (`SENTINEL MASTERS`, then `ROLE` on
//! the named master to check that it is one) whenever the pub/sub connection (re)connects.
//! A failover shows up as a lost connection (Sentinel kills the clients of a demoted master:
//! `CLIENT KILL TYPE normal` / `pubsub` in its reconfiguration) or, when a demoted master
//! still answers, as a `-READONLY` reply to a write: then the command connection is dropped
//! at once (publishes fail with `unavailable` instead of going to a replica) and the pub/sub
//! loop is woken to ask the Sentinels again. Every question to the Sentinels is bounded by the
//! broker's timeout; the pub/sub loop retries with its backoff.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{Client, ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::BrokerError;
use crate::config::{redact_password_in, redact_url};

/// The Sentinels to ask and the name of the master they watch.
#[derive(Clone)]
#[non_exhaustive]
pub struct SentinelOptions {
    /// `redis://[:password@]host:port` of each Sentinel (a password here is the Sentinel's).
    pub sentinels: Vec<String>,
    /// The master's name in the Sentinels' configuration (`sentinel monitor NAME ...`).
    pub master: String,
}

impl SentinelOptions {
    /// Sentinels at `sentinels`, watching the master named `master`.
    pub fn new(sentinels: Vec<String>, master: impl Into<String>) -> Self {
        Self {
            sentinels,
            master: master.into(),
        }
    }
}

impl std::fmt::Debug for SentinelOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.sentinels.iter().map(|s| redact_url(s)).collect();
        f.debug_struct("SentinelOptions")
            .field("sentinels", &shown)
            .field("master", &self.master)
            .finish()
    }
}

/// The Redis the broker talks to.
pub(super) struct Master {
    mode: Mode,
    config: ConnectionManagerConfig,
    timeout: Duration,
    /// The current master's client and command connection; `None` while unknown.
    current: Mutex<Option<Current>>,
    /// Woken when the current master turned out to be a replica.
    lost: Notify,
}

enum Mode {
    Fixed,
    Sentinel {
        client: Box<tokio::sync::Mutex<SentinelClient>>,
        master: String,
    },
}

#[derive(Clone)]
struct Current {
    /// `host:port`, for logs and to notice a change of master.
    addr: String,
    client: Client,
    conn: ConnectionManager,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("redis: {e}"))
}

/// Whether `e` says that the server is a replica (`-READONLY`), i.e. the master moved.
pub(super) fn is_read_only(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

impl Master {
    /// Always the Redis of `client`.
    pub(super) fn fixed(
        client: Client,
        config: ConnectionManagerConfig,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(unavailable)?;
        let addr = client.get_connection_info().addr().to_string();
        Ok(Self {
            mode: Mode::Fixed,
            config,
            timeout,
            current: Mutex::new(Some(Current { addr, client, conn })),
            lost: Notify::new(),
        })
    }

    /// The master named in `options`, as the Sentinels see it. `url`, when given, supplies
    /// the master's database, user and password (its host is not used).
    pub(super) fn sentinel(
        options: &SentinelOptions,
        url: Option<&str>,
        config: ConnectionManagerConfig,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        if options.sentinels.is_empty() {
            return Err(unavailable("no sentinel given"));
        }
        let mut infos = Vec::with_capacity(options.sentinels.len());
        for s in &options.sentinels {
            let info = s.as_str().into_connection_info().map_err(|e| {
                BrokerError::Unavailable(format!(
                    "invalid sentinel URL {}: {}",
                    redact_url(s),
                    redact_password_in(&e.to_string(), s)
                ))
            })?;
            infos.push(info);
        }
        let mut node = SentinelNodeConnectionInfo::default();
        if let Some(url) = url {
            let info = url.into_connection_info().map_err(|e| {
                BrokerError::Unavailable(format!(
                    "invalid redis_url {}: {}",
                    redact_url(url),
                    redact_password_in(&e.to_string(), url)
                ))
            })?;
            node = node.set_redis_connection_info(info.redis_settings().clone());
        }
        let client = SentinelClient::build(
            infos,
            options.master.clone(),
            Some(node),
            SentinelServerType::Master,
        )
        .map_err(unavailable)?;
        Ok(Self {
            mode: Mode::Sentinel {
                client: Box::new(tokio::sync::Mutex::new(client)),
                master: options.master.clone(),
            },
            config,
            timeout,
            current: Mutex::new(None),
            lost: Notify::new(),
        })
    }

    /// The command connection of the current master, or `unavailable` while there is none.
    pub(super) fn commands(&self) -> Result<ConnectionManager, BrokerError> {
        self.current
            .lock()
            .as_ref()
            .map(|c| c.conn.clone())
            .ok_or_else(|| unavailable("no master known (asking the sentinels)"))
    }

    /// Whether a master is known.
    pub(super) fn known(&self) -> bool {
        self.current.lock().is_some()
    }

    /// Notes a failed command: a `-READONLY` reply means the master was demoted, so the
    /// command connection is dropped and the pub/sub loop asks the Sentinels again.
    pub(super) fn failed(&self, e: &RedisError) {
        if let Mode::Sentinel { master, .. } = &self.mode {
            if is_read_only(e) {
                let old = self.current.lock().take();
                if let Some(old) = old {
                    tracing::warn!(
                        master = %master,
                        addr = %old.addr,
                        "redis master answers READONLY (demoted); asking the sentinels again"
                    );
                }
                self.lost.notify_one();
            }
        }
    }

    /// Resolves when the current master turned out to be a replica.
    pub(super) async fn lost(&self) {
        self.lost.notified().await;
    }

    /// The client to open the pub/sub connection with: with Sentinel, the master the
    /// Sentinels name now (which also becomes the command connection's target).
    pub(super) async fn pubsub_client(&self) -> Result<Client, BrokerError> {
        let Mode::Sentinel { client, master } = &self.mode else {
            return self
                .current
                .lock()
                .as_ref()
                .map(|c| c.client.clone())
                .ok_or_else(|| unavailable("no redis"));
        };
        let ask = async {
            let mut sentinels = client.lock().await;
            sentinels.async_get_client().await
        };
        let found = match tokio::time::timeout(self.timeout, ask).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return Err(unavailable(format!("sentinels name no master: {e}"))),
            Err(_) => return Err(unavailable("sentinels did not answer in time")),
        };
        let addr = found.get_connection_info().addr().to_string();
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|c| c.addr == addr) {
            return Ok(found);
        }
        let conn = ConnectionManager::new_lazy_with_config(found.clone(), self.config.clone())
            .map_err(unavailable)?;
        tracing::info!(master = %master, %addr, "redis master found through the sentinels");
        *current = Some(Current {
            addr,
            client: found.clone(),
            conn,
        });
        Ok(found)
    }
}
