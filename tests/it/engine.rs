//! The engine end to end with real weights: determinism, batching, cancellation, overflow, the
//! prefix cache and the bounded queue.

use std::time::Duration;

use clerk::engine::{
    ChatMessage, Device, Engine, EngineConfig, EngineError, Event, FinishReason, GenerateRequest,
    Grammar, SamplingParams,
};

use crate::common::model_path;

fn smollm(configure: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut cfg = EngineConfig::new(model_path("smollm2-135m-instruct"));
    cfg.threads = 2;
    configure(&mut cfg);
    Engine::load(cfg).expect("load SmolLM2")
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        sampling: SamplingParams::default(),
        max_tokens: Some(max_tokens),
        stop: vec![],
        ignore_eos: false,
        grammar: None,
    }
}

fn chat(engine: &Engine, text: &str) -> Vec<u32> {
    engine
        .chat_prompt(&[ChatMessage::user(text.to_string())], None)
        .expect("render chat prompt")
}

/// A question whose greedy answer has clear logit margins (≥ 0.45 at every token in llama.cpp), so
/// small numeric differences between implementations cannot flip it.
const QUESTION: &str = "What is the capital of France? Answer in one word.";

/// llama.cpp's greedy tokens for [`QUESTION`] in SmolLM2's chat template ("The capital of France is
/// Paris"), from its C API on the same GGUF: the reference our forward must reproduce.
const LLAMA_CPP_ANSWER: [u32; 6] = [504, 3575, 282, 4649, 314, 7042];

#[test]
fn greedy_is_deterministic_and_answers_sensibly() {
    answers_like_llama_cpp(Device::Cpu);
}

fn answers_like_llama_cpp(device: Device) {
    let engine = smollm(|c| c.device = device);
    let prompt = chat(&engine, QUESTION);
    let a = engine
        .submit(greedy(prompt.clone(), 24))
        .unwrap()
        .collect_blocking()
        .unwrap();
    let b = engine
        .submit(greedy(prompt, 24))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens[..6], LLAMA_CPP_ANSWER, "answer: {:?}", a.text);
    assert!(a.text.contains("Paris"), "unexpected answer: {:?}", a.text);
    let done = a.done.unwrap();
    assert!(done.usage.completion_tokens > 0);
}

#[test]
fn batched_decoding_matches_each_sequence_alone() {
    batched_matches_alone(Device::Cpu);
}

fn batched_matches_alone(device: Device) {
    let engine = smollm(|c| {
        c.prefix_cache_bytes = 0;
        c.device = device;
    });
    // The last is over `ATTN_SPAN` (256) tokens, so its attention is split into spans and merged.
    let long = format!(
        "{} Which of these does the shop sell?",
        "Our shop sells tents, stoves, kettles and boots for the trail. ".repeat(30)
    );
    let questions = [
        "What is the capital of France?",
        "Write a haiku about shoes.",
        "How do I return a parcel?",
        "Name three colours.",
        long.as_str(),
    ];
    let prompts: Vec<Vec<u32>> = questions.iter().map(|q| chat(&engine, q)).collect();
    assert!(prompts[4].len() > clerk::engine::model::ATTN_SPAN + 20);
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            engine
                .submit(greedy(p.clone(), 20))
                .unwrap()
                .collect_blocking()
                .unwrap()
                .tokens
        })
        .collect();
    // Submit them all before reading any, so they are admitted into the same steps.
    let gens: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(greedy(p.clone(), 20)).unwrap())
        .collect();
    let together: Vec<Vec<u32>> = gens
        .into_iter()
        .map(|g| g.collect_blocking().unwrap().tokens)
        .collect();
    assert_eq!(alone, together);
}

#[test]
fn a_cached_prefix_gives_the_same_tokens() {
    cached_matches_uncached(Device::Cpu);
}

/// The tensor forward (what the CUDA and Metal builds run) on candle's CPU ops: the same answer,
/// batched = alone, and a prefix restored from the (host) cache into its device KV = uncached.
#[test]
fn the_tensor_forward_answers_batches_and_caches_like_the_cpu_forward() {
    answers_like_llama_cpp(Device::CandleCpu);
    batched_matches_alone(Device::CandleCpu);
    cached_matches_uncached(Device::CandleCpu);
}

/// On a GPU, a row's result may depend on the batch's shape (the kernels chosen differ), so only the
/// answer is checked there, which has clear margins.
#[cfg(feature = "cuda")]
#[test]
fn the_tensor_forward_answers_on_cuda() {
    answers_like_llama_cpp(Device::Cuda(0));
}

