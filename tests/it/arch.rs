//! Every supported architecture, loaded from a tiny synthetic GGUF that the test writes itself.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use clerk::engine::gguf::GgufFile;
use clerk::engine::kernels::ThreadPool;
use clerk::engine::kv::SeqKv;
use clerk::engine::model::{BatchItem, Model, ModelConfig, Scratch};
use clerk::engine::tensor_model::TensorModel;
use clerk::engine::{
    Device as EngineDevice, Engine, EngineConfig, GenerateRequest, SamplingParams,
};

const D: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 32;
const FF: usize = 128;

/// GPT-2's printable stand-ins for the 256 byte values.
fn byte_chars() -> Vec<char> {
    let mut extra = 0;
    let mut out = vec!['\0'; 256];
    for b in 0..256u32 {
        let c = if (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b) {
            char::from_u32(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra)
        };
        out[b as usize] = c.unwrap_or('?');
    }
    out
}

struct Tiny {
    arch: &'static str,
    n_layer: usize,
    /// Every matrix in f32 instead of Q8_0/Q4_0, so two forwards can be compared without the
    /// quantization of their activations.
    exact: bool,
}

fn tensor(rows: usize, cols: usize, seed: u64, dtype: GgmlDType, scale: f32) -> QTensor {
    // A small LCG keeps the weights reproducible without a random-number crate.
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect();
    let shape: Vec<usize> = if rows == 1 {
        vec![cols]
    } else {
        vec![rows, cols]
    };
    let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

fn norm(n: usize, seed: u64) -> QTensor {
    let data: Vec<f32> = (0..n)
        .map(|i| 1.0 + ((i as u64 * 7 + seed) % 5) as f32 * 0.05)
        .collect();
    QTensor::quantize(
        &Tensor::from_vec(data, n, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap()
}

fn write_tiny(t: &Tiny, dir: &Path) -> PathBuf {
    let chars = byte_chars();
    let mut tokens: Vec<Value> = chars.iter().map(|c| Value::String(c.to_string())).collect();
    tokens.push(Value::String("<|im_start|>".into()));
    tokens.push(Value::String("<|im_end|>".into()));
    let vocab = tokens.len();
    let mut types = vec![Value::I32(1); 256];
    types.push(Value::I32(3));
    types.push(Value::I32(3));
    let a = t.arch;
    let key = |k: &str| format!("{a}.{k}");
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (key("block_count"), Value::U32(t.n_layer as u32)),
        (key("context_length"), Value::U32(256)),
        (key("embedding_length"), Value::U32(D as u32)),
        (key("feed_forward_length"), Value::U32(FF as u32)),
        (key("attention.head_count"), Value::U32(HEADS as u32)),
        (key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (key("attention.key_length"), Value::U32(HEAD_DIM as u32)),
        (key("attention.value_length"), Value::U32(HEAD_DIM as u32)),
        (key("rope.freq_base"), Value::F32(10000.0)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(256)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(257)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    if a == "gemma3" {
        meta.push((key("attention.sliding_window"), Value::U32(4)));
    }
    let (q, q4) = if t.exact {
        (GgmlDType::F32, GgmlDType::F32)
    } else {
        (GgmlDType::Q8_0, GgmlDType::Q4_0)
    };
    let (qd, kvd) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), tensor(vocab, D, 1, q, 1.0)),
        ("output_norm.weight".into(), norm(D, 2)),
    ];
    for il in 0..t.n_layer {
        let s = 100 * (il as u64 + 1);
        let n = |x: &str| format!("blk.{il}.{x}");
        tensors.push((n("attn_norm.weight"), norm(D, s)));
        tensors.push((n("attn_q.weight"), tensor(qd, D, s + 1, q, 0.2)));
        tensors.push((n("attn_k.weight"), tensor(kvd, D, s + 2, q, 0.2)));
        tensors.push((n("attn_v.weight"), tensor(kvd, D, s + 3, q, 0.2)));
        tensors.push((n("attn_output.weight"), tensor(D, qd, s + 4, q4, 0.2)));
        tensors.push((n("ffn_norm.weight"), norm(D, s + 5)));
        tensors.push((n("ffn_gate.weight"), tensor(FF, D, s + 6, q, 0.2)));
        tensors.push((n("ffn_up.weight"), tensor(FF, D, s + 7, q, 0.2)));
        tensors.push((n("ffn_down.weight"), tensor(D, FF, s + 8, q, 0.2)));
        if a == "qwen2" {
            tensors.push((n("attn_q.bias"), tensor(1, qd, s + 9, GgmlDType::F32, 0.1)));
            tensors.push((
                n("attn_k.bias"),
                tensor(1, kvd, s + 10, GgmlDType::F32, 0.1),
            ));
            tensors.push((
                n("attn_v.bias"),
                tensor(1, kvd, s + 11, GgmlDType::F32, 0.1),
            ));
        }
        if a == "qwen3" || a == "gemma3" {
            tensors.push((n("attn_q_norm.weight"), norm(HEAD_DIM, s + 12)));
            tensors.push((n("attn_k_norm.weight"), norm(HEAD_DIM, s + 13)));
        }
        if a == "gemma3" {
            tensors.push((n("post_attention_norm.weight"), norm(D, s + 14)));
            tensors.push((n("post_ffw_norm.weight"), norm(D, s + 15)));
        }
    }
    let exact = if t.exact { "-f32" } else { "" };
    let path = dir.join(format!("tiny-{a}{exact}.gguf"));
    let mut f = std::fs::File::create(&path).unwrap();
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    path
}

/// A one-layer quantized llama written into `dir`, for tests elsewhere that need a small real GGUF.
pub(crate) fn tiny_llama(dir: &Path) -> PathBuf {
    write_tiny(
        &Tiny {
            arch: "llama",
            n_layer: 1,
            exact: false,
        },
        dir,
    )
}

fn tmp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("clerk-arch-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The logits for the last token after feeding `chunks` of one sequence to `forward` in turn.
fn feed(
    cfg: &ModelConfig,
    chunks: &[&[u32]],
    mut forward: impl FnMut(&mut [BatchItem<'_>]) -> Vec<f32>,
) -> Vec<f32> {
    let mut kv = SeqKv::new(cfg.n_layer, cfg.kv_dim());
    let mut out = vec![];
    for (i, c) in chunks.iter().enumerate() {
        out = forward(&mut [BatchItem {
            kv: &mut kv,
            tokens: c,
            want_logits: i + 1 == chunks.len(),
        }]);
    }
    out
}

fn logits_last(model: &Model, chunks: &[&[u32]], pool: &ThreadPool) -> Vec<f32> {
    let mut s = Scratch::default();
    feed(&model.cfg, chunks, |items| {
        model.forward(items, &mut s, pool).unwrap()
    })
}

/// The same through the tensor forward.
fn tensor_logits_last(model: &TensorModel, chunks: &[&[u32]]) -> Vec<f32> {
    feed(&model.cfg, chunks, |items| model.forward(items).unwrap())
}

/// The largest difference between two logit rows relative to the largest logit; NaN counts as
/// infinitely different.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
        / scale
}

/// The devices the tensor forward is checked on: candle's CPU, and the GPU in a `cuda` build.
fn tensor_devices() -> Vec<candle_core::Device> {
    #[allow(unused_mut)]
    let mut devices = vec![candle_core::Device::Cpu];
    #[cfg(feature = "cuda")]
    devices.push(candle_core::Device::new_cuda(0).expect("the cuda build's tests need a GPU"));
    devices
}

/// The tensor forward (what the GPU builds run) against the CPU forward, whole, chunked, token by
/// token and on a shorter context, within `tolerance` of the largest logit.
fn check_tensor_forward(arch: &str, path: &Path, prompt: &[u32], tolerance: f32, span: usize) {
    let gguf = GgufFile::open(path).unwrap();
    let mut model = Model::load(&gguf).unwrap();
    model.attn_span = span;
    let pool = ThreadPool::new(2);
    let singles: Vec<&[u32]> = prompt.chunks(1).collect();
    // The CPU forward's logits for each case (its name, its chunks, the logits), computed once for
    // all devices.
    type Case<'a> = (&'static str, Vec<&'a [u32]>, Vec<f32>);
    let cases: Vec<Case> = [
        ("whole", vec![prompt]),
        ("chunked", vec![&prompt[..5], &prompt[5..]]),
        ("token by token", singles),
        ("shorter context", vec![&prompt[6..]]),
    ]
    .into_iter()
    .map(|(how, chunks)| {
        let want = logits_last(&model, &chunks, &pool);
        (how, chunks, want)
    })
    .collect();
    for device in tensor_devices() {
        let tensor = TensorModel::load(&gguf, device.clone()).unwrap();
        for (how, chunks, want) in &cases {
            let got = tensor_logits_last(&tensor, chunks);
            let diff = max_rel_diff(want, &got);
            assert!(
                diff < tolerance,
                "{arch}: tensor forward on {device:?}, {how}: logits differ by {diff} of the largest"
            );
        }
    }
}

/// Deterministic greedy generations of two prompts, each alone and then both batched.
fn alone_and_batched(engine: &Engine) -> [(Vec<u32>, Vec<u32>); 2] {
    let req = |p: &str| GenerateRequest {
        prompt: engine.tokenizer().encode(p, false).unwrap(),
        sampling: SamplingParams::default(),
        max_tokens: Some(12),
        stop: vec![],
        ignore_eos: true,
        grammar: None,
    };
    let run = |p: &str| {
        engine
            .submit(req(p))
            .unwrap()
            .collect_blocking()
            .unwrap()
            .tokens
    };
    let (a, b) = (run("abc"), run("xyz!?"));
    assert_eq!(a.len(), 12);
    let ga = engine.submit(req("abc")).unwrap();
    let gb = engine.submit(req("xyz!?")).unwrap();
    [
        (a, ga.collect_blocking().unwrap().tokens),
        (b, gb.collect_blocking().unwrap().tokens),
    ]
}

fn check_arch(arch: &'static str, n_layer: usize) {
    let dir = tmp_dir();
    let path = write_tiny(
        &Tiny {
            arch,
            n_layer,
            exact: false,
        },
        &dir,
    );
    let gguf = GgufFile::open(&path).unwrap();
    let mut model = Model::load(&gguf).unwrap();
    let pool = ThreadPool::new(2);
    let prompt: Vec<u32> = "hello, shop!".bytes().map(|b| b as u32).collect();
    // The default attention span covers this prompt in one task per head; spans of two and one
    // split it (into at most four spans, so longer contexts take longer and uneven ones: five
    // positions at span one are 2, 2 and 1), so the merge of partial softmax sums runs too.
    let spans = [clerk::engine::model::ATTN_SPAN, 2, 1];
    for span in spans {
        model.attn_span = span;
        // Whole prompt at once, in chunks, and one token at a time must agree: positions, the KV
        // cache and (for Gemma) the sliding window are consistent across steps.
        let whole = logits_last(&model, &[&prompt], &pool);
        assert_eq!(whole.len(), model.cfg.vocab_size);
        assert!(
            whole.iter().all(|x| x.is_finite()),
            "{arch}: non-finite logits"
        );
        let chunked = logits_last(&model, &[&prompt[..5], &prompt[5..]], &pool);
        let singles: Vec<&[u32]> = prompt.chunks(1).collect();
        let stepwise = logits_last(&model, &singles, &pool);
        assert_eq!(
            whole, chunked,
            "{arch}, span {span}: chunked prefill differs"
        );
        assert_eq!(
            whole, stepwise,
            "{arch}, span {span}: token-by-token differs"
        );

        // A shorter context changes the result (the model does attend to earlier tokens).
        let tail = logits_last(&model, &[&prompt[6..]], &pool);
        assert_ne!(whole, tail, "{arch}: earlier tokens had no effect");
    }

    // The tensor forward computes the same function: with f32 weights up to float rounding; with
    // quantized weights both forwards quantize their activations (to Q8_0, as llama.cpp does), a
    // value on a rounding boundary can land on either side, and this random model amplifies that to
    // about 1.5% of the largest logit. A wrong layout or a missed step is of the order of the logits.
    let exact = write_tiny(
        &Tiny {
            arch,
            n_layer,
            exact: true,
        },
        &dir,
    );
    for span in spans {
        check_tensor_forward(arch, &exact, &prompt, 1e-4, span);
    }
    std::fs::remove_file(&exact).unwrap();
    check_tensor_forward(arch, &path, &prompt, 5e-2, spans[0]);

    // Through the engine on both forwards: deterministic greedy generation, alone and batched.
    for device in [EngineDevice::Cpu, EngineDevice::CandleCpu] {
        let mut cfg = EngineConfig::new(path.clone());
        cfg.threads = 2;
        cfg.device = device;
        cfg.chat_template = Some(clerk::engine::template::CHATML_TEMPLATE.to_string());
        let engine = Engine::load(cfg).unwrap();
        for (alone, batched) in alone_and_batched(&engine) {
            assert_eq!(batched, alone, "{arch} on {device:?}: batched differs");
        }
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn llama_loads_and_runs() {
    check_arch("llama", 2);
}

#[test]
fn qwen2_loads_and_runs() {
    check_arch("qwen2", 2);
}

#[test]
fn qwen3_loads_and_runs() {
    check_arch("qwen3", 2);
}

#[test]
fn gemma3_loads_and_runs() {
    // Six layers: five sliding-window layers and one global, as Gemma 3 alternates them.
    check_arch("gemma3", 6);
}

#[test]
fn an_unknown_architecture_is_a_clear_error() {
    let dir = tmp_dir();
    let path = write_tiny(
        &Tiny {
            arch: "mamba",
            n_layer: 1,
            exact: false,
        },
        &dir,
    );
    let mut cfg = EngineConfig::new(path.clone());
    cfg.threads = 1;
    let err = Engine::load(cfg)
        .err()
        .expect("an unknown architecture must fail");
    assert!(
        matches!(err, clerk::engine::EngineError::UnsupportedArchitecture(ref a) if a == "mamba"),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_truncated_file_is_a_clear_error() {
    let dir = tmp_dir();
    let path = write_tiny(
        &Tiny {
            arch: "llama",
            n_layer: 1,
            exact: false,
        },
        &dir,
    );
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.join("truncated.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let mut cfg = EngineConfig::new(cut.clone());
    cfg.threads = 1;
    let err = Engine::load(cfg)
        .err()
        .expect("a truncated file must fail")
        .to_string();
    assert!(
        err.contains("truncated.gguf") && err.contains("past the end"),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&cut).unwrap();
}
