//! Child processes with time limits, program lookup and loopback ports.

use std::{
    env,
    ffi::OsStr,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// How often a running child is polled for its exit.
const POLL: Duration = Duration::from_millis(100);

/// How long a child gets to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

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
/// when it runs longer than `limit` (it is then stopped).
pub(crate) fn run(cmd: &mut Command, limit: Duration) -> Result<()> {
    let line = show(cmd);
    println!("$ {line}");
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    match wait(&mut child, limit)? {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("`{line}` failed ({status})"),
        None => {
            stop(&mut child);
            bail!("`{line}` did not finish within {} s", limit.as_secs())
        }
    }
}

/// Runs `cmd` and returns its standard output; standard error goes to the terminal.
pub(crate) fn stdout_of(cmd: &mut Command, limit: Duration) -> Result<String> {
    let line = show(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    // Read on a thread so a chatty child cannot block on a full pipe while we poll it.
    let mut pipe = child.stdout.take().context("child stdout is not piped")?;
    let reader = thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut text).map(|_| text)
    });
    let status = wait(&mut child, limit)?;
    if status.is_none() {
        stop(&mut child);
    }
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread of `{line}` panicked"))?
        .with_context(|| format!("reading the output of `{line}`"))?;
    match status {
        Some(status) if status.success() => Ok(text),
        Some(status) => bail!("`{line}` failed ({status})"),
        None => bail!("`{line}` did not finish within {} s", limit.as_secs()),
    }
}

/// Waits for `child` at most `limit`; `None` means it is still running.
pub(crate) fn wait(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
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
/// SIGKILL if it is still there after a grace period.
pub(crate) fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    if term.is_ok() && matches!(wait(child, GRACE), Ok(Some(_))) {
        return;
    }
    // Both can only fail if the child is already gone, which is what we want.
    let _ = child.kill();
    let _ = child.wait();
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
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
