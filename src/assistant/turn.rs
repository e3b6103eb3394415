//! One turn of a conversation: understand the message, run the flow it belongs to, and say the
//! result in the shopper's language. Identity and pending confirmations come from [`State`]
//! only; the shop's actions enforce the policy again whatever this module asks.

use crate::retrieval::{Hit, Kind, Mode, ProductFacts, Query};
use crate::shop::service::CuratedAnswer;
use crate::shop::{
    ActionKind, Channel, Confirmation, Ctx, Identified, IdentifyBy, ItemChange, Money, Order,
    OrderAction, OrderId, OrderStatus, PaymentMethodId, Refusal, Role, ShopError, Sku, Summary,
};

use super::extract::{self, Details};
use super::glossary::Found;
use super::intent::Intent;
use super::lang::{self, Lang};
use super::prompts::Words;
use super::{AssistantError, Card, Inner, Reply, Source, Tracking};

/// A change stated to the shopper, waiting for their yes in the next turn.
#[derive(Debug, Clone)]
struct Pending {
    action: OrderAction,
    token: String,
}

/// An account request waiting for a detail the shopper has not given yet.
#[derive(Debug, Clone)]
struct Task {
    intent: Intent,
    order: Option<OrderId>,
    /// Everything the shopper wrote for this request, so details given over several turns add up.
    text: String,
}

/// What the server keeps about one conversation.
#[derive(Debug, Default)]
pub(super) struct State {
    lang: Lang,
    who: Option<Identified>,
    name: Option<String>,
    pending: Option<Pending>,
    task: Option<Task>,
    /// Consecutive questions the shop's data could not answer.
    unanswered: u8,
    /// The last staff message already shown to the shopper.
    pub(super) staff_seen: i64,
    /// The shopper's recent messages, for a handoff summary.
    recent: Vec<String>,
    pub(super) last_used: i64,
    /// The passages the last reply cited, as (document, locator): where several passages could
    /// take the closest one's place, a follow-up question stays with one of these.
    cited: Vec<(String, String)>,
}

/// Words that try to rewrite the rules or pull out the instructions.
const INJECTION: &[&str] = &[
    "ignore previous",
    "ignore all",
    "ignore the above",
    "ignore your",
    "disregard",
    "system prompt",
    "your instructions",
    "your prompt",
    "developer mode",
    "you are now",
    "jailbreak",
    "act as admin",
    "as an admin",
    "as admin",
    "i am the admin",
    "i'm the admin",
    "i am an administrator",
    "override",
    "sudo",
    "system:",
    "[system]",
    "verified as",
    "is verified",
    "already verified",
    "忽略",
    "系统提示",
    "你的指令",
    "管理员",
    "ignora las instrucciones",
    "ignora todas",
    "instrucciones del sistema",
    "tus instrucciones",
    "como administrador",
];

/// Protected attributes: the assistant gives no opinion on them, whatever the question.
const PROTECTED: &[&str] = &[
    "race",
    "racist",
    "religion",
    "religious",
    "muslim",
    "christian",
    "jewish",
    "jews",
    "hindu",
    "ethnic",
    "gender",
    "gay",
    "lesbian",
    "transgender",
    "disabled",
    "immigrant",
    "black people",
    "white people",
    "asian people",
    "women are",
    "men are",
    "are women",
    "are men",
    "women worse",
    "women better",
    "men worse",
    "men better",
    "种族",
    "宗教",
    "性别",
    "raza",
    "religión",
    "género",
    "inmigrantes",
];

