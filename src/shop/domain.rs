//! The shop's vocabulary: identifiers parsed once at the boundary, money in cents, and the closed
//! sets (order status, payment source, channel, role) as enums, so nothing downstream handles a
//! raw string where a checked value belongs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::ShopError;

fn invalid(field: &'static str, message: impl Into<String>) -> ShopError {
    ShopError::Invalid {
        field,
        message: message.into(),
    }
}

/// Declares a string newtype with a validating `parse`, `Display`, and serde through `parse`.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, ShopError> {
                let check: fn(&str) -> Result<String, String> = $check;
                check(raw.trim()).map($name).map_err(|m| invalid($field, m))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ShopError;
            fn from_str(s: &str) -> Result<Self, ShopError> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Letters, digits and `_ - .`, 1 to 64 of them: ids from imports and our own generators.
fn plain_id(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err("may hold only letters, digits, '_', '-' and '.'".into());
    }
    Ok(raw.to_string())
}

id_type!(
    /// A customer's id (`noah_brown_6181` in tau2 shops).
    CustomerId, "customer_id", plain_id
);
id_type!(
    /// A product's id, shared with the catalogue in the knowledge base.
    ProductId, "product_id", plain_id
);
id_type!(
    /// One variant of a product (tau2's item id, a SKU elsewhere).
    Sku, "item_id", plain_id
);
id_type!(
    /// A saved payment method (`credit_card_7815826`, `gift_card_1725971`).
    PaymentMethodId, "payment_method_id", plain_id
);

id_type!(
    /// An order id: `#W` and digits. Shoppers type it with or without `#`, in any case.
    OrderId, "order_id", |raw| {
        let body = raw.strip_prefix('#').unwrap_or(raw);
        let digits = body
            .strip_prefix('W')
            .or_else(|| body.strip_prefix('w'))
            .ok_or("must look like #W1234567")?;
        if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must look like #W1234567".into());
        }
        Ok(format!("#W{digits}"))
    }
);

id_type!(
    /// An email address, lowercased: one `@`, a dotted domain, no spaces.
    Email, "email", |raw| {
        let lower = raw.to_lowercase();
        let (local, domain) = lower.split_once('@').ok_or("must contain '@'")?;
        let ok = !local.is_empty()
            && lower.len() <= 254
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
            && !lower.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(lower)
        } else {
            Err("is not a valid email address".into())
        }
    }
);

/// An amount in cents. Imports round decimal prices once, so every sum after that is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(pub i64);

impl Money {
    /// From a decimal amount as JSON carries it (`47.84`); refuses what is not a finite amount.
    pub fn from_decimal(value: f64) -> Result<Self, ShopError> {
        if !value.is_finite() || value.abs() > 1e12 {
            return Err(invalid("amount", format!("{value} is not an amount")));
        }
        Ok(Money((value * 100.0).round() as i64))
    }

    pub fn cents(self) -> i64 {
        self.0
    }

    pub fn as_decimal(self) -> f64 {
        self.0 as f64 / 100.0
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        Money(self.0 + o.0)
    }
}

impl std::ops::Sub for Money {
    type Output = Money;
    fn sub(self, o: Money) -> Money {
        Money(self.0 - o.0)
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        Money(iter.map(|m| m.0).sum())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}${}.{:02}", abs / 100, abs % 100)
    }
}

/// Money crosses the API as a decimal number, the way shops and tau2 write it.
impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_decimal())
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Money::from_decimal(f64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Declares a closed set stored and sent as fixed strings.
macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident, $field:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(raw: &str) -> Result<Self, ShopError> {
                let norm = raw.trim().to_lowercase();
                $(if norm == $text { return Ok($name::$variant); })+
                Err(invalid($field, format!(
                    "`{}` is not one of: {}", raw, [$($text),+].join(", ")
                )))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_enum!(
    /// Where an order is in its life. The strings are tau2's, so its shops import unchanged.
    OrderStatus, "status" {
        Pending => "pending",
        PendingItemsModified => "pending (item modified)",
        Processed => "processed",
        Delivered => "delivered",
        Cancelled => "cancelled",
        ReturnRequested => "return requested",
        ExchangeRequested => "exchange requested",
    }
);

string_enum!(
    /// The kind of a saved payment method.
    PaymentSource, "source" {
        CreditCard => "credit_card",
        Paypal => "paypal",
        GiftCard => "gift_card",
    }
);

string_enum!(
    /// Which door a change came through, for the audit log.
    Channel, "channel" {
        Assistant => "assistant",
        Api => "api",
        Console => "console",
        Cli => "cli",
        Import => "import",
    }
);

string_enum!(
    /// Who wrote a message in a conversation.
    Role, "role" {
        Shopper => "shopper",
        Assistant => "assistant",
        Staff => "staff",
        System => "system",
    }
);

string_enum!(
    /// Payment-history entries.
    TransactionKind, "transaction_type" {
        Payment => "payment",
        Refund => "refund",
    }
);

/// A postal address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Address {
    pub address1: String,
    #[serde(default)]
    pub address2: String,
    pub city: String,
    #[serde(default)]
    pub state: String,
    pub country: String,
    pub zip: String,
}

impl Address {
    /// Refuses an address a carrier could not deliver to: empty required lines, control characters.
    pub fn validate(&self) -> Result<(), ShopError> {
        for (field, value, required) in [
            ("address1", &self.address1, true),
            ("address2", &self.address2, false),
            ("city", &self.city, true),
            ("state", &self.state, false),
            ("country", &self.country, true),
            ("zip", &self.zip, true),
        ] {
            if required && value.trim().is_empty() {
                return Err(invalid("address", format!("`{field}` is required")));
            }
            if value.len() > 200 || value.chars().any(char::is_control) {
                return Err(invalid(
                    "address",
                    format!("`{field}` must be at most 200 printable characters"),
                ));
            }
        }
        Ok(())
    }

    pub fn one_line(&self) -> String {
        [
            &self.address1,
            &self.address2,
            &self.city,
            &self.state,
            &self.zip,
            &self.country,
        ]
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim())
        .collect::<Vec<_>>()
        .join(", ")
    }
}

pub use crate::clock::{iso_date, unix_now};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_normalise_and_refuse_junk() {
        assert_eq!(OrderId::parse("w2611340").unwrap().as_str(), "#W2611340");
        assert_eq!(OrderId::parse(" #W12 ").unwrap().as_str(), "#W12");
        for bad in ["", "#W", "#X123", "W12a", "#W1' OR 1=1 --"] {
            assert!(OrderId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_lowercase_and_refuse_junk() {
        assert_eq!(
            Email::parse("Noah@Example.COM").unwrap().as_str(),
            "noah@example.com"
        );
        for bad in ["noah", "@x.com", "a@b", "a b@c.com", "a@.com", "a@b@c.com"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn money_is_exact_cents() {
        let sum: Money = [47.84, 488.81]
            .iter()
            .map(|v| Money::from_decimal(*v).unwrap())
            .sum();
        assert_eq!(sum, Money(53665));
        assert_eq!(sum.to_string(), "$536.65");
        assert_eq!(Money(-5).to_string(), "-$0.05");
        assert!(Money::from_decimal(f64::NAN).is_err());
    }

    #[test]
    fn statuses_round_trip_their_strings() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()).unwrap(), *s);
        }
        assert!(OrderStatus::parse("shipped?").is_err());
    }
}
