//! The `duplex` command.

use clap::{Parser, Subcommand};

mod serve;

/// WebSocket tools and the duplex hub server.
#[derive(Debug, Parser)]
#[command(name = "duplex", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the real-time hub: pub/sub channels over WebSocket, HTTP API and demo pages.
    Serve(serve::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args).await,
    }
}
