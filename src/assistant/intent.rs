//! What a shopper wants, offline: the nearest labelled examples (`intent_examples.jsonl`, in
//! English, Chinese and Spanish) by sentence embedding vote on the intent. The examples are
//! data, so a shop adds phrasings without touching code; `clerk eval intents` measures the
//! classifier on the held-out set in `tests/data/intent-eval.jsonl`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::Embedder;

use super::AssistantError;

const EXAMPLES: &str = include_str!("intent_examples.jsonl");
const CUES: &str = include_str!("intent_cues.yaml");

/// What one cue word adds to its intent's vote (a close example adds up to 1).
const CUE_WEIGHT: f32 = 0.35;

/// Neighbours that vote.
const K: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// A question about products or the shop's FAQ and policies.
    Question,
    OrderStatus,
    Cancel,
    ChangeAddress,
    ChangePayment,
    ChangeItems,
    Return,
    Exchange,
    Recommendation,
    Feedback,
    Complaint,
    Human,
    SmallTalk,
    OutOfScope,
}

impl Intent {
    pub const ALL: [Intent; 14] = [
        Intent::Question,
        Intent::OrderStatus,
        Intent::Cancel,
        Intent::ChangeAddress,
        Intent::ChangePayment,
        Intent::ChangeItems,
        Intent::Return,
        Intent::Exchange,
        Intent::Recommendation,
        Intent::Feedback,
        Intent::Complaint,
        Intent::Human,
        Intent::SmallTalk,
        Intent::OutOfScope,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Question => "question",
            Intent::OrderStatus => "order_status",
            Intent::Cancel => "cancel",
            Intent::ChangeAddress => "change_address",
            Intent::ChangePayment => "change_payment",
            Intent::ChangeItems => "change_items",
            Intent::Return => "return",
            Intent::Exchange => "exchange",
            Intent::Recommendation => "recommendation",
            Intent::Feedback => "feedback",
            Intent::Complaint => "complaint",
            Intent::Human => "human",
            Intent::SmallTalk => "small_talk",
            Intent::OutOfScope => "out_of_scope",
        }
    }

    /// Intents about the shopper's own account, which need a verified identity.
    pub fn needs_identity(self) -> bool {
        matches!(
            self,
            Intent::OrderStatus
                | Intent::Cancel
                | Intent::ChangeAddress
                | Intent::ChangePayment
                | Intent::ChangeItems
                | Intent::Return
                | Intent::Exchange
        )
    }
}

impl std::fmt::Display for Intent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Labelled {
    pub text: String,
    pub intent: Intent,
    #[serde(default)]
    pub lang: Option<String>,
}

/// Parses labelled utterances, one JSON object per line, naming the line of a bad one.
pub fn parse_labelled(jsonl: &str) -> Result<Vec<Labelled>, AssistantError> {
    jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| AssistantError::Data(format!("line {}: {e}", i + 1)))
        })
        .collect()
}

