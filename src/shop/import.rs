//! Bringing a shop in: tau2 retail `db.json` (products, users, orders) and CSV exports of
//! customers and of orders (one row per item). Everything is parsed and checked before anything
//! is written, and the write is one transaction: a bad file changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use serde_json::json;

use super::actions::Ctx;
use super::domain::*;
use super::error::{Result, ShopError};
use super::records::*;
use super::store::{ShopCounts, ShopData};
use super::Shop;

fn bad(file: &str, message: impl Into<String>) -> ShopError {
    ShopError::Import {
        file: file.to_string(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
struct Tau2 {
    products: BTreeMap<String, Tau2Product>,
    users: BTreeMap<String, Tau2User>,
    orders: BTreeMap<String, Tau2Order>,
}

#[derive(Deserialize)]
struct Tau2Product {
    name: String,
    product_id: String,
    variants: BTreeMap<String, Tau2Variant>,
}

#[derive(Deserialize)]
struct Tau2Variant {
    item_id: String,
    options: BTreeMap<String, String>,
    available: bool,
    price: f64,
}

#[derive(Deserialize)]
struct Tau2Name {
    first_name: String,
    last_name: String,
}

#[derive(Deserialize)]
struct Tau2User {
    user_id: String,
    name: Tau2Name,
    address: Address,
    email: String,
    payment_methods: BTreeMap<String, Tau2Payment>,
}

#[derive(Deserialize)]
struct Tau2Payment {
    source: String,
    id: String,
    #[serde(default)]
    brand: Option<String>,
    #[serde(default)]
    last_four: Option<String>,
    #[serde(default)]
    balance: Option<f64>,
}

#[derive(Deserialize)]
struct Tau2Item {
    name: String,
    product_id: String,
    item_id: String,
    price: f64,
    options: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Tau2Fulfillment {
    tracking_id: Vec<String>,
    item_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Tau2Transaction {
    transaction_type: String,
    amount: f64,
    payment_method_id: String,
}

#[derive(Deserialize)]
struct Tau2Order {
    order_id: String,
    user_id: String,
    address: Address,
    items: Vec<Tau2Item>,
    status: String,
    #[serde(default)]
    fulfillments: Vec<Tau2Fulfillment>,
    #[serde(default)]
    payment_history: Vec<Tau2Transaction>,
}

/// Wraps a field's parse error with the record it is in.
fn at<T>(file: &str, record: &str, r: Result<T>) -> Result<T> {
    r.map_err(|e| bad(file, format!("{record}: {e}")))
}

/// Parses a tau2 retail `db.json`.
pub fn parse_tau2(file: &str, text: &str) -> Result<ShopData> {
    let db: Tau2 = serde_json::from_str(text).map_err(|e| bad(file, e.to_string()))?;
    let mut data = ShopData::default();
    for (key, p) in db.products {
        let rec = format!("product {key}");
        let id = at(file, &rec, ProductId::parse(&p.product_id))?;
        let mut variants = Vec::new();
        for v in p.variants.into_values() {
            variants.push(Variant {
                sku: at(file, &rec, Sku::parse(&v.item_id))?,
                product_id: id.clone(),
                options: v.options,
                price: at(file, &rec, Money::from_decimal(v.price))?,
                available: v.available,
                stock: None,
            });
        }
        data.products.push(Product {
            id,
            name: p.name,
            category: None,
            variants,
        });
    }
    for (key, u) in db.users {
        let rec = format!("user {key}");
        let mut methods = Vec::new();
        for pm in u.payment_methods.into_values() {
            methods.push(PaymentMethod {
                id: at(file, &rec, PaymentMethodId::parse(&pm.id))?,
                source: at(file, &rec, PaymentSource::parse(&pm.source))?,
                brand: pm.brand,
                last_four: pm.last_four,
                balance: pm
                    .balance
                    .map(Money::from_decimal)
                    .transpose()
                    .map_err(|e| bad(file, format!("{rec}: {e}")))?,
            });
        }
        data.customers.push(Customer {
            id: at(file, &rec, CustomerId::parse(&u.user_id))?,
            first_name: u.name.first_name,
            last_name: u.name.last_name,
            email: Some(at(file, &rec, Email::parse(&u.email))?),
            phone: None,
            address: u.address,
            saved_addresses: Vec::new(),
            payment_methods: methods,
            erased_at: None,
        });
    }
    for (key, o) in db.orders {
        let rec = format!("order {key}");
        let mut items = Vec::new();
        for i in o.items {
            items.push(OrderItem {
                product_id: at(file, &rec, ProductId::parse(&i.product_id))?,
                sku: at(file, &rec, Sku::parse(&i.item_id))?,
                name: i.name,
                options: i.options,
                price: at(file, &rec, Money::from_decimal(i.price))?,
            });
        }
        let mut payments = Vec::new();
        for t in o.payment_history {
            payments.push(Transaction {
                kind: at(file, &rec, TransactionKind::parse(&t.transaction_type))?,
                amount: at(file, &rec, Money::from_decimal(t.amount))?,
                payment_method_id: at(file, &rec, PaymentMethodId::parse(&t.payment_method_id))?,
                at: None,
            });
        }
        let mut fulfillments = Vec::new();
        for f in o.fulfillments {
            fulfillments.push(Fulfillment {
                carrier: None,
                tracking_ids: f.tracking_id,
                skus: f
                    .item_ids
                    .iter()
                    .map(|s| at(file, &rec, Sku::parse(s)))
                    .collect::<Result<_>>()?,
                events: Vec::new(),
            });
        }
        data.orders.push(Order {
            id: at(file, &rec, OrderId::parse(&o.order_id))?,
            customer_id: at(file, &rec, CustomerId::parse(&o.user_id))?,
            status: at(file, &rec, OrderStatus::parse(&o.status))?,
            address: o.address,
            items,
            payments,
            fulfillments,
            returns: Vec::new(),
            cancel_reason: None,
            estimated_delivery: None,
            created_at: None,
        });
    }
    Ok(data)
}

/// A CSV row as header → value, with its line for errors.
type CsvRow = (u64, HashMap<String, String>);

fn csv_rows(file: &str, text: &str) -> Result<(Vec<String>, Vec<CsvRow>)> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| bad(file, e.to_string()))?
        .iter()
        .map(|h| h.to_lowercase())
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| bad(file, e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line());
        let row = headers
            .iter()
            .cloned()
            .zip(record.iter().map(str::to_string))
            .collect();
        rows.push((line, row));
    }
    Ok((headers, rows))
}

fn col<'a>(file: &str, line: u64, row: &'a HashMap<String, String>, name: &str) -> Result<&'a str> {
    match row.get(name).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad(file, format!("line {line}: `{name}` is missing"))),
    }
}

