//! `duplex bench connect`: opening handshakes per second.
//!
//! Each worker connects, completes the handshake, and drops the connection with an abortive
//! close (SO_LINGER 0), so no socket lingers in TIME_WAIT and ports do not run out; then it
//! starts over. Latency is from `connect()` to the checked `101` response.

use std::{rc::Rc, time::Instant};

use serde_json::json;

use super::{
    report::{self, Report, Stats},
    wire::{self, Offer, Target},
    Common, ServerWatch,
};

/// Options of `duplex bench connect`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server to connect to.
    #[arg(long, short, default_value = "ws://127.0.0.1:9001/")]
    url: String,
    /// Handshakes in progress at once.
    #[arg(long, short, default_value_t = 10)]
    connections: usize,
    /// Offer permessage-deflate in every handshake (the server's negotiation cost counts).
    #[arg(long)]
    deflate: bool,
    /// A subprotocol to offer (e.g. `duplex.v1` for `duplex serve`).
    #[arg(long)]
    subprotocol: Option<String>,
    #[command(flatten)]
    common: Common,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<(Report, bool)> {
    let target = Rc::new(Target::parse(&args.url)?);
    let common = &args.common;
    let stats = Stats::new(common.warmup, common.duration)?;
    let watch = ServerWatch::start(common.server_pid, &stats)?;
    let progress = report::progress(&stats, common.quiet, "handshake");
    let offer = Rc::new(Offer {
        deflate: args.deflate,
        subprotocol: args.subprotocol.clone(),
    });
    let tasks: Vec<_> = (0..args.connections.max(1))
        .map(|worker| {
            let (stats, target, offer) = (Rc::clone(&stats), Rc::clone(&target), Rc::clone(&offer));
            let common = common.clone();
            tokio::task::spawn_local(async move {
                let mut n = worker;
                while !stats.finished(Instant::now()) {
                    let source = if common.source.is_empty() {
                        None
                    } else {
                        common.source_for(n, usize::MAX)
                    };
                    n += 1;
                    let start = Instant::now();
                    match wire::connect(&target, source, &offer, 4096).await {
                        Ok(conn) => {
                            stats.record(start, Instant::now(), 0);
                            // Abortive close: no TIME_WAIT on either side.
                            let _ = conn.stream.set_zero_linger();
                        }
                        Err(e) => {
                            stats.error(&e);
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    progress.await?;
    let params = json!({
        "url": args.url,
        "connections": args.connections,
        "deflate": args.deflate,
        "subprotocol": args.subprotocol,
    });
    let mut report = Report::new("connect", params, &stats, common.duration, false);
    report.extra.insert(
        "handshakes_per_sec".into(),
        json!(report.msgs_per_sec.round()),
    );
    Ok((watch.finish(report, false).await?, common.json))
}
