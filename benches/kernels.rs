//! The quantized matrix kernels on SmolLM2's shapes: the AVX2 path against the portable one, for a
//! decode step (1 row), a step of four or eight sequences (4 or 8 rows) and a prompt chunk (64 rows).
//!
//!     cargo bench --bench kernels

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use clerk::engine::gguf::Bytes;
use clerk::engine::kernels::{QMatrix, ThreadPool};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn matrix(dtype: GgmlDType, rows: usize, cols: usize) -> QMatrix {
    let mut s = 1u64;
    let values: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    let t = Tensor::from_vec(values, (rows, cols), &Device::Cpu).expect("tensor");
    let q = QTensor::quantize(&t, dtype).expect("quantize");
    let bytes = q.data().expect("bytes").to_vec();
    QMatrix::new(dtype, rows, cols, Bytes::Owned(bytes.into())).expect("matrix")
}

fn kernels(c: &mut Criterion) {
    let pool = ThreadPool::new(2);
    // SmolLM2-135M: the FFN's up projection (Q4_1) and the tied output matrix (Q8_0).
    for (dtype, rows, cols) in [(GgmlDType::Q4_1, 1536, 576), (GgmlDType::Q8_0, 49152, 576)] {
        let w = matrix(dtype, rows, cols);
        let mut group = c.benchmark_group(format!("{dtype:?}-{rows}x{cols}"));
        group.sample_size(20);
        for n in [1usize, 4, 8, 64] {
            let x = vec![0.01f32; n * cols];
            let mut out = vec![0f32; n * rows];
            group.throughput(Throughput::Elements((n * rows * cols) as u64));
            group.bench_with_input(BenchmarkId::new("fast", n), &n, |b, &n| {
                b.iter(|| w.matmul(&x, n, &mut out, &pool))
            });
            group.bench_with_input(BenchmarkId::new("generic", n), &n, |b, &n| {
                b.iter(|| w.matmul_generic(&x, n, &mut out, &pool))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
