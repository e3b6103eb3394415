//! The storage seam. Business rules live in `actions`; a store only reads records and applies a
//! [`Write`] (a list of [`Change`]s, their audit entry, and the confirmation token they consume)
//! as one transaction. SQLite is the default implementation; a PostgreSQL store implements the
//! same trait.

use serde::{Deserialize, Serialize};

use super::domain::*;
use super::error::Result;
use super::records::*;
use super::service::{
    Analytics, AnswerRating, Complaint, ComplaintStatus, Conversation, CuratedAnswer, Feedback,
    Handoff, HandoffStatus, Message, RatingStatus,
};

/// Keyset pagination: at most `limit` rows after the row whose id is `after`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: usize,
    pub after: Option<String>,
}

impl Page {
    pub fn first(limit: usize) -> Self {
        Self { limit, after: None }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub customer: Option<CustomerId>,
    pub status: Option<OrderStatus>,
}

/// A whole shop, as an import brings it.
#[derive(Debug, Clone, Default)]
pub struct ShopData {
    pub customers: Vec<Customer>,
    pub products: Vec<Product>,
    pub orders: Vec<Order>,
}

/// What a store holds, summed exactly (the import round-trip test compares these).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShopCounts {
    pub customers: u64,
    pub payment_methods: u64,
    pub products: u64,
    pub variants: u64,
    pub orders: u64,
    pub order_items: u64,
    pub payments: u64,
    pub refunds: u64,
    pub item_total: Money,
    pub paid_total: Money,
    pub refunded_total: Money,
    pub gift_card_balance: Money,
}

/// One state change. Each carries what it expects to find, so a write racing another fails as a
/// conflict instead of overwriting it.
#[derive(Debug, Clone)]
pub enum Change {
    /// Fails the write unless the order is still in `status` with `transactions` payments and
    /// refunds: what the change was planned on. Without it two confirmations planned on the same
    /// order at once could both commit (two payment changes refunding the old method twice).
    OrderAsPlanned {
        order: OrderId,
        status: OrderStatus,
        transactions: usize,
    },
    OrderStatus {
        order: OrderId,
        from: OrderStatus,
        to: OrderStatus,
    },
    CancelReason {
        order: OrderId,
        reason: String,
    },
    OrderAddress {
        order: OrderId,
        address: Address,
    },
    /// Line `line` (0-based, in item order) becomes `to`.
    ReplaceItem {
        order: OrderId,
        line: usize,
        from: Sku,
        to: Variant,
    },
    Transaction {
        order: OrderId,
        transaction: Transaction,
    },
    /// Adds `delta` to a gift card's balance; fails if it would go below zero.
    GiftCard {
        method: PaymentMethodId,
        delta: Money,
    },
    Return {
        order: OrderId,
        request: ReturnRequest,
    },
    InsertFeedback(Feedback),
    InsertComplaint(Complaint),
    InsertHandoff(Handoff),
    HandoffStatus {
        id: i64,
        from: Vec<HandoffStatus>,
        to: HandoffStatus,
        staff: Option<String>,
    },
    /// Creates the conversation if it does not exist yet.
    Conversation(Conversation),
    Message(Message),
    /// Whether the assistant or a human answers the conversation.
    ConversationHuman {
        conversation: String,
        human: bool,
    },
    ComplaintStatus {
        id: i64,
        from: ComplaintStatus,
        to: ComplaintStatus,
        staff: Option<String>,
    },
    /// Adds a rating, or replaces the one its message already has; inserts its row id.
    PutRating(AnswerRating),
    RatingStatus {
        id: i64,
        from: RatingStatus,
        to: RatingStatus,
        staff: Option<String>,
    },
    InsertCurated(CuratedAnswer),
    DeleteCurated(i64),
    /// Removes personal fields; orders stay for accounting.
    EraseCustomer(CustomerId),
    /// A confirmation or session token to remember (its hash).
    PutToken(StoredToken),
}

#[derive(Debug, Clone)]
pub struct Write {
    pub changes: Vec<Change>,
    pub audit: AuditEntry,
    /// The hash of the confirmation token this write uses up; the write fails if it was used.
    pub consume_token: Option<String>,
}

string_kind!(TokenKind { Confirmation => "confirmation", Session => "session" });

