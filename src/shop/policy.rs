//! The merchant's policy: which order status allows which action, accepted reasons, refund
//! routes, and what complaint resolutions may be granted without staff. The default models the
//! tau2 retail policy; a merchant overrides any part with a JSON file (`--shop-policy`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::domain::{Money, OrderStatus};
use super::error::{Refusal, Result, ShopError};
use super::records::string_kind;

/// The actions that change an order, each gated by the statuses the policy lists for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Cancel,
    ModifyAddress,
    ModifyPayment,
    ModifyItems,
    Return,
    Exchange,
}

impl ActionKind {
    pub const ALL: [ActionKind; 6] = [
        ActionKind::Cancel,
        ActionKind::ModifyAddress,
        ActionKind::ModifyPayment,
        ActionKind::ModifyItems,
        ActionKind::Return,
        ActionKind::Exchange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Cancel => "cancel",
            ActionKind::ModifyAddress => "modify_address",
            ActionKind::ModifyPayment => "modify_payment",
            ActionKind::ModifyItems => "modify_items",
            ActionKind::Return => "return",
            ActionKind::Exchange => "exchange",
        }
    }

    /// How a refusal names the action: "cancelled", "returned".
    fn verb(self) -> &'static str {
        match self {
            ActionKind::Cancel => "cancelled",
            ActionKind::ModifyAddress => "given a new shipping address",
            ActionKind::ModifyPayment => "given a new payment method",
            ActionKind::ModifyItems => "changed",
            ActionKind::Return => "returned",
            ActionKind::Exchange => "exchanged",
        }
    }
}

string_kind!(Resolution {
    Refund => "refund",
    Replacement => "replacement",
    DiscountCode => "discount_code",
    Escalation => "escalation",
});

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// For each action, the order statuses that allow it; an action a file leaves out is not
    /// allowed in any status.
    pub allowed: BTreeMap<ActionKind, Vec<OrderStatus>>,
    /// Reasons a shopper may give for a cancellation (matched case-insensitively).
    pub cancel_reasons: Vec<String>,
    /// Refunds of a return go to the original payment method or, when true, to any gift card of
    /// the customer's.
    pub refund_to_any_gift_card: bool,
    /// Returns are accepted this many days after delivery at most; `null` for no limit (tau2).
    pub return_window_days: Option<u32>,
    /// How long a confirmation summary stays valid, in seconds.
    pub confirmation_ttl_secs: u64,
    /// Complaint resolutions granted without staff review.
    pub auto_resolutions: Vec<Resolution>,
    /// The percentage of a discount code proposed for a complaint.
    pub discount_percent: u32,
    /// Feedback topic → the department queue it lands in.
    pub queues: BTreeMap<String, String>,
    /// Actions the assistant hands to staff instead of doing them itself: the merchant wants a
    /// person to decide these. The shopper is told; staff get a handoff with a summary.
    pub handoff_actions: Vec<ActionKind>,
    /// Any change to an order worth at least this many cents goes to staff the same way; `null`
    /// for no limit.
    pub handoff_order_total_cents: Option<i64>,
    /// How many business days a refund to a card or PayPal takes to arrive, as the shop tells
    /// shoppers in a change's summary: `[5, 7]` reads "within 5 to 7 business days".
    pub card_refund_business_days: [u32; 2],
}

