//! `duplex bench publish`: many publishers on many channels of one or more `duplex serve`
//! nodes, each channel with its own subscribers: how many publications per second the hub
//! (and its broker) acknowledges, and how fast they arrive.
//!
//! Publisher `i` publishes to channel `i mod channels` over its own connection, either in a
//! closed loop (`--depth` publishes outstanding, the next sent when a reply arrives) or at a
//! fixed total `--rate`. Every publication carries its publisher, a sequence number and the
//! time it was sent, so each subscriber checks per publisher that nothing arrives twice or out
//! of order, and delivery latency is measured from the send. With several `--url`s (nodes
//! sharing a broker), publishers are spread over the nodes round robin and a channel's
//! subscribers start on the node after its first publisher's, so deliveries cross nodes.
//!
//! The hub must let one connection publish that fast: raise `limits.commands_per_second`
//! and `limits.commands_burst`, and use a namespace without presence (the `bench` namespace
//! of `docs/benchmarks.md`).

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use duplex_proto::frame::OpCode;
use futures_util::{stream, StreamExt as _};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use super::{
    fanout::{await_reply, number_after, subscriber},
    report::{self, Report, ServerProbe, Stats},
    wire::{self, Conn, Offer, Target},
    Common, ServerWatch,
};

/// Options of `duplex bench publish`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The hubs' WebSocket endpoints, comma-separated (nodes sharing one broker).
    #[arg(
        long,
        short,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    url: Vec<String>,
    /// Publishing connections.
    #[arg(long, short = 'p', default_value_t = 64)]
    publishers: usize,
    /// Channels (publisher i publishes to channel i mod N); 0: one per publisher.
    #[arg(long, default_value_t = 0)]
    channels: usize,
    /// Subscriber connections per channel.
    #[arg(long = "subscribers", short = 'n', default_value_t = 1)]
    subscribers: usize,
    /// Publishes each publisher keeps outstanding in the closed loop.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Publications per second over all publishers (open loop); by default the publishers
    /// run closed loops.
    #[arg(long)]
    rate: Option<f64>,
    /// Channel names are `<prefix><i>`.
    #[arg(long, default_value = "bench:pub-")]
    prefix: String,
    /// Extra bytes of padding in every publication.
    #[arg(long, default_value_t = 0)]
    padding: usize,
    /// Handshakes and subscriptions in progress at once while connecting.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// More processes to report CPU time per publication for (other nodes, redis-server),
    /// comma-separated; `--server-pid` is the node whose CPU per delivery is reported.
    #[arg(long, value_delimiter = ',', value_name = "PID,...")]
    pids: Vec<u32>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug)]
struct Ctx {
    stats: Rc<Stats>,
    epoch: Instant,
    /// Publishes acknowledged whose send fell in the measured window.
    acked: Cell<u64>,
    /// Error replies to publishes sent in the window (e.g. `unavailable` while the broker
    /// fails over), and the first one's text.
    refused: Cell<u64>,
    first_refusal: RefCell<Option<String>>,
    /// Publish round trip (send → reply), microseconds, for publishes sent in the window.
    ack_latency: RefCell<Histogram<u64>>,
}

impl Ctx {
    fn in_window(&self, sent: Instant) -> bool {
        sent >= self.stats.start && sent < self.stats.end
    }
}

/// How a publisher paces itself.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// Keep this many publishes outstanding.
    Closed(usize),
    /// One publish every this long.
    Every(Duration),
}

