//! Sentence embeddings from a BERT-family sentence-transformers model (all-MiniLM-L6-v2 by default),
//! run on candle tensors from a folder holding `model.safetensors`, `config.json` and
//! `tokenizer.json`.
//!
//! Mean pooling over the real tokens, then L2 normalisation, as sentence-transformers does for these
//! models, so cosine similarity is a dot product. Calls are blocking tensor work: callers on an async
//! runtime run them on a blocking thread.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::error::{EngineError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};

use half::f16;

use super::model::dot;

#[derive(Debug, Clone, Deserialize)]
struct BertConfig {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
}

fn default_eps() -> f64 {
    1e-12
}

/// A dense layer with its weights stored as f16: the encoder streams every weight once per
/// query, so halving their bytes halves the memory traffic that bounds a short query's latency
/// (sentence embedders lose nothing measurable at f16). Products run on [`matmul_f16`], never
/// on gemm, so a text's vector is the same alone or in any batch.
struct Linear {
    /// `[out][in]`, row-major as the checkpoint stores it.
    w: Vec<f16>,
    b: Vec<f32>,
    k: usize,
}

/// A second core for one short input: a scoped worker thread that takes half of each layer's
/// output rows, so a query's latency (streaming every weight once) is split across both cores.
///
/// The worker spins between jobs instead of sleeping: it lives only for one forward of a few
/// milliseconds, and a futex wake-up per layer cost more than the split saved. On a busy machine
/// the worker may not be running when a job arrives: the caller then takes its job back and runs
/// it, so a query is never slower than on one core (that wait was the tail of search latency).
type Job<'env> = Box<dyn FnOnce() + Send + 'env>;

/// Spins briefly, then yields the core: a wait that lasts (the other thread is descheduled, or
/// the model is decoding on both cores) gives its time slice to whoever can use it.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn wait(&mut self) {
        if self.0 < 2_000 {
            self.0 += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

struct Helper<'env> {
    job: Mutex<Option<Job<'env>>>,
    /// A job is waiting in `job` (cheap to poll while spinning).
    waiting: AtomicBool,
    done: AtomicBool,
}

impl<'env> Helper<'env> {
    fn new() -> Self {
        Helper {
            job: Mutex::new(None),
            waiting: AtomicBool::new(false),
            done: AtomicBool::new(false),
        }
    }

    fn take(&self) -> Option<Job<'env>> {
        let job = self.job.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.waiting.store(false, Ordering::Release);
        job
    }

    /// The worker's loop: run jobs until [`Self::finish`].
    fn serve(&self) {
        let mut idle = Backoff::default();
        while !self.done.load(Ordering::Acquire) {
            if self.waiting.load(Ordering::Acquire) {
                if let Some(job) = self.take() {
                    // A job that panics sends no result: the caller computes that half itself.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            } else {
                idle.wait();
            }
        }
    }

    fn submit(&self, job: Job<'env>) {
        *self.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
        self.waiting.store(true, Ordering::Release);
    }

    /// Waits for the job's result on `rx`, running the job here if the worker never took it.
    /// None if the job panicked.
    fn join<T>(&self, rx: &mpsc::Receiver<T>) -> Option<T> {
        let mut idle = Backoff::default();
        loop {
            match rx.try_recv() {
                Ok(v) => return Some(v),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if self.waiting.load(Ordering::Acquire) {
                if let Some(job) = self.take() {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    continue;
                }
            }
            idle.wait();
        }
    }

    fn finish(&self) {
        self.done.store(true, Ordering::Release);
    }
}

impl Linear {
    /// `rows` activation rows in, `rows` output rows out.
    fn forward<'e>(&'e self, x: &[f32], rows: usize, helper: Option<&Helper<'e>>) -> Vec<f32> {
        let (n, k) = (self.b.len(), self.k);
        let mut out = vec![0f32; rows * n];
        let Some(helper) = helper.filter(|_| rows * n * k >= 1 << 18 && n >= 4) else {
            matmul_f16(x, &self.w, &self.b, rows, k, &mut out);
            return out;
        };
        let half = (n / 2) & !1;
        let (w_hi, b_hi) = (&self.w[half * k..], &self.b[half..]);
        let (tx, rx) = mpsc::channel();
        let x_copy = x[..rows * k].to_vec();
        let job = move || {
            let mut hi = vec![0f32; rows * (n - half)];
            matmul_f16(&x_copy, w_hi, b_hi, rows, k, &mut hi);
            let _ = tx.send(hi);
        };
        let mut lo = vec![0f32; rows * half];
        helper.submit(Box::new(job));
        matmul_f16(x, &self.w[..half * k], &self.b[..half], rows, k, &mut lo);
        // Each element is summed the same way on either thread, so the split changes no result.
        let hi = match helper.join(&rx) {
            Some(hi) => hi,
            None => {
                let mut hi = vec![0f32; rows * (n - half)];
                matmul_f16(x, w_hi, b_hi, rows, k, &mut hi);
                hi
            }
        };
        for t in 0..rows {
            out[t * n..t * n + half].copy_from_slice(&lo[t * half..(t + 1) * half]);
            out[t * n + half..(t + 1) * n]
                .copy_from_slice(&hi[t * (n - half)..(t + 1) * (n - half)]);
        }
        out
    }
}

