//! The shop: the records clerk keeps and the actions it may take on them.
//!
//! The model has no authority here. Every action checks identity, order state and policy in code,
//! and the same functions serve the assistant, the HTTP API and the staff console.
//!
//! - `domain`: identifiers parsed at the boundary ([`OrderId`], [`Email`], [`Sku`]...), money in
//!   cents, and the closed sets (order status, channel, role) as enums.
//! - `records` and `service`: customers, products, orders; feedback, complaints, handoffs,
//!   conversations.
//! - `store`: the [`ShopStore`] trait every database implements; `sqlite` is the default one.
//! - `policy`: the merchant's rules ([`Policy`]), tau2's retail policy by default.
//! - `actions`: identity ([`Shop::identify`]), order status, and the order changes, each in two
//!   steps: a summary with a one-use token, then the change with that token.
//! - `crypto`: personal fields sealed at rest under the operator's data key, with a blind index
//!   for email lookups and key rotation.
//! - `care`: feedback classification and routing, complaints with suggested resolutions,
//!   handoffs to staff, conversations, and the privacy export and erasure.
//! - `recommend`: products for a customer, from their history, the shop's order history and the
//!   knowledge base.
//! - `import`: tau2 `db.json` and CSV exports; `seed`: the demo shop's customers and orders.

pub mod actions;
pub mod care;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod import;
pub mod policy;
pub mod recommend;
pub mod records;
pub mod seed;
pub mod service;
pub mod sqlite;
pub mod store;

use std::path::Path;
use std::sync::{Arc, OnceLock};

pub use actions::{
    Actor, Confirmation, Ctx, Identified, IdentifyBy, ItemChange, OrderAction, OrderDetails,
    Outcome, Summary,
};
pub use care::{cosine, FeedbackClassifier};
pub use crypto::KeySource;
pub use domain::*;
pub use error::{Refusal, ShopError};
pub use policy::{ActionKind, Policy};
pub use records::*;
pub use store::{Purged, ShopCounts, ShopData, ShopStore};

/// The shop handle: a store, the policy it enforces, and the feedback classifier. Cheap to clone.
#[derive(Clone)]
pub struct Shop {
    store: Arc<dyn ShopStore>,
    policy: Arc<Policy>,
    /// Set once the embedder has loaded (the server loads it in the background).
    classifier: Arc<OnceLock<Arc<FeedbackClassifier>>>,
}

impl Shop {
    pub fn new(store: Arc<dyn ShopStore>, policy: Policy) -> Self {
        Self {
            store,
            policy: Arc::new(policy),
            classifier: Arc::new(OnceLock::new()),
        }
    }

    /// Opens the SQLite shop in `data_dir`, its personal fields under the automatic data key
    /// (`data_dir/data.key`, made on first use).
    pub fn open(data_dir: &Path, policy: Policy) -> error::Result<Self> {
        Self::open_with_key(data_dir, policy, &KeySource::Auto)
    }

    /// Opens the SQLite shop in `data_dir` with the data key `key` names.
    pub fn open_with_key(data_dir: &Path, policy: Policy, key: &KeySource) -> error::Result<Self> {
        Ok(Self::new(
            Arc::new(sqlite::SqliteStore::open(data_dir, key)?),
            policy,
        ))
    }

    /// Feedback and complaints are classified with this; without one they land as `other`.
    /// The first classifier set stays.
    pub fn set_classifier(&self, classifier: Arc<FeedbackClassifier>) {
        let _ = self.classifier.set(classifier);
    }

    pub fn store(&self) -> &dyn ShopStore {
        self.store.as_ref()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn counts(&self) -> error::Result<ShopCounts> {
        self.store.counts()
    }
}
