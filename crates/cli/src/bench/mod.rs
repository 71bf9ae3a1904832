//! `duplex bench`: a load generator for WebSocket servers.
//!
//! Every scenario runs on one thread (a current-thread tokio runtime), so the generator costs
//! one core however many connections it drives. Frames are built and masked once; received
//! frames are parsed in one reused buffer per connection; nothing is allocated per message.
//!
//! # Layout
//! - `wire`: handshake, pre-built masked frames, the allocation-free frame reader.
//! - `report`: counters and the latency histogram, the `/proc` server probe, the summary.
//! - `echo`, `connect`, `idle`, `fanout`: one file per scenario.

mod connect;
mod echo;
mod fanout;
mod idle;
mod publish;
mod report;
mod wire;

use std::{net::IpAddr, rc::Rc, time::Duration};

use report::{Report, ServerProbe, ServerSample, Stats};

/// Options of `duplex bench`.
#[derive(Debug, clap::Args)]
#[command(long_about = "Load-test a WebSocket server from one core.\n\n\
    Every scenario drives its connections from a single-threaded runtime with pre-built masked \
    frames and no allocation per message, so the generator stays cheap. Latency is recorded in \
    an HDR histogram (p50/p90/p99/p99.9/max, microseconds). With --server-pid the server's CPU \
    time per message (from /proc/PID/stat) and its RSS (/proc/PID/status) are reported.\n\n\
    Examples:\n  duplex echo --threads 1 &\n  duplex bench echo -c 100 -s 20 --server-pid $!\n  \
    duplex bench connect -c 10\n  duplex bench idle -n 10000 --server-pid $!\n  \
    duplex serve --max-connections 20000 --max-connections-per-ip 0 &\n  \
    duplex bench fanout -n 10000 --rate 20 -d 60s --server-pid $!\n  \
    duplex bench publish -p 64 --url ws://127.0.0.1:8080/ws,ws://127.0.0.1:8081/ws")]
pub(crate) struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, clap::Subcommand)]
enum Scenario {
    /// Echo: N connections send messages and check every echoed payload (closed loop with a
    /// pipeline depth, or a fixed rate).
    Echo(echo::Args),
    /// Handshakes per second: connect, complete the opening handshake, drop, repeat.
    Connect(connect::Args),
    /// Hold N idle connections open and report the server's memory per connection.
    Idle(idle::Args),
    /// Hub fan-out: N subscribers on one `duplex serve` channel, one publisher at R msg/s;
    /// delivery latency from a timestamp in each publication.
    Fanout(fanout::Args),
    /// Publish throughput: P publishers (closed loops or a fixed rate) on C channels of one
    /// or more `duplex serve` nodes, S subscribers per channel; acknowledged publications/s,
    /// publish round trip and delivery latency.
    Publish(publish::Args),
}

/// Options shared by every scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// How long to measure, after the warm-up (e.g. 10s, 1m).
    #[arg(long, short = 'd', default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// The server's process id: report its CPU time per message and its memory (RSS).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Local addresses to connect from, comma-separated (e.g. 127.0.0.1,127.0.0.2); by default
    /// the system picks, or, past 25,000 connections, 127.0.0.1..127.0.0.k so that no source
    /// address runs out of ephemeral ports.
    #[arg(long, value_delimiter = ',', value_name = "IP,...")]
    source: Vec<IpAddr>,
}

impl Common {
    /// The source address for connection `i` of `total`.
    fn source_for(&self, i: usize, total: usize) -> Option<IpAddr> {
        const PER_ADDRESS: usize = 25_000;
        if !self.source.is_empty() {
            return Some(self.source[i % self.source.len()]);
        }
        if total <= PER_ADDRESS {
            return None;
        }
        let k = total.div_ceil(PER_ADDRESS);
        Some(IpAddr::from([127, 0, 0, 1 + (i % k) as u8]))
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, async move {
        match args.scenario {
            Scenario::Echo(a) => echo::run(a).await,
            Scenario::Connect(a) => connect::run(a).await,
            Scenario::Idle(a) => idle::run(a).await,
            Scenario::Fanout(a) => fanout::run(a).await,
            Scenario::Publish(a) => publish::run(a).await,
        }
    })?;
    report.0.print(report.1)?;
    Ok(())
}

/// Let the generator hold as many sockets as the hard limit allows.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Samples the server while the window runs: at its start, every 500 ms (for the RSS peak and
/// its trend), and at its end.
#[derive(Debug)]
struct ServerWatch {
    handle: Option<tokio::task::JoinHandle<anyhow::Result<Watched>>>,
    pid: u32,
}

#[derive(Debug)]
struct Watched {
    first: ServerSample,
    last: ServerSample,
    rss_max: u64,
    /// RSS every 500 ms over the window, KiB.
    rss_trend: Vec<u64>,
}

impl ServerWatch {
    fn start(pid: Option<u32>, stats: &Rc<Stats>) -> anyhow::Result<Self> {
        let Some(pid) = pid else {
            return Ok(Self {
                handle: None,
                pid: 0,
            });
        };
        let probe = ServerProbe::new(pid)?;
        let (start, end) = (stats.start, stats.end);
        let handle = tokio::task::spawn_local(async move {
            tokio::time::sleep_until(start.into()).await;
            let first = probe.sample()?;
            let mut w = Watched {
                first,
                last: first,
                rss_max: first.rss_kib,
                rss_trend: vec![first.rss_kib],
            };
            let mut tick = tokio::time::interval_at(
                (start + Duration::from_millis(500)).into(),
                Duration::from_millis(500),
            );
            loop {
                let next = tick.tick().await;
                if next.into_std() >= end {
                    break;
                }
                let s = probe.sample()?;
                w.rss_max = w.rss_max.max(s.rss_kib);
                w.rss_trend.push(s.rss_kib);
            }
            tokio::time::sleep_until(end.into()).await;
            w.last = probe.sample()?;
            Ok(w)
        });
        Ok(Self {
            handle: Some(handle),
            pid,
        })
    }

    async fn finish(self, report: Report, trend: bool) -> anyhow::Result<Report> {
        let Some(handle) = self.handle else {
            return Ok(report);
        };
        let w = handle.await??;
        let mut report = report.with_server(self.pid, w.first, w.last, w.rss_max);
        if trend {
            report
                .extra
                .insert("server_rss_kib_trend".into(), w.rss_trend.into());
        }
        Ok(report)
    }
}
