//! Shop knowledge: ingest the catalogue, FAQ and policies, and find the passage that answers a
//! shopper's question.
//!
//! [`Knowledge`] is a cheap `Clone` handle over the live generation of the index (see [`store`]).
//! Search is hybrid: BM25 from tantivy (with a tokenizer that splits Chinese and Japanese into
//! bigrams) and cosine similarity over sentence embeddings, fused by reciprocal rank. Every call
//! here is blocking (tensor and disk work); async callers run it on a blocking thread.

pub mod demo;
pub mod document;
pub mod error;
pub mod eval;
pub mod ingest;
pub mod store;
pub mod text;
pub mod vectors;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::engine::Embedder;
pub use document::{Chunk, DocumentInfo, Kind, ProductFacts, Source};
pub use error::{ParseError, Result, RetrievalError};
pub use ingest::{collect_files, Format, Input};
use store::{IndexFilter, Meta, Snapshot};
use text::content_hash;

/// Reciprocal-rank fusion constant: the usual 60 keeps one list's first place from drowning the
/// other list's near-misses.
const RRF_K: f32 = 60.0;
/// The vector ranking counts double in the fusion: on the labeled set (`clerk eval retrieval`)
/// paraphrased questions, the commonest kind, are where BM25 is weakest. Equal weights give
/// recall@1 0.79, double 0.81.
const RRF_VECTOR_WEIGHT: f32 = 2.0;
/// Share of cosine similarity in the `blend` mode's score (the rest is BM25 scaled to 0..1).
const BLEND_ALPHA: f32 = 0.7;
/// How deep each side looks before fusion.
const CANDIDATES: usize = 50;
/// Cosine similarity of the best passage below which a question is treated as having no answer in
/// the shop's data. Calibrated with `clerk eval retrieval` on the labeled set in `tests/data/`
/// for all-MiniLM-L6-v2; another embedder needs its own (`--answer-threshold`).
pub const DEFAULT_ANSWER_THRESHOLD: f32 = 0.32;

/// Which rankings a search uses and how it combines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// BM25 and vectors fused by (weighted) reciprocal rank: the default.
    #[default]
    Hybrid,
    /// BM25 and vectors combined by score: `0.7 × cosine + 0.3 × BM25 / best BM25`. Uses how far
    /// apart the scores are, which rank fusion throws away; better on the labeled set.
    Blend,
    Bm25,
    Vector,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "hybrid" | "rrf" => Ok(Mode::Hybrid),
            "blend" => Ok(Mode::Blend),
            "bm25" | "text" => Ok(Mode::Bm25),
            "vector" | "dense" => Ok(Mode::Vector),
            _ => Err(format!(
                "unknown mode `{s}` (hybrid, blend, bm25 or vector)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Query {
    pub text: String,
    pub limit: usize,
    pub kind: Option<Kind>,
    /// Case-insensitive exact category.
    pub category: Option<String>,
    /// Only products in stock (other kinds pass).
    pub in_stock: bool,
    /// Products whose price range overlaps [min, max] (other kinds pass).
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
    pub mode: Mode,
}

impl Query {
    pub fn new(text: impl Into<String>) -> Self {
        Query {
            text: text.into(),
            limit: 5,
            kind: None,
            category: None,
            in_stock: false,
            min_price: None,
            max_price: None,
            mode: Mode::Hybrid,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |param: &'static str, message: &str| {
            Err(RetrievalError::InvalidQuery {
                param,
                message: message.to_string(),
            })
        };
        if self.text.trim().is_empty() {
            return bad("q", "the query is empty");
        }
        if self.limit == 0 || self.limit > 100 {
            return bad("limit", "limit must be 1 to 100");
        }
        for (param, p) in [("min_price", self.min_price), ("max_price", self.max_price)] {
            if p.is_some_and(|p| !p.is_finite() || p < 0.0) {
                return bad(param, "prices must be non-negative numbers");
            }
        }
        if let (Some(lo), Some(hi)) = (self.min_price, self.max_price) {
            if lo > hi {
                return bad("min_price", "min_price is above max_price");
            }
        }
        Ok(())
    }

    fn keeps(&self, c: &Chunk) -> bool {
        if self.kind.is_some_and(|k| k != c.kind) {
            return false;
        }
        let Some(p) = &c.product else {
            // Category and price filters ask for products.
            return self.category.is_none() && self.min_price.is_none() && self.max_price.is_none();
        };
        if self.in_stock && !p.in_stock {
            return false;
        }
        if let Some(cat) = &self.category {
            if !p
                .category
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(cat))
            {
                return false;
            }
        }
        if self.min_price.is_some_and(|lo| p.price_max < lo)
            || self.max_price.is_some_and(|hi| p.price_min > hi)
        {
            return false;
        }
        true
    }
}

