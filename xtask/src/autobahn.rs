//! The Autobahn testsuite in both roles, compared with committed expectations.
//!
//! - Server role: `wstest --mode fuzzingclient` connects to `duplex echo`.
//! - Server role over HTTP/2: the same, to `duplex echo --http2` through
//!   `duplex autobahn-h2-bridge`, which turns each of wstest's HTTP/1.1 connections into an
//!   RFC 8441 stream on one h2c connection and relays the bytes unparsed.
//! - Client role: `wstest --mode fuzzingserver` listens and `duplex autobahn-client` connects
//!   to it for every case, then asks it to write the reports.
//!
//! wstest writes `reports/{servers,clients}/index.json`, which maps each case id to a
//! `behavior` (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED) and a `behaviorClose`.
//! `autobahn/expected-{server,server-h2,client}.json` hold the behavior each case had when it was last
//! blessed; a run fails when any case does worse than that, is missing, or is not one of the
//! three passing behaviors.

mod expect;

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
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

/// How long the processes of one role may take in all (the shards run side by side, and all
/// of them must end by then). On a busy 2-core machine a role takes about 10 minutes.
const RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

/// The role of duplex under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// `duplex echo`, tested by wstest's fuzzing client.
    Server,
    /// `duplex echo --http2`, tested by wstest's fuzzing client through the bridge.
    ServerH2,
    /// `duplex autobahn-client`, tested by wstest's fuzzing server.
    Client,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::ServerH2 => "server-h2",
            Self::Client => "client",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Server => "server (wstest fuzzingclient -> duplex echo)",
            Self::ServerH2 => {
                "server over HTTP/2 (wstest fuzzingclient -> bridge -> h2c -> duplex echo --http2)"
            }
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
    ServerH2,
    Client,
    /// The server over HTTP/1.1 and the client (the HTTP/2 run is asked for by name).
    Both,
    All,
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
        Which::ServerH2 => vec![Role::ServerH2],
        Which::Client => vec![Role::Client],
        Which::Both => vec![Role::Server, Role::Client],
        Which::All => vec![Role::Server, Role::ServerH2, Role::Client],
    };
    let mut ok = true;
    for role in roles {
        let (results, problems) = execute(&ws, &wstest, &duplex, role, &args.cases)?;
        let expected = Expected::load(&role.expected_path(&ws))?;
        print_counts(role, &results);
        if !problems.is_empty() {
            print_problems(role, &problems);
            ok = false;
            if args.bless {
                println!("not blessing {}: the run did not end cleanly", role.name());
                continue;
            }
        }
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
    let (results, problems) = execute(ws, &wstest, duplex, role, &[])?;
    let expected = Expected::load(&role.expected_path(ws))?;
    print_counts(role, &results);
    let verdict = expected.compare(&results, &[]);
    verdict.print();
    if !problems.is_empty() {
        print_problems(role, &problems);
        // The first line goes to the summary table; the rest was printed above.
        return Ok(Outcome::Failed(problems.join("\n")));
    }
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

/// How a full run is split: wstest handles every frame in Python and uses one core, while
/// duplex needs little, so two wstest processes over disjoint case sets halve the wall time
/// on two cores. The second shard takes most of the slow compression groups; the first takes
/// everything else, 13.7 included, which evens the two out (server role on 2 cores: 5.0 and
/// 7.3 minutes with 13.7 in the second, about 6 each without).
const SHARD_CASES: &[&str] = &[
    "12.1.*", "12.5.*", "13.1.*", "13.2.*", "13.3.*", "13.4.*", "13.5.*", "13.6.*",
];

/// One wstest process's share of a run.
#[derive(Debug)]
struct Shard {
    /// Its directory (spec, logs, reports).
    dir: PathBuf,
    cases: Vec<String>,
    exclude: Vec<String>,
}

impl Shard {
    fn plan(dir: &Path, cases: &[String]) -> Vec<Self> {
        let owned = |list: &[&str]| list.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        if !cases.is_empty() {
            return vec![Self {
                dir: dir.join("shard-0"),
                cases: cases.to_vec(),
                exclude: owned(EXCLUDED),
            }];
        }
        let mut rest = owned(EXCLUDED);
        rest.extend(owned(SHARD_CASES));
        vec![
            Self {
                dir: dir.join("shard-0"),
                cases: vec!["*".into()],
                exclude: rest,
            },
            Self {
                dir: dir.join("shard-1"),
                cases: owned(SHARD_CASES),
                exclude: owned(EXCLUDED),
            },
        ]
    }

    fn reports(&self) -> PathBuf {
        self.dir.join("reports")
    }
}

/// What a role's processes reported: each case's result, and what went wrong with the
/// processes themselves (a crash, a non-zero exit, an overrun), each naming the process and
/// quoting the end of its log and of its peer's.
type Execution = (BTreeMap<CaseId, CaseResult>, Vec<String>);

/// Runs wstest for `role` and returns the results of every case it ran. Every process has
/// to end within [`RUN_LIMIT`] of the start; one that does not is stopped and reported.
fn execute(
    ws: &Workspace,
    wstest: &Path,
    duplex: &Path,
    role: Role,
    cases: &[String],
) -> Result<Execution> {
    let deadline = Instant::now() + cmd::bound(RUN_LIMIT);
    let dir = ws.target.join("autobahn").join(role.name());
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let shards = Shard::plan(&dir, cases);
    for shard in &shards {
        fs::create_dir_all(&shard.dir)
            .with_context(|| format!("creating {}", shard.dir.display()))?;
        println!(
            "autobahn {}: cases {:?} excluding {:?}; logs in {}",
            role.name(),
            shard.cases,
            shard.exclude,
            shard.dir.display()
        );
    }
    let mut problems = Vec::new();
    let indexes = match role {
        Role::Server | Role::ServerH2 => {
            let port = cmd::free_port()?;
            let duplex_log = dir.join("duplex.log");
            let mut echo = Command::new(duplex);
            echo.args(["echo", "--listen", &format!("127.0.0.1:{port}")]);
            if role == Role::ServerH2 {
                echo.arg("--http2");
            }
            let mut server = spawn_logged(&mut echo, &duplex_log, "duplex echo")?;
            cmd::wait_for_port(port, &mut server, Duration::from_secs(20))
                .with_context(|| format!("duplex echo did not start; {}", log_note(&duplex_log)))?;
            // Over HTTP/2, wstest talks to the bridge, which relays to the echo server.
            let mut bridge = None;
            let url = if role == Role::ServerH2 {
                let bridge_port = cmd::free_port()?;
                let bridge_log = dir.join("bridge.log");
                let mut guard = spawn_logged(
                    Command::new(duplex).args([
                        "autobahn-h2-bridge",
                        "--listen",
                        &format!("127.0.0.1:{bridge_port}"),
                        "--upstream",
                        &format!("127.0.0.1:{port}"),
                    ]),
                    &bridge_log,
                    "duplex autobahn-h2-bridge",
                )?;
                cmd::wait_for_port(bridge_port, &mut guard, Duration::from_secs(20)).with_context(
                    || format!("the bridge did not start; {}", log_note(&bridge_log)),
                )?;
                bridge = Some((guard, bridge_log));
                format!("ws://127.0.0.1:{bridge_port}")
            } else {
                format!("ws://127.0.0.1:{port}")
            };
            let mut runs = Vec::new();
            for shard in &shards {
                let spec_path = shard.dir.join("spec.json");
                let spec = json!({
                    "outdir": shard.reports().join("servers"),
                    "servers": [{ "agent": AGENT, "url": url }],
                    "cases": shard.cases,
                    "exclude-cases": shard.exclude,
                    "exclude-agent-cases": {},
                });
                write_json(&spec_path, &spec)?;
                let mut fuzzer = wstest_command(wstest);
                fuzzer
                    .current_dir(&shard.dir)
                    .args(["--mode", "fuzzingclient", "--spec"])
                    .arg(&spec_path);
                let peer = ("duplex echo".to_owned(), duplex_log.clone());
                runs.push(Run::start(&mut fuzzer, shard.dir.join("wstest.log"), peer)?);
            }
            problems.extend(
                runs.into_iter()
                    .filter_map(|run| run.finish(deadline).err()),
            );
            if let Err(e) = server.check_running() {
                problems.push(format!("{e:#}; {}", log_note(&duplex_log)));
            }
            if let Some((mut guard, log)) = bridge {
                if let Err(e) = guard.check_running() {
                    problems.push(format!("{e:#}; {}", log_note(&log)));
                }
            }
            shards
                .iter()
                .map(|s| s.reports().join("servers").join("index.json"))
                .collect::<Vec<_>>()
        }
        Role::Client => {
            let mut servers = Vec::new();
            let mut runs = Vec::new();
            for shard in &shards {
                let port = cmd::free_port()?;
                let url = format!("ws://127.0.0.1:{port}");
                let spec_path = shard.dir.join("spec.json");
                let wstest_log = shard.dir.join("wstest.log");
                let spec = json!({
                    "url": url,
                    "outdir": shard.reports().join("clients"),
                    "webport": 0,
                    "cases": shard.cases,
                    "exclude-cases": shard.exclude,
                    "exclude-agent-cases": {},
                });
                write_json(&spec_path, &spec)?;
                let mut fuzzer = wstest_command(wstest);
                fuzzer
                    .current_dir(&shard.dir)
                    .args(["--mode", "fuzzingserver", "--webport", "0", "--spec"])
                    .arg(&spec_path);
                let mut server = spawn_logged(&mut fuzzer, &wstest_log, "wstest fuzzingserver")?;
                cmd::wait_for_port(port, &mut server, Duration::from_secs(60))
                    .with_context(|| format!("wstest did not start; {}", log_note(&wstest_log)))?;
                servers.push(server);
                let mut client = Command::new(duplex);
                client.args(["autobahn-client", "--url", &url, "--agent", AGENT]);
                // The case ids, so that the client names a case that overruns.
                let ids = shard.dir.join("case-ids.txt");
                if write_case_ids(&wstest_log, &ids) {
                    client.arg("--case-ids").arg(&ids);
                }
                let peer = ("wstest fuzzingserver".to_owned(), wstest_log);
                runs.push(Run::start(&mut client, shard.dir.join("duplex.log"), peer)?);
            }
            problems.extend(
                runs.into_iter()
                    .filter_map(|run| run.finish(deadline).err()),
            );
            for server in &mut servers {
                if let Err(e) = server.check_running() {
                    problems.push(format!("{e:#}"));
                }
            }
            drop(servers);
            shards
                .iter()
                .map(|s| s.reports().join("clients").join("index.json"))
                .collect::<Vec<_>>()
        }
    };
    let mut results = BTreeMap::new();
    for index in indexes {
        match read_index(&index) {
            Ok(cases) => {
                println!("report: {}", index.with_file_name("index.html").display());
                results.extend(cases);
            }
            // A run that went wrong explains why its report is missing.
            Err(e) if !problems.is_empty() => println!("{e:#}"),
            Err(e) => return Err(e),
        }
    }
    Ok((results, problems))
}

/// wstest with its output unbuffered, so that its log is current while it runs (its tail is
/// quoted when something goes wrong, and the client reads the case list from it).
fn wstest_command(wstest: &Path) -> Command {
    let mut command = Command::new(wstest);
    command.env("PYTHONUNBUFFERED", "1");
    command
}

/// Writes the case ids wstest's fuzzingserver lists in its log (`Cases = ['1.1.1', ...]`,
/// printed before it listens) to `path`, one per line; false if the log has no such line.
fn write_case_ids(wstest_log: &Path, path: &Path) -> bool {
    let text = fs::read_to_string(wstest_log).unwrap_or_default();
    let Some(list) = text.lines().find_map(|l| l.trim().strip_prefix("Cases = ")) else {
        return false;
    };
    let ids: Vec<&str> = list
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        // Python 2 may print unicode strings as u'1.1.1'.
        .map(|id| id.trim().trim_start_matches('u').trim_matches(['\'', '"']))
        .filter(|id| !id.is_empty())
        .collect();
    !ids.is_empty() && fs::write(path, ids.join("\n") + "\n").is_ok()
}

fn print_problems(role: Role, problems: &[String]) {
    println!("autobahn {}: the run did not end cleanly:", role.name());
    for problem in problems {
        println!("  {}", problem.replace('\n', "\n  "));
    }
}

/// A command running to completion in the background, its output in a log, and the process
/// it talks to (whose log is quoted too when it goes wrong).
struct Run {
    guard: Guard,
    line: String,
    log: PathBuf,
    peer: (String, PathBuf),
    started: Instant,
}

impl Run {
    fn start(command: &mut Command, log: PathBuf, peer: (String, PathBuf)) -> Result<Self> {
        let line = cmd::show(command);
        let guard = spawn_logged(command, &log, &line)?;
        Ok(Self {
            guard,
            line,
            log,
            peer,
            started: Instant::now(),
        })
    }

    /// Waits for it until `deadline`, and stops it there. On failure the error names the
    /// command and quotes the end of its log and of its peer's.
    fn finish(mut self, deadline: Instant) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let status = cmd::wait(self.guard.child(), left).map_err(|e| format!("{e:#}"))?;
        if status.is_none() {
            // Stopped before the logs are read: what it printed last is in them.
            cmd::stop(self.guard.child());
        }
        let what = match status {
            Some(status) if status.success() => return Ok(()),
            Some(status) => format!("`{}` failed ({status})", self.line),
            None => format!(
                "`{}` did not finish within {} s (stopped)",
                self.line,
                self.started.elapsed().as_secs()
            ),
        };
        let (peer, peer_log) = &self.peer;
        Err(format!(
            "{what}; {}\n{peer}: {}",
            log_note(&self.log),
            log_note(peer_log)
        ))
    }
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
        &Expected::load(&Role::ServerH2.expected_path(ws))?,
        &Expected::load(&Role::Client.expected_path(ws))?,
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `shard` runs case `id` (wstest: selected by `cases`, not by `exclude-cases`).
    fn runs(shard: &Shard, id: &str) -> bool {
        let id = CaseId::new(id);
        shard.cases.iter().any(|p| id.matches(p)) && !shard.exclude.iter().any(|p| id.matches(p))
    }

    #[test]
    fn a_full_run_gives_every_case_to_exactly_one_shard() {
        let shards = Shard::plan(Path::new("x"), &[]);
        assert_eq!(shards.len(), 2);
        for id in [
            "1.1.1", "5.19", "9.8.6", "12.1.1", "12.2.18", "12.5.3", "13.1.1", "13.7.18",
        ] {
            let excluded = EXCLUDED.iter().any(|p| CaseId::new(id).matches(p));
            let count = shards.iter().filter(|s| runs(s, id)).count();
            assert_eq!(count, usize::from(!excluded), "case {id}");
        }
    }

    #[test]
    fn a_selected_run_is_one_shard() {
        let shards = Shard::plan(Path::new("x"), &["9.*".to_owned()]);
        assert_eq!(shards.len(), 1);
        assert!(runs(&shards[0], "9.1.1"));
        assert!(!runs(&shards[0], "1.1.1"));
    }
}
