//! `cargo xtask`: the project's test orchestration.
//!
//! `cargo xtask test` is the one command that checks everything: it installs what the selected
//! steps need (Autobahn's `wstest`, Debian packages, the peer runtimes), builds once, runs every
//! step and ends with a summary table and the line `xtask: N passed, M failed`.
//! `cargo xtask autobahn` runs the conformance suite on its own, and `--bless` records a run as
//! the new expectation.
//!
//! # Layout
//! - `step`: the steps of `cargo xtask test`, their selection and the summary.
//! - `install`: what each step needs and how it is installed when missing.
//! - `autobahn`: wstest in both roles, the committed expectations and the comparison.
//! - `bench`: `cargo xtask bench-peers`, duplex against other libraries and hubs, into
//!   docs/benchmarks.md.
//! - `fuzz`: building the fuzz targets on the stable toolchain and replaying their seeds.
//! - `publish`: `cargo package` and the feature powerset of the crates published as libraries.
//! - `cmd`: running child processes with a time limit, finding programs, free ports.
//! - `workspace`: paths of the repository and the cargo target directory, the release build.

mod autobahn;
mod bench;
mod cmd;
mod fuzz;
mod install;
mod publish;
mod step;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Test orchestration for the duplex workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what is missing, run every step, print a summary; fails if any step fails.
    Test(step::TestArgs),
    /// Run the Autobahn testsuite and compare it with autobahn/expected-*.json.
    Autobahn(autobahn::Args),
    /// Install what the selected steps need, and run nothing.
    Install(step::Selection),
    /// Benchmark duplex against tokio-tungstenite, fastwebsockets and Bun (echo), and
    /// `duplex serve` against Bun and Node `ws` hubs (CPU-pinned, repeated); write the results
    /// to docs/benchmarks.md.
    BenchPeers(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Test(args) => step::test(&args),
        Command::Autobahn(args) => autobahn::command(&args),
        Command::Install(selection) => step::install_only(&selection),
        Command::BenchPeers(args) => bench::command(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