pub(crate) async fn run(args: Args) -> anyhow::Result<(Report, bool)> {
    if args.url.is_empty() || args.publishers == 0 {
        bail!("--url and --publishers must name at least one");
    }
    let targets = args
        .url
        .iter()
        .map(|u| Target::parse(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let common = &args.common;
    let channels = if args.channels == 0 {
        args.publishers
    } else {
        args.channels
    };
    let pace = match args.rate {
        Some(rate) if rate > 0.0 => {
            Pace::Every(Duration::from_secs_f64(args.publishers as f64 / rate))
        }
        Some(_) => bail!("--rate must be positive"),
        None => Pace::Closed(args.depth.max(1)),
    };
    let offer = Offer {
        deflate: false,
        subprotocol: Some("duplex.v1".into()),
    };
    let total = channels * args.subscribers + args.publishers;

    // Subscribers first, so that every publication of the window has its audience.
    let bar = if common.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total as u64)
    };
    let mut subscribers = Vec::with_capacity(channels * args.subscribers);
    let mut joining = stream::iter(0..channels * args.subscribers)
        .map(|k| {
            let (channel, j) = (k / args.subscribers, k % args.subscribers);
            // The channel's first publisher is on node `channel mod nodes`; its subscribers
            // start on the next node.
            let target = &targets[(channel + 1 + j) % targets.len()];
            let subscribe = json!({
                "type": "subscribe",
                "id": 1,
                "channel": format!("{}{channel}", args.prefix),
            })
            .to_string();
            let (offer, source) = (&offer, common.source_for(k, total));
            async move {
                let mut conn = wire::connect(target, source, offer, 16 * 1024).await?;
                let frame = wire::client_frame(OpCode::Text, false, subscribe.as_bytes());
                conn.stream.write_all(&frame).await?;
                await_reply(&mut conn).await?;
                anyhow::Ok(conn)
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    while let Some(conn) = joining.next().await {
        subscribers.push(conn.context("a subscriber could not join")?);
        bar.inc(1);
    }
    drop(joining);
    let mut publishers = Vec::with_capacity(args.publishers);
    let mut joining = stream::iter(0..args.publishers)
        .map(|i| {
            let target = &targets[i % targets.len()];
            let (offer, source) = (&offer, common.source_for(channels + i, total));
            async move { wire::connect(target, source, offer, 64 * 1024).await }
        })
        .buffered(args.concurrency.max(1));
    while let Some(conn) = joining.next().await {
        publishers.push(conn.context("a publisher could not connect")?);
        bar.inc(1);
    }
    drop(joining);
    bar.finish_and_clear();

    let stats = Stats::new(common.warmup, common.duration)?;
    let ctx = Rc::new(Ctx {
        stats: Rc::clone(&stats),
        epoch: Instant::now(),
        acked: Cell::new(0),
        refused: Cell::new(0),
        first_refusal: RefCell::new(None),
        ack_latency: RefCell::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?),
    });
    let watch = ServerWatch::start(common.server_pid, &stats)?;
    let others = watch_processes(&args.pids, &stats)?;
    let progress = report::progress(&stats, common.quiet, "delivery");
    let receiving: Vec<_> = subscribers
        .into_iter()
        .map(|conn| {
            let ctx = Rc::clone(&ctx);
            tokio::task::spawn_local(async move {
                if let Err(e) = subscriber(conn, &ctx.stats, ctx.epoch, false).await {
                    ctx.stats.error(&e);
                }
            })
        })
        .collect();
    let publishing: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let ctx = Rc::clone(&ctx);
            let channel = serde_json::to_string(&format!("{}{}", args.prefix, i % channels));
            let padding = args.padding;
            tokio::task::spawn_local(async move {
                let result = match channel {
                    Ok(channel) => publisher(conn, &ctx, i, &channel, pace, padding).await,
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = result {
                    ctx.stats.error(&e.context(format!("publisher {i}")));
                }
            })
        })
        .collect();
    for task in publishing {
        task.await?;
    }
    // Deliveries of the window's last publications get a moment to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for task in &receiving {
        task.abort();
    }
    progress.await?;

    let params = json!({
        "url": args.url,
        "publishers": args.publishers,
        "channels": channels,
        "subscribers_per_channel": args.subscribers,
        "depth": args.depth,
        "rate": args.rate,
        "padding": args.padding,
    });
    let mut report = Report::new("publish", params, &stats, common.duration, true);
    let acked = ctx.acked.get();
    let seconds = common.duration.as_secs_f64();
    let expected = acked * args.subscribers as u64;
    let extra = &mut report.extra;
    extra.insert("published".into(), json!(acked));
    extra.insert(
        "publications_per_sec".into(),
        json!((acked as f64 / seconds).round()),
    );
    {
        let hist = ctx.ack_latency.borrow();
        if !hist.is_empty() {
            extra.insert(
                "publish_rtt_us".into(),
                json!({
                    "p50": hist.value_at_quantile(0.5),
                    "p99": hist.value_at_quantile(0.99),
                    "max": hist.max(),
                }),
            );
        }
    }
    extra.insert("publish_refused".into(), json!(ctx.refused.get()));
    if let Some(first) = ctx.first_refusal.borrow().as_ref() {
        extra.insert("first_refusal".into(), json!(first));
    }
    extra.insert("deliveries_expected".into(), json!(expected));
    extra.insert(
        "deliveries_missing".into(),
        json!(expected.saturating_sub(stats.messages.get())),
    );
    let others = others.await??;
    if !others.is_empty() {
        let per =
            |cpu: f64| (acked > 0).then(|| (cpu * 1e6 / acked as f64 * 100.0).round() / 100.0);
        extra.insert(
            "processes".into(),
            others
                .into_iter()
                .map(|(pid, name, cpu)| {
                    json!({"pid": pid, "name": name, "cpu_seconds": cpu, "cpu_us_per_publication": per(cpu)})
                })
                .collect(),
        );
    }
    Ok((watch.finish(report, false).await?, common.json))
}

/// A watched process: its pid, command name and CPU seconds over the window.
type Watched = (u32, String, f64);

