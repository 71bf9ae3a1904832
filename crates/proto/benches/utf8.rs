//! Validating 64 KiB of text: in one call, incrementally in 4 KiB pieces (as a text message
//! arrives), pure ASCII, and a plain copy of the same buffer as the memory-bandwidth yardstick.
//! Then reading a received text back as `&str` (`Utf8Bytes::as_str`), which must not depend
//! on its length: the text was validated once, on receipt.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use duplex_proto::{
    utf8::{validate, Utf8Validator},
    Utf8Bytes,
};

const LEN: usize = 64 * 1024;

/// Mostly ASCII with two-, three- and four-byte code points mixed in, like chat text.
fn text() -> Vec<u8> {
    text_of(LEN)
}

fn text_of(len: usize) -> Vec<u8> {
    let sample = "The quick brown fox — κόσμε — 快速的棕色狐狸 🦊 jumps over the lazy dog. ";
    let mut out = String::with_capacity(len + sample.len());
    while out.len() < len {
        out.push_str(sample);
    }
    let mut end = len;
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out.into_bytes()
}

fn utf8(c: &mut Criterion) {
    let data = text();
    let mut group = c.benchmark_group("utf8_64KiB");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("validate", |b| {
        b.iter(|| validate(black_box(&data)).unwrap());
    });
    group.bench_function("incremental_4KiB", |b| {
        b.iter(|| {
            let mut v = Utf8Validator::new();
            // 4096-byte pieces cut code points in half, as reads do.
            for piece in black_box(&data).chunks(4096) {
                v.feed(piece).unwrap();
            }
            v.finish().unwrap();
        });
    });
    // English chat and JSON are mostly ASCII, which validators check a block at a time.
    let ascii: Vec<u8> = (0..LEN).map(|i| b'a' + (i % 26) as u8).collect();
    group.bench_function("validate_ascii", |b| {
        b.iter(|| validate(black_box(&ascii)).unwrap());
    });
    let mut dst = vec![0u8; data.len()];
    group.bench_function("memcpy", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&data)));
    });
    group.finish();
}

fn as_str(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8_as_str");
    for (name, len) in [("1KiB", 1024), ("1MiB", 1 << 20)] {
        let text = Utf8Bytes::try_from(bytes::Bytes::from(text_of(len))).unwrap();
        group.bench_function(name, |b| b.iter(|| black_box(&text).as_str().len()));
    }
    group.finish();
}

criterion_group!(benches, utf8, as_str);
criterion_main!(benches);
