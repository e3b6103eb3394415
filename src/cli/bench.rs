//! `clerk bench`: the engine's speed and memory on this machine, as a table or JSON.
//!
//! Each figure is the median of `--repetitions` runs; the aggregate-decode runs go round the
//! concurrencies in turn, and a speed-up over one sequence is the median of the rounds' ratios.
//! Every run starts its prompt with a different token so the prefix cache never serves a run from
//! an earlier one, except where the prefix-cache figure measures exactly that.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::ModelArgs;
use crate::engine::{Engine, Event, GenerateRequest, SamplingParams};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length for the prompt-speed figure.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated for the decode-speed figures.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Concurrent sequences for the aggregate decode figures.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    pub concurrency: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Prompt length and cached-prefix length for the prefix-cache figure.
    #[arg(long, default_value_t = 400)]
    pub prefix_prompt: usize,
    #[arg(long, default_value_t = 350)]
    pub prefix_shared: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure the assistant (the model `clerk`) instead: time to first token and whole answers
    /// for FAQ questions, streamed over loopback HTTP, on the demo shop in --data-dir.
    #[arg(long)]
    pub assistant: bool,
    /// Folder for the assistant benchmark's shop and knowledge base (filled with the demo shop).
    #[arg(long, env = "CLERK_DATA_DIR", default_value = "./clerk-data")]
    pub data_dir: std::path::PathBuf,
    #[command(flatten)]
    pub data_key: super::DataKeyArgs,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub architecture: String,
    pub threads: usize,
    pub load_ms: f64,
    pub prompt_tokens: usize,
    pub prompt_tokens_per_s: f64,
    pub gen_tokens: usize,
    pub decode_tokens_per_s: f64,
    pub ttft_ms: f64,
    pub aggregate_decode: Vec<AggregateFigure>,
    pub prefix_cache: PrefixFigure,
    pub peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub struct AggregateFigure {
    pub sequences: usize,
    pub tokens_per_s: f64,
    /// Against one sequence, when one sequence was among the concurrencies measured.
    pub speedup: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct PrefixFigure {
    pub prompt_tokens: usize,
    pub shared_tokens: usize,
    pub cached_tokens: usize,
    pub uncached_ttft_ms: f64,
    pub cached_ttft_ms: f64,
    pub ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Peak resident memory of this process, from the kernel's high-water mark.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A prompt of exactly `n` tokens of ordinary shop text, starting with a token chosen by `salt`.
fn prompt(engine: &Engine, n: usize, salt: u32) -> anyhow::Result<Vec<u32>> {
    const TEXT: &str =
        "Thank you for shopping with us. Orders placed before noon ship the same day \
        from our warehouse, and most parcels arrive within three to five working days. You can \
        return any unworn item within thirty days for a full refund to the original payment \
        method; exchanges for another size or colour are free. ";
    let unit = engine.tokenizer().encode(TEXT, false)?;
    anyhow::ensure!(!unit.is_empty(), "the tokenizer produced no tokens");
    let mut ids: Vec<u32> = unit.iter().copied().cycle().take(n).collect();
    // Past the special and byte tokens at the start of most vocabularies, where a small one allows.
    let vocab = engine.info().vocab_size as u32;
    let low = 1000.min(vocab / 2);
    ids[0] = low + salt % (vocab - low).max(1);
    Ok(ids)
}

struct Timed {
    ttft: Duration,
    total: Duration,
    tokens: Vec<Instant>,
    cached: usize,
}

fn run_one(engine: &Engine, ids: Vec<u32>, gen: usize) -> anyhow::Result<Timed> {
    let mut g = engine.submit(GenerateRequest {
        prompt: ids,
        sampling: SamplingParams::default(),
        max_tokens: Some(gen),
        stop: vec![],
        ignore_eos: true,
        grammar: None,
    })?;
    let mut tokens = Vec::with_capacity(gen);
    while let Some(ev) = g.blocking_next() {
        match ev {
            Event::Token { .. } => tokens.push(Instant::now()),
            Event::Text(_) => {}
            Event::Done(d) => {
                return Ok(Timed {
                    ttft: d.time_to_first_token,
                    total: d.total,
                    tokens,
                    cached: d.usage.cached_tokens,
                })
            }
            Event::Error(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the engine stopped")
}

/// Steady-state tokens/s with `c` sequences decoding together: tokens produced while all of them were
/// past their prompt and none had finished.
fn aggregate(engine: &Engine, c: usize, gen: usize, salt: u32) -> anyhow::Result<f64> {
    let runs: Vec<anyhow::Result<Timed>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..c)
            .map(|i| {
                let e = engine.clone();
                s.spawn(move || run_one(&e, prompt(&e, 16, salt + i as u32)?, gen))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("bench thread panicked")))
            })
            .collect()
    });
    let runs: Vec<Timed> = runs.into_iter().collect::<anyhow::Result<_>>()?;
    let start = runs.iter().filter_map(|r| r.tokens.first()).max().copied();
    let end = runs.iter().filter_map(|r| r.tokens.last()).min().copied();
    let (Some(start), Some(end)) = (start, end) else {
        anyhow::bail!("no tokens were generated")
    };
    let window = end.saturating_duration_since(start).as_secs_f64();
    let count = runs
        .iter()
        .flat_map(|r| &r.tokens)
        .filter(|&&t| t > start && t <= end)
        .count();
    anyhow::ensure!(
        window > 0.0 && count > 0,
        "the decode window was empty; use more --gen-tokens"
    );
    Ok(count as f64 / window)
}

