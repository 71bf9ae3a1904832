//! Child processes with time limits, program lookup and loopback ports.
//!
//! Nothing here waits without a bound:
//! - every wait on a child has a limit, shortened to the deadline of the step that runs it
//!   ([`within`]); a child that overruns is stopped together with its descendants ([`stop`]);
//! - a child's output is read by threads as it comes (a full pipe never blocks the child),
//!   passed on to the terminal and kept as a tail, so a failure quotes the last lines;
//! - those threads are given up on after a short grace once the child is gone: a grandchild
//!   that still holds the pipe open cannot hold the caller either.

use std::{
    cell::Cell,
    collections::{BTreeSet, VecDeque},
    env,
    ffi::OsStr,
    fs,
    io::{self, IsTerminal as _, Read, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// How often a running child is polled for its exit.
const POLL: Duration = Duration::from_millis(100);

/// How long a child gets to exit after SIGTERM before it (and what it started) is killed.
const GRACE: Duration = Duration::from_secs(5);

/// How long the output of a finished child may take to reach its end: longer means a leftover
/// process holds the pipe, and it is no longer waited for.
const DRAIN: Duration = Duration::from_secs(5);

/// Lines of output quoted when a command fails or overruns.
pub(crate) const TAIL_LINES: usize = 20;

thread_local! {
    /// The deadline of the step running on this thread, if any (see [`within`]).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with every wait of this module ending at the latest `limit` from now (or at the
/// deadline already in force, if that is sooner): the bound of a whole step, whatever its
/// commands' own limits add up to.
pub(crate) fn within<T>(limit: Duration, f: impl FnOnce() -> T) -> T {
    let outer = DEADLINE.get();
    let mine = Instant::now() + limit;
    DEADLINE.set(Some(outer.map_or(mine, |outer| outer.min(mine))));
    let result = f();
    DEADLINE.set(outer);
    result
}

/// `limit`, shortened to what is left of the step's deadline.
pub(crate) fn bound(limit: Duration) -> Duration {
    DEADLINE.get().map_or(limit, |d| {
        limit.min(d.saturating_duration_since(Instant::now()))
    })
}

/// Renders a command as a shell-like line, for logs and error messages.
pub(crate) fn show(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            line.push_str(&format!("{}={} ", key.to_string_lossy(), quote(value)));
        }
    }
    line.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` to completion with its output on the terminal; fails on a non-zero exit or
/// when it runs longer than `limit` (it is then stopped, and the error quotes its last lines).
pub(crate) fn run(cmd: &mut Command, limit: Duration) -> Result<()> {
    let line = show(cmd);
    println!("$ {line}");
    keep_colours(cmd);
    let mut running = Running::spawn(cmd, &line, Sink::Stdout)?;
    running.finish(&line, limit).map(drop)
}

/// Runs `cmd` and returns its standard output; standard error goes to the terminal (and is
/// quoted if the command fails or overruns).
pub(crate) fn stdout_of(cmd: &mut Command, limit: Duration) -> Result<String> {
    let line = show(cmd);
    let mut running = Running::spawn(cmd, &line, Sink::Capture)?;
    let out = running.finish(&line, limit)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Runs `cmd` quietly (a probe such as `cargo nextest --version`): whether it succeeded, and
/// its standard output. Fails only if it cannot start or runs longer than `limit`.
pub(crate) fn probe(cmd: &mut Command, limit: Duration) -> Result<(bool, String)> {
    let line = show(cmd);
    let mut running = Running::spawn_quiet(cmd, &line)?;
    let limit = bound(limit);
    match wait(&mut running.child, limit)? {
        Some(status) => {
            let out = running.drain();
            Ok((status.success(), String::from_utf8_lossy(&out).into_owned()))
        }
        None => {
            stop(&mut running.child);
            bail!(
                "`{line}` did not finish within {} s (stopped); {}",
                limit.as_secs(),
                running.tail.note("its output")
            )
        }
    }
}

/// With its output on a pipe, cargo (and what uses the same convention) would drop colours;
/// keep them when ours go to a terminal.
fn keep_colours(cmd: &mut Command) {
    if io::stderr().is_terminal() && env::var_os("CARGO_TERM_COLOR").is_none() {
        cmd.env("CARGO_TERM_COLOR", "always");
    }
}

/// Where a child's standard output goes.
#[derive(Clone, Copy)]
enum Sink {
    Stdout,
    Capture,
}

/// A child whose output is being read by threads.
struct Running {
    child: Child,
    tail: Tail,
    out: mpsc::Receiver<Vec<u8>>,
    err: mpsc::Receiver<Vec<u8>>,
}

impl Running {
    fn spawn(cmd: &mut Command, line: &str, sink: Sink) -> Result<Self> {
        Self::start(cmd, line, Some(sink))
    }

    fn spawn_quiet(cmd: &mut Command, line: &str) -> Result<Self> {
        Self::start(cmd, line, None)
    }

    /// `sink` None: stdout is captured and stderr only kept in the tail.
    fn start(cmd: &mut Command, line: &str, sink: Option<Sink>) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        let tail = Tail::default();
        let stdout = child.stdout.take().context("child stdout is not piped")?;
        let stderr = child.stderr.take().context("child stderr is not piped")?;
        let (out_to, err_to) = match sink {
            Some(Sink::Stdout) => (To::Stdout, To::Stderr),
            Some(Sink::Capture) => (To::Capture, To::Stderr),
            None => (To::Capture, To::Nowhere),
        };
        Ok(Self {
            child,
            out: pump(Pipe::Out(stdout), out_to, tail.clone()),
            err: pump(Pipe::Err(stderr), err_to, tail.clone()),
            tail,
        })
    }

    /// Waits at most `limit` (within the step's deadline); returns the captured stdout.
    fn finish(&mut self, line: &str, limit: Duration) -> Result<Vec<u8>> {
        let limit = bound(limit);
        let status = wait(&mut self.child, limit)?;
        if status.is_none() {
            stop(&mut self.child);
        }
        let out = self.drain();
        match status {
            Some(status) if status.success() => Ok(out),
            Some(status) => bail!("`{line}` failed ({status})"),
            None => bail!(
                "`{line}` did not finish within {} s (stopped); {}",
                limit.as_secs(),
                self.tail.note("its output")
            ),
        }
    }

    /// The rest of the output, waiting at most [`DRAIN`] for each pipe to end.
    fn drain(&mut self) -> Vec<u8> {
        let out = self.out.recv_timeout(DRAIN).unwrap_or_default();
        let _ = self.err.recv_timeout(DRAIN);
        out
    }
}

enum Pipe {
    Out(ChildStdout),
    Err(ChildStderr),
}

enum To {
    Stdout,
    Stderr,
    Capture,
    Nowhere,
}

/// Reads `pipe` to its end on a thread: passes it on as `to` says, keeps its last lines in
/// `tail`, and sends what it captured (nothing unless `to` is Capture) when the pipe ends.
fn pump(pipe: Pipe, to: To, tail: Tail) -> mpsc::Receiver<Vec<u8>> {
    let (done, result) = mpsc::channel();
    thread::spawn(move || {
        let mut pipe: Box<dyn Read> = match pipe {
            Pipe::Out(p) => Box::new(p),
            Pipe::Err(p) => Box::new(p),
        };
        let mut captured = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            // The terminal going away must not stop the reading: the child would block.
            match to {
                To::Stdout => drop(io::stdout().lock().write_all(chunk)),
                To::Stderr => drop(io::stderr().lock().write_all(chunk)),
                To::Capture => captured.extend_from_slice(chunk),
                To::Nowhere => {}
            }
            if !matches!(to, To::Capture) {
                tail.push(chunk);
            }
        }
        let _ = done.send(captured);
    });
    result
}

/// The last [`TAIL_LINES`] lines of a child's output (stdout and stderr as they came).
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<TailLines>>);

#[derive(Default)]
struct TailLines {
    lines: VecDeque<String>,
    partial: Vec<u8>,
}

/// Longest line kept in a tail; the rest of it is cut.
const LINE_MAX: usize = 400;

impl Tail {
    fn push(&self, chunk: &[u8]) {
        let mut t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for &byte in chunk {
            if byte == b'\n' {
                let line = String::from_utf8_lossy(&t.partial).trim_end().to_owned();
                t.partial.clear();
                t.lines.push_back(line);
                if t.lines.len() > TAIL_LINES {
                    t.lines.pop_front();
                }
            } else if t.partial.len() < LINE_MAX {
                t.partial.push(byte);
            }
        }
    }

    fn text(&self) -> String {
        let t = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut lines: Vec<String> = t.lines.iter().cloned().collect();
        if !t.partial.is_empty() {
            lines.push(String::from_utf8_lossy(&t.partial).into_owned());
        }
        let skip = lines.len().saturating_sub(TAIL_LINES);
        lines[skip..].join("\n")
    }

    /// "its last lines:\n..." or "it printed nothing".
    fn note(&self, what: &str) -> String {
        let text = self.text();
        if text.trim().is_empty() {
            format!("{what}: nothing")
        } else {
            format!("the end of {what}:\n{text}")
        }
    }
}

/// Waits for `child` at most `limit` (within the step's deadline); `None` means it is still
/// running.
pub(crate) fn wait(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + bound(limit);
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

/// Stops `child`: SIGTERM first so it can stop its own children (cargo, nextest, wstest),
/// then SIGKILL, after a grace period, for it and for every process it started that is still
/// there (a leftover grandchild would otherwise keep running and keep its pipes open).
/// Bounded: it never waits longer than twice the grace period.
pub(crate) fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id();
    let mut tree = descendants(pid);
    signal("TERM", &[pid]);
    let exited = wait_unbounded_by_step(child, GRACE).is_some();
    if !exited {
        tree.extend(descendants(pid));
        // Fails only if the child is already gone, which is what we want.
        let _ = child.kill();
    }
    let left: Vec<u32> = tree.into_iter().filter(|p| alive(*p)).collect();
    if !left.is_empty() {
        signal("KILL", &left);
    }
    if !exited {
        let _ = wait_unbounded_by_step(child, GRACE);
    }
}

/// [`wait`] without the step's deadline: stopping a child must work after it has passed.
fn wait_unbounded_by_step(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => return None,
        }
    }
}

fn signal(name: &str, pids: &[u32]) {
    let mut kill = Command::new("kill");
    kill.arg(format!("-{name}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = kill.status();
}

/// Whether `pid` is running (a zombie waiting for its parent to reap it is not).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace()
                .next()
                .map(|state| !matches!(state, "Z" | "X"))
        })
        .unwrap_or(false)
}

/// Every process below `pid` (children, their children...), from `/proc`.
fn descendants(pid: u32) -> BTreeSet<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| parent_pid(&stat))
            {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut found = BTreeSet::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, ppid) in &parent_of {
            if ppid == parent && found.insert(p) {
                frontier.push(p);
            }
        }
    }
    found
}

/// The parent pid in a `/proc/PID/stat` line: `pid (comm) state ppid ...`; comm may hold
/// spaces and parentheses, so the fields are counted from the last `)`.
fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A child process that is stopped when this value is dropped (servers used by a step).
#[derive(Debug)]
pub(crate) struct Guard {
    child: Child,
    name: String,
}

impl Guard {
    pub(crate) fn new(child: Child, name: impl Into<String>) -> Self {
        Self {
            child,
            name: name.into(),
        }
    }

    pub(crate) fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Fails if the process has already exited (a server must outlive the run that uses it).
    pub(crate) fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited during the run ({status})", self.name),
            Err(error) => bail!("cannot poll {}: {error}", self.name),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Finds `name` on `PATH`, or in the sbin directories where Debian puts daemons.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A loopback port that was free a moment ago. Another process may take it before we do; the
/// server we start then fails to bind and the step reports that.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`, failing early if the
/// server process that should listen there exits.
pub(crate) fn wait_for_port(port: u16, server: &mut Guard, limit: Duration) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let limit = bound(limit);
    let deadline = Instant::now() + limit;
    loop {
        server.check_running()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} is not listening on {addr} after {} s",
                server.name,
                limit.as_secs()
            );
        }
        thread::sleep(POLL);
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_overruns_is_stopped_with_its_last_lines() {
        let started = Instant::now();
        let error = run(
            Command::new("sh").args(["-c", "echo one; echo two >&2; exec sleep 30"]),
            Duration::from_millis(500),
        )
        .unwrap_err()
        .to_string();
        assert!(started.elapsed() < Duration::from_secs(15), "{error}");
        assert!(error.contains("did not finish within 0 s"), "{error}");
        // Two pipes, two threads: the lines of each are in order, not across them.
        assert!(error.contains("one") && error.contains("two"), "{error}");
    }

    #[test]
    fn a_grandchild_holding_the_pipe_does_not_hold_the_caller() {
        // The shell exits at once; the sleep it left behind keeps stdout open for 30 s.
        let started = Instant::now();
        let out = stdout_of(
            Command::new("sh").args(["-c", "echo hi; sleep 30 & exit 0"]),
            Duration::from_secs(20),
        );
        assert!(started.elapsed() < Duration::from_secs(15));
        // The output may or may not have arrived in time; the call returned either way.
        let _ = out;
    }

    #[test]
    fn stop_takes_the_children_along() {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30 & sleep 30; wait"])
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(300));
        let tree = descendants(child.id());
        assert!(!tree.is_empty());
        let started = Instant::now();
        stop(&mut child);
        assert!(started.elapsed() < Duration::from_secs(12));
        thread::sleep(Duration::from_millis(200));
        assert!(tree.iter().all(|p| !alive(*p)), "{tree:?} still there");
    }

    #[test]
    fn the_step_deadline_shortens_every_wait() {
        let started = Instant::now();
        let error = within(Duration::from_millis(300), || {
            run(Command::new("sleep").arg("30"), Duration::from_secs(60))
        })
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{error}");
        assert_eq!(bound(Duration::from_secs(7)), Duration::from_secs(7));
    }

    #[test]
    fn a_probe_reports_failure_without_failing() {
        let (ok, out) = probe(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(!ok);
        assert_eq!(out, "out\n");
    }

    #[test]
    fn parent_pids_survive_odd_names() {
        assert_eq!(parent_pid("12 (a) b) c) S 7 12 12 0"), Some(7));
        assert_eq!(parent_pid("garbage"), None);
    }
}
