//! The transformer forward on candle tensors, for any candle device: what `--device cuda` and
//! `--device metal` run, and, on the CPU (`--device candle-cpu`), the form it is tested in on
//! machines without a GPU.
//!
//! It takes the same batches as [`Model::forward`](super::model::Model::forward) and gives the same
//! logits up to rounding: every matrix product runs once over all the batch's rows (candle's
//! quantized `QMatMul` on the device), attention runs per sequence against that sequence's keys and
//! values, which live on the device ([`DeviceKv`], inside the sequence's [`SeqKv`]).
//!
//! The prefix cache stays in host memory. A sequence that starts from cached blocks uploads them
//! when it first runs; a finished prompt's rows are downloaded ([`TensorModel::sync_host`]) before
//! they are offered to the cache. Keys and values are rounded to f16 as they are stored, as the CPU
//! forward stores them, so a restored prefix is bit-for-bit what was computed.
//!
//! Token embeddings are looked up on the host from the mapped file and uploaded: a few rows a step
//! instead of a dequantized vocabulary on the device.

use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device as CandleDevice, Module, Tensor, D};

use super::error::{EngineError, Result};
use super::gguf::GgufFile;
use super::kernels::{GgmlDType, QMatrix};
use super::kv::SeqKv;
use super::model::{
    check_batch, embed_rows, inv_freq, lm_head_name, load_layers, logit_rows, matrix, rope_tables,
    vector, Activation, BatchItem, Layer, ModelConfig,
};

/// One sequence's keys and values on the device, per layer `[kv_head × capacity × head_dim]` in f16,
/// so a head's cached positions are one strided block; attention widens the block it reads to f32.
#[derive(Debug)]
pub struct DeviceKv {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Positions allocated per layer.
    cap: usize,
    /// Positions computed and committed.
    len: usize,
    /// Bytes of the buffers, for the cache accounting.
    bytes: usize,
}

impl DeviceKv {
    pub(super) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

pub struct TensorModel {
    pub cfg: ModelConfig,
    device: CandleDevice,
    embed: QMatrix,
    layers: Vec<Layer<QMatMul, Tensor>>,
    out_norm: Tensor,
    lm_head: QMatMul,
    inv_freq: Vec<f32>,
    inv_freq_local: Vec<f32>,
}

fn qmatmul(
    g: &GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
    dev: &CandleDevice,
) -> Result<QMatMul> {
    // The same shape checks and error as the CPU forward's weights.
    let m = matrix(g, name, rows, cols)?;
    if m.dtype() == GgmlDType::Q8K && !dev.is_cpu() {
        // candle's CUDA and Metal products have no Q8_K kernel; refuse it at load, not at the first step.
        return Err(EngineError::Load {
            path: g.path.clone(),
            message: format!("tensor `{name}` is Q8_K, which the GPU forward cannot multiply"),
        });
    }
    let storage = QStorage::from_data(std::borrow::Cow::Borrowed(m.bytes()), dev, m.dtype())?;
    Ok(QMatMul::from_qtensor(QTensor::new(storage, (rows, cols))?)?)
}

fn dev_vector(g: &GgufFile, name: &str, len: usize, dev: &CandleDevice) -> Result<Tensor> {
    Ok(Tensor::from_vec(vector(g, name, len)?, len, dev)?)
}

/// Root-mean-square norm over the last dimension, scaled by `w`.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps as f64)?.sqrt()?)?
        .broadcast_mul(w)?)
}

/// Rotates the first `rope_dim` dimensions of every head of `x` (`[rows × heads × head_dim]`);
/// `cos`/`sin` are `[rows × 1 × rope_dim/2]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, rope_dim: usize, neox: bool) -> Result<Tensor> {
    let (n, heads, hd) = x.dims3()?;
    let half = rope_dim / 2;
    let rot = x.narrow(2, 0, rope_dim)?;
    let turn = |a: &Tensor, b: &Tensor| -> Result<(Tensor, Tensor)> {
        Ok((
            (a.broadcast_mul(cos)? - b.broadcast_mul(sin)?)?,
            (a.broadcast_mul(sin)? + b.broadcast_mul(cos)?)?,
        ))
    };
    let rotated = if neox {
        // The two halves of a head are the pairs' first and second members.
        let (a, b) = turn(&rot.narrow(2, 0, half)?, &rot.narrow(2, half, half)?)?;
        Tensor::cat(&[a, b], 2)?
    } else {
        // Adjacent dimensions are the pairs.
        let pairs = rot.contiguous()?.reshape((n, heads, half, 2))?;
        let (a, b) = turn(
            &pairs.narrow(3, 0, 1)?.squeeze(3)?,
            &pairs.narrow(3, 1, 1)?.squeeze(3)?,
        )?;
        Tensor::stack(&[a, b], 3)?.reshape((n, heads, rope_dim))?
    };
    if rope_dim == hd {
        Ok(rotated)
    } else {
        Ok(Tensor::cat(
            &[rotated, x.narrow(2, rope_dim, hd - rope_dim)?],
            2,
        )?)
    }
}

fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

impl TensorModel {
    pub fn load(g: &GgufFile, device: CandleDevice) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(g)?;
        let d = cfg.n_embd;
        let dev = &device;
        let layers = load_layers(
            g,
            &cfg,
            |name, rows, cols| qmatmul(g, name, rows, cols, dev),
            |name, len| dev_vector(g, name, len, dev),
        )?;
        Ok(Self {
            embed: matrix(g, "token_embd.weight", cfg.vocab_size, d)?,
            lm_head: qmatmul(g, lm_head_name(g), cfg.vocab_size, d, dev)?,
            out_norm: dev_vector(g, "output_norm.weight", d, dev)?,
            layers,
            inv_freq: inv_freq(cfg.rope_dim, cfg.rope_base),
            inv_freq_local: inv_freq(cfg.rope_dim, cfg.rope_base_local),
            cfg,
            device,
        })
    }

    /// `[rows × 1 × rope_dim/2]` cosines and sines for `positions`.
    fn rope_tables(&self, positions: &[usize], inv_freq: &[f32]) -> Result<(Tensor, Tensor)> {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        rope_tables(positions, inv_freq, &mut cos, &mut sin);
        let shape = (positions.len(), 1, inv_freq.len());
        Ok((
            Tensor::from_vec(cos, shape, &self.device)?,
            Tensor::from_vec(sin, shape, &self.device)?,
        ))
    }

    /// Makes `kv`'s device part hold its committed positions (uploading rows a prefix-cache restore
    /// left in host memory) with room for `extra` more.
    fn prepare(&self, kv: &mut SeqKv, extra: usize) -> Result<()> {
        let cfg = &self.cfg;
        let (n_kv, hd) = (cfg.n_head_kv, cfg.head_dim);
        let committed = kv.len();
        let need = committed + extra;
        let on_device = kv.device.as_ref().map_or(0, |d| d.len);
        let cap = kv.device.as_ref().map_or(0, |d| d.cap);
        if need > cap {
            // Grow geometrically so a long generation copies its cache O(log n) times; each old
            // layer is freed as soon as it is copied, so the peak is the new cache plus one layer.
            let new_cap = need.max(cap * 2).max(64).min(cfg.context_length.max(need));
            let zeros = || Tensor::zeros((n_kv, new_cap, hd), DType::F16, &self.device);
            let old = kv.device.take();
            let mut old_layers = old.map(|o| o.k.into_iter().zip(o.v));
            let mut k = Vec::with_capacity(cfg.n_layer);
            let mut v = Vec::with_capacity(cfg.n_layer);
            for _ in 0..cfg.n_layer {
                let (nk, nv) = (zeros()?, zeros()?);
                if let Some((ok, ov)) = old_layers.as_mut().and_then(Iterator::next) {
                    if on_device > 0 {
                        nk.slice_set(&ok.narrow(1, 0, on_device)?.contiguous()?, 1, 0)?;
                        nv.slice_set(&ov.narrow(1, 0, on_device)?.contiguous()?, 1, 0)?;
                    }
                }
                k.push(nk);
                v.push(nv);
            }
            kv.device = Some(DeviceKv {
                k,
                v,
                cap: new_cap,
                len: on_device,
                bytes: 2 * cfg.n_layer * n_kv * new_cap * hd * std::mem::size_of::<half::f16>(),
            });
        }
        if on_device < committed {
            // Rows restored from the prefix cache: only host memory has them.
            if kv.host_len() < committed {
                return Err(EngineError::Generation(format!(
                    "KV cache out of step: {committed} positions, {on_device} on the device, {} in host memory",
                    kv.host_len()
                )));
            }
            let kvd = kv.kv_dim();
            let n = committed - on_device;
            let d = kv.device.as_ref().ok_or_else(|| {
                EngineError::Generation("device KV cache missing after allocation".into())
            })?;
            for il in 0..cfg.n_layer {
                let host = |rows: &[half::f16]| -> Result<Tensor> {
                    let rows = &rows[on_device * kvd..committed * kvd];
                    Ok(Tensor::from_slice(rows, (n, n_kv, hd), &self.device)?
                        .transpose(0, 1)?
                        .contiguous()?)
                };
                let (hk, hv) = (host(kv.keys(il))?, host(kv.values(il))?);
                d.k[il].slice_set(&hk, 1, on_device)?;
                d.v[il].slice_set(&hv, 1, on_device)?;
            }
            if let Some(d) = &mut kv.device {
                d.len = committed;
            }
        }
        Ok(())
    }

    /// Copies the positions only the device holds into `kv`'s host rows, so the prefix cache can
    /// store them.
    pub fn sync_host(&self, kv: &mut SeqKv) -> Result<()> {
        let Some(d) = &kv.device else {
            return Ok(());
        };
        let (from, to) = (kv.host_len(), d.len.min(kv.len()));
        if from >= to {
            return Ok(());
        }
        let host = |t: &Tensor| -> Result<Vec<half::f16>> {
            Ok(t.narrow(1, from, to - from)?
                .transpose(0, 1)?
                .flatten_all()?
                .to_vec1()?)
        };
        let rows: Vec<(Vec<half::f16>, Vec<half::f16>)> = (0..self.cfg.n_layer)
            .map(|il| Ok((host(&d.k[il])?, host(&d.v[il])?)))
            .collect::<Result<_>>()?;
        for (il, (k, v)) in rows.iter().enumerate() {
            kv.append_stored(il, k, v);
        }
        Ok(())
    }

    /// Runs one step over `items` and returns the logits of the items that want them, one row of
    /// `vocab_size` each, in order (as [`Model::forward`](super::model::Model::forward)).
    pub fn forward(&self, items: &mut [BatchItem<'_>]) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let (d, hd) = (cfg.n_embd, cfg.head_dim);
        let (n_head, n_kv) = (cfg.n_head, cfg.n_head_kv);
        let group = n_head / n_kv;
        let n_tok: usize = items.iter().map(|it| it.tokens.len()).sum();
        if n_tok == 0 {
            return Ok(Vec::new());
        }
        let (positions, starts) = check_batch(cfg, items)?;
        for it in items.iter_mut() {
            self.prepare(it.kv, it.tokens.len())?;
        }
        let global = self.rope_tables(&positions, &self.inv_freq)?;
        let local = match cfg.sliding_window {
            Some(_) => Some(self.rope_tables(&positions, &self.inv_freq_local)?),
            None => None,
        };

        let spans = |window: Option<usize>| -> Result<Vec<Span>> {
            items
                .iter()
                .map(|it| self.span(it.kv.len(), it.tokens.len(), window))
                .collect()
        };
        let global_spans = spans(None)?;
        let local_spans = match cfg.sliding_window {
            Some(w) => Some(spans(Some(w))?),
            None => None,
        };

        let mut x_host = vec![0f32; n_tok * d];
        embed_rows(&self.embed, cfg, items, &mut x_host);
        let mut x = Tensor::from_vec(x_host, (n_tok, d), &self.device)?;
        let eps = cfg.rms_eps;

        for (il, l) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &l.attn_norm, eps)?;
            let project = |w: &QMatMul, b: &Option<Tensor>, heads: usize| -> Result<Tensor> {
                let mut y = w.forward(&h)?;
                if let Some(b) = b {
                    y = y.broadcast_add(b)?;
                }
                Ok(y.reshape((n_tok, heads, hd))?)
            };
            let mut q = project(&l.wq, &l.bq, n_head)?;
            let mut k = project(&l.wk, &l.bk, n_kv)?;
            let v = project(&l.wv, &l.bv, n_kv)?;
            if let Some(w) = &l.q_norm {
                q = rms_norm(&q, w, eps)?;
            }
            if let Some(w) = &l.k_norm {
                k = rms_norm(&k, w, eps)?;
            }
            let is_local = cfg.is_local(il);
            let (cos, sin) = match (&local, is_local) {
                (Some(t), true) => t,
                _ => &global,
            };
            let q = rope(&q, cos, sin, cfg.rope_dim, cfg.rope_neox)?;
            let k = rope(&k, cos, sin, cfg.rope_dim, cfg.rope_neox)?;
            // Stored in f16 as the CPU forward stores them (half the memory of f32, and a prefix
            // restored from the host cache is exactly what was computed).
            let k = k.to_dtype(DType::F16)?;
            let v = v.to_dtype(DType::F16)?;
            let spans = match (&local_spans, is_local) {
                (Some(s), true) => s,
                _ => &global_spans,
            };

            let mut outs = Vec::with_capacity(items.len());
            for ((it, &r0), span) in items.iter().zip(&starts).zip(spans) {
                let n = it.tokens.len();
                let p0 = it.kv.len();
                let dk = it
                    .kv
                    .device
                    .as_ref()
                    .ok_or_else(|| EngineError::Generation("device KV cache missing".into()))?;
                dk.k[il].slice_set(&k.narrow(0, r0, n)?.transpose(0, 1)?.contiguous()?, 1, p0)?;
                dk.v[il].slice_set(&v.narrow(0, r0, n)?.transpose(0, 1)?.contiguous()?, 1, p0)?;
                outs.push(self.attend(&q.narrow(0, r0, n)?, dk, il, span, group)?);
            }
            let o = Tensor::cat(&outs, 0)?;

            let mut h = l.wo.forward(&o)?;
            if let Some(w) = &l.post_attn_norm {
                h = rms_norm(&h, w, eps)?;
            }
            x = (x + h)?;

            let h = rms_norm(&x, &l.ffn_norm, eps)?;
            let gate = l.w_gate.forward(&h)?;
            let gate = match cfg.activation {
                Activation::Silu => gate.silu()?,
                // candle's `gelu` is the tanh approximation, as Gemma uses.
                Activation::GeluTanh => gate.gelu()?,
            };
            let mut h = l.w_down.forward(&(gate * l.w_up.forward(&h)?)?)?;
            if let Some(w) = &l.post_ffn_norm {
                h = rms_norm(&h, w, eps)?;
            }
            x = (x + h)?;
        }
        // A GPU reports a failed kernel only at a synchronising call: wait for the step here, so a
        // failure is this step's error and no sequence counts positions its device never stored.
        self.device.synchronize()?;
        for it in items.iter_mut() {
            let n = it.tokens.len();
            if let Some(dk) = &mut it.kv.device {
                dk.len += n;
            }
            it.kv.commit(n);
        }

        let wanted: Vec<u32> = logit_rows(items, &starts)
            .into_iter()
            .map(|r| r as u32)
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let idx = Tensor::new(wanted.as_slice(), &self.device)?;
        let last = rms_norm(&x.index_select(&idx, 0)?, &self.out_norm, eps)?;
        Ok(self.lm_head.forward(&last)?.flatten_all()?.to_vec1()?)
    }

    /// The cached positions `p0 .. p0 + n` may see, and their mask (built once a step, not once a
    /// layer: on a GPU each mask is an upload).
    fn span(&self, p0: usize, n: usize, window: Option<usize>) -> Result<Span> {
        let end = p0 + n;
        // The earliest position any of the rows may see.
        let first = window.map_or(0, |w| (p0 + 1).saturating_sub(w));
        // One row alone sees every kept position; several need the causal (and window) mask.
        let mask = if n > 1 {
            let mask: Vec<f32> = (0..n)
                .flat_map(|r| {
                    let pos = p0 + r;
                    (first..end).map(move |kp| {
                        let seen = kp <= pos && window.is_none_or(|w| kp + w > pos);
                        if seen {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            Some(Tensor::from_vec(mask, (n, end - first), &self.device)?)
        } else {
            None
        };
        Ok(Span { first, end, mask })
    }

    /// Causal attention of one sequence's new query rows (`[n × heads × head_dim]`) against its
    /// cached keys and values, which already hold the new rows.
    fn attend(
        &self,
        q: &Tensor,
        kv: &DeviceKv,
        il: usize,
        span: &Span,
        group: usize,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (n, _, hd) = q.dims3()?;
        let n_kv = cfg.n_head_kv;
        let len = span.end - span.first;
        let keys = kv.k[il].narrow(1, span.first, len)?.to_dtype(DType::F32)?;
        let vals = kv.v[il].narrow(1, span.first, len)?.to_dtype(DType::F32)?;
        // Query heads that share a key-value head become extra rows of that head's product.
        let q = q
            .reshape((n, n_kv, group, hd))?
            .permute((1, 2, 0, 3))?
            .contiguous()?
            .reshape((n_kv, group * n, hd))?;
        let mut scores = (q.matmul(&keys.t()?)? * cfg.attn_scale as f64)?;
        if let Some(mask) = &span.mask {
            scores = scores
                .reshape((n_kv, group, n, len))?
                .broadcast_add(mask)?
                .reshape((n_kv, group * n, len))?;
        }
        let o = softmax_last(&scores)?.matmul(&vals)?;
        Ok(o.reshape((n_kv, group, n, hd))?
            .permute((2, 0, 1, 3))?
            .contiguous()?
            .reshape((n, n_kv * group * hd))?)
    }
}

/// What one sequence's new rows attend to in a step.
struct Span {
    first: usize,
    end: usize,
    mask: Option<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gguf::Bytes;
    use crate::engine::kernels::{test_random as values, ThreadPool};
    use std::sync::Arc;

    /// candle's quantized products, which the tensor forward uses, against clerk's CPU kernels on the
    /// same bytes: equal up to the float order of the sums. In a `cuda` build, also on the GPU, where
    /// candle picks one kernel up to 8 rows and another above.
    #[test]
    fn candle_products_match_the_cpu_kernels() {
        #[allow(unused_mut)]
        let mut devices = vec![CandleDevice::Cpu];
        #[cfg(feature = "cuda")]
        devices.push(CandleDevice::new_cuda(0).expect("the cuda build's tests need a GPU"));
        for device in &devices {
            products_match_the_cpu_kernels(device);
        }
    }

    fn products_match_the_cpu_kernels(device: &CandleDevice) {
        let (rows, cols) = (48, 512);
        let pool = ThreadPool::new(2);
        for n in [1, 5, 12, 64] {
            for dtype in [
                GgmlDType::F32,
                GgmlDType::F16,
                GgmlDType::Q4_0,
                GgmlDType::Q4_1,
                GgmlDType::Q8_0,
                GgmlDType::Q4K,
                GgmlDType::Q6K,
            ] {
                let w = Tensor::from_vec(values(rows * cols, 1), (rows, cols), &CandleDevice::Cpu)
                    .unwrap();
                let qt = QTensor::quantize(&w, dtype).unwrap();
                let dequantized: Vec<f32> = qt
                    .dequantize(&CandleDevice::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let bytes: Arc<[u8]> = qt.data().unwrap().into_owned().into();
                let ours = QMatrix::new(dtype, rows, cols, Bytes::Owned(bytes.clone())).unwrap();
                let x = values(n * cols, 2);
                let mut want = vec![0f32; n * rows];
                ours.matmul(&x, n, &mut want, &pool);
                let storage =
                    QStorage::from_data(std::borrow::Cow::Borrowed(&bytes[..]), device, dtype)
                        .unwrap();
                let mm =
                    QMatMul::from_qtensor(QTensor::new(storage, (rows, cols)).unwrap()).unwrap();
                let xt = Tensor::from_vec(x.clone(), (n, cols), device).unwrap();
                let got: Vec<f32> = mm
                    .forward(&xt)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Both sides quantize the activations to 8 bits, but not always alike: on an
                // AVX-512 VNNI CPU candle repacks Q8_0 weights and quantizes each row in blocks
                // of 256 (Q8K) where clerk uses blocks of 32. Rounding puts each activation off by
                // at most half a step, evenly spread, so each side's error has a standard
                // deviation of sqrt(Σ w² step² / 12); with the block of 256's (larger) step it
                // bounds both. The inputs are fixed, so six deviations of the difference is a
                // bound that holds, not a chance: a kernel that drops or misplaces one block of
                // 32 is off by several times more.
                let steps: Vec<f32> = x
                    .chunks(256)
                    .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0)
                    .collect();
                let quantized = !matches!(dtype, GgmlDType::F32 | GgmlDType::F16);
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    let (s, r) = (i / rows, i % rows);
                    let sigma = if quantized {
                        let var: f32 = (0..cols)
                            .map(|c| {
                                let w = dequantized[r * cols + c];
                                let step = steps[(s * cols + c) / 256];
                                w * w * step * step / 12.0
                            })
                            .sum();
                        (2.0 * var).sqrt()
                    } else {
                        0.0
                    };
                    let diff = (a - b).abs();
                    // NaN must fail, which a plain `>` would let through.
                    assert!(
                        diff <= 6.0 * sigma + 1e-3 * scale,
                        "{device:?} {dtype:?} n={n} row {r} of sequence {s}: |{a} - {b}| > \
                         6 × {sigma} + 1e-3 × {scale}"
                    );
                }
            }
        }
    }
}