/// `out[t][o] = x[t] · w[o] + b[o]`. Each output element is summed in the same order whatever
/// rows share the call, so results don't depend on batching.
fn matmul_f16(x: &[f32], w: &[f16], bias: &[f32], rows: usize, k: usize, out: &mut [f32]) {
    let n = bias.len();
    assert!(x.len() >= rows * k && w.len() >= n * k && out.len() >= rows * n);
    #[cfg(target_arch = "x86_64")]
    if k.is_multiple_of(8) && cpu_has!("avx2", "fma", "f16c") {
        // SAFETY: the features were just detected and the sizes checked above.
        unsafe { matmul_f16_avx2(x, w, bias, rows, k, out) };
        return;
    }
    let mut wrow = vec![0f32; k];
    for (o, b) in bias.iter().enumerate() {
        for (d, s) in wrow.iter_mut().zip(&w[o * k..(o + 1) * k]) {
            *d = s.to_f32();
        }
        for t in 0..rows {
            out[t * n + o] = lane_dot(&x[t * k..(t + 1) * k], &wrow) + b;
        }
    }
}

/// A dot product summed in eight lanes then reduced, the order the AVX2 kernel uses.
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks(8).zip(b.chunks(8)) {
        for (l, (p, q)) in x.iter().zip(y).enumerate() {
            acc[l] = p.mul_add(*q, acc[l]);
        }
    }
    let lo = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    let pair = [lo[0] + lo[2], lo[1] + lo[3]];
    pair[0] + pair[1]
}

/// Weight rows in blocks that stay in L2 while every activation row passes over them; inside a
/// block, a 2×4 register tile (two weight rows, four activation rows: eight FMA chains, six
/// loads and two f16 conversions per eight FMAs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matmul_f16_avx2(
    x: &[f32],
    w: &[f16],
    bias: &[f32],
    rows: usize,
    k: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    const BLOCK: usize = 32;
    let n = bias.len();
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // Same reduction order as `lane_dot`.
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    for block in (0..n).step_by(BLOCK) {
        let block_end = (block + BLOCK).min(n);
        let mut t = 0;
        while t < rows {
            let m = (rows - t).min(4);
            // Missing activation rows repeat the last real one; their results are not stored.
            let xr: [*const f32; 4] = std::array::from_fn(|r| xp.add((t + r.min(m - 1)) * k));
            let mut o = block;
            while o < block_end {
                let two = o + 1 < block_end;
                let w0 = wp.add(o * k);
                // A lone last row pairs with itself; its duplicate results are not stored.
                let w1 = if two { wp.add((o + 1) * k) } else { w0 };
                let mut a = [_mm256_setzero_ps(); 8];
                let mut i = 0;
                while i < k {
                    let u = load_f16(w0.add(i));
                    let v = load_f16(w1.add(i));
                    for r in 0..4 {
                        let xv = _mm256_loadu_ps(xr[r].add(i));
                        a[r] = _mm256_fmadd_ps(u, xv, a[r]);
                        a[4 + r] = _mm256_fmadd_ps(v, xv, a[4 + r]);
                    }
                    i += 8;
                }
                for r in 0..m {
                    out[(t + r) * n + o] = hsum(a[r]) + bias[o];
                    if two {
                        out[(t + r) * n + o + 1] = hsum(a[4 + r]) + bias[o + 1];
                    }
                }
                o += 2;
            }
            t += 4;
        }
    }
}

/// GELU with the exact error function, as BERT checkpoints were trained with.
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Error function, from Numerical Recipes' Chebyshev fit of erfc (fractional error under
/// 1.2e-7), which is below f32's own resolution for GELU's purposes.
fn erf(x: f32) -> f32 {
    // erfc(z) ≈ t·exp(−z² + P(t)), t = 1/(1 + z/2), P's coefficients lowest first.
    const P: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_2,
        0.170_872_77,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = P.iter().rev().fold(0.0, |acc, &c| acc * t + c);
    let erfc = t * (-z * z + poly).exp();
    if x >= 0.0 {
        1.0 - erfc
    } else {
        erfc - 1.0
    }
}

