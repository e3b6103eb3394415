//! Identity and the order actions. Every function takes who is acting ([`Ctx`]) and, for account
//! work, an [`Identified`] customer that only [`Shop::identify`] (or a staff member's key) can
//! make; an order of anyone else reads as not found. Writes happen in two steps: [`Shop::prepare`]
//! checks the policy and returns a [`Confirmation`] summary with a one-use token, and
//! [`Shop::confirm`] re-checks everything and commits only with that token, for that same action.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::domain::*;
use super::error::{Refusal, Result, ShopError};
use super::policy::ActionKind;
use super::policy::Policy;
use super::records::*;
use super::store::{Change, OrderFilter, Page, StoredToken, TokenKind, Write};
use super::Shop;

/// Who is acting, for the audit log and for what they may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A shopper (through the widget or the assistant); acts only on their identified self.
    Shopper,
    /// A staff member, by name; may act for any customer.
    Staff(String),
    /// The system itself (imports, seeding, scheduled work).
    System,
}

#[derive(Debug, Clone)]
pub struct Ctx {
    pub actor: Actor,
    pub channel: Channel,
}

impl Ctx {
    pub fn shopper(channel: Channel) -> Self {
        Self {
            actor: Actor::Shopper,
            channel,
        }
    }

    pub fn staff(name: impl Into<String>, channel: Channel) -> Self {
        Self {
            actor: Actor::Staff(name.into()),
            channel,
        }
    }

    pub fn system(channel: Channel) -> Self {
        Self {
            actor: Actor::System,
            channel,
        }
    }

    pub(crate) fn audit(
        &self,
        action: &str,
        target: impl Into<String>,
        customer: Option<&CustomerId>,
        detail: serde_json::Value,
    ) -> AuditEntry {
        let actor = match &self.actor {
            Actor::Shopper => match customer {
                Some(c) => format!("shopper:{c}"),
                None => "shopper".into(),
            },
            Actor::Staff(name) => format!("staff:{name}"),
            Actor::System => "system".into(),
        };
        AuditEntry {
            id: 0,
            at: unix_now(),
            actor,
            channel: self.channel,
            action: action.into(),
            target: target.into(),
            customer_id: customer.cloned(),
            detail,
        }
    }
}

/// A customer whose identity was checked. Only this module makes one, so holding it is proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    customer: CustomerId,
}

impl Identified {
    pub fn customer_id(&self) -> &CustomerId {
        &self.customer
    }
}

/// How a shopper proves who they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdentifyBy {
    OrderAndEmail {
        order_id: OrderId,
        email: Email,
    },
    Email {
        email: Email,
    },
    NameAndZip {
        first_name: String,
        last_name: String,
        zip: String,
    },
}

/// One item change: this item of the order becomes that variant of the same product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemChange {
    pub item_id: Sku,
    pub new_item_id: Sku,
}

/// A change to an order. Serialised canonically into the confirmation token's record, so a token
/// matches exactly one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum OrderAction {
    Cancel {
        order_id: OrderId,
        reason: String,
    },
    ModifyAddress {
        order_id: OrderId,
        address: Address,
    },
    ModifyPayment {
        order_id: OrderId,
        payment_method_id: PaymentMethodId,
    },
    ModifyItems {
        order_id: OrderId,
        items: Vec<ItemChange>,
        payment_method_id: PaymentMethodId,
    },
    Return {
        order_id: OrderId,
        item_ids: Vec<Sku>,
        payment_method_id: PaymentMethodId,
    },
    Exchange {
        order_id: OrderId,
        items: Vec<ItemChange>,
        payment_method_id: PaymentMethodId,
    },
}

impl OrderAction {
    pub fn kind(&self) -> ActionKind {
        match self {
            OrderAction::Cancel { .. } => ActionKind::Cancel,
            OrderAction::ModifyAddress { .. } => ActionKind::ModifyAddress,
            OrderAction::ModifyPayment { .. } => ActionKind::ModifyPayment,
            OrderAction::ModifyItems { .. } => ActionKind::ModifyItems,
            OrderAction::Return { .. } => ActionKind::Return,
            OrderAction::Exchange { .. } => ActionKind::Exchange,
        }
    }

    pub fn order_id(&self) -> &OrderId {
        match self {
            OrderAction::Cancel { order_id, .. }
            | OrderAction::ModifyAddress { order_id, .. }
            | OrderAction::ModifyPayment { order_id, .. }
            | OrderAction::ModifyItems { order_id, .. }
            | OrderAction::Return { order_id, .. }
            | OrderAction::Exchange { order_id, .. } => order_id,
        }
    }
}

