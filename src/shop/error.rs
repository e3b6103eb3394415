//! The shop layer's one error type. Refusals say why in words a shopper or staff member can act
//! on; storage failures keep their detail for the log.

/// Why an action was refused, as a machine-readable code next to the human sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The order's status does not allow this action.
    Status,
    /// A cancellation reason the policy does not accept.
    Reason,
    /// The chosen payment or refund method can't be used for this.
    PaymentMethod,
    /// A gift card's balance does not cover the amount.
    Balance,
    /// The item can't be changed to that variant (another product, unavailable, the same one).
    Item,
    /// The policy allows this change only once per order.
    AlreadyModified,
    /// Outside the policy's time window.
    Window,
    /// Anything else the policy forbids.
    Policy,
}

/// Every key `ShopError::refused_as` is called with: callers that translate refusals keep a
/// phrase for each (a test holds the assistant's prompts to it).
pub const REFUSAL_PHRASES: &[&str] = &[
    "item_not_in_order",
    "already_modified",
    "other_product",
    "same_option",
    "option_unavailable",
    "balance_difference",
    "balance_total",
    "unknown_payment_method",
    "refund_original",
    "refund_original_or_gift_card",
    "return_window",
    "same_address",
    "no_payment",
    "same_payment",
    "cancel_reason",
    "staff_decide",
];

/// A refusal's phrase key and the values of its blanks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Phrase {
    pub key: &'static str,
    pub args: Vec<(&'static str, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// Input that does not parse or is out of range; `field` names it.
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The details given do not identify exactly one customer. Deliberately vague: it must not
    /// tell a caller which of email, name or postal code was wrong.
    #[error("we could not verify your identity with those details")]
    NotIdentified,
    /// Name and postal code match several customers; ask for the email instead.
    #[error("several customers match that name and postal code; please give your email address")]
    Ambiguous,
    /// No such record, or one that belongs to another customer: the two look the same on purpose.
    #[error("{kind} `{id}` was not found")]
    NotFound { kind: &'static str, id: String },
    /// The policy forbids the action; `message` says why and, where there is one, what is possible.
    #[error("{message}")]
    Refused {
        code: Refusal,
        message: String,
        /// The same refusal as a phrase key and its blanks, for callers that speak the shopper's
        /// language (the assistant's `refusal_<key>` phrases); the key is empty where there is no
        /// such phrase.
        phrase: Phrase,
    },
    /// The confirmation token is unknown, expired, used, for another customer or another action.
    #[error("{0}")]
    Confirmation(&'static str),
    /// The record changed between the summary and the confirmation (another write won the race).
    #[error("{0}")]
    Conflict(String),
    /// The caller's key or session does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A file being imported is malformed; names where.
    #[error("{file}: {message}")]
    Import { file: String, message: String },
    #[error("shop storage: {0}")]
    Storage(String),
    /// The data key is missing, malformed, or not the one the database was sealed with.
    #[error("data key: {0}")]
    Key(String),
}

impl ShopError {
    pub fn refused(code: Refusal, message: impl Into<String>) -> Self {
        ShopError::Refused {
            code,
            message: message.into(),
            phrase: Phrase::default(),
        }
    }

    /// A refusal that also names its phrase, so it can be said in the shopper's language.
    pub fn refused_as(
        code: Refusal,
        key: &'static str,
        args: &[(&'static str, String)],
        message: impl Into<String>,
    ) -> Self {
        debug_assert!(
            REFUSAL_PHRASES.contains(&key),
            "refusal phrase {key} not listed"
        );
        ShopError::Refused {
            code,
            message: message.into(),
            phrase: Phrase {
                key,
                args: args.to_vec(),
            },
        }
    }

    pub fn not_found(kind: &'static str, id: impl ToString) -> Self {
        ShopError::NotFound {
            kind,
            id: id.to_string(),
        }
    }
}

impl From<rusqlite::Error> for ShopError {
    fn from(e: rusqlite::Error) -> Self {
        ShopError::Storage(e.to_string())
    }
}

impl From<serde_json::Error> for ShopError {
    fn from(e: serde_json::Error) -> Self {
        ShopError::Storage(format!("stored JSON: {e}"))
    }
}

pub type Result<T, E = ShopError> = std::result::Result<T, E>;
