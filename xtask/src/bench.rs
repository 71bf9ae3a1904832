//! `cargo xtask bench-peers`: duplex against tokio-tungstenite and fastwebsockets, in one run.
//!
//! Builds `duplex` and the peer echo servers (`bench/peers`, a workspace of its own) in
//! release mode, checks that the machine is quiet, then runs every point of the matrix
//! against every server: the server pinned to one core, `duplex bench` pinned to another,
//! servers interleaved (their order rotates with each repetition), each point repeated. The
//! medians (min–max) go into a markdown table and an SVG chart in `docs/benchmarks.md`,
//! between marker comments, so the rest of that file is left alone.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{cmd, workspace::Workspace};

const BEGIN: &str = "<!-- bench-peers:begin (written by `cargo xtask bench-peers`) -->";
const END: &str = "<!-- bench-peers:end -->";
const DOC: &str = "docs/benchmarks.md";
const CHART: &str = "docs/bench/peers-cpu.svg";

/// Options of `cargo xtask bench-peers`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Short points (0.5 s warm-up, 2 s measured): the whole matrix in about 10 minutes.
    #[arg(long)]
    quick: bool,
    /// Measured seconds per point [default: 5, or 2 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// Repetitions of every point (at least 3).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Run only the points whose name contains this text (e.g. `20 B`, `idle`).
    #[arg(long)]
    only: Option<String>,
    /// Print the results, leave docs/benchmarks.md alone.
    #[arg(long)]
    no_write: bool,
    /// The core the server is pinned to.
    #[arg(long, default_value_t = 0)]
    server_cpu: u32,
    /// The core the load generator is pinned to.
    #[arg(long, default_value_t = 1)]
    client_cpu: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Duplex,
    Tungstenite,
    Fastwebsockets,
}

impl Server {
    const ALL: [Self; 3] = [Self::Duplex, Self::Tungstenite, Self::Fastwebsockets];

    const fn name(self) -> &'static str {
        match self {
            Self::Duplex => "duplex",
            Self::Tungstenite => "tokio-tungstenite",
            Self::Fastwebsockets => "fastwebsockets",
        }
    }

    const fn supports_deflate(self) -> bool {
        matches!(self, Self::Duplex)
    }

    const fn color(self) -> &'static str {
        match self {
            Self::Duplex => "#2f6fdb",
            Self::Tungstenite => "#9a9a9a",
            Self::Fastwebsockets => "#e08a1e",
        }
    }
}

/// One point of the matrix.
#[derive(Debug, Clone)]
struct Point {
    name: String,
    kind: Kind,
    /// `duplex bench` arguments after the scenario name.
    args: Vec<String>,
    deflate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Echo,
    Connect,
    Idle,
}

fn matrix() -> Vec<Point> {
    let echo = |c: u32, size: u32, label: &str, pipeline: u32, deflate: bool| {
        let mut name = format!("echo {c}×{label}");
        if pipeline > 1 {
            write!(name, " pipeline {pipeline}").ok();
        }
        if deflate {
            name.push_str(" deflate");
        }
        let mut args = vec![
            "-c".into(),
            c.to_string(),
            "-s".into(),
            size.to_string(),
            "-p".into(),
            pipeline.to_string(),
        ];
        if deflate {
            args.push("--deflate".into());
        }
        Point {
            name,
            kind: Kind::Echo,
            args,
            deflate,
        }
    };
    let shapes = [
        (1, 20, "20 B", 1),
        (100, 20, "20 B", 1),
        (100, 1024, "1 KiB", 1),
        (10, 65536, "64 KiB", 1),
        (100, 16384, "16 KiB", 8),
    ];
    let mut points: Vec<Point> = shapes
        .iter()
        .map(|&(c, s, l, p)| echo(c, s, l, p, false))
        .collect();
    points.push(Point {
        name: "handshakes (10 at a time)".into(),
        kind: Kind::Connect,
        args: vec!["-c".into(), "10".into()],
        deflate: false,
    });
    points.push(Point {
        name: "idle 10k connections".into(),
        kind: Kind::Idle,
        args: vec!["-n".into(), "10000".into(), "--verify".into()],
        deflate: false,
    });
    points.extend(shapes.iter().map(|&(c, s, l, p)| echo(c, s, l, p, true)));
    points
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rate: f64,
    cpu_us: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    rss_per_conn: Option<f64>,
    errors: f64,
}

