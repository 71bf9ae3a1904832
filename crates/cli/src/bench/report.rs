//! Counting while a scenario runs, the server probe (`/proc`), and the summary.

use std::{
    cell::{Cell, RefCell},
    fmt::Write as _,
    rc::Rc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// The measurement window and what was counted in it; shared by the tasks of one thread.
#[derive(Debug)]
pub(crate) struct Stats {
    /// Start and end of the measured window (after the warm-up).
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    /// Messages received in the window (including those whose latency was not recorded).
    pub(crate) messages: Cell<u64>,
    /// Payload bytes received in the window.
    pub(crate) bytes: Cell<u64>,
    /// Messages received since the start, warm-up included (for the progress bar).
    pub(crate) progress: Cell<u64>,
    pub(crate) errors: Cell<u64>,
    /// Messages that did not match what was expected (wrong payload, order or opcode).
    pub(crate) mismatches: Cell<u64>,
    /// Latency in microseconds.
    pub(crate) latency: RefCell<Histogram<u64>>,
    first_error: RefCell<Option<String>>,
}

impl Stats {
    pub(crate) fn new(warmup: Duration, duration: Duration) -> anyhow::Result<Rc<Self>> {
        let start = Instant::now() + warmup;
        Ok(Rc::new(Self {
            start,
            end: start + duration,
            messages: Cell::new(0),
            bytes: Cell::new(0),
            progress: Cell::new(0),
            errors: Cell::new(0),
            mismatches: Cell::new(0),
            latency: RefCell::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?),
            first_error: RefCell::new(None),
        }))
    }

    pub(crate) fn finished(&self, now: Instant) -> bool {
        now >= self.end
    }

    /// Count one received message of `len` payload bytes, sent (or due to be sent) at `sent`.
    pub(crate) fn record(&self, sent: Instant, now: Instant, len: usize) {
        self.progress.set(self.progress.get() + 1);
        if now < self.start || now >= self.end {
            return;
        }
        self.messages.set(self.messages.get() + 1);
        self.bytes.set(self.bytes.get() + len as u64);
        let us = now.saturating_duration_since(sent).as_micros();
        self.latency
            .borrow_mut()
            .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
    }

    /// Count a message by the time it was *sent* (or due): inside the window it counts,
    /// whenever it arrives (fan-out: every publication of the window must be delivered).
    pub(crate) fn record_by_sent(&self, sent: Instant, now: Instant, len: usize) {
        self.progress.set(self.progress.get() + 1);
        if sent < self.start || sent >= self.end {
            return;
        }
        self.messages.set(self.messages.get() + 1);
        self.bytes.set(self.bytes.get() + len as u64);
        let us = now.saturating_duration_since(sent).as_micros();
        self.latency
            .borrow_mut()
            .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
    }

    pub(crate) fn error(&self, e: &anyhow::Error) {
        self.errors.set(self.errors.get() + 1);
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }

    pub(crate) fn mismatch(&self) {
        self.mismatches.set(self.mismatches.get() + 1);
    }
}

/// CPU time and memory of the server process, from `/proc/PID/stat` and `/proc/PID/status`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerProbe {
    pid: u32,
    ticks_per_second: u64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerSample {
    /// User + system CPU time.
    pub(crate) cpu: Duration,
    /// Resident set size in KiB.
    pub(crate) rss_kib: u64,
}

impl ServerProbe {
    pub(crate) fn new(pid: u32) -> anyhow::Result<Self> {
        let probe = Self {
            pid,
            ticks_per_second: clock_ticks(),
        };
        probe.sample()?;
        Ok(probe)
    }

    pub(crate) fn sample(&self) -> anyhow::Result<ServerSample> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // The command name (field 2) may hold spaces; fields after it are counted from ')'.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 (utime) and 15 (stime) of proc(5); `after` starts at field 3.
        let ticks = |i: usize| -> anyhow::Result<u64> {
            Ok(fields
                .get(i - 3)
                .ok_or_else(|| anyhow::anyhow!("short /proc/{}/stat", self.pid))?
                .parse()?)
        };
        let total = ticks(14)? + ticks(15)?;
        let cpu = Duration::from_nanos(total * 1_000_000_000 / self.ticks_per_second);
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Ok(ServerSample { cpu, rss_kib })
    }
}

/// `sysconf(_SC_CLK_TCK)`, read through `getconf` (100 on every Linux we know of).
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The summary of one run; printed as text or, with `--json`, as one JSON object.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    /// The scenario's parameters, as given.
    pub(crate) params: serde_json::Value,
    /// Length of the measured window in seconds.
    pub(crate) seconds: f64,
    pub(crate) messages: u64,
    pub(crate) msgs_per_sec: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) latency_us: Option<Latency>,
    pub(crate) errors: u64,
    pub(crate) mismatches: Option<u64>,
    pub(crate) first_error: Option<String>,
    pub(crate) server: Option<ServerReport>,
    /// Scenario-specific figures (connections held, RSS per connection, ...).
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) mean: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ServerReport {
    pub(crate) pid: u32,
    /// Server CPU time (user + system) during the window, in seconds.
    pub(crate) cpu_seconds: f64,
    /// Server CPU time per message received by the generator, in microseconds.
    pub(crate) cpu_us_per_msg: Option<f64>,
    /// Server CPU use during the window, in percent of one core.
    pub(crate) cpu_percent: f64,
    pub(crate) rss_kib_start: u64,
    pub(crate) rss_kib_end: u64,
    pub(crate) rss_kib_max: u64,
}

