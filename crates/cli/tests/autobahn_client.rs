//! `duplex autobahn-client` against a stand-in for wstest's fuzzingserver that stops answering
//! in the middle of a case: the case overruns its deadline, is named, and the run goes on.

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use duplex::{Accept, CloseCode, Message, ServerConfig};
use tokio::net::TcpListener;

const DUPLEX: &str = env!("CARGO_BIN_EXE_duplex");

/// Three cases: 1 and 3 echo one message and close; 2 opens and then says nothing, as a
/// stalled fuzzingserver would.
async fn fuzzingserver(listener: TcpListener, seen: Arc<Mutex<Vec<String>>>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let target = Arc::new(Mutex::new(String::new()));
            let t = Arc::clone(&target);
            let Ok(mut ws) = duplex::accept_with(tcp, ServerConfig::default(), move |req| {
                *t.lock().unwrap() = req.target().to_owned();
                Ok(Accept::default())
            })
            .await
            else {
                return;
            };
            let target = target.lock().unwrap().clone();
            seen.lock().unwrap().push(target.clone());
            if target.starts_with("/getCaseCount") {
                let _ = ws.send(Message::text("3")).await;
            } else if target.contains("case=2&") {
                // Silent: neither a message nor a close, for far longer than the deadline.
                tokio::time::sleep(Duration::from_secs(120)).await;
                return;
            } else if target.starts_with("/runCase") {
                let _ = ws.send(Message::text("echo me")).await;
                let echoed = ws.recv().await;
                assert!(matches!(echoed, Some(Ok(m)) if m.as_text() == Some("echo me")));
            }
            let _ = ws.close(CloseCode::NORMAL, "").await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_case_overruns_is_named_and_the_run_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(fuzzingserver(listener, Arc::clone(&seen)));
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("case-ids.txt");
    std::fs::write(&ids, "1.1.1\n9.9.9\n1.1.2\n").unwrap();

    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(DUPLEX)
            .args([
                "autobahn-client",
                "--url",
                &format!("ws://127.0.0.1:{port}"),
            ])
            .args(["--case-timeout", "2s", "--case-ids"])
            .arg(&ids)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("autobahn-client did not end")
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    // A 2 s deadline plus the other cases: generous slack for a busy machine.
    assert!(started.elapsed() < Duration::from_secs(45), "{log}");
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("case overran its deadline"), "{log}");
    assert!(
        log.contains("1 of 3 cases overran") && log.contains("9.9.9"),
        "{log}"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().any(|t| t.contains("case=3&")), "{seen:?}");
    assert!(
        seen.iter().any(|t| t.starts_with("/updateReports")),
        "{seen:?}"
    );
}