/// One passage found, with what an answer needs to cite it.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub chunk_id: String,
    pub document_id: String,
    pub kind: Kind,
    pub title: String,
    pub passage: String,
    pub source: Source,
    /// The fused score (reciprocal-rank fusion in hybrid mode; BM25 or cosine otherwise).
    pub score: f32,
    /// Cosine similarity between the question and the passage.
    pub similarity: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product: Option<ProductFacts>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    /// False when even the best passage is too far from the question to answer it.
    pub answerable: bool,
    pub threshold: f32,
    pub took_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub unchanged: Vec<String>,
    pub chunks: usize,
    /// Chunks whose text was new and had to be embedded (the rest reused their vectors).
    pub embedded: usize,
    pub generation: u64,
}

/// A cheap handle on the knowledge base in `DATA_DIR/knowledge`.
#[derive(Clone)]
pub struct Knowledge {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    embedder: Arc<Embedder>,
    live: RwLock<Arc<Snapshot>>,
    /// Writers in this process take turns; writers in other processes are kept out by `LOCK`.
    write: Mutex<()>,
    threshold: f32,
}

impl Knowledge {
    /// Opens (or starts) the knowledge base in `data_dir`. If it was built with another embedder,
    /// its vectors are recomputed into a new generation first.
    pub fn open(data_dir: &Path, embedder: Arc<Embedder>, threshold: f32) -> Result<Self> {
        let dir = store::knowledge_dir(data_dir);
        let snapshot = match store::current_generation(&dir)? {
            Some(g) => store::open(&dir, g)?,
            None => Snapshot::empty(embedder.name(), embedder.dimension()),
        };
        let stale = !snapshot.chunks.is_empty()
            && (snapshot.meta.embedder != embedder.name()
                || snapshot.meta.dim != embedder.dimension());
        let k = Knowledge {
            inner: Arc::new(Inner {
                dir,
                embedder,
                live: RwLock::new(Arc::new(snapshot)),
                write: Mutex::new(()),
                threshold,
            }),
        };
        if stale {
            tracing::info!("knowledge base was embedded with another model; re-embedding it");
            k.rewrite(|_, _| Ok(()))?;
        }
        Ok(k)
    }

    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.inner.embedder
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Picks up a generation another process wrote since this one was opened (a server calls it
    /// every few seconds, so `clerk ingest` beside it shows up without a restart).
    pub fn refresh(&self) -> Result<bool> {
        // Serialised with this process's own writes, so a refresh that read `CURRENT` before a
        // write here can't put the older generation back after it.
        let _guard = self.inner.write.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh_locked(true)
    }

    /// Switches to the generation `CURRENT` names. For searching (`serving`), not to one embedded
    /// with another model: its vectors would be compared with this model's queries, silently
    /// ranking nonsense. A writer takes it anyway, since it re-embeds what it writes.
    fn refresh_locked(&self, serving: bool) -> Result<bool> {
        let Some(g) = store::current_generation(&self.inner.dir)? else {
            return Ok(false);
        };
        if g == self.snapshot().meta.generation {
            return Ok(false);
        }
        let snapshot = store::open(&self.inner.dir, g)?;
        let embedder = &self.inner.embedder;
        if serving
            && !snapshot.chunks.is_empty()
            && (snapshot.meta.embedder != embedder.name()
                || snapshot.meta.dim != embedder.dimension())
        {
            return Err(RetrievalError::OtherEmbedder {
                generation: g,
                found: snapshot.meta.embedder.clone(),
                serving: embedder.name().to_string(),
            });
        }
        *self.inner.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        Ok(true)
    }

    pub fn documents(&self) -> Vec<DocumentInfo> {
        self.snapshot().meta.documents.clone()
    }

    /// The passage an answer cited: the chunk of `document_id` at `locator` (a source's address).
    pub fn passage(&self, document_id: &str, locator: &str) -> Option<Chunk> {
        self.snapshot()
            .chunks
            .iter()
            .find(|c| c.document_id == document_id && c.source.locator == locator)
            .cloned()
    }

    pub fn chunk_count(&self) -> usize {
        self.snapshot().chunks.len()
    }

    pub fn search(&self, q: &Query) -> Result<SearchResults> {
        q.validate()?;
        let start = Instant::now();
        let snap = self.snapshot();
        let threshold = self.inner.threshold;
        if snap.chunks.is_empty() {
            return Ok(SearchResults {
                hits: Vec::new(),
                answerable: false,
                threshold,
                took_ms: 0.0,
            });
        }
        let query_vec = self.embed_query(&q.text)?;
        let depth = CANDIDATES.max(q.limit);
        let dense = if q.mode == Mode::Bm25 {
            Vec::new()
        } else {
            snap.vectors
                .top_k(&query_vec, depth, |i| q.keeps(&snap.chunks[i]))
        };
        let sparse = match (&snap.bm25, q.mode) {
            (Some(bm25), Mode::Hybrid | Mode::Blend | Mode::Bm25) => {
                let filter = IndexFilter {
                    kind: q.kind,
                    category: q.category.clone(),
                    in_stock: q.in_stock,
                };
                bm25.search(&q.text, &filter, depth)?
                    .into_iter()
                    .filter(|&(i, _)| q.keeps(&snap.chunks[i]))
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut scored: Vec<(usize, f32)> = match q.mode {
            Mode::Vector => dense.clone(),
            Mode::Bm25 => sparse,
            Mode::Hybrid | Mode::Blend => {
                let mut fused: HashMap<usize, f32> = HashMap::new();
                if q.mode == Mode::Hybrid {
                    for (list, weight) in [(&dense, RRF_VECTOR_WEIGHT), (&sparse, 1.0)] {
                        for (rank, &(i, _)) in list.iter().enumerate() {
                            *fused.entry(i).or_default() += weight / (RRF_K + rank as f32 + 1.0);
                        }
                    }
                } else {
                    // BM25 scores are unbounded: scaled by the best one so both sides run 0 to 1.
                    let best_bm25 = sparse.first().map_or(1.0, |s| s.1.max(1e-6));
                    for &(i, s) in &sparse {
                        fused.insert(i, (1.0 - BLEND_ALPHA) * s / best_bm25);
                    }
                    for &(i, _) in &dense {
                        fused.entry(i).or_default();
                    }
                    for (&i, v) in fused.iter_mut() {
                        *v += BLEND_ALPHA * vectors::dot(snap.vectors.row(i), &query_vec);
                    }
                }
                let mut v: Vec<(usize, f32)> = fused.into_iter().collect();
                v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                v
            }
        };
        scored.truncate(q.limit);
        let best_similarity = dense.first().map(|d| d.1).unwrap_or_else(|| {
            scored
                .iter()
                .map(|&(i, _)| vectors::dot(snap.vectors.row(i), &query_vec))
                .fold(f32::MIN, f32::max)
        });
        let hits = scored
            .into_iter()
            .map(|(i, score)| {
                let c = &snap.chunks[i];
                Hit {
                    chunk_id: c.id.clone(),
                    document_id: c.document_id.clone(),
                    kind: c.kind,
                    title: c.title.clone(),
                    passage: c.text.clone(),
                    source: c.source.clone(),
                    score,
                    similarity: vectors::dot(snap.vectors.row(i), &query_vec),
                    product: c.product.clone(),
                }
            })
            .collect::<Vec<_>>();
        Ok(SearchResults {
            answerable: !hits.is_empty() && best_similarity >= threshold,
            hits,
            threshold,
            took_ms: start.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn embed_query(&self, text: &str) -> Result<Vec<f32>> {
        let ids = self.truncated_ids(text)?;
        Ok(self.inner.embedder.embed_ids(&[ids])?.remove(0))
    }

    /// Token ids for the embedder, cut to its window. Only the vector sees the cut: BM25 indexes
    /// the whole passage, and chunking keeps passages inside the window in the first place.
    fn truncated_ids(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.inner.embedder.tokenize(text)?;
        let max = self.inner.embedder.max_tokens().min(256);
        if ids.len() > max {
            let last = *ids.last().expect("longer than max");
            ids.truncate(max - 1);
            ids.push(last);
        }
        Ok(ids)
    }

    /// Parses every input first; if any fails, nothing is written and every failure is reported.
    /// Documents whose content is unchanged are skipped; changed ones replace their old chunks.
    pub fn ingest(&self, inputs: Vec<Input>) -> Result<IngestReport> {
        let mut seen = HashSet::new();
        let mut parsed = Vec::with_capacity(inputs.len());
        let mut errors = Vec::new();
        for input in &inputs {
            if !seen.insert(input.id.clone()) {
                errors.push(ParseError {
                    file: input.name.clone(),
                    line: None,
                    field: None,
                    message: format!("document id `{}` appears twice in this batch", input.id),
                });
                continue;
            }
            match ingest::parse(input) {
                Ok(chunks) => parsed.push((input, chunks)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(RetrievalError::Parse(errors));
        }
        let mut report = IngestReport::default();
        self.rewrite(|meta, chunks| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for (input, new_chunks) in parsed {
                let hash = format!("{:016x}", input.hash());
                match meta.documents.iter().position(|d| d.id == input.id) {
                    Some(i) if meta.documents[i].hash == hash => {
                        report.unchanged.push(input.id.clone());
                        continue;
                    }
                    Some(i) => {
                        meta.documents.remove(i);
                        chunks.retain(|c| c.document_id != input.id);
                        report.replaced.push(input.id.clone());
                    }
                    None => report.added.push(input.id.clone()),
                }
                let mut kinds: Vec<Kind> = new_chunks.iter().map(|c| c.kind).collect();
                kinds.sort();
                kinds.dedup();
                meta.documents.push(DocumentInfo {
                    id: input.id.clone(),
                    source: input.name.clone(),
                    hash,
                    chunks: new_chunks.len(),
                    kinds,
                    ingested_at: now,
                });
                chunks.extend(new_chunks);
            }
            Ok(())
        })
        .map(|(generation, total, embedded)| {
            report.generation = generation;
            report.chunks = total;
            report.embedded = embedded;
            report
        })
    }

    /// Removes a document and its chunks.
    pub fn delete(&self, id: &str) -> Result<()> {
        self.rewrite(|meta, chunks| {
            let before = meta.documents.len();
            meta.documents.retain(|d| d.id != id);
            if meta.documents.len() == before {
                return Err(RetrievalError::NotFound(id.to_string()));
            }
            chunks.retain(|c| c.document_id != id);
            Ok(())
        })
        .map(|_| ())
    }

    /// Applies `change` to a copy of the live documents and chunks and, if anything changed,
    /// writes and switches to a new generation. Returns (generation, chunks, newly embedded).
    fn rewrite(
        &self,
        change: impl FnOnce(&mut Meta, &mut Vec<Chunk>) -> Result<()>,
    ) -> Result<(u64, usize, usize)> {
        let _guard = self.inner.write.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(&self.inner.dir).map_err(|e| RetrievalError::Io {
            path: self.inner.dir.clone(),
            source: e,
        })?;
        let _lock = DirLock::acquire(&self.inner.dir)?;
        self.refresh_locked(false)?;
        let snap = self.snapshot();
        let mut meta = snap.meta.clone();
        let mut chunks = snap.chunks.clone();
        change(&mut meta, &mut chunks)?;
        let embedder = &self.inner.embedder;
        let same_model =
            snap.meta.embedder == embedder.name() && snap.meta.dim == embedder.dimension();
        let same_docs = meta.documents.iter().map(|d| (&d.id, &d.hash)).eq(snap
            .meta
            .documents
            .iter()
            .map(|d| (&d.id, &d.hash)));
        if same_docs && same_model && snap.meta.generation > 0 {
            return Ok((snap.meta.generation, chunks.len(), 0));
        }
        // Vectors of unchanged passages are reused; only new text is embedded.
        let old: HashMap<u64, usize> = if same_model {
            snap.chunks
                .iter()
                .enumerate()
                .map(|(i, c)| (content_hash(&[c.embedding_text().as_bytes()]), i))
                .collect()
        } else {
            HashMap::new()
        };
        let mut vecs: Vec<Option<Vec<f32>>> = Vec::with_capacity(chunks.len());
        let mut missing = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            match old.get(&content_hash(&[c.embedding_text().as_bytes()])) {
                Some(&row) => vecs.push(Some(snap.vectors.row(row).to_vec())),
                None => {
                    vecs.push(None);
                    missing.push(i);
                }
            }
        }
        let ids = missing
            .iter()
            .map(|&i| self.truncated_ids(&chunks[i].embedding_text()))
            .collect::<Result<Vec<_>>>()?;
        let fresh = embedder.embed_ids(&ids)?;
        for (&i, v) in missing.iter().zip(fresh) {
            vecs[i] = Some(v);
        }
        let vecs: Vec<Vec<f32>> = vecs
            .into_iter()
            .map(|v| v.expect("every row filled"))
            .collect();
        meta.generation = snap.meta.generation + 1;
        meta.embedder = embedder.name().to_string();
        meta.dim = embedder.dimension();
        store::write(&self.inner.dir, &meta, &chunks, &vecs)?;
        store::sweep(&self.inner.dir, meta.generation);
        let generation = meta.generation;
        let snapshot = store::open(&self.inner.dir, generation)?;
        *self.inner.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        Ok((generation, chunks.len(), missing.len()))
    }
}

/// An exclusive lock on `knowledge/LOCK` for the life of one write, so two processes never build
/// generations over each other. Released when the file closes, also when a process dies.
struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join("LOCK");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| RetrievalError::Io {
                path: path.clone(),
                source: e,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(RetrievalError::Busy(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => Err(RetrievalError::Io { path, source: e }),
        }
    }
}
