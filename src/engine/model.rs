//! The transformer forward, written for many sequences at once.
//!
//! One call to [`Model::forward`] takes a chunk of new tokens from each of several sequences (a whole
//! prompt chunk for one, a single token for the others), runs every matrix product once over all of
//! their rows together, and runs attention per sequence against that sequence's own KV cache. That is
//! what continuous batching needs: the weights are read once per step whatever the number of
//! sequences, and each sequence keeps its own positions.
//!
//! Activations are plain `f32` rows; matrix products go through the quantized kernels in
//! [`super::kernels`]. Each row's result is computed independently of the other rows of the batch, so
//! a sequence decodes the same tokens alone or batched.

use super::error::{EngineError, Result};
use super::gguf::{GgufFile, TensorRef};
use super::kernels::attend::{self, HeadRows};
use super::kernels::{GgmlDType, QMatrix, ThreadPool};
use super::kv::SeqKv;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Arch {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            other => return Err(EngineError::UnsupportedArchitecture(other.to_string())),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation, as Gemma uses.
    GeluTanh,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_base: f32,
    /// Gemma 3's sliding-window layers rotate with a different base.
    pub rope_base_local: f32,
    /// llama.cpp's NEOX layout rotates the two halves of a head; the NORM layout rotates adjacent pairs.
    pub rope_neox: bool,
    pub rms_eps: f32,
    pub context_length: usize,
    pub vocab_size: usize,
    pub sliding_window: Option<usize>,
    /// Every `n`th layer (1-based) attends globally; the others use the sliding window.
    pub sliding_pattern: usize,
    pub attn_scale: f32,
    pub embed_scale: f32,
    pub activation: Activation,
}

