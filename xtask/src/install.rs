//! What the steps need from outside the Rust toolchain, and how it gets installed.
//!
//! Every install is idempotent and cheap when there is nothing to do, so `cargo xtask test`
//! can run it every time: a fresh machine gets everything, a warm one loses a second or two.

use std::{
    collections::BTreeMap,
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, workspace::Workspace};

/// Something a step needs that may have to be installed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Need {
    /// `cargo nextest`, the test runner.
    Nextest,
    /// `cargo hack`, for the feature powerset.
    CargoHack,
    /// Autobahn's `wstest`, through `scripts/autobahn/install.sh`.
    Wstest,
    /// `redis-server` and `redis-cli`, which the multi-node tests spawn on free ports, as data
    /// nodes and as Sentinels (`redis-server CONF --sentinel`: Debian's `redis-server` binary
    /// has Sentinel built in, so no `redis-sentinel` package is needed; the Redis Cluster
    /// tests create their cluster with `redis-cli --cluster create`).
    RedisServer,
    /// `nginx`, which the multi-node tests spawn in front of several servers.
    Nginx,
    /// Headless Chromium and a font, for the browser tests.
    Chromium,
    /// A virtualenv with Python `websockets` and `hypercorn`, for the peer tests.
    PythonPeers,
    /// `node_modules` of `tests/peers/node` (Node `ws`), for the peer tests.
    NodePeers,
    /// `node_modules` of `tests/e2e`, once that package exists.
    E2eModules,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nextest => "cargo-nextest",
            Self::CargoHack => "cargo-hack",
            Self::Wstest => "Autobahn wstest",
            Self::RedisServer => "redis-server",
            Self::Nginx => "nginx",
            Self::Chromium => "chromium",
            Self::PythonPeers => "Python websockets and hypercorn (venv)",
            Self::NodePeers => "Node ws (tests/peers/node)",
            Self::E2eModules => "tests/e2e node_modules",
        })
    }
}

impl Need {
    /// How long installing it may take in all (its commands' limits add up to about this).
    fn limit(self) -> Duration {
        let minutes = match self {
            Self::Nextest | Self::RedisServer | Self::Nginx | Self::Chromium => 35,
            // About a minute to build from source on two cores.
            Self::CargoHack => 15,
            Self::Wstest => 25,
            Self::PythonPeers => 20,
            Self::NodePeers | Self::E2eModules => 15,
        };
        Duration::from_secs(minutes * 60)
    }
}

/// The virtualenv that holds the Python peer, below cargo's target directory.
pub(crate) fn python_venv(ws: &Workspace) -> PathBuf {
    ws.target.join("peers").join("venv")
}

/// Installs needs on demand and remembers what it did, so each need is handled once per run.
#[derive(Debug)]
pub(crate) struct Installer<'a> {
    ws: &'a Workspace,
    done: BTreeMap<Need, Result<(), String>>,
    apt_updated: bool,
    wstest: Option<PathBuf>,
}

impl<'a> Installer<'a> {
    pub(crate) fn new(ws: &'a Workspace) -> Self {
        Self {
            ws,
            done: BTreeMap::new(),
            apt_updated: false,
            wstest: None,
        }
    }

    /// Makes sure `need` is there; an earlier failure for the same need is returned again.
    pub(crate) fn ensure(&mut self, need: Need) -> Result<()> {
        if let Some(outcome) = self.done.get(&need) {
            return outcome
                .clone()
                .map_err(|error| anyhow::anyhow!("{need} is not installed: {error}"));
        }
        // Each command below has its own limit; this bounds the need as a whole.
        let outcome = cmd::within(need.limit(), || self.install(need));
        if let Err(error) = &outcome {
            eprintln!("xtask: installing {need} failed: {error:#}");
        }
        self.done.insert(
            need,
            outcome.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")),
        );
        outcome.with_context(|| format!("{need} is not installed"))
    }

    /// The path of `wstest`, installing it first if needed.
    pub(crate) fn wstest(&mut self) -> Result<PathBuf> {
        self.ensure(Need::Wstest)?;
        self.wstest.clone().context("wstest path is unknown")
    }