/// A confirmation (action awaiting a yes) or a widget session (an identified shopper).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredToken {
    pub hash: String,
    pub kind: TokenKind,
    pub customer_id: CustomerId,
    /// Confirmations: the action, canonical JSON; sessions: null.
    pub payload: serde_json::Value,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub customer: Option<CustomerId>,
    pub target: Option<String>,
}

/// Feedback, complaints, handoffs, conversations and audit entries about one customer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CustomerRecords {
    pub feedback: Vec<Feedback>,
    pub complaints: Vec<Complaint>,
    pub handoffs: Vec<Handoff>,
    pub conversations: Vec<(Conversation, Vec<Message>)>,
    pub audit: Vec<AuditEntry>,
}

/// What a retention purge removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    pub conversations: u64,
    pub messages: u64,
    pub handoffs: u64,
    pub audit: u64,
    pub tokens: u64,
}

/// Every read and write the shop needs from a database.
pub trait ShopStore: Send + Sync {
    fn counts(&self) -> Result<ShopCounts>;
    fn customer(&self, id: &CustomerId) -> Result<Option<Customer>>;
    fn customers_by_email(&self, email: &Email) -> Result<Vec<CustomerId>>;
    /// Case-insensitive on names; the postal code compared as written.
    fn customers_by_name_zip(&self, first: &str, last: &str, zip: &str) -> Result<Vec<CustomerId>>;
    fn list_customers(&self, page: &Page) -> Result<Vec<Customer>>;
    fn order(&self, id: &OrderId) -> Result<Option<Order>>;
    fn list_orders(&self, filter: &OrderFilter, page: &Page) -> Result<Vec<OrderSummary>>;
    fn product(&self, id: &ProductId) -> Result<Option<Product>>;
    fn products(&self) -> Result<Vec<Product>>;
    fn variant(&self, sku: &Sku) -> Result<Option<Variant>>;
    /// Products bought in the same orders as any of `products`, with how many orders.
    fn co_purchased(&self, products: &[ProductId]) -> Result<Vec<(ProductId, u32)>>;
    /// Adds a whole shop in one transaction (records already present are refused).
    fn import(&self, data: &ShopData, audit: AuditEntry) -> Result<ShopCounts>;
    /// Applies every change, the audit entry and the token's use, or none of them. Returns the
    /// row ids of inserted feedback, complaints, handoffs and messages, in order.
    fn commit(&self, write: Write) -> Result<Vec<i64>>;
    /// Writes an audit entry for a read.
    fn record(&self, audit: AuditEntry) -> Result<()>;
    fn audit(&self, filter: &AuditFilter, page: &Page) -> Result<Vec<AuditEntry>>;
    fn token(&self, hash: &str) -> Result<Option<StoredToken>>;
    fn feedback(&self, queue: Option<&str>, page: &Page) -> Result<Vec<Feedback>>;
    fn complaints(&self, page: &Page) -> Result<Vec<Complaint>>;
    fn handoff(&self, id: i64) -> Result<Option<Handoff>>;
    fn handoffs(&self, status: Option<HandoffStatus>, page: &Page) -> Result<Vec<Handoff>>;
    /// Every handoff of one conversation, oldest first.
    fn conversation_handoffs(&self, conversation: &str) -> Result<Vec<Handoff>>;
    fn conversation(&self, id: &str) -> Result<Option<Conversation>>;
    fn messages(&self, conversation: &str, after: i64) -> Result<Vec<Message>>;
    fn message(&self, id: i64) -> Result<Option<Message>>;
    fn complaint(&self, id: i64) -> Result<Option<Complaint>>;
    fn rating(&self, id: i64) -> Result<Option<AnswerRating>>;
    fn ratings(&self, status: Option<RatingStatus>, page: &Page) -> Result<Vec<AnswerRating>>;
    /// Every curated answer, oldest first (a shop has tens, not millions).
    fn curated_answers(&self) -> Result<Vec<CuratedAnswer>>;
    /// Deletes, in one transaction, the conversations whose last message is older than `cutoff`
    /// (with their messages, ratings and handoffs; none a person still holds) and tokens that
    /// expired before it, and audit entries older than `audit_cutoff` when one is given.
    fn purge_before(&self, cutoff: i64, audit_cutoff: Option<i64>) -> Result<Purged>;
    /// The console's counts over `[since, now)`, days cut at UTC midnight.
    fn analytics(&self, since: i64, now: i64) -> Result<Analytics>;
    fn customer_records(&self, id: &CustomerId) -> Result<CustomerRecords>;
}
