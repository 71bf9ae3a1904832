//! Builds the fuzz targets of `fuzz/` with the stable toolchain and replays their seeds.
//!
//! `cargo fuzz` wants a nightly toolchain for its sanitizer flags, but the coverage
//! instrumentation libFuzzer needs is reachable from stable through `-C passes=sancov-module`
//! and LLVM arguments. So this builds the same binaries `cargo fuzz build -s none` would:
//! instrumented, with debug assertions, `--cfg fuzzing`, and the flags applied only to the
//! target (not to build scripts or proc macros, hence the explicit `--target`).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{cmd, step::Outcome, workspace::Workspace};

/// Fuzz each target for this many seconds after the replay (default 0: replay only).
pub(crate) const FUZZ_SECONDS: &str = "DUPLEX_FUZZ_SECONDS";

const RUSTFLAGS: &[&str] = &[
    "--cfg=fuzzing",
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// The `fuzz-build` step.
pub(crate) fn run(ws: &Workspace) -> Result<Outcome> {
    let dir = ws.path("fuzz");
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Ok(Outcome::Skipped(
            "fuzz/Cargo.toml does not exist yet".into(),
        ));
    }
    let seconds: u64 = match env::var(FUZZ_SECONDS) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{FUZZ_SECONDS}={value} is not a number of seconds"))?,
        Err(_) => 0,
    };
    let out = ws.target.join("fuzz");
    let targets = build(ws, &manifest, &out)?;
    if targets.is_empty() {
        bail!("fuzz/ built no fuzz target binaries");
    }
    for (name, exe) in &targets {
        let seeds = dir.join("seeds").join(name);
        let artifacts = out.join("artifacts").join(name);
        fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        let mut replay = Command::new(exe);
        replay.arg(format!("-artifact_prefix={}/", artifacts.display()));
        if seeds.is_dir() {
            // Runs every seed once: a crash or a failed assertion fails the step.
            replay.arg("-runs=0").arg(&seeds);
        } else {
            println!(
                "{name}: no seeds in {}; running one empty input",
                seeds.display()
            );
            replay.arg("-runs=1");
        }
        cmd::run(&mut replay, Duration::from_secs(5 * 60))?;
        if seconds > 0 {
            let corpus = out.join("corpus").join(name);
            fs::create_dir_all(&corpus)?;
            let mut fuzz = Command::new(exe);
            fuzz.arg(format!("-artifact_prefix={}/", artifacts.display()))
                .arg(format!("-max_total_time={seconds}"))
                .arg(&corpus);
            if seeds.is_dir() {
                fuzz.arg(&seeds);
            }
            cmd::run(&mut fuzz, Duration::from_secs(seconds + 60))?;
        }
    }
    Ok(Outcome::Passed(format!("{} targets", targets.len())))
}

/// Builds every binary of the fuzz crate; returns (name, executable) pairs.
fn build(ws: &Workspace, manifest: &Path, out: &Path) -> Result<Vec<(String, PathBuf)>> {
    let host = host_triple()?;
    let mut build = ws.cargo();
    build
        .env("CARGO_TARGET_DIR", out)
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        .arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .args(["--release", "--bins", "--target", &host])
        .args(["--message-format", "json-render-diagnostics"]);
    println!("$ {}", cmd::show(&build));
    let messages = cmd::stdout_of(&mut build, Duration::from_secs(30 * 60))?;
    let mut targets = Vec::new();
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            targets.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    Ok(targets)
}

fn host_triple() -> Result<String> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let info = cmd::stdout_of(Command::new(rustc).arg("-vV"), Duration::from_secs(60))?;
    info.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` printed no host triple")
}
