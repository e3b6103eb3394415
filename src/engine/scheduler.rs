//! The engine thread and its handle.
//!
//! [`Engine`] is a cheap `Clone` handle. [`Engine::submit`] puts a request on a bounded queue (a full
//! queue refuses at once with [`EngineError::QueueFull`]) and returns a [`Generation`], the receiving
//! end of that request's own channel. The engine thread admits queued requests between steps, runs one
//! forward per step over every active sequence (prompt chunks and single decode tokens together),
//! samples, and sends each sequence its tokens as they come. Dropping a [`Generation`] cancels its
//! sequence: the thread notices the closed channel before the next step and frees the sequence's cache.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::constraint::{Constraint, Grammar, Guidance};
use super::error::{EngineError, Result};
use super::gguf::GgufFile;
use super::kernels::ThreadPool;
use super::kv::{PrefixCache, SeqKv};
use super::model::{BatchItem, Model, ModelConfig, Scratch};
use super::sampler::{Sampler, SamplingParams};
use super::stop::StopMatcher;
use super::template::{ChatMessage, ChatTemplate};
use super::tensor_model::TensorModel;
use super::tokenizer::Tokenizer;

/// Where the forward runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// clerk's own CPU kernels ([`Model`]).
    #[default]
    Cpu,
    /// The tensor forward ([`TensorModel`]) on candle's CPU ops: what the GPU builds run, on a
    /// machine without a GPU. Slower than `Cpu`; there to test that forward and compare against it.
    CandleCpu,
    /// The tensor forward on an NVIDIA GPU (a build with the `cuda` feature).
    Cuda(usize),
    /// The tensor forward on an Apple GPU (a build with the `metal` feature).
    Metal,
}

impl Device {
    /// The candle device the tensor forward runs on; `None` for clerk's own CPU forward.
    fn candle(self) -> Result<Option<candle_core::Device>> {
        let (made, feature) = match self {
            Device::Cpu => return Ok(None),
            Device::CandleCpu => return Ok(Some(candle_core::Device::Cpu)),
            Device::Cuda(i) => (candle_core::Device::new_cuda(i), "cuda"),
            Device::Metal => (candle_core::Device::new_metal(0), "metal"),
        };
        made.map(Some).map_err(|e| EngineError::InvalidParameter {
            param: "device",
            message: format!(
                "{self:?} is not available: {e} (GPU devices need a build with `--features {feature}` \
                 and the device's driver)"
            ),
        })
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "candle-cpu" => Ok(Device::CandleCpu),
            "metal" => Ok(Device::Metal),
            "cuda" => Ok(Device::Cuda(0)),
            s => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(Device::Cuda(i)),
                _ => Err(format!(
                    "unknown device `{s}` (cpu, candle-cpu, cuda, cuda:N, metal)"
                )),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_path: PathBuf,
    /// A display name for the model (the manifest name or the file stem).
    pub model_name: String,
    /// A `tokenizer.json` to use instead of the GGUF's own vocabulary.
    pub tokenizer_json: Option<PathBuf>,
    /// A chat template to use instead of `tokenizer.chat_template` (models that ship none).
    pub chat_template: Option<String>,
    pub device: Device,
    pub threads: usize,
    /// Sequences decoded together at most.
    pub max_batch: usize,
    /// Requests waiting beyond the active ones before new ones are refused.
    pub queue_capacity: usize,
    /// Caps the model's own context length (KV memory grows with it).
    pub context_length: Option<usize>,
    /// Bytes of KV the prefix cache may keep; 0 disables it.
    pub prefix_cache_bytes: usize,
    /// Prompt tokens computed per step at most, so decoding sequences keep streaming while a long
    /// prompt is processed.
    pub prefill_chunk: usize,
}

impl EngineConfig {
    pub fn new(model_path: PathBuf) -> Self {
        let model_name = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        Self {
            model_path,
            model_name,
            tokenizer_json: None,
            chat_template: None,
            device: Device::Cpu,
            threads: default_threads(),
            max_batch: 16,
            queue_capacity: 64,
            context_length: None,
            prefix_cache_bytes: 64 << 20,
            prefill_chunk: 512,
        }
    }
}

/// What a caller asks the engine to generate.
#[derive(Debug, Clone, Default)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// None: until end of sequence or the end of the context.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// Only tokens this grammar allows are sampled; the generation ends when it is complete.
    pub grammar: Option<Grammar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the end of the context.
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone)]
pub struct Done {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// From submission to the first generated token.
    pub time_to_first_token: Duration,
    pub total: Duration,
}