pub struct IntentClassifier {
    embedder: Arc<Embedder>,
    examples: Vec<Labelled>,
    vectors: Vec<Vec<f32>>,
    cues: Vec<(Intent, Vec<String>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Classified {
    pub intent: Intent,
    /// Similarity-weighted share of the neighbours' vote (0 to 1).
    pub confidence: f32,
    /// Cosine similarity of the nearest example.
    pub nearest: f32,
}

impl IntentClassifier {
    /// With the built-in examples.
    pub fn new(embedder: Arc<Embedder>) -> Result<Self, AssistantError> {
        Self::with_examples(embedder, parse_labelled(EXAMPLES)?)
    }

    pub fn with_examples(
        embedder: Arc<Embedder>,
        examples: Vec<Labelled>,
    ) -> Result<Self, AssistantError> {
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let vectors = embedder.embed(&texts)?;
        let cues: std::collections::BTreeMap<Intent, Vec<String>> = serde_yaml::from_str(CUES)
            .map_err(|e| AssistantError::Data(format!("intent_cues.yaml: {e}")))?;
        let cues = cues
            .into_iter()
            .map(|(i, words)| (i, words.into_iter().map(|w| w.to_lowercase()).collect()))
            .collect();
        Ok(Self {
            embedder,
            examples,
            vectors,
            cues,
        })
    }

    /// How many cue words of each intent the text holds (intents with none left out).
    pub fn cue_counts(&self, text: &str) -> Vec<(Intent, usize)> {
        let lower = text.to_lowercase();
        self.cues
            .iter()
            .map(|(i, words)| {
                (
                    *i,
                    words
                        .iter()
                        .filter(|w| super::extract::has_phrase(&lower, w))
                        .count(),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    pub fn classify(&self, text: &str) -> Result<Classified, AssistantError> {
        let v = self.embedder.embed(&[text])?.pop().unwrap_or_default();
        Ok(self.classify_vector(text, &v))
    }

    fn classify_vector(&self, text: &str, v: &[f32]) -> Classified {
        let mut sims: Vec<(f32, usize)> = self
            .vectors
            .iter()
            .enumerate()
            .map(|(i, e)| (crate::shop::cosine(v, e), i))
            .collect();
        sims.sort_by(|a, b| b.0.total_cmp(&a.0));
        sims.truncate(K);
        let mut score = [0f32; Intent::ALL.len()];
        let slot = |i: Intent| Intent::ALL.iter().position(|x| *x == i).unwrap_or(0);
        for &(s, i) in &sims {
            // Squared, so the nearest examples count for more than a crowd of distant ones.
            score[slot(self.examples[i].intent)] += s.max(0.0).powi(2);
        }
        // The neighbours' vote as shares of one, so cue words weigh the same against it
        // whether the embedder finds the neighbours close (English) or all alike (Chinese).
        let votes: f32 = score.iter().sum();
        if votes > 0.0 {
            for s in &mut score {
                *s /= votes;
            }
        }
        // The default embedder reads only English well: in other languages its neighbours are
        // close to noise, and the cue words carry the decision.
        let weight = match super::lang::detect(text) {
            Some(super::lang::Lang::En) | None => CUE_WEIGHT,
            Some(_) => 1.0,
        };
        for (intent, found) in self.cue_counts(text) {
            score[slot(intent)] += weight * found.min(2) as f32;
        }
        let total: f32 = score.iter().sum();
        let best = (0..score.len())
            .max_by(|&a, &b| score[a].total_cmp(&score[b]))
            .unwrap_or(0);
        Classified {
            intent: Intent::ALL[best],
            confidence: if total > 0.0 {
                score[best] / total
            } else {
                0.0
            },
            nearest: sims.first().map_or(0.0, |s| s.0),
        }
    }
}

/// Accuracy of the classifier on a labelled set, overall, per language and per intent.
#[derive(Debug, Clone, Serialize)]
pub struct IntentReport {
    pub examples: usize,
    pub accuracy: f32,
    pub by_language: Vec<(String, usize, f32)>,
    pub by_intent: Vec<(Intent, usize, f32)>,
    /// (text, expected, predicted) of every miss.
    pub misses: Vec<(String, Intent, Intent)>,
}

pub fn evaluate(
    classifier: &IntentClassifier,
    set: &[Labelled],
) -> Result<IntentReport, AssistantError> {
    let texts: Vec<&str> = set.iter().map(|e| e.text.as_str()).collect();
    let vectors = classifier.embedder.embed(&texts)?;
    let predicted: Vec<Intent> = set
        .iter()
        .zip(&vectors)
        .map(|(e, v)| classifier.classify_vector(&e.text, v).intent)
        .collect();
    let share = |keep: &dyn Fn(&Labelled) -> bool| {
        let (mut n, mut right) = (0usize, 0usize);
        for (e, p) in set.iter().zip(&predicted) {
            if keep(e) {
                n += 1;
                right += usize::from(e.intent == *p);
            }
        }
        (n, if n == 0 { 0.0 } else { right as f32 / n as f32 })
    };
    let mut langs: Vec<String> = set.iter().filter_map(|e| e.lang.clone()).collect();
    langs.sort();
    langs.dedup();
    let by_language = langs
        .into_iter()
        .map(|l| {
            let (n, a) = share(&|e| e.lang.as_deref() == Some(l.as_str()));
            (l, n, a)
        })
        .collect();
    let by_intent = Intent::ALL
        .into_iter()
        .map(|i| {
            let (n, a) = share(&|e| e.intent == i);
            (i, n, a)
        })
        .filter(|(_, n, _)| *n > 0)
        .collect();
    let misses = set
        .iter()
        .zip(&predicted)
        .filter(|(e, p)| e.intent != **p)
        .map(|(e, p)| (e.text.clone(), e.intent, *p))
        .collect();
    Ok(IntentReport {
        examples: set.len(),
        accuracy: share(&|_| true).1,
        by_language,
        by_intent,
        misses,
    })
}