#[cfg(not(any(feature = "cuda", feature = "metal")))]
#[test]
fn a_gpu_device_in_a_build_without_it_is_a_clear_error() {
    for device in [Device::Cuda(0), Device::Metal] {
        let mut cfg = EngineConfig::new(model_path("smollm2-135m-instruct"));
        cfg.device = device;
        match Engine::load(cfg) {
            Err(EngineError::InvalidParameter { param, message }) => {
                assert_eq!(param, "device");
                assert!(message.contains("--features"), "{message}");
            }
            Err(e) => panic!("wrong error for {device:?}: {e}"),
            Ok(_) => panic!("{device:?} loaded in a build without it"),
        }
    }
}

fn cached_matches_uncached(device: Device) {
    let uncached = smollm(|c| {
        c.prefix_cache_bytes = 0;
        c.device = device;
    });
    let cached = smollm(|c| c.device = device);
    let system =
        "You are the shop assistant of a small outdoor-gear shop. Answer briefly and politely. \
        Orders ship within two days; returns are accepted within thirty days of delivery.";
    let msgs = |q: &str| {
        vec![
            ChatMessage::system(system.to_string()),
            ChatMessage::user(q.to_string()),
        ]
    };
    let p1 = cached
        .chat_prompt(&msgs("Do you sell tents?"), None)
        .unwrap();
    let p2 = cached
        .chat_prompt(&msgs("When will my order ship?"), None)
        .unwrap();
    let want = uncached
        .submit(greedy(p2.clone(), 16))
        .unwrap()
        .collect_blocking()
        .unwrap();
    cached
        .submit(greedy(p1, 4))
        .unwrap()
        .collect_blocking()
        .unwrap();
    let got = cached
        .submit(greedy(p2, 16))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert!(
        got.done.as_ref().unwrap().usage.cached_tokens >= 32,
        "the shared system prompt was not reused"
    );
    assert_eq!(want.tokens, got.tokens);
}