pub fn measure(a: &BenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(a.repetitions > 0, "--repetitions must be at least 1");
    anyhow::ensure!(
        a.prefix_shared < a.prefix_prompt && a.prompt_tokens > 0 && a.gen_tokens > 1,
        "--prefix-shared must be below --prefix-prompt, and the prompt and generation non-empty"
    );
    let cfg = a.model.engine_config()?;
    let t0 = Instant::now();
    let engine = Engine::load(cfg)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut salt = 0u32;
    let mut next_salt = || {
        salt += 1;
        salt
    };

    // Warm-up: page the weights in and size the scratch buffers.
    run_one(&engine, prompt(&engine, 32, next_salt())?, 4)?;

    let (mut pp, mut tg, mut ttft) = (vec![], vec![], vec![]);
    for _ in 0..a.repetitions {
        let r = run_one(
            &engine,
            prompt(&engine, a.prompt_tokens, next_salt())?,
            a.gen_tokens,
        )?;
        pp.push(a.prompt_tokens as f64 / r.ttft.as_secs_f64());
        let decode = r.total.saturating_sub(r.ttft).as_secs_f64();
        tg.push((r.tokens.len().saturating_sub(1)) as f64 / decode);
        ttft.push(r.ttft.as_secs_f64() * 1e3);
    }

    // Rounds go through every concurrency in turn, so that a slow minute on a shared machine
    // lands on all of them alike; each speed-up is the median of one round's ratios.
    let mut rounds: Vec<Vec<f64>> = vec![vec![]; a.concurrency.len()];
    for _ in 0..a.repetitions {
        for (i, &c) in a.concurrency.iter().enumerate() {
            rounds[i].push(aggregate(&engine, c, a.gen_tokens, next_salt() * 100)?);
        }
    }
    let single = a.concurrency.iter().position(|&c| c == 1);
    let agg = a
        .concurrency
        .iter()
        .zip(&rounds)
        .map(|(&c, v)| AggregateFigure {
            sequences: c,
            tokens_per_s: median(v.clone()),
            speedup: single
                .map(|one| median(v.iter().zip(&rounds[one]).map(|(x, y)| x / y).collect())),
        })
        .collect();

    let (mut unc, mut cac, mut cached_tokens) = (vec![], vec![], 0);
    for _ in 0..a.repetitions {
        let base = prompt(&engine, a.prefix_prompt, next_salt())?;
        let uncached = run_one(&engine, base.clone(), 1)?;
        // Same first `prefix_shared` tokens, different tail: only the shared part can be cached.
        let mut other = base.clone();
        let tail = engine.tokenizer().encode(
            " Could you tell me whether my order has shipped yet, and when it will arrive at my door?",
            false,
        )?;
        for (i, t) in other[a.prefix_shared..].iter_mut().enumerate() {
            *t = tail[i % tail.len()];
        }
        let cached = run_one(&engine, other, 1)?;
        cached_tokens = cached.cached;
        unc.push(uncached.ttft.as_secs_f64() * 1e3);
        cac.push(cached.ttft.as_secs_f64() * 1e3);
    }
    let (u, c) = (median(unc), median(cac));

    Ok(BenchReport {
        model: engine.info().name.clone(),
        architecture: engine.info().architecture.clone(),
        threads: engine.info().forward_threads,
        load_ms,
        prompt_tokens: a.prompt_tokens,
        prompt_tokens_per_s: median(pp),
        gen_tokens: a.gen_tokens,
        decode_tokens_per_s: median(tg),
        ttft_ms: median(ttft),
        aggregate_decode: agg,
        prefix_cache: PrefixFigure {
            prompt_tokens: a.prefix_prompt,
            shared_tokens: a.prefix_shared,
            cached_tokens,
            uncached_ttft_ms: u,
            cached_ttft_ms: c,
            ratio: c / u,
        },
        peak_rss_mb: peak_rss_bytes().map_or(f64::NAN, |b| b as f64 / (1 << 20) as f64),
    })
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.assistant {
        let assistant = super::assistant::open_default(
            a.model.models_dir.as_deref(),
            &a.data_dir,
            &a.data_key.source(),
        )?;
        let r = super::assistant::bench(assistant, a.repetitions.max(1))?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "assistant, {} FAQ questions x {}: time to first token p50 {:.1} ms, p90 {:.1} ms; whole answer p50 {:.1} ms, p90 {:.1} ms",
                r.questions, r.repetitions, r.ttft_ms_p50, r.ttft_ms_p90, r.answer_ms_p50, r.answer_ms_p90
            );
        }
        return Ok(());
    }
    let r = measure(&a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "model            {} ({}), {} threads",
        r.model, r.architecture, r.threads
    );
    println!("load             {:.0} ms", r.load_ms);
    println!(
        "prompt           {:.1} tokens/s ({} tokens)",
        r.prompt_tokens_per_s, r.prompt_tokens
    );
    println!(
        "decode           {:.1} tokens/s ({} tokens)",
        r.decode_tokens_per_s, r.gen_tokens
    );
    println!(
        "first token      {:.1} ms ({}-token prompt)",
        r.ttft_ms, r.prompt_tokens
    );
    for f in &r.aggregate_decode {
        let speedup = f
            .speedup
            .map_or_else(String::new, |x| format!(" ({x:.2}x one sequence)"));
        println!(
            "aggregate x{:<3}   {:.1} tokens/s{speedup}",
            f.sequences, f.tokens_per_s
        );
    }
    let p = &r.prefix_cache;
    println!(
        "prefix cache     first token {:.1} ms cached vs {:.1} ms uncached ({:.0}%; {} of {} tokens cached)",
        p.cached_ttft_ms,
        p.uncached_ttft_ms,
        p.ratio * 100.0,
        p.cached_tokens,
        p.prompt_tokens
    );
    println!("peak RSS         {:.1} MB", r.peak_rss_mb);
    Ok(())
}
