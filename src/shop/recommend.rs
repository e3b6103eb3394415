//! Recommendations for an identified customer: products similar to what the conversation is
//! about and to what they bought (through the knowledge base), and products often bought together
//! with theirs (from the shop's order history). Only products in stock, never one they already
//! have, each with a one-line reason built from the data.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::json;

use super::actions::{Ctx, Identified};
use super::domain::*;
use super::error::{Result, ShopError};
use super::records::Product;
use super::Shop;
use crate::retrieval::{Kind, Knowledge, Query};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub product_id: ProductId,
    pub name: String,
    /// The lowest price among the variants in stock.
    pub price_from: Money,
    pub reason: String,
    #[serde(skip)]
    pub score: f32,
}

/// Cosine similarity a product needs to the conversation or to a bought product to be suggested.
const MIN_SIMILARITY: f32 = 0.3;

fn in_stock_price(p: &Product) -> Option<Money> {
    p.variants
        .iter()
        .filter(|v| v.available && v.stock.is_none_or(|s| s > 0))
        .map(|v| v.price)
        .min()
}

fn clip(text: &str, max: usize) -> String {
    let t = text.trim();
    if t.chars().count() <= max {
        t.to_string()
    } else {
        format!("{}…", t.chars().take(max).collect::<String>().trim_end())
    }
}

impl Shop {
    /// Up to `limit` products for `who`, from `context` (what the conversation is about, may be
    /// empty) and their purchase history.
    pub fn recommend(
        &self,
        ctx: &Ctx,
        who: &Identified,
        context: &str,
        knowledge: Option<&Knowledge>,
        limit: usize,
    ) -> Result<Vec<Recommendation>> {
        if limit == 0 || limit > 50 {
            return Err(ShopError::Invalid {
                field: "limit",
                message: "must be 1 to 50".into(),
            });
        }
        // Newest orders first, so "similar to what you bought" starts from recent purchases.
        let mut owned: Vec<(ProductId, String)> = Vec::new();
        for summary in self.orders_of(who)?.iter().rev() {
            if let Some(order) = self.store.order(&summary.id)? {
                for item in order.items {
                    if !owned.iter().any(|(p, _)| p == &item.product_id) {
                        owned.push((item.product_id, item.name));
                    }
                }
            }
        }
        let owned_ids: HashSet<&ProductId> = owned.iter().map(|(p, _)| p).collect();
        // product → (score, reason); the strongest reason wins.
        let mut found: BTreeMap<ProductId, (f32, String)> = BTreeMap::new();
        let mut offer = |id: ProductId, score: f32, reason: String| {
            let e = found.entry(id).or_insert((f32::MIN, String::new()));
            if score > e.0 {
                *e = (score, reason);
            }
        };
        let search = |text: &str| -> Result<Vec<ProductId>> {
            let Some(k) = knowledge else {
                return Ok(Vec::new());
            };
            let mut q = Query::new(text);
            q.kind = Some(Kind::Product);
            q.in_stock = true;
            q.limit = 8;
            let results = k
                .search(&q)
                .map_err(|e| ShopError::Storage(format!("searching the catalogue: {e}")))?;
            Ok(results
                .hits
                .into_iter()
                // Rank alone would recommend something for any text at all; a product has to be
                // about as close as a passage that can answer a question.
                .filter(|h| h.similarity >= MIN_SIMILARITY)
                .filter_map(|h| h.product.and_then(|p| ProductId::parse(&p.product_id).ok()))
                .collect())
        };
        if !context.trim().is_empty() {
            for (rank, id) in search(context)?.into_iter().enumerate() {
                offer(
                    id,
                    3.0 - rank as f32 * 0.2,
                    format!("Matches what you asked about: \"{}\".", clip(context, 60)),
                );
            }
        }
        for (pid, name) in owned.iter().take(3) {
            for (id, n) in self
                .store
                .co_purchased(std::slice::from_ref(pid))?
                .into_iter()
                .take(5)
            {
                let reason = if n == 1 {
                    format!("Bought together with the {name} in another order.")
                } else {
                    format!("Often bought together with the {name} ({n} orders).")
                };
                offer(id, 1.5 + (n as f32).min(10.0) * 0.1, reason);
            }
            for (rank, id) in search(name)?.into_iter().enumerate().take(4) {
                offer(
                    id,
                    1.2 - rank as f32 * 0.1,
                    format!("Similar to the {name} you bought."),
                );
            }
        }
        let mut out = Vec::new();
        for (id, (score, reason)) in found {
            if owned_ids.contains(&id) {
                continue;
            }
            let Some(product) = self.store.product(&id)? else {
                continue;
            };
            let Some(price_from) = in_stock_price(&product) else {
                continue;
            };
            out.push(Recommendation {
                product_id: id,
                name: product.name,
                price_from,
                reason,
                score,
            });
        }
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.name.cmp(&b.name)));
        out.truncate(limit);
        self.store.record(ctx.audit(
            "recommend",
            format!("customer:{}", who.customer_id()),
            Some(who.customer_id()),
            json!({ "count": out.len(), "with_context": !context.trim().is_empty() }),
        ))?;
        Ok(out)
    }
}