struct LayerNorm {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn apply(&self, x: &mut [f32]) {
        let h = self.w.len();
        for row in x.chunks_exact_mut(h) {
            let mean = row.iter().sum::<f32>() / h as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.w).zip(&self.b) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    }
}

struct Layer {
    /// Query, key and value projections as one `[3·hidden][hidden]` product: one pass over the
    /// activations and one hand-off to the helper instead of three.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

pub struct Embedder {
    name: String,
    cfg: BertConfig,
    tokenizer: tokenizers::Tokenizer,
    /// `[vocab][hidden]`, `[positions][hidden]`, and token type 0's row (BERT's single-segment
    /// inputs never use type 1).
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    /// The last few single inputs and their vectors, most recent first. A shopper's message is
    /// embedded by the intent classifier, the curated-answer match and up to three searches in one
    /// turn; the same ids give the same vector, so it is computed once.
    recent: std::sync::Mutex<std::collections::VecDeque<(Vec<u32>, Vec<f32>)>>,
    /// Encoder passes run, for tests of the memo.
    passes: std::sync::atomic::AtomicUsize,
}

/// Single inputs whose vectors `Embedder::recent` keeps.
const RECENT: usize = 8;

fn load_err(path: &Path, message: impl Into<String>) -> EngineError {
    EngineError::Load {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl Embedder {
    /// Loads the model in `dir`; `name` is what the API calls it.
    pub fn load(dir: &Path, name: &str) -> Result<Self> {
        let file = |f: &str| -> PathBuf { dir.join(f) };
        let cfg: BertConfig = serde_json::from_slice(&std::fs::read(file("config.json"))?)
            .map_err(|e| load_err(&file("config.json"), e.to_string()))?;
        if cfg.hidden_act.as_deref().is_some_and(|a| a != "gelu") {
            return Err(load_err(
                dir,
                format!("unsupported activation {:?}", cfg.hidden_act),
            ));
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(load_err(
                dir,
                "hidden_size is not a multiple of the head count",
            ));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(file("tokenizer.json"))
            .map_err(|e| load_err(&file("tokenizer.json"), e.to_string()))?;
        // sentence-transformers' tokenizer.json files often pad every input to a fixed length and
        // truncate silently: padding is done here per batch, and over-long input is an error.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| load_err(&file("tokenizer.json"), e.to_string()))?;
        let device = Device::Cpu;
        let weights_path = file("model.safetensors");
        // SAFETY: the file is mapped read-only; clerk never writes model files while serving.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&weights_path)? };
        // Checkpoints saved from a `BertForX` prefix every name with `bert.`.
        let prefix = if st.get("bert.embeddings.word_embeddings.weight").is_ok() {
            "bert."
        } else {
            ""
        };
        let get = |n: &str| -> Result<Tensor> {
            st.load(&format!("{prefix}{n}"), &device)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| load_err(&weights_path, format!("tensor `{prefix}{n}`: {e}")))
        };
        let linear = |n: &str| -> Result<Linear> {
            let bad = |e: String| load_err(&weights_path, format!("`{n}`: {e}"));
            let w = get(&format!("{n}.weight"))?;
            let (out, k) = w.dims2().map_err(|e| bad(e.to_string()))?;
            let b = get(&format!("{n}.bias"))?.to_vec1::<f32>()?;
            if b.len() != out {
                return Err(bad(format!("{} biases for {out} outputs", b.len())));
            }
            let w = w.flatten_all()?.to_vec1::<f32>()?;
            Ok(Linear {
                w: w.into_iter().map(f16::from_f32).collect(),
                b,
                k,
            })
        };
        let norm = |n: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                w: get(&format!("{n}.weight"))?.to_vec1::<f32>()?,
                b: get(&format!("{n}.bias"))?.to_vec1::<f32>()?,
                eps: cfg.layer_norm_eps as f32,
            })
        };
        let table = |n: &str| -> Result<Vec<f32>> {
            let t = get(n)?;
            match t.dims() {
                [_, h] if *h == cfg.hidden_size => Ok(t.flatten_all()?.to_vec1::<f32>()?),
                dims => Err(load_err(&weights_path, format!("`{n}` has shape {dims:?}"))),
            }
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let parts =
                    ["query", "key", "value"].map(|n| linear(&format!("{p}.attention.self.{n}")));
                let [q, k, v] = parts;
                let (q, k, v) = (q?, k?, v?);
                if k.k != q.k || v.k != q.k || q.b.len() != cfg.hidden_size {
                    return Err(load_err(
                        &weights_path,
                        format!("layer {i}: q, k, v shapes differ"),
                    ));
                }
                Ok(Layer {
                    qkv: Linear {
                        w: [q.w, k.w, v.w].concat(),
                        b: [q.b, k.b, v.b].concat(),
                        k: q.k,
                    },
                    attn_out: linear(&format!("{p}.attention.output.dense"))?,
                    attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                    up: linear(&format!("{p}.intermediate.dense"))?,
                    down: linear(&format!("{p}.output.dense"))?,
                    out_norm: norm(&format!("{p}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name: name.to_string(),
            word: table("embeddings.word_embeddings.weight")?,
            position: table("embeddings.position_embeddings.weight")?,
            token_type: table("embeddings.token_type_embeddings.weight")?[..cfg.hidden_size]
                .to_vec(),
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
            tokenizer,
            cfg,
            recent: Default::default(),
            passes: Default::default(),
        })
    }

    /// Encoder passes run so far (one per batch of inputs; none for a remembered single input).
    pub fn passes(&self) -> usize {
        self.passes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dimension(&self) -> usize {
        self.cfg.hidden_size
    }

    /// Longest input in tokens (special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    /// Token ids of a text, with the model's special tokens.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeds texts; an input longer than [`Self::max_tokens`] is an error, never cut short.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>>>()?;
        self.embed_ids(&ids)
    }

    /// Embeds pre-tokenized inputs (each with its special tokens), in batches of similar length.
    pub fn embed_ids(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let [one] = inputs else {
            return self.embed_many(inputs);
        };
        let recent = || self.recent.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut r = recent();
            if let Some(at) = r.iter().position(|(ids, _)| ids == one) {
                let hit = r.remove(at).expect("found above");
                let v = hit.1.clone();
                r.push_front(hit);
                return Ok(vec![v]);
            }
        }
        // Computed outside the lock, so other callers are not held up meanwhile.
        let out = self.embed_many(inputs)?;
        let mut r = recent();
        r.push_front((one.clone(), out[0].clone()));
        r.truncate(RECENT);
        Ok(out)
    }

    fn embed_many(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        for (i, ids) in inputs.iter().enumerate() {
            if ids.is_empty() || ids.len() > self.max_tokens() {
                return Err(EngineError::InvalidParameter {
                    param: "input",
                    message: format!(
                        "input {i} has {} tokens; this embedder takes 1 to {}",
                        ids.len(),
                        self.max_tokens()
                    ),
                });
            }
        }
        // Batches of about 2,048 tokens keep activations in cache; two threads share a large
        // request. Without padding, a text's vector is the same in any batch.
        let mut batches: Vec<Vec<usize>> = vec![Vec::new()];
        let mut tokens = 0;
        for (i, ids) in inputs.iter().enumerate() {
            if tokens + ids.len() > 2048 && !batches.last().is_some_and(|b| b.is_empty()) {
                batches.push(Vec::new());
                tokens = 0;
            }
            tokens += ids.len();
            batches.last_mut().expect("one batch").push(i);
        }
        let run = |batch: &[usize]| -> Result<Vec<(usize, Vec<f32>)>> {
            let seqs: Vec<&[u32]> = batch.iter().map(|&i| inputs[i].as_slice()).collect();
            Ok(batch
                .iter()
                .copied()
                .zip(self.forward(&seqs, None)?)
                .collect())
        };
        let mut done: Vec<(usize, Vec<f32>)> = Vec::with_capacity(inputs.len());
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(2);
        if threads < 2 {
            for b in &batches {
                done.extend(run(b)?);
            }
        } else if batches.len() == 1 {
            // One short input (a search query): both cores share each layer.
            let seqs: Vec<&[u32]> = batches[0].iter().map(|&i| inputs[i].as_slice()).collect();
            let helper = Helper::new();
            let vecs = std::thread::scope(|s| {
                s.spawn(|| helper.serve());
                // Ends the worker however the forward ends, a panic included, so the scope
                // never waits on a spinning thread.
                struct Finish<'a, 'env>(&'a Helper<'env>);
                impl Drop for Finish<'_, '_> {
                    fn drop(&mut self) {
                        self.0.finish();
                    }
                }
                let _finish = Finish(&helper);
                self.forward(&seqs, Some(&helper))
            })?;
            done.extend(batches[0].iter().copied().zip(vecs));
        } else {
            let (even, odd): (Vec<_>, Vec<_>) =
                batches.iter().enumerate().partition(|(n, _)| n % 2 == 0);
            let (a, b) = std::thread::scope(|s| {
                let other = s.spawn(|| odd.iter().map(|(_, b)| run(b)).collect::<Result<Vec<_>>>());
                let mine = even.iter().map(|(_, b)| run(b)).collect::<Result<Vec<_>>>();
                (
                    mine,
                    other
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p)),
                )
            });
            done.extend(a?.into_iter().flatten());
            done.extend(b?.into_iter().flatten());
        }
        let mut out = vec![Vec::new(); inputs.len()];
        for (i, v) in done {
            out[i] = v;
        }
        Ok(out)
    }

