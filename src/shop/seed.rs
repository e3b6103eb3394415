//! The demo shop's records: the demo catalogue's products and variants, and generated but
//! realistic customers with orders in every status (carriers, tracking events, delivery dates,
//! gift cards, refunds). Deterministic, so docs and tests can name its customers.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::domain::*;
use super::error::{Result, ShopError};
use super::records::*;
use super::store::ShopData;

#[derive(Deserialize)]
struct Catalog {
    products: Vec<CatalogProduct>,
}

#[derive(Deserialize)]
struct CatalogProduct {
    id: String,
    name: String,
    category: Option<String>,
    price: f64,
    #[serde(default)]
    stock: Option<i64>,
    #[serde(default)]
    variants: Vec<CatalogVariant>,
}

#[derive(Deserialize)]
struct CatalogVariant {
    sku: String,
    #[serde(default)]
    options: BTreeMap<String, String>,
    price: f64,
    #[serde(default)]
    stock: Option<i64>,
}

/// Products and variants of a catalogue JSON (`{"products": [...]}` as in `demo/`); a product
/// without variants gets one, under its own id.
pub fn catalog_products(json: &str) -> Result<Vec<Product>> {
    let catalog: Catalog = serde_json::from_str(json).map_err(|e| ShopError::Import {
        file: "catalog".into(),
        message: e.to_string(),
    })?;
    catalog
        .products
        .into_iter()
        .map(|p| {
            let id = ProductId::parse(&p.id)?;
            let variants = if p.variants.is_empty() {
                vec![Variant {
                    sku: Sku::parse(&p.id)?,
                    product_id: id.clone(),
                    options: BTreeMap::new(),
                    price: Money::from_decimal(p.price)?,
                    available: p.stock.is_none_or(|s| s > 0),
                    stock: p.stock,
                }]
            } else {
                p.variants
                    .into_iter()
                    .map(|v| {
                        Ok(Variant {
                            sku: Sku::parse(&v.sku)?,
                            product_id: id.clone(),
                            options: v.options,
                            price: Money::from_decimal(v.price)?,
                            available: v.stock.is_none_or(|s| s > 0),
                            stock: v.stock,
                        })
                    })
                    .collect::<Result<_>>()?
            };
            Ok(Product {
                id,
                name: p.name,
                category: p.category,
                variants,
            })
        })
        .collect()
}

/// A small deterministic generator (SplitMix64): the same demo shop on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const FIRST: &[&str] = &[
    "Ana", "Wei", "Sam", "Priya", "Lucas", "Mia", "Omar", "Yuki", "Elena", "Noah", "Fatima",
    "Liam", "Sofia", "Chen", "Grace", "Diego", "Amara", "Jonas", "Hannah", "Mateo",
];
const LAST: &[&str] = &[
    "Garcia",
    "Chen",
    "Taylor",
    "Patel",
    "Silva",
    "Muller",
    "Haddad",
    "Tanaka",
    "Rossi",
    "Brown",
    "Khan",
    "Murphy",
    "Lopez",
    "Li",
    "Kim",
    "Fernandez",
    "Okafor",
    "Berg",
    "Schmidt",
    "Torres",
];
const PLACES: &[(&str, &str, &str, &str)] = &[
    ("Portland", "OR", "USA", "97205"),
    ("Austin", "TX", "USA", "78701"),
    ("Denver", "CO", "USA", "80202"),
    ("Seattle", "WA", "USA", "98101"),
    ("Boston", "MA", "USA", "02108"),
    ("Chicago", "IL", "USA", "60601"),
    ("Madrid", "", "Spain", "28013"),
    ("Shanghai", "", "China", "200000"),
];
const STREETS: &[&str] = &[
    "Maple Avenue",
    "Oak Street",
    "River Road",
    "Hillcrest Drive",
    "Elm Street",
    "Park Lane",
    "Cedar Court",
    "Sunset Boulevard",
];
const CARRIERS: &[&str] = &["UPS", "FedEx", "USPS", "DHL"];

