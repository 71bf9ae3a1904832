//! Medians (min–max) of the samples, the markdown tables and the chart of
//! `cargo xtask bench-peers`.

use std::{fmt::Write as _, fs, path::Path, process::Command, thread, time::Duration};

use anyhow::{Context as _, Result};

use super::{Args, Kind, Quiet, Row, Sample, Server};
use crate::cmd;

const BEGIN: &str = "<!-- bench-peers:begin (written by `cargo xtask bench-peers`) -->";
const END: &str = "<!-- bench-peers:end -->";

/// The versions of the JavaScript runtimes, for the report's header.
#[derive(Debug)]
pub(super) struct Versions {
    pub(super) bun: String,
    pub(super) node: String,
}

/// How the run went, for the report's header.
#[derive(Debug)]
pub(super) struct RunInfo<'a> {
    pub(super) before: &'a Quiet,
    pub(super) after: &'a Quiet,
    pub(super) seconds: f64,
    pub(super) warmup: f64,
    pub(super) args: &'a Args,
    pub(super) elapsed: Duration,
    pub(super) versions: &'a Versions,
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

pub(super) fn fmt_opt(v: Option<f64>, digits: usize) -> String {
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

pub(super) fn render(rows: &[Row], run: &RunInfo<'_>) -> Result<String> {
    let (args, before, after) = (run.args, run.before, run.after);
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
        "Run of {}: {cores} × {cpu}, Linux {}, {}, Bun {}, Node {}. Server on core {}, \
         `duplex bench` on core {}; {} s warm-up + {} s per point, {} repetitions, servers \
         interleaved; whole run {:.0} s.\n",
        when.trim(),
        kernel.trim(),
        rustc.trim(),
        run.versions.bun,
        run.versions.node,
        args.server_cpu,
        args.client_cpu,
        run.warmup,
        run.seconds,
        args.repeat,
        run.elapsed.as_secs_f64()
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
    let echo = |kind: Kind| {
        rows.iter()
            .filter(move |r| r.point.kind == kind && !r.point.hub)
    };
    let hub = |kind: Kind| {
        rows.iter()
            .filter(move |r| r.point.kind == kind && r.point.hub)
    };
    if echo(Kind::Echo).next().is_some() {
        writeln!(
            md,
            "Medians (min–max). *CPU/msg* is the server process's user+system CPU time divided \
             by the messages echoed (lower is better); *vs fws* is that figure over \
             fastwebsockets' at the same point. Latency is from write to echo (closed loop).\n"
        )?;
        writeln!(
            md,
            "| point | server | msg/s | server CPU µs/msg | vs fws | p50 µs | p99 µs | errors |"
        )?;
        writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|")?;
        for row in echo(Kind::Echo) {
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
                errors(row),
            )?;
        }
        writeln!(md)?;
    }
    handshake_table(&mut md, echo(Kind::Connect))?;
    idle_table(&mut md, echo(Kind::Idle))?;
    if echo(Kind::Echo).any(|r| r.point.deflate) {
        writeln!(
            md,
            "tokio-tungstenite and fastwebsockets implement no permessage-deflate, so the \
             `deflate` points are duplex and Bun alone. Both keep their compression context \
             between messages (Bun's `dedicated` compressor; the generator asks only for \
             `client_no_context_takeover`), so they do the same work.\n"
        )?;
    }
    if echo(Kind::Echo).next().is_some() {
        writeln!(
            md,
            "![server CPU per message, echo points without deflate](bench/peers-cpu.svg)\n"
        )?;
    }
    if rows.iter().any(|r| r.point.hub) {
        writeln!(
            md,
            "**Hubs.** `duplex serve` (a `bench` namespace without presence, history on as by \
             default), a hub on Bun's own pub/sub (`ws.subscribe`, one `server.publish` per \
             publication) and one on Node `ws` (a set of sockets per channel), the two speaking \
             the duplex.v1 subset the generator uses (`bench/peers/js`). *Fan-out*: one \
             publisher, N subscribers of one channel; *CPU/delivery* is the server's CPU time \
             over the deliveries received; latency is from when each publication was due; \
             *lost* is deliveries expected (publications × subscribers) minus those received \
             by 0.5 s after the window (a delivery later than that counts as lost); RSS is \
             the server's at the end of the window. *1 KiB*: publications padded to about 1 KiB; \
             *deflate*: the same compressed (RFC 7692), on `duplex serve` \
             (`websocket.compression`, level 1) and the Bun hub (uWebSockets' shared \
             compressor), both compressing a publication once for all its subscribers.\n"
        )?;
    }
    let mut fanout = hub(Kind::Fanout).peekable();
    if fanout.peek().is_some() {
        writeln!(
            md,
            "| point | server | deliveries/s | server CPU µs/delivery | p50 ms | p99 ms | max ms | \
             lost | server RSS MiB | errors |"
        )?;
        writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        let ms = |v: Option<(f64, f64, f64)>| fmt_opt(v.map(|s| s.0 / 1000.0), 1);
        for row in fanout {
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.point.name,
                row.server.name(),
                fmt_rate(stat(row, |s| Some(s.rate))),
                fmt_stat(stat(row, |s| s.cpu_us), 2),
                ms(stat(row, |s| s.p50)),
                ms(stat(row, |s| s.p99)),
                ms(stat(row, |s| s.max)),
                row.samples.iter().filter_map(|s| s.lost).sum::<f64>(),
                fmt_opt(stat(row, |s| s.rss_end_kib).map(|s| s.0 / 1024.0), 1),
                errors(row),
            )?;
        }
        writeln!(md)?;
    }
    idle_table(&mut md, hub(Kind::Idle))?;
    handshake_table(&mut md, hub(Kind::Connect))?;
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
    if args.hub_scale != 1.0 {
        write!(reproduce, " --hub-scale {}", args.hub_scale)?;
    }
    writeln!(md, "Reproduce: `{reproduce}`.")?;
    Ok(md)
}