impl Report {
    pub(crate) fn new(
        scenario: &'static str,
        params: serde_json::Value,
        stats: &Stats,
        window: Duration,
        count_messages: bool,
    ) -> Self {
        let seconds = window.as_secs_f64();
        let messages = stats.messages.get();
        let hist = stats.latency.borrow();
        let latency = (!hist.is_empty()).then(|| Latency {
            p50: hist.value_at_quantile(0.5),
            p90: hist.value_at_quantile(0.9),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
            mean: (hist.mean() * 10.0).round() / 10.0,
        });
        Self {
            scenario,
            params,
            seconds,
            messages,
            msgs_per_sec: messages as f64 / seconds,
            mb_per_sec: stats.bytes.get() as f64 / seconds / 1e6,
            latency_us: latency,
            errors: stats.errors.get(),
            mismatches: count_messages.then(|| stats.mismatches.get()),
            first_error: stats.first_error.borrow().clone(),
            server: None,
            extra: serde_json::Map::new(),
        }
    }

    pub(crate) fn with_server(
        mut self,
        pid: u32,
        first: ServerSample,
        last: ServerSample,
        rss_max: u64,
    ) -> Self {
        let cpu = last.cpu.saturating_sub(first.cpu).as_secs_f64();
        self.server = Some(ServerReport {
            pid,
            cpu_seconds: cpu,
            cpu_us_per_msg: (self.messages > 0).then(|| cpu * 1e6 / self.messages as f64),
            cpu_percent: cpu * 100.0 / self.seconds,
            rss_kib_start: first.rss_kib,
            rss_kib_end: last.rss_kib,
            rss_kib_max: rss_max.max(last.rss_kib),
        });
        self
    }

    pub(crate) fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        let mut out = String::new();
        writeln!(out, "scenario   {}  {}", self.scenario, self.params)?;
        writeln!(out, "window     {:.2} s", self.seconds)?;
        if self.messages > 0 || self.latency_us.is_some() {
            writeln!(
                out,
                "messages   {}  ({:.0} msg/s, {:.2} MB/s)",
                self.messages, self.msgs_per_sec, self.mb_per_sec
            )?;
        }
        if let Some(l) = &self.latency_us {
            writeln!(
                out,
                "latency    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (µs; mean {:.1})",
                fmt_us(l.p50),
                fmt_us(l.p90),
                fmt_us(l.p99),
                fmt_us(l.p999),
                fmt_us(l.max),
                l.mean
            )?;
        }
        for (k, v) in &self.extra {
            writeln!(out, "{k:<10} {v}")?;
        }
        match self.mismatches {
            Some(m) => writeln!(
                out,
                "errors     {}  (mismatched payloads: {m})",
                self.errors
            )?,
            None => writeln!(out, "errors     {}", self.errors)?,
        }
        if let Some(e) = &self.first_error {
            writeln!(out, "first      {e}")?;
        }
        if let Some(s) = &self.server {
            write!(
                out,
                "server     pid {}: CPU {:.3} s ({:.0}% of a core)",
                s.pid, s.cpu_seconds, s.cpu_percent
            )?;
            if let Some(per) = s.cpu_us_per_msg {
                write!(out, ", {per:.2} µs/msg")?;
            }
            writeln!(
                out,
                "; RSS {} → {} KiB (max {})",
                s.rss_kib_start, s.rss_kib_end, s.rss_kib_max
            )?;
        }
        print!("{out}");
        Ok(())
    }
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        us.to_string()
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal or with `--quiet`),
/// ticking with the message rate.
pub(crate) fn progress(
    stats: &Rc<Stats>,
    quiet: bool,
    unit: &'static str,
) -> tokio::task::JoinHandle<()> {
    let stats = Rc::clone(stats);
    tokio::task::spawn_local(async move {
        let begin = Instant::now();
        let total = stats.end.saturating_duration_since(begin);
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total.as_millis() as u64)
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed}/{duration} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let mut last = (Instant::now(), 0u64);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let now = Instant::now();
            let count = stats.progress.get();
            let rate = (count - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, count);
            let phase = if now < stats.start {
                "warm-up"
            } else {
                "measuring"
            };
            bar.set_position(now.duration_since(begin).as_millis() as u64);
            bar.set_message(format!(
                "{phase}: {rate:.0} {unit}/s, errors {}",
                stats.errors.get() + stats.mismatches.get()
            ));
            if now >= stats.end {
                bar.finish_and_clear();
                return;
            }
        }
    })
}
