//! Tokenizers built from GGUF metadata, on the `tokenizers` crate.
//!
//! Two families, as `tokenizer.ggml.model` names them:
//! - `gpt2`: byte-level BPE from the vocabulary and merges, with the pre-tokenizer that
//!   `tokenizer.ggml.pre` names (each has its own split regex; `smollm` also splits digits one by one).
//!   candle's own GGUF tokenizer adds a prefix space and lacks these pre-tokenizers, so it is not used.
//! - `llama` (SentencePiece): GGUF keeps only scores, no merges, and the scores are merge ranks rather
//!   than log-probabilities, so a Unigram model built from them tokenizes differently from llama.cpp.
//!   What matches llama.cpp is BPE with merges derived from the scores: every token that splits into
//!   two vocabulary pieces gives a merge ranked by the merged token's score; byte fallback for the rest.
//!
//! Control tokens (type 3) become special added tokens and user-defined ones (type 4) plain added
//! tokens, both matched on the raw text, so `<|im_start|>` is one id and not eleven characters.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use super::error::{EngineError, Result};
use super::gguf::GgufFile;

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

// Token types as GGUF stores them (llama.cpp's `llama_token_type`).
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Split regexes of the gpt2-style pre-tokenizers, by `tokenizer.ggml.pre`.
fn pre_tokenizer_regex(pre: &str) -> Option<Option<&'static str>> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        // The classic GPT-2 regex, which ByteLevel applies itself.
        "default" | "gpt2" | "gpt-2" | "smollm" | "starcoder" | "refact" => None,
        "llama3" | "llama-v3" | "llama-bpe" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        _ => return None,
    })
}

fn strings(g: &GgufFile, key: &str) -> Result<Vec<String>> {
    let v = g
        .get(key)
        .ok_or_else(|| err(format!("metadata `{key}` is missing")))?;
    let arr = v.to_vec().map_err(err)?;
    arr.iter()
        .map(|x| x.to_string().cloned().map_err(err))
        .collect()
}

fn numbers(g: &GgufFile, key: &str) -> Option<Vec<f64>> {
    let arr = g.get(key)?.to_vec().ok()?;
    arr.iter()
        .map(|x| match x {
            Value::F32(f) => Some(*f as f64),
            Value::F64(f) => Some(*f),
            Value::I32(i) => Some(*i as f64),
            Value::U32(i) => Some(*i as f64),
            Value::I64(i) => Some(*i as f64),
            Value::U8(i) => Some(*i as f64),
            Value::I8(i) => Some(*i as f64),
            Value::U16(i) => Some(*i as f64),
            Value::I16(i) => Some(*i as f64),
            _ => None,
        })
        .collect()
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
    eos: Vec<u32>,
    special: Vec<bool>,
    /// Every token's bytes ([`Self::token_bytes`]), made the first time they are asked for; the
    /// grammar engine and the logprobs share them.
    bytes: std::sync::OnceLock<std::result::Result<Vec<Vec<u8>>, String>>,
}