    fn install(&mut self, need: Need) -> Result<()> {
        match need {
            Need::Nextest => self.cargo_tool("nextest", "cargo-nextest", 30),
            Need::CargoHack => self.cargo_tool("hack", "cargo-hack", 10),
            Need::Wstest => self.autobahn(),
            Need::RedisServer => {
                self.apt(Some("redis-server"), &["redis-server"])?;
                self.apt(Some("redis-cli"), &["redis-tools"])
            }
            Need::Nginx => self.apt(Some("nginx"), &["nginx"]),
            Need::Chromium => {
                self.apt(Some("chromium"), &["chromium"])?;
                // Without a font installed, screenshots of pages show empty boxes for text.
                self.apt(None, &["fonts-liberation"])?;
                // The browser's TLS test makes its self-signed certificate with openssl.
                self.apt(Some("openssl"), &["openssl"])
            }
            Need::PythonPeers => self.python_peers(),
            Need::NodePeers => npm_ci(&self.ws.path("tests/peers/node")),
            Need::E2eModules => {
                let dir = self.ws.path("tests/e2e");
                if dir.join("package.json").is_file() {
                    npm_ci(&dir)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `cargo SUBCOMMAND`, installed with `cargo install` as `package` (its locked dependencies)
    /// when `cargo SUBCOMMAND --version` fails; the build may take up to `minutes`.
    fn cargo_tool(&mut self, subcommand: &str, package: &str, minutes: u64) -> Result<()> {
        // Bounded: cargo may wait on a lock another build holds.
        let (installed, _) = cmd::probe(
            self.ws.cargo().args([subcommand, "--version"]),
            Duration::from_secs(5 * 60),
        )?;
        if installed {
            return Ok(());
        }
        println!("installing {package} (not found)");
        cmd::run(
            self.ws.cargo().args(["install", package, "--locked"]),
            Duration::from_secs(minutes * 60),
        )
    }

    fn autobahn(&mut self) -> Result<()> {
        let script = self.ws.path("scripts/autobahn/install.sh");
        let out = cmd::stdout_of(
            Command::new("bash").arg(&script),
            Duration::from_secs(20 * 60),
        )?;
        let path = out
            .lines()
            .last()
            .map(PathBuf::from)
            .context("install.sh printed no wstest path")?;
        if !path.is_file() {
            bail!("install.sh printed {}, which is not a file", path.display());
        }
        self.wstest = Some(path);
        Ok(())
    }

    /// Installs Debian `packages` unless `binary` is already on the PATH; with no binary to
    /// probe, installs those of `packages` that dpkg does not list as installed.
    fn apt(&mut self, binary: Option<&str>, packages: &[&str]) -> Result<()> {
        let missing: Vec<&str> = match binary {
            Some(binary) if cmd::find_program(binary).is_some() => return Ok(()),
            Some(_) => packages.to_vec(),
            None => packages
                .iter()
                .copied()
                .filter(|package| !dpkg_installed(package))
                .collect(),
        };
        if missing.is_empty() {
            return Ok(());
        }
        println!("installing Debian packages: {}", missing.join(" "));
        let sudo = needs_sudo()?;
        let apt = |args: &[&str]| {
            let mut command = if sudo {
                let mut c = Command::new("sudo");
                c.args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
                c
            } else {
                let mut c = Command::new("apt-get");
                c.env("DEBIAN_FRONTEND", "noninteractive");
                c
            };
            command.args(args);
            command
        };
        if !self.apt_updated {
            cmd::run(&mut apt(&["update", "-qq"]), Duration::from_secs(10 * 60))?;
            self.apt_updated = true;
        }
        let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
        install.args(&missing);
        cmd::run(&mut install, Duration::from_secs(20 * 60))?;
        if let Some(binary) = binary {
            if cmd::find_program(binary).is_none() {
                bail!("`{binary}` is still not found after installing {missing:?}");
            }
        }
        Ok(())
    }

    /// A virtualenv with the pinned `tests/peers/python/requirements.txt`; recreated when that
    /// file changes (the venv keeps a copy of the file it was built from).
    fn python_peers(&mut self) -> Result<()> {
        let requirements = self.ws.path("tests/peers/python/requirements.txt");
        let wanted = fs::read_to_string(&requirements)
            .with_context(|| format!("reading {}", requirements.display()))?;
        let venv = python_venv(self.ws);
        let stamp = venv.join("duplex-requirements.txt");
        let python = venv.join("bin").join("python");
        if python.is_file() && fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
            return Ok(());
        }
        println!(
            "creating the virtualenv {} from {}",
            venv.display(),
            requirements.display()
        );
        let python3 = cmd::find_program("python3").context("python3 is not on the PATH")?;
        cmd::run(
            Command::new(python3)
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
            Duration::from_secs(5 * 60),
        )?;
        cmd::run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg("--requirement")
                .arg(&requirements),
            Duration::from_secs(10 * 60),
        )?;
        fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))
    }
}

/// `npm ci` in `dir` unless its `node_modules` matches `package-lock.json` already (npm writes
/// `node_modules/.package-lock.json` after an install; a newer lock file means it is stale).
pub(crate) fn npm_ci(dir: &Path) -> Result<()> {
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules").join(".package-lock.json");
    let stale = match (modified(&lock), modified(&installed)) {
        (Some(lock), Some(installed)) => lock > installed,
        _ => true,
    };
    if !stale {
        return Ok(());
    }
    println!("installing node modules in {}", dir.display());
    let npm = cmd::find_program("npm").context("npm is not on the PATH")?;
    cmd::run(
        Command::new(npm)
            .current_dir(dir)
            .args(["ci", "--no-audit", "--no-fund"]),
        Duration::from_secs(10 * 60),
    )
}

fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

fn dpkg_installed(package: &str) -> bool {
    cmd::probe(
        Command::new("dpkg-query").args(["--show", "--showformat=${Status}", package]),
        Duration::from_secs(60),
    )
    .is_ok_and(|(ok, out)| ok && out.ends_with("install ok installed"))
}

/// apt-get needs root: run it directly as root, through `sudo -n` otherwise.
fn needs_sudo() -> Result<bool> {
    let uid = cmd::stdout_of(Command::new("id").arg("-u"), Duration::from_secs(10))?;
    if uid.trim() == "0" {
        return Ok(false);
    }
    if cmd::find_program("sudo").is_none() {
        bail!("installing Debian packages needs root, and sudo is not available");
    }
    Ok(true)
}