impl ModelConfig {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g.architecture()?.to_string();
        let arch = Arch::parse(&arch_name)?;
        let k = |s: &str| format!("{arch_name}.{s}");
        let n_embd = g.get_usize(&k("embedding_length"))?;
        let n_head = g.get_usize(&k("attention.head_count"))?;
        let n_head_kv = g.get_usize(&k("attention.head_count_kv")).unwrap_or(n_head);
        let head_dim = g
            .get_usize(&k("attention.key_length"))
            .unwrap_or(n_embd / n_head.max(1));
        let rope_dim = g.get_usize(&k("rope.dimension_count")).unwrap_or(head_dim);
        let vocab_size = match g.get_usize(&k("vocab_size")) {
            Ok(v) => v,
            Err(_) => g.tensor("token_embd.weight")?.dims[0],
        };
        let is_gemma = arch == Arch::Gemma3;
        let cfg = ModelConfig {
            arch,
            n_layer: g.get_usize(&k("block_count"))?,
            n_embd,
            n_ff: g.get_usize(&k("feed_forward_length"))?,
            n_head,
            n_head_kv,
            head_dim,
            rope_dim,
            rope_base: g.get_f32(&k("rope.freq_base")).unwrap_or(10_000.0),
            rope_base_local: 10_000.0,
            rope_neox: arch != Arch::Llama,
            rms_eps: g
                .get_f32(&k("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-6),
            context_length: g.get_usize(&k("context_length")).unwrap_or(2048),
            vocab_size,
            sliding_window: if is_gemma {
                g.get_usize(&k("attention.sliding_window")).ok()
            } else {
                None
            },
            sliding_pattern: if is_gemma { 6 } else { 1 },
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            embed_scale: if is_gemma {
                (n_embd as f32).sqrt()
            } else {
                1.0
            },
            activation: if is_gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
        };
        if cfg.n_head == 0
            || cfg.n_head_kv == 0
            || !cfg.n_head.is_multiple_of(cfg.n_head_kv)
            || cfg.rope_dim > cfg.head_dim
            || !cfg.rope_dim.is_multiple_of(2)
        {
            return Err(EngineError::Load {
                path: g.path.clone(),
                message: format!("inconsistent attention shape in metadata: {cfg:?}"),
            });
        }
        Ok(cfg)
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Whether layer `il` uses the sliding window (Gemma 3: five local layers, then one global).
    pub fn is_local(&self, il: usize) -> bool {
        self.sliding_window.is_some() && !(il + 1).is_multiple_of(self.sliding_pattern)
    }
}

/// One transformer block's weights, generic over how a matrix (`M`) and a vector (`V`) are held, so
/// the CPU forward here and the tensor forward ([`super::tensor_model`]) load the same names and shapes
/// through one table.
pub(super) struct Layer<M, V> {
    pub attn_norm: V,
    pub wq: M,
    pub wk: M,
    pub wv: M,
    pub wo: M,
    pub bq: Option<V>,
    pub bk: Option<V>,
    pub bv: Option<V>,
    pub q_norm: Option<V>,
    pub k_norm: Option<V>,
    pub post_attn_norm: Option<V>,
    pub ffn_norm: V,
    pub w_gate: M,
    pub w_up: M,
    pub w_down: M,
    pub post_ffn_norm: Option<V>,
}

/// Loads every layer of `cfg`'s model, with `mat(name, rows, cols)` building a matrix and
/// `vec(name, len)` a vector from the tensor of that name.
pub(super) fn load_layers<M, V>(
    g: &GgufFile,
    cfg: &ModelConfig,
    mat: impl Fn(&str, usize, usize) -> Result<M>,
    vec: impl Fn(&str, usize) -> Result<V>,
) -> Result<Vec<Layer<M, V>>> {
    let (d, ff, hd) = (cfg.n_embd, cfg.n_ff, cfg.head_dim);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let opt = |name: &str, len: usize| -> Result<Option<V>> {
        if g.has_tensor(name) {
            vec(name, len).map(Some)
        } else {
            Ok(None)
        }
    };
    (0..cfg.n_layer)
        .map(|il| {
            let n = |s: &str| format!("blk.{il}.{s}");
            Ok(Layer {
                attn_norm: vec(&n("attn_norm.weight"), d)?,
                wq: mat(&n("attn_q.weight"), qd, d)?,
                wk: mat(&n("attn_k.weight"), kvd, d)?,
                wv: mat(&n("attn_v.weight"), kvd, d)?,
                wo: mat(&n("attn_output.weight"), d, qd)?,
                bq: opt(&n("attn_q.bias"), qd)?,
                bk: opt(&n("attn_k.bias"), kvd)?,
                bv: opt(&n("attn_v.bias"), kvd)?,
                q_norm: opt(&n("attn_q_norm.weight"), hd)?,
                k_norm: opt(&n("attn_k_norm.weight"), hd)?,
                post_attn_norm: opt(&n("post_attention_norm.weight"), d)?,
                ffn_norm: vec(&n("ffn_norm.weight"), d)?,
                w_gate: mat(&n("ffn_gate.weight"), ff, d)?,
                w_up: mat(&n("ffn_up.weight"), ff, d)?,
                w_down: mat(&n("ffn_down.weight"), d, ff)?,
                post_ffn_norm: opt(&n("post_ffw_norm.weight"), d)?,
            })
        })
        .collect()
}

/// The output matrix's name: models with tied embeddings ship none and reuse `token_embd.weight`.
pub(super) fn lm_head_name(g: &GgufFile) -> &'static str {
    if g.has_tensor("output.weight") {
        "output.weight"
    } else {
        "token_embd.weight"
    }
}

pub struct Model {
    pub cfg: ModelConfig,
    embed: QMatrix,
    layers: Vec<Layer<QMatrix, Vec<f32>>>,
    out_norm: Vec<f32>,
    lm_head: QMatrix,
    inv_freq: Vec<f32>,
    inv_freq_local: Vec<f32>,
    /// Cached positions one attention task covers at most; see [`ATTN_SPAN`].
    pub attn_span: usize,
}

/// A longer context is split into spans of about this many positions (longer ones past
/// `ATTN_SPANS_MAX` spans), whose partial softmax sums are merged afterwards: one decoding sequence
/// has only one task per key-value head otherwise (three for SmolLM2), which two threads share
/// unevenly, and at a thousand positions attention is a third of its step. The split depends on a row's own position alone, never on the batch, so a
/// sequence's results are the same alone or batched.
pub const ATTN_SPAN: usize = 256;

/// Spans a row's attention is split into at most (a longer context gets longer spans): enough tasks
/// to balance a few threads, while the partial results of a long prompt's chunk stay a few MB (512
/// rows × 3 heads × 4 spans × 198 floats for SmolLM2).
const ATTN_SPANS_MAX: usize = 4;

fn load_err(g: &GgufFile, message: String) -> EngineError {
    EngineError::Load {
        path: g.path.clone(),
        message,
    }
}

fn to_f32_vec(g: &GgufFile, t: &TensorRef) -> Result<Vec<f32>> {
    let b = t.bytes.as_slice();
    match t.dtype {
        GgmlDType::F32 => Ok(b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()),
        GgmlDType::F16 => Ok(b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        GgmlDType::BF16 => Ok(b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        other => Err(load_err(
            g,
            format!(
                "tensor `{}` is {other:?}; a vector must be f32/f16/bf16",
                t.name
            ),
        )),
    }
}

pub(super) fn vector(g: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = g.tensor(name)?;
    let v = to_f32_vec(g, &t)?;
    if v.len() != len {
        return Err(load_err(
            g,
            format!("tensor `{name}` has {} elements, expected {len}", v.len()),
        ));
    }
    Ok(v)
}

pub(super) fn matrix(g: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<QMatrix> {
    let t = g.tensor(name)?;
    if t.dims != [rows, cols] {
        return Err(load_err(
            g,
            format!(
                "tensor `{name}` has shape {:?}, expected [{rows}, {cols}]",
                t.dims
            ),
        ));
    }
    QMatrix::new(t.dtype, rows, cols, t.bytes)
        .map_err(|e| load_err(g, format!("tensor `{name}`: {e}")))
}

pub(super) fn inv_freq(rope_dim: usize, base: f32) -> Vec<f32> {
    (0..rope_dim / 2)
        .map(|i| 1.0 / base.powf(2.0 * i as f32 / rope_dim as f32))
        .collect()
}

/// One sequence's share of a forward step.
pub struct BatchItem<'a> {
    pub kv: &'a mut SeqKv,
    pub tokens: &'a [u32],
    /// Only the last token's logits are ever needed (prompt chunks but the last need none).
    pub want_logits: bool,
}

/// Buffers reused from step to step, so a step's activations are not reallocated. (The step still
/// allocates its logits, which it hands to the caller, and each product its quantized input.)
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    last: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    cos_local: Vec<f32>,
    sin_local: Vec<f32>,
    /// Split attention's partial results: per task and query head its maximum score, its sum of
    /// exponentials, and its unnormalised weighted sum of values.
    attn_part: Vec<f32>,
}

/// Sizes a scratch buffer without clearing it: every one is written in full before it is read.
fn resize(v: &mut Vec<f32>, n: usize) {
    v.resize(n, 0.0);
}

/// Sum of products with eight independent accumulators, which the compiler turns into SIMD lanes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ms = dot(xr, xr) / n as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for xr in x.chunks_exact_mut(n) {
        let ms = dot(xr, xr) / n as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for (v, g) in xr.iter_mut().zip(w) {
            *v *= scale * g;
        }
    }
}

fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        for (v, bb) in row.iter_mut().zip(b) {
            *v += bb;
        }
    }
}

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `e^x` within a few ulp of libm's, in plain arithmetic the compiler vectorises: the activation
/// and the attention softmax call it for every element, and libm's scalar `expf` was 3–5% of a
/// decode step, on the engine thread while the pool waited. Cephes' range reduction by `ln 2` and
/// its degree-6 polynomial; inputs are clamped to where the result is a normal float (so `e^x`
/// saturates at ~2·10³⁸ instead of overflowing, and underflows to ~10⁻³⁸ instead of 0).
#[inline(always)]
// Cephes' coefficients as published, not their nearest f32 spelled out.
#[allow(clippy::excessive_precision)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // 2^n from n's bits, not `n as i32`: Rust's saturating float-to-int cast kept the loops that
    // call this from vectorising (a compare and a conditional move per element). Adding 1.5 * 2^23
    // leaves n + 127 (in 1..=254, by the clamp) in the low mantissa bits.
    let biased = (n + (127.0 + 12_582_912.0)).to_bits() & 0xFF;
    e * f32::from_bits(biased << 23)
}

/// Rotates every head of every row in `x` by its token's angle; `cos`/`sin` hold `rope_dim / 2`
/// values per token.
fn rope(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    rope_dim: usize,
    neox: bool,
    cos: &[f32],
    sin: &[f32],
) {
    let half = rope_dim / 2;
    let row_len = n_heads * head_dim;
    for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
        let (c, s) = (
            &cos[t * half..(t + 1) * half],
            &sin[t * half..(t + 1) * half],
        );
        for head in row.chunks_exact_mut(head_dim) {
            if neox {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * c[i] - b * s[i];
                    head[i + half] = a * s[i] + b * c[i];
                }
            } else {
                for i in 0..half {
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * c[i] - b * s[i];
                    head[2 * i + 1] = a * s[i] + b * c[i];
                }
            }
        }
    }
}