#[derive(Debug)]
struct Row {
    point: Point,
    server: Server,
    samples: Vec<Sample>,
}

pub(crate) fn command(args: &Args) -> Result<bool> {
    if args.repeat < 3 {
        bail!("--repeat must be at least 3 (medians of fewer runs mean little)");
    }
    let ws = Workspace::locate()?;
    let seconds = args.seconds.unwrap_or(if args.quick { 2.0 } else { 5.0 });
    let warmup = if args.quick { 0.5 } else { 1.0 };
    for tool in ["taskset"] {
        if cmd::find_program(tool).is_none() {
            bail!("`{tool}` is needed (Debian package util-linux)");
        }
    }
    let duplex = ws.build_duplex()?;
    let peers = build_peers(&ws)?;
    // The builds above leave the load average high for a minute or two: let it settle.
    let before = Quiet::settle(Duration::from_secs(150));
    println!("machine before the run: {}", before.describe());
    if !before.is_quiet() {
        eprintln!(
            "\n*** WARNING: the machine is busy ({}); figures will be noisy and are marked so in \
             the report ***\n",
            before.describe()
        );
    }
    let points: Vec<Point> = matrix()
        .into_iter()
        .filter(|p| {
            args.only
                .as_ref()
                .is_none_or(|o| p.name.contains(o.as_str()))
        })
        .collect();
    let mut rows: Vec<Row> = Vec::new();
    let started = Instant::now();
    for point in &points {
        let servers: Vec<Server> = Server::ALL
            .into_iter()
            .filter(|s| !point.deflate || s.supports_deflate())
            .collect();
        let first_row = rows.len();
        rows.extend(servers.iter().map(|&server| Row {
            point: point.clone(),
            server,
            samples: Vec::new(),
        }));
        for rep in 0..args.repeat as usize {
            for k in 0..servers.len() {
                let i = (k + rep) % servers.len();
                let server = servers[i];
                let run = Run {
                    duplex: &duplex,
                    peers: &peers,
                    args,
                    seconds,
                    warmup,
                };
                let sample = run
                    .once(point, server)
                    .with_context(|| format!("{} on {}", point.name, server.name()))?;
                println!(
                    "[{:>4.0} s] {:<32} {:<18} {:>9.0}/s  cpu {:>6} µs/msg  p99 {:>7} µs{}",
                    started.elapsed().as_secs_f64(),
                    point.name,
                    server.name(),
                    sample.rate,
                    fmt_opt(sample.cpu_us, 2),
                    fmt_opt(sample.p99, 0),
                    sample
                        .rss_per_conn
                        .map(|b| format!("  {b:.0} B/conn"))
                        .unwrap_or_default()
                );
                rows[first_row + i].samples.push(sample);
            }
        }
    }
    // Right after the run the load average still counts the run itself: let it settle, so a
    // busy reading means other work.
    let after = Quiet::settle(Duration::from_secs(90));
    let elapsed = started.elapsed();
    println!("machine after the run: {}", after.describe());
    let markdown = render(&rows, &before, &after, seconds, warmup, args, elapsed)?;
    println!("\n{markdown}");
    if !args.no_write {
        write_doc(&ws.path(DOC), &markdown)?;
        let svg = chart(&rows);
        let chart_path = ws.path(CHART);
        if let Some(dir) = chart_path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&chart_path, svg)?;
        println!("wrote {DOC} and {CHART}");
    }
    Ok(true)
}

fn build_peers(ws: &Workspace) -> Result<PathBuf> {
    let mut build = ws.cargo();
    build
        .args(["build", "--release", "--manifest-path"])
        .arg(ws.path("bench/peers/Cargo.toml"))
        .arg("--target-dir")
        .arg(&ws.target);
    println!("$ {}", cmd::show(&build));
    cmd::run(&mut build, Duration::from_secs(30 * 60))?;
    let bin = ws.target.join("release").join("bench-peers");
    if !bin.is_file() {
        bail!("cargo built no {}", bin.display());
    }
    Ok(bin)
}

