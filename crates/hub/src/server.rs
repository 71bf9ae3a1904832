//! The listener: binds, serves HTTP and WebSocket on one port, shuts down gracefully.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::{Config, ConfigError};
use crate::Hub;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Binding or accepting failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The IO error.
        source: std::io::Error,
    },
}

/// A bound server: call [`Server::run`] to serve.
///
/// ```no_run
/// # async fn example() -> Result<(), duplex_hub::ServerError> {
/// let server = duplex_hub::Server::bind(duplex_hub::Config::default()).await?;
/// println!("listening on {}", server.local_addr());
/// server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    hub: Hub,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Server {
    /// Builds the hub and binds `config.listen` (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let listen = config.listen;
        let hub = Hub::new(config)?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ServerError::Io {
                context: format!("cannot listen on {listen}"),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ServerError::Io {
            context: "cannot read the bound address".into(),
            source,
        })?;
        Ok(Self {
            hub,
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The hub, e.g. to publish from the same process.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Serves until `shutdown` completes (or [`Hub::shutdown`] is called), then stops
    /// accepting, closes every WebSocket with 1001 and waits for them at most
    /// `shutdown_timeout`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let hub = self.hub;
        if hub.config().demo.ticker {
            tokio::spawn(crate::demo::run_ticker(hub.clone()));
        }
        let signal_hub = hub.clone();
        let mut down = hub.shared.shutdown_signal();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => signal_hub.shutdown(),
                _ = down.wait_for(|d| *d) => {}
            }
        });
        let mut down = hub.shared.shutdown_signal();
        let graceful = async move {
            let _ = down.wait_for(|d| *d).await;
        };
        let app = hub
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(self.listener, app).with_graceful_shutdown(graceful);
        let mut serving = tokio::spawn(async move { serve.await });
        let mut down = hub.shared.shutdown_signal();
        tokio::select! {
            result = &mut serving => {
                // axum only returns before shutdown if the listener fails for good.
                let result = result.map_err(|e| std::io::Error::other(e.to_string()));
                return match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(source)) | Err(source) => Err(ServerError::Io {
                        context: "server stopped".into(),
                        source,
                    }),
                };
            }
            _ = down.wait_for(|d| *d) => {}
        }
        let timeout = hub.config().shutdown_timeout;
        tracing::info!(connections = hub.connections(), "shutting down");
        let deadline = tokio::time::Instant::now() + timeout;
        let left = hub.drain(timeout).await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "shutdown deadline passed; dropping connections"
            );
        }
        if tokio::time::timeout_at(deadline, &mut serving)
            .await
            .is_err()
        {
            serving.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}
