//! `duplex serve`'s `/ws` with an independent client: Python `websockets`
//! (`tests/peers/python/hub_client.py`), which offers permessage-deflate by default.
//!
//! `#[ignore]`d like the library's peer tests, because it needs the Python venv that
//! `cargo xtask test` creates (its `peers` step runs this test); without it, the test fails
//! and says how to install it.

use std::{env, path::PathBuf, process::Stdio, time::Duration};

use tokio::process::Command;

use crate::support::*;

/// The peer gives up on its own after 30 s.
const LIMIT: Duration = Duration::from_secs(60);

fn python() -> PathBuf {
    let python = env::var_os("DUPLEX_PEERS_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../peers/venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.is_file(),
        "the Python peer needs a venv with `websockets` at {}: run `cargo xtask test --only \
         peers` (it creates the venv), or set DUPLEX_PEERS_PYTHON to a python that has \
         `websockets`",
        python.display()
    );
    python
}

/// Runs the Python client against `s`; returns its stdout lines, or panics with its stderr.
async fn python_client(s: &TestServer, channel: &str, size: usize) -> Vec<String> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/python/hub_client.py");
    let child = Command::new(python())
        .arg(script)
        .args([s.url(), channel.to_owned(), size.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Python peer");
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("the Python peer did not finish in time")
        .expect("wait for the Python peer");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the Python peer failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

#[tokio::test]
#[ignore = "needs the Python peer venv: cargo xtask test --only peers"]
async fn python_websockets_negotiates_deflate_and_duplex_v1() {
    let mut config = config();
    config.websocket.compression.enabled = true;
    let s = start_with(config).await;
    let lines = python_client(&s, "py", 20_000).await;
    assert_eq!(lines[0], "subprotocol duplex.v1", "{lines:?}");
    assert!(
        lines[1].starts_with("extensions permessage-deflate"),
        "{lines:?}"
    );
    assert!(lines[2].starts_with("publication "), "{lines:?}");
    // And with compression off, the same client works uncompressed.
    let s = start().await;
    let lines = python_client(&s, "py", 20_000).await;
    assert_eq!(lines[..2], ["subprotocol duplex.v1", "extensions none"]);
    assert!(lines[2].starts_with("publication "), "{lines:?}");
}
