//! The Autobahn testsuite in both roles, compared with committed expectations.
//!
//! - Server role: `wstest --mode fuzzingclient` connects to `duplex echo`.
//! - Client role: `wstest --mode fuzzingserver` listens and `duplex autobahn-client` connects
//!   to it for every case, then asks it to write the reports.
//!
//! wstest writes `reports/{servers,clients}/index.json`, which maps each case id to a
//! `behavior` (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED) and a `behaviorClose`.
//! `autobahn/expected-{server,client}.json` hold the behavior each case had when it was last
//! blessed; a run fails when any case does worse than that, is missing, or is not one of the
//! three passing behaviors.

mod expect;

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;
use serde_json::{json, Value};

use self::expect::{CaseId, Counts, Expected};
use crate::{
    cmd::{self, Guard},
    install::Installer,
    step::Outcome,
    workspace::Workspace,
};

/// Cases left out of every run: none. Every case (1-13, the permessage-deflate cases 12 and 13
/// included) runs in both roles; a pattern added here must be explained in
/// docs/conformance.md, and the expectations blessed again.
pub(crate) const EXCLUDED: &[&str] = &[];

/// The agent name duplex reports under.
const AGENT: &str = "duplex";

/// How long one wstest run (or the client driving it) may take.
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

/// The role of duplex under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// `duplex echo`, tested by wstest's fuzzing client.
    Server,
    /// `duplex autobahn-client`, tested by wstest's fuzzing server.
    Client,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Server => "server (wstest fuzzingclient -> duplex echo)",
            Self::Client => "client (duplex autobahn-client -> wstest fuzzingserver)",
        }
    }

    /// Where the committed expectations for this role live.
    fn expected_path(self, ws: &Workspace) -> PathBuf {
        ws.path(&format!("autobahn/expected-{}.json", self.name()))
    }
}

/// Which roles `cargo xtask autobahn` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Which {
    Server,
    Client,
    Both,
}

/// Arguments of `cargo xtask autobahn`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The role(s) of duplex to test.
    #[arg(long, value_enum, default_value = "both")]
    role: Which,
    /// Write this run's results to autobahn/expected-*.json (refused while any case fails)
    /// and refresh the summary table in docs/conformance.md.
    #[arg(long)]
    bless: bool,
    /// Run only these cases: comma-separated wstest patterns such as `1.*,5.3,9.1.*`.
    #[arg(long, value_delimiter = ',', value_name = "PATTERNS")]
    cases: Vec<String>,
}

/// `cargo xtask autobahn`.
pub(crate) fn command(args: &Args) -> Result<bool> {
    let ws = Workspace::locate()?;
    let mut installer = Installer::new(&ws);
    let wstest = installer.wstest()?;
    let duplex = ws.build_duplex()?;
    let roles = match args.role {
        Which::Server => vec![Role::Server],
        Which::Client => vec![Role::Client],
        Which::Both => vec![Role::Server, Role::Client],
    };
    let mut ok = true;
    for role in roles {
        let results = execute(&ws, &wstest, &duplex, role, &args.cases)?;
        let expected = Expected::load(&role.expected_path(&ws))?;
        print_counts(role, &results);
        if args.bless {
            ok &= bless(&ws, role, &results, expected, &args.cases)?;
        } else {
            let verdict = expected.compare(&results, &args.cases);
            verdict.print();
            ok &= verdict.passed();
        }
    }
    Ok(ok)
}

/// One role, every selected case, compared with the committed expectations (the test step).
pub(crate) fn check(
    ws: &Workspace,
    installer: &mut Installer<'_>,
    duplex: &Path,
    role: Role,
) -> Result<Outcome> {
    let wstest = installer.wstest()?;
    let results = execute(ws, &wstest, duplex, role, &[])?;
    let expected = Expected::load(&role.expected_path(ws))?;
    print_counts(role, &results);
    let verdict = expected.compare(&results, &[]);
    verdict.print();
    Ok(if verdict.passed() {
        let counts = Counts::of(results.values().map(|r| r.behavior.as_str()));
        Outcome::Passed(format!("{} cases: {counts}", results.len()))
    } else {
        Outcome::Failed(verdict.headline())
    })
}

/// A case's result as wstest reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CaseResult {
    pub(crate) behavior: String,
    pub(crate) close: String,
}

