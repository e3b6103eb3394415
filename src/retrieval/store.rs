//! The knowledge base on disk: immutable generations, switched atomically.
//!
//! `DATA_DIR/knowledge/CURRENT` names the live generation; `gen-N/` holds its chunks
//! (`chunks.json`), document list and embedder (`meta.json`), vectors (`vectors.bin`) and full-text
//! index (`bm25/`). An ingest builds `gen-N+1.tmp/`, syncs it, renames it into place, then replaces
//! `CURRENT` by rename, so a process killed at any point leaves the previous generation live and
//! whole; leftovers are swept by the next writer. Readers map the files of the generation they
//! opened; a reader in another process sees the new one on its next [`refresh`](super::Knowledge::refresh).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, STRING,
};
use tantivy::{doc, Index, IndexReader, ReloadPolicy, Term};

use super::document::{Chunk, DocumentInfo, Kind};
use super::error::{Result, RetrievalError};
use super::text::{self, ANALYZER};
use super::vectors::Vectors;

const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub generation: u64,
    pub embedder: String,
    pub dim: usize,
    pub documents: Vec<DocumentInfo>,
}

/// One generation, opened: what every search reads.
pub struct Snapshot {
    pub meta: Meta,
    pub chunks: Vec<Chunk>,
    pub vectors: Vectors,
    pub bm25: Option<Bm25>,
}