impl Default for Policy {
    fn default() -> Self {
        use ActionKind::*;
        use OrderStatus::*;
        let allowed = BTreeMap::from([
            (Cancel, vec![Pending]),
            (ModifyAddress, vec![Pending]),
            (ModifyPayment, vec![Pending]),
            (ModifyItems, vec![Pending]),
            (Return, vec![Delivered]),
            (Exchange, vec![Delivered]),
        ]);
        let queues = [
            ("product_quality", "product"),
            ("delivery", "logistics"),
            ("payment", "billing"),
            ("website", "web"),
            ("staff", "customer-care"),
            ("other", "customer-care"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        Self {
            allowed,
            cancel_reasons: vec!["no longer needed".into(), "ordered by mistake".into()],
            refund_to_any_gift_card: true,
            return_window_days: None,
            confirmation_ttl_secs: 900,
            auto_resolutions: vec![Resolution::DiscountCode],
            discount_percent: 10,
            queues,
            handoff_actions: Vec::new(),
            handoff_order_total_cents: None,
            card_refund_business_days: [5, 7],
        }
    }
}

impl Policy {
    /// Whether the merchant has staff decide `kind` on an order of `total`, rather than the
    /// assistant.
    pub fn hands_to_staff(&self, kind: ActionKind, total: Money) -> bool {
        self.handoff_actions.contains(&kind)
            || self
                .handoff_order_total_cents
                .is_some_and(|limit| total.cents() >= limit)
    }

    /// Reads a policy file; fields it leaves out keep their defaults, unknown fields are refused.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ShopError::Import {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        let policy: Self = serde_json::from_str(&text).map_err(|e| ShopError::Import {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        let [a, b] = policy.card_refund_business_days;
        if a > b {
            return Err(ShopError::Import {
                file: path.display().to_string(),
                message: format!(
                    "`card_refund_business_days` [{a}, {b}]: the first is the fewest days, the \
                     second the most"
                ),
            });
        }
        Ok(policy)
    }

    /// Refuses `action` on an order in `status`, saying which statuses would allow it.
    pub fn check_status(&self, action: ActionKind, status: OrderStatus) -> Result<()> {
        let allowed = self.allowed.get(&action).map_or(&[][..], Vec::as_slice);
        if allowed.contains(&status) {
            return Ok(());
        }
        let mut message = format!("This order is {status}, so it can't be {}.", action.verb());
        match allowed {
            [] => message.push_str(" This shop does not allow that action."),
            [one] => message.push_str(&format!(" Only {one} orders can be.")),
            many => {
                let names: Vec<_> = many.iter().map(|s| s.as_str()).collect();
                message.push_str(&format!(
                    " Only orders that are {} can be.",
                    names.join(" or ")
                ));
            }
        }
        if let Some(alt) = self.alternative(action, status) {
            message.push(' ');
            message.push_str(alt);
        }
        Err(ShopError::refused(Refusal::Status, message))
    }

    /// What a shopper can do instead, where there is an obvious next step.
    fn alternative(&self, action: ActionKind, status: OrderStatus) -> Option<&'static str> {
        let allows = |a: ActionKind| self.allowed.get(&a).is_some_and(|s| s.contains(&status));
        match action {
            ActionKind::Cancel if allows(ActionKind::Return) => {
                Some("You can return its items instead.")
            }
            ActionKind::Cancel | ActionKind::Return if status == OrderStatus::Processed => {
                Some("Once it is delivered, you can return its items.")
            }
            _ => None,
        }
    }

    /// The accepted reason matching `reason`, in the policy's spelling.
    pub fn cancel_reason(&self, reason: &str) -> Result<String> {
        let norm = reason.trim().to_lowercase();
        self.cancel_reasons
            .iter()
            .find(|r| r.to_lowercase() == norm)
            .cloned()
            .ok_or_else(|| {
                ShopError::refused_as(
                    Refusal::Reason,
                    "cancel_reason",
                    &[("reasons", self.cancel_reasons.join(", "))],
                    format!(
                        "A cancellation needs one of these reasons: {}.",
                        self.cancel_reasons.join(", ")
                    ),
                )
            })
    }

    pub fn queue_for(&self, topic: &str) -> String {
        self.queues
            .get(topic)
            .cloned()
            .unwrap_or_else(|| "customer-care".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_keeps_the_other_defaults_and_unknown_fields_are_refused() {
        let p: Policy = serde_json::from_str(r#"{"return_window_days": 30}"#).unwrap();
        assert_eq!(p.return_window_days, Some(30));
        assert_eq!(p.cancel_reasons, Policy::default().cancel_reasons);
        assert!(serde_json::from_str::<Policy>(r#"{"refund_everything": true}"#).is_err());
    }

    #[test]
    fn refusals_name_the_allowed_status_and_an_alternative() {
        let p = Policy::default();
        let e = p
            .check_status(ActionKind::Cancel, OrderStatus::Delivered)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("delivered") && e.contains("pending") && e.contains("return"),
            "{e}"
        );
        assert!(p
            .check_status(ActionKind::Cancel, OrderStatus::Pending)
            .is_ok());
    }
}
