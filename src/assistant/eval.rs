//! Scripted conversations (YAML) replayed against the assistant, each on a fresh copy of the
//! demo shop, checking every reply (facts that must and must not appear, language, sources,
//! silence) and the database afterwards (order statuses, handoffs, complaints, feedback).
//!
//! Besides what a script expects, every reply is checked for facts it could not have taken from
//! the shop: a money amount that is in no document and no record, or an order id that is
//! neither the verified shopper's nor one they wrote themselves.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::retrieval::Knowledge;
use crate::shop::store::Page;
use crate::shop::{Channel, Ctx, FeedbackClassifier, OrderId, Policy, Shop};

use super::extract;
use super::intent::{Intent, IntentClassifier};
use super::lang::{self, Lang};
use super::{Assistant, AssistantError, Prompts};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    pub name: String,
    #[serde(default)]
    pub lang: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub turns: Vec<Step>,
    #[serde(default)]
    pub after: Option<After>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Step {
    User {
        user: String,
        #[serde(default)]
        expect: Expect,
    },
    Staff {
        staff: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub intent: Option<Intent>,
    #[serde(default)]
    pub contains: Vec<String>,
    #[serde(default)]
    pub any: Vec<String>,
    #[serde(default)]
    pub not_contains: Vec<String>,
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub silent: Option<bool>,
    #[serde(default)]
    pub lang: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct After {
    #[serde(default)]
    pub orders: BTreeMap<String, String>,
    #[serde(default)]
    pub handoffs: Option<usize>,
    #[serde(default)]
    pub complaints: Option<usize>,
    #[serde(default)]
    pub feedback: Option<usize>,
}

/// Reads every `*.yaml` file of a folder (or one file), naming the file of a bad script.
pub fn load(path: &Path) -> Result<Vec<(PathBuf, Script)>, AssistantError> {
    let mut files = Vec::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| AssistantError::Data(format!("{}: {e}", path.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| AssistantError::Data(format!("{}: {e}", f.display())))?;
        let scripts: Vec<Script> = serde_yaml::from_str(&text)
            .map_err(|e| AssistantError::Data(format!("{}: {e}", f.display())))?;
        for s in scripts {
            if !names.insert(s.name.clone()) {
                return Err(AssistantError::Data(format!(
                    "{}: the conversation name `{}` is used twice",
                    f.display(),
                    s.name
                )));
            }
            out.push((f.clone(), s));
        }
    }
    Ok(out)
}

/// The parts every conversation shares; the shop itself is made fresh for each.
pub struct Fixture {
    pub knowledge: Knowledge,
    pub intents: Arc<IntentClassifier>,
    pub feedback: Arc<FeedbackClassifier>,
    pub prompts: Arc<Prompts>,
    /// Where each conversation's shop database goes.
    pub scratch: PathBuf,
    /// Money amounts and documents' text the replies may quote.
    pub documents_text: String,
    /// Understand messages by this model's tool calls instead of the offline classifier.
    pub tool_model: Option<crate::engine::Engine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationResult {
    pub name: String,
    pub file: String,
    pub lang: String,
    pub passed: bool,
    pub failures: Vec<String>,
    /// Replies with a fact that is in none of the shop's data.
    pub wrong_facts: usize,
    pub transcript: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub conversations: usize,
    pub passed: usize,
    pub pass_rate: f32,
    pub turns: usize,
    pub wrong_facts: usize,
    pub by_language: BTreeMap<String, (usize, usize)>,
    /// Milliseconds per assistant turn, median and 90th percentile.
    pub turn_ms_p50: f64,
    pub turn_ms_p90: f64,
    pub results: Vec<ConversationResult>,
}

fn money_amounts(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' {
            let mut j = i + 1;
            while j < chars.len()
                && (chars[j].is_ascii_digit() || chars[j] == ',' || chars[j] == '.')
            {
                j += 1;
            }
            let raw: String = chars[i + 1..j].iter().collect();
            let raw = raw.trim_end_matches(['.', ',']).replace(',', "");
            if let Ok(v) = raw.parse::<f64>() {
                out.push(format!("{v:.2}"));
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// Every amount the shop's data holds: document amounts, variant prices, order totals and
/// every sum of some of an order's items (what a partial return refunds), balances and payments.
fn known_amounts(shop: &Shop, documents_text: &str) -> Result<HashSet<String>, AssistantError> {
    let mut known: HashSet<String> = money_amounts(documents_text).into_iter().collect();
    let store = shop.store();
    for p in store.products()? {
        for v in p.variants {
            known.insert(format!("{:.2}", v.price.as_decimal()));
        }
    }
    for c in store.list_customers(&Page::first(100_000))? {
        for m in &c.payment_methods {
            if let Some(b) = m.balance {
                known.insert(format!("{:.2}", b.as_decimal()));
            }
        }
    }
    let orders = store.list_orders(&Default::default(), &Page::first(100_000))?;
    for s in orders {
        let Some(o) = store.order(&s.id)? else {
            continue;
        };
        for t in &o.payments {
            known.insert(format!("{:.2}", t.amount.as_decimal()));
        }
        let n = o.items.len().min(10);
        for mask in 1u32..(1 << n) {
            let sum: i64 = (0..n)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| o.items[i].price.cents())
                .sum();
            known.insert(format!("{:.2}", sum as f64 / 100.0));
        }
    }
    Ok(known)
}

fn fresh_shop(fixture: &Fixture, name: &str) -> Result<Shop, AssistantError> {
    let dir = fixture.scratch.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| AssistantError::Data(format!("{}: {e}", dir.display())))?;
    // A throwaway shop: sealed under a key that lives only as long as this run.
    let key = crate::shop::KeySource::Value(crate::shop::crypto::Sealer::generate());
    let shop = Shop::open_with_key(&dir, Policy::default(), &key)?;
    // The seed is the same shop every time but for its dates, which move with the clock.
    let data = crate::shop::seed::demo_shop(40, crate::clock::unix_now())?;
    shop.import(&Ctx::system(Channel::Import), &data, &["demo".to_string()])?;
    shop.set_classifier(fixture.feedback.clone());
    Ok(shop)
}

fn has(text: &str, needle: &str) -> bool {
    text.to_lowercase().contains(&needle.to_lowercase())
}

/// Runs one script; failures are collected, not raised, so a report shows every miss. `known`
/// holds the money amounts of the shop's data, which every fresh copy shares.
fn run_one(
    fixture: &Fixture,
    known: &HashSet<String>,
    file: &str,
    script: &Script,
) -> Result<(ConversationResult, Vec<f64>), AssistantError> {
    let safe: String = script
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let shop = fresh_shop(fixture, &safe)?;
    let assistant = Assistant::new(
        shop.clone(),
        fixture.knowledge.clone(),
        fixture.intents.clone(),
        fixture.prompts.clone(),
        "Harbor & Pine",
    );
    if let Some(engine) = &fixture.tool_model {
        assistant.understand_with(super::tools::ToolUnderstanding::new(engine.clone())?);
    }
    let conversation = Assistant::new_conversation_id();
    let default_lang = script.lang.as_deref().and_then(Lang::parse);
    let mut failures = Vec::new();
    let mut wrong_facts = 0;
    let mut transcript = Vec::new();
    let mut typed_orders: HashSet<OrderId> = HashSet::new();
    let mut times = Vec::new();
    for (i, step) in script.turns.iter().enumerate() {
        let turn = i + 1;
        match step {
            Step::Staff { staff } => {
                let ctx = Ctx::staff("Jo", Channel::Console);
                let Some(h) = shop.open_handoff_of(&conversation)? else {
                    failures.push(format!("turn {turn}: staff reply, but no handoff is open"));
                    continue;
                };
                if h.status == crate::shop::service::HandoffStatus::Open {
                    shop.claim_handoff(&ctx, h.id)?;
                }
                shop.reply_handoff(&ctx, h.id, staff)?;
                transcript.push(("staff".into(), staff.clone()));
            }
            Step::User { user, expect } => {
                typed_orders.extend(extract::order_ids(user));
                let started = Instant::now();
                let reply = assistant.turn(Some(&conversation), user)?;
                times.push(started.elapsed().as_secs_f64() * 1000.0);
                transcript.push(("user".into(), user.clone()));
                transcript.push(("clerk".into(), reply.text.clone()));
                let text = &reply.text;
                let mut fail = |m: String| failures.push(format!("turn {turn}: {m}"));
                for c in &expect.contains {
                    if !has(text, c) {
                        fail(format!("missing {c:?}"));
                    }
                }
                if !expect.any.is_empty() && !expect.any.iter().any(|c| has(text, c)) {
                    fail(format!("none of {:?}", expect.any));
                }
                for c in &expect.not_contains {
                    if has(text, c) {
                        fail(format!("must not say {c:?}"));
                    }
                }
                for s in &expect.sources {
                    if !reply
                        .sources
                        .iter()
                        .any(|x| x.document_id.contains(s.as_str()))
                    {
                        fail(format!("source {s:?} not cited"));
                    }
                }
                if let Some(silent) = expect.silent {
                    if reply.silent != silent {
                        fail(format!("silent is {}, expected {silent}", reply.silent));
                    }
                }
                if let Some(intent) = expect.intent {
                    if reply.intent != Some(intent) {
                        fail(format!(
                            "intent {}, expected {intent}",
                            reply.intent.map_or("none", |i| i.as_str())
                        ));
                    }
                }
                let want_lang = expect
                    .lang
                    .as_deref()
                    .and_then(Lang::parse)
                    .or(default_lang);
                if let (Some(want), false) = (want_lang, reply.silent) {
                    // The reply's own words, without the quoted passages' language mixing in: a
                    // passage only the shop's English documents hold is quoted («…», “…”).
                    let detected = lang::detect(&unquoted(text));
                    if reply.language != want
                        || detected.is_some_and(|d| d != want && want != Lang::En)
                    {
                        fail(format!(
                            "reply in {}, expected {want}",
                            detected.unwrap_or(reply.language)
                        ));
                    }
                }
                // Facts the shop's data does not hold.
                let mut wrong = false;
                for amount in money_amounts(text) {
                    if !known.contains(&amount) {
                        fail(format!("the amount ${amount} is in no document or record"));
                        wrong = true;
                    }
                }
                let own: HashSet<OrderId> = match shop
                    .store()
                    .conversation(&conversation)?
                    .and_then(|c| c.customer_id)
                {
                    Some(c) => shop
                        .store()
                        .list_orders(
                            &crate::shop::store::OrderFilter {
                                customer: Some(c),
                                status: None,
                            },
                            &Page::first(10_000),
                        )?
                        .into_iter()
                        .map(|o| o.id)
                        .collect(),
                    None => HashSet::new(),
                };
                for o in extract::order_ids(text) {
                    if !own.contains(&o) && !typed_orders.contains(&o) {
                        fail(format!("named order {o}, which is not the shopper's"));
                        wrong = true;
                    }
                }
                wrong_facts += usize::from(wrong);
            }
        }
    }
    if let Some(after) = &script.after {
        for (id, status) in &after.orders {
            let order = OrderId::parse(id)
                .ok()
                .and_then(|o| shop.store().order(&o).ok().flatten());
            match order {
                Some(o) if o.status.as_str() == status => {}
                Some(o) => failures.push(format!("after: {id} is {}, expected {status}", o.status)),
                None => failures.push(format!("after: no order {id}")),
            }
        }
        let count = |n: usize, want: Option<usize>, what: &str, failures: &mut Vec<String>| {
            if let Some(w) = want {
                if n != w {
                    failures.push(format!("after: {n} {what}, expected {w}"));
                }
            }
        };
        let handoffs = shop.store().conversation_handoffs(&conversation)?.len();
        count(handoffs, after.handoffs, "handoffs", &mut failures);
        let complaints = shop
            .store()
            .complaints(&Page::first(10_000))?
            .into_iter()
            .filter(|c| c.conversation_id.as_deref() == Some(conversation.as_str()))
            .count();
        count(complaints, after.complaints, "complaints", &mut failures);
        let feedback = shop
            .store()
            .feedback(None, &Page::first(10_000))?
            .into_iter()
            .filter(|c| c.conversation_id.as_deref() == Some(conversation.as_str()))
            .count();
        count(feedback, after.feedback, "feedback", &mut failures);
    }
    let _ = std::fs::remove_dir_all(fixture.scratch.join(&safe));
    Ok((
        ConversationResult {
            name: script.name.clone(),
            file: file.to_string(),
            lang: default_lang.unwrap_or_default().to_string(),
            passed: failures.is_empty(),
            failures,
            wrong_facts,
            transcript,
        },
        times,
    ))
}

pub fn run(fixture: &Fixture, scripts: &[(PathBuf, Script)]) -> Result<EvalReport, AssistantError> {
    let known = known_amounts(&fresh_shop(fixture, "amounts")?, &fixture.documents_text)?;
    let _ = std::fs::remove_dir_all(fixture.scratch.join("amounts"));
    let mut results = Vec::new();
    let mut times = Vec::new();
    for (file, script) in scripts {
        let name = file
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().to_string());
        let (r, t) = run_one(fixture, &known, &name, script)?;
        times.extend(t);
        results.push(r);
    }
    let mut by_language: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &results {
        let e = by_language.entry(r.lang.clone()).or_default();
        e.0 += usize::from(r.passed);
        e.1 += 1;
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if times.is_empty() {
            0.0
        } else {
            times[((times.len() - 1) as f64 * p).round() as usize]
        }
    };
    let passed = results.iter().filter(|r| r.passed).count();
    Ok(EvalReport {
        conversations: results.len(),
        passed,
        pass_rate: if results.is_empty() {
            0.0
        } else {
            passed as f32 / results.len() as f32
        },
        turns: times.len(),
        wrong_facts: results.iter().map(|r| r.wrong_facts).sum(),
        by_language,
        turn_ms_p50: pct(0.5),
        turn_ms_p90: pct(0.9),
        results,
    })
}

/// The documents' text, for the amounts replies may quote.
pub fn documents_text(inputs: &[crate::retrieval::Input]) -> String {
    inputs
        .iter()
        .map(|i| String::from_utf8_lossy(&i.content).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` without what it quotes between «» or “”.
fn unquoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut close = None;
    for c in text.chars() {
        match (close, c) {
            (None, '«') => close = Some('»'),
            (None, '“') => close = Some('”'),
            (Some(end), c) if c == end => close = None,
            (Some(_), _) => {}
            (None, c) => out.push(c),
        }
    }
    out
}
