//! `duplex bench idle`: hold N open connections that send nothing, and report what they cost
//! the server in memory (RSS per connection).
//!
//! The server's RSS is sampled before the first connection and again after all of them have
//! been held for the measured duration, so the figure is the memory one idle connection keeps
//! once the handshake is over. Past 25,000 connections the generator connects from
//! 127.0.0.1, 127.0.0.2, ... so that no source address runs out of ephemeral ports.

use std::{rc::Rc, time::Instant};

use anyhow::{bail, Context as _};
use duplex_proto::frame::OpCode;
use futures_util::{stream, StreamExt as _};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use super::{
    report::{self, Report, ServerProbe, Stats},
    wire::{self, Conn, Offer, Target},
    Common,
};

/// Options of `duplex bench idle` (`--duration` is how long the connections are held).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server to connect to.
    #[arg(long, short, default_value = "ws://127.0.0.1:9001/")]
    url: String,
    /// Connections to hold.
    #[arg(long = "connections", short = 'n', default_value_t = 10_000)]
    connections: usize,
    /// Handshakes in progress at once while connecting.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// A subprotocol to offer (e.g. `duplex.v1` for `duplex serve`).
    #[arg(long)]
    subprotocol: Option<String>,
    /// After measuring, send one message on every connection and check its echo (for echo
    /// servers), proving the connections were alive.
    #[arg(long, conflicts_with = "verify_pong")]
    verify: bool,
    /// After measuring, send the hub command `{"type":"ping"}` on every connection and check
    /// that a `pong` comes back (for duplex.v1 hubs, whose first frame is `welcome`).
    #[arg(long)]
    verify_pong: bool,
    #[command(flatten)]
    common: Common,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<(Report, bool)> {
    let target = Target::parse(&args.url)?;
    let common = &args.common;
    let probe = common.server_pid.map(ServerProbe::new).transpose()?;
    let before = probe.as_ref().map(ServerProbe::sample).transpose()?;
    let offer = Offer {
        deflate: false,
        subprotocol: args.subprotocol.clone(),
    };
    let began = Instant::now();
    let bar = if common.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.connections as u64)
    };
    bar.set_message("connecting");
    let mut failed = 0u64;
    let mut first_error = None;
    let mut conns: Vec<Conn> = Vec::with_capacity(args.connections);
    let mut opened = stream::iter(0..args.connections)
        .map(|i| {
            let (target, offer) = (&target, &offer);
            let source = common.source_for(i, args.connections);
            async move { wire::connect(target, source, offer, 0).await }
        })
        .buffer_unordered(args.concurrency.max(1));
    while let Some(result) = opened.next().await {
        bar.inc(1);
        match result {
            Ok(conn) => conns.push(conn),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    drop(opened);
    bar.finish_and_clear();
    let connect_secs = began.elapsed().as_secs_f64();
    if conns.is_empty() {
        bail!(
            "no connection could be opened: {}",
            first_error.unwrap_or_default()
        );
    }
    // Hold: the window of the report is this wait.
    let stats = Stats::new(std::time::Duration::ZERO, common.duration)?;
    let progress = report::progress(&stats, common.quiet, "msg");
    tokio::time::sleep(common.duration).await;
    progress.await?;
    let after = probe.as_ref().map(ServerProbe::sample).transpose()?;
    let held = conns.len();
    let mut mismatches = 0u64;
    if args.verify {
        mismatches = verify(&mut conns, Check::Echo).await;
    } else if args.verify_pong {
        mismatches = verify(&mut conns, Check::Pong).await;
    }
    let verified = args.verify || args.verify_pong;
    let params = json!({
        "url": args.url,
        "connections": args.connections,
        "subprotocol": args.subprotocol,
        "verify": args.verify,
        "verify_pong": args.verify_pong,
    });
    let mut report = Report::new("idle", params, &stats, common.duration, verified);
    report.errors = failed;
    report.first_error = first_error;
    report.mismatches = verified.then_some(mismatches);
    report.extra.insert("held".into(), json!(held));
    report.extra.insert(
        "connect_seconds".into(),
        json!((connect_secs * 100.0).round() / 100.0),
    );
    if let (Some(before), Some(after), Some(pid)) = (before, after, common.server_pid) {
        let grown = after.rss_kib.saturating_sub(before.rss_kib);
        let per_conn = grown as f64 * 1024.0 / held as f64;
        report
            .extra
            .insert("rss_bytes_per_conn".into(), json!(per_conn.round()));
        report = report.with_server(pid, before, after, after.rss_kib);
    }
    Ok((report, common.json))
}

/// What [`verify`] expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The message sent, as the first frame.
    Echo,
    /// A `{"type":"pong"...}` text frame, after whatever the hub sent first.
    Pong,
}

/// Send one text message on every connection and check the answers; returns the failures.
async fn verify(conns: &mut [Conn], check: Check) -> u64 {
    let payload = match check {
        Check::Echo => wire::payload(16, 7),
        Check::Pong => br#"{"type":"ping"}"#.to_vec(),
    };
    let frame = wire::client_frame(OpCode::Text, false, &payload);
    let (payload, frame) = (Rc::new(payload), Rc::new(frame));
    let checks = conns.iter_mut().map(|conn| {
        let (payload, frame) = (Rc::clone(&payload), Rc::clone(&frame));
        async move {
            let check = async {
                conn.stream.write_all(&frame).await?;
                loop {
                    if conn.rx.read(&mut conn.stream).await? == 0 {
                        bail!("closed");
                    }
                    while let Some((h, range)) = conn.rx.next_frame()? {
                        let text = conn.rx.payload(range);
                        match check {
                            Check::Echo => {
                                return Ok(h.opcode == OpCode::Text && text == &payload[..])
                            }
                            Check::Pong if h.opcode == OpCode::Close => return Ok(false),
                            Check::Pong
                                if h.opcode == OpCode::Text
                                    && text.starts_with(br#"{"type":"pong""#) =>
                            {
                                return Ok(true)
                            }
                            // `welcome`, or a keepalive ping of the server's.
                            Check::Pong => {}
                        }
                    }
                }
            };
            let timeout = std::time::Duration::from_secs(10);
            matches!(
                tokio::time::timeout(timeout, check)
                    .await
                    .context("timeout"),
                Ok(Ok(true))
            )
        }
    });
    stream::iter(checks)
        .buffer_unordered(200)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await as u64
}
