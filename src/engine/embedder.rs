//! Sentence embeddings from a BERT-family sentence-transformers model (all-MiniLM-L6-v2 by default),
//! run on candle tensors from a folder holding `model.safetensors`, `config.json` and
//! `tokenizer.json`.
//!
//! Mean pooling over the real tokens, then L2 normalisation, as sentence-transformers does for these
//! models, so cosine similarity is a dot product. Calls are blocking tensor work: callers on an async
//! runtime run them on a blocking thread.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor, D};
use serde::Deserialize;

use super::error::{EngineError, Result};

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

struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_matmul(&self.w.t()?)?.broadcast_add(&self.b)
    }
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
    eps: f64,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.w)?
            .broadcast_add(&self.b)
    }
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
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
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
}

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
        if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
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
            Ok(Linear {
                w: get(&format!("{n}.weight"))?,
                b: get(&format!("{n}.bias"))?,
            })
        };
        let norm = |n: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                w: get(&format!("{n}.weight"))?,
                b: get(&format!("{n}.bias"))?,
                eps: cfg.layer_norm_eps,
            })
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                Ok(Layer {
                    q: linear(&format!("{p}.attention.self.query"))?,
                    k: linear(&format!("{p}.attention.self.key"))?,
                    v: linear(&format!("{p}.attention.self.value"))?,
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
            word: get("embeddings.word_embeddings.weight")?,
            position: get("embeddings.position_embeddings.weight")?,
            token_type: get("embeddings.token_type_embeddings.weight")?,
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
            tokenizer,
            cfg,
            device,
        })
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
        // Sorting by length keeps padding small inside each batch.
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].len());
        let mut out = vec![Vec::new(); inputs.len()];
        for chunk in order.chunks(32) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| inputs[i].as_slice()).collect();
            let vecs = self.forward(&batch)?;
            for (&i, v) in chunk.iter().zip(vecs) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let (b, len) = (
            batch.len(),
            batch.iter().map(|x| x.len()).max().unwrap_or(0),
        );
        let (h, heads) = (self.cfg.hidden_size, self.cfg.num_attention_heads);
        let hd = h / heads;
        let mut ids = vec![0u32; b * len];
        let mut mask = vec![0f32; b * len];
        for (r, seq) in batch.iter().enumerate() {
            ids[r * len..r * len + seq.len()].copy_from_slice(seq);
            mask[r * len..r * len + seq.len()].fill(1.0);
        }
        let dev = &self.device;
        let ids = Tensor::from_vec(ids, (b * len,), dev)?;
        let mask = Tensor::from_vec(mask, (b, len), dev)?;
        let x = self.word.index_select(&ids, 0)?.reshape((b, len, h))?;
        let pos = self.position.narrow(0, 0, len)?;
        let tt = self.token_type.narrow(0, 0, 1)?;
        let mut x = self
            .embed_norm
            .forward(&x.broadcast_add(&pos)?.broadcast_add(&tt)?)?;
        // Padding keys get -inf-like scores so they take no attention.
        let bias = ((mask.clone() - 1.0)? * 1e9)?.reshape((b, 1, 1, len))?;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((b, len, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split(l.q.forward(&x)?)?;
            let k = split(l.k.forward(&x)?)?;
            let v = split(l.v.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&bias)?;
            let max = scores.max_keepdim(D::Minus1)?;
            let e = scores.broadcast_sub(&max)?.exp()?;
            let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, len, h))?;
            x = l.attn_norm.forward(&(l.attn_out.forward(&ctx)? + &x)?)?;
            let ff = l.down.forward(&l.up.forward(&x)?.gelu_erf()?)?;
            x = l.out_norm.forward(&(ff + &x)?)?;
        }
        let m = mask.unsqueeze(2)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}
