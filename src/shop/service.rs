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
}
