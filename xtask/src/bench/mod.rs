//! `cargo xtask bench-peers`: duplex against other WebSocket servers, in one run.
//!
//! Builds `duplex` and the Rust peer echo servers (`bench/peers`, a workspace of its own) in
//! release mode, installs the JavaScript peers (Bun from its npm package, Node `ws` from
//! `bench/peers/js`), checks that the machine is quiet, then runs every point of the matrix
//! against every server: the server pinned to one core, `duplex bench` pinned to another,
//! servers interleaved (their order rotates with each repetition), each point repeated. Echo
//! points compare `duplex echo` with tokio-tungstenite, fastwebsockets and Bun; hub points
//! compare `duplex serve` with a Bun hub and a Node `ws` hub. The medians (min–max) go into
//! markdown tables and an SVG chart in `docs/benchmarks.md`, between marker comments, so the
//! rest of that file is left alone.
//!
//! # Layout
//! - this file: the options, the matrix, the run and the machine-quiet check;
//! - `js`: installing Bun and the Node modules, and the hub configuration of `duplex serve`;
//! - `report`: medians, the markdown tables and the chart.

mod js;
mod report;

use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{cmd, workspace::Workspace};
use report::{fmt_opt, Versions};

const DOC: &str = "docs/benchmarks.md";
const CHART: &str = "docs/bench/peers-cpu.svg";

/// Options of `cargo xtask bench-peers`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Short points (0.5 s warm-up, 2 s measured) and short waits for a quiet machine: for
    /// smoke runs; the whole matrix takes about 20 minutes.
    #[arg(long)]
    quick: bool,
    /// Measured seconds per point [default: 5, or 2 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// Repetitions of every point (at least 3).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Run only the points whose name contains this text (e.g. `20 B`, `idle`, `hub`).
    #[arg(long)]
    only: Option<String>,
    /// Scale the connection counts of the hub points (e.g. 0.1 for a smoke run: 100 and 1,000
    /// subscribers instead of 1,000 and 10,000).
    #[arg(long, default_value_t = 1.0)]
    hub_scale: f64,
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
    /// `duplex echo --threads 1`.
    Duplex,
    Tungstenite,
    Fastwebsockets,
    /// `Bun.serve` (uWebSockets), `bench/peers/js/bun-echo.mjs`.
    Bun,
    /// `duplex serve` with the bench namespace (`js::hub_config`).
    DuplexHub,
    /// `bench/peers/js/bun-hub.mjs`.
    BunHub,
    /// `bench/peers/js/node-hub.mjs`.
    NodeHub,
}

impl Server {
    /// The echo servers, in the order of the tables and the chart.
    const ECHO: [Self; 4] = [
        Self::Duplex,
        Self::Tungstenite,
        Self::Fastwebsockets,
        Self::Bun,
    ];
    /// The hubs speaking duplex.v1.
    const HUBS: [Self; 3] = [Self::DuplexHub, Self::BunHub, Self::NodeHub];

    const fn name(self) -> &'static str {
        match self {
            Self::Duplex => "duplex",
            Self::Tungstenite => "tokio-tungstenite",
            Self::Fastwebsockets => "fastwebsockets",
            Self::Bun => "Bun (uWebSockets)",
            Self::DuplexHub => "duplex serve",
            Self::BunHub => "Bun hub (uWebSockets)",
            Self::NodeHub => "Node ws hub",
        }
    }

    const fn supports_deflate(self) -> bool {
        matches!(
            self,
            Self::Duplex | Self::Bun | Self::DuplexHub | Self::BunHub
        )
    }

    const fn color(self) -> &'static str {
        match self {
            Self::Duplex | Self::DuplexHub => "#2f6fdb",
            Self::Tungstenite | Self::NodeHub => "#9a9a9a",
            Self::Fastwebsockets => "#e08a1e",
            Self::Bun | Self::BunHub => "#8a4fbf",
        }
    }

    /// The path of the WebSocket endpoint.
    const fn path(self) -> &'static str {
        match self {
            Self::DuplexHub | Self::BunHub | Self::NodeHub => "/ws",
            _ => "/",
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
    /// Run against the hubs (duplex.v1) rather than the echo servers.
    hub: bool,
}

impl Point {
    fn servers(&self) -> Vec<Server> {
        let servers = if self.hub {
            Server::HUBS.to_vec()
        } else {
            Server::ECHO.to_vec()
        };
        servers
            .into_iter()
            .filter(|s| !self.deflate || s.supports_deflate())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Echo,
    Connect,
    Idle,
    Fanout,
}

impl Kind {
    const fn scenario(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Connect => "connect",
            Self::Idle => "idle",
            Self::Fanout => "fanout",
        }
    }
}

