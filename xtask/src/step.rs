//! The steps of `cargo xtask test`: selection, setup, running, and the summary table.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::ValueEnum;

use crate::{
    autobahn, cmd, fuzz,
    install::{self, Installer, Need},
    publish,
    workspace::{Workspace, DUPLEX_BIN},
};

/// One step of the test command, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Step {
    /// `cargo fmt --check`.
    Fmt,
    /// `cargo clippy` on every target, warnings denied.
    Clippy,
    /// `cargo doc`, rustdoc warnings denied.
    Doc,
    /// `cargo hack --feature-powerset check` of the library crates that have features.
    /// After `clippy`, whose checked dependencies it partly reuses.
    FeaturePowerset,
    /// Every test of the workspace under nextest, then the doctests.
    Unit,
    /// `cargo package` of the library crates, each package built on its own. After `unit`,
    /// whose built dependencies it partly reuses.
    Package,
    /// Build the fuzz targets (stable toolchain) and replay their seeds.
    FuzzBuild,
    /// Autobahn fuzzingclient against `duplex echo`.
    AutobahnServer,
    /// Autobahn fuzzingclient against `duplex echo --http2`, through the HTTP/1.1-to-HTTP/2
    /// bridge (RFC 8441).
    AutobahnServerH2,
    /// Autobahn fuzzingserver against `duplex autobahn-client`.
    AutobahnClient,
    /// Interop tests against Python `websockets` and Node `ws`, both directions.
    Peers,
    /// Multi-node tests: real `redis-server`, three `duplex serve` nodes, `nginx` in front.
    Cluster,
    /// Browser tests (tests/e2e, headless Chromium).
    E2e,
}

impl Step {
    const ALL: [Self; 13] = [
        Self::Fmt,
        Self::Clippy,
        Self::Doc,
        Self::FeaturePowerset,
        Self::Unit,
        Self::Package,
        Self::FuzzBuild,
        Self::AutobahnServer,
        Self::AutobahnServerH2,
        Self::AutobahnClient,
        Self::Peers,
        Self::Cluster,
        Self::E2e,
    ];

    fn name(self) -> String {
        self.to_possible_value()
            .map(|value| value.get_name().to_owned())
            .unwrap_or_default()
    }

    fn needs(self, ws: &Workspace) -> &'static [Need] {
        match self {
            Self::Fmt | Self::Clippy | Self::Doc | Self::Package | Self::FuzzBuild => &[],
            Self::FeaturePowerset => &[Need::CargoHack],
            // The multi-node tests spawn their own redis-server and nginx on free ports.
            Self::Unit => &[Need::Nextest, Need::RedisServer, Need::Nginx],
            Self::AutobahnServer | Self::AutobahnServerH2 | Self::AutobahnClient => &[Need::Wstest],
            Self::Peers => &[Need::Nextest, Need::PythonPeers, Need::NodePeers],
            Self::Cluster => &[Need::Nextest, Need::RedisServer, Need::Nginx],
            // No browser to install while there are no browser tests to run.
            Self::E2e if !e2e_exists(ws) => &[],
            Self::E2e => &[Need::Chromium, Need::E2eModules],
        }
    }

    /// Whether the step runs the release `duplex` binary.
    fn uses_duplex(self, ws: &Workspace) -> bool {
        match self {
            Self::AutobahnServer | Self::AutobahnServerH2 | Self::AutobahnClient => true,
            Self::E2e => e2e_exists(ws),
            _ => false,
        }
    }

    /// A generous bound for the whole step, every command of it included; reaching it stops
    /// the command that is running (the error quotes its last output) and fails the step.
    fn limit(self) -> Duration {
        let minutes = match self {
            Self::Fmt => 5,
            Self::Doc | Self::AutobahnServer | Self::AutobahnServerH2 | Self::AutobahnClient => 20,
            // Warm, feature-powerset takes 1 s and package 11 s; from an empty target
            // directory, about 1 and 4 minutes on two busy cores (they build the libraries'
            // dependencies with feature sets of their own, which the workspace's other
            // builds share only in part).
            Self::Package | Self::FeaturePowerset => 20,
            Self::Peers | Self::E2e => 20,
            Self::Cluster => 15,
            Self::Clippy => 30,
            // Two commands each: nextest and the doctests; the fuzz build and the replays.
            Self::Unit | Self::FuzzBuild => 45,
        };
        Duration::from_secs(minutes * 60)
    }
}

