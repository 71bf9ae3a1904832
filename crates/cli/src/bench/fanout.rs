//! `duplex bench fanout`: one publisher, N subscribers on one channel of `duplex serve`.
//!
//! The subscribers speak the hub protocol (`duplex.v1`, docs/protocol.md): `subscribe`, then
//! `message` events. The publisher sends `publish` commands at a fixed rate; each publication
//! carries the time it was *due* (nanoseconds since the run began) and a sequence number, so
//! delivery latency is measured from the schedule (no coordinated omission) and every
//! subscriber checks that it receives every publication once, in order.
//!
//! Run the hub with limits that fit the test and a namespace without presence, so that N
//! subscribers joining does not cause N² join events:
//!
//! ```toml
//! [limits]
//! max_connections = 20000
//! max_connections_per_ip = 0
//! [namespaces.bench]
//! presence = false
//! join_leave = false
//! ```

use std::{
    cell::Cell,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use duplex_proto::frame::OpCode;
use futures_util::{stream, StreamExt as _};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use super::{
    report::{self, Report, Stats},
    wire::{self, Conn, Inflater, Offer, Target},
    Common, ServerWatch,
};

/// Options of `duplex bench fanout`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The hub's WebSocket endpoint.
    #[arg(long, short, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Subscriber connections.
    #[arg(long = "subscribers", short = 'n', default_value_t = 1000)]
    subscribers: usize,
    /// Publications per second (the hub's `limits.commands_per_second` must allow it).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// The channel (the `bench` namespace lets the hub be configured without presence).
    #[arg(long, default_value = "bench:fanout")]
    channel: String,
    /// Extra bytes of padding in every publication.
    #[arg(long, default_value_t = 0)]
    padding: usize,
    /// Handshakes and subscriptions in progress at once while connecting.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Subscribers offer permessage-deflate (RFC 7692) and inflate what arrives compressed;
    /// the hub must have `websocket.compression` enabled.
    #[arg(long)]
    deflate: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug)]
