//! Prefill and decode steps of the default model, through the model forward alone (no scheduler).
//! Run: `cargo bench --bench engine` (needs `scripts/fetch-models.sh`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use clerk::engine::gguf::GgufFile;
use clerk::engine::kernels::ThreadPool;
use clerk::engine::kv::SeqKv;
use clerk::engine::model::{BatchItem, Model, Scratch};

fn model_path() -> std::path::PathBuf {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/smollm2-135m-instruct.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

fn steps(c: &mut Criterion) {
    let gguf = GgufFile::open(&model_path()).expect("open model");
    let model = Model::load(&gguf).expect("load model");
    let threads = std::env::var("CLERK_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let pool = ThreadPool::new(threads);
    let prompt: Vec<u32> = (0..128u32).map(|i| 1000 + (i * 37) % 20000).collect();
    let mut scratch = Scratch::default();

    let mut g = c.benchmark_group(format!("smollm2-135m-q4_1/{threads}-threads"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(prompt.len() as u64));
    g.bench_function("prefill-128", |b| {
        b.iter(|| {
            let mut kv = SeqKv::new(model.cfg.n_layer, model.cfg.kv_dim());
            let mut items = [BatchItem {
                kv: &mut kv,
                tokens: &prompt,
                want_logits: true,
            }];
            model
                .forward(&mut items, &mut scratch, &pool)
                .expect("forward")
        })
    });

    let mut kv = SeqKv::new(model.cfg.n_layer, model.cfg.kv_dim());
    {
        let mut items = [BatchItem {
            kv: &mut kv,
            tokens: &prompt,
            want_logits: false,
        }];
        model
            .forward(&mut items, &mut scratch, &pool)
            .expect("prefill");
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode-step-at-128", |b| {
        b.iter(|| {
            let mut items = [BatchItem {
                kv: &mut kv,
                tokens: &[42],
                want_logits: true,
            }];
            let out = model
                .forward(&mut items, &mut scratch, &pool)
                .expect("decode");
            kv.truncate(prompt.len());
            out
        })
    });

    let mut kvs: Vec<SeqKv> = (0..8)
        .map(|_| SeqKv::new(model.cfg.n_layer, model.cfg.kv_dim()))
        .collect();
    for kv in &mut kvs {
        let mut items = [BatchItem {
            kv,
            tokens: &prompt,
            want_logits: false,
        }];
        model
            .forward(&mut items, &mut scratch, &pool)
            .expect("prefill");
    }
    g.throughput(Throughput::Elements(8));
    g.bench_function("decode-step-8-sequences", |b| {
        b.iter(|| {
            let tok = [42u32];
            let mut items: Vec<BatchItem> = kvs
                .iter_mut()
                .map(|kv| BatchItem {
                    kv,
                    tokens: &tok,
                    want_logits: true,
                })
                .collect();
            let out = model
                .forward(&mut items, &mut scratch, &pool)
                .expect("decode");
            drop(items);
            kvs.iter_mut().for_each(|kv| kv.truncate(prompt.len()));
            out
        })
    });
    g.finish();
}

criterion_group!(benches, steps);
criterion_main!(benches);