impl Snapshot {
    pub fn empty(embedder: &str, dim: usize) -> Self {
        Snapshot {
            meta: Meta {
                format: FORMAT,
                generation: 0,
                embedder: embedder.to_string(),
                dim,
                documents: Vec::new(),
            },
            chunks: Vec::new(),
            vectors: Vectors::empty(dim),
            bm25: None,
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RetrievalError + '_ {
    move |e| RetrievalError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

pub fn knowledge_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("knowledge")
}

/// The generation `CURRENT` names, if any.
pub fn current_generation(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join("CURRENT");
    match fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .strip_prefix("gen-")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| RetrievalError::Corrupt {
                path,
                message: format!("CURRENT holds `{}`", s.trim()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

pub fn open(dir: &Path, generation: u64) -> Result<Snapshot> {
    let gen_dir = dir.join(format!("gen-{generation}"));
    let read = |name: &str| fs::read(gen_dir.join(name)).map_err(io(&gen_dir.join(name)));
    let corrupt = |name: &str, e: serde_json::Error| RetrievalError::Corrupt {
        path: gen_dir.join(name),
        message: e.to_string(),
    };
    let meta: Meta =
        serde_json::from_slice(&read("meta.json")?).map_err(|e| corrupt("meta.json", e))?;
    if meta.format != FORMAT {
        return Err(RetrievalError::Corrupt {
            path: gen_dir.join("meta.json"),
            message: format!(
                "format {} (this clerk reads {FORMAT}); re-ingest into a fresh data dir",
                meta.format
            ),
        });
    }
    let chunks: Vec<Chunk> =
        serde_json::from_slice(&read("chunks.json")?).map_err(|e| corrupt("chunks.json", e))?;
    let vectors = Vectors::open(&gen_dir.join("vectors.bin"))?;
    if vectors.len() != chunks.len() {
        return Err(RetrievalError::Corrupt {
            path: gen_dir,
            message: format!("{} vectors for {} chunks", vectors.len(), chunks.len()),
        });
    }
    let bm25 = if chunks.is_empty() {
        None
    } else {
        Some(Bm25::open(&gen_dir.join("bm25"))?)
    };
    Ok(Snapshot {
        meta,
        chunks,
        vectors,
        bm25,
    })
}

/// Writes a complete generation next to the live one and makes it live.
pub fn write(dir: &Path, meta: &Meta, chunks: &[Chunk], vectors: &[Vec<f32>]) -> Result<()> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let name = format!("gen-{}", meta.generation);
    let tmp = dir.join(format!("{name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    write_json(&tmp.join("chunks.json"), &chunks)?;
    Vectors::write(&tmp.join("vectors.bin"), meta.dim, vectors)?;
    if !chunks.is_empty() {
        Bm25::build(&tmp.join("bm25"), chunks)?;
    }
    // meta.json last: a generation without it was never finished.
    write_json(&tmp.join("meta.json"), meta)?;
    sync_dir(&tmp)?;
    let live = dir.join(&name);
    if live.exists() {
        // Left by a writer that stopped before switching CURRENT to it: CURRENT doesn't name it
        // and the caller holds the lock, so nobody reads it, and it would block this rename.
        fs::remove_dir_all(&live).map_err(io(&live))?;
    }
    fs::rename(&tmp, &live).map_err(io(&live))?;
    let current_tmp = dir.join("CURRENT.tmp");
    {
        let mut f = File::create(&current_tmp).map_err(io(&current_tmp))?;
        f.write_all(name.as_bytes()).map_err(io(&current_tmp))?;
        f.sync_all().map_err(io(&current_tmp))?;
    }
    fs::rename(&current_tmp, dir.join("CURRENT")).map_err(io(dir))?;
    sync_dir(dir)?;
    Ok(())
}

/// Removes unfinished generations and all but the live one and the one before it (a reader in
/// another process may still be on that one until it refreshes).
pub fn sweep(dir: &Path, live: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("gen-") else {
            continue;
        };
        let stale = match rest.parse::<u64>() {
            Ok(n) => n + 1 < live || n > live,
            Err(_) => rest.ends_with(".tmp"),
        };
        if stale {
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                tracing::warn!("could not remove {}: {e}", entry.path().display());
            }
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| RetrievalError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(&bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The full-text side: tantivy's BM25 over titles and passages, with the chunk's row number as a
/// fast field so hits map back to chunks and vectors.
pub struct Bm25 {
    reader: IndexReader,
    f: Fields,
}

#[derive(Clone, Copy)]
struct Fields {
    row: Field,
    title: Field,
    body: Field,
    kind: Field,
    category: Field,
    in_stock: Field,
}

/// Filters the full-text side applies inside the index, so selective filters still fill the
/// candidate list; price ranges are checked on the chunks afterwards.
#[derive(Debug, Clone, Default)]
pub struct IndexFilter {
    pub kind: Option<Kind>,
    pub category: Option<String>,
    pub in_stock: bool,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let f = Fields {
        row: b.add_u64_field("row", NumericOptions::default().set_fast()),
        title: b.add_text_field("title", text.clone()),
        body: b.add_text_field("body", text),
        kind: b.add_text_field("kind", STRING),
        category: b.add_text_field("category", STRING),
        in_stock: b.add_u64_field("in_stock", NumericOptions::default().set_indexed()),
    };
    (b.build(), f)
}

impl Bm25 {
    fn build(path: &Path, chunks: &[Chunk]) -> Result<()> {
        fs::create_dir_all(path).map_err(io(path))?;
        let (schema, f) = schema();
        let index = Index::create_in_dir(path, schema)?;
        index.tokenizers().register(ANALYZER, text::analyzer());
        // One thread: the build runs beside a serving model on two cores.
        let mut writer =
            index.writer_with_num_threads::<tantivy::TantivyDocument>(1, 50_000_000)?;
        for (row, c) in chunks.iter().enumerate() {
            let product = c.product.as_ref();
            writer.add_document(doc!(
                f.row => row as u64,
                f.title => c.title.clone(),
                f.body => format!("{}\n{}", c.context, c.text),
                f.kind => c.kind.as_str(),
                f.category => product.and_then(|p| p.category.as_deref()).unwrap_or("").to_lowercase(),
                f.in_stock => u64::from(product.is_none_or(|p| p.in_stock)),
            ))?;
        }
        writer.commit()?;
        writer.wait_merging_threads()?;
        Ok(())
    }

    fn open(path: &Path) -> Result<Self> {
        let index = Index::open_in_dir(path)?;
        index.tokenizers().register(ANALYZER, text::analyzer());
        let (_, f) = schema();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Bm25 { reader, f })
    }

    /// Rows and BM25 scores of the best `limit` chunks for `query`, best first. Each query word
    /// matches titles (weighted double) and passages; words of five letters or more also match
    /// words one edit away (two for nine letters or more) at a lower weight, for typos.
    pub fn search(
        &self,
        query: &str,
        filter: &IndexFilter,
        limit: usize,
    ) -> Result<Vec<(usize, f32)>> {
        let f = self.f;
        let mut terms = text::terms(query);
        terms.sort();
        terms.dedup();
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for t in &terms {
            for (field, boost) in [(f.title, 2.0), (f.body, 1.0)] {
                let q = TermQuery::new(
                    Term::from_field_text(field, t),
                    IndexRecordOption::WithFreqs,
                );
                should.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
            }
            let chars = t.chars().count();
            if chars >= 5 && !t.chars().any(text::is_cjk) {
                let distance = if chars >= 9 { 2 } else { 1 };
                let q = FuzzyTermQuery::new(Term::from_field_text(f.body, t), distance, true);
                should.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), 0.5))));
            }
        }
        let mut must: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, Box::new(BooleanQuery::new(should)))];
        if let Some(kind) = filter.kind {
            must.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(f.kind, kind.as_str()),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        if let Some(cat) = &filter.category {
            must.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(f.category, &cat.to_lowercase()),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        if filter.in_stock {
            must.push((
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(f.in_stock, 1),
                    IndexRecordOption::Basic,
                )),
            ));
        }
        let query = BooleanQuery::new(must);
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(limit).order_by_score())?;
        // One row column per segment, opened once, not once per hit.
        let columns = searcher
            .segment_readers()
            .iter()
            .map(|r| r.fast_fields().u64("row"))
            .collect::<tantivy::Result<Vec<_>>>()?;
        Ok(top
            .into_iter()
            .filter_map(|(score, addr)| {
                let row = columns.get(addr.segment_ord as usize)?.first(addr.doc_id)?;
                Some((row as usize, score))
            })
            .collect())
    }
}