struct Ctx {
    stats: Rc<Stats>,
    /// The clock publications are stamped against.
    epoch: Instant,
    /// Publications sent during the measured window, counted by the publisher.
    published: Cell<u64>,
    /// First and last sequence numbers published in the window.
    window_seqs: Cell<(u64, u64)>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<(Report, bool)> {
    let target = Target::parse(&args.url)?;
    let common = &args.common;
    let offer = Offer {
        deflate: args.deflate,
        subprotocol: Some("duplex.v1".into()),
    };
    let subscribe = wire::client_frame(
        OpCode::Text,
        false,
        json!({"type": "subscribe", "id": 1, "channel": args.channel})
            .to_string()
            .as_bytes(),
    );
    let bar = if common.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.subscribers as u64)
    };
    let mut subscribers = Vec::with_capacity(args.subscribers);
    let mut joining = stream::iter(0..args.subscribers)
        .map(|i| {
            let (target, offer, subscribe) = (&target, &offer, &subscribe);
            let source = common.source_for(i, args.subscribers + 1);
            async move {
                let mut conn = wire::connect(target, source, offer, 16 * 1024).await?;
                if offer.deflate && !conn.deflate {
                    bail!("the hub declined permessage-deflate (enable websocket.compression)");
                }
                conn.stream.write_all(subscribe).await?;
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
    bar.finish_and_clear();
    let publisher = wire::connect(&target, common.source_for(0, 1), &offer, 16 * 1024).await?;

    let stats = Stats::new(common.warmup, common.duration)?;
    let ctx = Rc::new(Ctx {
        stats: Rc::clone(&stats),
        epoch: Instant::now(),
        published: Cell::new(0),
        window_seqs: Cell::new((u64::MAX, 0)),
    });
    let watch = ServerWatch::start(common.server_pid, &stats)?;
    let progress = report::progress(&stats, common.quiet, "delivery");
    let tasks: Vec<_> = subscribers
        .into_iter()
        .map(|conn| {
            let ctx = Rc::clone(&ctx);
            tokio::task::spawn_local(async move {
                if let Err(e) = subscriber(conn, &ctx.stats, ctx.epoch, true).await {
                    ctx.stats.error(&e);
                }
            })
        })
        .collect();
    let publishing = {
        let ctx = Rc::clone(&ctx);
        let (channel, rate, padding) = (args.channel.clone(), args.rate, args.padding);
        tokio::task::spawn_local(async move {
            if let Err(e) = publish(publisher, &ctx, &channel, rate, padding).await {
                ctx.stats.error(&e.context("publisher"));
            }
        })
    };
    publishing.await?;
    // Deliveries due at the end of the window get a moment to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for task in &tasks {
        task.abort();
    }
    progress.await?;
    let params = json!({
        "url": args.url,
        "subscribers": args.subscribers,
        "rate": args.rate,
        "channel": args.channel,
        "padding": args.padding,
        "deflate": args.deflate,
    });
    let mut report = Report::new("fanout", params, &stats, common.duration, true);
    let published = ctx.published.get();
    let expected = published * args.subscribers as u64;
    report.extra.insert("published".into(), json!(published));
    report
        .extra
        .insert("deliveries_expected".into(), json!(expected));
    report.extra.insert(
        "deliveries_missing".into(),
        json!(expected.saturating_sub(stats.messages.get())),
    );
    Ok((watch.finish(report, true).await?, common.json))
}

/// Read until the reply to `subscribe` (skipping `welcome`).
pub(super) async fn await_reply(conn: &mut Conn) -> anyhow::Result<()> {
    loop {
        if conn.rx.read(&mut conn.stream).await? == 0 {
            bail!("the hub closed the connection");
        }
        while let Some((h, range)) = conn.rx.next_frame()? {
            let text = conn.rx.payload(range);
            match h.opcode {
                OpCode::Close => bail!(
                    "the hub closed the connection: {:?}",
                    String::from_utf8_lossy(text)
                ),
                OpCode::Text if text.starts_with(br#"{"type":"reply""#) => return Ok(()),
                OpCode::Text if text.starts_with(br#"{"type":"error""#) => {
                    bail!("subscribe failed: {}", String::from_utf8_lossy(text))
                }
                _ => {}
            }
        }
    }
}

/// The unsigned integer after `key` in `text` (a flat search; the hub's JSON is compact).
pub(super) fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n = 0u64;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

/// Receives publications until the connection ends, checking per publisher (the `p` field,
/// 0 when absent) that sequence numbers only grow (with `gapless`, by exactly one), and records each delivery against the
/// time in its `t` field (nanoseconds after `epoch`).
pub(super) async fn subscriber(
    mut conn: Conn,
    stats: &Stats,
    epoch: Instant,
    gapless: bool,
) -> anyhow::Result<()> {
    // Last sequence number seen of each publisher, by index.
    let mut last_seq: Vec<Option<u64>> = Vec::new();
    let mut inflater = conn.deflate.then(|| Inflater::new(16 * 1024));
    loop {
        if conn.rx.read(&mut conn.stream).await? == 0 {
            bail!("the hub closed the connection");
        }
        let now = Instant::now();
        while let Some((h, range)) = conn.rx.next_frame()? {
            match h.opcode {
                OpCode::Text => {}
                OpCode::Ping => {
                    // RFC 6455 §5.5.2: answer with the same payload. Rare (keepalive only).
                    let pong = wire::client_frame(OpCode::Pong, false, conn.rx.payload(range));
                    conn.stream.write_all(&pong).await?;
                    continue;
                }
                OpCode::Close => bail!("the hub closed the connection"),
                _ => continue,
            }
            let text = if h.rsv1 {
                // RFC 7692 §6: RSV1 on the first frame marks a compressed message; the hub
                // sends each message in one frame.
                let inflater = inflater
                    .as_mut()
                    .context("a compressed frame without permessage-deflate")?;
                inflater.out.clear();
                inflater.feed(conn.rx.payload(range), h.fin)?;
                &inflater.out[..]
            } else {
                conn.rx.payload(range)
            };
            if !text.starts_with(br#"{"type":"message""#) {
                continue;
            }
            let (Some(t), Some(seq)) = (
                number_after(text, br#""t":"#),
                number_after(text, br#""seq":"#),
            ) else {
                stats.mismatch();
                continue;
            };
            // A publisher's index is below the generator's connection count.
            let p = number_after(text, br#""p":"#)
                .and_then(|p| usize::try_from(p).ok())
                .filter(|&p| p < 1 << 20)
                .unwrap_or(0);
            if last_seq.len() <= p {
                last_seq.resize(p + 1, None);
            }
            // One publisher's sequence numbers arrive in order and once each; without
            // `gapless` a gap is a publish the hub refused.
            if last_seq[p].is_some_and(|last| seq <= last || (gapless && seq != last + 1)) {
                stats.mismatch();
            }
            last_seq[p] = Some(seq);
            let sent = epoch + Duration::from_nanos(t);
            stats.record_by_sent(sent, now, text.len());
        }
    }
}

async fn publish(
    mut conn: Conn,
    ctx: &Ctx,
    channel: &str,
    rate: f64,
    padding: usize,
) -> anyhow::Result<()> {
    let every = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let channel = serde_json::to_string(channel)?;
    let pad = "x".repeat(padding);
    let mut json = Vec::with_capacity(256 + padding);
    let mut seq = 0u64;
    let mut due = ctx.epoch;
    loop {
        tokio::select! {
            biased;
            read = conn.rx.read(&mut conn.stream) => {
                if read? == 0 {
                    bail!("the hub closed the connection");
                }
                while let Some((h, range)) = conn.rx.next_frame()? {
                    let text = conn.rx.payload(range);
                    if h.opcode == OpCode::Close {
                        bail!("the hub closed the connection");
                    }
                    if text.starts_with(br#"{"type":"error""#) {
                        bail!("publish failed: {}", String::from_utf8_lossy(text));
                    }
                }
            }
            () = tokio::time::sleep_until(due.into()) => {
                let stats = &ctx.stats;
                if stats.finished(due) {
                    return Ok(());
                }
                seq += 1;
                let t = due.duration_since(ctx.epoch).as_nanos();
                json.clear();
                std::io::Write::write_fmt(
                    &mut json,
                    format_args!(
                        r#"{{"type":"publish","id":{seq},"channel":{channel},"data":{{"t":{t},"seq":{seq},"pad":"{pad}"}}}}"#
                    ),
                )?;
                conn.stream
                    .write_all(&wire::client_frame(OpCode::Text, false, &json))
                    .await?;
                if due >= stats.start {
                    ctx.published.set(ctx.published.get() + 1);
                    let (first, _) = ctx.window_seqs.get();
                    ctx.window_seqs.set((first.min(seq), seq));
                }
                due += every;
            }
        }
    }
}
