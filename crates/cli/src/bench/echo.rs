//! `duplex bench echo`: messages out, the same messages back, every payload checked.
//!
//! Closed loop (the default): each connection keeps `--pipeline` messages in flight and sends
//! the next one as soon as an echo arrives; latency is from the write to the echo. Fixed rate
//! (`--rate`): messages are due on a schedule and latency is measured from the time a message
//! was *due*, not the time it could be written, so a stalled server is charged for every
//! message it delayed (no coordinated omission).

use std::{collections::VecDeque, rc::Rc, time::Duration, time::Instant};

use anyhow::{bail, Context as _};
use duplex_proto::frame::{FrameHeader, OpCode};
use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use super::{
    report::{self, Report, Stats},
    wire::{self, Conn, Inflater, Offer, Target},
    Common, ServerWatch,
};

/// Options of `duplex bench echo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The echo server (e.g. `duplex echo`).
    #[arg(long, short, default_value = "ws://127.0.0.1:9001/")]
    url: String,
    /// Connections, each its own closed loop (or its share of --rate).
    #[arg(long, short, default_value_t = 100)]
    connections: usize,
    /// Payload size of every message, in bytes.
    #[arg(long, short, default_value_t = 20)]
    size: usize,
    /// Send binary messages (default: text, which the server must validate as UTF-8).
    #[arg(long)]
    binary: bool,
    /// Messages in flight per connection in closed-loop mode (1: request, response, repeat).
    #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pipeline: u32,
    /// Send at this total rate (messages per second, spread evenly over the connections)
    /// instead of a closed loop; latency is then measured from each message's due time.
    #[arg(long, value_name = "MSG/S")]
    rate: Option<f64>,
    /// Offer permessage-deflate (RFC 7692, `client_no_context_takeover`) and send compressed
    /// messages; fails if the server declines.
    #[arg(long)]
    deflate: bool,
    /// Open the WebSockets over HTTP/2 (RFC 8441 extended CONNECT, h2c with prior
    /// knowledge), --streams of them on each HTTP/2 connection; fails if the server does not
    /// accept WebSockets over HTTP/2 (no fallback to HTTP/1.1). Not with --source.
    #[arg(long)]
    http2: bool,
    /// WebSockets per HTTP/2 connection, with --http2.
    #[arg(long, default_value_t = 1, requires = "http2", value_parser = clap::value_parser!(u32).range(1..=1000))]
    streams: u32,
    #[command(flatten)]
    common: Common,
}

/// What every connection task shares.
#[derive(Debug)]
struct Ctx {
    stats: Rc<Stats>,
    payload: Vec<u8>,
    opcode: OpCode,
    /// The frame, repeated `batch` times, so that any number of due messages up to `batch`
    /// leaves in one write.
    frames: Vec<u8>,
    frame_len: usize,
    batch: usize,
    pipeline: usize,
    /// Interval between two messages of one connection, in fixed-rate mode.
    interval: Option<Duration>,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<(Report, bool)> {
    let target = Target::parse(&args.url)?;
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let payload = wire::payload(args.size, 0x9e37_79b9_7f4a_7c15);
    let opcode = if args.binary {
        OpCode::Binary
    } else {
        OpCode::Text
    };
    let pipeline = args.pipeline as usize;
    let offer = Offer {
        deflate: args.deflate,
        subprotocol: None,
    };
    let frame_estimate = args.size + FrameHeader::MAX_LEN;
    let rx_capacity = (frame_estimate * pipeline * 2).max(64 * 1024);
    let common = &args.common;
    let conns: Vec<Conn> = if args.http2 {
        if !common.source.is_empty() {
            bail!("--source cannot be used with --http2");
        }
        let per = args.streams as usize;
        let groups: Vec<Vec<Conn>> = stream::iter(0..args.connections.div_ceil(per))
            .map(|i| {
                let (url, offer) = (&args.url, &offer);
                let streams = per.min(args.connections - i * per);
                async move { wire::connect_h2(url, offer, streams, rx_capacity).await }
            })
            .buffered(16)
            .try_collect()
            .await
            .with_context(|| format!("cannot connect to {} over HTTP/2", args.url))?;
        groups.into_iter().flatten().collect()
    } else {
        stream::iter(0..args.connections)
            .map(|i| {
                let (target, offer) = (&target, &offer);
                let source = common.source_for(i, args.connections);
                async move { wire::connect(target, source, offer, rx_capacity).await }
            })
            .buffered(64)
            .try_collect()
            .await
            .with_context(|| format!("cannot connect to {}", args.url))?
    };
    if args.deflate && conns.iter().any(|c| !c.deflate) {
        bail!("the server declined permessage-deflate");
    }
    let frame = if args.deflate {
        wire::client_frame(opcode, true, &wire::deflate_message(&payload)?)
    } else {
        wire::client_frame(opcode, false, &payload)
    };
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.connections as f64 / rate.max(1e-3)));
    let batch = pipeline.max(if interval.is_some() { 64 } else { 1 });
    let stats = Stats::new(common.warmup, common.duration)?;
    let ctx = Rc::new(Ctx {
        stats: Rc::clone(&stats),
        frames: frame.repeat(batch),
        frame_len: frame.len(),
        payload,
        opcode,
        batch,
        pipeline,
        interval,
    });
    let watch = ServerWatch::start(common.server_pid, &stats)?;
    let progress = report::progress(&stats, common.quiet, "msg");
    let total = conns.len();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let ctx = Rc::clone(&ctx);
            tokio::task::spawn_local(async move {
                let stats = Rc::clone(&ctx.stats);
                let result = match ctx.interval {
                    None => closed_loop(conn, ctx).await,
                    Some(every) => {
                        let offset = every.mul_f64(i as f64 / total as f64);
                        fixed_rate(conn, ctx, every, offset).await
                    }
                };
                if let Err(e) = result {
                    stats.error(&e);
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
        "size": args.size,
        "binary": args.binary,
        "pipeline": args.pipeline,
        "rate": args.rate,
        "deflate": args.deflate,
        "http2": args.http2,
        "streams": args.http2.then_some(args.streams),
    });
    let report = Report::new("echo", params, &stats, common.duration, true);
    Ok((watch.finish(report, false).await?, common.json))
}