/// Runs wstest for `role` and returns the results of every case it ran.
fn execute(
    ws: &Workspace,
    wstest: &Path,
    duplex: &Path,
    role: Role,
    cases: &[String],
) -> Result<BTreeMap<CaseId, CaseResult>> {
    let dir = ws.target.join("autobahn").join(role.name());
    let reports = dir.join("reports");
    if reports.exists() {
        fs::remove_dir_all(&reports).with_context(|| format!("removing {}", reports.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cases: Vec<String> = if cases.is_empty() {
        vec!["*".into()]
    } else {
        cases.to_vec()
    };
    let port = cmd::free_port()?;
    let url = format!("ws://127.0.0.1:{port}");
    let spec_path = dir.join("spec.json");
    let wstest_log = dir.join("wstest.log");
    let duplex_log = dir.join("duplex.log");
    println!(
        "autobahn {}: cases {cases:?} excluding {EXCLUDED:?}; logs in {}",
        role.name(),
        dir.display()
    );
    let index = match role {
        Role::Server => {
            let spec = json!({
                "outdir": reports.join("servers"),
                "servers": [{ "agent": AGENT, "url": url }],
                "cases": cases,
                "exclude-cases": EXCLUDED,
                "exclude-agent-cases": {},
            });
            write_json(&spec_path, &spec)?;
            let mut server = spawn_logged(
                Command::new(duplex).args(["echo", "--listen", &format!("127.0.0.1:{port}")]),
                &duplex_log,
                "duplex echo",
            )?;
            cmd::wait_for_port(port, &mut server, Duration::from_secs(20))
                .with_context(|| format!("duplex echo did not start; {}", log_note(&duplex_log)))?;
            let mut fuzzer = Command::new(wstest);
            fuzzer
                .current_dir(&dir)
                .args(["--mode", "fuzzingclient", "--spec"])
                .arg(&spec_path);
            run_logged(&mut fuzzer, &wstest_log)?;
            server
                .check_running()
                .with_context(|| format!("duplex echo crashed; {}", log_note(&duplex_log)))?;
            reports.join("servers").join("index.json")
        }
        Role::Client => {
            let spec = json!({
                "url": url,
                "outdir": reports.join("clients"),
                "webport": 0,
                "cases": cases,
                "exclude-cases": EXCLUDED,
                "exclude-agent-cases": {},
            });
            write_json(&spec_path, &spec)?;
            let mut fuzzer = Command::new(wstest);
            fuzzer
                .current_dir(&dir)
                .args(["--mode", "fuzzingserver", "--webport", "0", "--spec"])
                .arg(&spec_path);
            let mut server = spawn_logged(&mut fuzzer, &wstest_log, "wstest fuzzingserver")?;
            cmd::wait_for_port(port, &mut server, Duration::from_secs(60))
                .with_context(|| format!("wstest did not start; {}", log_note(&wstest_log)))?;
            run_logged(
                Command::new(duplex).args(["autobahn-client", "--url", &url, "--agent", AGENT]),
                &duplex_log,
            )?;
            drop(server);
            reports.join("clients").join("index.json")
        }
    };
    println!("report: {}", index.with_file_name("index.html").display());
    read_index(&index)
}

/// Starts a server process whose output goes to `log`; it stops when the guard is dropped.
fn spawn_logged(command: &mut Command, log: &Path, name: &str) -> Result<Guard> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    println!("$ {} > {}", cmd::show(command), log.display());
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Guard::new(child, name))
}

/// Runs a command to completion with its output in `log`; on failure the error quotes the
/// end of the log.
fn run_logged(command: &mut Command, log: &Path) -> Result<()> {
    let line = cmd::show(command);
    let mut guard = spawn_logged(command, log, &line)?;
    let status = cmd::wait(guard.child(), RUN_LIMIT)?;
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("`{line}` failed ({status}); {}", log_note(log)),
        None => bail!(
            "`{line}` did not finish within {} s; {}",
            RUN_LIMIT.as_secs(),
            log_note(log)
        ),
    }
}

/// The end of a log file, for an error message.
fn log_note(log: &Path) -> String {
    let tail = cmd::tail(log, 20);
    if tail.trim().is_empty() {
        format!("{} is empty", log.display())
    } else {
        format!("end of {}:\n{tail}", log.display())
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Reads the results of agent `duplex` from a wstest `index.json`.
fn read_index(path: &Path) -> Result<BTreeMap<CaseId, CaseResult>> {
    let text = fs::read_to_string(path).with_context(|| {
        format!(
            "wstest wrote no report at {} (did the run reach the end?)",
            path.display()
        )
    })?;
    let index: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let cases = index[AGENT]
        .as_object()
        .with_context(|| format!("{} has no results for agent `{AGENT}`", path.display()))?;
    let text_of = |value: &Value| value.as_str().unwrap_or("MISSING").to_owned();
    Ok(cases
        .iter()
        .map(|(id, result)| {
            let result = CaseResult {
                behavior: text_of(&result["behavior"]),
                close: text_of(&result["behaviorClose"]),
            };
            (CaseId::new(id), result)
        })
        .collect())
}

fn print_counts(role: Role, results: &BTreeMap<CaseId, CaseResult>) {
    let behavior = Counts::of(results.values().map(|r| r.behavior.as_str()));
    let close = Counts::of(results.values().map(|r| r.close.as_str()));
    println!("autobahn {}: {} cases", role.title(), results.len());
    println!("  behavior:      {behavior}");
    println!("  behaviorClose: {close}");
}

/// Writes the expectations for `role` from `results`; refused while any case fails.
fn bless(
    ws: &Workspace,
    role: Role,
    results: &BTreeMap<CaseId, CaseResult>,
    mut expected: Expected,
    cases: &[String],
) -> Result<bool> {
    let failing: Vec<String> = results
        .iter()
        .filter(|(_, r)| !expect::passes(&r.behavior))
        .map(|(id, r)| format!("{id} {}", r.behavior))
        .collect();
    if !failing.is_empty() {
        println!(
            "not blessing {}: {} cases do not pass:\n  {}",
            role.name(),
            failing.len(),
            failing.join("\n  ")
        );
        return Ok(false);
    }
    // A partial run (--cases) updates only the cases it ran.
    if cases.is_empty() {
        expected = Expected::default();
    }
    for (id, result) in results {
        expected.insert(id.clone(), result.behavior.clone());
    }
    let path = role.expected_path(ws);
    expected.save(&path)?;
    println!("blessed {} ({} cases)", path.display(), expected.len());
    expect::write_summary(
        &ws.path("docs/conformance.md"),
        &Expected::load(&Role::Server.expected_path(ws))?,
        &Expected::load(&Role::Client.expected_path(ws))?,
    )?;
    Ok(true)
}
