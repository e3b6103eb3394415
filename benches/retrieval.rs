//! Knowledge-base speed: query embedding, hybrid search over a generated 10,000-product catalogue
//! (with p50/p99 over many different queries, printed after criterion's figures), and ingest
//! throughput. Run: `cargo bench --bench retrieval` (needs `scripts/fetch-models.sh`).
//!
//! The large catalogue is ingested once into `target/bench-knowledge-10k` (about two minutes);
//! later runs find it unchanged and skip straight to searching.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use clerk::engine::Embedder;
use clerk::retrieval::{Format, Input, Knowledge, Mode, Query, DEFAULT_ANSWER_THRESHOLD};

const PRODUCTS: usize = 10_000;

fn embedder() -> Arc<Embedder> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-minilm-l6-v2");
    assert!(
        dir.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        dir.display()
    );
    Arc::new(Embedder::load(&dir, "all-minilm-l6-v2").expect("load embedder"))
}

/// A deterministic catalogue: product types × materials × adjectives, with prices, stock,
/// categories and variant options, as JSON lines.
fn catalogue(n: usize, seed: u64) -> String {
    const TYPES: &[(&str, &str)] = &[
        ("jacket", "Apparel"),
        ("hoodie", "Apparel"),
        ("t-shirt", "Apparel"),
        ("beanie", "Apparel"),
        ("hiking boots", "Footwear"),
        ("sandals", "Footwear"),
        ("running shoes", "Footwear"),
        ("backpack", "Bags"),
        ("duffel bag", "Bags"),
        ("tote", "Bags"),
        ("tent", "Camping"),
        ("sleeping bag", "Camping"),
        ("camp stove", "Camping"),
        ("headlamp", "Camping"),
        ("skillet", "Kitchen"),
        ("kettle", "Kitchen"),
        ("chef's knife", "Kitchen"),
        ("mug", "Kitchen"),
        ("lamp", "Home"),
        ("blanket", "Home"),
        ("pillow", "Home"),
        ("doormat", "Home"),
        ("power bank", "Electronics"),
        ("speaker", "Electronics"),
        ("headphones", "Electronics"),
        ("yoga mat", "Fitness"),
        ("kettlebell", "Fitness"),
        ("water bottle", "Fitness"),
    ];
    const MATERIALS: &[&str] = &[
        "merino wool",
        "recycled nylon",
        "organic cotton",
        "cast iron",
        "stainless steel",
        "bamboo",
        "aluminium",
        "leather",
        "canvas",
        "ceramic",
        "down",
        "fleece",
        "cork",
        "titanium",
    ];
    const ADJECTIVES: &[&str] = &[
        "lightweight",
        "waterproof",
        "insulated",
        "compact",
        "rugged",
        "breathable",
        "packable",
        "heavy-duty",
        "ultralight",
        "cozy",
        "minimalist",
        "foldable",
        "durable",
        "quiet",
    ];
    const NAMES: &[&str] = &[
        "Ridgeline",
        "Harbor",
        "Summit",
        "Cedar",
        "Tidewater",
        "Granite",
        "Juniper",
        "Aspen",
        "Driftwood",
        "Northstar",
        "Ember",
        "Willow",
        "Basalt",
        "Meadow",
        "Coastal",
        "Timber",
    ];
    const COLORS: &[&str] = &[
        "black", "navy", "olive", "red", "grey", "sand", "white", "blue",
    ];
    let mut state = seed;
    let mut rand = |m: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    let mut out = String::new();
    for i in 0..n {
        let (kind, category) = TYPES[rand(TYPES.len())];
        let material = MATERIALS[rand(MATERIALS.len())];
        let adj = ADJECTIVES[rand(ADJECTIVES.len())];
        let adj2 = ADJECTIVES[rand(ADJECTIVES.len())];
        let name = format!("{} {} {}", NAMES[rand(NAMES.len())], adj, kind);
        let price = 5 + rand(600);
        let variants: Vec<String> = (0..1 + rand(4))
            .map(|v| {
                format!(
                    r#"{{"sku":"SKU-{i}-{v}","options":{{"color":"{}"}},"price":{},"stock":{}}}"#,
                    COLORS[rand(COLORS.len())],
                    price + v * 5,
                    rand(3) * rand(20)
                )
            })
            .collect();
        out.push_str(&format!(
            r#"{{"id":"p{i}","name":"{name}","category":"{category}","currency":"USD","description":"A {adj} {kind} made of {material}. {adj2} and built for everyday use, backed by our warranty.","attributes":{{"material":"{material}"}},"variants":[{}]}}"#,
            variants.join(",")
        ));
        out.push('\n');
    }
    out
}