/// `n` with thousands separators: 10,000.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn matrix(hub_scale: f64) -> Vec<Point> {
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
            hub: false,
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
        hub: false,
    });
    points.push(Point {
        name: "idle 10k connections".into(),
        kind: Kind::Idle,
        args: vec!["-n".into(), "10000".into(), "--verify".into()],
        deflate: false,
        hub: false,
    });
    points.extend(shapes.iter().map(|&(c, s, l, p)| echo(c, s, l, p, true)));
    let scaled = |n: f64| ((n * hub_scale).round() as usize).max(1);
    // (subscribers, publications/s, padding bytes, deflate): the 1 KiB pair measures
    // compressed broadcast against the same publications uncompressed.
    let fanouts = [
        (scaled(1000.0), 200, 0, false),
        (scaled(10_000.0), 20, 0, false),
        (scaled(1000.0), 200, 1024, false),
        (scaled(1000.0), 200, 1024, true),
    ];
    for (subscribers, rate, padding, deflate) in fanouts {
        let mut name = format!("hub fan-out {} × {rate}/s", thousands(subscribers));
        let mut args = vec![
            "-n".into(),
            subscribers.to_string(),
            "--rate".into(),
            rate.to_string(),
        ];
        if padding > 0 {
            name.push_str(" 1 KiB");
            args.extend(["--padding".into(), padding.to_string()]);
        }
        if deflate {
            name.push_str(" deflate");
            args.push("--deflate".into());
        }
        points.push(Point {
            name,
            kind: Kind::Fanout,
            args,
            deflate,
            hub: true,
        });
    }
    let idle = scaled(10_000.0);
    points.push(Point {
        name: format!("hub idle {} connections", thousands(idle)),
        kind: Kind::Idle,
        args: vec![
            "-n".into(),
            idle.to_string(),
            "--subprotocol".into(),
            js::SUBPROTOCOL.into(),
            "--verify-pong".into(),
        ],
        deflate: false,
        hub: true,
    });
    points.push(Point {
        name: "hub handshakes (10 at a time)".into(),
        kind: Kind::Connect,
        args: vec![
            "-c".into(),
            "10".into(),
            "--subprotocol".into(),
            js::SUBPROTOCOL.into(),
        ],
        deflate: false,
        hub: true,
    });
    points
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    /// Messages (echoes, deliveries) or handshakes per second; connections held for idle.
    rate: f64,
    cpu_us: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    rss_per_conn: Option<f64>,
    /// Fan-out: deliveries expected (publications × subscribers) and not received.
    lost: Option<f64>,
    /// The server's RSS at the end of the window, KiB.
    rss_end_kib: Option<f64>,
    errors: f64,
}

#[derive(Debug)]
struct Row {
    point: Point,
    server: Server,
    samples: Vec<Sample>,
}

/// The programs a run starts.
#[derive(Debug)]
struct Tools {
    duplex: PathBuf,
    peers: PathBuf,
    js: js::Peers,
}