/// The message without order ids and email addresses.
fn strip_details(text: &str) -> String {
    text.split_whitespace()
        .filter(|w| !w.contains('@') && extract::order_ids(w).is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn contains_any(text: &str, list: &[&str]) -> bool {
    let t = text.to_lowercase();
    list.iter().any(|w| extract::has_phrase(&t, w))
}

pub(super) struct Turn<'a> {
    inner: &'a Inner,
    id: &'a str,
    state: &'a mut State,
    ctx: Ctx,
    lang: Lang,
    out: Vec<String>,
    sources: Vec<Source>,
    intent: Option<Intent>,
    handoff: Option<i64>,
    cards: Vec<Card>,
    /// The shop's data held no answer to the question.
    unanswered: bool,
    started: std::time::Instant,
}

type R<T> = Result<T, AssistantError>;

impl<'a> Turn<'a> {
    pub(super) fn new(inner: &'a Inner, id: &'a str, state: &'a mut State) -> Self {
        let lang = state.lang;
        Turn {
            inner,
            id,
            state,
            ctx: Ctx::shopper(Channel::Assistant),
            lang,
            out: Vec::new(),
            sources: Vec::new(),
            intent: None,
            handoff: None,
            cards: Vec::new(),
            unanswered: false,
            started: std::time::Instant::now(),
        }
    }

    fn say(&mut self, key: &str, values: &[(&str, &str)]) {
        let s = self.inner.prompts.say(self.lang, key, values);
        self.out.push(s);
    }

    /// Word lists of every language: a bare "ok" or "sí" counts whatever the conversation's.
    fn all_words(&self) -> Vec<&'a Words> {
        let inner: &'a Inner = self.inner;
        Lang::ALL.iter().map(|l| inner.prompts.words(*l)).collect()
    }

    pub(super) fn run(mut self, text: &str) -> R<Reply> {
        self.forget_if_purged()?;
        self.state.last_used = crate::clock::unix_now();
        let shop = &self.inner.shop;
        let conv = shop.ensure_conversation(&self.ctx, self.id, self.state.who.as_ref())?;
        if let Some(l) = lang::detect(text) {
            self.lang = l;
            self.state.lang = l;
        }
        shop.append_message(&self.ctx, self.id, Role::Shopper, text)?;
        self.state.recent.push(text.to_string());
        if self.state.recent.len() > 6 {
            self.state.recent.remove(0);
        }
        // Staff replies reach the shopper first, whoever holds the conversation now.
        self.deliver_staff_messages()?;
        if conv.human {
            self.handoff = self.inner.shop.open_handoff_of(self.id)?.map(|h| h.id);
            return self.finish();
        }
        self.understand_and_act(text)?;
        self.finish()
    }

    /// A conversation that retention purged, or whose shopper was erased, starts over: whoever
    /// writes next must prove who they are again, and nothing of the erased shopper (name,
    /// orders, a change waiting for a yes) is kept for them.
    fn forget_if_purged(&mut self) -> R<()> {
        let Some(who) = &self.state.who else {
            return Ok(());
        };
        let store = self.inner.shop.store();
        let erased = store
            .customer(who.customer_id())?
            .is_none_or(|c| c.erased_at.is_some());
        if erased || store.conversation(self.id)?.is_none() {
            *self.state = State::default();
        }
        Ok(())
    }

    /// The "talk to a person" button: a handoff now, or word that one is already open.
    pub(super) fn request_human(mut self) -> R<Reply> {
        self.forget_if_purged()?;
        self.state.last_used = crate::clock::unix_now();
        let shop = &self.inner.shop;
        let conv = shop.ensure_conversation(&self.ctx, self.id, self.state.who.as_ref())?;
        self.intent = Some(Intent::Human);
        match shop.open_handoff_of(&conv.id)? {
            Some(h) => {
                self.handoff = Some(h.id);
                self.say("handoff_waiting", &[]);
            }
            None => self.handoff("the shopper pressed \"talk to a person\"")?,
        }
        self.finish()
    }

    fn deliver_staff_messages(&mut self) -> R<()> {
        let messages = self
            .inner
            .shop
            .store()
            .messages(self.id, self.state.staff_seen)?;
        for m in messages {
            self.state.staff_seen = self.state.staff_seen.max(m.id);
            if m.role == Role::Staff {
                let name = m.author.clone().unwrap_or_default();
                self.say("staff_says", &[("name", &name), ("text", &m.content)]);
            }
        }
        Ok(())
    }

    fn finish(self) -> R<Reply> {
        self.state.cited = self
            .sources
            .iter()
            .map(|s| (s.document_id.clone(), s.locator.clone()))
            .collect();
        let mut text = self.out.join(" ");
        if !self.sources.is_empty() {
            let list: Vec<String> = self
                .sources
                .iter()
                .map(|s| format!("[{}] {} ({})", s.n, s.title, s.document_id))
                .collect();
            let label = self.inner.prompts.say(self.lang, "sources", &[]);
            text.push_str(&format!("\n\n{label}: {}", list.join("; ")));
        }
        let silent = text.trim().is_empty();
        let message_id = if silent {
            None
        } else {
            // What a reloaded chat page shows again, and what the console's analytics count.
            let meta = serde_json::json!({
                "sources": self.sources,
                "cards": self.cards,
                "intent": self.intent,
                "language": self.lang,
                "awaiting_confirmation": self.state.pending.is_some(),
                "unanswered": self.unanswered,
                "latency_ms": (self.started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            });
            // `staff_seen` stays where the delivery left it: a staff reply written while this
            // turn ran has a lower id than this message and must still reach the shopper.
            let m = self.inner.shop.append_message_with(
                &self.ctx,
                self.id,
                Role::Assistant,
                &text,
                Some(meta),
            )?;
            Some(m.id)
        };
        Ok(Reply {
            conversation_id: self.id.to_string(),
            text,
            language: self.lang,
            intent: self.intent,
            sources: self.sources,
            handoff: self.handoff,
            silent,
            verified: self.state.who.is_some(),
            awaiting_confirmation: self.state.pending.is_some(),
            message_id,
            cards: self.cards,
        })
    }

    fn understand_and_act(&mut self, text: &str) -> R<()> {
        let words = self.all_words();
        // A change waits for a yes: only an explicit yes in this very next message makes it.
        if let Some(p) = self.state.pending.take() {
            if extract::is_yes(text, &words) {
                return self.confirm(p);
            }
            if extract::is_no(text, &words) {
                self.say("declined", &[]);
                return Ok(());
            }
            self.say("not_confirmed", &[]);
        }
        if contains_any(text, INJECTION) {
            self.intent = Some(Intent::OutOfScope);
            self.state.task = None;
            self.say("injection", &[]);
            return Ok(());
        }
        if contains_any(text, PROTECTED) {
            self.intent = Some(Intent::OutOfScope);
            self.say("protected", &[]);
            return Ok(());
        }
        let details = Details::of(text);
        let gave_identity = !details.emails.is_empty() || details.name_zip.is_some();
        if self.state.who.is_none() && gave_identity && !self.identify(&details)? {
            self.say("identify_failed", &[]);
            return Ok(());
        }
        // Classified without the ids and emails, which say who and which, not what.
        let stripped = strip_details(text);
        if stripped.chars().filter(|c| c.is_alphabetic()).count() < 2 && self.state.task.is_none() {
            // Only an email or an order id: the shopper introduced themselves.
            if self.state.who.is_some() && gave_identity {
                let name = self.state.name.clone().unwrap_or_default();
                self.say("identified", &[("name", &name)]);
            } else {
                let shop = self.inner.shop_name.clone();
                self.say("greeting", &[("shop", &shop)]);
            }
            return Ok(());
        }
        let mut classified = self.inner.intents.classify(&stripped)?;
        if let Some(model) = self.inner.tool_model.get() {
            // The model's call decides what is asked; the rules below still apply on top of it
            // (a severe complaint, a bare order id), and the flows act on it as on the
            // classifier's answer.
            classified.intent = model.understand(text)?;
            classified.confidence = 1.0;
        }
        let cues = self.inner.intents.cue_counts(&stripped);
        let cued = |i: Intent| cues.iter().any(|(c, _)| *c == i);
        if crate::shop::care::is_severe(text) {
            // Danger, fraud and legal threats are complaints whatever else the message says.
            classified.intent = Intent::Complaint;
        } else if !details.order_ids.is_empty()
            && !classified.intent.needs_identity()
            && stripped.split_whitespace().count() <= 4
            && self.state.task.is_none()
        {
            // "What about #W1000012?": a bare order id asks about that order.
            classified.intent = Intent::OrderStatus;
        } else if classified.intent.needs_identity()
            && !cued(classified.intent)
            && details.order_ids.is_empty()
            && classified.confidence < 0.6
            && self.state.task.is_none()
        {
            // An account request the words don't support is more likely a question about the
            // shop than a request to act on an order; a question is answered, or not, harmlessly.
            classified.intent = Intent::Question;
        } else if matches!(classified.intent, Intent::OutOfScope | Intent::SmallTalk)
            && self.state.task.is_none()
            && (self.asked_product(text).is_some()
                || (is_question(text)
                    && !self
                        .inner
                        .prompts
                        .glossary(self.lang)
                        .find(text)
                        .topics
                        .is_empty()))
        {
            // "¿Tenéis tiendas de campaña?", "¿Qué métodos de pago aceptan?": the English-only
            // classifier can't read them, but they name a thing shops sell or a topic of the
            // shop's policies, and ask.
            classified.intent = Intent::Question;
        } else if classified.intent == Intent::Question && cued(Intent::Recommendation) {
            // "Is there any camping gear you'd recommend?" asks for a recommendation.
            classified.intent = Intent::Recommendation;
        } else if classified.intent == Intent::Question
            && !details.order_ids.is_empty()
            && cued(Intent::OrderStatus)
        {
            // "What is the status of order #W1000005?" names the order it asks about.
            classified.intent = Intent::OrderStatus;
        }
        // "Can opened socks be returned?", "Which payment methods do you accept?": an account
        // request's words, asked as a question about the shop's rules with no order or account
        // named. The policy answers it, and the shopper is told how to go on if they meant one
        // of their own orders; without such a passage the account flow goes on as asked.
        if classified.intent.needs_identity()
            && self.state.task.is_none()
            && details.order_ids.is_empty()
            && !gave_identity
            && is_question(text)
            && !words.iter().any(|w| extract::mentions(text, &w.requests))
        {
            if let Some(hit) = self.best_hit(text)?.filter(|h| h.kind != Kind::Product) {
                self.intent = Some(Intent::Question);
                self.state.task = None;
                self.state.unanswered = 0;
                let n = self.cite(&hit);
                self.out
                    .push(format!("{} [{n}]", clip_sentences(&hit.passage, 700)));
                self.say("policy_then_account", &[]);
                return Ok(());
            }
        }
        // A message that only carries details (an email, an order id, an address, "all") goes
        // on with the request that asked for them.
        let task = self.state.task.clone();
        let intent = match &task {
            Some(t)
                if self.continues(text, &details, t, classified.intent, classified.confidence) =>
            {
                t.intent
            }
            _ => classified.intent,
        };
        let continuing = task.as_ref().is_some_and(|t| t.intent == intent);
        if task.is_some() && !continuing {
            self.state.task = None;
        }
        // An answer to our own question reports no intent of its own.
        self.intent = (!continuing).then_some(intent);
        if intent.needs_identity() {
            let mut t = if continuing {
                task.unwrap_or(Task {
                    intent,
                    order: None,
                    text: String::new(),
                })
            } else {
                Task {
                    intent,
                    order: None,
                    text: String::new(),
                }
            };
            t.text.push('\n');
            t.text.push_str(text);
            if let Some(o) = details.order_ids.first() {
                t.order = Some(o.clone());
            }
            return self.account_request(t, &details);
        }
        self.state.task = None;
        match intent {
            Intent::Question => self.answer(text),
            Intent::Recommendation => self.recommend(text),
            Intent::Feedback => self.feedback(text, &details),
            Intent::Complaint => self.complaint(text, &details),
            Intent::Human => self.handoff("the shopper asked for a person"),
            Intent::SmallTalk => {
                let w = self.inner.prompts.words(self.lang).clone();
                let shop = self.inner.shop_name.clone();
                if extract::mentions(text, &w.thanks) {
                    self.say("thanks", &[]);
                } else if extract::mentions(text, &w.goodbye) {
                    self.say("goodbye", &[("shop", &shop)]);
                } else if gave_identity && self.state.who.is_some() {
                    let name = self.state.name.clone().unwrap_or_default();
                    self.say("identified", &[("name", &name)]);
                } else {
                    self.say("greeting", &[("shop", &shop)]);
                }
                Ok(())
            }
            Intent::OutOfScope => {
                let shop = self.inner.shop_name.clone();
                self.say("out_of_scope", &[("shop", &shop)]);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether a message goes on with the waiting request rather than starting another.
    fn continues(
        &self,
        text: &str,
        d: &Details,
        t: &Task,
        intent: Intent,
        confidence: f32,
    ) -> bool {
        if intent == t.intent {
            return true;
        }
        let cued = self
            .inner
            .intents
            .cue_counts(text)
            .iter()
            .any(|(i, _)| *i == intent);
        let w = self.inner.prompts.words(self.lang);
        let gives_detail = !d.emails.is_empty()
            || d.name_zip.is_some()
            || !d.order_ids.is_empty()
            || d.address.is_some()
            || d.payment.is_some()
            || extract::mentions(text, &w.all_items)
            || extract::mentions(text, &w.mistake);
        let short = text.split_whitespace().count() <= 6 || text.chars().count() <= 20;
        // We asked something: the answer goes on with the request, unless the message clearly
        // asks for something else.
        gives_detail && (short || confidence < 0.6) || (!cued && confidence < 0.7)
    }

    fn identify(&mut self, d: &Details) -> R<bool> {
        let shop = &self.inner.shop;
        let attempts: Vec<IdentifyBy> = match (d.order_ids.first(), d.emails.first()) {
            // The email proves who they are; the order is then looked up among their own, so
            // someone else's reads as not found rather than as a failed check.
            (Some(o), Some(e)) => vec![
                IdentifyBy::OrderAndEmail {
                    order_id: o.clone(),
                    email: e.clone(),
                },
                IdentifyBy::Email { email: e.clone() },
            ],
            (None, Some(e)) => vec![IdentifyBy::Email { email: e.clone() }],
            _ => Vec::new(),
        }
        .into_iter()
        .chain(d.name_zip.iter().map(|(f, l, z)| IdentifyBy::NameAndZip {
            first_name: f.clone(),
            last_name: l.clone(),
            zip: z.clone(),
        }))
        .collect();
        for by in attempts {
            match shop.identify(&self.ctx, &by) {
                Ok(who) => {
                    let profile = shop.profile(&who)?;
                    self.state.name = Some(profile.first_name.clone());
                    // The conversation now belongs to this customer.
                    shop.ensure_conversation(&self.ctx, self.id, Some(&who))?;
                    self.state.who = Some(who);
                    return Ok(true);
                }
                Err(
                    ShopError::NotFound { .. } | ShopError::NotIdentified | ShopError::Ambiguous,
                ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    // ----- account requests -----

    fn account_request(&mut self, mut t: Task, d: &Details) -> R<()> {
        let Some(who) = self.state.who.clone() else {
            self.state.task = Some(t);
            self.say("ask_identity", &[]);
            return Ok(());
        };
        let shop = &self.inner.shop;
        let orders = shop.orders_of(&who)?;
        if orders.is_empty() {
            self.state.task = None;
            self.say("no_orders", &[]);
            return Ok(());
        }
        let order_id = match t.order.clone() {
            Some(o) => o,
            None => {
                let kind = action_kind(t.intent);
                let fits: Vec<_> = orders
                    .iter()
                    .filter(|o| {
                        kind.is_none_or(|k| shop.policy().check_status(k, o.status).is_ok())
                    })
                    .collect();
                let list = orders
                    .iter()
                    .map(|o| format!("{} ({})", o.id, o.status))
                    .collect::<Vec<_>>()
                    .join(", ");
                if t.intent == Intent::OrderStatus {
                    self.state.task = None;
                    self.say("orders_list", &[("orders", &list)]);
                    return Ok(());
                }
                if fits.len() == 1 {
                    fits[0].id.clone()
                } else {
                    self.state.task = Some(t);
                    self.say("ask_order", &[("orders", &list)]);
                    return Ok(());
                }
            }
        };
        t.order = Some(order_id.clone());
        let order = match shop.order_status(&self.ctx, &who, &order_id) {
            Ok(o) => o,
            Err(ShopError::NotFound { .. }) => {
                self.state.task = None;
                self.say("order_not_found", &[("order", order_id.as_str())]);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if t.intent == Intent::OrderStatus {
            self.state.task = None;
            self.order_status(
                &order.order,
                order.total,
                order.estimated_delivery_date.as_deref(),
            );
            return Ok(());
        }
        // "Change the size" means changing a pending order's items, or exchanging a delivered
        // one's: the order's status decides which, not the shopper's choice of words. Where it
        // allows neither (a processed order), the request stays as asked, and so does the reason
        // it is refused.
        let status = order.order.status;
        let allows = |k: ActionKind| shop.policy().check_status(k, status).is_ok();
        if t.intent == Intent::Exchange
            && !allows(ActionKind::Exchange)
            && allows(ActionKind::ModifyItems)
        {
            t.intent = Intent::ChangeItems;
        } else if t.intent == Intent::ChangeItems
            && !allows(ActionKind::ModifyItems)
            && allows(ActionKind::Exchange)
        {
            t.intent = Intent::Exchange;
        }
        if self
            .intent
            .is_some_and(|i| matches!(i, Intent::Exchange | Intent::ChangeItems))
        {
            self.intent = Some(t.intent);
        }
        let kind = action_kind(t.intent).unwrap_or(ActionKind::Cancel);
        if let Err(e) = shop.policy().check_status(kind, order.order.status) {
            self.state.task = None;
            return self.refused(&order.order, kind, e);
        }
        if shop.policy().hands_to_staff(kind, order.total) {
            // The merchant wants a person to decide this one: staff get it with a summary.
            return self.handoff(&format!(
                "the shop's policy has staff decide {} requests (order {})",
                kind.as_str(),
                order.order.id
            ));
        }
        if matches!(
            kind,
            ActionKind::Return | ActionKind::Exchange | ActionKind::ModifyItems
        ) && order.order.original_payment().is_none()
        {
            // No payment on record to refund or charge (an imported order without its payment
            // history): a person sorts that out, rather than a reply that says nothing.
            self.state.task = None;
            return self.handoff(&format!(
                "order {} has no payment on record for a {} request",
                order.order.id,
                kind.as_str()
            ));
        }
        match self.build_action(&t, &order.order, d)? {
            Some(action) => {
                self.state.task = None;
                match shop.prepare(&self.ctx, &who, &action) {
                    Ok(c) => self.ask_confirmation(action, c),
                    Err(e @ ShopError::Refused { .. }) => self.refused(&order.order, kind, e),
                    Err(e) => Err(e.into()),
                }
            }
            None => {
                self.state.task = Some(t);
                Ok(())
            }
        }
    }

    fn order_status(&mut self, order: &Order, total: Money, delivery: Option<&str>) {
        let items = items_text(order, None);
        self.cards.push(Card::Order {
            order_id: order.id.to_string(),
            status: order.status.to_string(),
            items: order.items.iter().map(item_text).collect(),
            total: total.to_string(),
            tracking: order
                .fulfillments
                .iter()
                .flat_map(|f| {
                    f.tracking_ids.iter().map(move |t| Tracking {
                        id: t.clone(),
                        carrier: f.carrier.clone(),
                        events: f.events.clone(),
                    })
                })
                .collect(),
        });
        self.say(
            "order_status",
            &[
                ("order", order.id.as_str()),
                ("status", order.status.as_str()),
                ("items", &items),
                ("total", &total.to_string()),
            ],
        );
        let tracking: Vec<String> = order
            .fulfillments
            .iter()
            .flat_map(|f| {
                f.tracking_ids.iter().map(move |t| match &f.carrier {
                    Some(c) => format!("{t} ({c})"),
                    None => t.clone(),
                })
            })
            .collect();
        if !tracking.is_empty() {
            self.say("order_tracking", &[("tracking", &tracking.join(", "))]);
        }
        if let Some(d) = delivery {
            if matches!(
                order.status,
                OrderStatus::Pending | OrderStatus::PendingItemsModified | OrderStatus::Processed
            ) {
                self.say("order_delivery", &[("date", d)]);
            }
        }
    }

    /// The action a request asks for, once every detail is known; otherwise asks for the
    /// missing one and returns `None`.
    fn build_action(&mut self, t: &Task, order: &Order, d: &Details) -> R<Option<OrderAction>> {
        let order_id = order.id.clone();
        let original = order.original_payment().cloned();
        let words = self.inner.prompts.words(self.lang).clone();
        Ok(match t.intent {
            Intent::Cancel => {
                let mistake = self
                    .all_words()
                    .iter()
                    .any(|w| extract::mentions(&t.text, &w.mistake));
                let reasons = &self.inner.shop.policy().cancel_reasons;
                let wanted = if mistake {
                    "ordered by mistake"
                } else {
                    "no longer needed"
                };
                let reason = reasons
                    .iter()
                    .find(|r| r.as_str() == wanted)
                    .or(reasons.first())
                    .cloned()
                    .unwrap_or_else(|| wanted.to_string());
                Some(OrderAction::Cancel { order_id, reason })
            }
            Intent::ChangeAddress => {
                match d.address.clone().or_else(|| Details::of(&t.text).address) {
                    Some(address) => Some(OrderAction::ModifyAddress { order_id, address }),
                    None => {
                        self.say("ask_address", &[("order", order.id.as_str())]);
                        None
                    }
                }
            }
            Intent::ChangePayment => {
                let who = self.state.who.clone();
                let customer = match &who {
                    Some(w) => self.inner.shop.profile(w)?,
                    None => return Ok(None),
                };
                let source = d.payment.or_else(|| Details::of(&t.text).payment);
                let matching: Vec<_> = customer
                    .payment_methods
                    .iter()
                    .filter(|m| Some(m.source) == source && Some(&m.id) != original.as_ref())
                    .collect();
                if matching.len() == 1 {
                    Some(OrderAction::ModifyPayment {
                        order_id,
                        payment_method_id: matching[0].id.clone(),
                    })
                } else {
                    let methods = customer
                        .payment_methods
                        .iter()
                        .map(|m| m.describe())
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.say(
                        "ask_payment",
                        &[("order", order.id.as_str()), ("methods", &methods)],
                    );
                    None
                }
            }
            Intent::Return => {
                let Some(payment) = original else {
                    return Ok(None);
                };
                let lines = self.pick_items(order, &t.text, &words);
                if lines.is_empty() {
                    let items = items_text(order, None);
                    self.say(
                        "ask_items",
                        &[("order", order.id.as_str()), ("items", &items)],
                    );
                    None
                } else {
                    Some(OrderAction::Return {
                        order_id,
                        item_ids: lines.iter().map(|&i| order.items[i].sku.clone()).collect(),
                        payment_method_id: payment,
                    })
                }
            }
            Intent::Exchange | Intent::ChangeItems => {
                let Some(payment) = original else {
                    return Ok(None);
                };
                let lines = self.pick_items(order, &t.text, &words);
                let [line] = lines[..] else {
                    let items = items_text(order, None);
                    self.say(
                        "ask_items",
                        &[("order", order.id.as_str()), ("items", &items)],
                    );
                    return Ok(None);
                };
                match self.pick_variant(order, line, &t.text)? {
                    Some(new) => {
                        let items = vec![ItemChange {
                            item_id: order.items[line].sku.clone(),
                            new_item_id: new,
                        }];
                        Some(if t.intent == Intent::Exchange {
                            OrderAction::Exchange {
                                order_id,
                                items,
                                payment_method_id: payment,
                            }
                        } else {
                            OrderAction::ModifyItems {
                                order_id,
                                items,
                                payment_method_id: payment,
                            }
                        })
                    }
                    None => None,
                }
            }
            _ => None,
        })
    }

    /// Order lines the text names: every line for "all", the only line of a one-item order,
    /// else the lines whose product name shares the most words with the text.
    fn pick_items(&self, order: &Order, text: &str, words: &Words) -> Vec<usize> {
        if order.items.len() == 1 {
            return vec![0];
        }
        if extract::mentions(text, &words.all_items) {
            return (0..order.items.len()).collect();
        }
        let lower = text.to_lowercase();
        let text_words: Vec<&str> = lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.len() >= 3)
            .collect();
        let scores: Vec<usize> = order
            .items
            .iter()
            .map(|item| {
                item.name
                    .to_lowercase()
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| w.len() >= 3)
                    .filter(|w| {
                        text_words
                            .iter()
                            .any(|t| t == w || t.trim_end_matches('s') == w.trim_end_matches('s'))
                    })
                    .count()
            })
            .collect();
        let best = scores.iter().copied().max().unwrap_or(0);
        if best == 0 {
            return Vec::new();
        }
        (0..order.items.len())
            .filter(|&i| scores[i] == best)
            .collect()
    }

    /// The available variant of the same product whose options the text names, when exactly
    /// one fits best.
    fn pick_variant(&mut self, order: &Order, line: usize, text: &str) -> R<Option<Sku>> {
        let item = &order.items[line];
        let product = self.inner.shop.store().product(&item.product_id)?;
        let Some(product) = product else {
            return Ok(None);
        };
        let lower = format!(
            " {} ",
            text.to_lowercase()
                .replace([',', '.', '!', '?', '，', '。'], " ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
        // "the 12 kg one" names "12 kg (26 lb)": a value's part before its bracket counts too.
        let names = |val: &str| {
            let val = val.to_lowercase();
            let head = val.split(" (").next().unwrap_or(&val).trim().to_string();
            lower.contains(&format!(" {val} ")) || lower.contains(&format!(" {head} "))
        };
        // The shopper named a value shaped like this product's options ("16 kg", "US 9") that
        // no available variant has: it is unavailable, which is the answer, not a question.
        let lower_shape = digit_shape(&lower);
        let named_a_shape = product
            .variants
            .iter()
            .flat_map(|v| v.options.values())
            .any(|val| {
                let val = val.to_lowercase();
                let head = val.split(" (").next().unwrap_or(&val).trim();
                head.chars().any(|c| c.is_ascii_digit())
                    && lower_shape.contains(&format!(" {} ", digit_shape(head)))
            });
        let candidates: Vec<_> = product
            .variants
            .iter()
            .filter(|v| v.sku != item.sku && v.available && v.stock.is_none_or(|s| s > 0))
            .collect();
        // Each option the text names counts most; among equals, the variant that keeps more of
        // the item's other options (a new colour in the same size) wins.
        let score = |v: &crate::shop::Variant| {
            let named = v
                .options
                .iter()
                .filter(|(k, val)| item.options.get(*k) != Some(*val) && names(val))
                .count();
            if named == 0 {
                return 0;
            }
            let kept = v
                .options
                .iter()
                .filter(|(k, val)| item.options.get(*k) == Some(*val))
                .count();
            named * 10 + kept
        };
        let best = candidates.iter().map(|v| score(v)).max().unwrap_or(0);
        let top: Vec<_> = candidates
            .iter()
            .filter(|v| best > 0 && score(v) == best)
            .collect();
        if let [one] = top[..] {
            return Ok(Some(one.sku.clone()));
        }
        let name = format!(
            "{} ({})",
            item.name,
            crate::shop::records::describe_options(&item.options)
        );
        let options = candidates
            .iter()
            .map(|v| v.describe_options())
            .collect::<Vec<_>>()
            .join("; ");
        // Nothing named: ask which. Something named that no available variant has: say so.
        let key = if best == 0 && !candidates.is_empty() && !named_a_shape {
            "ask_variant"
        } else {
            "no_variant"
        };
        self.say(key, &[("item", &name), ("options", &options)]);
        Ok(None)
    }

    fn ask_confirmation(&mut self, action: OrderAction, c: Confirmation) -> R<()> {
        let summary = self.summary_text(&action, &c.summary)?;
        let order = action.order_id().to_string();
        self.say(
            "confirm_prompt",
            &[("order", &order), ("summary", &summary)],
        );
        self.state.pending = Some(Pending {
            action,
            token: c.token,
        });
        Ok(())
    }

    fn confirm(&mut self, p: Pending) -> R<()> {
        let Some(who) = self.state.who.clone() else {
            return Ok(());
        };
        match self
            .inner
            .shop
            .confirm(&self.ctx, &who, &p.action, &p.token)
        {
            Ok(outcome) => {
                let summary = self.summary_text(&p.action, &outcome.summary)?;
                self.say(
                    "done",
                    &[
                        ("summary", &summary),
                        ("order", outcome.order.id.as_str()),
                        ("status", outcome.order.status.as_str()),
                    ],
                );
            }
            Err(ShopError::Confirmation(_) | ShopError::Conflict(_)) => {
                self.say("confirm_expired", &[]);
            }
            Err(e @ ShopError::Refused { .. }) => {
                let order = self.inner.shop.store().order(p.action.order_id())?;
                match order {
                    Some(o) => self.refused(&o, p.action.kind(), e)?,
                    None => self.say("confirm_expired", &[]),
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// What an action does, in the shopper's language: the shop's own sentences in English,
    /// sentences from `prompts/` filled with the same facts otherwise.
    fn summary_text(&self, action: &OrderAction, s: &Summary) -> R<String> {
        if self.lang == Lang::En {
            return Ok(s.text());
        }
        let p = &self.inner.prompts;
        let l = self.lang;
        let order = s.order_id.as_str();
        let mut out = vec![match action {
            OrderAction::Cancel { reason, .. } => {
                p.say(l, "act_cancel", &[("order", order), ("reason", reason)])
            }
            OrderAction::ModifyAddress { address, .. } => p.say(
                l,
                "act_modify_address",
                &[("order", order), ("address", &address.one_line())],
            ),
            OrderAction::ModifyPayment {
                payment_method_id, ..
            } => {
                let method = self.method_name(payment_method_id)?;
                p.say(
                    l,
                    "act_modify_payment",
                    &[("order", order), ("method", &method)],
                )
            }
            OrderAction::ModifyItems { items, .. } | OrderAction::Exchange { items, .. } => {
                let changes = self.changes_text(items)?;
                let key = if matches!(action, OrderAction::Exchange { .. }) {
                    "act_exchange"
                } else {
                    "act_modify_items"
                };
                p.say(l, key, &[("order", order), ("changes", &changes)])
            }
            OrderAction::Return { item_ids, .. } => {
                let names = self.sku_names(item_ids)?;
                p.say(l, "act_return", &[("order", order), ("items", &names)])
            }
        }];
        if let Some(r) = s.refund {
            out.push(p.say(l, "refund_line", &[("amount", &r.to_string())]));
        }
        if let Some(c) = s.charge {
            out.push(p.say(l, "charge_line", &[("amount", &c.to_string())]));
        }
        out.push(p.say(l, "status_line", &[("status", s.new_status.as_str())]));
        Ok(out.join(" "))
    }

    fn method_name(&self, id: &PaymentMethodId) -> R<String> {
        let Some(who) = &self.state.who else {
            return Ok(id.to_string());
        };
        let c = self.inner.shop.profile(who)?;
        Ok(c.payment_method(id)
            .map_or_else(|| id.to_string(), |m| m.describe()))
    }

    fn sku_names(&self, skus: &[Sku]) -> R<String> {
        let mut names = Vec::new();
        for sku in skus {
            names.push(self.variant_name(sku)?);
        }
        Ok(names.join(", "))
    }

    fn variant_name(&self, sku: &Sku) -> R<String> {
        let store = self.inner.shop.store();
        let Some(v) = store.variant(sku)? else {
            return Ok(sku.to_string());
        };
        let name = store
            .product(&v.product_id)?
            .map_or_else(|| v.product_id.to_string(), |p| p.name);
        Ok(format!("{name} ({})", v.describe_options()))
    }

    fn changes_text(&self, items: &[ItemChange]) -> R<String> {
        let mut out = Vec::new();
        for c in items {
            out.push(format!(
                "{} → {}",
                self.variant_name(&c.item_id)?,
                self.variant_name(&c.new_item_id)?
            ));
        }
        Ok(out.join(", "))
    }

    fn refused(&mut self, order: &Order, kind: ActionKind, e: ShopError) -> R<()> {
        match e {
            ShopError::Refused {
                code,
                message,
                phrase,
            } => {
                let key = format!("refusal_{}", phrase.key);
                let reason = if self.lang == Lang::En {
                    message
                } else if code != Refusal::Status {
                    // The shop's sentence in the shopper's language, its blanks filled from the
                    // refusal; one the phrases don't know (or a refusal without a phrase, whose
                    // key is empty) stays as the shop wrote it.
                    if self.inner.prompts.has(self.lang, &key) {
                        let args: Vec<(&str, &str)> =
                            phrase.args.iter().map(|(k, v)| (*k, v.as_str())).collect();
                        self.inner.prompts.say(self.lang, &key, &args)
                    } else {
                        message
                    }
                } else {
                    let allowed = self
                        .inner
                        .shop
                        .policy()
                        .allowed
                        .get(&kind)
                        .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" / "))
                        .unwrap_or_default();
                    self.inner.prompts.say(
                        self.lang,
                        "refused_status",
                        &[
                            ("order", order.id.as_str()),
                            ("status", order.status.as_str()),
                            ("allowed", &allowed),
                        ],
                    )
                };
                self.say("refused", &[("reason", &reason)]);
                let what = self.inner.prompts.say(self.lang, "what_else", &[]);
                self.say("instead", &[("options", &what)]);
                Ok(())
            }
            e => Err(e.into()),
        }
    }

    // ----- knowledge -----

    fn answer(&mut self, text: &str) -> R<()> {
        if self.answer_curated(text)? {
            return Ok(());
        }
        match self.best_hit(text)? {
            Some(hit) => {
                let others = match self.asked_product(text) {
                    Some(f) if hit.kind == Kind::Product => {
                        self.also_sold(&f.things.join(" "), &hit, |t| f.names_thing(t))?
                    }
                    _ if hit.kind == Kind::Product && asks_if_sold(text) => {
                        let asked = without_frame(text);
                        self.also_sold(text, &hit, |t| names_product(&asked, t))?
                    }
                    _ => Vec::new(),
                };
                self.answer_with(text, hit);
                for other in others {
                    self.answer_with(text, other);
                }
                Ok(())
            }
            None => self.no_answer(),
        }
    }

    /// For "do you sell tents?" answered with one tent, the other products whose names say they
    /// are the same thing (a second tent), at most two more: the shopper asked about a kind.
    /// `query` searches for them and `names` tells whether a product's title is that thing.
    fn also_sold(&self, query: &str, first: &Hit, names: impl Fn(&str) -> bool) -> R<Vec<Hit>> {
        let mut q = Query::new(query);
        q.kind = Some(Kind::Product);
        q.limit = 6;
        Ok(self
            .inner
            .knowledge
            .search(&q)?
            .hits
            .into_iter()
            // One catalogue file is one document: each product is a chunk of it.
            .filter(|h| h.chunk_id != first.chunk_id && names(&h.title))
            .take(2)
            .collect())
    }

    /// Answers with what staff wrote or approved for this very question, if there is one: it wins
    /// over retrieval.
    fn answer_curated(&mut self, text: &str) -> R<bool> {
        let Some(c) = self.curated_match(text)? else {
            return Ok(false);
        };
        self.state.unanswered = 0;
        let n = self.sources.len() + 1;
        self.sources.push(Source {
            n,
            document_id: format!("curated:{}", c.id),
            title: c.question.clone(),
            kind: "curated".into(),
            locator: format!("approved by {}", c.created_by),
        });
        self.out.push(format!("{} [{n}]", c.answer));
        Ok(true)
    }

    /// Answers `text` with a passage [`Self::best_hit`] found.
    fn answer_with(&mut self, text: &str, hit: Hit) {
        self.state.unanswered = 0;
        let n = self.cite(&hit);
        if hit.kind == Kind::Product {
            if let Some(card) = self.product_card(&hit) {
                self.cards.push(card);
            }
            let line = self.product_line(&hit);
            self.out.push(format!("{line} [{n}]"));
        } else {
            // "Do you have a store in Boston?" is answered by the hours passage's last sentence
            // ("… an online-only store, so there is no physical shop"): it goes first.
            let passage = match sold_object(text) {
                Some(asked) => lead_with_naming(&asked, &hit.passage),
                None => hit.passage.clone(),
            };
            let passage = clip_sentences(&passage, 700);
            // A passage only the shop's English documents hold is quoted as such.
            let passage = if self.lang != Lang::En
                && lang::detect(&hit.passage).is_some_and(|l| l != self.lang)
            {
                self.inner
                    .prompts
                    .say(self.lang, "quoted_other_language", &[("passage", &passage)])
            } else {
                passage
            };
            self.out.push(format!("{passage} [{n}]"));
        }
    }

    /// The passage that answers `text`, if the shop's data has one close enough. A product that
    /// the question doesn't name gives way to one the glossary finds by the shopper's words.
    ///
    /// In a language with a glossary, a passage must be on a topic the question names, if it
    /// names one ("你们发货到国外吗？" is about shipping abroad, not the exchange policy the
    /// embedder found closest); failing that, the shop's English passage on that topic is quoted,
    /// and failing that, nothing is.
    fn best_hit(&self, text: &str) -> R<Option<Hit>> {
        let found = self.closest_passage(text)?;
        if found
            .as_ref()
            .is_some_and(|h| h.kind == Kind::Product && names_product(text, &h.title))
        {
            return Ok(found);
        }
        let glossary = self.inner.prompts.glossary(self.lang);
        let asked = glossary.find(text);
        let on_topic = |h: &Hit| {
            asked.topics.is_empty()
                || glossary
                    .find(&format!("{} {}", h.title, h.passage))
                    .topics
                    .iter()
                    .any(|t| asked.topics.contains(t))
        };
        if let Some(h) = found.as_ref().filter(|h| h.kind != Kind::Product) {
            if on_topic(h) {
                return Ok(found);
            }
        }
        if let Some(product_ask) = self.asked_product(text) {
            // None for a thing the shop doesn't carry ("¿Venden bicicletas?"): no product that
            // merely ranks close ("a family tent" once got a linen sheet set).
            return self.product_by_glossary(&product_ask);
        }
        if asked.topics.is_empty() {
            return Ok(found);
        }
        Ok(self
            .passage_in_english(&asked)?
            .or(found.filter(|h| h.kind == Kind::Product)))
    }

    /// The closest of the shop's passages in another language (its English documents) that names
    /// a topic the question asked about, by the glossary's English words.
    fn passage_in_english(&self, asked: &Found) -> R<Option<Hit>> {
        let mut q = Query::new(asked.topic_query());
        q.limit = 5;
        let results = self.inner.knowledge.search(&q)?;
        let threshold = results.threshold;
        Ok(results.hits.into_iter().find(|h| {
            let passage = format!("{} {}", h.title, h.passage).to_lowercase();
            h.kind != Kind::Product
                && h.similarity >= threshold
                && lang::detect(&h.passage) != Some(self.lang)
                && asked.topics.iter().any(|t| passage.contains(t.as_str()))
        }))
    }

    /// What a question in a language the catalogue isn't written in asks about, in the
    /// catalogue's words: `None` unless it names a thing the glossary knows and asks whether the
    /// shop sells it, what it costs or whether it is in stock.
    fn asked_product(&self, text: &str) -> Option<Found> {
        let glossary = self.inner.prompts.glossary(self.lang);
        if glossary.is_empty() {
            return None;
        }
        let asks = asks_if_sold(text)
            || glossary.mentions(text, &self.inner.prompts.words(self.lang).product_asks);
        let found = glossary.find(text);
        (asks && !found.things.is_empty()).then_some(found)
    }

    /// The product a question asks about, found by the glossary's English words: the closest
    /// product whose name says it is that thing ("Wayfarer 28L Daypack" for "mochilas").
    fn product_by_glossary(&self, found: &Found) -> R<Option<Hit>> {
        let mut q = Query::new(found.query());
        q.kind = Some(Kind::Product);
        q.limit = 5;
        Ok(self
            .inner
            .knowledge
            .search(&q)?
            .hits
            .into_iter()
            .find(|h| found.names_thing(&h.title)))
    }

    /// The passage closest to `text` by the ranking and the rules below, if one is close enough.
    fn closest_passage(&self, text: &str) -> R<Option<Hit>> {
        let q = Query::new(text);
        let results = self.inner.knowledge.search(&q)?;
        let best = results.hits.first().map_or(0.0, |h| h.similarity);
        if !results.answerable || results.hits.is_empty() {
            return Ok(None);
        }
        // A passage in the shopper's language wins over a slightly closer one in another. Among
        // those, in Chinese and Spanish, which the English-only embedder ranks poorly ("你们接受哪些
        // 付款方式？" put the refund-timing passage above the FAQ with that very title), the one
        // sharing the most words with the question wins, the ranking breaking ties.
        let in_language = results.hits.iter().enumerate().filter(|(_, h)| {
            h.similarity >= results.threshold
                && h.similarity >= best - 0.15
                && lang::detect(&h.passage) == Some(self.lang)
        });
        // A close passage that names a word of the question the closest one lacks wins over it:
        // "How long does international delivery take?" read a little closer (by words and by
        // meaning) to the domestic delivery FAQ, whose title it nearly repeats, than to the
        // international-shipping passages. Not the other way: "Can I return opened socks?" keeps
        // the passage that names socks over the return window. Among several such passages, the
        // one the last reply cited (a follow-up stays on its topic), then the ranking. English
        // words only; the other languages keep to their own rule below.
        let naming_more: Vec<(usize, &Hit)> = if self.lang == Lang::En {
            let top = &results.hits[0];
            let (asked, top) = (
                en_stems(text),
                en_stems(&format!("{} {}", top.title, top.passage)),
            );
            in_language
                .clone()
                .take(3)
                .filter(|(_, h)| {
                    h.similarity >= best - QUALIFIER_MARGIN
                        && names_more_than(&asked, &format!("{} {}", h.title, h.passage), &top)
                })
                .collect()
        } else {
            Vec::new()
        };
        let cited = |h: &Hit| {
            self.state
                .cited
                .iter()
                .any(|(d, l)| *d == h.document_id && *l == h.source.locator)
        };
        let followed = naming_more
            .iter()
            .find(|(_, h)| cited(h))
            .or(naming_more.first())
            .copied();
        let hit = match self.lang {
            _ if followed.is_some() => followed.map(|(_, h)| h),
            Lang::Zh | Lang::Es => in_language
                .max_by_key(|(i, h)| {
                    let passage = format!("{} {}", h.title, h.passage);
                    (
                        words_shared(self.lang, text, &passage),
                        std::cmp::Reverse(*i),
                    )
                })
                .map(|(_, h)| h),
            _ => in_language.map(|(_, h)| h).next(),
        }
        .unwrap_or(&results.hits[0])
        .clone();
        let sold = asks_if_sold(text);
        // What is left when the passage found can't answer: for "do you sell …?", a product.
        let nothing = || {
            if sold {
                self.sold_product(text)
            } else {
                Ok(None)
            }
        };
        let named = hit.kind == Kind::Product && names_product(text, &hit.title);
        let passage = format!("{} {}", hit.title, hit.passage);
        // The embedder reads Chinese poorly and finds every Chinese passage somewhat close, and,
        // English-only, finds Spanish passages close to each other ("¿Venden mochilas?" and the
        // refund FAQ): an answer must at least share a word with the question.
        let shares_a_word = !matches!(self.lang, Lang::Zh | Lang::Es)
            || words_shared(self.lang, text, &passage) > 0;
        if !named && !shares_a_word {
            return nothing();
        }
        if sold
            && hit.kind != Kind::Product
            && (!same_thing_sold(text, &hit.title)
                || !names_product(&without_frame(text), &passage))
        {
            // "Do you sell backpacks? How much?" reads much like the FAQ "Do you sell gift
            // cards?", whose answer is about gift cards, and "Do you have a loyalty program?"
            // like a passage on whom "we share" data with: a passage answers what the shop
            // has only if it names the thing asked about; otherwise only a product can.
            return self.sold_product(text);
        }
        if hit.kind == Kind::Product && !named && hit.similarity < PRODUCT_SIMILARITY {
            // A product that merely shares a theme ("kayaks" and sandals made for kayaking)
            // is no answer to whether the shop sells something.
            return nothing();
        }
        Ok(Some(hit))
    }

    /// The product that answers "do you sell …?", if one is close enough. Meaning alone ranks
    /// them: the words of such a question are mostly its frame, and the fused ranking favours a
    /// product that mentions the thing ("carry it like a backpack") over the thing itself (a
    /// daypack).
    fn sold_product(&self, text: &str) -> R<Option<Hit>> {
        let mut q = Query::new(text);
        q.kind = Some(Kind::Product);
        q.mode = Mode::Vector;
        q.limit = 3;
        let results = self.inner.knowledge.search(&q)?;
        Ok(results
            .hits
            .into_iter()
            .find(|h| names_product(text, &h.title) || h.similarity >= PRODUCT_SIMILARITY))
    }

    /// A product's price as the catalogue states it: one price, or the range over its variants.
    fn price_text(&self, f: &ProductFacts) -> String {
        let money =
            |x: f64| Money::from_decimal(x).map_or_else(|_| format!("{x:.2}"), |m| m.to_string());
        if (f.price_max - f.price_min).abs() < 0.005 {
            money(f.price_min)
        } else {
            self.inner.prompts.say(
                self.lang,
                "price_range",
                &[("low", &money(f.price_min)), ("high", &money(f.price_max))],
            )
        }
    }

    fn product_card(&self, hit: &Hit) -> Option<Card> {
        let f = hit.product.as_ref()?;
        Some(Card::Product {
            name: hit.title.clone(),
            variant: None,
            price: self.price_text(f),
            in_stock: f.in_stock,
            stock: f.stock,
            document_id: Some(hit.document_id.clone()),
            url: f.url.clone(),
        })
    }

    /// The staff-approved answer to this question, if one was approved: the same words, or a
    /// question the embedder finds all but identical.
    fn curated_match(&self, text: &str) -> R<Option<CuratedAnswer>> {
        let all = self.inner.shop.store().curated_answers()?;
        if all.is_empty() {
            return Ok(None);
        }
        let embedder = self.inner.intents.embedder();
        let lock = || self.inner.curated.lock().unwrap_or_else(|e| e.into_inner());
        let mut cache = lock().clone();
        if !cache.iter().map(|(c, _)| c.id).eq(all.iter().map(|c| c.id)) {
            // Embedded outside the lock: other conversations go on with the old snapshot.
            let questions: Vec<&str> = all.iter().map(|c| c.question.as_str()).collect();
            let vectors = embedder.embed(&questions)?;
            cache = std::sync::Arc::new(all.into_iter().zip(vectors).collect());
            *lock() = cache.clone();
        }
        let words = |s: &str| {
            s.to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let asked = words(text);
        if let Some((c, _)) = cache
            .iter()
            .find(|(c, _)| !asked.is_empty() && words(&c.question) == asked)
        {
            return Ok(Some(c.clone()));
        }
        let v = embedder.embed(&[text])?.pop().unwrap_or_default();
        Ok(cache
            .iter()
            .map(|(c, cv)| (c, crate::shop::cosine(&v, cv)))
            .filter(|(_, sim)| *sim >= CURATED_SIMILARITY)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c.clone()))
    }

    fn product_line(&self, hit: &Hit) -> String {
        let p = &self.inner.prompts;
        let l = self.lang;
        let Some(f) = &hit.product else {
            return clip_sentences(&hit.passage, 500);
        };
        let price = self.price_text(f);
        let stock = match (f.in_stock, f.stock) {
            (false, _) => p.say(l, "out_of_stock", &[]),
            (true, Some(n)) => p.say(l, "in_stock_count", &[("count", &n.to_string())]),
            (true, None) => p.say(l, "in_stock", &[]),
        };
        let mut out = p.say(
            l,
            "product_line",
            &[("name", &hit.title), ("price", &price), ("stock", &stock)],
        );
        // The catalogue's description only in the shopper's language: a reply in Spanish stays in
        // Spanish, its facts (name, price, stock) from the data all the same.
        if self.lang == Lang::En || lang::detect(&hit.passage).is_none_or(|l| l == self.lang) {
            out.push(' ');
            out.push_str(&clip_sentences(&hit.passage, 500));
        }
        out
    }

    fn cite(&mut self, hit: &Hit) -> usize {
        if let Some(s) = self
            .sources
            .iter()
            .find(|s| s.document_id == hit.document_id && s.locator == hit.source.locator)
        {
            return s.n;
        }
        let n = self.sources.len() + 1;
        self.sources.push(Source {
            n,
            document_id: hit.document_id.clone(),
            title: hit.title.clone(),
            kind: hit.kind.as_str().to_string(),
            locator: hit.source.locator.clone(),
        });
        n
    }

    fn no_answer(&mut self) -> R<()> {
        self.unanswered = true;
        self.state.unanswered += 1;
        if self.state.unanswered >= 2 {
            self.state.unanswered = 0;
            return self.handoff("two questions in a row had no answer in the shop's data");
        }
        self.say("no_answer", &[]);
        Ok(())
    }

    fn recommend(&mut self, text: &str) -> R<()> {
        let mut picks: Vec<(String, String)> = Vec::new();
        // The catalogue is searched in its own words: "un saco de dormir para el invierno" asks
        // for "sleeping bag winter".
        let found = self.inner.prompts.glossary(self.lang).find(text);
        let wanted = if found.things.is_empty() && found.qualifiers.is_empty() {
            text.to_string()
        } else {
            found.query()
        };
        if let Some(who) = self.state.who.clone() {
            for r in self.inner.shop.recommend(
                &self.ctx,
                &who,
                &wanted,
                Some(&self.inner.knowledge),
                3,
            )? {
                self.cards.push(Card::Product {
                    name: r.name.clone(),
                    variant: None,
                    price: r.price_from.to_string(),
                    in_stock: true,
                    stock: None,
                    document_id: None,
                    url: None,
                });
                picks.push((r.name, r.price_from.to_string()));
            }
        }
        if picks.is_empty() {
            let mut q = Query::new(&wanted);
            q.kind = Some(Kind::Product);
            q.in_stock = true;
            q.limit = 3;
            let results = self.inner.knowledge.search(&q)?;
            for hit in results
                .hits
                .iter()
                .filter(|h| h.similarity >= results.threshold * 0.8)
            {
                let n = self.cite(hit);
                if let Some(card) = self.product_card(hit) {
                    self.cards.push(card);
                }
                let price = hit.product.as_ref().map_or_else(String::new, |f| {
                    Money::from_decimal(f.price_min)
                        .map_or_else(|_| String::new(), |m| m.to_string())
                });
                picks.push((format!("{} [{n}]", hit.title), price));
            }
        }
        if picks.is_empty() {
            // "Do you have gift cards?" reads like a request for products, but the FAQ answers it.
            let passage = if is_question(text) {
                self.best_hit(text)?.filter(|h| h.kind != Kind::Product)
            } else {
                None
            };
            if let Some(hit) = passage {
                self.intent = Some(Intent::Question);
                if !self.answer_curated(text)? {
                    self.answer_with(text, hit);
                }
                return Ok(());
            }
            self.say("recommend_none", &[]);
        } else {
            let list = picks
                .iter()
                .map(|(name, price)| {
                    if price.is_empty() {
                        name.clone()
                    } else {
                        format!("{name} ({price})")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            self.say("recommend", &[("list", &list)]);
        }
        Ok(())
    }

    // ----- care -----

    fn about(&self, d: &Details) -> crate::shop::care::About {
        crate::shop::care::About {
            conversation_id: Some(self.id.to_string()),
            // An order is attached only when it is the verified shopper's own.
            order_id: match (&self.state.who, d.order_ids.first()) {
                (Some(w), Some(o)) => self
                    .inner
                    .shop
                    .store()
                    .order(o)
                    .ok()
                    .flatten()
                    .filter(|x| &x.customer_id == w.customer_id())
                    .map(|x| x.id),
                _ => None,
            },
        }
    }

    fn feedback(&mut self, text: &str, d: &Details) -> R<()> {
        let about = self.about(d);
        self.inner
            .shop
            .feedback(&self.ctx, self.state.who.as_ref(), &about, text, None)?;
        self.say("feedback_thanks", &[]);
        Ok(())
    }

    fn complaint(&mut self, text: &str, d: &Details) -> R<()> {
        let about = self.about(d);
        let c = self
            .inner
            .shop
            .complaint(&self.ctx, self.state.who.as_ref(), &about, text)?;
        let id = c.id.to_string();
        if c.severity == crate::shop::service::Severity::High {
            let summary = self.summary(&format!("severe complaint C-{id}: {}", c.resolution_note));
            let h = self.inner.shop.open_handoff(
                &self.ctx,
                self.state.who.as_ref(),
                self.id,
                "severe complaint",
                &summary,
            )?;
            self.handoff = Some(h.id);
            self.say("complaint_escalated", &[("id", &id)]);
            return Ok(());
        }
        let pct = self.inner.shop.policy().discount_percent.to_string();
        let key = format!("resolution_{}", c.resolution.as_str());
        let resolution = self.inner.prompts.say(self.lang, &key, &[("pct", &pct)]);
        self.say(
            "complaint_recorded",
            &[("id", &id), ("resolution", &resolution)],
        );
        Ok(())
    }

    fn summary(&self, reason: &str) -> String {
        let who = self.state.who.as_ref().map_or_else(
            || "unverified shopper".to_string(),
            |w| format!("customer {}", w.customer_id()),
        );
        format!(
            "{reason}. {who}, writing in {}. Recent messages: {}",
            self.lang,
            self.state
                .recent
                .iter()
                .map(|m| format!("\"{}\"", m.chars().take(300).collect::<String>()))
                .collect::<Vec<_>>()
                .join(" / ")
        )
    }

    fn handoff(&mut self, reason: &str) -> R<()> {
        let summary = self.summary(reason);
        let h = self.inner.shop.open_handoff(
            &self.ctx,
            self.state.who.as_ref(),
            self.id,
            reason,
            &summary,
        )?;
        self.handoff = Some(h.id);
        self.state.task = None;
        self.say("handoff_opened", &[]);
        Ok(())
    }
}

/// Cosine similarity at which a question counts as the one a curated answer was approved for:
/// paraphrases score about 0.8 to 0.9 with MiniLM, so only near-identical wording passes.
const CURATED_SIMILARITY: f32 = 0.92;

/// Similarity a product passage needs to answer a question that doesn't name the product.
const PRODUCT_SIMILARITY: f32 = 0.45;

/// How much less close than the closest passage one that names more of the question may be, and
/// still be taken instead.
const QUALIFIER_MARGIN: f32 = 0.1;

/// Two-character words too common to show two Chinese texts are about the same thing.
const CJK_COMMON: &[&str] = &[
    "你们", "我们", "什么", "可以", "怎么", "如何", "是否", "一下", "请问", "我的", "吗？", "的吗",
    // "Do you offer …?" asks about what follows: a passage saying what "we offer" is no answer.
    "提供", "没有",
];

/// Whether the shopper asked rather than told: a question mark, or Chinese 吗.
fn is_question(text: &str) -> bool {
    text.contains('?') || text.contains('？') || text.contains('吗')
}

/// How many words of `question` `passage` also has, counted once each, for the languages whose
/// words clerk can pick out without the embedder: Chinese two-character words (a crude stand-in
/// for a segmenter, leaving out the commonest), and Spanish words of five letters or more compared
/// by their first five (a crude stem: "devolver" and "devolución", "reembolso" and
/// "reembolsamos"), leaving out the commonest longer words that say nothing of the topic. Other
/// languages count none.
fn words_shared(lang: Lang, question: &str, passage: &str) -> usize {
    let mut words: Vec<String> = match lang {
        Lang::Zh => {
            // The commonest words go first, so that no pair straddles one ("你们提供" would
            // otherwise leave "们提", which "我们提供的标签" has).
            let q: Vec<char> = CJK_COMMON
                .iter()
                .fold(question.to_string(), |q, c| q.replace(c, " "))
                .chars()
                .collect();
            q.windows(2)
                .filter(|w| w.iter().all(|c| (0x4E00..=0x9FFF).contains(&(*c as u32))))
                .map(|w| w.iter().collect::<String>())
                .filter(|pair| passage.contains(pair))
                .collect()
        }
        Lang::Es => {
            let in_passage = es_stems(passage);
            es_stems(question)
                .into_iter()
                .filter(|w| in_passage.contains(w))
                .collect()
        }
        _ => return 0,
    };
    words.sort_unstable();
    words.dedup();
    words.len()
}

fn es_stems(text: &str) -> Vec<String> {
    const COMMON: &[&str] = &[
        "puedo", "puede", "puedes", "tienen", "tenéis", "tengo", "venden", "vendéis", "quiero",
        "cuánto", "cuánta", "cuándo", "dónde", "hacer", "sobre", "están", "gracias", "favor",
        "tienda", "ustedes", "vuestra", "vuestro", "nuestra", "nuestro", "pueden", "quería",
        "cuales", "cuáles", "alguna", "alguno", "hola",
    ];
    stems(text, COMMON)
}

fn en_stems(text: &str) -> Vec<String> {
    const COMMON: &[&str] = &[
        "could", "would", "should", "there", "where", "which", "about", "their", "these", "those",
        "other", "hello", "thanks", "thank", "please", "doesn't", "don't", "what's",
    ];
    stems(text, COMMON)
}

/// The first five letters of each word of five or more, less the commonest such words.
fn stems(text: &str, common: &[&str]) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\''))
        .filter(|w| w.chars().count() >= 5 && !common.contains(w))
        .map(|w| w.chars().take(5).collect())
        .collect()
}

/// Whether `passage` has a word of the question (`asked`, English stems) that the other passage
/// (`lacks`, its stems) doesn't.
fn names_more_than(asked: &[String], passage: &str, lacks: &[String]) -> bool {
    let has = en_stems(passage);
    asked.iter().any(|w| has.contains(w) && !lacks.contains(w))
}

/// Text with every run of digits (a decimal point included) written `#`, so "16 kg" and
/// "8 kg" have the same shape.
fn digit_shape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() || (in_number && c == '.') {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

fn names_product(question: &str, title: &str) -> bool {
    let q = question.to_lowercase();
    let words: Vec<&str> = q.split(|c: char| !c.is_alphanumeric()).collect();
    title
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 4)
        .any(|w| {
            words
                .iter()
                .any(|q| *q == w || q.trim_end_matches('s') == w.trim_end_matches('s'))
        })
}

/// How a shopper asks whether the shop has something, in the languages the prompts speak (the
/// Chinese forms are left out: without spaces between words, "卖" is in too many other words).
const SOLD_FRAMES: &[&str] = &[
    "do you sell",
    "do you have",
    "do you carry",
    "do you stock",
    "do you offer",
    "venden",
    "vendéis",
    "tienen",
    "tenéis",
];

/// What a "do you sell …?" question asks about: the lowercased text with its frame taken out, or
/// `None` for a text that asks nothing of the kind.
fn sold_object(text: &str) -> Option<String> {
    let t = text.to_lowercase();
    let frame = SOLD_FRAMES.iter().find(|f| t.contains(*f))?;
    Some(t.replacen(frame, " ", 1))
}

/// The question with its "do you sell" frame taken out, so that only what it asks about is left.
fn without_frame(text: &str) -> String {
    sold_object(text).unwrap_or_else(|| text.to_lowercase())
}

fn asks_if_sold(text: &str) -> bool {
    sold_object(text).is_some()
}

/// Whether a passage titled "Do you sell gift cards?" is about what `question` asks for: a word of
/// the title beyond its frame is in the question. A title that is no such question always is.
fn same_thing_sold(question: &str, title: &str) -> bool {
    sold_object(title).is_none_or(|object| names_product(question, &object))
}

fn action_kind(intent: Intent) -> Option<ActionKind> {
    Some(match intent {
        Intent::Cancel => ActionKind::Cancel,
        Intent::ChangeAddress => ActionKind::ModifyAddress,
        Intent::ChangePayment => ActionKind::ModifyPayment,
        Intent::ChangeItems => ActionKind::ModifyItems,
        Intent::Return => ActionKind::Return,
        Intent::Exchange => ActionKind::Exchange,
        _ => return None,
    })
}

fn items_text(order: &Order, only: Option<&[usize]>) -> String {
    order
        .items
        .iter()
        .enumerate()
        .filter(|(i, _)| only.is_none_or(|o| o.contains(i)))
        .map(|(_, item)| item_text(item))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "Name (option, option)".
fn item_text(item: &crate::shop::OrderItem) -> String {
    if item.options.is_empty() {
        item.name.clone()
    } else {
        format!(
            "{} ({})",
            item.name,
            item.options
                .values()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// The passage with its first sentence that names a word of `asked` (as [`names_product`]
/// matches) moved to the front, so an answer leads with what was asked; unchanged when no sentence
/// does or the first already does.
fn lead_with_naming(asked: &str, passage: &str) -> String {
    let text = fold_lines(passage);
    // A sentence ends at a full stop followed by a space ("8 a.m. to 8 p.m." stays whole but for
    // the stop after each, which a rejoin puts back as it was), or at a Chinese one.
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let (mut sentences, mut start) = (Vec::new(), 0);
    for (k, &(i, c)) in chars.iter().enumerate() {
        let end = i + c.len_utf8();
        let after = chars.get(k + 1).map(|(_, n)| *n);
        if matches!(c, '。' | '！' | '？')
            || (matches!(c, '.' | '!' | '?') && after.is_none_or(char::is_whitespace))
        {
            sentences.push(text[start..end].trim());
            start = end;
        }
    }
    sentences.push(text[start..].trim());
    sentences.retain(|s| !s.is_empty());
    match sentences.iter().position(|s| names_product(asked, s)) {
        Some(i) if i > 0 => {
            let lead = sentences.remove(i);
            sentences.insert(0, lead);
            sentences.join(" ")
        }
        _ => text,
    }
}

/// The passage on one line: its lines trimmed, blank ones dropped, joined by spaces.
fn fold_lines(passage: &str) -> String {
    passage
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// At most `max` characters of a passage, cut at a sentence end, with line breaks folded.
fn clip_sentences(passage: &str, max: usize) -> String {
    let text = fold_lines(passage);
    if text.chars().count() <= max {
        return text;
    }
    let cut: String = text.chars().take(max).collect();
    match cut.rfind(['.', '。', '!', '?', '！', '？']) {
        Some(end) if end > max / 3 => {
            cut[..end + cut[end..].chars().next().map_or(1, char::len_utf8)].to_string()
        }
        _ => format!("{}…", cut.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_share_a_shape_and_questions_are_told_from_statements() {
        assert_eq!(digit_shape("the 16 kg one"), digit_shape("the 8 kg one"));
        assert_eq!(digit_shape("size us 9.5 please"), "size us # please");
        assert_ne!(digit_shape("16 kg"), digit_shape("16 lb"));
        assert!(is_question("Can opened socks be returned?"));
        assert!(is_question("已拆封的袜子可以退货吗"));
        assert!(!is_question("I want to return my boots."));
    }

    #[test]
    fn a_do_you_sell_passage_answers_only_for_the_same_thing() {
        assert!(asks_if_sold("Do you sell backpacks? How much?"));
        assert!(asks_if_sold("¿Venden mochilas?"));
        assert!(!asks_if_sold("How much is standard shipping?"));
        let faq = "Do you sell gift cards?";
        assert!(!same_thing_sold("Do you sell backpacks? How much?", faq));
        assert!(same_thing_sold(
            "Do you sell gift cards, and do they expire?",
            faq
        ));
        assert!(same_thing_sold("Do you have a gift card for $50?", faq));
        // A passage whose title asks nothing of the kind is left to the similarity checks.
        assert!(same_thing_sold("Do you sell backpacks?", "Return window"));
        // What is asked about, without the frame whose words are in many passages.
        assert_eq!(
            without_frame("Do you have a loyalty program?").trim(),
            "a loyalty program?"
        );
        assert!(!names_product(
            &without_frame("Do you have a loyalty program?"),
            "Who we share data with. They have to keep it safe."
        ));
    }

    #[test]
    fn spanish_words_are_matched_by_their_stem_and_frame_words_do_not_count() {
        let refunds = "Reembolsamos el importe al método de pago original.";
        let shared = |q, p| words_shared(Lang::Es, q, p);
        assert_eq!(shared("¿Cuándo recibiré mi reembolso?", refunds), 1);
        assert_eq!(shared("¿Venden mochilas?", refunds), 0);
        assert_eq!(
            shared("¿Tienen esquís? Gracias", "Tienen 30 días. Gracias."),
            0
        );
        // Each word once: the passage that names more of the question's words shares more.
        let express = "¿Cuánto cuesta el envío exprés?";
        assert_eq!(
            shared(express, "Envío gratis. El envío estándar es gratis."),
            1
        );
        assert_eq!(shared(express, "Exprés: 14,95 USD. Opciones de envío."), 2);
    }

    #[test]
    fn an_answer_leads_with_the_sentence_naming_what_was_asked() {
        let hours = "Our team is available by chat. The assistant answers around the clock. \
                     Harbor & Pine is an online-only store, so there is no physical shop to visit.";
        let asked = sold_object("Do you have a store in Boston?").unwrap();
        assert!(lead_with_naming(&asked, hours).starts_with("Harbor & Pine is an online-only"));
        assert!(lead_with_naming(&asked, hours).ends_with("around the clock."));
        // Nothing named, or named first already: the passage as it was.
        assert_eq!(lead_with_naming("a loyalty program?", hours), hours);
        assert_eq!(lead_with_naming("our team", hours), hours);
        // Abbreviations keep their stops where the sentences around them move.
        let times = "Open 8 a.m. to 8 p.m. daily. We are an online-only store.";
        assert_eq!(
            lead_with_naming("a store?", times),
            "We are an online-only store. Open 8 a.m. to 8 p.m. daily."
        );
    }

    #[test]
    fn chinese_words_are_two_characters_and_the_commonest_do_not_count() {
        let shared = |q, p| words_shared(Lang::Zh, q, p);
        let q = "你们接受哪些付款方式？";
        // 付款, 款方 and 方式 are in a refund passage; the FAQ with the very question has them all.
        assert_eq!(shared(q, "款项将退回原付款方式。"), 3);
        assert_eq!(shared(q, "你们接受哪些付款方式？ 我们接受信用卡。"), 7);
        assert_eq!(shared("请问如何", "请问，如何"), 0);
        assert_eq!(
            shared("你们提供滑雪板租赁吗？", "使用我们提供的预付标签"),
            0
        );
        assert_eq!(words_shared(Lang::En, "returns", "returns"), 0);
    }
}