/// Every status appears, most often the ones shoppers ask about.
const STATUSES: &[OrderStatus] = &[
    OrderStatus::Pending,
    OrderStatus::Pending,
    OrderStatus::Processed,
    OrderStatus::Processed,
    OrderStatus::Delivered,
    OrderStatus::Delivered,
    OrderStatus::Delivered,
    OrderStatus::Cancelled,
    OrderStatus::PendingItemsModified,
    OrderStatus::ReturnRequested,
    OrderStatus::ExchangeRequested,
];

const DAY: i64 = 86_400;

/// The demo shop: the demo catalogue plus `customers` generated customers, each with 1 to 4
/// orders. `now` anchors the dates, so delivery estimates stay current.
pub fn demo_shop(customers: usize, now: i64) -> Result<ShopData> {
    let products = catalog_products(crate::retrieval::demo::catalog_json())?;
    let mut rng = Rng(0xC1E2_7000);
    let mut data = ShopData {
        products,
        ..Default::default()
    };
    let mut order_no = 1_000_001u64;
    let mut card_no = 1_000u64;
    for n in 0..customers {
        let first = FIRST[n % FIRST.len()];
        let last = LAST[(n * 7 + n / FIRST.len()) % LAST.len()];
        let (city, state, country, zip) = *rng.pick(PLACES);
        let address = Address {
            address1: format!("{} {}", 10 + rng.below(989), rng.pick(STREETS)),
            address2: if rng.below(3) == 0 {
                format!("Apt {}", 1 + rng.below(40))
            } else {
                String::new()
            },
            city: city.into(),
            state: state.into(),
            country: country.into(),
            zip: zip.into(),
        };
        let id = CustomerId::parse(&format!(
            "{}_{}_{}",
            first.to_lowercase(),
            last.to_lowercase(),
            1000 + n
        ))?;
        let mut methods = vec![PaymentMethod {
            id: PaymentMethodId::parse(&format!("credit_card_{card_no}"))?,
            source: PaymentSource::CreditCard,
            brand: Some(rng.pick(&["visa", "mastercard", "amex"]).to_string()),
            last_four: Some(format!("{:04}", rng.below(10_000))),
            balance: None,
        }];
        card_no += 1;
        if n % 2 == 0 {
            methods.push(PaymentMethod {
                id: PaymentMethodId::parse(&format!("gift_card_{card_no}"))?,
                source: PaymentSource::GiftCard,
                brand: None,
                last_four: None,
                balance: Some(Money(100 * (20 + rng.below(300)) as i64)),
            });
            card_no += 1;
        }
        if n % 3 == 0 {
            methods.push(PaymentMethod {
                id: PaymentMethodId::parse(&format!("paypal_{card_no}"))?,
                source: PaymentSource::Paypal,
                brand: None,
                last_four: None,
                balance: None,
            });
            card_no += 1;
        }
        let orders = 1 + rng.below(4);
        for k in 0..orders {
            // The first customers walk through the statuses in order, so every one is present.
            let status = if n * 4 + k < STATUSES.len() * 2 {
                STATUSES[(n * 4 + k) % STATUSES.len()]
            } else {
                *rng.pick(STATUSES)
            };
            let lines = 1 + rng.below(3);
            let mut items = Vec::new();
            for _ in 0..lines {
                let p = rng.pick(&data.products);
                let v = rng.pick(&p.variants);
                items.push(OrderItem {
                    product_id: p.id.clone(),
                    sku: v.sku.clone(),
                    name: p.name.clone(),
                    options: v.options.clone(),
                    price: v.price,
                });
            }
            let total: Money = items.iter().map(|i| i.price).sum();
            let method = if methods.len() > 1 && rng.below(2) == 0 {
                &methods[1]
            } else {
                &methods[0]
            };
            let age_days = match status {
                OrderStatus::Pending | OrderStatus::PendingItemsModified => rng.below(2) as i64,
                OrderStatus::Processed => 2 + rng.below(3) as i64,
                _ => 8 + rng.below(30) as i64,
            };
            let created = now - age_days * DAY - rng.below(80_000) as i64;
            let mut payments = vec![Transaction {
                kind: TransactionKind::Payment,
                amount: total,
                payment_method_id: method.id.clone(),
                at: Some(created),
            }];
            let mut fulfillments = Vec::new();
            let shipped = matches!(
                status,
                OrderStatus::Processed
                    | OrderStatus::Delivered
                    | OrderStatus::ReturnRequested
                    | OrderStatus::ExchangeRequested
            );
            let mut estimated = Some(created + 5 * DAY);
            if shipped {
                let carrier = rng.pick(CARRIERS).to_string();
                let ship = created + DAY;
                let mut events = vec![
                    TrackingEvent {
                        at: ship,
                        status: "label created".into(),
                        location: Some("Reno, NV".into()),
                    },
                    TrackingEvent {
                        at: ship + DAY / 2,
                        status: "in transit".into(),
                        location: Some("Salt Lake City, UT".into()),
                    },
                ];
                if status != OrderStatus::Processed {
                    events.push(TrackingEvent {
                        at: ship + 2 * DAY,
                        status: "out for delivery".into(),
                        location: Some(city.into()),
                    });
                    events.push(TrackingEvent {
                        at: ship + 2 * DAY + 20_000,
                        status: "delivered".into(),
                        location: Some(city.into()),
                    });
                    estimated = Some(ship + 3 * DAY);
                }
                fulfillments.push(Fulfillment {
                    carrier: Some(carrier),
                    tracking_ids: vec![format!(
                        "{}",
                        100_000_000_000u64 + rng.next() % 900_000_000_000
                    )],
                    skus: items.iter().map(|i| i.sku.clone()).collect(),
                    events,
                });
            }
            let mut cancel_reason = None;
            let mut returns = Vec::new();
            match status {
                OrderStatus::Cancelled => {
                    cancel_reason = Some(
                        rng.pick(&["no longer needed", "ordered by mistake"])
                            .to_string(),
                    );
                    payments.push(Transaction {
                        kind: TransactionKind::Refund,
                        amount: total,
                        payment_method_id: method.id.clone(),
                        at: Some(created + 3600),
                    });
                    estimated = None;
                }
                OrderStatus::ReturnRequested => returns.push(ReturnRequest {
                    kind: ReturnKind::Return,
                    skus: vec![items[0].sku.clone()],
                    new_skus: Vec::new(),
                    payment_method_id: method.id.clone(),
                    amount: items[0].price,
                    at: now - DAY,
                }),
                OrderStatus::ExchangeRequested => returns.push(ReturnRequest {
                    kind: ReturnKind::Exchange,
                    skus: vec![items[0].sku.clone()],
                    new_skus: vec![items[0].sku.clone()],
                    payment_method_id: method.id.clone(),
                    amount: Money(0),
                    at: now - DAY,
                }),
                _ => {}
            }
            data.orders.push(Order {
                id: OrderId::parse(&format!("#W{order_no}"))?,
                customer_id: id.clone(),
                status,
                address: address.clone(),
                items,
                payments,
                fulfillments,
                returns,
                cancel_reason,
                estimated_delivery: estimated,
                created_at: Some(created),
            });
            order_no += 1;
        }
        let saved_addresses = if n % 3 == 1 {
            vec![SavedAddress {
                label: "work".into(),
                address: Address {
                    address1: format!("{} Commerce Plaza", 100 + rng.below(800)),
                    address2: format!("Floor {}", 1 + rng.below(20)),
                    ..address.clone()
                },
            }]
        } else {
            Vec::new()
        };
        data.customers.push(Customer {
            id,
            first_name: first.into(),
            last_name: last.into(),
            email: Some(Email::parse(&format!(
                "{}.{}{}@example.com",
                first.to_lowercase(),
                last.to_lowercase(),
                n
            ))?),
            phone: Some(format!("+1-555-{:04}", rng.below(10_000))),
            address,
            saved_addresses,
            payment_methods: methods,
            erased_at: None,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_shop_has_every_status_and_is_the_same_every_time() {
        let a = demo_shop(40, 1_795_000_000).unwrap();
        let b = demo_shop(40, 1_795_000_000).unwrap();
        assert_eq!(a.orders, b.orders);
        for s in OrderStatus::ALL {
            assert!(a.orders.iter().any(|o| o.status == *s), "no {s} order");
        }
        assert_eq!(a.products.len(), 44);
        // Ids are unique, so the import can't clash.
        let mut ids: Vec<_> = a.orders.iter().map(|o| o.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), a.orders.len());
    }
}
