//! The shop's customer-service agent, served as the model `clerk`.
//!
//! A turn is `(conversation id, the shopper's new message)`. Everything else the assistant knows
//! (who the shopper proved to be, which change waits for a yes, the language, what it is still
//! asking for) lives on the server in [`Assistant`]'s conversation state, never in the history a
//! client sends, so a forged earlier message changes nothing.
//!
//! - `lang`: which language a message is in (English, Chinese, Spanish).
//! - `prompts`: the fixed phrases and word lists per language, from `prompts/<lang>/`.
//! - `intent`: the offline intent classifier (nearest labelled examples by embedding).
//! - `tools`: understanding by tool calls instead, with a model chosen in settings: the model
//!   must call one of the assistant's functions (constrained decoding); the flows act on it.
//! - `extract`: exact extraction of order ids, emails, addresses, payment kinds, yes and no.
//! - `turn`: the flows: identity first, one action at a time, confirm before any change,
//!   grounded answers with sources, handoff to staff.
//! - `eval`: scripted conversations (YAML) replayed against a fresh demo shop.
//!
//! Every fact in a reply (price, stock, status, policy text) is copied from the shop's records or
//! its documents into a phrase; the default model writes none of them.

pub mod eval;
pub mod extract;
pub mod glossary;
pub mod intent;
pub mod lang;
pub mod prompts;
pub mod tools;
mod turn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::engine::EngineError;
use crate::retrieval::{Knowledge, RetrievalError};
use crate::shop::{Shop, ShopError};

pub use intent::{Intent, IntentClassifier};
pub use lang::Lang;
pub use prompts::Prompts;
use turn::State;

#[derive(Debug, thiserror::Error)]
pub enum AssistantError {
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    Shop(#[from] ShopError),
    #[error(transparent)]
    Retrieval(#[from] RetrievalError),
    #[error("embedding: {0}")]
    Embedding(#[from] EngineError),
    #[error("prompts: {0}")]
    Prompts(String),
    #[error("data: {0}")]
    Data(String),
    /// The model that understands messages by tool calls failed.
    #[error("model: {0}")]
    Model(String),
}

/// A passage or record an answer rests on, numbered as the text cites it (`[1]`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    pub n: usize,
    pub document_id: String,
    pub title: String,
    pub kind: String,
    /// Where in the document: a heading, a row, a product.
    pub locator: String,
}

/// A record a reply rests on, in a shape a chat window shows as a card (the text says the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Card {
    Product {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<String>,
        /// As the shop states it: one price, or a range over the variants.
        price: String,
        in_stock: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stock: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        document_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
    Order {
        order_id: String,
        status: String,
        items: Vec<String>,
        total: String,
        tracking: Vec<Tracking>,
    },
}

/// One parcel of an order: its tracking id, carrier and scan events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracking {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<crate::shop::TrackingEvent>,
}

/// A conversation as the shopper's page shows it after a reload, or polls it for staff replies.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub conversation_id: String,
    /// Staff hold the conversation.
    pub human: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffState>,
    pub messages: Vec<crate::shop::service::Message>,
}

/// What the shopper's page may know of a handoff: that it exists and where it stands, not the
/// reason and summary written for staff.
#[derive(Debug, Clone, Serialize)]
pub struct HandoffState {
    pub id: i64,
    pub status: crate::shop::service::HandoffStatus,
}

/// What the assistant says in one turn, and what the turn did.
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    pub conversation_id: String,
    /// Empty when the assistant stays silent (staff hold the conversation).
    pub text: String,
    pub language: Lang,
    /// What the message was understood to ask; none when it only answered a question of ours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
    pub sources: Vec<Source>,
    /// The open handoff, when staff hold (or were just given) the conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handoff: Option<i64>,
    pub silent: bool,
    pub verified: bool,
    /// A change waits for the shopper's yes.
    pub awaiting_confirmation: bool,
    /// The stored assistant message, for thumbs up or down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<i64>,
    pub cards: Vec<Card>,
}

/// Cheap to clone: the shop, the knowledge base, the classifier, the phrases, and the
/// conversations' state.
#[derive(Clone)]
pub struct Assistant {
    inner: Arc<Inner>,
}

struct Inner {
    shop: Shop,
    knowledge: Knowledge,
    intents: Arc<IntentClassifier>,
    prompts: Arc<Prompts>,
    shop_name: String,
    /// When set, messages are understood by the model's tool calls instead of the offline
    /// classifier.
    tool_model: std::sync::OnceLock<tools::ToolUnderstanding>,
    /// Staff-approved answers with their questions' embeddings, refreshed when the list changes;
    /// a snapshot is taken under the lock and compared outside it.
    curated: Mutex<Arc<CuratedCache>>,
    /// One lock per conversation, so two conversations never wait for each other and two
    /// requests on one conversation take turns.
    conversations: Mutex<HashMap<String, Arc<Mutex<State>>>>,
}