pub(crate) fn command(args: &Args) -> Result<bool> {
    if args.repeat < 3 {
        bail!("--repeat must be at least 3 (medians of fewer runs mean little)");
    }
    if !(args.hub_scale > 0.0 && args.hub_scale <= 10.0) {
        bail!("--hub-scale must be above 0 and at most 10");
    }
    let ws = Workspace::locate()?;
    let seconds = args.seconds.unwrap_or(if args.quick { 2.0 } else { 5.0 });
    let warmup = if args.quick { 0.5 } else { 1.0 };
    for tool in ["taskset"] {
        if cmd::find_program(tool).is_none() {
            bail!("`{tool}` is needed (Debian package util-linux)");
        }
    }
    let points: Vec<Point> = matrix(args.hub_scale)
        .into_iter()
        .filter(|p| {
            args.only
                .as_ref()
                .is_none_or(|o| p.name.contains(o.as_str()))
        })
        .collect();
    if points.is_empty() {
        bail!(
            "no point's name contains {:?}",
            args.only.as_deref().unwrap_or_default()
        );
    }
    let tools = Tools {
        duplex: ws.build_duplex()?,
        peers: build_peers(&ws)?,
        js: js::Peers::install(&ws)?,
    };
    let hub_config = js::hub_config(&ws)?;
    let versions = Versions {
        bun: tools.js.bun_version()?,
        node: tools.js.node_version()?,
    };
    // The builds above leave the load average high for a minute or two: let it settle.
    let before = Quiet::settle(Duration::from_secs(if args.quick { 15 } else { 150 }));
    println!("machine before the run: {}", before.describe());
    if !before.is_quiet() {
        eprintln!(
            "\n*** WARNING: the machine is busy ({}); figures will be noisy and are marked so in \
             the report ***\n",
            before.describe()
        );
    }
    let mut rows: Vec<Row> = Vec::new();
    let started = Instant::now();
    for point in &points {
        let servers = point.servers();
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
                    tools: &tools,
                    hub_config: &hub_config,
                    args,
                    seconds,
                    warmup,
                };
                let sample = run
                    .once(point, server)
                    .with_context(|| format!("{} on {}", point.name, server.name()))?;
                println!(
                    "[{:>4.0} s] {:<34} {:<22} {:>9.0}/s  cpu {:>6} µs/msg  p99 {:>7} µs{}{}",
                    started.elapsed().as_secs_f64(),
                    point.name,
                    server.name(),
                    sample.rate,
                    fmt_opt(sample.cpu_us, 2),
                    fmt_opt(sample.p99, 0),
                    sample
                        .rss_per_conn
                        .map(|b| format!("  {b:.0} B/conn"))
                        .unwrap_or_default(),
                    sample
                        .lost
                        .map(|l| format!("  lost {l:.0}"))
                        .unwrap_or_default()
                );
                rows[first_row + i].samples.push(sample);
            }
        }
    }
    // Right after the run the load average still counts the run itself: let it settle, so a
    // busy reading means other work.
    let after = Quiet::settle(Duration::from_secs(if args.quick { 10 } else { 90 }));
    let elapsed = started.elapsed();
    println!("machine after the run: {}", after.describe());
    let run = report::RunInfo {
        before: &before,
        after: &after,
        seconds,
        warmup,
        args,
        elapsed,
        versions: &versions,
    };
    let markdown = report::render(&rows, &run)?;
    println!("\n{markdown}");
    if !args.no_write {
        report::write_doc(&ws.path(DOC), &markdown)?;
        let svg = report::chart(&rows);
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
    tools: &'a Tools,
    hub_config: &'a js::HubConfigs,
    args: &'a Args,
    seconds: f64,
    warmup: f64,
}

impl Run<'_> {
    /// The command that starts `server` on `listen`, pinned to the server core.
    fn server_command(&self, server: Server, listen: &str, deflate: bool) -> Command {
        let tools = self.tools;
        let mut command = Command::new("taskset");
        command.args(["-c", &self.args.server_cpu.to_string()]);
        match server {
            Server::Duplex => command.arg(&tools.duplex).args([
                "--log",
                "warn",
                "echo",
                "--threads",
                "1",
                "--listen",
                listen,
            ]),
            Server::Tungstenite => command
                .arg(&tools.peers)
                .args(["tokio-tungstenite", listen]),
            Server::Fastwebsockets => command.arg(&tools.peers).args(["fastwebsockets", listen]),
            Server::Bun => {
                command
                    .arg(&tools.js.bun)
                    .arg(tools.js.script("bun-echo.mjs"))
                    .arg(listen);
                if deflate {
                    command.arg("--deflate");
                }
                &mut command
            }
            Server::DuplexHub => command
                .arg(&tools.duplex)
                .args(["--log", "warn", "serve", "--config"])
                .arg(if deflate {
                    &self.hub_config.deflate
                } else {
                    &self.hub_config.plain
                })
                .args(["--listen", listen, "--demo-ticker", "false"]),
            Server::BunHub => {
                command
                    .arg(&tools.js.bun)
                    .arg(tools.js.script("bun-hub.mjs"))
                    .arg(listen);
                if deflate {
                    command.arg("--deflate");
                }
                &mut command
            }
            Server::NodeHub => command
                .arg(&tools.js.node)
                .arg(tools.js.script("node-hub.mjs"))
                .arg(listen),
        };
        command
    }

    fn once(&self, point: &Point, server: Server) -> Result<Sample> {
        let port = cmd::free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut command = self.server_command(server, &listen, point.deflate);
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", cmd::show(&command)))?;
        let mut guard = cmd::Guard::new(child, server.name());
        let pid = guard.child().id();
        cmd::wait_for_port(port, &mut guard, Duration::from_secs(20))?;
        let mut bench = Command::new("taskset");
        bench
            .args(["-c", &self.args.client_cpu.to_string()])
            .arg(&self.tools.duplex)
            .args(["--log", "warn", "bench", point.kind.scenario()])
            .args(&point.args)
            .args(["--url", &format!("ws://{listen}{}", server.path())])
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
        // Connecting 10,000 subscribers comes before the window and takes a while on a busy
        // machine.
        let out = cmd::stdout_of(&mut bench, Duration::from_secs_f64(hold + 180.0))?;
        guard.check_running()?;
        drop(guard);
        let report: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("parsing the report of {}", cmd::show(&bench)))?;
        Ok(sample(point.kind, &report))
    }
}