#[test]
fn a_prompt_over_the_context_is_refused_before_generation() {
    let engine = smollm(|c| c.context_length = Some(64));
    let long: Vec<u32> = engine
        .tokenizer()
        .encode(&"shoes and socks ".repeat(40), false)
        .unwrap();
    assert!(long.len() > 64);
    match engine.submit(greedy(long, 8)) {
        Err(EngineError::ContextOverflow {
            prompt_tokens,
            context_length,
            ..
        }) => {
            assert!(prompt_tokens > 64);
            assert_eq!(context_length, 64);
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an overflowing prompt was accepted"),
    }
    // Fits the prompt but not the requested tokens: also refused up front.
    let short = engine.tokenizer().encode("hello there", false).unwrap();
    assert!(matches!(
        engine.submit(greedy(short, 100)),
        Err(EngineError::ContextOverflow { .. })
    ));
}

#[test]
fn dropping_a_stream_cancels_it_and_frees_its_slot() {
    let engine = smollm(|c| c.max_batch = 1);
    let prompt = chat(&engine, "Tell me a very long story about a lighthouse.");
    let mut first = engine
        .submit(GenerateRequest {
            ignore_eos: true,
            ..greedy(prompt.clone(), 2000)
        })
        .unwrap();
    assert!(matches!(first.blocking_next(), Some(Event::Token { .. })));
    drop(first);
    // With one slot, this only finishes if the cancelled sequence left it.
    let second = engine
        .submit(greedy(prompt, 4))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(second.done.unwrap().finish_reason, FinishReason::Length);
    let stats = engine.stats();
    assert_eq!(
        stats.cancelled.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_full_queue_refuses_at_once() {
    let engine = smollm(|c| {
        c.max_batch = 1;
        c.queue_capacity = 1;
    });
    let prompt = chat(&engine, "Count from one to one hundred.");
    let long = || GenerateRequest {
        ignore_eos: true,
        ..greedy(prompt.clone(), 1000)
    };
    let mut running = engine.submit(long()).unwrap();
    assert!(matches!(running.blocking_next(), Some(Event::Token { .. })));
    let _waiting = engine.submit(long()).unwrap();
    let started = std::time::Instant::now();
    match engine.submit(long()) {
        Err(EngineError::QueueFull { capacity }) => assert_eq!(capacity, 1),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a third request was queued beyond capacity"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refusal was not immediate"
    );
}

#[test]
fn stop_strings_end_generation_and_are_not_emitted() {
    let engine = smollm(|_| {});
    let prompt = chat(&engine, QUESTION);
    let full = engine
        .submit(greedy(prompt.clone(), 24))
        .unwrap()
        .collect_blocking()
        .unwrap();
    let cut = full.text.find("Paris").expect("the answer names Paris");
    let req = GenerateRequest {
        stop: vec!["Paris".into()],
        ..greedy(prompt, 24)
    };
    let stopped = engine.submit(req).unwrap().collect_blocking().unwrap();
    assert_eq!(stopped.text, full.text[..cut]);
    assert_eq!(stopped.done.unwrap().finish_reason, FinishReason::Stop);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let engine = smollm(|_| {});
    let prompt = chat(&engine, "Suggest a name for a shoe shop.");
    let req = |seed| GenerateRequest {
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            logprobs: Some(3),
            ..Default::default()
        },
        ..greedy(prompt.clone(), 16)
    };
    let a = engine.submit(req(7)).unwrap().collect_blocking().unwrap();
    let b = engine.submit(req(7)).unwrap().collect_blocking().unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.logprobs.len(), a.tokens.len());
    assert!(a
        .logprobs
        .iter()
        .all(|l| l.top.len() == 3 && l.logprob <= 0.0));
}

#[test]
fn gemma3_continues_text_correctly() {
    let mut cfg = EngineConfig::new(model_path("gemma3-270m"));
    cfg.threads = 2;
    cfg.context_length = Some(2048);
    let engine = Engine::load(cfg).expect("load Gemma 3");
    let out = engine
        .generate_text(
            "The Eiffel Tower is located in the city of",
            greedy(vec![], 6),
        )
        .unwrap();
    // llama.cpp's greedy tokens on the same GGUF: " Paris, France." (margins ≥ 0.8 logits).
    assert_eq!(
        out.tokens[..4],
        [9079, 236764, 7001, 236761],
        "continuation: {:?}",
        out.text
    );
    // Constrained decoding over a SentencePiece vocabulary with byte fallback: Chinese and emoji
    // in the allowed strings must come out whole.
    let choices = ["巴黎", "Paris 🗼", "París"];
    let out = engine
        .generate_text(
            "La tour Eiffel se trouve à",
            GenerateRequest {
                grammar: Some(Grammar::JsonSchema(serde_json::json!({
                    "type": "object",
                    "properties": { "city": { "enum": choices } },
                    "required": ["city"],
                    "additionalProperties": false,
                }))),
                ..greedy(vec![], 40)
            },
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out.text).expect(&out.text);
    assert!(choices.contains(&v["city"].as_str().unwrap()), "{v}");
}

/// A schema with an enum, a bounded integer, a bounded string and a required array: sampled at a
/// high temperature, every output still parses and satisfies it, and the grammar ends the generation.
#[test]
fn a_json_schema_constrains_every_sample() {
    let engine = smollm(|c| c.max_batch = 4);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "intent": { "enum": ["order_status", "return", "complaint"] },
            "order": { "type": "integer", "minimum": 1, "maximum": 9999 },
            "note": { "type": "string", "maxLength": 40 },
            "tags": { "type": "array", "items": { "type": "string", "maxLength": 12 }, "maxItems": 3 }
        },
        "required": ["intent", "order", "note", "tags"],
        "additionalProperties": false
    });
    let prompt = chat(
        &engine,
        "Where is my order 1234? It is late. Reply in JSON.",
    );
    let gens: Vec<_> = (0..4)
        .map(|seed| {
            engine
                .submit(GenerateRequest {
                    sampling: SamplingParams {
                        temperature: 1.3,
                        seed: Some(seed),
                        ..Default::default()
                    },
                    grammar: Some(Grammar::JsonSchema(schema.clone())),
                    ..greedy(prompt.clone(), 200)
                })
                .unwrap()
        })
        .collect();
    for g in gens {
        let out = g.collect_blocking().unwrap();
        assert_eq!(
            out.done.unwrap().finish_reason,
            FinishReason::Stop,
            "{}",
            out.text
        );
        let v: serde_json::Value = serde_json::from_str(&out.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", out.text));
        let intent = v["intent"].as_str().unwrap();
        assert!(
            ["order_status", "return", "complaint"].contains(&intent),
            "{v}"
        );
        let order = v["order"].as_i64().unwrap();
        assert!((1..=9999).contains(&order), "{v}");
        assert!(v["note"].as_str().unwrap().chars().count() <= 40, "{v}");
        let tags = v["tags"].as_array().unwrap();
        assert!(tags.len() <= 3, "{v}");
        assert_eq!(v.as_object().unwrap().len(), 4, "{v}");
    }
}

