//! clerk: a self-hosted AI customer-service engine for online shops.
//!
//! The crate is a map of concerns, with dependencies pointing one way
//! (`cli` → `server` → `assistant` → `shop` → `retrieval` → `engine`; `shop` uses the knowledge base
//! for recommendations and the embedder for its feedback classifier):
//!
//! - [`engine`]: everything that turns tokens into tokens. GGUF loading, tokenizers built from GGUF
//!   metadata, chat templates, the quantized kernels, the transformer forward (clerk's own on the
//!   CPU, one on candle tensors for GPUs), sampling, the KV and prefix caches, and the scheduler
//!   thread that batches every active sequence into one forward per step; also the sentence
//!   embedder ([`engine::Embedder`], BERT on candle tensors). It knows nothing of HTTP or shops;
//!   callers talk to it through [`engine::Engine`].
//! - [`retrieval`]: the shop's knowledge. Parsers for catalogues (CSV, JSON, JSONL, tau2 `db.json`),
//!   FAQ and policy pages (Markdown, text, HTML) into citable chunks; immutable on-disk generations
//!   (tantivy BM25 index with a CJK-aware tokenizer, memory-mapped vector file) switched
//!   atomically; hybrid search fused by reciprocal rank; the labeled-set evaluation; the built-in
//!   demo shop. Handle: [`retrieval::Knowledge`].
//! - [`shop`]: the shop's records and the actions clerk may take on them. Domain types parsed at
//!   the boundary, the [`shop::ShopStore`] trait and its SQLite implementation (personal fields
//!   sealed at rest under the operator's data key), the merchant's
//!   policy, identity, order actions confirmed by one-use tokens, feedback classification,
//!   complaints, handoffs, privacy export and erasure, recommendations, imports and the demo seed.
//!   Handle: [`shop::Shop`].
//! - [`server`]: the HTTP layer. OpenAI-compatible routes (chat, legacy completions, embeddings,
//!   models), the knowledge and shop routes, the assistant's conversation, rating and analytics
//!   routes, the shopper's chat page, widget and staff console (files under `web/`, built in),
//!   health and Prometheus metrics, API keys with scopes, CORS and limits, and the one mapping from
//!   errors to OpenAI-shaped responses. Handlers get a `Clone` [`server::AppState`] of handles.
//! - [`clock`]: Unix time and UTC calendar dates, shared by templates, the server and the shop.
//! - [`digest`]: SHA-256 of files, shared by backups and the hub download's check.
//! - [`backup`]: consistent backups of a data folder taken while serving, and checked restores.
//! - [`cli`]: one file per subcommand of the `clerk` binary; `main.rs` only parses and calls in.
//!
//! - [`assistant`]: the shop's customer-service agent, served as the model `clerk`. Server-side
//!   conversation state (identity, the change waiting for a yes), language detection, the offline
//!   intent classifier and exact extraction, the flows over the shop's actions, answers quoted from
//!   the knowledge base with their sources, handoffs, and the scripted-conversation evaluation.
//!   Phrases and the per-language glossaries (a shopper's product and policy words, in the English
//!   catalogue's terms) come from `prompts/<lang>/`. Handle: [`assistant::Assistant`].

pub mod assistant;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod digest;
pub mod engine;
pub mod retrieval;
pub mod server;
pub mod shop;