/// Checks echoed frames against the payload that was sent, fragment by fragment.
#[derive(Debug)]
struct Verifier {
    /// Payload bytes of the message in progress already matched.
    pos: usize,
    ok: bool,
    compressed: bool,
    inflater: Option<Inflater>,
}

impl Verifier {
    fn new(conn: &Conn, size: usize) -> Self {
        Self {
            pos: 0,
            ok: true,
            compressed: false,
            inflater: conn.deflate.then(|| Inflater::new(size)),
        }
    }

    /// Check one frame; `Some(matched)` when it completed a message.
    fn frame(&mut self, ctx: &Ctx, h: &FrameHeader, data: &[u8]) -> anyhow::Result<Option<bool>> {
        match h.opcode {
            OpCode::Close => bail!("the server closed the connection"),
            OpCode::Ping | OpCode::Pong => return Ok(None),
            OpCode::Text | OpCode::Binary => {
                self.pos = 0;
                self.ok = h.opcode == ctx.opcode;
                self.compressed = h.rsv1;
            }
            OpCode::Continuation => {}
        }
        if self.compressed {
            let inflater = self
                .inflater
                .as_mut()
                .context("a compressed frame without permessage-deflate")?;
            inflater.feed(data, h.fin)?;
            if !h.fin {
                return Ok(None);
            }
            let matched = self.ok && inflater.out == ctx.payload;
            inflater.out.clear();
            return Ok(Some(matched));
        }
        let end = self.pos + data.len();
        self.ok = self.ok && ctx.payload.get(self.pos..end) == Some(data);
        self.pos = end;
        Ok(h.fin.then_some(self.ok && self.pos == ctx.payload.len()))
    }
}

/// Read once and check every complete frame; returns how many echoes arrived, recording each
/// against the send time at the front of `inflight`.
async fn receive(
    conn: &mut Conn,
    ctx: &Ctx,
    verifier: &mut Verifier,
    inflight: &mut VecDeque<Instant>,
) -> anyhow::Result<usize> {
    if conn.rx.read(&mut conn.stream).await? == 0 {
        bail!("the server closed the connection");
    }
    let now = Instant::now();
    let mut done = 0;
    while let Some((h, range)) = conn.rx.next_frame()? {
        let Some(matched) = verifier.frame(ctx, &h, conn.rx.payload(range))? else {
            continue;
        };
        let sent = inflight
            .pop_front()
            .context("an echo arrived for a message that was not sent")?;
        if !matched {
            ctx.stats.mismatch();
        }
        ctx.stats.record(sent, now, ctx.payload.len());
        done += 1;
    }
    Ok(done)
}

async fn closed_loop(mut conn: Conn, ctx: Rc<Ctx>) -> anyhow::Result<()> {
    let mut verifier = Verifier::new(&conn, ctx.payload.len());
    let mut inflight = VecDeque::with_capacity(ctx.pipeline);
    let mut due = ctx.pipeline;
    loop {
        if due > 0 {
            let now = Instant::now();
            conn.stream
                .write_all(&ctx.frames[..due * ctx.frame_len])
                .await?;
            inflight.extend(std::iter::repeat_n(now, due));
        }
        due = receive(&mut conn, &ctx, &mut verifier, &mut inflight).await?;
        if ctx.stats.finished(Instant::now()) {
            break;
        }
    }
    close(conn).await
}

async fn fixed_rate(
    mut conn: Conn,
    ctx: Rc<Ctx>,
    every: Duration,
    offset: Duration,
) -> anyhow::Result<()> {
    let mut verifier = Verifier::new(&conn, ctx.payload.len());
    let mut inflight = VecDeque::with_capacity(1024);
    let mut next = Instant::now() + offset;
    let sleep = tokio::time::sleep_until(next.into());
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            received = receive(&mut conn, &ctx, &mut verifier, &mut inflight) => {
                received?;
            }
            () = &mut sleep => {
                let now = Instant::now();
                if ctx.stats.finished(now) {
                    break;
                }
                let mut due = 0;
                while next <= now {
                    inflight.push_back(next);
                    next += every;
                    due += 1;
                }
                while due > 0 {
                    let n = due.min(ctx.batch);
                    conn.stream.write_all(&ctx.frames[..n * ctx.frame_len]).await?;
                    due -= n;
                }
                sleep.as_mut().reset(next.into());
            }
        }
    }
    close(conn).await
}

/// Send a Close and wait (briefly) for the server's, so that servers end cleanly.
pub(crate) async fn close(mut conn: Conn) -> anyhow::Result<()> {
    conn.stream.write_all(&wire::close_frame()).await?;
    let drain = async {
        loop {
            if conn.rx.read(&mut conn.stream).await? == 0 {
                return anyhow::Ok(());
            }
            while let Some((h, _)) = conn.rx.next_frame()? {
                if h.opcode == OpCode::Close {
                    return Ok(());
                }
            }
        }
    };
    // A server that does not answer is not this benchmark's concern.
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    if let wire::Stream::Http2(stream) = &mut conn.stream {
        // END_STREAM (RFC 8441 §5), or dropping the stream would reset it.
        let _ = stream.shutdown().await;
    }
    Ok(())
}