fn opt(row: &HashMap<String, String>, name: &str) -> String {
    row.get(name).cloned().unwrap_or_default()
}

fn csv_address(row: &HashMap<String, String>) -> Address {
    Address {
        address1: opt(row, "address1"),
        address2: opt(row, "address2"),
        city: opt(row, "city"),
        state: opt(row, "state"),
        country: opt(row, "country"),
        zip: opt(row, "zip"),
    }
}

/// Customers CSV: `id, first_name, last_name, email, phone, address1, address2, city, state,
/// country, zip`.
fn parse_customers_csv(file: &str, rows: &[CsvRow]) -> Result<Vec<Customer>> {
    rows.iter()
        .map(|(line, row)| {
            let rec = format!("line {line}");
            Ok(Customer {
                id: at(file, &rec, CustomerId::parse(col(file, *line, row, "id")?))?,
                first_name: col(file, *line, row, "first_name")?.to_string(),
                last_name: col(file, *line, row, "last_name")?.to_string(),
                email: Some(at(
                    file,
                    &rec,
                    Email::parse(col(file, *line, row, "email")?),
                )?),
                phone: Some(opt(row, "phone")).filter(|p| !p.is_empty()),
                address: csv_address(row),
                saved_addresses: Vec::new(),
                payment_methods: Vec::new(),
                erased_at: None,
            })
        })
        .collect()
}

/// Refuses data with a negative price, payment or balance, naming the record: an order with a
/// negative item would total less than it charged, and refunds would follow the wrong sum.
fn no_negative_amounts(data: &ShopData) -> Result<()> {
    let negative = |what: String, m: Money| {
        (m.cents() < 0).then(|| ShopError::Invalid {
            field: "amount",
            message: format!("{what} is negative ({m})"),
        })
    };
    let found = data
        .products
        .iter()
        .flat_map(|p| &p.variants)
        .find_map(|v| negative(format!("the price of {}", v.sku), v.price))
        .or_else(|| {
            data.customers.iter().find_map(|c| {
                c.payment_methods.iter().find_map(|m| {
                    m.balance
                        .and_then(|b| negative(format!("the balance of {}", m.id), b))
                })
            })
        })
        .or_else(|| {
            data.orders.iter().find_map(|o| {
                o.items
                    .iter()
                    .find_map(|i| negative(format!("item {} of order {}", i.sku, o.id), i.price))
                    .or_else(|| {
                        o.payments.iter().find_map(|t| {
                            negative(format!("a {} of order {}", t.kind.as_str(), o.id), t.amount)
                        })
                    })
            })
        });
    found.map_or(Ok(()), Err)
}

