//! The JavaScript peers of `cargo xtask bench-peers` and the hub configuration of
//! `duplex serve`.
//!
//! - **Bun** comes from its npm package `@oven/bun-linux-x64`, which ships the `bun` binary
//!   itself. `bench/peers/bun/package.json` and its lock pin the version; both are copied to
//!   `<target>/bench-peers/bun` and installed there with `npm ci`, so nothing lands in the
//!   source tree and a new pin reinstalls (the copied lock is newer than the installed tree).
//! - **Node `ws`** is `bench/peers/js`'s one dependency, installed there with `npm ci` (as the
//!   interop peers of `tests/peers/node` are); `node` itself must be on the PATH.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, install, workspace::Workspace};

/// The subprotocol every hub selects when it is offered.
pub(super) const SUBPROTOCOL: &str = "duplex.v1";

/// The scope of the npm packages that ship Bun's binary.
const BUN_SCOPE: &str = "@oven";

/// What the JavaScript servers need: the two runtimes and the folder of the scripts.
#[derive(Debug)]
pub(super) struct Peers {
    pub(super) bun: PathBuf,
    pub(super) node: PathBuf,
    scripts: PathBuf,
}

impl Peers {
    /// Installs Bun and the Node modules when they are missing or stale.
    pub(super) fn install(ws: &Workspace) -> Result<Self> {
        let scripts = ws.path("bench/peers/js");
        let node = cmd::find_program("node").context("`node` is needed (Debian package nodejs)")?;
        install::npm_ci(&scripts)?;
        let bun = install_bun(ws)?;
        Ok(Self { bun, node, scripts })
    }

    /// A script of `bench/peers/js`.
    pub(super) fn script(&self, name: &str) -> PathBuf {
        self.scripts.join(name)
    }

    pub(super) fn bun_version(&self) -> Result<String> {
        version(&self.bun)
    }

    pub(super) fn node_version(&self) -> Result<String> {
        version(&self.node).map(|v| v.trim_start_matches('v').to_owned())
    }
}

fn version(program: &Path) -> Result<String> {
    let out = cmd::stdout_of(
        Command::new(program).arg("--version"),
        Duration::from_secs(30),
    )?;
    Ok(out.trim().to_owned())
}

/// `npm ci` of `bench/peers/bun` in `<target>/bench-peers/bun`; the path of the `bun` binary.
fn install_bun(ws: &Workspace) -> Result<PathBuf> {
    if !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64")) {
        bail!("the pinned Bun package is for Linux on x86-64; this is another platform");
    }
    let source = ws.path("bench/peers/bun");
    let dir = ws.target.join("bench-peers").join("bun");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in ["package.json", "package-lock.json"] {
        let wanted = fs::read(source.join(file))
            .with_context(|| format!("reading {}", source.join(file).display()))?;
        // Written only when it changed: its time stamp is what tells npm_ci the install is
        // stale.
        if fs::read(dir.join(file)).ok().as_deref() != Some(&wanted[..]) {
            fs::write(dir.join(file), &wanted)
                .with_context(|| format!("writing {}", dir.join(file).display()))?;
        }
    }
    install::npm_ci(&dir)?;
    find_bun(&dir.join("node_modules").join(BUN_SCOPE))
}

/// The `bin/bun` of the one package of `scope` that has it.
fn find_bun(scope: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(scope).with_context(|| format!("npm installed no {}", scope.display()))?;
    let found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path().join("bin").join("bun"))
        .filter(|bin| bin.is_file())
        .collect();
    match &found[..] {
        [bin] => Ok(bin.clone()),
        [] => bail!("no package of {} holds bin/bun", scope.display()),
        _ => bail!(
            "several packages of {} hold bin/bun: {found:?}",
            scope.display()
        ),
    }
}

/// The configuration `duplex serve` runs the hub points with, written below the target
/// directory: room for 10,000 subscribers from one address, a `bench` namespace without
/// presence (10,000 joins would otherwise be 10⁸ join events), and commands enough for one
/// publisher at 200 publications/s. Everything else, history included, keeps its default.
pub(super) fn hub_config(ws: &Workspace) -> Result<HubConfigs> {
    const CONFIG: &str = "\
[limits]
max_connections = 20000
max_connections_per_ip = 0
commands_per_second = 1000
commands_burst = 1000

[namespaces.bench]
presence = false
join_leave = false
";
    // The deflate points: permessage-deflate accepted, at the default level and threshold.
    const DEFLATE: &str = "
[websocket.compression]
enabled = true
";
    let dir = ws.target.join("bench-peers");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok::<_, anyhow::Error>(path)
    };
    Ok(HubConfigs {
        plain: write("hub.toml", CONFIG)?,
        deflate: write("hub-deflate.toml", &format!("{CONFIG}{DEFLATE}"))?,
    })
}

/// The configuration files of `duplex serve` in the hub points.
#[derive(Debug)]
pub(super) struct HubConfigs {
    /// Without compression, as by default.
    pub(super) plain: PathBuf,
    /// With `websocket.compression` enabled, for the deflate points.
    pub(super) deflate: PathBuf,
}