/// How long the release build of `duplex` may take (from scratch on a busy machine it takes
/// several minutes).
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The whole test command, installs and builds included, ends within this: each step's own
/// limit is cut to what is left, and a step that finds nothing left fails without running,
/// so the summary is always printed. A cold run on two cores takes about 45 minutes; CI
/// allows 90.
const BUDGET: Duration = Duration::from_secs(80 * 60);

/// Overrides [`BUDGET`], in minutes.
const BUDGET_MINUTES: &str = "DUPLEX_TEST_BUDGET_MINUTES";

fn budget() -> Result<Duration> {
    match std::env::var(BUDGET_MINUTES) {
        Ok(value) => {
            let minutes: u64 = value
                .parse()
                .with_context(|| format!("{BUDGET_MINUTES}={value} is not a number of minutes"))?;
            Ok(Duration::from_secs(minutes.saturating_mul(60)))
        }
        Err(_) => Ok(BUDGET),
    }
}

/// Which steps to run.
#[derive(Debug, clap::Args)]
pub(crate) struct Selection {
    /// Run only these steps (comma-separated, in the usual order).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STEP")]
    only: Vec<Step>,
    /// Leave these steps out (comma-separated; may be repeated).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STEP")]
    skip: Vec<Step>,
}

impl Selection {
    fn steps(&self) -> Vec<Step> {
        Step::ALL
            .into_iter()
            .filter(|step| self.only.is_empty() || self.only.contains(step))
            .filter(|step| !self.skip.contains(step))
            .collect()
    }
}

/// Arguments of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    #[command(flatten)]
    selection: Selection,
}

/// How a step ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Passed; the text (often empty) is shown in the summary table.
    Passed(String),
    Failed(String),
    Skipped(String),
}

struct Row {
    name: String,
    outcome: Outcome,
    seconds: f64,
    /// Setup rows (install, build) are shown but not counted as steps.
    counted: bool,
}

/// `cargo xtask test`.
pub(crate) fn test(args: &TestArgs) -> Result<bool> {
    let budget = budget()?;
    cmd::within(budget, || test_within(args, budget))
}

fn test_within(args: &TestArgs, budget: Duration) -> Result<bool> {
    let started = Instant::now();
    let ws = Workspace::locate()?;
    let steps = args.selection.steps();
    let mut installer = Installer::new(&ws);
    let mut rows = Vec::new();

    rows.push(timed("install", false, || {
        install(&ws, &mut installer, &steps)
    }));

    let mut duplex: Result<PathBuf, String> = Err("not built".into());
    if steps.iter().any(|step| step.uses_duplex(&ws)) {
        banner("build (release duplex)");
        rows.push(timed("build", false, || {
            match cmd::within(BUILD_LIMIT, || ws.build_duplex()) {
                Ok(path) => {
                    println!("duplex binary: {}", path.display());
                    duplex = Ok(path);
                    Outcome::Passed(String::new())
                }
                Err(error) => {
                    duplex = Err(format!("{error:#}"));
                    Outcome::Failed(format!("{error:#}"))
                }
            }
        }));
    }

    for step in steps {
        banner(&step.name());
        if cmd::bound(budget).is_zero() {
            let why = format!(
                "not run: the test command's budget of {} min was spent ({BUDGET_MINUTES})",
                budget.as_secs() / 60
            );
            eprintln!("xtask: {}: {why}", step.name());
            rows.push(Row {
                name: step.name(),
                outcome: Outcome::Failed(why),
                seconds: 0.0,
                counted: true,
            });
            continue;
        }
        let row = timed(&step.name(), true, || {
            cmd::within(step.limit(), || run(step, &ws, &mut installer, &duplex))
                .unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")))
        });
        if let Outcome::Failed(why) = &row.outcome {
            eprintln!("xtask: {} failed: {why}", row.name);
        }
        rows.push(row);
    }
    Ok(summary(&rows, started.elapsed()))
}