/// CPU seconds of each of `pids` over the measured window, with its command name.
fn watch_processes(
    pids: &[u32],
    stats: &Stats,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Vec<Watched>>>> {
    let probes = pids
        .iter()
        .map(|&pid| Ok((pid, ServerProbe::new(pid)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (start, end) = (stats.start, stats.end);
    Ok(tokio::task::spawn_local(async move {
        tokio::time::sleep_until(start.into()).await;
        let first = probes
            .iter()
            .map(|(_, p)| p.sample())
            .collect::<anyhow::Result<Vec<_>>>()?;
        tokio::time::sleep_until(end.into()).await;
        probes
            .iter()
            .zip(first)
            .map(|((pid, probe), first)| {
                let cpu = probe.sample()?.cpu.saturating_sub(first.cpu).as_secs_f64();
                let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                Ok((*pid, name, cpu))
            })
            .collect()
    }))
}

/// One publisher: publishes `{"p":index,"seq":n,"t":ns}` to `channel` (JSON-quoted) until the
/// window ends, then waits (bounded) for the replies still outstanding.
async fn publisher(
    mut conn: Conn,
    ctx: &Ctx,
    index: usize,
    channel: &str,
    pace: Pace,
    padding: usize,
) -> anyhow::Result<()> {
    let pad = "x".repeat(padding);
    let mut outstanding: HashMap<u64, Instant> = HashMap::new();
    let mut out = Vec::with_capacity(4096);
    let mut json = Vec::with_capacity(256 + padding);
    let mut seq = 0u64;
    let mut due = Instant::now();
    // Replies to the last publishes of the window may take a while under load; past this
    // the publisher stops waiting (they count as not acknowledged).
    let give_up = ctx.stats.end + Duration::from_secs(5);
    loop {
        let now = Instant::now();
        let finished = ctx.stats.finished(now);
        if finished && outstanding.is_empty() {
            return Ok(());
        }
        if now >= give_up {
            bail!(
                "{} publishes unanswered 5 s after the window",
                outstanding.len()
            );
        }
        // Send what the pace allows now, in one write.
        out.clear();
        if !finished {
            let room = match pace {
                Pace::Closed(depth) => depth.saturating_sub(outstanding.len()),
                Pace::Every(_) if now >= due => 1,
                Pace::Every(_) => 0,
            };
            for _ in 0..room {
                seq += 1;
                let t = now.duration_since(ctx.epoch).as_nanos();
                json.clear();
                std::io::Write::write_fmt(
                    &mut json,
                    format_args!(
                        r#"{{"type":"publish","id":{seq},"channel":{channel},"data":{{"p":{index},"seq":{seq},"t":{t},"pad":"{pad}"}}}}"#
                    ),
                )?;
                out.extend_from_slice(&wire::client_frame(OpCode::Text, false, &json));
                outstanding.insert(seq, now);
            }
            if let Pace::Every(every) = pace {
                if room > 0 {
                    due += every;
                }
            }
        }
        if !out.is_empty() {
            conn.stream.write_all(&out).await?;
        }
        let wake = match pace {
            Pace::Every(_) if !finished => due.min(give_up),
            _ => give_up.min(if finished { give_up } else { ctx.stats.end }),
        };
        tokio::select! {
            read = conn.rx.read(&mut conn.stream) => {
                if read? == 0 {
                    bail!("the hub closed the connection");
                }
            }
            () = tokio::time::sleep_until(wake.into()) => continue,
        }
        let now = Instant::now();
        let mut refused = false;
        while let Some((h, range)) = conn.rx.next_frame()? {
            let text = conn.rx.payload(range);
            match h.opcode {
                OpCode::Close => bail!(
                    "the hub closed the connection: {:?}",
                    String::from_utf8_lossy(text)
                ),
                OpCode::Ping => {
                    // RFC 6455 §5.5.2: answer with the same payload.
                    let pong = wire::client_frame(OpCode::Pong, false, text);
                    conn.stream.write_all(&pong).await?;
                    continue;
                }
                OpCode::Text => {}
                _ => continue,
            }
            let reply = text.starts_with(br#"{"type":"reply""#);
            if !reply && !text.starts_with(br#"{"type":"error""#) {
                continue;
            }
            let Some(sent) = number_after(text, br#""id":"#).and_then(|id| outstanding.remove(&id))
            else {
                continue;
            };
            refused |= !reply;
            if !ctx.in_window(sent) {
                continue;
            }
            if reply {
                ctx.acked.set(ctx.acked.get() + 1);
                let us = now.saturating_duration_since(sent).as_micros();
                ctx.ack_latency
                    .borrow_mut()
                    .saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
            } else {
                ctx.refused.set(ctx.refused.get() + 1);
                let mut first = ctx.first_refusal.borrow_mut();
                if first.is_none() {
                    *first = Some(String::from_utf8_lossy(text).into_owned());
                }
            }
        }
        if refused {
            // A hub that refuses (its broker failing over, a rate limit) answers at once; a
            // closed loop would spin on the refusals.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
