//! A server connection reading a buffer of many small masked frames from a client: header
//! parsing, unmasking, UTF-8 checking and message hand-out together. Reported both in bytes
//! and in frames per second.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use duplex_proto::{Config, Connection, Event, Message, Role};

const BUFFER: usize = 256 * 1024;

/// About `BUFFER` bytes of masked client frames, each with a `size`-byte payload.
fn client_frames(size: usize, text: bool) -> (Vec<u8>, u64) {
    let mut client = Connection::new(Role::Client, Config::default());
    let payload = "x".repeat(size);
    let mut wire = BytesMut::new();
    let mut count = 0;
    while wire.len() < BUFFER {
        let message = if text {
            Message::text(payload.clone())
        } else {
            Message::binary(payload.clone().into_bytes())
        };
        client.send(message).unwrap();
        client.poll_output(&mut wire);
        count += 1;
    }
    (wire.to_vec(), count)
}

fn read_all(wire: &[u8]) -> usize {
    let mut server = Connection::new(Role::Server, Config::default());
    server.read_buf().extend_from_slice(wire);
    server.receive();
    let mut n = 0;
    while let Some(event) = server.poll_event() {
        if let Event::Message(m) = event {
            n += m.len();
        }
    }
    n
}

fn frame_parse(c: &mut Criterion) {
    for (unit, per_frame) in [("bytes", false), ("frames", true)] {
        let mut group = c.benchmark_group(format!("frame_parse_{unit}"));
        for (size, text) in [(16, false), (128, false), (128, true), (1024, true)] {
            let (wire, frames) = client_frames(size, text);
            group.throughput(if per_frame {
                Throughput::Elements(frames)
            } else {
                Throughput::Bytes(wire.len() as u64)
            });
            let kind = if text { "text" } else { "binary" };
            let id = BenchmarkId::new(kind, size);
            group.bench_with_input(id, &wire, |b, wire| b.iter(|| read_all(black_box(wire))));
        }
        group.finish();
    }
}

criterion_group!(benches, frame_parse);
criterion_main!(benches);