/// `cargo xtask install`.
pub(crate) fn install_only(selection: &Selection) -> Result<bool> {
    let ws = Workspace::locate()?;
    let mut installer = Installer::new(&ws);
    let outcome = install(&ws, &mut installer, &selection.steps());
    println!("install: {}", describe(&outcome));
    Ok(!matches!(outcome, Outcome::Failed(_)))
}

/// Installs what `steps` need, each need once, before anything runs; a failure is reported
/// here and again by every step that needs the missing piece.
fn install(ws: &Workspace, installer: &mut Installer<'_>, steps: &[Step]) -> Outcome {
    let mut needs: Vec<Need> = steps.iter().flat_map(|s| s.needs(ws)).copied().collect();
    needs.sort();
    needs.dedup();
    if needs.is_empty() {
        return Outcome::Skipped("nothing needed".into());
    }
    banner("install");
    let mut failed = Vec::new();
    for need in needs {
        println!("checking {need}");
        if installer.ensure(need).is_err() {
            failed.push(need.to_string());
        }
    }
    if failed.is_empty() {
        Outcome::Passed(String::new())
    } else {
        Outcome::Failed(format!("could not install: {}", failed.join(", ")))
    }
}

fn run(
    step: Step,
    ws: &Workspace,
    installer: &mut Installer<'_>,
    duplex: &Result<PathBuf, String>,
) -> Result<Outcome> {
    for need in step.needs(ws) {
        installer.ensure(*need)?;
    }
    let duplex = || -> Result<&PathBuf> {
        duplex
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the release build of duplex failed: {e}"))
    };
    let limit = step.limit();
    match step {
        Step::Fmt => {
            cmd::run(ws.cargo().args(["fmt", "--all", "--", "--check"]), limit)?;
            // The fuzz crate is outside the workspace, so `cargo fmt --all` skips it.
            let mut fuzz = Command::new("rustfmt");
            fuzz.current_dir(&ws.root)
                .args(["--edition", "2021", "--check", "fuzz/src/lib.rs"]);
            let targets = "fuzz/fuzz_targets";
            for entry in std::fs::read_dir(ws.path(targets))? {
                fuzz.arg(std::path::Path::new(targets).join(entry?.file_name()));
            }
            cmd::run(&mut fuzz, limit)?;
        }
        Step::Clippy => cmd::run(
            ws.cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            limit,
        )?,
        Step::Doc => cmd::run(
            ws.cargo()
                .env("RUSTDOCFLAGS", "-Dwarnings")
                .args(["doc", "--workspace", "--no-deps"]),
            limit,
        )?,
        Step::Unit => {
            // Both halves run even if the first fails, so one run shows every failure.
            let tests = cmd::run(
                ws.cargo()
                    .args(["nextest", "run", "--workspace", "--no-fail-fast"]),
                limit,
            );
            let doctests = cmd::run(ws.cargo().args(["test", "--doc", "--workspace"]), limit);
            tests?;
            doctests?;
        }
        Step::Package => return publish::package(ws, limit),
        Step::FeaturePowerset => return publish::feature_powerset(ws, limit),
        Step::FuzzBuild => return fuzz::run(ws),
        Step::AutobahnServer => {
            return autobahn::check(ws, installer, duplex()?, autobahn::Role::Server)
        }
        Step::AutobahnServerH2 => {
            return autobahn::check(ws, installer, duplex()?, autobahn::Role::ServerH2)
        }
        Step::AutobahnClient => {
            return autobahn::check(ws, installer, duplex()?, autobahn::Role::Client)
        }
        Step::Peers => {
            // The peer tests are #[ignore]d so that a plain `cargo nextest run` does not need
            // Python and Node; here they run on their own, on the same build as `unit`.
            // They test the library in-process, so they need no release build.
            let python = install::python_venv(ws).join("bin").join("python");
            let mut tests = ws.cargo();
            tests.env("DUPLEX_PEERS_PYTHON", python);
            if let Ok(bin) = duplex() {
                tests.env(DUPLEX_BIN, bin);
            }
            cmd::run(
                tests
                    .args(["nextest", "run", "--workspace", "--no-fail-fast"])
                    .args(["--run-ignored", "only"])
                    // The peer tests, the hub's `/ws` with the Python client, and the
                    // `duplex connect` tests against the Python peer.
                    .args([
                        "-E",
                        "(package(duplex) & binary(it) & test(/^peers::/)) \
                         | (package(duplex-hub) & binary(it) & test(/^peers::/)) \
                         | (package(duplex-cli) & binary(connect) & test(/^peers::/))",
                    ]),
                limit,
            )?;
        }
        Step::Cluster => {
            // #[ignore]d like the peer tests: they need redis-server (also as Sentinel) and
            // nginx, which the step installs. Each test spawns its own on free ports. One at a
            // time: a Redis Cluster test alone runs six redis-servers and two nodes, and
            // several at once on two cores turn failover timings into noise.
            cmd::run(
                ws.cargo()
                    .args(["nextest", "run", "--no-fail-fast", "--test-threads", "1"])
                    .args(["--run-ignored", "only"])
                    .args([
                        "-E",
                        "package(duplex-cli) & (binary(cluster) | binary(redis_cluster) | binary(sentinel))",
                    ]),
                limit,
            )?;
        }
        Step::E2e => {
            let dir = ws.path("tests/e2e");
            if !e2e_exists(ws) {
                return Ok(Outcome::Skipped(
                    "tests/e2e/package.json does not exist yet".into(),
                ));
            }
            let npm = cmd::find_program("npm").context("npm is not on the PATH")?;
            let chromium = cmd::find_program("chromium").context("chromium is not installed")?;
            cmd::run(
                Command::new(npm)
                    .current_dir(&dir)
                    .env(DUPLEX_BIN, duplex()?)
                    .env("CHROMIUM_BIN", chromium)
                    .arg("test"),
                limit,
            )?;
        }
    }
    Ok(Outcome::Passed(String::new()))
}

