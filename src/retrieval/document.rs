//! What the knowledge base holds: documents (one ingested file or posted body) made of chunks (one
//! product, one FAQ entry, or one section of a policy page), each citable by its source.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a chunk is, for filtering and for how the assistant uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Product,
    Faq,
    Policy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Product, Kind::Faq, Kind::Policy];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Product => "product",
            Kind::Faq => "faq",
            Kind::Policy => "policy",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "product" | "products" => Ok(Kind::Product),
            "faq" | "faqs" => Ok(Kind::Faq),
            "policy" | "policies" | "page" => Ok(Kind::Policy),
            other => Err(format!(
                "unknown kind `{other}` (expected product, faq or policy)"
            )),
        }
    }
}

/// Where a chunk came from, so an answer can cite it: the file (or posted document name) and the
/// heading, row or record within it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub file: String,
    /// `heading: Returns window`, `row 12`, `products[3]`.
    pub locator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

/// The facts of a product chunk that filters and answers need without parsing its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductFacts {
    pub product_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub price_min: f64,
    pub price_max: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub in_stock: bool,
    /// Units in stock, when the source says (tau2 shops only say whether a variant is available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One retrievable passage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Unique in the knowledge base: `<document id>#<product id | section number>`.
    pub id: String,
    pub document_id: String,
    pub kind: Kind,
    /// The product name, the FAQ question, or the section heading.
    pub title: String,
    /// What the chunk sits under: the page title ("Returns policy"), the FAQ page, the category.
    pub context: String,
    /// The passage itself.
    pub text: String,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<ProductFacts>,
    /// What the embedder sees when it isn't the passage: a product's name, category, description
    /// and attributes, without option lists and prices, which drown its meaning in numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_text: Option<String>,
}

impl Chunk {
    /// The text the embedder sees.
    pub fn embedding_text(&self) -> String {
        if let Some(t) = &self.dense_text {
            return t.clone();
        }
        if self.context.is_empty() {
            format!("{}\n{}", self.title, self.text)
        } else {
            format!("{}: {}\n{}", self.context, self.title, self.text)
        }
    }
}

/// One ingested unit, replaced and deleted as a whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentInfo {
    pub id: String,
    /// The file path or posted name it came from.
    pub source: String,
    /// FNV-1a of the raw content and the options it was parsed with; equal means unchanged.
    pub hash: String,
    pub chunks: usize,
    pub kinds: Vec<Kind>,
    /// Seconds since the Unix epoch.
    pub ingested_at: u64,
}