#[derive(Debug)]
pub enum Event {
    /// One generated token, and the text it completes (possibly empty: held back for UTF-8 or a
    /// possible stop string). End-of-sequence tokens are not sent.
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// Text released at the end of a generation that no new token carries (held back until then).
    Text(String),
    Done(Done),
    Error(EngineError),
}

/// The receiving end of one request. Drop it to cancel.
pub struct Generation {
    rx: UnboundedReceiver<Event>,
    pub prompt_tokens: usize,
}

impl Generation {
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// For callers outside an async runtime (the CLI, tests, benchmarks).
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.rx.blocking_recv()
    }

    /// Collects the whole generation: its tokens, its text, and how it ended.
    pub fn collect_blocking(mut self) -> Result<Collected> {
        let mut out = Collected::default();
        while let Some(ev) = self.blocking_next() {
            match ev {
                Event::Token { id, text, logprob } => {
                    out.tokens.push(id);
                    out.text.push_str(&text);
                    out.logprobs.extend(logprob);
                }
                Event::Text(text) => out.text.push_str(&text),
                Event::Done(d) => {
                    out.done = Some(d);
                    return Ok(out);
                }
                Event::Error(e) => return Err(e),
            }
        }
        Err(EngineError::Stopped)
    }
}

#[derive(Debug, Default)]
pub struct Collected {
    pub tokens: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub done: Option<Done>,
}

/// Counters the server exports; updated by the engine thread.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub queued: AtomicUsize,
    pub active: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub prefix_misses: AtomicU64,
    pub cancelled: AtomicU64,
    pub steps: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub path: PathBuf,
    pub architecture: String,
    pub context_length: usize,
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_embd: usize,
    pub file_bytes: u64,
    pub load_time: Duration,
    /// CPU threads the forward really runs on: clerk's pool on `cpu`, candle's pool on
    /// `candle-cpu` (which may differ from the configured count: see [`size_candle_cpu_threads`]),
    /// 1 on a GPU (the engine thread that drives it).
    pub forward_threads: usize,
}

/// The forward's CPU threads when none are configured: one per core this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Sizes candle's CPU thread pools, which the tensor forward runs on under `candle-cpu`, to `n`.
///
/// candle sizes its pools once per process, from `CANDLE_NUM_THREADS` (quantized matmuls) and
/// `RAYON_NUM_THREADS` (f32 matmuls), the first time it runs a CPU op; without this they get one
/// thread per physical core whatever [`EngineConfig::threads`] says. So it must run before any
/// engine loads.
///
/// # Safety
/// It writes the process environment, which is only sound while no other thread runs (see
/// `std::env::set_var`): call it first thing in `main`.
pub unsafe fn size_candle_cpu_threads(n: usize) {
    let n = n.max(1).to_string();
    std::env::set_var("CANDLE_NUM_THREADS", &n);
    std::env::set_var("RAYON_NUM_THREADS", &n);
}

struct Job {
    req: GenerateRequest,
    constraint: Option<Constraint>,
    tx: UnboundedSender<Event>,
    submitted: Instant,
}