fn e2e_exists(ws: &Workspace) -> bool {
    ws.path("tests/e2e/package.json").is_file()
}

fn timed(name: &str, counted: bool, f: impl FnOnce() -> Outcome) -> Row {
    let started = Instant::now();
    let outcome = f();
    Row {
        name: name.to_owned(),
        outcome,
        seconds: started.elapsed().as_secs_f64(),
        counted,
    }
}

fn banner(title: &str) {
    println!("\n==> {title}");
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Passed(_) => "passed".into(),
        Outcome::Failed(why) => format!("FAILED: {why}"),
        Outcome::Skipped(why) => format!("skipped: {why}"),
    }
}

/// Prints the table and the closing line; true when no step failed.
fn summary(rows: &[Row], total: Duration) -> bool {
    println!("\n{:<17} {:<8} {:>8}  note", "step", "result", "seconds");
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for row in rows {
        let (result, note) = match &row.outcome {
            Outcome::Passed(note) => ("passed", first_line(note)),
            Outcome::Failed(why) => ("FAILED", first_line(why)),
            Outcome::Skipped(why) => ("skipped", first_line(why)),
        };
        let name = if row.counted {
            row.name.clone()
        } else {
            format!("({})", row.name)
        };
        println!("{name:<17} {result:<8} {:>8.1}  {note}", row.seconds);
        if row.counted {
            match row.outcome {
                Outcome::Passed(_) => passed += 1,
                Outcome::Failed(_) => failed += 1,
                Outcome::Skipped(_) => skipped += 1,
            }
        }
    }
    println!("{:<17} {:<8} {:>8.1}", "total", "", total.as_secs_f64());
    let mut line = format!("xtask: {passed} passed, {failed} failed");
    if skipped > 0 {
        line.push_str(&format!(", {skipped} skipped"));
    }
    println!("{line}");
    failed == 0
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 100 {
        format!("{}...", line.chars().take(97).collect::<String>())
    } else {
        line.to_owned()
    }
}
