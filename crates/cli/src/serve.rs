//! `duplex serve`: run the real-time hub.
//!
//! Settings come from, in increasing priority: built-in defaults, the TOML file given with
//! `--config`, `DUPLEX_*` environment variables, and flags. `--print-config` shows the
//! result (secrets redacted) and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::ArgAction;
use duplex_hub::config::{redact_url, LogFormat, MissingChannels, Secret};
use duplex_hub::{Config, Server};

/// Flags of `duplex serve`. Each has a `DUPLEX_*` environment variable.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// TOML configuration file (see `--print-config` for every key and its default).
    #[arg(long, env = "DUPLEX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "DUPLEX_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Print the effective configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    /// Log format [default: text].
    #[arg(long, env = "DUPLEX_LOG_FORMAT", value_name = "text|json")]
    log_format: Option<String>,
    /// Log filter for the server, e.g. `info` or `duplex_hub=debug`; overrides `log.level`
    /// of the config file, which overrides `--log`.
    #[arg(long, env = "DUPLEX_LOG_LEVEL", value_name = "FILTER")]
    log_level: Option<String>,
    /// This node's id [default: random].
    #[arg(long, env = "DUPLEX_NODE")]
    node: Option<String>,
    /// Bearer key that enables `POST /api/publish`. On the command line it is visible to
    /// every local user: prefer `--api-key-file` or the environment variable.
    #[arg(long, env = "DUPLEX_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// File holding the API key (one line), read at startup.
    #[arg(long, env = "DUPLEX_API_KEY_FILE", value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// HS256 secret for client JWTs. On the command line it is visible to every local user:
    /// prefer `--jwt-secret-file` or the environment variable.
    #[arg(long, env = "DUPLEX_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// File holding the HS256 secret for client JWTs (one line), read at startup.
    #[arg(long, env = "DUPLEX_JWT_SECRET_FILE", value_name = "FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// PEM public key (RSA for RS256, EC P-256 for ES256) for client JWTs.
    #[arg(long, env = "DUPLEX_JWT_PUBLIC_KEY_FILE", value_name = "FILE")]
    jwt_public_key_file: Option<PathBuf>,
    /// URL of the identity provider's JWKS document: client JWTs are verified with the key
    /// their `kid` names, fetched and refreshed from there (see `auth.jwks_*` in the config).
    #[arg(long, env = "DUPLEX_JWKS_URL", value_name = "URL")]
    jwks_url: Option<String>,
    /// Accepted JWT audiences (`aud`), comma-separated; tokens must name one of them
    /// [default: none, and a token with an `aud` claim is refused].
    #[arg(
        long,
        env = "DUPLEX_JWT_AUDIENCES",
        value_delimiter = ',',
        value_name = "AUDIENCES"
    )]
    jwt_audiences: Option<Vec<String>>,
    /// Accepted JWT issuer (`iss`) [default: not checked].
    #[arg(long, env = "DUPLEX_JWT_ISSUER", value_name = "ISSUER")]
    jwt_issuer: Option<String>,
    /// What a token without a `channels` claim may use: `all`, `none`, or `auto` (all when
    /// audiences are set, else none) [default: auto].
    #[arg(long, env = "DUPLEX_MISSING_CHANNELS", value_name = "auto|all|none")]
    missing_channels: Option<String>,
    /// Accept connections without a token [default: true].
    #[arg(long, env = "DUPLEX_ANONYMOUS", action = ArgAction::Set, value_name = "BOOL")]
    anonymous: Option<bool>,
    /// Extra allowed origins, comma-separated (`*` for any).
    #[arg(
        long,
        env = "DUPLEX_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGINS"
    )]
    allowed_origins: Option<Vec<String>>,
    /// Most concurrent WebSocket connections [default: 10000].
    #[arg(long, env = "DUPLEX_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Most concurrent connections per IP address, 0 for no limit [default: 1000].
    #[arg(long, env = "DUPLEX_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    max_connections_per_ip: Option<usize>,
    /// Largest incoming message in bytes [default: 65536].
    #[arg(long, env = "DUPLEX_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    max_message_size: Option<usize>,
    /// Largest publication `data` in bytes [default: 32768].
    #[arg(long, env = "DUPLEX_MAX_PUBLICATION_SIZE", value_name = "BYTES")]
    max_publication_size: Option<usize>,
    /// Sustained commands per second per connection [default: 100].
    #[arg(long, env = "DUPLEX_COMMANDS_PER_SECOND", value_name = "N")]
    commands_per_second: Option<u32>,
    /// Outbound bytes queued per connection before it is a slow consumer [default: 1048576].
    #[arg(long, env = "DUPLEX_MAX_QUEUE_BYTES", value_name = "BYTES")]
    max_queue_bytes: Option<usize>,
    /// Server ping interval, e.g. `25s` [default: 25s].
    #[arg(long, env = "DUPLEX_PING_INTERVAL", value_parser = humantime::parse_duration, value_name = "DURATION")]
    ping_interval: Option<Duration>,
    /// Time allowed for a pong, e.g. `10s` [default: 10s].
    #[arg(long, env = "DUPLEX_PONG_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pong_timeout: Option<Duration>,
    /// Accept permessage-deflate from clients that offer it (`websocket.compression.enabled`)
    /// [default: off].
    #[arg(long, env = "DUPLEX_COMPRESSION")]
    compression: bool,
    /// Longest graceful shutdown [default: 10s].
    #[arg(long, env = "DUPLEX_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    shutdown_timeout: Option<Duration>,
    /// Share channels with other nodes through this Redis (sets `broker = "redis"`), e.g.
    /// `redis://127.0.0.1:6379/0`. A URL with a password is better given in the
    /// environment variable or `--redis-url-file`.
    #[arg(
        long = "redis",
        env = "DUPLEX_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    redis_url: Option<String>,
    /// Share channels with other nodes through this Redis Cluster (sets
    /// `broker = "redis-cluster"`): seed node URLs, comma-separated, e.g.
    /// `redis://127.0.0.1:7000,redis://127.0.0.1:7001`.
    #[arg(
        long = "redis-cluster",
        env = "DUPLEX_REDIS_CLUSTER",
        hide_env_values = true,
        value_name = "URLS"
    )]
    redis_cluster: Option<String>,
    /// File holding the Redis URL (one line, e.g. `redis://:PASSWORD@10.0.0.10:6379/0`),
    /// read at startup; sets `broker = "redis"`.
    #[arg(long, env = "DUPLEX_REDIS_URL_FILE", value_name = "FILE")]
    redis_url_file: Option<PathBuf>,
    /// Find the Redis master through these Sentinels, comma-separated
    /// (`redis://127.0.0.1:26379,redis://...`; `redis.sentinels`); needs
    /// `--redis-sentinel-master` and sets `broker = "redis"`. `--redis`, if given, then only
    /// supplies the master's database and password.
    #[arg(
        long = "redis-sentinel",
        env = "DUPLEX_REDIS_SENTINEL",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "URLS"
    )]
    redis_sentinel: Vec<String>,
    /// The master's name in the Sentinels' configuration (`redis.sentinel_master`).
    #[arg(long, env = "DUPLEX_REDIS_SENTINEL_MASTER", value_name = "NAME")]
    redis_sentinel_master: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` is believed for per-IP limits,
    /// comma-separated IP addresses.
    #[arg(
        long,
        env = "DUPLEX_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "IPS"
    )]
    trusted_proxies: Option<Vec<std::net::IpAddr>>,
    /// Time a client has to send a request's head, also the idle keep-alive limit and, with
    /// TLS, the time its handshake may take [default: 10s].
    #[arg(long, env = "DUPLEX_HEADER_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    header_timeout: Option<Duration>,
    /// Largest request head (request line and headers) in bytes; larger gets 431
    /// [default: 16384].
    #[arg(long, env = "DUPLEX_MAX_HEADER_BYTES", value_name = "BYTES")]
    max_header_bytes: Option<usize>,
    /// Time an HTTP request may take, body included; past it 408 [default: 30s].
    #[arg(long, env = "DUPLEX_REQUEST_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    request_timeout: Option<Duration>,
    /// Prefix length by which per-IP limits count IPv6 clients [default: 64].
    #[arg(long, env = "DUPLEX_IPV6_PREFIX", value_name = "BITS")]
    ipv6_prefix: Option<u8>,
    /// Serve https:// and wss://: the PEM certificate chain, leaf first (`tls.cert`; needs
    /// --tls-key). Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "DUPLEX_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert, PKCS#8, PKCS#1 or SEC1 (`tls.key`).
    #[arg(long, env = "DUPLEX_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Run the demo ticker feed on `ticker:prices` [default: true].
    #[arg(long, env = "DUPLEX_DEMO_TICKER", action = ArgAction::Set, value_name = "BOOL")]
    demo_ticker: Option<bool>,
}

impl Args {
    /// Defaults, then the file, then environment and flags.
    fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        set(&mut c.listen, &self.listen);
        if let Some(format) = &self.log_format {
            c.log.format = match format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => anyhow::bail!("--log-format must be text or json, not {other:?}"),
            };
        }
        set(&mut c.log.level, &self.log_level);
        if self.node.is_some() {
            c.node.clone_from(&self.node);
        }
        self.apply_secrets(&mut c)?;
        set(&mut c.auth.anonymous, &self.anonymous);
        set(&mut c.auth.allowed_origins, &self.allowed_origins);
        set(&mut c.limits.max_connections, &self.max_connections);
        set(
            &mut c.limits.max_connections_per_ip,
            &self.max_connections_per_ip,
        );
        set(&mut c.limits.max_message_size, &self.max_message_size);
        set(
            &mut c.limits.max_publication_size,
            &self.max_publication_size,
        );
        set(&mut c.limits.commands_per_second, &self.commands_per_second);
        set(&mut c.limits.max_queue_bytes, &self.max_queue_bytes);
        set(&mut c.websocket.ping_interval, &self.ping_interval);
        set(&mut c.websocket.pong_timeout, &self.pong_timeout);
        if self.compression {
            c.websocket.compression.enabled = true;
        }
        set(&mut c.shutdown_timeout, &self.shutdown_timeout);
        set(&mut c.demo.ticker, &self.demo_ticker);
        set(&mut c.limits.trusted_proxies, &self.trusted_proxies);
        set(&mut c.limits.header_timeout, &self.header_timeout);
        set(&mut c.limits.max_header_bytes, &self.max_header_bytes);
        set(&mut c.limits.request_timeout, &self.request_timeout);
        set(&mut c.limits.ipv6_prefix, &self.ipv6_prefix);
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            anyhow::bail!(
                "--tls-cert and --tls-key (or DUPLEX_TLS_CERT and DUPLEX_TLS_KEY) go together"
            );
        }
        if self.tls_cert.is_some() {
            c.tls.cert.clone_from(&self.tls_cert);
            c.tls.key.clone_from(&self.tls_key);
        }
        c.validate()?;
        Ok(c)
    }
}

impl Args {
    /// Keys, secrets and the Redis URL: a flag (or its variable) replaces every other
    /// setting of the same thing from the file; two flags for one thing are refused.
    fn apply_secrets(&self, c: &mut Config) -> anyhow::Result<()> {
        let keys = [
            self.jwt_secret.is_some(),
            self.jwt_secret_file.is_some(),
            self.jwt_public_key_file.is_some(),
            self.jwks_url.is_some(),
        ];
        if keys.iter().filter(|set| **set).count() > 1 {
            anyhow::bail!(
                "--jwt-secret, --jwt-secret-file, --jwt-public-key-file and --jwks-url (or \
                 their DUPLEX_* variables) are mutually exclusive"
            );
        }
        if keys.contains(&true) {
            c.auth.jwt_secret = self.jwt_secret.as_deref().map(Secret::from);
            c.auth.jwt_secret_file.clone_from(&self.jwt_secret_file);
            c.auth
                .jwt_public_key_file
                .clone_from(&self.jwt_public_key_file);
            c.auth.jwks_url.clone_from(&self.jwks_url);
        }
        if let Some(audiences) = &self.jwt_audiences {
            c.auth.audiences = audiences
                .iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect();
        }
        if self.jwt_issuer.is_some() {
            c.auth.issuer.clone_from(&self.jwt_issuer);
        }
        if let Some(policy) = &self.missing_channels {
            c.auth.missing_channels = match policy.as_str() {
                "auto" => MissingChannels::Auto,
                "all" => MissingChannels::All,
                "none" => MissingChannels::None,
                other => {
                    anyhow::bail!("--missing-channels must be auto, all or none, not {other:?}")
                }
            };
        }
        if self.api_key.is_some() && self.api_key_file.is_some() {
            anyhow::bail!("--api-key and --api-key-file are mutually exclusive");
        }
        if self.api_key.is_some() || self.api_key_file.is_some() {
            c.api.key = self.api_key.as_deref().map(Secret::from);
            c.api.key_file.clone_from(&self.api_key_file);
        }
        if self.redis_url.is_some() && self.redis_url_file.is_some() {
            anyhow::bail!("--redis and --redis-url-file are mutually exclusive");
        }
        if self.redis_url.is_some() || self.redis_url_file.is_some() {
            c.redis_url = self.redis_url.as_deref().map(Secret::from);
            c.redis_url_file.clone_from(&self.redis_url_file);
            c.broker = duplex_hub::config::BrokerKind::Redis;
        }
        if let Some(nodes) = &self.redis_cluster {
            if self.redis_url.is_some()
                || self.redis_url_file.is_some()
                || !self.redis_sentinel.is_empty()
            {
                anyhow::bail!(
                    "--redis-cluster and --redis/--redis-url-file/--redis-sentinel are mutually exclusive"
                );
            }
            c.redis_cluster = Some(Secret::from(nodes.as_str()));
            c.broker = duplex_hub::config::BrokerKind::RedisCluster;
        }
        if !self.redis_sentinel.is_empty() {
            c.redis.sentinels = self
                .redis_sentinel
                .iter()
                .map(|s| Secret::from(s.as_str()))
                .collect();
            c.broker = duplex_hub::config::BrokerKind::Redis;
        }
        if self.redis_sentinel_master.is_some() {
            c.redis
                .sentinel_master
                .clone_from(&self.redis_sentinel_master);
        }
        Ok(())
    }

    /// Secrets that came as flags: readable by any local user in the process list
    /// (`/proc/PID/cmdline`). A value with its variable unset was a flag.
    fn secrets_on_the_command_line(&self) -> Vec<(&'static str, &'static str)> {
        let flag = |value: bool, var: &str| value && std::env::var_os(var).is_none();
        let mut found = Vec::new();
        if flag(self.jwt_secret.is_some(), "DUPLEX_JWT_SECRET") {
            found.push(("--jwt-secret", "--jwt-secret-file or DUPLEX_JWT_SECRET"));
        }
        if flag(self.api_key.is_some(), "DUPLEX_API_KEY") {
            found.push(("--api-key", "--api-key-file or DUPLEX_API_KEY"));
        }
        let password = self
            .redis_url
            .as_deref()
            .is_some_and(|url| redact_url(url) != url);
        if flag(password, "DUPLEX_REDIS_URL") {
            found.push((
                "--redis with a password",
                "--redis-url-file or DUPLEX_REDIS_URL",
            ));
        }
        let cluster_password = self
            .redis_cluster
            .as_deref()
            .is_some_and(|urls| urls.split(',').any(|url| redact_url(url) != url));
        if flag(cluster_password, "DUPLEX_REDIS_CLUSTER") {
            found.push(("--redis-cluster with a password", "DUPLEX_REDIS_CLUSTER"));
        }
        let password = self
            .redis_sentinel
            .iter()
            .any(|url| redact_url(url) != *url);
        if flag(password, "DUPLEX_REDIS_SENTINEL") {
            found.push((
                "--redis-sentinel with a password",
                "DUPLEX_REDIS_SENTINEL or redis.sentinels",
            ));
        }
        found
    }
}

fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        slot.clone_from(v);
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid log filter {:?}", config.log.level))?;
    // Colour only on a terminal: a log file, a pipe or a log collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    // A subscriber installed earlier by the binary wins; ours is then not needed.
    let _ = match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        _ => builder.try_init(),
    };
    Ok(())
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Runs `duplex serve` on a multi-threaded runtime. `global_log` is the `--log` filter of the
/// `duplex` command, used when neither `--log-level` nor the config file sets one.
pub(crate) fn run(args: Args, global_log: &str) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args, global_log))
}

async fn serve(args: Args, global_log: &str) -> anyhow::Result<()> {
    let mut config = args.config()?;
    if args.log_level.is_none()
        && config.log.level == duplex_hub::config::LogConfig::default().level
    {
        global_log.clone_into(&mut config.log.level);
    }
    if args.print_config {
        print!("{}", config.to_toml_redacted());
        return Ok(());
    }
    init_logging(&config)?;
    for (flag, instead) in args.secrets_on_the_command_line() {
        tracing::warn!(
            "{flag} on the command line is visible to every local user in the process list; \
             use {instead}"
        );
    }
    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    let scheme = if server.is_tls() { "https" } else { "http" };
    tracing::info!(%addr, node = server.hub().node_id(), tls = server.is_tls(), "duplex serve listening: {scheme}://{addr}/");
    server.run(shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn config(argv: &[&str]) -> anyhow::Result<Config> {
        let mut full = vec!["duplex-serve"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full)?.args.config()
    }

    #[test]
    fn defaults_listen_on_loopback_8080() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.demo.ticker && c.auth.anonymous);
    }

    #[test]
    fn flags_override_the_file() {
        let path = std::env::temp_dir().join(format!("duplex-serve-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\n[limits]\nmax_connections = 7\ncommands_per_second = 3\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let c = config(&[
            "--config",
            file,
            "--max-connections",
            "9",
            "--anonymous",
            "false",
        ]);
        std::fs::remove_file(&path).unwrap();
        let c = c.unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000", "from the file");
        assert_eq!(c.limits.max_connections, 9, "the flag wins");
        assert_eq!(c.limits.commands_per_second, 3);
        assert!(!c.auth.anonymous);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(config(&["--log-format", "xml"]).is_err());
        assert!(config(&["--max-connections", "0"]).is_err());
        assert!(config(&["--ping-interval", "soon"]).is_err());
        assert!(config(&["--jwt-secret", "short"]).is_err());
        assert!(config(&["--config", "/nonexistent/duplex.toml"]).is_err());
    }

    #[test]
    fn redis_cluster_flag_selects_the_cluster_broker() {
        let c = config(&[
            "--redis-cluster",
            "redis://127.0.0.1:7000, redis://:pw-secret@127.0.0.1:7001",
        ])
        .unwrap();
        assert_eq!(c.broker, duplex_hub::config::BrokerKind::RedisCluster);
        assert_eq!(
            c.redis_cluster_nodes(),
            [
                "redis://127.0.0.1:7000",
                "redis://:pw-secret@127.0.0.1:7001"
            ]
        );
        let shown = c.to_toml_redacted();
        assert!(shown.contains("broker = \"redis-cluster\""), "{shown}");
        assert!(!shown.contains("pw-secret"), "{shown}");
        assert!(config(&["--redis-cluster", "redis://h:1", "--redis", "redis://h"]).is_err());
    }

    #[test]
    fn redis_flag_selects_the_redis_broker() {
        let c = config(&[
            "--redis",
            "redis://127.0.0.1:6390/0",
            "--trusted-proxies",
            "127.0.0.2",
        ])
        .unwrap();
        assert_eq!(c.broker, duplex_hub::config::BrokerKind::Redis);
        assert_eq!(c.redis_url.as_deref(), Some("redis://127.0.0.1:6390/0"));
        assert_eq!(c.limits.trusted_proxies.len(), 1);
        assert!(config(&[]).unwrap().redis_url.is_none());
    }

    #[test]
    fn secrets_from_files() {
        let dir = std::env::temp_dir().join(format!("duplex-serve-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let jwt = file("jwt", "jwt-secret-in-a-file-0123\n");
        let key = file("key", "api-key-in-a-file\n");
        let url = file("url", "redis://:hunter2-pass@127.0.0.1:6390/0\n");
        let c = config(&[
            "--jwt-secret-file",
            &jwt,
            "--api-key-file",
            &key,
            "--redis-url-file",
            &url,
        ])
        .unwrap();
        assert_eq!(c.broker, duplex_hub::config::BrokerKind::Redis);
        let shown = c.to_toml_redacted();
        assert!(
            shown.contains("jwt_secret_file") && shown.contains("key_file"),
            "{shown}"
        );
        let c = c.with_secret_files().unwrap();
        assert_eq!(
            c.auth.jwt_secret.as_deref(),
            Some("jwt-secret-in-a-file-0123")
        );
        assert_eq!(c.api.key.as_deref(), Some("api-key-in-a-file"));
        assert_eq!(
            c.redis_url.as_deref(),
            Some("redis://:hunter2-pass@127.0.0.1:6390/0")
        );
        let shown = c.to_toml_redacted();
        for secret in ["jwt-secret-in", "api-key-in", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("redis://:<redacted>@127.0.0.1:6390/0"),
            "{shown}"
        );

        assert!(config(&[
            "--jwt-secret",
            "0123456789abcdef!",
            "--jwt-secret-file",
            &jwt
        ])
        .is_err());
        assert!(config(&["--api-key", "0123456789", "--api-key-file", &key]).is_err());
        assert!(config(&["--redis", "redis://h", "--redis-url-file", &url]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sentinel_flags_select_the_redis_broker() {
        let c = config(&[
            "--redis-sentinel",
            "redis://127.0.0.1:26379,redis://127.0.0.1:26380",
            "--redis-sentinel-master",
            "main",
        ])
        .unwrap();
        assert_eq!(c.broker, duplex_hub::config::BrokerKind::Redis);
        let sentinels: Vec<&str> = c.redis.sentinels.iter().map(|s| s.expose()).collect();
        assert_eq!(
            sentinels,
            ["redis://127.0.0.1:26379", "redis://127.0.0.1:26380"]
        );
        let with_password = config(&[
            "--redis-sentinel",
            "redis://:sentinel-pw@127.0.0.1:26379",
            "--redis-sentinel-master",
            "main",
        ])
        .unwrap();
        let shown = with_password.to_toml_redacted();
        assert!(!shown.contains("sentinel-pw"), "{shown}");
        assert!(
            shown.contains("redis://:<redacted>@127.0.0.1:26379"),
            "{shown}"
        );
        assert!(!format!("{with_password:?}").contains("sentinel-pw"));
        assert_eq!(c.redis.sentinel_master.as_deref(), Some("main"));
        assert!(
            config(&["--redis-sentinel", "redis://127.0.0.1:26379"]).is_err(),
            "a master name is needed"
        );
        assert!(
            config(&[
                "--redis-sentinel",
                "http://h:1",
                "--redis-sentinel-master",
                "m"
            ])
            .is_err(),
            "redis:// only"
        );
    }

    #[test]
    fn redis_password_is_redacted_and_flagged() {
        let argv = [
            "duplex-serve",
            "--redis",
            "redis://app:hunter2-pass@127.0.0.1:6390/0",
        ];
        let args = Cli::try_parse_from(argv).unwrap().args;
        let shown = args.config().unwrap().to_toml_redacted();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("redis://app:<redacted>@127.0.0.1:6390/0"),
            "{shown}"
        );
        if std::env::var_os("DUPLEX_REDIS_URL").is_none() {
            assert_eq!(args.secrets_on_the_command_line().len(), 1);
        }
        let plain = Cli::try_parse_from(["duplex-serve", "--redis", "redis://127.0.0.1:6390/0"]);
        assert!(plain.unwrap().args.secrets_on_the_command_line().is_empty());
    }

    #[test]
    fn audience_issuer_and_missing_channels() {
        let c = config(&[
            "--jwt-audiences",
            "duplex,chat",
            "--jwt-issuer",
            "https://id.example",
            "--missing-channels",
            "all",
        ])
        .unwrap();
        assert_eq!(c.auth.audiences, ["duplex", "chat"]);
        assert_eq!(c.auth.issuer.as_deref(), Some("https://id.example"));
        assert_eq!(c.auth.missing_channels, MissingChannels::All);
        assert_eq!(
            config(&[]).unwrap().auth.missing_channels,
            MissingChannels::Auto
        );
        assert!(config(&["--missing-channels", "some"]).is_err());
    }

    #[test]
    fn durations_and_secrets() {
        let c = config(&["--ping-interval", "5s", "--jwt-secret", "0123456789abcdef!"]).unwrap();
        assert_eq!(c.websocket.ping_interval, Duration::from_secs(5));
        assert!(!c.to_toml_redacted().contains("0123456789abcdef!"));
    }

    #[test]
    fn tls_files_go_together() {
        let c = config(&["--tls-cert", "cert.pem", "--tls-key", "key.pem"]).unwrap();
        assert_eq!(
            c.tls.cert.as_deref(),
            Some(std::path::Path::new("cert.pem"))
        );
        assert_eq!(c.tls.key.as_deref(), Some(std::path::Path::new("key.pem")));
        assert!(c.tls.enabled());
        assert!(!config(&[]).unwrap().tls.enabled());
        if std::env::var_os("DUPLEX_TLS_KEY").is_none() {
            assert!(config(&["--tls-cert", "cert.pem"]).is_err());
        }
        if std::env::var_os("DUPLEX_TLS_CERT").is_none() {
            assert!(config(&["--tls-key", "key.pem"]).is_err());
        }
    }

    #[test]
    fn http_edge_limits() {
        let c = config(&[
            "--header-timeout",
            "3s",
            "--max-header-bytes",
            "8192",
            "--request-timeout",
            "1m",
            "--ipv6-prefix",
            "56",
        ])
        .unwrap();
        assert_eq!(c.limits.header_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.max_header_bytes, 8192);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.ipv6_prefix, 56);
        assert!(config(&["--max-header-bytes", "100"]).is_err());
        assert!(config(&["--ipv6-prefix", "129"]).is_err());
        assert!(config(&["--header-timeout", "0s"]).is_err());
    }
}
