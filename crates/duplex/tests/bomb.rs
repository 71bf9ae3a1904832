//! A compression bomb sent to a real duplex server over a real socket.
//!
//! RFC 7692 lets a peer send a message that inflates to far more than its wire size: deflate
//! reaches about 1000:1 on runs of zeros, so 1 MiB on the wire can stand for 1 GiB. A receiver
//! that inflates first and checks the size afterwards would allocate all of it. duplex bounds
//! inflation by `max_message_size` and answers 1009 (Message Too Big, RFC 6455 §7.4.1).
//!
//! The client here is hand-written on purpose (the duplex client compresses what it sends, so
//! it cannot send 1 GiB without holding it): it performs the opening handshake, offers
//! permessage-deflate, and writes one masked frame with RSV1 set whose payload is a raw deflate
//! stream of zeros.
//!
//! Memory is read from `/proc/self/status` (the server runs in this process): the peak
//! resident size (`VmHWM`) must not grow by anything near the bomb's inflated size, and the
//! resident size (`VmRSS`) must not creep up over 50 connections.

#![cfg(target_os = "linux")]

use std::time::Duration;

use duplex::{deflate::DeflateConfig, Accept, CloseCode, Config, ServerConfig};
use flate2::{Compress, Compression, FlushCompress};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::timeout,
};

/// The server's message limit.
const MAX_MESSAGE: usize = 1 << 20;

/// Bound for each step; nothing here should take more than a fraction of it.
const LIMIT: Duration = Duration::from_secs(30);

/// A raw deflate stream (RFC 7692 §7.2.1) of `mib` MiB of zeros, made without holding them:
/// one MiB of zeros compressed and sync-flushed, so it ends on a byte boundary and refers to
/// nothing before it, repeated `mib` times.
fn deflated_zeros(mib: usize) -> Vec<u8> {
    let mut compress = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(64 * 1024);
    compress
        .compress_vec(&vec![0; 1 << 20], &mut block, FlushCompress::Sync)
        .expect("compressing into memory");
    assert!(
        compress.total_in() == 1 << 20 && block.ends_with(&[0, 0, 0xff, 0xff]),
        "the block did not take the whole MiB"
    );
    block.repeat(mib)
}

/// A masked binary frame with RSV1 set (a compressed message, RFC 7692 §6).
fn compressed_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | 0x40 | 0x2, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Serves `duplex` with deflate on and a `max_message` limit; reports each connection's
/// outcome (the error that ended it) on `tx`.
async fn server(tx: mpsc::UnboundedSender<String>, max_message: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let config = ServerConfig::default().connection(
        Config::default()
            .max_message_size(max_message)
            .max_frame_size(max_message)
            .deflate(Some(DeflateConfig::default())),
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, tx) = (config.clone(), tx.clone());
            tokio::spawn(async move {
                let outcome =
                    match duplex::accept_with(tcp, config, |_| Ok(Accept::default())).await {
                        Err(e) => format!("handshake failed: {e}"),
                        Ok(mut ws) => match ws.recv().await {
                            Some(Ok(message)) => {
                                format!("received a message of {} bytes", message.len())
                            }
                            Some(Err(e)) => format!("error: {e}"),
                            None => "closed".to_owned(),
                        },
                    };
                let _ = tx.send(outcome);
            });
        }
    });
    addr
}

/// Opens a connection with permessage-deflate negotiated, sends `frame`, and returns the close
/// code the server answered with.
async fn bomb(addr: std::net::SocketAddr, frame: &[u8]) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        tcp.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("an ASCII head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "deflate was not negotiated: {head}"
    );
    // The server may close before it has read the whole frame; a write error is fine then.
    let _ = tcp.write_all(frame).await;
    // The answer: an unmasked Close frame (RFC 6455 §5.5.1) with a 2-byte code.
    let mut start = [0; 2];
    tcp.read_exact(&mut start)
        .await
        .expect("the server's Close");
    assert_eq!(
        start[0], 0x88,
        "expected a final Close frame, got {start:?}"
    );
    assert!((2..126).contains(&start[1]), "close payload {start:?}");
    let mut payload = vec![0; usize::from(start[1])];
    tcp.read_exact(&mut payload).await.expect("close payload");
    u16::from_be_bytes([payload[0], payload[1]])
}

