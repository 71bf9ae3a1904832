//! The `package` and `feature-powerset` steps: the published library crates build from
//! their packages, and in every combination of their features.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{cmd, step::Outcome, workspace::Workspace};

/// The crates published as libraries, in dependency order.
pub(crate) const LIBRARIES: [&str; 3] = ["duplex-proto", "duplex", "duplex-hub"];

/// The directories whose files go into those packages, for the dirty-tree check.
const LIBRARY_DIRS: [&str; 3] = ["crates/proto", "crates/duplex", "crates/hub"];

/// `cargo package` of [`LIBRARIES`], verified: each `.crate` is unpacked and built on its
/// own, with its path dependencies on the others resolved through a temporary local
/// registry (cargo 1.90 and later). This catches a file the build needs that the package
/// leaves out, metadata the registry would refuse, and a dependency without a version.
///
/// The packages are built in the shared target directory (`target/package/`), so the
/// dependencies compiled for one run are reused by the next.
pub(crate) fn package(ws: &Workspace, limit: Duration) -> Result<Outcome> {
    let mut command = ws.cargo();
    command.arg("package").arg("--locked");
    for library in LIBRARIES {
        command.args(["--package", library]);
    }
    // cargo refuses to package uncommitted changes (the package records the commit it was
    // made from). A fresh clone, as on CI, is clean; a working copy being edited is not,
    // and what matters here is that the files on disk package and build.
    let note = if dirty(ws) {
        command.arg("--allow-dirty");
        "uncommitted changes: packaged with --allow-dirty"
    } else {
        ""
    };
    cmd::run(&mut command, limit)?;
    Ok(Outcome::Passed(note.into()))
}

/// Whether git reports changes in the packaged directories or the workspace manifest and
/// lock file. Outside a git checkout cargo does not check, and neither does this.
fn dirty(ws: &Workspace) -> bool {
    let mut status = Command::new("git");
    status
        .current_dir(&ws.root)
        .args(["status", "--porcelain", "--"])
        .args(LIBRARY_DIRS)
        .args(["Cargo.toml", "Cargo.lock"]);
    match cmd::probe(&mut status, Duration::from_secs(60)) {
        Ok((true, out)) => !out.trim().is_empty(),
        _ => false,
    }
}

/// `cargo hack --feature-powerset check` of the `lib` target of each library that has
/// features (today duplex's `tls` and `axum`: four `cargo check`s): every combination
/// type-checks on its own, so a `#[cfg(feature)]` that forgets an import, or a feature that
/// silently needs another, is found here rather than by a user. A library without features
/// has one combination, which the `package` step already builds on its own.
///
/// `--lib` rather than cargo-hack's `--no-dev-deps`: with resolver 2, dev-dependencies add
/// no features to a build that does not compile a test target, so the result is the same,
/// and the manifests are never edited (`--no-dev-deps` rewrites them while it runs, which a
/// stopped run could leave behind).
pub(crate) fn feature_powerset(ws: &Workspace, limit: Duration) -> Result<Outcome> {
    let with_features = libraries_with_features(ws)?;
    if with_features.is_empty() {
        return Ok(Outcome::Skipped("no library has features".into()));
    }
    let mut command = ws.cargo();
    command
        .args(["hack", "--feature-powerset", "check", "--lib", "--locked"])
        // `default` only names other features (duplex: `tls`): with it, each combination
        // would be checked twice under two names.
        .args(["--exclude-features", "default"]);
    for library in &with_features {
        command.args(["--package", library]);
    }
    cmd::run(&mut command, limit)?;
    Ok(Outcome::Passed(with_features.join(", ")))
}

/// Those of [`LIBRARIES`] that declare a feature other than `default`, from `cargo metadata`.
fn libraries_with_features(ws: &Workspace) -> Result<Vec<String>> {
    let metadata = cmd::stdout_of(
        ws.cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"]),
        Duration::from_secs(120),
    )?;
    let metadata: Value =
        serde_json::from_str(&metadata).context("parsing `cargo metadata` output")?;
    let packages = metadata["packages"]
        .as_array()
        .context("`cargo metadata` gave no packages")?;
    Ok(LIBRARIES
        .iter()
        .filter(|library| {
            packages.iter().any(|package| {
                package["name"] == **library
                    && package["features"]
                        .as_object()
                        .is_some_and(|features| features.keys().any(|f| f != "default"))
            })
        })
        .map(|library| (*library).to_owned())
        .collect())
}
