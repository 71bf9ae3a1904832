//! `duplex autobahn-client`: runs every case of the Autobahn testsuite's fuzzingserver with the
//! duplex client, echoing each message, then asks it to write the reports.
//!
//! Nothing here waits on the fuzzingserver without a bound. Each case has a deadline
//! (`--case-timeout`): a case that overruns is reported by name, counted, and the run goes on
//! with the next case; the run then fails, after the reports are written. Each case runs on a
//! thread of its own, and the deadline is also kept from outside that thread, so even a case
//! that stops yielding to its runtime cannot hold the run.

use std::{
    fmt::Write as _,
    path::PathBuf,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use duplex::{deflate::DeflateConfig, ClientBuilder, Config, Message};

/// Options of `duplex autobahn-client`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The fuzzingserver's URL.
    #[arg(long, default_value = "ws://127.0.0.1:9001", env = "AUTOBAHN_URL")]
    url: String,
    /// The agent name the reports are filed under.
    #[arg(long, default_value = "duplex", env = "AUTOBAHN_AGENT")]
    agent: String,
    /// How long one case may take, connection included. The slowest cases (1000 compressed
    /// messages of 128 KiB, 12.x.18 and 13.x.18) take seconds; the default leaves a wide
    /// margin for a slow machine while bounding a stuck case (docs/conformance.md).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
    case_timeout: Duration,
    /// How long the fuzzingserver may take to write its reports (it answers the
    /// `updateReports` handshake only once they are written).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300s")]
    reports_timeout: Duration,
    /// A file with the fuzzingserver's case ids, one per line in its order (as its log
    /// lists them), so that messages name cases by id rather than by number.
    #[arg(long)]
    case_ids: Option<PathBuf>,
}

/// How long the case count may take to arrive.
const COUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// Extra time given to a case's thread past its deadline before it is abandoned (its own
/// runtime enforces the deadline first; this only catches a thread that stopped yielding).
const ABANDON_GRACE: Duration = Duration::from_secs(10);

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let names: Vec<String> = match &args.case_ids {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let base = args.url.trim_end_matches('/').to_owned();
    let count = block_on(async {
        tokio::time::timeout(COUNT_TIMEOUT, case_count(&base))
            .await
            .map_err(|_| anyhow::anyhow!("no case count within {COUNT_TIMEOUT:?}"))?
    })
    .context("getCaseCount")?;
    tracing::info!(count, timeout = ?args.case_timeout, "running cases");

    let started = Instant::now();
    let mut overran = Vec::new();
    let mut slowest: Option<(String, Duration)> = None;
    for case in 1..=count {
        let name = usize::try_from(case - 1)
            .ok()
            .and_then(|i| names.get(i))
            .cloned()
            .unwrap_or_else(|| format!("case {case}"));
        let url = format!("{base}/runCase?case={case}&agent={}", args.agent);
        let case_started = Instant::now();
        match run_on_thread(url, args.case_timeout) {
            Ended::Done(Ok(())) => {}
            // wstest judges the case; an error here is often what the case tests.
            Ended::Done(Err(e)) => {
                tracing::debug!(case = %name, error = %e, "case ended with an error")
            }
            Ended::Overran { abandoned } => {
                tracing::error!(
                    case = %name,
                    number = case,
                    deadline = ?args.case_timeout,
                    abandoned,
                    "case overran its deadline; going on with the next case"
                );
                overran.push(name.clone());
            }
        }
        let took = case_started.elapsed();
        tracing::info!(case = %name, number = case, seconds = took.as_secs_f64(), "case finished");
        if slowest.as_ref().is_none_or(|(_, t)| took > *t) {
            slowest = Some((name, took));
        }
    }
    if let Some((name, took)) = &slowest {
        tracing::info!(
            cases = count,
            seconds = started.elapsed().as_secs_f64(),
            slowest = %name,
            slowest_seconds = took.as_secs_f64(),
            overran = overran.len(),
            "all cases run"
        );
    }

    let url = format!("{base}/updateReports?agent={}", args.agent);
    block_on(async {
        tokio::time::timeout(
            args.reports_timeout,
            update_reports(&url, args.reports_timeout),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {:?}", args.reports_timeout))?
    })
    .context("updateReports")?;
    tracing::info!("reports updated");

    if !overran.is_empty() {
        let mut list = String::new();
        for name in &overran {
            let _ = write!(list, " {name}");
        }
        bail!(
            "{} of {count} cases overran their {:?} deadline:{list}",
            overran.len(),
            args.case_timeout
        );
    }
    Ok(())
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// How a case ended.
#[derive(Debug)]
enum Ended {
    Done(anyhow::Result<()>),
    /// Past its deadline; `abandoned`: its thread did not even stop, and was left behind.
    Overran {
        abandoned: bool,
    },
}

/// Runs one case on a thread with its own runtime, within `deadline`.
fn run_on_thread(url: String, deadline: Duration) -> Ended {
    let (done, result) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("autobahn-case".into())
        .spawn(move || {
            let outcome = block_on(async {
                Ok(match tokio::time::timeout(deadline, run_case(&url)).await {
                    Ok(result) => Ended::Done(result.map_err(Into::into)),
                    // Dropping the case's future closes its connection: wstest records it.
                    Err(_) => Ended::Overran { abandoned: false },
                })
            });
            let _ = done.send(outcome.unwrap_or_else(|e| Ended::Done(Err(e))));
        });
    if let Err(e) = spawned {
        return Ended::Done(Err(e.into()));
    }
    result
        .recv_timeout(deadline + ABANDON_GRACE)
        .unwrap_or(Ended::Overran { abandoned: true })
}

async fn case_count(base: &str) -> anyhow::Result<u32> {
    let (mut ws, _) = duplex::connect(&format!("{base}/getCaseCount")).await?;
    let reply = ws.recv().await.context("no case count")??;
    Ok(reply
        .as_text()
        .context("case count is not text")?
        .trim()
        .parse()?)
}

async fn update_reports(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let (mut ws, _) = ClientBuilder::new(url)
        .handshake_timeout(timeout)
        .connect()
        .await?;
    while ws.recv().await.is_some() {}
    Ok(())
}

async fn run_case(url: &str) -> duplex::Result<()> {
    // Offer compression the way the suite's server cases expect: accepting a limit on our
    // window and promising no context takeover when asked.
    let deflate = DeflateConfig::default().client_no_context_takeover(true);
    let config = Config::default()
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20)
        .deflate(Some(deflate));
    let (mut ws, _) = ClientBuilder::new(url).config(config).connect().await?;
    while let Some(message) = ws.recv().await {
        let message: Message = message?;
        ws.send(message).await?;
    }
    Ok(())
}