struct Inner {
    queue: SyncSender<Job>,
    queue_capacity: usize,
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    info: ModelInfo,
    stats: Arc<EngineStats>,
    /// Built on the first request with a grammar; a tokenizer it can't use is remembered as such.
    guidance: OnceLock<std::result::Result<Arc<Guidance>, String>>,
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Loads the model and starts the engine thread.
    pub fn load(cfg: EngineConfig) -> Result<Self> {
        if cfg.threads == 0 || cfg.max_batch == 0 || cfg.prefill_chunk == 0 {
            return Err(EngineError::InvalidParameter {
                param: "engine config",
                message: "threads, max_batch and prefill_chunk must be at least 1".into(),
            });
        }
        let started = Instant::now();
        let candle = cfg.device.candle()?;
        let gguf = match candle {
            None => GgufFile::open(&cfg.model_path)?,
            Some(_) => GgufFile::open_mapped(&cfg.model_path)?,
        };
        let tokenizer = match &cfg.tokenizer_json {
            Some(p) => Tokenizer::from_json_file(p)?,
            None => Tokenizer::from_gguf(&gguf)?,
        };
        let template_src = match &cfg.chat_template {
            Some(t) => Some(t.clone()),
            None => gguf
                .get_str("tokenizer.chat_template")
                .ok()
                .map(str::to_string),
        };
        let piece = |id: Option<u32>| {
            id.and_then(|i| tokenizer.decode(&[i], false).ok())
                .unwrap_or_default()
        };
        let bos = piece(tokenizer.bos_id());
        let eos = piece(tokenizer.eos_ids().first().copied());
        let template = template_src
            .map(|src| ChatTemplate::new(&src, &bos, &eos))
            .transpose()?;
        let mut model = match candle {
            None => Forward::Cpu(Model::load(&gguf)?),
            Some(device) => Forward::Tensor(TensorModel::load(&gguf, device)?),
        };
        if let Some(cap) = cfg.context_length {
            let mc = model.cfg_mut();
            mc.context_length = mc.context_length.min(cap);
        }
        // The tensor forward runs on its device (on the CPU, on candle's own threads): no pool.
        let pool = ThreadPool::new(match model {
            Forward::Cpu(_) => cfg.threads,
            Forward::Tensor(_) => 1,
        });
        let forward_threads = match (&model, cfg.device) {
            (Forward::Cpu(_), _) => pool.n_threads(),
            // Asking for candle's pool starts it now rather than at the first matmul; its caller
            // takes part in the work, as ours does.
            (Forward::Tensor(_), Device::CandleCpu) => {
                candle_core::utils::barrier_pool().n_workers() + 1
            }
            (Forward::Tensor(_), _) => 1,
        };
        if cfg.device == Device::CandleCpu && forward_threads != cfg.threads {
            tracing::warn!(
                "candle's CPU pool runs {} threads, not the {} asked for: it was sized before this \
                 engine loaded (size_candle_cpu_threads)",
                forward_threads,
                cfg.threads
            );
        }
        let mc: &ModelConfig = model.cfg();
        let info = ModelInfo {
            name: cfg.model_name.clone(),
            path: cfg.model_path.clone(),
            architecture: format!("{:?}", mc.arch).to_lowercase(),
            context_length: mc.context_length,
            vocab_size: mc.vocab_size,
            n_layer: mc.n_layer,
            n_embd: mc.n_embd,
            file_bytes: std::fs::metadata(&cfg.model_path).map_or(0, |m| m.len()),
            load_time: started.elapsed(),
            forward_threads,
        };
        let tokenizer = Arc::new(tokenizer);
        let stats = Arc::new(EngineStats::default());
        let (queue, rx) = mpsc::sync_channel(cfg.queue_capacity);
        let worker = Worker {
            model,
            tokenizer: tokenizer.clone(),
            pool,
            prefix: Arc::new(Mutex::new(PrefixCache::new(cfg.prefix_cache_bytes))),
            stats: stats.clone(),
            max_batch: cfg.max_batch,
            prefill_chunk: cfg.prefill_chunk,
        };
        std::thread::Builder::new()
            .name("clerk-engine".into())
            .spawn(move || worker.run(rx))?;
        Ok(Self {
            inner: Arc::new(Inner {
                queue,
                queue_capacity: cfg.queue_capacity,
                tokenizer,
                template,
                info,
                stats,
                guidance: OnceLock::new(),
            }),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    pub fn stats(&self) -> &EngineStats {
        &self.inner.stats
    }

    pub fn template(&self) -> Option<&ChatTemplate> {
        self.inner.template.as_ref()
    }

    /// Renders `messages` with the model's chat template and tokenizes the result.
    pub fn chat_prompt(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<Vec<u32>> {
        let template = self.template().ok_or_else(|| {
            EngineError::Template(format!(
                "model `{}` has no chat template; give one with --chat-template",
                self.inner.info.name
            ))
        })?;
        let text = template.render(messages, tools, true)?;
        // The template writes BOS itself where the model wants one.
        self.inner.tokenizer.encode(&text, false)
    }

    /// Queues a request. Errors at once for a prompt that cannot fit, bad parameters, or a full queue.
    pub fn submit(&self, req: GenerateRequest) -> Result<Generation> {
        let ctx = self.inner.info.context_length;
        let prompt_tokens = req.prompt.len();
        if prompt_tokens == 0 {
            return Err(EngineError::InvalidParameter {
                param: "prompt",
                message: "the prompt is empty".into(),
            });
        }
        req.sampling.validate(self.inner.info.vocab_size)?;
        if let Some(&bad) = req
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.inner.info.vocab_size)
        {
            return Err(EngineError::InvalidParameter {
                param: "prompt",
                message: format!("token id {bad} is outside the vocabulary"),
            });
        }
        let wanted = req.max_tokens.unwrap_or(1).max(1);
        if prompt_tokens + wanted > ctx {
            return Err(EngineError::ContextOverflow {
                prompt_tokens,
                max_tokens: wanted,
                context_length: ctx,
            });
        }
        // Compiled here, on the caller's thread, so a bad schema is the caller's error at once and
        // the engine thread never spends a step on it.
        let constraint = req
            .grammar
            .as_ref()
            .map(|g| self.guidance()?.constraint(g))
            .transpose()?;
        let (tx, rx) = unbounded_channel();
        let job = Job {
            req,
            constraint,
            tx,
            submitted: Instant::now(),
        };
        match self.inner.queue.try_send(job) {
            Ok(()) => {
                self.inner.stats.queued.fetch_add(1, Ordering::Relaxed);
                Ok(Generation { rx, prompt_tokens })
            }
            Err(TrySendError::Full(_)) => Err(EngineError::QueueFull {
                capacity: self.inner.queue_capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(EngineError::Stopped),
        }
    }

    fn guidance(&self) -> Result<Arc<Guidance>> {
        self.inner
            .guidance
            .get_or_init(|| {
                Guidance::new(self.inner.tokenizer.clone(), self.inner.info.vocab_size)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(EngineError::Grammar)
    }

    /// Tokenizes, submits and collects a plain-text prompt; for the CLI and tests.
    pub fn generate_text(&self, prompt: &str, req: GenerateRequest) -> Result<Collected> {
        let ids = self.inner.tokenizer.encode(prompt, true)?;
        self.submit(GenerateRequest { prompt: ids, ..req })?
            .collect_blocking()
    }
}

/// The forward the engine thread runs: clerk's own CPU kernels, or the tensor forward on a candle
/// device.
enum Forward {
    Cpu(Model),
    Tensor(TensorModel),
}

impl Forward {
    fn cfg(&self) -> &ModelConfig {
        match self {
            Forward::Cpu(m) => &m.cfg,
            Forward::Tensor(m) => &m.cfg,
        }
    }

    fn cfg_mut(&mut self) -> &mut ModelConfig {
        match self {
            Forward::Cpu(m) => &mut m.cfg,
            Forward::Tensor(m) => &mut m.cfg,
        }
    }

    fn forward(
        &self,
        batch: &mut [BatchItem<'_>],
        scratch: &mut Scratch,
        pool: &ThreadPool,
    ) -> Result<Vec<f32>> {
        match self {
            Forward::Cpu(m) => m.forward(batch, scratch, pool),
            Forward::Tensor(m) => m.forward(batch),
        }
    }

    /// Makes every computed position of `kv` readable from host memory, for the prefix cache.
    fn sync_host(&self, kv: &mut SeqKv) -> Result<()> {
        match self {
            Forward::Cpu(_) => Ok(()),
            Forward::Tensor(m) => m.sync_host(kv),
        }
    }
}

struct Worker {
    model: Forward,
    tokenizer: Arc<Tokenizer>,
    pool: ThreadPool,
    prefix: Arc<Mutex<PrefixCache>>,
    stats: Arc<EngineStats>,
    max_batch: usize,
    prefill_chunk: usize,
}

struct Active<'t> {
    req: GenerateRequest,
    tx: UnboundedSender<Event>,
    kv: SeqKv,
    /// Prompt tokens already in `kv`.
    prompt_done: usize,
    cached: usize,
    /// The last sampled token, not yet in `kv`.
    pending: Option<u32>,
    pending_buf: [u32; 1],
    context: Vec<u32>,
    sampler: Sampler,
    constraint: Option<Constraint>,
    stream: super::tokenizer::DecodeStream<'t>,
    stop: StopMatcher,
    max_new: usize,
    submitted: Instant,
    first_token: Option<Duration>,
}

impl<'t> Active<'t> {
    fn generated(&self) -> usize {
        self.context.len() - self.req.prompt.len()
    }

    /// Releases text held back for UTF-8 completion or a possible stop string.
    fn flush(&mut self) {
        let tail = self.stream.finish().ok().flatten().unwrap_or_default();
        let out = self.stop.push(&tail);
        let mut text = out.emit;
        if !out.stopped {
            text.push_str(&self.stop.finish());
        }
        if !text.is_empty() {
            let _ = self.tx.send(Event::Text(text));
        }
    }

    fn send_done(&self, reason: FinishReason) {
        let now = self.submitted.elapsed();
        let _ = self.tx.send(Event::Done(Done {
            finish_reason: reason,
            usage: Usage {
                prompt_tokens: self.req.prompt.len(),
                completion_tokens: self.generated(),
                cached_tokens: self.cached,
            },
            time_to_first_token: self.first_token.unwrap_or(now),
            total: now,
        }));
    }
}

impl Worker {
    fn run(self, rx: Receiver<Job>) {
        let tokenizer = self.tokenizer.clone();
        let mut active: Vec<Active<'_>> = Vec::new();
        let mut scratch = Scratch::default();
        let mut open = true;
        loop {
            if active.is_empty() {
                if !open {
                    return;
                }
                match rx.recv() {
                    Ok(job) => self.admit(job, &tokenizer, &mut active),
                    Err(_) => return,
                }
            }
            while open && active.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(job) => self.admit(job, &tokenizer, &mut active),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            let before = active.len();
            active.retain(|a| !a.tx.is_closed());
            let dropped = before - active.len();
            if dropped > 0 {
                self.stats
                    .cancelled
                    .fetch_add(dropped as u64, Ordering::Relaxed);
            }
            self.stats.active.store(active.len(), Ordering::Relaxed);
            if active.is_empty() {
                continue;
            }
            self.step(&mut active, &mut scratch);
            self.stats.steps.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn admit<'t>(&self, job: Job, tokenizer: &'t Tokenizer, active: &mut Vec<Active<'t>>) {
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        if job.tx.is_closed() {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let cfg = self.model.cfg();
        let mut kv = SeqKv::new(cfg.n_layer, cfg.kv_dim());
        let cached = match self.prefix.lock() {
            Ok(mut pc) => {
                let n = pc.restore(&job.req.prompt, &mut kv);
                if n > 0 {
                    self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.prefix_misses.fetch_add(1, Ordering::Relaxed);
                }
                n
            }
            Err(_) => 0,
        };
        let room = cfg.context_length.saturating_sub(job.req.prompt.len());
        let max_new = job.req.max_tokens.unwrap_or(room).min(room);
        self.stats
            .prompt_tokens
            .fetch_add(job.req.prompt.len() as u64, Ordering::Relaxed);
        self.stats
            .cached_prompt_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
        active.push(Active {
            sampler: Sampler::new(job.req.sampling.clone()),
            // Constrained output ends where its grammar does: a stop string would cut a tool
            // call or a JSON document short of parsing, which the constraint promises it does.
            stop: StopMatcher::new(if job.constraint.is_some() {
                Vec::new()
            } else {
                job.req.stop.clone()
            }),
            constraint: job.constraint,
            context: job.req.prompt.clone(),
            stream: tokenizer.decode_stream(true),
            req: job.req,
            tx: job.tx,
            kv,
            prompt_done: cached,
            cached,
            pending: None,
            pending_buf: [0],
            max_new,
            submitted: job.submitted,
            first_token: None,
        });
    }

    fn step(&self, active: &mut Vec<Active<'_>>, scratch: &mut Scratch) {
        // Every decoding sequence gets its token; prompt chunks share what is left of the budget.
        let mut budget = self.prefill_chunk;
        let mut plan: Vec<Option<Work>> = active
            .iter()
            .map(|a| a.pending.map(|_| Work::Decode))
            .collect();
        for (a, w) in active.iter().zip(plan.iter_mut()) {
            if w.is_none() && budget > 0 {
                let n = (a.req.prompt.len() - a.prompt_done).min(budget);
                budget -= n;
                *w = Some(Work::Prefill(n));
            }
        }
        let mut batch = Vec::with_capacity(active.len());
        let mut order = Vec::with_capacity(active.len());
        for (i, (a, w)) in active.iter_mut().zip(&plan).enumerate() {
            let Some(w) = *w else { continue };
            let Active {
                kv,
                req,
                pending_buf,
                prompt_done,
                pending,
                ..
            } = a;
            match w {
                Work::Decode => {
                    pending_buf[0] = pending.unwrap_or(0);
                    batch.push(BatchItem {
                        kv,
                        tokens: &pending_buf[..],
                        want_logits: true,
                    });
                }
                Work::Prefill(n) => {
                    let end = *prompt_done + n;
                    batch.push(BatchItem {
                        kv,
                        tokens: &req.prompt[*prompt_done..end],
                        want_logits: end == req.prompt.len(),
                    });
                }
            }
            order.push((i, w));
        }
        let result = self.model.forward(&mut batch, scratch, &self.pool);
        drop(batch);
        let mut finished = vec![false; active.len()];
        match result {
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "forward step failed");
                for &(i, _) in &order {
                    let _ = active[i]
                        .tx
                        .send(Event::Error(EngineError::Generation(msg.clone())));
                    finished[i] = true;
                }
            }
            Ok(mut logits) => {
                let vocab = self.model.cfg().vocab_size;
                let mut row = 0;
                for &(i, w) in &order {
                    let a = &mut active[i];
                    match w {
                        Work::Decode => a.pending = None,
                        Work::Prefill(n) => {
                            a.prompt_done += n;
                            if a.prompt_done < a.req.prompt.len() {
                                continue;
                            }
                            match self.model.sync_host(&mut a.kv) {
                                Ok(()) => {
                                    if let Ok(mut pc) = self.prefix.lock() {
                                        pc.insert(&a.req.prompt, &a.kv);
                                    }
                                }
                                // The sequence goes on; only its prompt is not offered to the cache.
                                Err(e) => tracing::warn!(error = %e, "prompt not cached"),
                            }
                        }
                    }
                    let l = &mut logits[row * vocab..(row + 1) * vocab];
                    row += 1;
                    finished[i] = self.emit(a, l);
                }
            }
        }
        let mut i = 0;
        active.retain(|_| {
            i += 1;
            !finished[i - 1]
        });
    }

    /// Samples the next token of `a` and sends it; returns whether the sequence is finished.
    fn emit(&self, a: &mut Active<'_>, logits: &mut [f32]) -> bool {
        if let Some(c) = &mut a.constraint {
            if let Err(e) = c.mask(logits) {
                let _ = a.tx.send(Event::Error(e));
                return true;
            }
        }
        let s = a.sampler.sample(logits, &a.context, a.req.prompt.len());
        if a.first_token.is_none() {
            a.first_token = Some(a.submitted.elapsed());
        }
        a.context.push(s.token);
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        if !a.req.ignore_eos && self.tokenizer.eos_ids().contains(&s.token) {
            a.flush();
            a.send_done(FinishReason::Stop);
            return true;
        }
        let mut grammar_done = false;
        if let Some(c) = &mut a.constraint {
            if let Err(e) = c.commit(s.token) {
                let _ = a.tx.send(Event::Error(e));
                return true;
            }
            grammar_done = c.is_finished();
        }
        let piece = match a.stream.step(s.token) {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                let _ = a.tx.send(Event::Error(e));
                return true;
            }
        };
        let out = a.stop.push(&piece);
        let logprob = a.req.sampling.logprobs.map(|_| TokenLogprob {
            logprob: s.logprob,
            top: s.top_logprobs,
        });
        let _ = a.tx.send(Event::Token {
            id: s.token,
            text: out.emit,
            logprob,
        });
        if out.stopped {
            a.send_done(FinishReason::Stop);
            return true;
        }
        if grammar_done {
            a.flush();
            a.send_done(FinishReason::Stop);
            return true;
        }
        if a.generated() >= a.max_new {
            a.flush();
            a.send_done(FinishReason::Length);
            return true;
        }
        a.pending = Some(s.token);
        false
    }
}

#[derive(Debug, Clone, Copy)]
enum Work {
    Decode,
    Prefill(usize),
}
