//! Retrieval quality on a labeled set of shopper questions: recall@1, recall@5 and MRR for BM25
//! alone, vectors alone and hybrid, and the answerability threshold that best separates questions
//! the shop can answer from those it can't.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Hit, Kind, Knowledge, Mode, Query, Result};

/// One labeled question (a line of `tests/data/retrieval-eval.jsonl`).
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub id: u64,
    /// Which shop's knowledge base answers it.
    pub shop: String,
    #[serde(default)]
    pub lang: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub q: String,
    /// Acceptable answers; empty when the shop has none.
    pub expect: Vec<Target>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    pub kind: Kind,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
}

impl Target {
    pub fn matches(&self, hit: &Hit) -> bool {
        if hit.kind != self.kind {
            return false;
        }
        match (&self.id, &self.title) {
            (Some(id), _) => hit.product.as_ref().is_some_and(|p| &p.product_id == id),
            (None, Some(title)) => hit.title.trim() == title.trim(),
            (None, None) => false,
        }
    }
}

pub fn parse_cases(jsonl: &str) -> std::result::Result<Vec<Case>, String> {
    jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Scores {
    pub questions: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub mrr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: Mode,
    pub overall: Scores,
    /// By question type (direct, paraphrase, typo, foreign).
    pub by_type: BTreeMap<String, Scores>,
    /// Questions whose answer is not in the top 5 (ids), for finding regressions.
    #[serde(skip)]
    pub misses_at_5: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub modes: Vec<ModeReport>,
    /// Best-passage similarity threshold that best separates answerable from unanswerable
    /// questions, and the share of all questions it classifies right.
    pub calibrated_threshold: f32,
    pub calibrated_accuracy: f64,
    /// The same share at the threshold in use.
    pub threshold: f32,
    pub accuracy_at_threshold: f64,
    pub unanswerable: usize,
    /// At the threshold in use: unanswerable questions flagged as such, and answerable ones
    /// wrongly flagged.
    pub unanswerable_caught: usize,
    pub answerable_refused: usize,
    /// Mean hybrid search time per question, milliseconds.
    pub mean_search_ms: f64,
}

/// Runs every case against the knowledge base of its shop.
pub fn run(shops: &BTreeMap<String, Knowledge>, cases: &[Case], threshold: f32) -> Result<Report> {
    let mut modes = Vec::new();
    let mut similarities: Vec<(f32, bool)> = Vec::new();
    let mut total_ms = 0.0;
    let mut searches = 0usize;
    for mode in [Mode::Bm25, Mode::Vector, Mode::Hybrid, Mode::Blend] {
        let mut by_type: BTreeMap<String, Vec<Option<usize>>> = BTreeMap::new();
        let mut misses = Vec::new();
        for case in cases {
            let Some(k) = shops.get(&case.shop) else {
                continue;
            };
            let mut q = Query::new(case.q.clone());
            q.limit = 10;
            q.mode = mode;
            let results = k.search(&q)?;
            if mode == Mode::Hybrid {
                total_ms += results.took_ms;
                searches += 1;
                let best = results
                    .hits
                    .iter()
                    .map(|h| h.similarity)
                    .fold(f32::MIN, f32::max);
                similarities.push((best, !case.expect.is_empty()));
            }
            if case.expect.is_empty() {
                continue;
            }
            let rank = results
                .hits
                .iter()
                .position(|h| case.expect.iter().any(|t| t.matches(h)));
            if rank.is_none_or(|r| r >= 5) {
                misses.push(case.id);
            }
            by_type.entry(case.kind.clone()).or_default().push(rank);
        }
        let all: Vec<Option<usize>> = by_type.values().flatten().copied().collect();
        modes.push(ModeReport {
            mode,
            overall: scores(&all),
            by_type: by_type
                .iter()
                .map(|(k, v)| (k.clone(), scores(v)))
                .collect(),
            misses_at_5: misses,
        });
    }
    let accuracy = |t: f32| {
        let right = similarities
            .iter()
            .filter(|&&(s, answerable)| (s >= t) == answerable)
            .count();
        right as f64 / similarities.len().max(1) as f64
    };
    let mut best = (threshold, accuracy(threshold));
    for step in 0..=100 {
        let t = step as f32 / 100.0;
        let a = accuracy(t);
        if a > best.1 + 1e-9 {
            best = (t, a);
        }
    }
    Ok(Report {
        modes,
        calibrated_threshold: best.0,
        calibrated_accuracy: best.1,
        threshold,
        accuracy_at_threshold: accuracy(threshold),
        unanswerable: similarities.iter().filter(|s| !s.1).count(),
        unanswerable_caught: similarities
            .iter()
            .filter(|&&(s, a)| !a && s < threshold)
            .count(),
        answerable_refused: similarities
            .iter()
            .filter(|&&(s, a)| a && s < threshold)
            .count(),
        mean_search_ms: total_ms / searches.max(1) as f64,
    })
}

fn scores(ranks: &[Option<usize>]) -> Scores {
    let n = ranks.len().max(1) as f64;
    Scores {
        questions: ranks.len(),
        recall_at_1: ranks.iter().filter(|r| **r == Some(0)).count() as f64 / n,
        recall_at_5: ranks.iter().filter(|r| r.is_some_and(|r| r < 5)).count() as f64 / n,
        mrr: ranks
            .iter()
            .map(|r| r.map_or(0.0, |r| 1.0 / (r as f64 + 1.0)))
            .sum::<f64>()
            / n,
    }
}