/// What an action will do, stated before it is done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub action: ActionKind,
    pub order_id: OrderId,
    /// One sentence per effect, in the order they happen.
    pub effects: Vec<String>,
    /// Money back to the shopper, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<Money>,
    /// Money the shopper pays, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge: Option<Money>,
    pub new_status: OrderStatus,
}

impl Summary {
    pub fn text(&self) -> String {
        self.effects.join(" ")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    /// Pass back to [`Shop::confirm`] with the same action, before `expires_at`.
    pub token: String,
    pub summary: Summary,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub summary: Summary,
    pub order: Order,
}

/// An order with what a shopper asks about it worked out: total, delivery date, tracking.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderDetails {
    #[serde(flatten)]
    pub order: Order,
    pub total: Money,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_delivery_date: Option<String>,
}

struct Plan {
    summary: Summary,
    changes: Vec<Change>,
}

pub fn random_token() -> String {
    let mut bytes = [0u8; 24];
    // The OS generator does not fail on any platform clerk runs on; if it ever did, a token
    // of zeros would be guessable, so refuse to go on.
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a random token, in hex: what is stored instead of the token itself.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn method_name(customer: &Customer, id: &PaymentMethodId) -> String {
    customer
        .payment_method(id)
        .map_or_else(|| id.to_string(), PaymentMethod::describe)
}

/// When a refund to `method` arrives: at once on a gift card, otherwise as the merchant's policy
/// says (`card_refund_business_days`). An unknown method counts as a card.
fn refund_timing(policy: &Policy, method: Option<&PaymentMethod>) -> String {
    if method.is_some_and(|m| m.source == PaymentSource::GiftCard) {
        return "immediately".into();
    }
    match policy.card_refund_business_days {
        [a, b] if a == b => format!("within {a} business days"),
        [a, b] => format!("within {a} to {b} business days"),
    }
}

/// Picks distinct order lines for the given items (an order may hold the same item twice).
fn lines_for(order: &Order, skus: &[&Sku]) -> Result<Vec<usize>> {
    if skus.is_empty() {
        return Err(ShopError::Invalid {
            field: "items",
            message: "name at least one item of the order".into(),
        });
    }
    let mut used = vec![false; order.items.len()];
    let mut lines = Vec::with_capacity(skus.len());
    for sku in skus {
        let line = order
            .items
            .iter()
            .enumerate()
            .position(|(i, item)| !used[i] && &item.sku == *sku)
            .ok_or_else(|| {
                ShopError::refused_as(
                    Refusal::Item,
                    "item_not_in_order",
                    &[("sku", sku.to_string()), ("order", order.id.to_string())],
                    format!(
                        "Item {sku} is not in order {} (or is named twice).",
                        order.id
                    ),
                )
            })?;
        used[line] = true;
        lines.push(line);
    }
    Ok(lines)
}

impl Shop {
    /// Checks who a shopper is. Failures all read the same, so the answer never tells which of
    /// the details was wrong; every attempt is audited.
    pub fn identify(&self, ctx: &Ctx, by: &IdentifyBy) -> Result<Identified> {
        let found = match by {
            IdentifyBy::Email { email } => self.store.customers_by_email(email)?,
            IdentifyBy::NameAndZip {
                first_name,
                last_name,
                zip,
            } => {
                if first_name.trim().is_empty()
                    || last_name.trim().is_empty()
                    || zip.trim().is_empty()
                {
                    return Err(ShopError::NotIdentified);
                }
                self.store
                    .customers_by_name_zip(first_name, last_name, zip)?
            }
            IdentifyBy::OrderAndEmail { order_id, email } => match self.store.order(order_id)? {
                Some(order) => self
                    .store
                    .customer(&order.customer_id)?
                    .filter(|c| c.email.as_ref() == Some(email))
                    .map(|c| vec![c.id])
                    .unwrap_or_default(),
                None => Vec::new(),
            },
        };
        let method = match by {
            IdentifyBy::Email { .. } => "email",
            IdentifyBy::NameAndZip { .. } => "name_and_zip",
            IdentifyBy::OrderAndEmail { .. } => "order_and_email",
        };
        let result = match found.as_slice() {
            [one] => Ok(Identified {
                customer: one.clone(),
            }),
            [] => Err(ShopError::NotIdentified),
            _ => Err(ShopError::Ambiguous),
        };
        let customer = result.as_ref().ok().map(|i| &i.customer);
        self.store.record(ctx.audit(
            "identify",
            customer.map_or_else(|| "unknown".to_string(), |c| format!("customer:{c}")),
            customer,
            json!({ "method": method, "ok": result.is_ok() }),
        ))?;
        result
    }

    /// A staff member acting for a customer: no proof needed beyond the staff key.
    pub fn for_staff(&self, ctx: &Ctx, customer: &CustomerId) -> Result<Identified> {
        if !matches!(ctx.actor, Actor::Staff(_) | Actor::System) {
            return Err(ShopError::Forbidden("only staff can act for a customer"));
        }
        match self.store.customer(customer)? {
            Some(c) => Ok(Identified { customer: c.id }),
            None => Err(ShopError::not_found("customer", customer)),
        }
    }

    /// Opens a session for an identified shopper: a token a widget sends on later calls instead
    /// of proving identity again. Only its hash is stored.
    pub fn open_session(
        &self,
        ctx: &Ctx,
        who: &Identified,
        ttl_secs: i64,
    ) -> Result<(String, i64)> {
        let token = random_token();
        let now = unix_now();
        self.store.commit(Write {
            changes: vec![Change::PutToken(StoredToken {
                hash: token_hash(&token),
                kind: TokenKind::Session,
                customer_id: who.customer.clone(),
                payload: serde_json::Value::Null,
                created_at: now,
                expires_at: now + ttl_secs,
                used_at: None,
            })],
            audit: ctx.audit(
                "session_open",
                format!("customer:{}", who.customer),
                Some(&who.customer),
                json!({}),
            ),
            consume_token: None,
        })?;
        Ok((token, now + ttl_secs))
    }

    /// The customer a session token was opened for, while it is valid and the customer exists.
    pub fn session(&self, token: &str) -> Result<Identified> {
        let stored = self
            .store
            .token(&token_hash(token.trim()))?
            .filter(|t| t.kind == TokenKind::Session && t.used_at.is_none())
            .filter(|t| t.expires_at > unix_now())
            .ok_or(ShopError::NotIdentified)?;
        match self.store.customer(&stored.customer_id)? {
            Some(c) if c.erased_at.is_none() => Ok(Identified { customer: c.id }),
            _ => Err(ShopError::NotIdentified),
        }
    }

    pub fn profile(&self, who: &Identified) -> Result<Customer> {
        self.store
            .customer(&who.customer)?
            .ok_or_else(|| ShopError::not_found("customer", &who.customer))
    }

    /// A customer's profile and order list, as the shopper or staff asks for it (audited).
    pub fn account(&self, ctx: &Ctx, who: &Identified) -> Result<(Customer, Vec<OrderSummary>)> {
        let profile = self.profile(who)?;
        let orders = self.orders_of(who)?;
        self.store.record(ctx.audit(
            "account",
            format!("customer:{}", who.customer),
            Some(&who.customer),
            json!({}),
        ))?;
        Ok((profile, orders))
    }

    pub fn orders_of(&self, who: &Identified) -> Result<Vec<OrderSummary>> {
        self.store.list_orders(
            &OrderFilter {
                customer: Some(who.customer.clone()),
                status: None,
            },
            &Page::first(10_000),
        )
    }

    /// The order if it is this customer's; anyone else's reads exactly like a missing one.
    fn own_order(&self, who: &Identified, id: &OrderId) -> Result<Order> {
        match self.store.order(id)? {
            Some(o) if o.customer_id == who.customer => Ok(o),
            _ => Err(ShopError::not_found("order", id)),
        }
    }

    /// Status, items, totals, carrier, tracking events and estimated delivery of one order.
    pub fn order_status(&self, ctx: &Ctx, who: &Identified, id: &OrderId) -> Result<OrderDetails> {
        let order = self.own_order(who, id)?;
        self.store.record(ctx.audit(
            "order_status",
            format!("order:{id}"),
            Some(&who.customer),
            json!({}),
        ))?;
        Ok(OrderDetails {
            total: order.total(),
            estimated_delivery_date: order.estimated_delivery.map(iso_date),
            order,
        })
    }

    /// Checks `action` against identity, order state and policy, and returns what it would do,
    /// with a token that [`Shop::confirm`] needs. Nothing changes yet.
    pub fn prepare(
        &self,
        ctx: &Ctx,
        who: &Identified,
        action: &OrderAction,
    ) -> Result<Confirmation> {
        let plan = self.plan(ctx, who, action)?;
        let token = random_token();
        let now = unix_now();
        let expires_at = now + self.policy.confirmation_ttl_secs as i64;
        let stored = StoredToken {
            hash: token_hash(&token),
            kind: TokenKind::Confirmation,
            customer_id: who.customer.clone(),
            payload: json!({ "action": action, "summary": plan.summary }),
            created_at: now,
            expires_at,
            used_at: None,
        };
        self.store.commit(Write {
            changes: vec![Change::PutToken(stored)],
            audit: ctx.audit(
                &format!("prepare_{}", action.kind().as_str()),
                format!("order:{}", action.order_id()),
                Some(&who.customer),
                json!({ "action": action }),
            ),
            consume_token: None,
        })?;
        Ok(Confirmation {
            token,
            summary: plan.summary,
            expires_at,
        })
    }

    /// Does `action`, if `token` came from [`Shop::prepare`] for this customer and this very
    /// action, is unused and unexpired, and the order still allows it with the same effects.
    pub fn confirm(
        &self,
        ctx: &Ctx,
        who: &Identified,
        action: &OrderAction,
        token: &str,
    ) -> Result<Outcome> {
        let checked = self.check_confirmation(ctx, who, action, token)?;
        self.commit_confirmed(ctx, who, action, checked)
    }

    /// The plan `token` confirms, checked against the token and made anew from the order as it
    /// is now; the token's hash goes with it.
    fn check_confirmation(
        &self,
        ctx: &Ctx,
        who: &Identified,
        action: &OrderAction,
        token: &str,
    ) -> Result<(Plan, String)> {
        let hash = token_hash(token.trim());
        let stored = self
            .store
            .token(&hash)?
            .filter(|t| t.kind == TokenKind::Confirmation)
            .ok_or(ShopError::Confirmation(
                "this confirmation token is not valid; ask for a new summary",
            ))?;
        if stored.customer_id != who.customer {
            return Err(ShopError::Confirmation(
                "this confirmation token is not valid; ask for a new summary",
            ));
        }
        if stored.payload.get("action") != Some(&serde_json::to_value(action)?) {
            return Err(ShopError::Confirmation(
                "this confirmation was given for a different action; ask for a new summary",
            ));
        }
        if stored.used_at.is_some() {
            return Err(ShopError::Confirmation(
                "this confirmation was already used; ask for a new summary",
            ));
        }
        if stored.expires_at <= unix_now() {
            return Err(ShopError::Confirmation(
                "this confirmation has expired; ask for a new summary",
            ));
        }
        let plan = self.plan(ctx, who, action)?;
        if stored.payload.get("summary") != Some(&serde_json::to_value(&plan.summary)?) {
            return Err(ShopError::Conflict(
                "the order or prices changed since the summary; please review the new one".into(),
            ));
        }
        Ok((plan, hash))
    }

    /// Writes a checked plan in one transaction that also uses up its token. The plan's first
    /// change fails it if the order moved on meanwhile ([`Change::OrderAsPlanned`]).
    fn commit_confirmed(
        &self,
        ctx: &Ctx,
        who: &Identified,
        action: &OrderAction,
        (plan, hash): (Plan, String),
    ) -> Result<Outcome> {
        self.store.commit(Write {
            changes: plan.changes,
            audit: ctx.audit(
                action.kind().as_str(),
                format!("order:{}", action.order_id()),
                Some(&who.customer),
                json!({ "action": action, "summary": plan.summary }),
            ),
            consume_token: Some(hash),
        })?;
        let order = self.own_order(who, action.order_id())?;
        Ok(Outcome {
            summary: plan.summary,
            order,
        })
    }

    fn plan(&self, ctx: &Ctx, who: &Identified, action: &OrderAction) -> Result<Plan> {
        let order = self.own_order(who, action.order_id())?;
        let customer = self.profile(who)?;
        let kind = action.kind();
        if kind == ActionKind::ModifyItems && order.status == OrderStatus::PendingItemsModified {
            return Err(ShopError::refused_as(
                Refusal::AlreadyModified,
                "already_modified",
                &[("order", order.id.to_string())],
                format!(
                    "The items of order {} were already changed once, which is all the policy allows.",
                    order.id
                ),
            ));
        }
        self.policy.check_status(kind, order.status)?;
        if ctx.actor == Actor::Shopper && self.policy.hands_to_staff(kind, order.total()) {
            // Whichever way a shopper asks (the assistant, which hands these over itself, or the
            // shop routes), what the merchant keeps for staff stays with staff.
            return Err(ShopError::refused_as(
                Refusal::Policy,
                "staff_decide",
                &[("order", order.id.to_string())],
                format!(
                    "Our staff decide this request on order {} themselves; ask for a person and \
                     they will take it from here.",
                    order.id
                ),
            ));
        }
        let mut plan = match action {
            OrderAction::Cancel { reason, .. } => self.plan_cancel(&customer, &order, reason),
            OrderAction::ModifyAddress { address, .. } => plan_address(&order, address),
            OrderAction::ModifyPayment {
                payment_method_id, ..
            } => plan_payment(&self.policy, &customer, &order, payment_method_id),
            OrderAction::ModifyItems {
                items,
                payment_method_id,
                ..
            } => self.plan_items(&customer, &order, items, payment_method_id, false),
            OrderAction::Exchange {
                items,
                payment_method_id,
                ..
            } => self.plan_items(&customer, &order, items, payment_method_id, true),
            OrderAction::Return {
                item_ids,
                payment_method_id,
                ..
            } => self.plan_return(&customer, &order, item_ids, payment_method_id),
        }?;
        plan.changes.insert(
            0,
            Change::OrderAsPlanned {
                order: order.id.clone(),
                status: order.status,
                transactions: order.payments.len(),
            },
        );
        Ok(plan)
    }

    fn plan_cancel(&self, customer: &Customer, order: &Order, reason: &str) -> Result<Plan> {
        let reason = self.policy.cancel_reason(reason)?;
        let mut effects = vec![format!(
            "Order {} ({} items, total {}) will be cancelled, reason: {reason}.",
            order.id,
            order.items.len(),
            order.total()
        )];
        let mut changes = vec![
            Change::OrderStatus {
                order: order.id.clone(),
                from: order.status,
                to: OrderStatus::Cancelled,
            },
            Change::CancelReason {
                order: order.id.clone(),
                reason,
            },
        ];
        let mut refund = Money(0);
        // What each method paid and was not refunded goes back to that method.
        let mut methods: Vec<&PaymentMethodId> = Vec::new();
        for t in &order.payments {
            if !methods.contains(&&t.payment_method_id) {
                methods.push(&t.payment_method_id);
            }
        }
        for m in methods {
            let net: Money = order
                .payments
                .iter()
                .filter(|t| &t.payment_method_id == m)
                .map(|t| match t.kind {
                    TransactionKind::Payment => t.amount,
                    TransactionKind::Refund => Money(-t.amount.0),
                })
                .sum();
            if net.0 <= 0 {
                continue;
            }
            refund = refund + net;
            changes.push(Change::Transaction {
                order: order.id.clone(),
                transaction: Transaction {
                    kind: TransactionKind::Refund,
                    amount: net,
                    payment_method_id: m.clone(),
                    at: Some(unix_now()),
                },
            });
            let timing = match customer.payment_method(m) {
                Some(pm) if pm.source == PaymentSource::GiftCard => {
                    changes.push(Change::GiftCard {
                        method: m.clone(),
                        delta: net,
                    });
                    "immediately".to_string()
                }
                pm => refund_timing(&self.policy, pm),
            };
            effects.push(format!(
                "{net} will be refunded to {} {timing}.",
                method_name(customer, m)
            ));
        }
        Ok(Plan {
            summary: Summary {
                action: ActionKind::Cancel,
                order_id: order.id.clone(),
                effects,
                refund: (refund.0 > 0).then_some(refund),
                charge: None,
                new_status: OrderStatus::Cancelled,
            },
            changes,
        })
    }

    fn plan_items(
        &self,
        customer: &Customer,
        order: &Order,
        items: &[ItemChange],
        method: &PaymentMethodId,
        exchange: bool,
    ) -> Result<Plan> {
        let skus: Vec<&Sku> = items.iter().map(|c| &c.item_id).collect();
        let lines = lines_for(order, &skus)?;
        let pm = customer.payment_method(method).ok_or_else(|| {
            ShopError::refused_as(
                Refusal::PaymentMethod,
                "unknown_payment_method",
                &[("method", method.to_string())],
                format!("{method} is not one of your saved payment methods."),
            )
        })?;
        let mut effects = Vec::new();
        let mut changes = Vec::new();
        let mut diff = Money(0);
        let mut new_skus = Vec::new();
        for (change, &line) in items.iter().zip(&lines) {
            let old = &order.items[line];
            let new = self
                .store
                .variant(&change.new_item_id)?
                .ok_or_else(|| ShopError::not_found("item", &change.new_item_id))?;
            if new.product_id != old.product_id {
                return Err(ShopError::refused_as(
                    Refusal::Item,
                "other_product",
                &[("item", old.name.clone())],
                    format!(
                        "{} can only become another option of the same product, not a different product.",
                        old.name
                    ),
                ));
            }
            if new.sku == old.sku {
                return Err(ShopError::refused_as(
                    Refusal::Item,
                    "same_option",
                    &[("sku", old.sku.to_string())],
                    format!("Item {} already is that option.", old.sku),
                ));
            }
            if !new.available || new.stock.is_some_and(|s| s <= 0) {
                return Err(ShopError::refused_as(
                    Refusal::Item,
                    "option_unavailable",
                    &[
                        ("item", old.name.clone()),
                        ("options", new.describe_options()),
                    ],
                    format!(
                        "{} ({}) is not available now.",
                        old.name,
                        new.describe_options()
                    ),
                ));
            }
            diff = diff + new.price - old.price;
            effects.push(format!(
                "{} ({}, {}) becomes {} ({}).",
                old.name,
                describe_options(&old.options),
                old.price,
                new.describe_options(),
                new.price
            ));
            new_skus.push(new.sku.clone());
            if !exchange {
                changes.push(Change::ReplaceItem {
                    order: order.id.clone(),
                    line,
                    from: old.sku.clone(),
                    to: new,
                });
            }
        }
        if pm.source == PaymentSource::GiftCard && diff.0 > 0 {
            let balance = pm.balance.unwrap_or_default();
            if balance < diff {
                return Err(ShopError::refused_as(
                    Refusal::Balance,
                    "balance_difference",
                    &[("balance", balance.to_string()), ("amount", diff.to_string())],
                    format!(
                        "The gift card's balance ({balance}) does not cover the price difference ({diff})."
                    ),
                ));
            }
        }
        let pm_name = pm.describe();
        match diff.0.signum() {
            1 => effects.push(format!("You pay the difference of {diff} with {pm_name}.")),
            -1 => effects.push(format!(
                "The difference of {} is refunded to {pm_name} {}.",
                Money(-diff.0),
                refund_timing(&self.policy, Some(pm))
            )),
            _ => effects.push("The price does not change.".into()),
        }
        let new_status = if exchange {
            OrderStatus::ExchangeRequested
        } else {
            OrderStatus::PendingItemsModified
        };
        changes.push(Change::OrderStatus {
            order: order.id.clone(),
            from: order.status,
            to: new_status,
        });
        if exchange {
            effects.push(
                "The order becomes 'exchange requested'; you will get an email on how to send the items back."
                    .into(),
            );
            changes.push(Change::Return {
                order: order.id.clone(),
                request: ReturnRequest {
                    kind: ReturnKind::Exchange,
                    skus: skus.into_iter().cloned().collect(),
                    new_skus,
                    payment_method_id: method.clone(),
                    amount: diff,
                    at: unix_now(),
                },
            });
        } else {
            effects.push(
                "Items can be changed only once per order: after this, the order can't be changed or cancelled."
                    .into(),
            );
            if diff.0 != 0 {
                let kind = if diff.0 > 0 {
                    TransactionKind::Payment
                } else {
                    TransactionKind::Refund
                };
                changes.push(Change::Transaction {
                    order: order.id.clone(),
                    transaction: Transaction {
                        kind,
                        amount: Money(diff.0.abs()),
                        payment_method_id: method.clone(),
                        at: Some(unix_now()),
                    },
                });
                if pm.source == PaymentSource::GiftCard {
                    changes.push(Change::GiftCard {
                        method: method.clone(),
                        delta: Money(-diff.0),
                    });
                }
            }
        }
        Ok(Plan {
            summary: Summary {
                action: if exchange {
                    ActionKind::Exchange
                } else {
                    ActionKind::ModifyItems
                },
                order_id: order.id.clone(),
                effects,
                refund: (diff.0 < 0).then_some(Money(-diff.0)),
                charge: (diff.0 > 0).then_some(diff),
                new_status,
            },
            changes,
        })
    }

    fn plan_return(
        &self,
        customer: &Customer,
        order: &Order,
        item_ids: &[Sku],
        method: &PaymentMethodId,
    ) -> Result<Plan> {
        let skus: Vec<&Sku> = item_ids.iter().collect();
        let lines = lines_for(order, &skus)?;
        if let (Some(days), Some(delivered)) = (self.policy.return_window_days, delivered_at(order))
        {
            if unix_now() > delivered + i64::from(days) * 86_400 {
                return Err(ShopError::refused_as(
                    Refusal::Window,
                "return_window",
                &[("days", days.to_string()), ("order", order.id.to_string()), ("date", iso_date(delivered))],
                    format!(
                        "Returns are accepted within {days} days of delivery; order {} was delivered on {}.",
                        order.id,
                        iso_date(delivered)
                    ),
                ));
            }
        }
        let pm = customer.payment_method(method).ok_or_else(|| {
            ShopError::refused_as(
                Refusal::PaymentMethod,
                "unknown_payment_method",
                &[("method", method.to_string())],
                format!("{method} is not one of your saved payment methods."),
            )
        })?;
        let original = order.original_payment();
        let to_gift_card =
            self.policy.refund_to_any_gift_card && pm.source == PaymentSource::GiftCard;
        if original != Some(method) && !to_gift_card {
            let original_name =
                original.map_or_else(|| "unknown".into(), |m| method_name(customer, m));
            return Err(ShopError::refused_as(
                Refusal::PaymentMethod,
                if self.policy.refund_to_any_gift_card {
                    "refund_original_or_gift_card"
                } else {
                    "refund_original"
                },
                &[("method", original_name.clone())],
                format!(
                    "A refund can go only to the original payment method ({}){}.",
                    original_name,
                    if self.policy.refund_to_any_gift_card {
                        " or to one of your gift cards"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let amount: Money = lines.iter().map(|&l| order.items[l].price).sum();
        let names: Vec<String> = lines
            .iter()
            .map(|&l| {
                let i = &order.items[l];
                format!("{} ({}, {})", i.name, describe_options(&i.options), i.price)
            })
            .collect();
        let effects = vec![
            format!("Return from order {}: {}.", order.id, names.join("; ")),
            format!(
                "{amount} will be refunded to {} once the items are received.",
                pm.describe()
            ),
            "The order becomes 'return requested'; you will get an email on how to send the items back."
                .into(),
        ];
        let changes = vec![
            Change::OrderStatus {
                order: order.id.clone(),
                from: order.status,
                to: OrderStatus::ReturnRequested,
            },
            Change::Return {
                order: order.id.clone(),
                request: ReturnRequest {
                    kind: ReturnKind::Return,
                    skus: item_ids.to_vec(),
                    new_skus: Vec::new(),
                    payment_method_id: method.clone(),
                    amount,
                    at: unix_now(),
                },
            },
        ];
        Ok(Plan {
            summary: Summary {
                action: ActionKind::Return,
                order_id: order.id.clone(),
                effects,
                refund: Some(amount),
                charge: None,
                new_status: OrderStatus::ReturnRequested,
            },
            changes,
        })
    }
}

fn plan_address(order: &Order, address: &Address) -> Result<Plan> {
    address.validate()?;
    if address == &order.address {
        return Err(ShopError::refused_as(
            Refusal::Policy,
            "same_address",
            &[("order", order.id.to_string())],
            format!("Order {} already ships to that address.", order.id),
        ));
    }
    Ok(Plan {
        summary: Summary {
            action: ActionKind::ModifyAddress,
            order_id: order.id.clone(),
            effects: vec![format!(
                "Order {} will ship to {} instead of {}.",
                order.id,
                address.one_line(),
                order.address.one_line()
            )],
            refund: None,
            charge: None,
            new_status: order.status,
        },
        changes: vec![Change::OrderAddress {
            order: order.id.clone(),
            address: address.clone(),
        }],
    })
}

fn plan_payment(
    policy: &Policy,
    customer: &Customer,
    order: &Order,
    method: &PaymentMethodId,
) -> Result<Plan> {
    let new = customer.payment_method(method).ok_or_else(|| {
        ShopError::refused_as(
            Refusal::PaymentMethod,
            "unknown_payment_method",
            &[("method", method.to_string())],
            format!("{method} is not one of your saved payment methods."),
        )
    })?;
    // The method that holds the order's money now: its latest payment.
    let current = order
        .payments
        .iter()
        .rev()
        .find(|t| t.kind == TransactionKind::Payment)
        .map(|t| t.payment_method_id.clone())
        .ok_or_else(|| {
            ShopError::refused_as(
                Refusal::Policy,
                "no_payment",
                &[("order", order.id.to_string())],
                format!("Order {} has no payment to move.", order.id),
            )
        })?;
    if &current == method {
        return Err(ShopError::refused_as(
            Refusal::PaymentMethod,
            "same_payment",
            &[("order", order.id.to_string()), ("method", new.describe())],
            format!(
                "Order {} is already paid with {}.",
                order.id,
                new.describe()
            ),
        ));
    }
    let total = order.total();
    if new.source == PaymentSource::GiftCard && new.balance.unwrap_or_default() < total {
        return Err(ShopError::refused_as(
            Refusal::Balance,
            "balance_total",
            &[
                ("balance", new.balance.unwrap_or_default().to_string()),
                ("amount", total.to_string()),
            ],
            format!(
                "The gift card's balance ({}) does not cover the order total ({total}).",
                new.balance.unwrap_or_default()
            ),
        ));
    }
    let mut changes = vec![
        Change::Transaction {
            order: order.id.clone(),
            transaction: Transaction {
                kind: TransactionKind::Payment,
                amount: total,
                payment_method_id: method.clone(),
                at: Some(unix_now()),
            },
        },
        Change::Transaction {
            order: order.id.clone(),
            transaction: Transaction {
                kind: TransactionKind::Refund,
                amount: total,
                payment_method_id: current.clone(),
                at: Some(unix_now()),
            },
        },
    ];
    if new.source == PaymentSource::GiftCard {
        changes.push(Change::GiftCard {
            method: method.clone(),
            delta: Money(-total.0),
        });
    }
    let old = customer.payment_method(&current);
    if old.is_some_and(|p| p.source == PaymentSource::GiftCard) {
        changes.push(Change::GiftCard {
            method: current.clone(),
            delta: total,
        });
    }
    let timing = refund_timing(policy, old);
    Ok(Plan {
        summary: Summary {
            action: ActionKind::ModifyPayment,
            order_id: order.id.clone(),
            effects: vec![
                format!(
                    "Order {} ({total}) will be paid with {}.",
                    order.id,
                    new.describe()
                ),
                format!(
                    "{total} goes back to {} {timing}.",
                    method_name(customer, &current)
                ),
            ],
            refund: Some(total),
            charge: Some(total),
            new_status: order.status,
        },
        changes,
    })
}

/// When the carrier reported the order delivered, if it did.
fn delivered_at(order: &Order) -> Option<i64> {
    order
        .fulfillments
        .iter()
        .flat_map(|f| &f.events)
        .filter(|e| e.status.eq_ignore_ascii_case("delivered"))
        .map(|e| e.at)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shop::seed::demo_shop;
    use crate::shop::{Channel, IdentifyBy, Policy};

    /// Two confirmations of one payment change, planned at once: the first commits, the second
    /// must find the order moved on, or the old method would be refunded twice.
    #[test]
    fn a_confirmation_planned_before_another_committed_is_refused() {
        let dir =
            std::env::temp_dir().join(format!("clerk-race-{}-{}", std::process::id(), unix_now()));
        let shop = Shop::open(&dir, Policy::default()).unwrap();
        let sys = Ctx::system(Channel::Import);
        shop.import(&sys, &demo_shop(60, unix_now()).unwrap(), &["demo".into()])
            .unwrap();
        let ctx = Ctx::shopper(Channel::Assistant);
        // A pending order and a card or PayPal account of its owner that doesn't pay it yet.
        let (who, order, method) = shop
            .store
            .list_customers(&Page::first(1000))
            .unwrap()
            .into_iter()
            .find_map(|c| {
                let who = shop
                    .identify(
                        &ctx,
                        &IdentifyBy::Email {
                            email: c.email.clone()?,
                        },
                    )
                    .ok()?;
                let customer = shop.profile(&who).ok()?;
                shop.orders_of(&who).ok()?.into_iter().find_map(|o| {
                    let order = shop.own_order(&who, &o.id).ok()?;
                    let paying = order.payments.last()?.payment_method_id.clone();
                    let other = customer
                        .payment_methods
                        .iter()
                        .find(|m| m.id != paying && m.source != PaymentSource::GiftCard)?;
                    (order.status == OrderStatus::Pending)
                        .then(|| (who.clone(), order, other.id.clone()))
                })
            })
            .expect("the demo shop has a pending order its owner could pay otherwise");
        let action = OrderAction::ModifyPayment {
            order_id: order.id.clone(),
            payment_method_id: method,
        };
        let first = shop.prepare(&ctx, &who, &action).unwrap();
        let second = shop.prepare(&ctx, &who, &action).unwrap();
        let late = shop
            .check_confirmation(&ctx, &who, &action, &second.token)
            .unwrap();
        shop.confirm(&ctx, &who, &action, &first.token).unwrap();
        let err = shop.commit_confirmed(&ctx, &who, &action, late);
        assert!(matches!(err, Err(ShopError::Conflict(_))), "{err:?}");
        let after = shop.own_order(&who, &order.id).unwrap();
        assert_eq!(after.payments.len(), order.payments.len() + 2);
        // The refused write used nothing up: its token is still good for a new summary's check.
        assert!(shop
            .store
            .token(&token_hash(&second.token))
            .unwrap()
            .unwrap()
            .used_at
            .is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
