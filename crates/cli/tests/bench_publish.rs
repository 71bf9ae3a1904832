//! `duplex bench publish` against a real `duplex serve`: every acknowledged publication is
//! delivered to each of its channel's subscribers, once and in order, and the report says so.
#![cfg(unix)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const DUPLEX: &str = env!("CARGO_BIN_EXE_duplex");

/// A `duplex serve` process on the in-memory broker, killed on drop.
struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start(dir: &std::path::Path) -> Self {
        let config = dir.join("duplex.toml");
        std::fs::write(
            &config,
            "[limits]\ncommands_per_second = 100000\ncommands_burst = 100000\n\n\
             [namespaces.bench]\npresence = false\njoin_leave = false\n\n\
             [namespaces.feed]\nclient_publish = false\n",
        )
        .unwrap();
        // A free port: bound, then released for the server.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new(DUPLEX)
            .args(["serve", "--demo-ticker", "false", "--listen"])
            .arg(addr.to_string())
            .arg("--config")
            .arg(&config)
            .env("DUPLEX_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "duplex serve did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(args: &[&str]) -> Value {
    let mut child = Command::new(DUPLEX)
        .args([
            "bench", "publish", "-q", "--json", "--warmup", "300ms", "-d", "1s",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("duplex bench publish ran past 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "duplex bench publish failed");
    serde_json::from_slice(&out.stdout).expect("one JSON report on stdout")
}

#[test]
fn closed_loop_publishers_deliver_every_acknowledged_publication_once() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    let url = format!("ws://{}/ws", serve.addr);
    let pid = serve.child.id().to_string();
    let report = bench(&[
        "--url",
        &url,
        "-p",
        "6",
        "--channels",
        "3",
        "-n",
        "2",
        "--depth",
        "4",
        "--server-pid",
        &pid,
    ]);
    let published = report["extra"]["published"].as_u64().unwrap();
    assert!(published > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");
    assert_eq!(report["extra"]["publish_refused"], 0, "{report}");
    // Two publishers per channel, two subscribers each: every acknowledged publication of
    // the window reaches both of its channel's subscribers.
    assert_eq!(
        report["extra"]["deliveries_expected"].as_u64(),
        Some(published * 2),
        "{report}"
    );
    assert_eq!(report["extra"]["deliveries_missing"], 0, "{report}");
    assert_eq!(report["messages"].as_u64(), Some(published * 2), "{report}");
    assert!(
        report["extra"]["publish_rtt_us"]["p50"].as_u64().is_some(),
        "{report}"
    );
    assert!(
        report["server"]["cpu_seconds"].as_f64().is_some(),
        "{report}"
    );
}

#[test]
fn a_fixed_rate_is_kept_and_a_refusing_hub_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path());
    let url = format!("ws://{}/ws", serve.addr);
    let report = bench(&["--url", &url, "-p", "2", "--rate", "100"]);
    let rate = report["extra"]["publications_per_sec"].as_f64().unwrap();
    assert!((80.0..=120.0).contains(&rate), "{report}");
    assert_eq!(report["extra"]["deliveries_missing"], 0, "{report}");
    // Clients may subscribe to `feed:` but not publish there: every publish gets an error
    // reply, which the report counts and quotes, and nothing is delivered.
    let report = bench(&[
        "--url", &url, "-p", "1", "--rate", "50", "--prefix", "feed:x",
    ]);
    assert!(
        report["extra"]["publish_refused"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["extra"]["published"], 0, "{report}");
    assert!(
        report["extra"]["first_refusal"]
            .as_str()
            .unwrap()
            .contains("\"type\":\"error\""),
        "{report}"
    );
}
