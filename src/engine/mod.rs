//! The inference engine.
//!
//! - `gguf`: opens a GGUF file through `memmap2` and reads its metadata.
//! - `tokenizer`: builds a tokenizer from GGUF metadata (gpt2-style BPE or SentencePiece-style).
//! - `template`: renders `tokenizer.chat_template` with minijinja.
//! - `constraint`: grammar-constrained decoding (JSON schemas, Lark grammars) through llguidance.
//! - `sampler`: turns logits into a token (greedy, temperature, top-k/p, min-p, penalties, bias, seed,
//!   logprobs); `stop`: stop strings matched across token boundaries.
//! - `kernels`: quantized matrix × activation kernels (AVX2/FMA with a portable fallback) and the
//!   thread pool they run on.
//! - `model`: the transformer forward for many sequences at once (llama, qwen2, qwen3, gemma3).
//! - `tensor_model`: the same forward on candle tensors for any candle device (the CUDA and Metal
//!   builds; `candle-cpu` runs it here).
//! - `kv`: per-sequence KV caches and the prefix cache shared between sequences.
//! - `scheduler`: the engine thread, its bounded queue, and the [`Engine`] handle.
//! - `embedder`: sentence embeddings from a BERT-family model on candle tensors.
//! - `registry`: resolves `--model` (a path, a manifest name from `models/`, or a hub `repo:file`);
//!   `hub`: fetches hub files into the hub's own cache and checks them (the `hub` feature).

// Defined before the modules so that they all see it.
/// Whether the CPU has every one of the named x86 features: never, off x86.
macro_rules! cpu_has {
    ($($feature:tt),+) => {{
        #[cfg(target_arch = "x86_64")]
        {
            true $(&& std::is_x86_feature_detected!($feature))+
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }};
}

pub mod constraint;
pub mod embedder;
pub mod error;
pub mod gguf;
#[cfg(feature = "hub")]
pub mod hub;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod registry;
pub mod sampler;
pub mod scheduler;
pub mod stop;
pub mod template;
pub mod tensor_model;
pub mod tokenizer;

pub use constraint::Grammar;
pub use embedder::Embedder;
pub use error::EngineError;
pub use registry::resolve_model;
pub use sampler::SamplingParams;
pub use scheduler::{
    Collected, Device, Done, Engine, EngineConfig, EngineStats, Event, FinishReason,
    GenerateRequest, Generation, ModelInfo, TokenLogprob, Usage,
};
pub use template::{ChatMessage, Role};
