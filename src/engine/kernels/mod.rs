//! Quantized matrix × activation kernels and the thread pool they run on.
//!
//! A matrix product quantizes the activation rows once to the 8-bit type the weight type pairs with
//! (llama.cpp's scheme: integer dot products instead of dequantizing weights), then splits the output
//! rows across the pool. Each output element depends only on its weight row and its activation row,
//! never on the batch around it, so a sequence gets bit-identical results alone or batched.
//!
//! The per-block dot products come from candle's GGML block types (which carry AVX2 code for some
//! types and portable code for the rest); `fast` adds hand-written AVX2 paths for the types the
//! default models use, chosen at run time.

pub mod attend;
mod fast;
mod pool;

use candle_core::quantized::k_quants::{
    BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0,
    GgmlType,
};
pub use candle_core::quantized::GgmlDType;
use half::{bf16, f16};

pub use pool::ThreadPool;

use super::error::{EngineError, Result};
use super::gguf::Bytes;

/// A weight matrix `[rows = outputs, cols = inputs]` in a GGML type, row-major as GGUF stores it.
#[derive(Clone)]
pub struct QMatrix {
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    data: Bytes,
    /// Q8_0 only, made on first use by the VNNI wide tiles: each block's `-128 · Σ q`, which undoes
    /// the offset they add to the activations (see `fast`).
    offsets: std::sync::OnceLock<Vec<i32>>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({:?}, {}x{})", self.dtype, self.rows, self.cols)
    }
}

/// Output rows handed to one task: big enough to amortise the task, small enough to balance threads.
const ROWS_PER_TASK: usize = 16;

