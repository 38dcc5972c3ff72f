//! Cost of walking frames in a buffer (the relay's per-message work).

use criterion::{criterion_group, criterion_main, Criterion};
use hindsight::wire::frame::peek_header;

fn pipeline(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        hindsight::wire::frame::put_frame(&mut out, b'D', &[0u8; 60]);
    }
    out
}

fn walk(c: &mut Criterion) {
    let buf = pipeline(100);
    c.bench_function("walk 100 DataRow frames", |b| {
        b.iter(|| {
            let mut pos = 0;
            let mut count = 0;
            while let Ok(Some(h)) = peek_header(&buf[pos..], usize::MAX) {
                pos += h.frame_len();
                count += 1;
            }
            assert_eq!(count, 100);
        })
    });
}

criterion_group!(benches, walk);
criterion_main!(benches);