pub(super) fn rope_tables(
    positions: &[usize],
    inv_freq: &[f32],
    cos: &mut Vec<f32>,
    sin: &mut Vec<f32>,
) {
    cos.clear();
    sin.clear();
    for &p in positions {
        for &f in inv_freq {
            let (s, c) = (p as f32 * f).sin_cos();
            cos.push(c);
            sin.push(s);
        }
    }
}

/// Refuses a batch that would overflow a sequence's context or names a token outside the
/// vocabulary, before anything is computed; returns every row's position and where each item's
/// rows start.
pub(super) fn check_batch(
    cfg: &ModelConfig,
    items: &[BatchItem<'_>],
) -> Result<(Vec<usize>, Vec<usize>)> {
    for it in items {
        let end = it.kv.len() + it.tokens.len();
        if end > cfg.context_length {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: end,
                max_tokens: 0,
                context_length: cfg.context_length,
            });
        }
        if let Some(&bad) = it.tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(EngineError::InvalidParameter {
                param: "prompt",
                message: format!(
                    "token id {bad} is outside the vocabulary ({})",
                    cfg.vocab_size
                ),
            });
        }
    }
    let n_tok: usize = items.iter().map(|it| it.tokens.len()).sum();
    let mut positions = Vec::with_capacity(n_tok);
    let mut starts = Vec::with_capacity(items.len());
    for it in items {
        starts.push(positions.len());
        let p0 = it.kv.len();
        positions.extend(p0..p0 + it.tokens.len());
    }
    Ok((positions, starts))
}