#[test]
fn a_lark_grammar_constrains_and_a_bad_schema_is_refused_at_submit() {
    let engine = smollm(|_| {});
    let prompt = chat(&engine, "Pick a colour.");
    let out = engine
        .submit(GenerateRequest {
            grammar: Some(Grammar::Lark(
                r#"start: "colour: " ("red" | "green" | "blue")"#.into(),
            )),
            ..greedy(prompt.clone(), 50)
        })
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert!(
        ["colour: red", "colour: green", "colour: blue"].contains(&out.text.as_str()),
        "{:?}",
        out.text
    );
    assert_eq!(out.done.unwrap().finish_reason, FinishReason::Stop);
    for bad in [
        Grammar::JsonSchema(serde_json::json!({ "type": "no-such-type" })),
        Grammar::Lark("start: (".into()),
    ] {
        match engine.submit(GenerateRequest {
            grammar: Some(bad.clone()),
            ..greedy(prompt.clone(), 10)
        }) {
            Err(EngineError::Grammar(msg)) => assert!(!msg.is_empty()),
            Err(e) => panic!("{bad:?}: wrong error {e}"),
            Ok(_) => panic!("{bad:?} was accepted"),
        }
    }
}

/// `clerk bench --json` on the real model, with small sizes: every figure is there and plausible,
/// and `threads` is what the forward really ran on. candle sizes its CPU pool once per process
/// from the environment, one thread per physical core by default, so `--threads` only reaches it
/// because `clerk` sets that up first; 1 and 2 threads can't both match the default.
#[test]
fn bench_reports_its_figures_and_the_threads_it_ran_on() {
    let model = model_path("smollm2-135m-instruct");
    for (device, threads) in [("cpu", 1), ("candle-cpu", 1), ("candle-cpu", 2)] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_clerk"))
            .args(["bench", "--json", "--model"])
            .arg(&model)
            .args(["--device", device, "--threads", &threads.to_string()])
            .args([
                "--prompt-tokens",
                "16",
                "--gen-tokens",
                "8",
                "--concurrency",
                "1,2",
            ])
            .args([
                "--repetitions",
                "1",
                "--prefix-prompt",
                "48",
                "--prefix-shared",
                "32",
            ])
            .env_remove("CANDLE_NUM_THREADS")
            .env_remove("RAYON_NUM_THREADS")
            .env_remove("CLERK_THREADS")
            .output()
            .expect("run clerk bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{device}: {stderr}");
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
        assert_eq!(r["threads"], threads, "{device} --threads {threads}: {r}");
        assert_eq!(r["architecture"], "llama");
        for key in [
            "load_ms",
            "prompt_tokens_per_s",
            "decode_tokens_per_s",
            "ttft_ms",
            "peak_rss_mb",
        ] {
            let v = r[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{device}: {key} = {v}");
        }
        let agg = r["aggregate_decode"].as_array().expect("aggregate figures");
        assert_eq!(agg.len(), 2, "{r}");
        assert_eq!(agg[0]["sequences"], 1);
        assert_eq!(agg[0]["speedup"], 1.0);
        assert!(agg[1]["tokens_per_s"].as_f64().is_some_and(|t| t > 0.0));
        let prefix = &r["prefix_cache"];
        assert_eq!(prefix["cached_tokens"], 32, "{device}: {prefix}");
        assert!(prefix["ratio"].as_f64().is_some_and(|x| x > 0.0));
        // The model (about 90 MB) and the KV for a few short sequences.
        assert!(r["peak_rss_mb"].as_f64().is_some_and(|m| m < 300.0), "{r}");
    }
}

/// A byte-level token can hold part of a character: decoded alone it is "�", but its bytes are
/// the character's own, and a text's tokens' bytes join into the text (OpenAI's logprob `bytes`).
#[test]
fn each_tokens_bytes_join_into_the_text_even_inside_a_character() {
    let engine = smollm(|_| {});
    let tok = engine.tokenizer();
    for text in ["🙂 ok", "水和茶", "naïve café"] {
        let ids = tok.encode(text, false).unwrap();
        let joined: Vec<u8> = ids.iter().flat_map(|&id| tok.bytes_of(id)).collect();
        assert_eq!(joined, text.as_bytes(), "{text}");
    }
    // The emoji takes more than one token, and one of them is not a character by itself.
    let ids = tok.encode("🙂", false).unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    assert!(ids
        .iter()
        .any(|&id| tok.decode(&[id], false).unwrap().contains('\u{FFFD}')));
    // A special token gives its text.
    let end = tok.token_to_id("<|im_end|>").unwrap();
    assert_eq!(tok.bytes_of(end), b"<|im_end|>");
}