    /// The encoder over several sequences at once without padding: linear layers and norms work
    /// on all their rows together, attention within each sequence.
    fn forward<'e>(
        &'e self,
        batch: &[&[u32]],
        helper: Option<&Helper<'e>>,
    ) -> Result<Vec<Vec<f32>>> {
        self.passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let hd = h / heads;
        let rows: usize = batch.iter().map(|s| s.len()).sum();
        let vocab = self.word.len() / h;
        let mut x = vec![0f32; rows * h];
        let mut r = 0;
        for seq in batch {
            for (p, &id) in seq.iter().enumerate() {
                let id = id as usize;
                if id >= vocab {
                    return Err(EngineError::InvalidParameter {
                        param: "input",
                        message: format!("token id {id} is outside the vocabulary ({vocab})"),
                    });
                }
                let row = &mut x[r * h..(r + 1) * h];
                let (w, pos) = (
                    &self.word[id * h..(id + 1) * h],
                    &self.position[p * h..(p + 1) * h],
                );
                for (i, v) in row.iter_mut().enumerate() {
                    *v = w[i] + pos[i] + self.token_type[i];
                }
                r += 1;
            }
        }
        self.embed_norm.apply(&mut x);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut ctx = vec![0f32; rows * h];
        let mut scores = Vec::new();
        for l in &self.layers {
            // Row t holds [query | key | value], each `h` wide.
            let qkv = l.qkv.forward(&x, rows, helper);
            let h3 = 3 * h;
            let mut start = 0;
            for seq in batch {
                let len = seq.len();
                for head in 0..heads {
                    let col = head * hd;
                    for i in start..start + len {
                        let qi = &qkv[i * h3 + col..i * h3 + col + hd];
                        scores.clear();
                        scores.extend((start..start + len).map(|j| {
                            let kj = j * h3 + h + col;
                            dot(qi, &qkv[kj..kj + hd]) * scale
                        }));
                        let max = scores.iter().copied().fold(f32::MIN, f32::max);
                        let mut sum = 0.0;
                        for s in scores.iter_mut() {
                            *s = (*s - max).exp();
                            sum += *s;
                        }
                        let out = &mut ctx[i * h + col..i * h + col + hd];
                        out.fill(0.0);
                        for (j, p) in (start..start + len).zip(&scores) {
                            let w = p / sum;
                            let vj = j * h3 + 2 * h + col;
                            for (o, vv) in out.iter_mut().zip(&qkv[vj..vj + hd]) {
                                *o += w * vv;
                            }
                        }
                    }
                }
                start += len;
            }
            let attn = l.attn_out.forward(&ctx, rows, helper);
            for (xv, a) in x.iter_mut().zip(&attn) {
                *xv += a;
            }
            l.attn_norm.apply(&mut x);
            let mut ff = l.up.forward(&x, rows, helper);
            for v in ff.iter_mut() {
                *v = gelu_erf(*v);
            }
            let down = l.down.forward(&ff, rows, helper);
            for (xv, d) in x.iter_mut().zip(&down) {
                *xv += d;
            }
            l.out_norm.apply(&mut x);
        }
        // Mean over each sequence's tokens, then unit length.
        let mut out = Vec::with_capacity(batch.len());
        let mut start = 0;
        for seq in batch {
            let mut mean = vec![0f32; h];
            for row in x[start * h..(start + seq.len()) * h].chunks_exact(h) {
                for (m, v) in mean.iter_mut().zip(row) {
                    *m += v;
                }
            }
            let n = seq.len() as f32;
            mean.iter_mut().for_each(|m| *m /= n);
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|m| *m /= norm);
            out.push(mean);
            start += seq.len();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod erf_tests {
    #[test]
    fn erf_matches_reference_values() {
        // Reference values to 7 places.
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-1.5, -0.966_105_1),
            (3.0, 0.999_977_9),
        ] {
            assert!(
                (super::erf(x) - want).abs() < 1e-6,
                "erf({x}) = {}, want {want}",
                super::erf(x)
            );
        }
    }
}
