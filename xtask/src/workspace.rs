//! Where things are: the repository, cargo's target directory and the `duplex` binary.

use std::{
    env, fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::cmd;

/// Overrides the `duplex` binary that autobahn, peers and e2e use (skips the release build).
pub(crate) const DUPLEX_BIN: &str = "DUPLEX_BIN";

/// Paths every step needs.
#[derive(Debug)]
pub(crate) struct Workspace {
    /// The repository root (where the workspace `Cargo.toml` is).
    pub(crate) root: PathBuf,
    /// Cargo's target directory (honours `CARGO_TARGET_DIR`).
    pub(crate) target: PathBuf,
}

impl Workspace {
    /// Locates the workspace; asks cargo for the target directory so that
    /// `CARGO_TARGET_DIR` and `.cargo/config.toml` are both respected.
    pub(crate) fn locate() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask is not inside a workspace")?
            .to_path_buf();
        let metadata = cmd::stdout_of(
            Command::new(cargo()).current_dir(&root).args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
            ]),
            Duration::from_secs(120),
        )?;
        let metadata: Value =
            serde_json::from_str(&metadata).context("parsing `cargo metadata` output")?;
        let target = metadata["target_directory"]
            .as_str()
            .context("`cargo metadata` gave no target_directory")?
            .into();
        Ok(Self { root, target })
    }

    /// A `cargo` command that runs at the workspace root.
    pub(crate) fn cargo(&self) -> Command {
        let mut command = Command::new(cargo());
        command.current_dir(&self.root);
        command
    }

    /// A path below the repository root.
    pub(crate) fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// The release `duplex` binary: `$DUPLEX_BIN` if set, otherwise built once here with
    /// `cargo build --release` and located through cargo's own artifact messages.
    pub(crate) fn build_duplex(&self) -> Result<PathBuf> {
        if let Some(bin) = env::var_os(DUPLEX_BIN) {
            let bin = PathBuf::from(bin);
            if !bin.is_file() {
                bail!("{DUPLEX_BIN}={} is not a file", bin.display());
            }
            println!("using {DUPLEX_BIN}={} (no release build)", bin.display());
            return Ok(bin);
        }
        let mut build = self.cargo();
        build
            .args([
                "build",
                "--release",
                "--package",
                "duplex-cli",
                "--bin",
                "duplex",
            ])
            .args(["--message-format", "json-render-diagnostics"]);
        println!("$ {}", cmd::show(&build));
        let messages = cmd::stdout_of(&mut build, Duration::from_secs(30 * 60))?;
        for line in messages.lines() {
            let Ok(message) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if message["reason"] == "compiler-artifact" && message["target"]["name"] == "duplex" {
                if let Some(path) = message["executable"].as_str() {
                    return self.keep(Path::new(path));
                }
            }
        }
        bail!("cargo built no `duplex` executable")
    }

    /// Copies the freshly built binary to a path of this checkout's own. Several checkouts
    /// may share one `CARGO_TARGET_DIR`, and all of them build to the same `release/duplex`;
    /// the copy makes sure a run tests the code of the checkout that started it.
    fn keep(&self, built: &Path) -> Result<PathBuf> {
        let mut hasher = DefaultHasher::new();
        self.root.hash(&mut hasher);
        let dir = self
            .target
            .join("xtask")
            .join(format!("{:016x}", hasher.finish()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let kept = dir.join("duplex");
        fs::copy(built, &kept)
            .with_context(|| format!("copying {} to {}", built.display(), kept.display()))?;
        Ok(kept)
    }
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}