impl QMatrix {
    pub fn new(dtype: GgmlDType, rows: usize, cols: usize, data: Bytes) -> Result<Self> {
        let bad = |m: String| EngineError::InvalidParameter {
            param: "weights",
            message: m,
        };
        let bs = dtype.block_size();
        if !cols.is_multiple_of(bs) {
            return Err(bad(format!(
                "{cols} columns is not a multiple of the {dtype:?} block ({bs})"
            )));
        }
        let want = rows * cols / bs * dtype.type_size();
        if data.as_slice().len() != want {
            return Err(bad(format!(
                "{dtype:?} {rows}x{cols} needs {want} bytes, got {}",
                data.as_slice().len()
            )));
        }
        if !(data.as_slice().as_ptr() as usize).is_multiple_of(4) {
            return Err(bad("tensor data is not 4-byte aligned".into()));
        }
        match dtype {
            GgmlDType::F32
            | GgmlDType::F16
            | GgmlDType::BF16
            | GgmlDType::Q4_0
            | GgmlDType::Q4_1
            | GgmlDType::Q5_0
            | GgmlDType::Q5_1
            | GgmlDType::Q8_0
            | GgmlDType::Q4K
            | GgmlDType::Q5K
            | GgmlDType::Q6K
            | GgmlDType::Q8K => {}
            other => return Err(bad(format!("{other:?} weights are not supported"))),
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            data,
            offsets: std::sync::OnceLock::new(),
        })
    }

    /// The matrix's bytes as GGUF stores them.
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn blocks<T: GgmlType>(&self) -> &[T] {
        let bytes = self.data.as_slice();
        debug_assert_eq!(bytes.len() % std::mem::size_of::<T>(), 0);
        // SAFETY: `new` checked the length against the type's block size and the alignment (GGML
        // blocks need at most 2- or 4-byte alignment); the block types are plain `repr(C)` data.
        unsafe {
            std::slice::from_raw_parts(
                bytes.as_ptr() as *const T,
                bytes.len() / std::mem::size_of::<T>(),
            )
        }
    }

    /// `out[n × rows] = x[n × cols] · Wᵀ`, both row-major.
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32], pool: &ThreadPool) {
        assert_eq!(x.len(), n * self.cols, "activation shape");
        assert_eq!(out.len(), n * self.rows, "output shape");
        Self::matmul_many(&[self], x, n, &mut [out], pool)
    }

    /// `outs[i] = x · ws[i]ᵀ` for several matrices over the same input (a layer's query, key and
    /// value; its gate and up): with the fast kernels, one quantization of `x` and one parallel
    /// section for all of them. Results are the same as separate `matmul`s.
    pub fn matmul_many(
        ws: &[&QMatrix],
        x: &[f32],
        n: usize,
        outs: &mut [&mut [f32]],
        pool: &ThreadPool,
    ) {
        assert_eq!(ws.len(), outs.len(), "one output per matrix");
        for (w, o) in ws.iter().zip(outs.iter()) {
            assert_eq!(x.len(), n * w.cols, "activation shape");
            assert_eq!(o.len(), n * w.rows, "output shape");
        }
        if ws.is_empty() || n == 0 {
            return;
        }
        if fast::can_share(ws) {
            fast::matmul_many(ws, x, n, outs, pool)
        } else {
            for (w, o) in ws.iter().zip(outs.iter_mut()) {
                w.matmul_generic(x, n, o, pool);
            }
        }
    }

    /// The portable path for every type (also the reference the fast paths are tested against).
    pub fn matmul_generic(&self, x: &[f32], n: usize, out: &mut [f32], pool: &ThreadPool) {
        match self.dtype {
            GgmlDType::F32 => generic::<f32>(self, x, n, out, pool),
            GgmlDType::F16 => generic::<f16>(self, x, n, out, pool),
            GgmlDType::BF16 => generic::<bf16>(self, x, n, out, pool),
            GgmlDType::Q4_0 => generic::<BlockQ4_0>(self, x, n, out, pool),
            GgmlDType::Q4_1 => generic::<BlockQ4_1>(self, x, n, out, pool),
            GgmlDType::Q5_0 => generic::<BlockQ5_0>(self, x, n, out, pool),
            GgmlDType::Q5_1 => generic::<BlockQ5_1>(self, x, n, out, pool),
            GgmlDType::Q8_0 => generic::<BlockQ8_0>(self, x, n, out, pool),
            GgmlDType::Q4K => generic::<BlockQ4K>(self, x, n, out, pool),
            GgmlDType::Q5K => generic::<BlockQ5K>(self, x, n, out, pool),
            GgmlDType::Q6K => generic::<BlockQ6K>(self, x, n, out, pool),
            GgmlDType::Q8K => generic::<BlockQ8K>(self, x, n, out, pool),
            // `new` refuses every other type.
            _ => out.iter_mut().for_each(|o| *o = f32::NAN),
        }
    }

    /// Dequantizes one row (an embedding lookup).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(
            row < self.rows && out.len() == self.cols,
            "row {row} of {self:?}"
        );
        fn deq<T: GgmlType>(m: &QMatrix, row: usize, out: &mut [f32]) {
            let bpr = m.cols / T::BLCK_SIZE;
            T::to_float(&m.blocks::<T>()[row * bpr..(row + 1) * bpr], out);
        }
        match self.dtype {
            GgmlDType::F32 => deq::<f32>(self, row, out),
            GgmlDType::F16 => deq::<f16>(self, row, out),
            GgmlDType::BF16 => deq::<bf16>(self, row, out),
            GgmlDType::Q4_0 => deq::<BlockQ4_0>(self, row, out),
            GgmlDType::Q4_1 => deq::<BlockQ4_1>(self, row, out),
            GgmlDType::Q5_0 => deq::<BlockQ5_0>(self, row, out),
            GgmlDType::Q5_1 => deq::<BlockQ5_1>(self, row, out),
            GgmlDType::Q8_0 => deq::<BlockQ8_0>(self, row, out),
            GgmlDType::Q4K => deq::<BlockQ4K>(self, row, out),
            GgmlDType::Q5K => deq::<BlockQ5K>(self, row, out),
            GgmlDType::Q6K => deq::<BlockQ6K>(self, row, out),
            GgmlDType::Q8K => deq::<BlockQ8K>(self, row, out),
            _ => out.iter_mut().for_each(|o| *o = f32::NAN),
        }
    }
}

/// Lets pool tasks write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint elements, and the pool joins them before the buffer is read.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

fn generic<T: GgmlType>(w: &QMatrix, x: &[f32], n: usize, out: &mut [f32], pool: &ThreadPool) {
    let (rows, cols) = (w.rows, w.cols);
    let bpr = cols / T::BLCK_SIZE;
    let vpr = cols / T::VecDotType::BLCK_SIZE;
    let mut xq: Vec<T::VecDotType> = (0..n * vpr).map(|_| T::VecDotType::zeros()).collect();
    for r in 0..n {
        T::VecDotType::from_float(
            &x[r * cols..(r + 1) * cols],
            &mut xq[r * vpr..(r + 1) * vpr],
        );
    }
    let blocks = w.blocks::<T>();
    let outp = OutPtr(out.as_mut_ptr());
    let n_tasks = rows.div_ceil(ROWS_PER_TASK);
    pool.run(n_tasks, |t| {
        let o = outp;
        let r0 = t * ROWS_PER_TASK;
        for row in r0..(r0 + ROWS_PER_TASK).min(rows) {
            let wr = &blocks[row * bpr..(row + 1) * bpr];
            for a in 0..n {
                let v = T::vec_dot(cols, wr, &xq[a * vpr..(a + 1) * vpr]);
                // SAFETY: (a, row) is written by this task alone.
                unsafe { *o.0.add(a * rows + row) = v };
            }
        }
    });
}

/// Reproducible values in [-1, 1) for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}