struct Run<'a> {
    duplex: &'a Path,
    peers: &'a Path,
    args: &'a Args,
    seconds: f64,
    warmup: f64,
}

impl Run<'_> {
    fn once(&self, point: &Point, server: Server) -> Result<Sample> {
        let port = cmd::free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new("taskset");
        command.args(["-c", &self.args.server_cpu.to_string()]);
        match server {
            Server::Duplex => command.arg(self.duplex).args([
                "--log",
                "warn",
                "echo",
                "--threads",
                "1",
                "--listen",
                &listen,
            ]),
            Server::Tungstenite => command.arg(self.peers).args(["tokio-tungstenite", &listen]),
            Server::Fastwebsockets => command.arg(self.peers).args(["fastwebsockets", &listen]),
        };
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", cmd::show(&command)))?;
        let mut guard = cmd::Guard::new(child, server.name());
        let pid = guard.child().id();
        cmd::wait_for_port(port, &mut guard, Duration::from_secs(10))?;
        let scenario = match point.kind {
            Kind::Echo => "echo",
            Kind::Connect => "connect",
            Kind::Idle => "idle",
        };
        let mut bench = Command::new("taskset");
        bench
            .args(["-c", &self.args.client_cpu.to_string()])
            .arg(self.duplex)
            .args(["--log", "warn", "bench", scenario])
            .args(&point.args)
            .args(["--url", &format!("ws://{listen}/")])
            .args(["--server-pid", &pid.to_string(), "--json", "--quiet"]);
        let hold = if point.kind == Kind::Idle {
            // The connections are held for this long before the server's RSS is read.
            3.0
        } else {
            bench.args(["--warmup", &format!("{}s", self.warmup)]);
            self.seconds
        };
        bench.args(["--duration", &format!("{hold}s")]);
        bench.stderr(Stdio::inherit());
        let out = cmd::stdout_of(&mut bench, Duration::from_secs_f64(hold + 120.0))?;
        guard.check_running()?;
        drop(guard);
        let report: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("parsing the report of {}", cmd::show(&bench)))?;
        let server_report = &report["server"];
        let rate = match point.kind {
            Kind::Idle => report["extra"]["held"].as_f64().unwrap_or(0.0),
            _ => report["msgs_per_sec"].as_f64().unwrap_or(0.0),
        };
        Ok(Sample {
            rate,
            cpu_us: server_report["cpu_us_per_msg"].as_f64(),
            p50: report["latency_us"]["p50"].as_f64(),
            p99: report["latency_us"]["p99"].as_f64(),
            rss_per_conn: report["extra"]["rss_bytes_per_conn"].as_f64(),
            errors: report["errors"].as_f64().unwrap_or(0.0)
                + report["mismatches"].as_f64().unwrap_or(0.0),
        })
    }
}

/// Load average and CPU idle share, read before and after the run.
#[derive(Debug, Clone, Copy)]
struct Quiet {
    load1: f64,
    /// Share of CPU time idle over one second, in percent.
    idle: f64,
}

impl Quiet {
    fn check() -> Self {
        let load1 = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN);
        let first = cpu_times();
        thread::sleep(Duration::from_secs(1));
        let second = cpu_times();
        let idle = match (first, second) {
            (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
                (i1 - i0) as f64 * 100.0 / (t1 - t0) as f64
            }
            _ => f64::NAN,
        };
        Self { load1, idle }
    }

    /// Check until the machine is quiet or `limit` has passed; the last reading.
    fn settle(limit: Duration) -> Self {
        let start = Instant::now();
        loop {
            let q = Self::check();
            if q.is_quiet() || start.elapsed() >= limit {
                return q;
            }
            thread::sleep(Duration::from_secs(4));
        }
    }

    fn is_quiet(&self) -> bool {
        self.load1 < 0.5 && self.idle > 90.0
    }

    fn describe(&self) -> String {
        format!(
            "load average {:.2}, CPU idle {:.0}% ({})",
            self.load1,
            self.idle,
            if self.is_quiet() { "quiet" } else { "BUSY" }
        )
    }
}