/// The figures of one `duplex bench --json` report.
fn sample(kind: Kind, report: &Value) -> Sample {
    let server = &report["server"];
    let extra = &report["extra"];
    let rate = match kind {
        Kind::Idle => extra["held"].as_f64().unwrap_or(0.0),
        _ => report["msgs_per_sec"].as_f64().unwrap_or(0.0),
    };
    let fanout = kind == Kind::Fanout;
    Sample {
        rate,
        cpu_us: server["cpu_us_per_msg"].as_f64(),
        p50: report["latency_us"]["p50"].as_f64(),
        p99: report["latency_us"]["p99"].as_f64(),
        max: report["latency_us"]["max"].as_f64(),
        rss_per_conn: extra["rss_bytes_per_conn"].as_f64(),
        lost: extra["deliveries_missing"].as_f64().filter(|_| fanout),
        rss_end_kib: server["rss_kib_end"].as_f64().filter(|_| fanout),
        errors: report["errors"].as_f64().unwrap_or(0.0)
            + report["mismatches"].as_f64().unwrap_or(0.0),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn hub_points_run_on_the_hubs_and_scale_with_hub_scale() {
        let points = matrix(0.1);
        let hub: Vec<&Point> = points.iter().filter(|p| p.name.contains("hub")).collect();
        assert_eq!(hub.len(), 6, "{hub:?}");
        assert!(hub.iter().all(|p| p.hub));
        assert!(hub
            .iter()
            .filter(|p| !p.deflate)
            .all(|p| p.servers() == Server::HUBS));
        // Compressed broadcast: the hubs that negotiate permessage-deflate, beside the same
        // publications uncompressed.
        let compressed = hub
            .iter()
            .find(|p| p.deflate)
            .expect("a compressed fan-out point");
        assert_eq!(compressed.servers(), [Server::DuplexHub, Server::BunHub]);
        assert!(compressed.args.iter().any(|a| a == "--deflate"));
        assert!(hub
            .iter()
            .any(|p| p.name == "hub fan-out 100 × 200/s 1 KiB" && !p.deflate));
        let fanout = points
            .iter()
            .find(|p| p.name == "hub fan-out 100 × 200/s")
            .expect("the 1,000-subscriber point, scaled");
        assert_eq!(fanout.args, ["-n", "100", "--rate", "200"]);
        assert!(points
            .iter()
            .any(|p| p.name == "hub idle 1,000 connections"));
        assert!(points
            .iter()
            .filter(|p| !p.hub)
            .all(|p| !p.name.contains("hub") && !p.servers().contains(&Server::DuplexHub)));
        let deflate = points
            .iter()
            .find(|p| p.deflate && !p.hub)
            .expect("a deflate point");
        assert_eq!(deflate.servers(), [Server::Duplex, Server::Bun]);
        assert!(matrix(1.0)
            .iter()
            .any(|p| p.name == "hub fan-out 10,000 × 20/s"));
    }

    #[test]
    fn a_fanout_report_gives_loss_latency_and_memory() {
        let report = serde_json::json!({
            "msgs_per_sec": 19950.0,
            "latency_us": {"p50": 900, "p99": 4000, "max": 9000},
            "errors": 0,
            "mismatches": 2,
            "server": {"cpu_us_per_msg": 3.5, "rss_kib_end": 20480},
            "extra": {"deliveries_missing": 100, "published": 200}
        });
        let s = sample(Kind::Fanout, &report);
        assert_eq!(s.rate, 19950.0);
        assert_eq!(s.cpu_us, Some(3.5));
        assert_eq!(
            (s.p50, s.p99, s.max),
            (Some(900.0), Some(4000.0), Some(9000.0))
        );
        assert_eq!(s.lost, Some(100.0));
        assert_eq!(s.rss_end_kib, Some(20480.0));
        assert_eq!(s.errors, 2.0);
        let echo = sample(Kind::Echo, &report);
        assert_eq!((echo.lost, echo.rss_end_kib), (None, None));
    }
}
