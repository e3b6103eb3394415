//! Constrained decoding: a grammar (a JSON schema or a Lark grammar) decides which tokens may come
//! next, so structured output always parses. The grammar engine is `llguidance`; this module adapts
//! clerk's tokenizer to it and applies its token masks to the logits.
//!
//! The token trie and the parser factory are built once per engine, on first use, because building
//! them walks the whole vocabulary (tens of milliseconds) and most deployments never ask for a
//! grammar.

use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use super::error::{EngineError, Result};
use super::tokenizer::Tokenizer;

/// What a generation must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON value valid against this JSON schema (`{"type": "object"}` for any object), written
    /// in [`json_style`] unless the schema's `x-guidance` says otherwise.
    JsonSchema(serde_json::Value),
    /// llguidance's Lark dialect; `%json { … }` embeds a JSON schema inside a rule.
    Lark(String),
}

/// How JSON under a grammar is written unless the schema's `x-guidance` says otherwise: one way
/// only (no free whitespace, which small and base models fill forever), with the spacing models are
/// trained on. `strict` schemas fail on keywords the grammar can't enforce instead of ignoring them.
pub fn json_style(strict: bool) -> serde_json::Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
        "lenient": !strict,
    })
}

/// `schema` with [`json_style`], unless it sets llguidance's options itself.
pub fn styled(mut schema: serde_json::Value, strict: bool) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance")
            .or_insert_with(|| json_style(strict));
    }
    schema
}

impl Grammar {
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(styled(schema.clone(), false))
            }
            Grammar::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        }
    }
}

/// clerk's tokenizer as llguidance sees it: the bytes of every token, and a way to tokenize the
/// text a grammar forces.
struct Env {
    tokenizer: Arc<Tokenizer>,
    trie: TokTrie,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // The model's own tokenizer where the bytes are text; the trie's greedy split otherwise, so
        // a grammar never sees an error for bytes that split a character.
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }

    /// clerk's `encode` applies the tokenizer's normalizer (SentencePiece's leading "▁" for
    /// llama-style vocabularies), so its tokens for a grammar's fragment need not be the ones
    /// the grammar can accept; llguidance must not force them.
    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// The shared, per-engine half: compiles grammars into matchers.
pub struct Guidance {
    factory: ParserFactory,
    eos: Vec<u32>,
    /// The last grammar compiled, fresh: the `n` choices of one request, and clients that send
    /// the same tools or schema with every request, clone it instead of compiling again.
    last: Mutex<Option<(Grammar, Matcher)>>,
}

impl Guidance {
    /// `vocab_size` is the model's logit row length, which may exceed the tokenizer's vocabulary
    /// (padding rows); those ids get no bytes and are never allowed.
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Result<Self> {
        let mut words = tokenizer.token_bytes()?.to_vec();
        if words.len() > vocab_size {
            return Err(EngineError::Tokenizer(format!(
                "the tokenizer has {} tokens but the model only {vocab_size}",
                words.len()
            )));
        }
        words.resize(vocab_size, Vec::new());
        let eos = tokenizer.eos_ids().to_vec();
        let first_eos = *eos.first().ok_or_else(|| {
            EngineError::Tokenizer("constrained decoding needs an end-of-sequence token".into())
        })?;
        let mut info = TokRxInfo::new(vocab_size as u32, first_eos);
        info.tok_bos = tokenizer.bos_id();
        info.tok_end_of_turn = eos.get(1).copied();
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env { tokenizer, trie });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| EngineError::Grammar(format!("cannot prepare the tokenizer: {e}")))?;
        // llguidance logs grammar warnings to stderr by default; errors reach the caller instead.
        factory.quiet();
        Ok(Self {
            factory,
            eos,
            last: Mutex::new(None),
        })
    }

    /// Compiles `grammar`; a grammar that does not compile is the caller's error.
    pub fn constraint(&self, grammar: &Grammar) -> Result<Constraint> {
        let cached = self.last.lock().ok().and_then(|last| {
            last.as_ref()
                .filter(|(g, _)| g == grammar)
                .map(|(_, m)| m.clone())
        });
        let matcher = match cached {
            Some(m) => m,
            None => {
                let matcher = Matcher::new(self.factory.create_parser(grammar.top_level()));
                if let Some(e) = matcher.get_error() {
                    return Err(EngineError::Grammar(e));
                }
                if let Ok(mut last) = self.last.lock() {
                    *last = Some((grammar.clone(), matcher.clone()));
                }
                matcher
            }
        };
        Ok(Constraint {
            matcher,
            eos: self.eos.clone(),
        })
    }
}

/// A grammar that compiled but failed mid-generation (a parser limit, an internal error) is the
/// server's failure, not the caller's: a generation error, with only the first line of the
/// grammar engine's message (the rest can be a backtrace).
fn failed(e: anyhow::Error) -> EngineError {
    let msg = e.to_string();
    let first = msg.lines().next().unwrap_or("").trim();
    EngineError::Generation(format!("constrained decoding failed: {first}"))
}

/// One generation's grammar state.
pub struct Constraint {
    matcher: Matcher,
    eos: Vec<u32>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").finish_non_exhaustive()
    }
}

impl Constraint {
    /// Sets every token the grammar does not allow next to −∞. Where the grammar may end, every
    /// end-of-sequence token is allowed (the trie knows only one).
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<()> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(failed)?;
        let may_end = self.eos.iter().any(|&t| allowed.is_allowed(t));
        for (id, l) in logits.iter_mut().enumerate() {
            let id = id as u32;
            if !(allowed.is_allowed(id) || (may_end && self.eos.contains(&id))) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances past a sampled token (one the mask allowed).
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.matcher.consume_token(token).map_err(failed)
    }

    /// The grammar is complete and allows nothing more.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}