/// (idle + iowait, total) jiffies of all CPUs, from the first line of /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((idle, fields.iter().sum()))
}

fn median_range(values: &mut [f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some((median, values[0], values[n - 1]))
}

fn stat(row: &Row, f: impl Fn(&Sample) -> Option<f64>) -> Option<(f64, f64, f64)> {
    let mut values: Vec<f64> = row.samples.iter().filter_map(f).collect();
    median_range(&mut values)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

fn fmt_stat(s: Option<(f64, f64, f64)>, digits: usize) -> String {
    match s {
        Some((m, lo, hi)) => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        None => "–".into(),
    }
}

fn fmt_rate(s: Option<(f64, f64, f64)>) -> String {
    let k = |v: f64| {
        if v >= 10_000.0 {
            format!("{:.1}k", v / 1000.0)
        } else {
            format!("{v:.0}")
        }
    };
    match s {
        Some((m, lo, hi)) => format!("{} ({}–{})", k(m), k(lo), k(hi)),
        None => "–".into(),
    }
}

fn render(
    rows: &[Row],
    before: &Quiet,
    after: &Quiet,
    seconds: f64,
    warmup: f64,
    args: &Args,
    elapsed: Duration,
) -> Result<String> {
    let mut md = String::new();
    let when = cmd::stdout_of(
        Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]),
        Duration::from_secs(5),
    )
    .unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = cmd::stdout_of(
        Command::new("rustc").arg("--version"),
        Duration::from_secs(10),
    )
    .unwrap_or_default();
    writeln!(
        md,
        "Run of {}: {cores} × {cpu}, Linux {}, {}. Server on core {}, `duplex bench` on core {}; \
         {warmup} s warm-up + {seconds} s per point, {} repetitions, servers interleaved; \
         whole run {:.0} s.\n",
        when.trim(),
        kernel.trim(),
        rustc.trim(),
        args.server_cpu,
        args.client_cpu,
        args.repeat,
        elapsed.as_secs_f64()
    )?;
    writeln!(
        md,
        "Machine before: {}; after: {}.{}\n",
        before.describe(),
        after.describe(),
        if before.is_quiet() && after.is_quiet() {
            ""
        } else {
            " **The machine was not quiet: other work shared the cores, so absolute figures are \
             low and noisy; ratios between servers measured in the same run are the useful part.**"
        }
    )?;
    writeln!(
        md,
        "Medians (min–max). *CPU/msg* is the server process's user+system CPU time divided by \
         the messages echoed (lower is better); *vs fws* is that figure over fastwebsockets' at \
         the same point. Latency is from write to echo (closed loop).\n"
    )?;
    writeln!(
        md,
        "| point | server | msg/s | server CPU µs/msg | vs fws | p50 µs | p99 µs | errors |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|")?;
    for row in rows.iter().filter(|r| r.point.kind == Kind::Echo) {
        let cpu = stat(row, |s| s.cpu_us);
        let fws = rows
            .iter()
            .find(|r| r.point.name == row.point.name && r.server == Server::Fastwebsockets)
            .and_then(|r| stat(r, |s| s.cpu_us));
        let ratio = match (cpu, fws) {
            (Some((a, ..)), Some((b, ..))) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {ratio} | {} | {} | {} |",
            row.point.name,
            row.server.name(),
            fmt_rate(stat(row, |s| Some(s.rate))),
            fmt_stat(cpu, 2),
            fmt_opt(stat(row, |s| s.p50).map(|s| s.0), 0),
            fmt_opt(stat(row, |s| s.p99).map(|s| s.0), 0),
            row.samples.iter().map(|s| s.errors).sum::<f64>(),
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "| point | server | handshakes/s | server CPU µs/handshake | p99 µs | errors |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|")?;
    for row in rows.iter().filter(|r| r.point.kind == Kind::Connect) {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            row.point.name,
            row.server.name(),
            fmt_rate(stat(row, |s| Some(s.rate))),
            fmt_stat(stat(row, |s| s.cpu_us), 1),
            fmt_opt(stat(row, |s| s.p99).map(|s| s.0), 0),
            row.samples.iter().map(|s| s.errors).sum::<f64>(),
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "| point | server | connections held | server RSS per idle connection (bytes) | errors |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|")?;
    for row in rows.iter().filter(|r| r.point.kind == Kind::Idle) {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            row.point.name,
            row.server.name(),
            fmt_opt(stat(row, |s| Some(s.rate)).map(|s| s.0), 0),
            fmt_stat(stat(row, |s| s.rss_per_conn), 0),
            row.samples.iter().map(|s| s.errors).sum::<f64>(),
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "tokio-tungstenite and fastwebsockets implement no permessage-deflate, so the `deflate` \
         points are duplex alone.\n"
    )?;
    writeln!(
        md,
        "![server CPU per message, echo points without deflate](bench/peers-cpu.svg)\n"
    )?;
    let mut reproduce = String::from("cargo xtask bench-peers");
    if args.quick {
        reproduce.push_str(" --quick");
    }
    if let Some(s) = args.seconds {
        write!(reproduce, " --seconds {s}")?;
    }
    if args.repeat != 3 {
        write!(reproduce, " --repeat {}", args.repeat)?;
    }
    writeln!(md, "Reproduce: `{reproduce}`.")?;
    Ok(md)
}

/// Replace the text between the markers (adding them at the end the first time).
fn write_doc(path: &Path, body: &str) -> Result<()> {
    let old = fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let section = format!("{BEGIN}\n{body}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// A grouped bar chart of the server's CPU time per message at each echo point the servers
/// share (the deflate points are duplex's alone, and compressing 64 KiB costs a hundred times
/// more than echoing it: on one scale it would flatten every other bar).
fn chart(rows: &[Row]) -> String {
    let echo: Vec<&Row> = rows
        .iter()
        .filter(|r| r.point.kind == Kind::Echo && !r.point.deflate)
        .collect();
    let mut points: Vec<&str> = Vec::new();
    for r in &echo {
        if !points.contains(&r.point.name.as_str()) {
            points.push(&r.point.name);
        }
    }
    let value = |name: &str, server: Server| {
        echo.iter()
            .find(|r| r.point.name == name && r.server == server)
            .and_then(|r| stat(r, |s| s.cpu_us))
            .map(|s| s.0)
    };
    let max = points
        .iter()
        .flat_map(|p| Server::ALL.map(|s| value(p, s)))
        .flatten()
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (left, top, plot_h, group_w, bar_w) = (60.0, 40.0, 260.0, 110.0, 28.0);
    let width = left + group_w * points.len() as f64 + 20.0;
    let height = top + plot_h + 90.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="14">Server CPU time per echoed message (µs, median; lower is better)</text>"#
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = top + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.1}</text>"##,
            width - 20.0,
            left - 6.0,
            y + 4.0
        );
    }
    for (g, name) in points.iter().enumerate() {
        let x0 = left + group_w * g as f64 + 10.0;
        for (k, server) in Server::ALL.into_iter().enumerate() {
            let Some(v) = value(name, server) else {
                continue;
            };
            let h = plot_h * v / max;
            let x = x0 + bar_w * k as f64;
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{} {name}: {v:.2} µs</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{v:.1}</text>"#,
                top + plot_h - h,
                bar_w - 3.0,
                server.color(),
                server.name(),
                x + (bar_w - 3.0) / 2.0,
                top + plot_h - h - 3.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x0 + bar_w * 1.5,
            top + plot_h + 16.0,
            name.trim_start_matches("echo ")
        );
    }
    for (k, server) in Server::ALL.into_iter().enumerate() {
        let x = left + 150.0 * k as f64;
        let y = top + plot_h + 50.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{y}">{}</text>"#,
            y - 10.0,
            server.color(),
            x + 16.0,
            server.name()
        );
    }
    svg.push_str("</svg>\n");
    svg
}
