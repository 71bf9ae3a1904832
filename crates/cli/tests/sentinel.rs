//! Two `duplex serve` nodes on a Redis Sentinel deployment (one master, one replica, three
//! Sentinels), the master killed with SIGKILL in the middle of a numbered stream: publishes
//! fail loudly while there is no master, succeed again on the promoted replica, and the
//! subscribers on both nodes end with every acknowledged publication in order, or with an
//! explicit reset of the channel.
//!
//! They need `redis-server` (with Sentinel mode) on the PATH, so they are ignored in a plain
//! test run; `cargo xtask test --only cluster` installs it and runs them.

mod cluster_support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster_support::{free_port, http, wait_listening, Follower, HubClient, Node, Upstream};
use serde_json::json;

const MASTER: &str = "main";

/// A `redis-server` (data node or Sentinel), killed on drop.
struct Proc {
    port: u16,
    child: Option<Child>,
}

impl Proc {
    fn start(dir: &Path, name: &str, args: &[String]) -> Self {
        let port = free_port();
        Self::start_on(dir, name, port, args)
    }

    fn start_on(dir: &Path, name: &str, port: u16, args: &[String]) -> Self {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        let child = Command::new("redis-server")
            .args(args)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &dir.display().to_string()])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install it, or run `cargo xtask test --only cluster`)");
        wait_listening(port, name);
        Self {
            port,
            child: Some(child),
        }
    }

    /// A data node, persistence off; a replica of `of` when given.
    fn data(dir: &Path, name: &str, of: Option<u16>) -> Self {
        let mut args: Vec<String> = ["--save", "", "--appendonly", "no"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.push("--dbfilename".into());
        args.push(format!("{name}.rdb"));
        if let Some(master) = of {
            args.push("--replicaof".into());
            args.push(format!("127.0.0.1 {master}"));
        }
        Self::start(dir, name, &args)
    }

    /// A Sentinel watching the master on `master`: down after 1 s, failover within 5 s.
    fn sentinel(dir: &Path, name: &str, master: u16) -> Self {
        let port = free_port();
        let conf = dir.join(format!("{name}.conf"));
        // Sentinel rewrites its configuration file, so each has its own.
        let text = format!(
            "sentinel monitor {MASTER} 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 5000\n\
             sentinel parallel-syncs {MASTER} 1\n"
        );
        std::fs::write(&conf, text).expect("sentinel conf");
        Self::start_on(
            dir,
            name,
            port,
            &[conf.display().to_string(), "--sentinel".to_owned()],
        )
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One inline command to the Redis on `port`; the raw reply (bounded in time and size).
fn redis_cmd(port: u16, command: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(format!("{command}\r\n").as_bytes()).is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 1 << 20 || out.ends_with(b"\r\n") && n < buf.len() {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until `pred` holds for the reply to `command`, at most `wait`.
fn wait_reply(port: u16, command: &str, wait: Duration, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + wait;
    loop {
        let reply = redis_cmd(port, command);
        if pred(&reply) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{command} on {port}: still {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Debug, Default)]
struct Failover {
    /// `n` of every acknowledged publication, with the time it was acknowledged.
    acked: Vec<(u64, Instant)>,
    /// Publishes refused (error reply or 503), each within its deadline.
    refused: u32,
    /// From the first refused publish to the first acknowledged one after it.
    outage: Option<Duration>,
    /// Whether `/healthz` said degraded at some point.
    degraded_seen: bool,
    /// Slowest publish answer (reply or refusal).
    slowest: Duration,
    /// When the first publish after the outage was acknowledged.
    back_at: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server with Sentinel; run by `cargo xtask test --only cluster`"]
async fn master_killed_mid_stream_fails_over_without_silent_loss() {
    failover(false).await;
}

/// The replica stops replicating (pointed at a closed port) 30 publications before the
/// master dies, so the promoted replica is behind what the nodes delivered: the channel must
/// move to a new epoch with a reset, never reuse the lost offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server with Sentinel; run by `cargo xtask test --only cluster`"]
async fn failover_to_a_lagging_replica_resets_instead_of_reusing_offsets() {
    failover(true).await;
}

async fn failover(lagging: bool) {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let mut master = Proc::data(d, "master", None);
    let replica = Proc::data(d, "replica", Some(master.port));
    wait_reply(
        replica.port,
        "INFO replication",
        Duration::from_secs(10),
        |r| r.contains("master_link_status:up"),
    );
    let sentinels: Vec<Proc> = (1..=3)
        .map(|i| Proc::sentinel(d, &format!("sentinel{i}"), master.port))
        .collect();
    // A failover needs the Sentinels to know each other and the replica (they learn both
    // through the master, every few seconds).
    for s in &sentinels {
        wait_reply(
            s.port,
            &format!("SENTINEL MASTER {MASTER}"),
            Duration::from_secs(15),
            |r| {
                let after = |key: &str| {
                    r.split_once(key)
                        .and_then(|(_, rest)| rest.lines().nth(2))
                        .map(str::trim)
                        .map(str::to_owned)
                };
                after("num-slaves").as_deref() == Some("1")
                    && after("num-other-sentinels").as_deref() == Some("2")
            },
        );
    }
    let urls: Vec<String> = sentinels
        .iter()
        .map(|s| format!("redis://127.0.0.1:{}", s.port))
        .collect();
    let upstream = Upstream::Sentinel {
        sentinels: urls,
        master: MASTER,
    };
    let nodes = [
        Node::start_with(d, "n1", &upstream),
        Node::start_with(d, "n2", &upstream),
    ];
    let followers = [
        Follower::start(nodes[0].ws_url(), "fo", None),
        Follower::start(nodes[1].ws_url(), "fo", None),
    ];
    for f in &followers {
        f.ready().await;
    }
    let mut publisher = HubClient::connect(&nodes[0].ws_url())
        .await
        .expect("publisher");

    let mut run = Failover::default();
    let mut first_refusal: Option<Instant> = None;
    let mut killed_at = None;
    let mut successes_after = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0u64;
    while successes_after < 50 {
        assert!(
            Instant::now() < deadline,
            "publishes did not recover on the new master: {run:?}"
        );
        n += 1;
        if lagging && n == 100 {
            let reply = redis_cmd(replica.port, "REPLICAOF 127.0.0.1 1");
            assert!(reply.starts_with("+OK"), "{reply}");
        }
        if n == if lagging { 130 } else { 100 } {
            master.kill();
            killed_at = Some(Instant::now());
        }
        // Alternate the WebSocket command and the server API, on both nodes.
        let t0 = Instant::now();
        let ok = if n.is_multiple_of(2) {
            let result =
                tokio::time::timeout(Duration::from_secs(4), publisher.publish("fo", n, 0))
                    .await
                    .expect("a publish must answer within its deadline");
            match result {
                Ok(_) => true,
                Err(e) => {
                    assert_eq!(e["code"], "unavailable", "{e}");
                    false
                }
            }
        } else {
            let body = json!({"channel": "fo", "data": {"n": n}}).to_string();
            let answer = tokio::time::timeout(
                Duration::from_secs(4),
                http(nodes[1].addr(), "POST", "/api/publish", Some(&body)),
            )
            .await
            .expect("an API publish must answer within its deadline");
            let status = answer.map(|(s, _)| s).unwrap_or(0);
            assert!(status == 200 || status == 503, "status {status}");
            status == 200
        };
        run.slowest = run.slowest.max(t0.elapsed());
        if ok {
            run.acked.push((n, Instant::now()));
            if let Some(first) = first_refusal {
                run.outage.get_or_insert_with(|| first.elapsed());
                run.back_at.get_or_insert_with(Instant::now);
            }
            if run.outage.is_some() {
                successes_after += 1;
            }
        } else {
            run.refused += 1;
            first_refusal.get_or_insert_with(Instant::now);
        }
        if killed_at.is_some() && run.outage.is_none() && !run.degraded_seen {
            if let Ok((status, _)) = http(nodes[0].addr(), "GET", "/healthz", None).await {
                run.degraded_seen |= status == 503;
            }
        }
        if killed_at.is_none() || run.outage.is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let killed_at = killed_at.expect("the master was killed");

    // Every acknowledged publication, or an explicit reset.
    let acked: Vec<u64> = run.acked.iter().map(|a| a.0).collect();
    let after_outage: Vec<u64> = run
        .acked
        .iter()
        .filter(|a| a.1 > killed_at)
        .map(|a| a.0)
        .collect();
    // After a regression, publications acknowledged in the old epoch by the new master
    // before a node noticed are gone with that epoch (the reset says so); the last ones
    // are in the new epoch.
    let tail: Vec<u64> = acked.iter().rev().take(30).copied().collect();
    let mut summaries = Vec::new();
    for (i, f) in followers.iter().enumerate() {
        let complete = |s: &cluster_support::Seen| {
            let got = s.distinct();
            if lagging {
                return s.connections > 1 && tail.iter().all(|n| got.contains(n));
            }
            acked.iter().all(|n| got.contains(n))
                || (s.connections > 1 && after_outage.iter().all(|n| got.contains(n)))
        };
        let done = f.wait_for(Duration::from_secs(10), complete).await;
        let seen = f.seen();
        let missing: Vec<u64> = acked
            .iter()
            .filter(|n| !seen.distinct().contains(n))
            .copied()
            .collect();
        summaries.push(format!(
            "n{}: received {} ({} distinct), connections {}, missing acknowledged {:?}",
            i + 1,
            seen.received.len(),
            seen.distinct().len(),
            seen.connections,
            missing
        ));
        assert!(done, "follower on n{}: {}", i + 1, summaries[i]);
        assert!(seen.violations.is_empty(), "{:?}", seen.violations);
        assert_eq!(
            seen.received.len(),
            seen.distinct().len(),
            "no duplicates: {}",
            summaries[i]
        );
        assert!(
            seen.received.windows(2).all(|w| w[0] < w[1]),
            "in order: {}",
            summaries[i]
        );
        if !missing.is_empty() {
            assert!(
                seen.connections > 1,
                "acknowledged publications missing without a reset: {}",
                summaries[i]
            );
        }
    }
    let outage = run.outage.expect("publishes failed during the failover");
    assert!(run.refused > 0);
    assert!(
        run.degraded_seen,
        "/healthz said degraded during the failover"
    );
    let regressions: usize = nodes
        .iter()
        .map(|n| n.log_text().matches("stream regressed").count())
        .sum();
    if lagging {
        assert!(regressions > 0, "a node noticed the regression");
    }
    println!(
        "sentinel failover (lagging replica: {lagging}): published {n}, acknowledged {}, refused {}, publishes failed for \
         {:.2} s (from the first refusal; master killed {:.2} s before the first success \
         after it), slowest answer {} ms, stream regressions {regressions}; {}; total {:.1} s",
        acked.len(),
        run.refused,
        outage.as_secs_f64(),
        run.back_at
            .map_or(0.0, |b| b.duration_since(killed_at).as_secs_f64()),
        run.slowest.as_millis(),
        summaries.join("; "),
        started.elapsed().as_secs_f64()
    );
    for f in followers {
        f.stop().await;
    }
    drop(nodes);
    drop(sentinels);
    drop(replica);
}
