//! Records of the service side of a shop: feedback, complaints, handoffs to staff, and the
//! conversations they belong to.

use serde::{Deserialize, Serialize};

use super::domain::{Channel, CustomerId, OrderId, Role};
use super::policy::Resolution;
use super::records::string_kind;

string_kind!(Topic {
    ProductQuality => "product_quality",
    Delivery => "delivery",
    Payment => "payment",
    Website => "website",
    Staff => "staff",
    Other => "other",
});

impl Topic {
    pub const ALL: [Topic; 6] = [
        Topic::ProductQuality,
        Topic::Delivery,
        Topic::Payment,
        Topic::Website,
        Topic::Staff,
        Topic::Other,
    ];
}

string_kind!(Sentiment { Positive => "positive", Neutral => "neutral", Negative => "negative" });

impl Sentiment {
    pub const ALL: [Sentiment; 3] = [Sentiment::Positive, Sentiment::Neutral, Sentiment::Negative];
}

string_kind!(Severity { Low => "low", Medium => "medium", High => "high" });

string_kind!(HandoffStatus { Open => "open", Claimed => "claimed", Closed => "closed" });

string_kind!(ComplaintStatus { Open => "open", Resolved => "resolved" });

// Where a shopper's rating of an answer stands: `Noted` needs no review (no correction came with
// it); a correction waits as `Pending` until staff approve or reject it.
string_kind!(RatingStatus { Noted => "noted", Pending => "pending", Approved => "approved", Rejected => "rejected" });

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    pub text: String,
    /// 1 to 5 stars, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<u8>,
    pub topic: Topic,
    pub sentiment: Sentiment,
    /// The classifier's cosine similarity to the winning examples (0 to 1).
    pub confidence: f32,
    /// The department queue the feedback was routed to.
    pub queue: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Complaint {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<OrderId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    pub text: String,
    pub category: Topic,
    pub severity: Severity,
    /// The resolution the policy suggests.
    pub resolution: Resolution,
    /// Why, in a sentence staff can read.
    pub resolution_note: String,
    /// Whether the policy grants the resolution without staff review.
    pub auto_approved: bool,
    pub created_at: i64,
    pub status: ComplaintStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub id: i64,
    pub conversation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    pub reason: String,
    pub summary: String,
    pub status: HandoffStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    pub channel: Channel,
    /// A human holds the conversation: the assistant stays silent.
    pub human: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: i64,
    pub conversation_id: String,
    pub role: Role,
    /// The staff member, for staff messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub content: String,
    pub created_at: i64,
    /// What the assistant attached (sources, cards, intent, language, latency), when it wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

/// A shopper's thumbs up (+1) or down (-1) on one assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRating {
    pub id: i64,
    pub message_id: i64,
    pub conversation_id: String,
    pub rating: i8,
    /// The shopper's message the rated answer replied to.
    pub question: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<String>,
    pub status: RatingStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An answer staff approved for a question; it wins over retrieval for the same question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CuratedAnswer {
    pub id: i64,
    pub question: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating_id: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
}

/// Counts for the console's charts, over the days since a given time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Analytics {
    /// Per day (UTC, `YYYY-MM-DD`), oldest first, days without traffic included.
    pub days: Vec<DayCount>,
    pub conversations: u64,
    /// Conversations that never needed a human, over all conversations (0 when there are none).
    pub resolved_without_human: f64,
    pub handoff_rate: f64,
    pub handoff_reasons: Vec<Counted>,
    pub ratings: RatingCounts,
    pub top_intents: Vec<Counted>,
    /// Shopper questions the assistant found no answer for, most asked first.
    pub unanswered: Vec<Counted>,
    pub latency_ms: Latency,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DayCount {
    pub date: String,
    pub conversations: u64,
    pub handoffs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counted {
    pub label: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RatingCounts {
    pub up: u64,
    pub down: u64,
}

/// Assistant turn latency percentiles, from the `latency_ms` each reply stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}