/// Curated answers and their questions' embeddings.
type CuratedCache = Vec<(crate::shop::service::CuratedAnswer, Vec<f32>)>;

/// Conversations kept in memory at most; the least recently used are forgotten (their shopper
/// verifies again).
const MAX_CONVERSATIONS: usize = 10_000;

impl Assistant {
    pub fn new(
        shop: Shop,
        knowledge: Knowledge,
        intents: Arc<IntentClassifier>,
        prompts: Arc<Prompts>,
        shop_name: impl Into<String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                shop,
                knowledge,
                intents,
                prompts,
                shop_name: shop_name.into(),
                tool_model: std::sync::OnceLock::new(),
                curated: Mutex::new(Arc::new(Vec::new())),
                conversations: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn shop(&self) -> &Shop {
        &self.inner.shop
    }

    /// From now on, understand messages by `model`'s tool calls (the first model set stays).
    pub fn understand_with(&self, model: tools::ToolUnderstanding) {
        let _ = self.inner.tool_model.set(model);
    }

    pub fn shop_name(&self) -> &str {
        &self.inner.shop_name
    }

    pub fn prompts(&self) -> &Prompts {
        &self.inner.prompts
    }

    /// A new conversation id: unguessable, since holding it is holding the conversation.
    pub fn new_conversation_id() -> String {
        format!("conv-{}", crate::shop::actions::random_token())
    }

    /// Whether `id` has the shape of [`Self::new_conversation_id`]. The HTTP routes take only
    /// such ids, so no client can pick a guessable one ("1", "test") that another could reuse.
    pub fn is_conversation_id(id: &str) -> bool {
        id.strip_prefix("conv-").is_some_and(|hex| {
            hex.len() == 48 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
    }

    /// Whether `id` names a conversation the shop has stored, that is one this server started.
    /// The HTTP routes take no other: an id of the right shape that a client made up ("conv-"
    /// and 48 zeros) could otherwise be shared by whoever else guesses it.
    pub fn knows(&self, id: &str) -> Result<bool, AssistantError> {
        Ok(self.inner.shop.store().conversation(id.trim())?.is_some())
    }

    /// One turn. Blocking (embedding, SQLite): call it off the async runtime.
    pub fn turn(&self, conversation: Option<&str>, text: &str) -> Result<Reply, AssistantError> {
        let id = match conversation {
            Some(id) => id.trim().to_string(),
            None => Self::new_conversation_id(),
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(AssistantError::Invalid {
                field: "messages",
                message: "the last user message is empty".into(),
            });
        }
        if text.chars().count() > 4000 {
            return Err(AssistantError::Invalid {
                field: "messages",
                message: "the last user message is longer than 4000 characters".into(),
            });
        }
        let state = self.state_of(&id);
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        turn::Turn::new(&self.inner, &id, &mut state).run(text)
    }

    /// The shopper pressed "talk to a person": a handoff opens at once, whatever the message
    /// classifier would have made of a typed request.
    pub fn request_human(&self, conversation: &str) -> Result<Reply, AssistantError> {
        let id = conversation.trim().to_string();
        let state = self.state_of(&id);
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        turn::Turn::new(&self.inner, &id, &mut state).request_human()
    }

    /// The conversation's messages after `after` (a message id). Staff messages returned here
    /// count as delivered, so the next turn does not repeat them.
    pub fn history(&self, conversation: &str, after: i64) -> Result<History, AssistantError> {
        let shop = &self.inner.shop;
        let conv = shop
            .store()
            .conversation(conversation)?
            .ok_or_else(|| crate::shop::ShopError::not_found("conversation", conversation))?;
        let messages = shop.store().messages(&conv.id, after)?;
        let handoff = shop.open_handoff_of(&conv.id)?;
        if let Some(last) = messages.last() {
            let state = self.state_of(&conv.id);
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            state.staff_seen = state.staff_seen.max(last.id);
        }
        Ok(History {
            conversation_id: conv.id,
            human: conv.human,
            handoff: handoff.map(|h| HandoffState {
                id: h.id,
                status: h.status,
            }),
            messages,
        })
    }

    /// The server-side state of a conversation, made on first use.
    fn state_of(&self, id: &str) -> Arc<Mutex<State>> {
        let mut map = self
            .inner
            .conversations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CONVERSATIONS && !map.contains_key(id) {
            // Forget the idlest: state that nobody holds and that was used longest ago.
            if let Some(oldest) = map
                .iter()
                .filter(|(_, s)| Arc::strong_count(s) == 1)
                .min_by_key(|(_, s)| s.lock().map(|s| s.last_used).unwrap_or(0))
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.entry(id.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(State::default())))
            .clone()
    }
}