/// Errors and mismatches over every repetition of a row.
fn errors(row: &Row) -> f64 {
    row.samples.iter().map(|s| s.errors).sum()
}

fn handshake_table<'a>(md: &mut String, rows: impl Iterator<Item = &'a Row>) -> Result<()> {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    writeln!(
        md,
        "| point | server | handshakes/s | server CPU µs/handshake | p99 µs | errors |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|")?;
    for row in rows {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            row.point.name,
            row.server.name(),
            fmt_rate(stat(row, |s| Some(s.rate))),
            fmt_stat(stat(row, |s| s.cpu_us), 1),
            fmt_opt(stat(row, |s| s.p99).map(|s| s.0), 0),
            errors(row),
        )?;
    }
    writeln!(md)?;
    Ok(())
}

fn idle_table<'a>(md: &mut String, rows: impl Iterator<Item = &'a Row>) -> Result<()> {
    let mut rows = rows.peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    writeln!(
        md,
        "| point | server | connections held | server RSS per idle connection (bytes) | errors |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|")?;
    for row in rows {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            row.point.name,
            row.server.name(),
            fmt_opt(stat(row, |s| Some(s.rate)).map(|s| s.0), 0),
            fmt_stat(stat(row, |s| s.rss_per_conn), 0),
            errors(row),
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// Replace the text between the markers (adding them at the end the first time).
pub(super) fn write_doc(path: &Path, body: &str) -> Result<()> {
    let old = fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let section = format!("{BEGIN}\n{body}{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// A grouped bar chart of the server's CPU time per message at each echo point the servers
/// share (the deflate points are duplex's and Bun's alone, and compressing 64 KiB costs a
/// hundred times more than echoing it: on one scale it would flatten every other bar). The hub
/// points have tables of their own: their figures are per delivery, not per echo.
pub(super) fn chart(rows: &[Row]) -> String {
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
        .flat_map(|p| Server::ECHO.map(|s| value(p, s)))
        .flatten()
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (left, top, plot_h, group_w, bar_w) = (60.0, 40.0, 260.0, 130.0, 28.0);
    let width = (left + group_w * points.len() as f64 + 20.0)
        .max(left + 160.0 * Server::ECHO.len() as f64 + 20.0);
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
        for (k, server) in Server::ECHO.into_iter().enumerate() {
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
            x0 + bar_w * Server::ECHO.len() as f64 / 2.0,
            top + plot_h + 16.0,
            name.trim_start_matches("echo ")
        );
    }
    for (k, server) in Server::ECHO.into_iter().enumerate() {
        let x = left + 160.0 * k as f64;
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

#[cfg(test)]
mod tests {
    use super::super::{matrix, Point};
    use super::*;

    fn row(point: &Point, server: Server, sample: Sample) -> Row {
        Row {
            point: point.clone(),
            server,
            samples: vec![sample; 3],
        }
    }

    #[test]
    fn hub_rows_have_tables_of_their_own_and_echo_tables_need_echo_rows() {
        let points = matrix(0.1);
        let fanout = points.iter().find(|p| p.kind == Kind::Fanout).unwrap();
        let idle = points
            .iter()
            .find(|p| p.kind == Kind::Idle && p.hub)
            .unwrap();
        let delivered = Sample {
            rate: 20_000.0,
            cpu_us: Some(4.5),
            p50: Some(2000.0),
            p99: Some(11_500.0),
            max: Some(17_900.0),
            lost: Some(0.0),
            rss_end_kib: Some(29_491.0),
            ..Sample::default()
        };
        let held = Sample {
            rate: 1000.0,
            rss_per_conn: Some(14_909.0),
            ..Sample::default()
        };
        let rows = [
            row(fanout, Server::DuplexHub, delivered),
            row(fanout, Server::BunHub, delivered),
            row(idle, Server::NodeHub, held),
        ];
        let quiet = Quiet {
            load1: 0.1,
            idle: 99.0,
        };
        let versions = Versions {
            bun: "1.4.4".into(),
            node: "20.20.2".into(),
        };
        let args = Args {
            quick: true,
            seconds: Some(1.0),
            repeat: 3,
            only: Some("hub".into()),
            hub_scale: 0.1,
            no_write: true,
            server_cpu: 0,
            client_cpu: 1,
        };
        let run = RunInfo {
            before: &quiet,
            after: &quiet,
            seconds: 1.0,
            warmup: 0.5,
            args: &args,
            elapsed: Duration::from_secs(9),
            versions: &versions,
        };
        let md = render(&rows, &run).unwrap();
        assert!(md.contains("Bun 1.4.4, Node 20.20.2."), "{md}");
        assert!(
            md.contains(
                "| hub fan-out 100 × 200/s | Bun hub (uWebSockets) | 20.0k (20.0k–20.0k) | \
                 4.50 (4.50–4.50) | 2.0 | 11.5 | 17.9 | 0 | 28.8 | 0 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| hub idle 1,000 connections | Node ws hub | 1000 | 14909 (14909–14909) | 0 |"
            ),
            "{md}"
        );
        for absent in [
            "msg/s",
            "peers-cpu.svg",
            "permessage-deflate",
            "handshakes/s",
        ] {
            assert!(!md.contains(absent), "{absent}: {md}");
        }
        assert!(md.contains("--hub-scale 0.1`"), "{md}");
    }
}
