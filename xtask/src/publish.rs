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
    forget_packaged_builds(ws);
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

/// Removes what an earlier run of this step left behind of the packages of [`LIBRARIES`].
///
/// Cargo takes a registry package to be immutable. The temporary registry's packages are
/// unpacked under `$CARGO_HOME/registry/src/-HASH/` (a `file://` registry has no host, hence
/// the leading `-`) and never unpacked again while that directory exists, and their builds
/// are reused by version: a second run would verify `duplex` against the `duplex-proto` of
/// the first. So both go: the unpacked sources and archives of those crates in local
/// registries, and the builds whose dep-info does not name the workspace's own sources
/// (`crates/...`). Dependencies stay cached.
fn forget_packaged_builds(ws: &Workspace) {
    let is_library_dir = |name: &str| {
        LIBRARIES.iter().any(|library| {
            name.strip_prefix(library)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|version| version.starts_with(|c: char| c.is_ascii_digit()))
        })
    };
    if let Some(home) = cargo_home() {
        for kind in ["src", "cache"] {
            let Ok(registries) = std::fs::read_dir(home.join("registry").join(kind)) else {
                continue;
            };
            for registry in registries.flatten() {
                if !registry.file_name().to_string_lossy().starts_with('-') {
                    continue;
                }
                let Ok(packages) = std::fs::read_dir(registry.path()) else {
                    continue;
                };
                for package in packages.flatten() {
                    let name = package.file_name().to_string_lossy().into_owned();
                    if is_library_dir(name.trim_end_matches(".crate")) {
                        let path = package.path();
                        let _ = std::fs::remove_dir_all(&path);
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
    }
    let debug = ws.target.join("debug");
    let Ok(entries) = std::fs::read_dir(debug.join("deps")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".d"))
        else {
            continue;
        };
        let Some((crate_name, hash)) = stem.rsplit_once('-') else {
            continue;
        };
        let package = crate_name.replace('_', "-");
        if !LIBRARIES.contains(&package.as_str()) {
            continue;
        }
        let packaged = std::fs::read_to_string(&path).is_ok_and(|info| {
            info.lines()
                .next()
                .and_then(|line| line.split_once(": "))
                .is_some_and(|(_, sources)| !sources.starts_with("crates/"))
        });
        if !packaged {
            continue;
        }
        let fingerprint = debug.join(".fingerprint").join(format!("{package}-{hash}"));
        let _ = std::fs::remove_dir_all(fingerprint);
        let deps = debug.join("deps");
        for file in [
            format!("{stem}.d"),
            format!("lib{stem}.rlib"),
            format!("lib{stem}.rmeta"),
        ] {
            let _ = std::fs::remove_file(deps.join(file));
        }
    }
}

/// `$CARGO_HOME`, or its default `~/.cargo`.
fn cargo_home() -> Option<std::path::PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(Into::into)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cargo")))
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
/// features (today duplex's `tls`, `hyper` and `axum`: eight `cargo check`s): every combination
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