impl Tokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.get_str("tokenizer.ggml.model").map_err(err)?.to_string();
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let types: Vec<i64> = numbers(g, "tokenizer.ggml.token_type")
            .map(|v| v.into_iter().map(|x| x as i64).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(err("token_type and tokens have different lengths"));
        }
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut inner = match model.as_str() {
            "gpt2" => {
                let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
                let regex = pre_tokenizer_regex(pre).ok_or_else(|| {
                    err(format!(
                        "unsupported pre-tokenizer `{pre}` (tokenizer.ggml.pre)"
                    ))
                })?;
                let merges: Vec<(String, String)> = strings(g, "tokenizer.ggml.merges")?
                    .into_iter()
                    .map(|m| {
                        m.split_once(' ')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .ok_or_else(|| err(format!("malformed merge `{m}`")))
                    })
                    .collect::<Result<_>>()?;
                let bpe = BPE::builder()
                    .vocab_and_merges(
                        vocab
                            .into_iter()
                            .collect::<tokenizers::models::bpe::Vocab>(),
                        merges,
                    )
                    .ignore_merges(matches!(
                        pre,
                        "llama3" | "llama-v3" | "llama-bpe" | "dbrx" | "smaug-bpe"
                    ))
                    .build()
                    .map_err(err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let mut pres: Vec<PreTokenizerWrapper> = Vec::new();
                if pre == "smollm" || pre == "starcoder" || pre == "refact" {
                    pres.push(Digits::new(true).into());
                }
                match regex {
                    Some(r) => {
                        pres.push(
                            Split::new(
                                SplitPattern::Regex(r.into()),
                                SplitDelimiterBehavior::Isolated,
                                false,
                            )
                            .map_err(err)?
                            .into(),
                        );
                        pres.push(ByteLevel::new(false, false, false).into());
                    }
                    None => pres.push(ByteLevel::new(false, false, true).into()),
                }
                t.with_pre_tokenizer(Some(PreSequence::new(pres)));
                t.with_decoder(Some(ByteLevelDecoder::default()));
                t
            }
            "llama" => {
                let scores = numbers(g, "tokenizer.ggml.scores")
                    .ok_or_else(|| err("SentencePiece model without tokenizer.ggml.scores"))?;
                if scores.len() != tokens.len() {
                    return Err(err("scores and tokens have different lengths"));
                }
                let merges = merges_from_scores(&tokens, &types, &scores, &vocab);
                let unk = g
                    .get_usize("tokenizer.ggml.unknown_token_id")
                    .ok()
                    .and_then(|i| tokens.get(i).cloned())
                    .unwrap_or_else(|| "<unk>".into());
                let bpe = BPE::builder()
                    .vocab_and_merges(
                        vocab
                            .into_iter()
                            .collect::<tokenizers::models::bpe::Vocab>(),
                        merges,
                    )
                    .unk_token(unk)
                    .fuse_unk(true)
                    .byte_fallback(true)
                    .build()
                    .map_err(err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let prefix = g
                    .get_bool("tokenizer.ggml.add_space_prefix")
                    .unwrap_or(true);
                let replace: NormalizerWrapper = Replace::new(" ", "▁").map_err(err)?.into();
                let mut decoders: Vec<DecoderWrapper> = vec![
                    Replace::new("▁", " ").map_err(err)?.into(),
                    ByteFallback::new().into(),
                    Fuse::new().into(),
                ];
                if prefix {
                    t.with_normalizer(Some(tokenizers::normalizers::Sequence::new(vec![
                        Prepend::new("▁".into()).into(),
                        replace,
                    ])))
                    .map_err(err)?;
                    decoders.push(Strip::new(' ', 1, 0).into());
                } else {
                    t.with_normalizer(Some(replace)).map_err(err)?;
                }
                t.with_decoder(Some(DecoderSequence::new(decoders)));
                t
            }
            other => return Err(err(format!("unsupported tokenizer model `{other}`"))),
        };

        let mut special = vec![false; tokens.len()];
        let mut added = Vec::new();
        for (i, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
            match *ty {
                TYPE_CONTROL => {
                    special[i] = true;
                    added.push(AddedToken::from(tok.clone(), true).normalized(false));
                }
                TYPE_USER_DEFINED => {
                    added.push(AddedToken::from(tok.clone(), false).normalized(false));
                }
                _ => {}
            }
        }
        let (specials, plain): (Vec<AddedToken>, Vec<AddedToken>) =
            added.into_iter().partition(|a| a.special);
        inner.add_special_tokens(specials).map_err(err)?;
        inner.add_tokens(plain).map_err(err)?;

        let bos = g
            .get_usize("tokenizer.ggml.bos_token_id")
            .ok()
            .map(|i| i as u32);
        let add_bos = g
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(model == "llama");
        let mut eos: Vec<u32> = g
            .get_usize("tokenizer.ggml.eos_token_id")
            .ok()
            .map(|i| i as u32)
            .into_iter()
            .collect();
        if let Ok(e) = g.get_usize("tokenizer.ggml.eot_token_id") {
            eos.push(e as u32);
        }
        for name in [
            "<|im_end|>",
            "<end_of_turn>",
            "<|eot_id|>",
            "<|endoftext|>",
            "<|end|>",
        ] {
            if let Some(&id) = tokens
                .iter()
                .position(|t| t == name)
                .map(|i| i as u32)
                .as_ref()
            {
                if special[id as usize] && !eos.contains(&id) {
                    eos.push(id);
                }
            }
        }
        Ok(Self {
            inner,
            bos,
            add_bos,
            eos,
            special,
            bytes: std::sync::OnceLock::new(),
        })
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
        let vocab = inner.get_vocab_size(true);
        let mut special = vec![false; vocab];
        for (id, tok) in inner.get_added_tokens_decoder() {
            if tok.special {
                if let Some(s) = special.get_mut(id as usize) {
                    *s = true;
                }
            }
        }
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let bos = find(&["<s>", "<bos>", "<|begin_of_text|>"]);
        let eos = [
            "</s>",
            "<eos>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<|im_end|>",
            "<|endoftext|>",
            "<end_of_turn>",
        ]
        .iter()
        .filter_map(|n| inner.token_to_id(n))
        .collect();
        Ok(Self {
            inner,
            bos,
            add_bos: false,
            eos,
            special,
            bytes: std::sync::OnceLock::new(),
        })
    }

    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(err)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Every token's bytes, by id, for the grammar engine: special tokens are marked (a leading
    /// 0xFF) so no grammar literal can match them; ids the vocabulary skips get no bytes.
    pub fn token_bytes(&self) -> Result<&[Vec<u8>]> {
        self.bytes
            .get_or_init(|| {
                self.make_token_bytes().map_err(|e| match e {
                    EngineError::Tokenizer(m) => m,
                    other => other.to_string(),
                })
            })
            .as_deref()
            .map_err(|e| EngineError::Tokenizer(e.clone()))
    }

    fn make_token_bytes(&self) -> Result<Vec<Vec<u8>>> {
        let json = serde_json::to_value(&self.inner).map_err(err)?;
        // llguidance asserts on vocabularies it does not understand; a panic here is a tokenizer
        // it can't constrain, not a reason to take the engine down.
        let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
            .map_err(|_| err("constrained decoding does not understand this tokenizer"))?
            .map_err(|e| err(format!("constrained decoding: {e}")))?;
        Ok(words)
    }

    /// The bytes token `id` stands for. A byte-level or byte-fallback token may hold part of a
    /// UTF-8 character, which [`Self::decode`] alone turns into "�"; these are its real bytes, so
    /// a client can join them into the character (OpenAI's logprob `bytes`). A special token, or
    /// a vocabulary the table can't be made for, gives its decoded text.
    pub fn bytes_of(&self, id: u32) -> Vec<u8> {
        match self.token_bytes().ok().and_then(|t| t.get(id as usize)) {
            Some(b) if !b.is_empty() && !self.is_special(id) => b.clone(),
            _ => self.decode(&[id], false).unwrap_or_default().into_bytes(),
        }
    }

    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream {
            tok: self,
            skip_special,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }
}

