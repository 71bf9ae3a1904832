//! `duplex`: the WebSocket toolbox — an echo server for conformance and benchmarks, and the
//! Autobahn client driver; see `duplex --help`.

#![forbid(unsafe_code)]

mod autobahn;
mod bench;
mod connect;
mod echo;
mod h2bridge;
mod serve;

use clap::{Parser, Subcommand};

/// mimalloc rather than the system allocator: tokio allocates every task and every socket
/// registration cache-line aligned, which glibc pads by up to a line each; with mimalloc an
/// idle connection of `duplex echo` costs about 30% less memory (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// duplex: fast, correct WebSocket tools.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, about, propagate_version = true)]
struct Cli {
    /// Log filter (e.g. `info`, `duplex=debug`); also read from RUST_LOG.
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Echo every text and binary message back (the conformance and benchmark server).
    Echo(echo::Args),
    /// Run the Autobahn testsuite's client cases against its fuzzingserver.
    AutobahnClient(autobahn::Args),
    /// Relay HTTP/1.1 WebSocket clients to a server over HTTP/2 (RFC 8441), bytes unparsed:
    /// the Autobahn server suite through HTTP/2.
    #[command(hide = true)]
    AutobahnH2Bridge(h2bridge::Args),
    /// Load-test a WebSocket server: echo, handshakes, idle connections, hub fan-out.
    Bench(bench::Args),
    /// Connect to a WebSocket server: interactive on a terminal, line by line in a pipe.
    Connect(connect::Args),
    /// Run the real-time hub: pub/sub channels over WebSocket, HTTP API and demo pages.
    Serve(Box<serve::Args>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `serve` installs its own subscriber (it has a JSON format and a config file).
    let command = match cli.command {
        Command::Serve(args) => return serve::run(*args, &cli.log),
        other => other,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match command {
        Command::Echo(args) => echo::run(args),
        Command::AutobahnClient(args) => autobahn::run(args),
        Command::AutobahnH2Bridge(args) => h2bridge::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Connect(args) => connect::run(args),
        Command::Serve(args) => serve::run(*args, &cli.log),
    }
}