fn catalogue_input(n: usize, seed: u64) -> Input {
    Input {
        id: format!("catalogue-{n}.jsonl"),
        name: format!("catalogue-{n}.jsonl"),
        content: catalogue(n, seed).into_bytes(),
        format: Some(Format::Jsonl),
        kind: None,
    }
}

fn large(embedder: Arc<Embedder>) -> Knowledge {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-knowledge-10k");
    let k = Knowledge::open(&dir, embedder, DEFAULT_ANSWER_THRESHOLD).expect("open");
    let start = Instant::now();
    let report = k
        .ingest(vec![catalogue_input(PRODUCTS, 7)])
        .expect("ingest");
    if report.embedded > 0 {
        eprintln!(
            "ingested {PRODUCTS} products in {:.1} s ({:.0} products/s)",
            start.elapsed().as_secs_f64(),
            PRODUCTS as f64 / start.elapsed().as_secs_f64()
        );
    }
    k
}

const QUERIES: &[&str] = &[
    "waterproof jacket for hiking",
    "something warm to sleep in while camping",
    "cast iron pan",
    "do you have merino wool beanies in navy",
    "quiet headphones for the office",
    "a knife for chopping vegetables",
    "compact power bank under 50 dollars",
    "ultralight tent for two",
    "yoga mat made of cork",
    "hikng boots",
    "how long does shipping take",
    "kettle for making tea",
];

fn search(c: &mut Criterion) {
    let embedder = embedder();
    let mut g = c.benchmark_group("retrieval");
    g.bench_function("embed-query", |b| {
        // Twelve queries in turn: more than the embedder remembers (eight), so each is encoded;
        // the search benches below cycle through them the same way.
        let ids: Vec<Vec<u32>> = QUERIES
            .iter()
            .map(|q| embedder.tokenize(q).expect("tokenize"))
            .collect();
        let mut n = 0;
        b.iter(|| {
            n += 1;
            embedder
                .embed_ids(std::slice::from_ref(&ids[n % ids.len()]))
                .expect("embed")
        })
    });
    let k = large(embedder.clone());
    for mode in [Mode::Hybrid, Mode::Blend, Mode::Bm25, Mode::Vector] {
        let mut n = 0;
        g.bench_function(format!("search-10k/{mode:?}").to_lowercase(), |b| {
            b.iter(|| {
                let mut q = Query::new(QUERIES[n % QUERIES.len()]);
                q.mode = mode;
                n += 1;
                k.search(&q).expect("search")
            })
        });
    }
    g.finish();

    // Tail latency over many different queries, including filters (criterion reports means):
    // on an idle machine, then with another thread keeping one core busy, as the model does when
    // it decodes beside a search in `clerk serve`.
    tail_latency(&k, "");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        })
    };
    tail_latency(&k, ", one core kept busy");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = busy.join();
}

fn tail_latency(k: &Knowledge, label: &str) {
    let mut times = Vec::new();
    for round in 0..40 {
        for (i, text) in QUERIES.iter().enumerate() {
            let mut q = Query::new(format!(
                "{text} {}",
                ["", "please", "thanks", "?"][round % 4]
            ));
            if i % 3 == 0 {
                q.in_stock = true;
            }
            if i % 4 == 0 {
                q.max_price = Some(100.0);
            }
            let start = Instant::now();
            k.search(&q).expect("search");
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "hybrid search over {PRODUCTS} products, {} queries{label}: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        pct(0.50),
        pct(0.95),
        pct(0.99),
        times[times.len() - 1]
    );
}

fn ingest(c: &mut Criterion) {
    let embedder = embedder();
    let docs = 500;
    let mut g = c.benchmark_group("retrieval");
    g.sample_size(10);
    g.throughput(Throughput::Elements(docs as u64));
    let tmp = std::env::temp_dir().join(format!("clerk-bench-ingest-{}", std::process::id()));
    let mut seed = 0;
    g.bench_function(format!("ingest-{docs}-products"), |b| {
        b.iter(|| {
            // A fresh catalogue each time, so nothing is reused from the last run.
            seed += 1;
            let dir = tmp.join(seed.to_string());
            let k =
                Knowledge::open(&dir, embedder.clone(), DEFAULT_ANSWER_THRESHOLD).expect("open");
            k.ingest(vec![catalogue_input(docs, seed)]).expect("ingest");
            remove(&dir);
        })
    });
    g.finish();
    remove(&tmp);
}

fn remove(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

criterion_group!(benches, search, ingest);
criterion_main!(benches);