/// Orders CSV, one row per item: `order_id, customer_id, status, product_id, item_id, name,
/// price, payment_method_id`, and the shipping address columns. The payment is the items' sum.
fn parse_orders_csv(file: &str, rows: &[CsvRow]) -> Result<Vec<Order>> {
    let mut orders: Vec<Order> = Vec::new();
    let mut index: HashMap<OrderId, usize> = HashMap::new();
    let mut methods: HashMap<OrderId, PaymentMethodId> = HashMap::new();
    for (line, row) in rows {
        let rec = format!("line {line}");
        let id = at(
            file,
            &rec,
            OrderId::parse(col(file, *line, row, "order_id")?),
        )?;
        let price: f64 = col(file, *line, row, "price")?
            .parse()
            .map_err(|_| bad(file, format!("{rec}: `price` is not a number")))?;
        let item = OrderItem {
            product_id: at(
                file,
                &rec,
                ProductId::parse(col(file, *line, row, "product_id")?),
            )?,
            sku: at(file, &rec, Sku::parse(col(file, *line, row, "item_id")?))?,
            name: col(file, *line, row, "name")?.to_string(),
            options: BTreeMap::new(),
            price: at(file, &rec, Money::from_decimal(price))?,
        };
        let method = at(
            file,
            &rec,
            PaymentMethodId::parse(col(file, *line, row, "payment_method_id")?),
        )?;
        match index.get(&id) {
            Some(&i) => {
                // One row per item: what belongs to the order must agree with its first row, or
                // the import would take one row's word and drop the other's.
                let o = &orders[i];
                // Compared as parsed, so "Pending" and "pending" agree.
                let customer = at(
                    file,
                    &rec,
                    CustomerId::parse(col(file, *line, row, "customer_id")?),
                )?;
                let status = at(
                    file,
                    &rec,
                    OrderStatus::parse(col(file, *line, row, "status")?),
                )?;
                let differs = [
                    ("customer_id", o.customer_id.as_str(), customer.as_str()),
                    ("status", o.status.as_str(), status.as_str()),
                    ("payment_method_id", methods[&id].as_str(), method.as_str()),
                ]
                .into_iter()
                .find(|(_, first, here)| first != here);
                if let Some((field, first, here)) = differs {
                    return Err(bad(
                        file,
                        format!(
                            "{rec}: order {id} has `{field}` {here}, but {first} on an earlier line"
                        ),
                    ));
                }
                orders[i].items.push(item)
            }
            None => {
                index.insert(id.clone(), orders.len());
                methods.insert(id.clone(), method);
                orders.push(Order {
                    id,
                    customer_id: at(
                        file,
                        &rec,
                        CustomerId::parse(col(file, *line, row, "customer_id")?),
                    )?,
                    status: at(
                        file,
                        &rec,
                        OrderStatus::parse(col(file, *line, row, "status")?),
                    )?,
                    address: csv_address(row),
                    items: vec![item],
                    payments: Vec::new(),
                    fulfillments: Vec::new(),
                    returns: Vec::new(),
                    cancel_reason: None,
                    estimated_delivery: None,
                    created_at: None,
                });
            }
        }
    }
    for o in &mut orders {
        if let Some(m) = methods.remove(&o.id) {
            o.payments.push(Transaction {
                kind: TransactionKind::Payment,
                amount: o.total(),
                payment_method_id: m,
                at: None,
            });
        }
    }
    Ok(orders)
}

/// Reads one file into shop data: tau2 `db.json`, or a customers or orders CSV (told apart by
/// their header).
pub fn parse_file(path: &Path) -> Result<ShopData> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| bad(&file, e.to_string()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_lowercase();
    match ext.as_str() {
        "json" => parse_tau2(&file, &text),
        "csv" => {
            let (headers, rows) = csv_rows(&file, &text)?;
            let has = |h: &str| headers.iter().any(|x| x == h);
            if has("order_id") {
                Ok(ShopData {
                    orders: parse_orders_csv(&file, &rows)?,
                    ..Default::default()
                })
            } else if has("email") {
                Ok(ShopData {
                    customers: parse_customers_csv(&file, &rows)?,
                    ..Default::default()
                })
            } else {
                Err(bad(
                    &file,
                    "a CSV import needs an `order_id` column (orders) or an `email` column (customers)",
                ))
            }
        }
        _ => Err(bad(
            &file,
            "clerk imports .json (tau2 db.json) and .csv files",
        )),
    }
}

impl Shop {
    /// Imports files (a directory means its `.json` and `.csv` files) as one transaction:
    /// customers first, then products, then orders, so a CSV of orders can follow its customers.
    pub fn import_paths(&self, ctx: &Ctx, paths: &[&Path]) -> Result<ShopCounts> {
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut entries: Vec<_> = std::fs::read_dir(p)
                    .map_err(|e| bad(&p.display().to_string(), e.to_string()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| {
                        matches!(f.extension().and_then(|e| e.to_str()), Some("json" | "csv"))
                    })
                    .collect();
                entries.sort();
                files.extend(entries);
            } else {
                files.push(p.to_path_buf());
            }
        }
        let mut all = ShopData::default();
        for f in &files {
            let d = parse_file(f)?;
            all.customers.extend(d.customers);
            all.products.extend(d.products);
            all.orders.extend(d.orders);
        }
        self.import(
            ctx,
            &all,
            &files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>(),
        )
    }

    /// Imports parsed shop data in one transaction, with one audit entry.
    pub fn import(&self, ctx: &Ctx, data: &ShopData, sources: &[String]) -> Result<ShopCounts> {
        no_negative_amounts(data)?;
        self.store.import(
            data,
            ctx.audit(
                "import",
                "shop",
                None,
                json!({
                    "sources": sources,
                    "customers": data.customers.len(),
                    "products": data.products.len(),
                    "orders": data.orders.len(),
                }),
            ),
        )
    }
}