/// `VmHWM` and `VmRSS` of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compression_bomb_is_refused_with_1009_and_memory_stays_flat() {
    let (tx, mut outcomes) = mpsc::unbounded_channel();
    let addr = server(tx, MAX_MESSAGE).await;

    // A few KiB that inflate to 8 times the limit.
    let tiny = compressed_frame(&deflated_zeros(8));
    assert!(tiny.len() < 16 * 1024, "{} bytes", tiny.len());
    let code = timeout(LIMIT, bomb(addr, &tiny)).await.expect("in time");
    assert_eq!(CloseCode(code), CloseCode::TOO_BIG);
    let outcome = timeout(LIMIT, outcomes.recv()).await.expect("in time");
    let outcome = outcome.expect("the server reports each connection");
    assert!(outcome.contains("error"), "server side: {outcome}");

    // About 1 MiB that inflates to 1 GiB, 50 times over fresh connections.
    let big = compressed_frame(&deflated_zeros(1024));
    assert!(big.len() < 2 << 20, "{} bytes", big.len());
    let (peak_before, rss_before) = memory();
    for round in 0..50 {
        let code = timeout(LIMIT, bomb(addr, &big)).await.expect("in time");
        assert_eq!(CloseCode(code), CloseCode::TOO_BIG, "round {round}");
        let outcome = timeout(LIMIT, outcomes.recv()).await.expect("in time");
        let outcome = outcome.expect("the server reports each connection");
        assert!(outcome.contains("error"), "round {round}: {outcome}");
    }
    let (peak_after, rss_after) = memory();
    let (peak_growth, rss_growth) = (
        peak_after.saturating_sub(peak_before),
        rss_after.saturating_sub(rss_before),
    );
    eprintln!(
        "peak resident: {} -> {} MiB; resident: {} -> {} MiB",
        peak_before / MIB,
        peak_after / MIB,
        rss_before / MIB,
        rss_after / MIB
    );
    // Each bomb stands for 1 GiB; an unbounded inflate would raise the peak by about that.
    assert!(
        peak_growth < 32 * MIB,
        "peak resident size grew by {} MiB",
        peak_growth / MIB
    );
    assert!(
        rss_growth < 32 * MIB,
        "resident size grew by {} MiB",
        rss_growth / MIB
    );
}

/// The case of the report: about 100 KB on the wire against the default 64 MiB limit of
/// `duplex echo`. Inflating it stops at the limit; the buffer it fills is allocated at most
/// once at about the limit (growing it by doubling held 64 MiB and asked for 128 MiB more,
/// about 200 MB before the 1009).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kb_bomb_costs_about_the_default_message_limit() {
    let limit = Config::default().max_message_size;
    assert_eq!(limit, 64 << 20);
    let (tx, mut outcomes) = mpsc::unbounded_channel();
    let addr = server(tx, limit).await;
    // 100 MiB of zeros in about 100 KB.
    let frame = compressed_frame(&deflated_zeros(100));
    assert!(frame.len() < 110_000, "{} bytes", frame.len());
    let (peak_before, _) = memory();
    let code = timeout(LIMIT, bomb(addr, &frame)).await.expect("in time");
    assert_eq!(CloseCode(code), CloseCode::TOO_BIG);
    let outcome = timeout(LIMIT, outcomes.recv()).await.expect("in time");
    assert!(outcome.expect("reported").contains("error"));
    let (peak_after, _) = memory();
    let growth = peak_after.saturating_sub(peak_before);
    eprintln!(
        "{} byte bomb: peak resident {} -> {} MiB (+{} MiB, limit {} MiB)",
        frame.len(),
        peak_before / MIB,
        peak_after / MIB,
        growth / MIB,
        limit as u64 / MIB
    );
    // About the limit: 64 MiB plus the frame, the codec and slack; not twice or three times it.
    assert!(
        growth < limit as u64 + 24 * MIB,
        "peak resident size grew by {} MiB",
        growth / MIB
    );
}
