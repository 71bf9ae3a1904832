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

    /// A `cargo` command that runs at the workspace root, in the environment a user's own
    /// `cargo` would have.
    ///
    /// `cargo xtask` runs under `cargo run`, which sets `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`
    /// and the like for xtask itself. Build scripts that watch one of them (ring's watches
    /// `CARGO_MANIFEST_DIR`) would see them change between this command's builds and the
    /// README's `cargo run --release -p duplex-cli`, and rebuild half the dependencies each
    /// time; so they are removed.
    pub(crate) fn cargo(&self) -> Command {
        let mut command = Command::new(cargo());
        command.current_dir(&self.root);
        for (key, _) in env::vars_os() {
            if key.to_str().is_some_and(set_by_cargo_run) {
                command.env_remove(key);
            }
        }
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

/// Whether `key` is one of the variables `cargo run` sets for the program it runs (rather
/// than one a user sets to configure cargo, such as `CARGO_TARGET_DIR` or `CARGO_HOME`).
fn set_by_cargo_run(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_cargo_run_sets_is_told_apart_from_what_users_set() {
        for key in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
        ] {
            assert!(set_by_cargo_run(key), "{key}");
        }
        for key in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "CARGO_PROFILE_RELEASE_DEBUG",
            "CARGO_TERM_COLOR",
            "CARGO_INCREMENTAL",
        ] {
            assert!(!set_by_cargo_run(key), "{key}");
        }
    }
}