/// Merges for a SentencePiece vocabulary: each normal token that splits into two vocabulary pieces,
/// ranked by the token's score (higher first).
fn merges_from_scores(
    tokens: &[String],
    types: &[i64],
    scores: &[f64],
    vocab: &HashMap<String, u32>,
) -> Vec<(String, String)> {
    let mut ranked: Vec<(f64, u32, usize, String, String)> = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        if types[id] != 1 || tok.chars().nth(1).is_none() {
            continue;
        }
        for (pos, _) in tok.char_indices().skip(1) {
            let (l, r) = tok.split_at(pos);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                ranked.push((scores[id], id as u32, pos, l.to_string(), r.to_string()));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}

/// Incremental detokenizer: text comes out once it forms complete UTF-8, so a character split across
/// byte tokens is never emitted in halves.
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl DecodeStream<'_> {
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = self
            .tok
            .decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = self
            .tok
            .decode(&self.ids[self.prefix..], self.skip_special)?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            let new = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(new))
        } else {
            Ok(None)
        }
    }

    /// Whatever is still held back at the end (an incomplete character comes out as U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>> {
        if self.read >= self.ids.len() {
            return Ok(None);
        }
        let before = self
            .tok
            .decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = self
            .tok
            .decode(&self.ids[self.prefix..], self.skip_special)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now
            .strip_prefix(before.as_str())
            .map(str::to_string)
            .filter(|s| !s.is_empty()))
    }
}
