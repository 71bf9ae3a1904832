//! Unmasking a 64 KiB payload: the word-wise fast path against the byte-at-a-time reference,
//! with a plain copy of the same buffer as the memory-bandwidth yardstick.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use duplex_proto::mask::{apply_mask, apply_mask_scalar};

const LEN: usize = 64 * 1024;
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask_64KiB");
    group.throughput(Throughput::Bytes(LEN as u64));
    let src: Vec<u8> = (0..LEN).map(|i| (i * 31) as u8).collect();
    let mut buf = src.clone();
    group.bench_function("apply_mask", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), 0));
    });
    // An odd offset into the payload, as when a frame arrives split across reads.
    group.bench_function("apply_mask_offset_3", |b| {
        b.iter(|| apply_mask(black_box(&mut buf[1..]), black_box(KEY), 3));
    });
    group.bench_function("apply_mask_scalar", |b| {
        b.iter(|| apply_mask_scalar(black_box(&mut buf), black_box(KEY), 0));
    });
    group.bench_function("memcpy", |b| {
        b.iter(|| buf.copy_from_slice(black_box(&src)));
    });
    group.finish();
}

criterion_group!(benches, unmask);
criterion_main!(benches);