/// The rows whose logits are wanted: each wanting item's last row, in order (`starts` as
/// [`check_batch`] returns them).
pub(super) fn logit_rows(items: &[BatchItem<'_>], starts: &[usize]) -> Vec<usize> {
    items
        .iter()
        .zip(starts)
        .filter(|(it, _)| it.want_logits)
        .map(|(it, &r0)| r0 + it.tokens.len() - 1)
        .collect()
}

/// Writes every new token's (scaled) embedding into `x`, one row of `n_embd` per token.
pub(super) fn embed_rows(
    embed: &QMatrix,
    cfg: &ModelConfig,
    items: &[BatchItem<'_>],
    x: &mut [f32],
) {
    let d = cfg.n_embd;
    let tokens = items.iter().flat_map(|it| it.tokens.iter());
    for (xr, &t) in x.chunks_exact_mut(d).zip(tokens) {
        embed.dequantize_row(t as usize, xr);
        if cfg.embed_scale != 1.0 {
            xr.iter_mut().for_each(|v| *v *= cfg.embed_scale);
        }
    }
}

/// A pool thread's attention buffers, reused so tasks do not allocate.
#[derive(Default)]
struct AttnScratch {
    /// Scores head-major: `scores[h * n + j]`.
    scores: Vec<f32>,
    /// One cached key or value row of the task's head, widened from [`KvElem`](super::kv::KvElem).
    row: Vec<f32>,
}

thread_local! {
    static ATTN: std::cell::RefCell<AttnScratch> = std::cell::RefCell::default();
}

/// Lets pool tasks write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: every task writes a range of the buffer no other task touches, and the pool joins all tasks
// before the buffer is used again.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl Model {
    pub fn load(g: &GgufFile) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(g)?;
        let d = cfg.n_embd;
        let embed = matrix(g, "token_embd.weight", cfg.vocab_size, d)?;
        let lm_head = matrix(g, lm_head_name(g), cfg.vocab_size, d)?;
        let layers = load_layers(
            g,
            &cfg,
            |name, rows, cols| matrix(g, name, rows, cols),
            |name, len| vector(g, name, len),
        )?;
        let out_norm = vector(g, "output_norm.weight", d)?;
        Ok(Self {
            embed,
            layers,
            out_norm,
            lm_head,
            inv_freq: inv_freq(cfg.rope_dim, cfg.rope_base),
            inv_freq_local: inv_freq(cfg.rope_dim, cfg.rope_base_local),
            cfg,
            attn_span: ATTN_SPAN,
        })
    }

    /// Runs one step over `items` and returns the logits of the items that want them, one row of
    /// `vocab_size` each, in order.
    pub fn forward(
        &self,
        items: &mut [BatchItem<'_>],
        s: &mut Scratch,
        pool: &ThreadPool,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let (d, ff, qd, kvd, hd) = (
            cfg.n_embd,
            cfg.n_ff,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.head_dim,
        );
        let n_tok: usize = items.iter().map(|it| it.tokens.len()).sum();
        if n_tok == 0 {
            return Ok(Vec::new());
        }
        let (positions, starts) = check_batch(cfg, items)?;
        rope_tables(&positions, &self.inv_freq, &mut s.cos, &mut s.sin);
        if cfg.sliding_window.is_some() {
            rope_tables(
                &positions,
                &self.inv_freq_local,
                &mut s.cos_local,
                &mut s.sin_local,
            );
        }

        resize(&mut s.x, n_tok * d);
        embed_rows(&self.embed, cfg, items, &mut s.x);
        for it in items.iter_mut() {
            it.kv.reserve(it.tokens.len());
        }

        resize(&mut s.h, n_tok * d);
        resize(&mut s.q, n_tok * qd);
        resize(&mut s.k, n_tok * kvd);
        resize(&mut s.v, n_tok * kvd);
        resize(&mut s.o, n_tok * qd);
        resize(&mut s.gate, n_tok * ff);
        resize(&mut s.up, n_tok * ff);

        for (il, layer) in self.layers.iter().enumerate() {
            rms_norm(&s.x, &layer.attn_norm, cfg.rms_eps, &mut s.h);
            QMatrix::matmul_many(
                &[&layer.wq, &layer.wk, &layer.wv],
                &s.h,
                n_tok,
                &mut [&mut s.q, &mut s.k, &mut s.v],
                pool,
            );
            if let Some(b) = &layer.bq {
                add_bias(&mut s.q, b);
            }
            if let Some(b) = &layer.bk {
                add_bias(&mut s.k, b);
            }
            if let Some(b) = &layer.bv {
                add_bias(&mut s.v, b);
            }
            if let Some(w) = &layer.q_norm {
                rms_norm_in_place(&mut s.q, w, cfg.rms_eps);
            }
            if let Some(w) = &layer.k_norm {
                rms_norm_in_place(&mut s.k, w, cfg.rms_eps);
            }
            let local = cfg.is_local(il);
            let (cos, sin) = if local {
                (&s.cos_local, &s.sin_local)
            } else {
                (&s.cos, &s.sin)
            };
            rope(
                &mut s.q,
                cfg.n_head,
                hd,
                cfg.rope_dim,
                cfg.rope_neox,
                cos,
                sin,
            );
            rope(
                &mut s.k,
                cfg.n_head_kv,
                hd,
                cfg.rope_dim,
                cfg.rope_neox,
                cos,
                sin,
            );

            for (it, &r0) in items.iter_mut().zip(&starts) {
                let n = it.tokens.len();
                it.kv.append(
                    il,
                    &s.k[r0 * kvd..(r0 + n) * kvd],
                    &s.v[r0 * kvd..(r0 + n) * kvd],
                );
            }

            let window = if local { cfg.sliding_window } else { None };
            self.attention(items, &positions, il, window, s, pool);

            layer.wo.matmul(&s.o, n_tok, &mut s.h, pool);
            if let Some(w) = &layer.post_attn_norm {
                rms_norm_in_place(&mut s.h, w, cfg.rms_eps);
            }
            s.x.iter_mut().zip(&s.h).for_each(|(x, h)| *x += h);

            rms_norm(&s.x, &layer.ffn_norm, cfg.rms_eps, &mut s.h);
            QMatrix::matmul_many(
                &[&layer.w_gate, &layer.w_up],
                &s.h,
                n_tok,
                &mut [&mut s.gate, &mut s.up],
                pool,
            );
            match cfg.activation {
                Activation::Silu => s
                    .gate
                    .iter_mut()
                    .zip(&s.up)
                    .for_each(|(g, u)| *g = silu(*g) * u),
                Activation::GeluTanh => s
                    .gate
                    .iter_mut()
                    .zip(&s.up)
                    .for_each(|(g, u)| *g = gelu_tanh(*g) * u),
            }
            layer.w_down.matmul(&s.gate, n_tok, &mut s.h, pool);
            if let Some(w) = &layer.post_ffn_norm {
                rms_norm_in_place(&mut s.h, w, cfg.rms_eps);
            }
            s.x.iter_mut().zip(&s.h).for_each(|(x, h)| *x += h);
        }
        for it in items.iter_mut() {
            it.kv.commit(it.tokens.len());
        }

        // Only the rows whose logits are wanted go through the final norm and the (large) output matrix.
        let wanted = logit_rows(items, &starts);
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        resize(&mut s.last, wanted.len() * d);
        for (i, &r) in wanted.iter().enumerate() {
            rms_norm(
                &s.x[r * d..(r + 1) * d],
                &self.out_norm,
                cfg.rms_eps,
                &mut s.last[i * d..(i + 1) * d],
            );
        }
        let mut logits = vec![0f32; wanted.len() * cfg.vocab_size];
        self.lm_head
            .matmul(&s.last, wanted.len(), &mut logits, pool);
        Ok(logits)
    }

    /// Causal attention of every new row against its own sequence's cache: one task per (row,
    /// key-value head, span of about `attn_span` positions, at most `ATTN_SPANS_MAX` spans), the
    /// spans of a long context merged in a second section.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        items: &[BatchItem<'_>],
        positions: &[usize],
        il: usize,
        window: Option<usize>,
        s: &mut Scratch,
        pool: &ThreadPool,
    ) {
        let cfg = &self.cfg;
        let (hd, qd) = (cfg.head_dim, cfg.q_dim());
        let group = cfg.n_head / cfg.n_head_kv;
        let kvd = cfg.kv_dim();
        let n_tok = positions.len();
        let span = self.attn_span.max(1);
        let first_of = |pos: usize| match window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        // Map each row to its item, and each row to its first task.
        let mut row_item = Vec::with_capacity(n_tok);
        for (i, it) in items.iter().enumerate() {
            row_item.extend(std::iter::repeat_n(i, it.tokens.len()));
        }
        let n_kv = cfg.n_head_kv;
        // A row's positions, its span count (at most `ATTN_SPANS_MAX`), and the span length.
        let n_pos = |row: usize| positions[row] + 1 - first_of(positions[row]);
        let span_len = |row: usize| {
            let n = n_pos(row);
            n.div_ceil(n.div_ceil(span).min(ATTN_SPANS_MAX))
        };
        // Counted from the length, so that no span is empty (9 positions in spans of 3: three).
        let spans = |row: usize| n_pos(row).div_ceil(span_len(row));
        let mut row_task = Vec::with_capacity(n_tok + 1);
        let mut n_tasks = 0;
        for row in 0..n_tok {
            row_task.push(n_tasks);
            n_tasks += n_kv * spans(row);
        }
        row_task.push(n_tasks);
        let split = n_tasks > n_tok * n_kv;
        // Per task: `group` maxima, `group` sums, then `group * hd` weighted sums.
        let part_len = group * (hd + 2);
        if split {
            s.attn_part.resize(n_tasks * part_len, 0.0);
        }
        let o_ptr = SyncPtr(s.o.as_mut_ptr());
        let part_ptr = SyncPtr(s.attn_part.as_mut_ptr());
        let q = &s.q;
        let scale = cfg.attn_scale;
        pool.run(n_tasks, |task| {
            // Captures the whole `SyncPtr`s: the closure would otherwise take their raw pointer
            // fields alone (edition 2021 captures fields), which are not `Sync`.
            #[allow(clippy::redundant_locals)]
            let (o_ptr, part_ptr) = (o_ptr, part_ptr);
            let row = row_task.partition_point(|&t| t <= task) - 1;
            let n_spans = spans(row);
            let (g, c) = (
                (task - row_task[row]) / n_spans,
                (task - row_task[row]) % n_spans,
            );
            let it = &items[row_item[row]];
            let pos = positions[row];
            let len = span_len(row);
            let first = first_of(pos) + c * len;
            let n = (pos + 1 - first).min(len);
            let keys = it.kv.keys(il);
            let vals = it.kv.values(il);
            let h0 = g * group;
            let qg = &q[row * qd + h0 * hd..row * qd + (h0 + group) * hd];
            ATTN.with_borrow_mut(|scratch| {
                let AttnScratch {
                    scores: sc,
                    row: kr,
                } = scratch;
                if sc.len() < n * group {
                    sc.resize(n * group, 0.0);
                }
                let (keys, vals) = (
                    HeadRows {
                        data: &keys[g * hd..],
                        stride: kvd,
                        hd,
                    },
                    HeadRows {
                        data: &vals[g * hd..],
                        stride: kvd,
                        hd,
                    },
                );
                attend::scores(qg, keys, first, n, scale, sc, kr);
                // A row in one span gets its softmax and output here; a split row's spans keep
                // their maxima, sums and unnormalised outputs for the merge below.
                let mut part = (n_spans > 1).then(|| {
                    // SAFETY: this task alone writes its `part_len` floats of the partial buffer,
                    // which `split` sized for every task.
                    unsafe {
                        std::slice::from_raw_parts_mut(part_ptr.0.add(task * part_len), part_len)
                    }
                });
                for h in 0..group {
                    let sh = &mut sc[h * n..(h + 1) * n];
                    let mx = sh.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    sh.iter_mut().for_each(|v| *v = exp(*v - mx));
                    let total = sh.iter().sum::<f32>();
                    match part.as_deref_mut() {
                        Some(stats) => (stats[h], stats[group + h]) = (mx, total),
                        None => {
                            let inv = 1.0 / total;
                            sh.iter_mut().for_each(|v| *v *= inv);
                        }
                    }
                }
                let out = match part {
                    Some(p) => &mut p[2 * group..],
                    // SAFETY: task (row, g) alone writes o[row*qd + h*hd ..][..hd] for its heads
                    // h, which are contiguous: h0*hd .. (h0+group)*hd.
                    None => unsafe {
                        std::slice::from_raw_parts_mut(o_ptr.0.add(row * qd + h0 * hd), group * hd)
                    },
                };
                attend::weighted_values(sc, vals, first, n, out, kr);
            });
        });
        if !split {
            return;
        }
        // Each split row's spans, merged in order: rescaled to the largest maximum, summed, and
        // divided by the rescaled sum of exponentials.
        let part = &s.attn_part;
        pool.run(n_tok * n_kv, |task| {
            #[allow(clippy::redundant_locals)]
            let o_ptr = o_ptr;
            let (row, g) = (task / n_kv, task % n_kv);
            let n_spans = spans(row);
            if n_spans == 1 {
                return;
            }
            let h0 = g * group;
            // SAFETY: as in the first section, (row, g) alone owns these heads' output.
            let out = unsafe {
                std::slice::from_raw_parts_mut(o_ptr.0.add(row * qd + h0 * hd), group * hd)
            };
            let at = |c: usize| {
                let t = row_task[row] + g * n_spans + c;
                &part[t * part_len..(t + 1) * part_len]
            };
            for h in 0..group {
                let mx = (0..n_spans).fold(f32::NEG_INFINITY, |m, c| m.max(at(c)[h]));
                let oh = &mut out[h * hd..(h + 1) * hd];
                oh.iter_mut().for_each(|v| *v = 0.0);
                let mut total = 0.0;
                for c in 0..n_spans {
                    let p = at(c);
                    let w = exp(p[h] - mx);
                    total += w * p[group + h];
                    let sums = &p[2 * group + h * hd..2 * group + (h + 1) * hd];
                    for (o, v) in oh.iter_mut().zip(sums) {
                        *o += w * v;
                    }
                }
                let inv = 1.0 / total;
                oh.iter_mut().for_each(|v| *v *= inv);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        // Saturates rather than overflowing to infinity or producing NaN from the exponent bits.
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(-100.0)).abs() < 1e-30 && (silu(100.0) - 100.0).abs() < 1e-4);
    }
}
