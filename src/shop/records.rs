//! The records the shop keeps, as the store hands them out and the API sends them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::domain::*;

/// Declares a small serde string enum without the ALL/parse machinery of `domain`.
macro_rules! string_kind {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(raw: &str) -> Option<Self> {
                match raw { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_kind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentMethod {
    pub id: PaymentMethodId,
    pub source: PaymentSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_four: Option<String>,
    /// Gift cards only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Money>,
}

impl PaymentMethod {
    /// How a shopper recognises it: "gift card (balance $51.00)", "mastercard ending 9212".
    pub fn describe(&self) -> String {
        match self.source {
            PaymentSource::GiftCard => match self.balance {
                Some(b) => format!("gift card {} (balance {b})", self.id),
                None => format!("gift card {}", self.id),
            },
            PaymentSource::CreditCard => match (&self.brand, &self.last_four) {
                (Some(b), Some(l)) => format!("{b} card ending {l}"),
                _ => format!("credit card {}", self.id),
            },
            PaymentSource::Paypal => format!("PayPal account {}", self.id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: CustomerId,
    pub first_name: String,
    pub last_name: String,
    pub email: Option<Email>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// The default shipping address.
    pub address: Address,
    /// Other addresses the customer saved ("work", "parents").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub saved_addresses: Vec<SavedAddress>,
    pub payment_methods: Vec<PaymentMethod>,
    /// When the customer was erased; their orders stay, anonymised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAddress {
    #[serde(default)]
    pub label: String,
    #[serde(flatten)]
    pub address: Address,
}

impl Customer {
    pub fn payment_method(&self, id: &PaymentMethodId) -> Option<&PaymentMethod> {
        self.payment_methods.iter().find(|p| &p.id == id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub sku: Sku,
    pub product_id: ProductId,
    pub options: BTreeMap<String, String>,
    pub price: Money,
    pub available: bool,
    /// Units in stock, where the shop counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock: Option<i64>,
}

impl Variant {
    pub fn describe_options(&self) -> String {
        describe_options(&self.options)
    }
}

pub fn describe_options(options: &BTreeMap<String, String>) -> String {
    options
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub variants: Vec<Variant>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: ProductId,
    pub sku: Sku,
    pub name: String,
    pub options: BTreeMap<String, String>,
    pub price: Money,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub kind: TransactionKind,
    pub amount: Money,
    pub payment_method_id: PaymentMethodId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackingEvent {
    pub at: i64,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fulfillment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    pub tracking_ids: Vec<String>,
    pub skus: Vec<Sku>,
    #[serde(default)]
    pub events: Vec<TrackingEvent>,
}

string_kind!(ReturnKind { Return => "return", Exchange => "exchange" });

/// A return or exchange request on a delivered order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReturnRequest {
    pub kind: ReturnKind,
    pub skus: Vec<Sku>,
    /// Exchanges: the variants the items become, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_skus: Vec<Sku>,
    pub payment_method_id: PaymentMethodId,
    /// Returns: the refund. Exchanges: new minus old (positive means the shopper pays).
    pub amount: Money,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: OrderId,
    pub customer_id: CustomerId,
    pub status: OrderStatus,
    pub address: Address,
    pub items: Vec<OrderItem>,
    pub payments: Vec<Transaction>,
    pub fulfillments: Vec<Fulfillment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returns: Vec<ReturnRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_delivery: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
}

impl Order {
    pub fn total(&self) -> Money {
        self.items.iter().map(|i| i.price).sum()
    }

    /// The method the order was paid with (its first payment).
    pub fn original_payment(&self) -> Option<&PaymentMethodId> {
        self.payments
            .iter()
            .find(|t| t.kind == TransactionKind::Payment)
            .map(|t| &t.payment_method_id)
    }

    /// What is paid and not refunded, per method.
    pub fn net_paid(&self) -> Money {
        self.payments
            .iter()
            .map(|t| match t.kind {
                TransactionKind::Payment => t.amount,
                TransactionKind::Refund => Money(-t.amount.0),
            })
            .sum()
    }
}

/// One row of an order listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderSummary {
    pub id: OrderId,
    pub customer_id: CustomerId,
    pub status: OrderStatus,
    pub total: Money,
    pub items: usize,
}

/// An audit-log entry: who did what, when, through which door.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(default)]
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub channel: Channel,
    pub action: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    #[serde(default)]
    pub detail: serde_json::Value,
}
