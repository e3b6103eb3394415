//! The shop: the tau2 import, every order action in every status, identity, confirmation tokens,
//! care records, privacy, the feedback classifier, and the `/v1/shop` routes with key scopes.
//! All against a real SQLite database on disk.

use std::collections::BTreeMap;
use std::sync::Arc;

use clerk::server::auth::ApiKey;
use clerk::server::{app, AppState, ServerConfig};
use clerk::shop::care::{evaluate, parse_labelled, About};
use clerk::shop::policy::Resolution;
use clerk::shop::service::{HandoffStatus, Topic};
use clerk::shop::*;
use serde_json::{json, Value};

use crate::common::{dataset_dir, scratch_dir, shared_embedder};

fn cents(v: &Value) -> i64 {
    (v.as_f64().expect("a number") * 100.0).round() as i64
}

#[test]
fn tau2_import_round_trips_counts_and_totals() {
    let path = dataset_dir("tau2-retail").join("db.json");
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // Counted straight from the JSON, independently of clerk's parser.
    let users = raw["users"].as_object().unwrap();
    let products = raw["products"].as_object().unwrap();
    let orders = raw["orders"].as_object().unwrap();
    let variants: usize = products
        .values()
        .map(|p| p["variants"].as_object().unwrap().len())
        .sum();
    let methods: Vec<&Value> = users
        .values()
        .flat_map(|u| u["payment_methods"].as_object().unwrap().values())
        .collect();
    let items: Vec<&Value> = orders
        .values()
        .flat_map(|o| o["items"].as_array().unwrap())
        .collect();
    let history: Vec<&Value> = orders
        .values()
        .flat_map(|o| o["payment_history"].as_array().unwrap())
        .collect();
    let sum_of = |kind: &str| -> i64 {
        history
            .iter()
            .filter(|t| t["transaction_type"] == kind)
            .map(|t| cents(&t["amount"]))
            .sum()
    };
    let expected = ShopCounts {
        customers: users.len() as u64,
        payment_methods: methods.len() as u64,
        products: products.len() as u64,
        variants: variants as u64,
        orders: orders.len() as u64,
        order_items: items.len() as u64,
        payments: history
            .iter()
            .filter(|t| t["transaction_type"] == "payment")
            .count() as u64,
        refunds: history
            .iter()
            .filter(|t| t["transaction_type"] == "refund")
            .count() as u64,
        item_total: Money(items.iter().map(|i| cents(&i["price"])).sum()),
        paid_total: Money(sum_of("payment")),
        refunded_total: Money(sum_of("refund")),
        gift_card_balance: Money(
            methods
                .iter()
                .filter_map(|m| m.get("balance"))
                .map(cents)
                .sum(),
        ),
    };
    assert_eq!(expected.customers, 500);
    assert_eq!(expected.variants, 591);

    let dir = scratch_dir("shop-tau2");
    let shop = Shop::open(&dir, Policy::default()).unwrap();
    let ctx = Ctx::system(Channel::Cli);
    let counts = shop.import_paths(&ctx, &[path.as_path()]).unwrap();
    assert_eq!(counts, expected);

    // Reopened from disk, one order reads back field for field.
    drop(shop);
    let shop = Shop::open(&dir, Policy::default()).unwrap();
    assert_eq!(shop.counts().unwrap(), expected);
    let (key, src) = orders.iter().next().unwrap();
    let order = shop
        .store()
        .order(&OrderId::parse(key).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(order.status.as_str(), src["status"]);
    assert_eq!(order.customer_id.as_str(), src["user_id"]);
    assert_eq!(order.items.len(), src["items"].as_array().unwrap().len());
    for (item, s) in order.items.iter().zip(src["items"].as_array().unwrap()) {
        assert_eq!(item.sku.as_str(), s["item_id"]);
        assert_eq!(item.price.cents(), cents(&s["price"]));
    }
    assert_eq!(order.address.zip, src["address"]["zip"]);

    // A second import of the same shop clashes and changes nothing.
    let err = shop.import_paths(&ctx, &[path.as_path()]).unwrap_err();
    assert!(matches!(err, ShopError::Import { .. }), "{err}");
    assert_eq!(shop.counts().unwrap(), expected);
}

fn pm(id: &str, source: PaymentSource, balance: Option<i64>) -> PaymentMethod {
    PaymentMethod {
        id: PaymentMethodId::parse(id).unwrap(),
        source,
        brand: (source == PaymentSource::CreditCard).then(|| "visa".into()),
        last_four: (source == PaymentSource::CreditCard).then(|| "4242".into()),
        balance: balance.map(Money),
    }
}

fn variant(sku: &str, product: &str, color: &str, price: i64, available: bool) -> Variant {
    Variant {
        sku: Sku::parse(sku).unwrap(),
        product_id: ProductId::parse(product).unwrap(),
        options: BTreeMap::from([("color".to_string(), color.to_string())]),
        price: Money(price),
        available,
        stock: None,
    }
}

fn address(street: &str, zip: &str) -> Address {
    Address {
        address1: street.into(),
        address2: String::new(),
        city: "Denver".into(),
        state: "CO".into(),
        country: "USA".into(),
        zip: zip.into(),
    }
}

fn customer(id: &str, first: &str, last: &str, zip: &str, methods: Vec<PaymentMethod>) -> Customer {
    Customer {
        id: CustomerId::parse(id).unwrap(),
        first_name: first.into(),
        last_name: last.into(),
        email: Some(Email::parse(&format!("{id}@example.com")).unwrap()),
        phone: None,
        address: address("1 Main St", zip),
        saved_addresses: vec![SavedAddress {
            label: "work".into(),
            address: address("200 Office Park", zip),
        }],
        payment_methods: methods,
        erased_at: None,
    }
}

fn order(id: u64, customer: &str, status: OrderStatus, method: &str) -> Order {
    let items = vec![
        OrderItem {
            product_id: ProductId::parse("lamp").unwrap(),
            sku: Sku::parse("lamp-red").unwrap(),
            name: "Desk Lamp".into(),
            options: BTreeMap::from([("color".to_string(), "red".to_string())]),
            price: Money(4000),
        },
        OrderItem {
            product_id: ProductId::parse("mug").unwrap(),
            sku: Sku::parse("mug-white").unwrap(),
            name: "Mug".into(),
            options: BTreeMap::from([("color".to_string(), "white".to_string())]),
            price: Money(1000),
        },
    ];
    Order {
        id: OrderId::parse(&format!("#W{id}")).unwrap(),
        customer_id: CustomerId::parse(customer).unwrap(),
        status,
        address: address("1 Main St", "80202"),
        payments: vec![Transaction {
            kind: TransactionKind::Payment,
            amount: Money(5000),
            payment_method_id: PaymentMethodId::parse(method).unwrap(),
            at: None,
        }],
        items,
        fulfillments: Vec::new(),
        returns: Vec::new(),
        cancel_reason: None,
        estimated_delivery: None,
        created_at: None,
    }
}

/// Alice and Bob, two products with variants, and `orders` for Alice.
fn fixture(name: &str, orders: Vec<Order>, policy: Policy) -> Shop {
    let shop = Shop::open(&scratch_dir(name), policy).unwrap();
    let data = ShopData {
        customers: vec![
            customer(
                "alice_1",
                "Alice",
                "Wong",
                "80202",
                vec![
                    pm("credit_card_1", PaymentSource::CreditCard, None),
                    pm("gift_card_1", PaymentSource::GiftCard, Some(100_000)),
                    pm("gift_card_poor", PaymentSource::GiftCard, Some(400)),
                    pm("paypal_1", PaymentSource::Paypal, None),
                ],
            ),
            customer(
                "bob_2",
                "Bob",
                "Stone",
                "80202",
                vec![pm("credit_card_2", PaymentSource::CreditCard, None)],
            ),
            // Same name and postal code as Bob: name + zip alone can't tell them apart.
            customer("bob_3", "Bob", "Stone", "80202", vec![]),
        ],
        products: vec![
            Product {
                id: ProductId::parse("lamp").unwrap(),
                name: "Desk Lamp".into(),
                category: None,
                variants: vec![
                    variant("lamp-red", "lamp", "red", 4000, true),
                    variant("lamp-blue", "lamp", "blue", 4500, true),
                    variant("lamp-green", "lamp", "green", 3500, true),
                    variant("lamp-gold", "lamp", "gold", 9000, false),
                ],
            },
            Product {
                id: ProductId::parse("mug").unwrap(),
                name: "Mug".into(),
                category: None,
                variants: vec![
                    variant("mug-white", "mug", "white", 1000, true),
                    variant("mug-black", "mug", "black", 1000, true),
                ],
            },
        ],
        orders,
    };
    shop.import(&Ctx::system(Channel::Import), &data, &["fixture".into()])
        .unwrap();
    shop
}

fn alice(shop: &Shop) -> Identified {
    shop.identify(
        &Ctx::shopper(Channel::Assistant),
        &IdentifyBy::Email {
            email: Email::parse("alice_1@example.com").unwrap(),
        },
    )
    .unwrap()
}

/// One action of each kind on `order`, each valid in the state the policy allows it in.
fn action(kind: ActionKind, order: &OrderId) -> OrderAction {
    let order_id = order.clone();
    let pm = |s: &str| PaymentMethodId::parse(s).unwrap();
    let change = ItemChange {
        item_id: Sku::parse("lamp-red").unwrap(),
        new_item_id: Sku::parse("lamp-blue").unwrap(),
    };
    match kind {
        ActionKind::Cancel => OrderAction::Cancel {
            order_id,
            reason: "no longer needed".into(),
        },
        ActionKind::ModifyAddress => OrderAction::ModifyAddress {
            order_id,
            address: address("9 New Road", "80203"),
        },
        ActionKind::ModifyPayment => OrderAction::ModifyPayment {
            order_id,
            payment_method_id: pm("paypal_1"),
        },
        ActionKind::ModifyItems => OrderAction::ModifyItems {
            order_id,
            items: vec![change],
            payment_method_id: pm("gift_card_1"),
        },
        ActionKind::Return => OrderAction::Return {
            order_id,
            item_ids: vec![Sku::parse("mug-white").unwrap()],
            payment_method_id: pm("credit_card_1"),
        },
        ActionKind::Exchange => OrderAction::Exchange {
            order_id,
            items: vec![change],
            payment_method_id: pm("credit_card_1"),
        },
    }
}

#[test]
fn every_action_in_every_status_is_allowed_or_refused_by_policy() {
    let policy = Policy::default();
    let mut orders = Vec::new();
    let mut cases = Vec::new();
    let mut n = 100;
    for kind in ActionKind::ALL {
        for status in OrderStatus::ALL {
            orders.push(order(n, "alice_1", *status, "credit_card_1"));
            cases.push((kind, *status, OrderId::parse(&format!("#W{n}")).unwrap()));
            n += 1;
        }
    }
    let shop = fixture("shop-policy", orders, policy.clone());
    let who = alice(&shop);
    let ctx = Ctx::shopper(Channel::Assistant);
    let (mut allowed, mut refused) = (0, 0);
    for (kind, status, id) in cases {
        let act = action(kind, &id);
        let should = policy.allowed[&kind].contains(&status);
        let before = shop.store().order(&id).unwrap().unwrap();
        match shop.prepare(&ctx, &who, &act) {
            Ok(c) => {
                assert!(should, "{kind:?} on a {status} order was allowed");
                let out = shop.confirm(&ctx, &who, &act, &c.token).unwrap();
                assert_eq!(
                    out.order.status, c.summary.new_status,
                    "{kind:?} on {status}"
                );
                assert_eq!(
                    shop.store().order(&id).unwrap().unwrap().status,
                    c.summary.new_status
                );
                allowed += 1;
            }
            Err(e) => {
                assert!(!should, "{kind:?} on a {status} order was refused: {e}");
                let expected = if kind == ActionKind::ModifyItems
                    && status == OrderStatus::PendingItemsModified
                {
                    Refusal::AlreadyModified
                } else {
                    Refusal::Status
                };
                match &e {
                    ShopError::Refused { code, message, .. } => {
                        assert_eq!(*code, expected, "{kind:?} on {status}: {message}");
                        assert!(message.contains(status.as_str()) || expected != Refusal::Status);
                    }
                    other => panic!("{kind:?} on {status}: {other}"),
                }
                // A refusal changes nothing.
                assert_eq!(shop.store().order(&id).unwrap().unwrap(), before);
                refused += 1;
            }
        }
    }
    assert_eq!((allowed, refused), (6, 36));
}

#[test]
fn writes_move_money_exactly_and_refusals_say_why() {
    let orders = vec![
        order(1, "alice_1", OrderStatus::Pending, "gift_card_1"),
        order(2, "alice_1", OrderStatus::Pending, "credit_card_1"),
        order(3, "alice_1", OrderStatus::Pending, "credit_card_1"),
        order(4, "alice_1", OrderStatus::Delivered, "credit_card_1"),
        order(5, "alice_1", OrderStatus::Delivered, "credit_card_1"),
    ];
    let shop = fixture("shop-money", orders, Policy::default());
    let who = alice(&shop);
    let ctx = Ctx::shopper(Channel::Assistant);
    let id = |n: u64| OrderId::parse(&format!("#W{n}")).unwrap();
    let pmid = |s: &str| PaymentMethodId::parse(s).unwrap();
    let balance = |shop: &Shop| {
        shop.profile(&who)
            .unwrap()
            .payment_method(&pmid("gift_card_1"))
            .unwrap()
            .balance
            .unwrap()
    };
    let refusal = |r: Result<Confirmation, ShopError>| match r {
        Err(ShopError::Refused {
            code,
            message,
            phrase,
        }) => (code, message, phrase),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let run = |a: OrderAction| {
        let c = shop.prepare(&ctx, &who, &a)?;
        shop.confirm(&ctx, &who, &a, &c.token)
    };

    // Cancelling a gift-card order puts the money back on the card at once.
    let (code, msg, phrase) = refusal(shop.prepare(
        &ctx,
        &who,
        &OrderAction::Cancel {
            order_id: id(1),
            reason: "found it cheaper".into(),
        },
    ));
    assert_eq!(code, Refusal::Reason);
    assert!(msg.contains("no longer needed"), "{msg}");
    // The same refusal as a phrase for other languages, with the policy's own reasons in it.
    assert_eq!(phrase.key, "cancel_reason");
    assert!(
        phrase
            .args
            .iter()
            .any(|(k, v)| *k == "reasons" && v.contains("no longer needed")),
        "{phrase:?}"
    );
    assert_eq!(balance(&shop), Money(100_000));
    let out = run(OrderAction::Cancel {
        order_id: id(1),
        reason: "Ordered by mistake".into(),
    })
    .unwrap();
    assert_eq!(out.summary.refund, Some(Money(5000)));
    assert_eq!(
        out.order.cancel_reason.as_deref(),
        Some("ordered by mistake")
    );
    assert_eq!(out.order.net_paid(), Money(0));
    assert_eq!(balance(&shop), Money(105_000));

    // Items: same product only, available only, gift card must cover the difference.
    let lamp = |to: &str| ItemChange {
        item_id: Sku::parse("lamp-red").unwrap(),
        new_item_id: Sku::parse(to).unwrap(),
    };
    let modify = |to: &str, pm: &str| OrderAction::ModifyItems {
        order_id: id(2),
        items: vec![lamp(to)],
        payment_method_id: pmid(pm),
    };
    assert_eq!(
        refusal(shop.prepare(&ctx, &who, &modify("mug-black", "credit_card_1"))).0,
        Refusal::Item
    );
    assert_eq!(
        refusal(shop.prepare(&ctx, &who, &modify("lamp-gold", "credit_card_1"))).0,
        Refusal::Item
    );
    assert_eq!(
        refusal(shop.prepare(&ctx, &who, &modify("lamp-red", "credit_card_1"))).0,
        Refusal::Item
    );
    let (code, msg, phrase) =
        refusal(shop.prepare(&ctx, &who, &modify("lamp-blue", "gift_card_poor")));
    assert_eq!(code, Refusal::Balance);
    assert_eq!(phrase.key, "balance_difference");
    for (_, v) in &phrase.args {
        assert!(msg.contains(v.as_str()), "{msg} lacks {v}");
    }
    assert_eq!(
        refusal(shop.prepare(&ctx, &who, &modify("lamp-blue", "credit_card_2"))).0,
        Refusal::PaymentMethod
    );
    let out = run(modify("lamp-blue", "gift_card_1")).unwrap();
    assert_eq!(out.summary.charge, Some(Money(500)));
    assert_eq!(out.order.total(), Money(5500));
    assert_eq!(out.order.status, OrderStatus::PendingItemsModified);
    assert_eq!(balance(&shop), Money(104_500));
    // Once modified, never again, and no cancelling either.
    assert_eq!(
        refusal(shop.prepare(&ctx, &who, &modify("lamp-green", "gift_card_1"))).0,
        Refusal::AlreadyModified
    );
    assert_eq!(
        refusal(shop.prepare(&ctx, &who, &action(ActionKind::Cancel, &id(2)))).0,
        Refusal::Status
    );

    // Payment: a different saved method; a gift card must cover the total.
    let pay = |pm: &str| OrderAction::ModifyPayment {
        order_id: id(3),
        payment_method_id: pmid(pm),
    };
    assert_eq!(
        refusal(shop.prepare(&ctx, &who, &pay("credit_card_1"))).0,
        Refusal::PaymentMethod
    );
    assert_eq!(
        refusal(shop.prepare(&ctx, &who, &pay("gift_card_poor"))).0,
        Refusal::Balance
    );
    let out = run(pay("gift_card_1")).unwrap();
    assert_eq!(out.order.net_paid(), Money(5000));
    assert_eq!(balance(&shop), Money(99_500));

    // Address: a real address, and a different one.
    let (code, _, _) = refusal(shop.prepare(
        &ctx,
        &who,
        &OrderAction::ModifyAddress {
            order_id: id(3),
            address: address("1 Main St", "80202"),
        },
    ));
    assert_eq!(code, Refusal::Policy);
    let empty = shop.prepare(
        &ctx,
        &who,
        &OrderAction::ModifyAddress {
            order_id: id(3),
            address: address("", "80202"),
        },
    );
    assert!(
        matches!(
            empty,
            Err(ShopError::Invalid {
                field: "address",
                ..
            })
        ),
        "{empty:?}"
    );

    // Returns go to the original method or a gift card, for the items named.
    let ret = |pm: &str, skus: &[&str]| OrderAction::Return {
        order_id: id(4),
        item_ids: skus.iter().map(|s| Sku::parse(s).unwrap()).collect(),
        payment_method_id: pmid(pm),
    };
    assert_eq!(
        refusal(shop.prepare(&ctx, &who, &ret("paypal_1", &["mug-white"]))).0,
        Refusal::PaymentMethod
    );
    assert_eq!(
        refusal(shop.prepare(&ctx, &who, &ret("credit_card_1", &["lamp-blue"]))).0,
        Refusal::Item
    );
    assert_eq!(
        refusal(shop.prepare(
            &ctx,
            &who,
            &ret("credit_card_1", &["mug-white", "mug-white"])
        ))
        .0,
        Refusal::Item
    );
    let out = run(ret("gift_card_1", &["mug-white", "lamp-red"])).unwrap();
    assert_eq!(out.summary.refund, Some(Money(5000)));
    assert_eq!(out.order.returns.len(), 1);

    // Exchange: recorded with the price difference, status changes.
    let out = run(OrderAction::Exchange {
        order_id: id(5),
        items: vec![lamp("lamp-green")],
        payment_method_id: pmid("credit_card_1"),
    })
    .unwrap();
    assert_eq!(out.summary.refund, Some(Money(500)));
    assert_eq!(
        out.order.returns[0].new_skus,
        vec![Sku::parse("lamp-green").unwrap()]
    );

    // Every write left an audit entry naming the shopper and the channel.
    let audit = shop
        .store()
        .audit(&Default::default(), &store::Page::first(1000))
        .unwrap();
    for action in [
        "cancel",
        "modify_items",
        "modify_payment",
        "return",
        "exchange",
    ] {
        let e = audit
            .iter()
            .find(|a| a.action == action)
            .unwrap_or_else(|| panic!("no audit for {action}"));
        assert_eq!(e.actor, "shopper:alice_1");
        assert_eq!(e.channel, Channel::Assistant);
    }
}

#[test]
fn a_customer_can_never_touch_another_customers_order() {
    let orders = vec![
        order(10, "alice_1", OrderStatus::Pending, "credit_card_1"),
        order(11, "alice_1", OrderStatus::Delivered, "credit_card_1"),
        order(20, "bob_2", OrderStatus::Pending, "credit_card_2"),
    ];
    let shop = fixture("shop-identity", orders, Policy::default());
    let ctx = Ctx::shopper(Channel::Assistant);
    let id = |n: u64| OrderId::parse(&format!("#W{n}")).unwrap();
    let bob = shop
        .identify(
            &ctx,
            &IdentifyBy::OrderAndEmail {
                order_id: id(20),
                email: Email::parse("BOB_2@example.com").unwrap(),
            },
        )
        .unwrap();
    assert_eq!(bob.customer_id().as_str(), "bob_2");

    // Identity checks: wrong pairings, ambiguous names, junk all fail without saying which part.
    let fails = [
        IdentifyBy::OrderAndEmail {
            order_id: id(10),
            email: Email::parse("bob_2@example.com").unwrap(),
        },
        IdentifyBy::Email {
            email: Email::parse("nobody@example.com").unwrap(),
        },
        IdentifyBy::NameAndZip {
            first_name: "Alice".into(),
            last_name: "Wong".into(),
            zip: "99999".into(),
        },
        IdentifyBy::NameAndZip {
            first_name: "Alice' OR '1'='1".into(),
            last_name: "Wong".into(),
            zip: "80202".into(),
        },
        IdentifyBy::NameAndZip {
            first_name: "".into(),
            last_name: "".into(),
            zip: "".into(),
        },
    ];
    for by in &fails {
        assert!(
            matches!(shop.identify(&ctx, by), Err(ShopError::NotIdentified)),
            "{by:?}"
        );
    }
    let ambiguous = IdentifyBy::NameAndZip {
        first_name: "bob".into(),
        last_name: "STONE".into(),
        zip: "80202".into(),
    };
    assert!(matches!(
        shop.identify(&ctx, &ambiguous),
        Err(ShopError::Ambiguous)
    ));
    let by_name = IdentifyBy::NameAndZip {
        first_name: "alice".into(),
        last_name: "wong".into(),
        zip: "80202".into(),
    };
    assert_eq!(
        shop.identify(&ctx, &by_name)
            .unwrap()
            .customer_id()
            .as_str(),
        "alice_1"
    );

    // Bob can't see or change Alice's orders, whatever the action; it reads as not found.
    for n in [10, 11] {
        let err = shop.order_status(&ctx, &bob, &id(n)).unwrap_err();
        assert!(matches!(err, ShopError::NotFound { .. }), "{err}");
        for kind in ActionKind::ALL {
            let err = shop.prepare(&ctx, &bob, &action(kind, &id(n))).unwrap_err();
            assert!(matches!(err, ShopError::NotFound { .. }), "{kind:?}: {err}");
        }
    }
    // Nor use a confirmation Alice was given, even with the exact action.
    let alice = alice(&shop);
    let act = action(ActionKind::Cancel, &id(10));
    let c = shop.prepare(&ctx, &alice, &act).unwrap();
    assert!(matches!(
        shop.confirm(&ctx, &bob, &act, &c.token),
        Err(ShopError::NotFound { .. } | ShopError::Confirmation(_))
    ));
    // Nor can a shopper claim to be staff acting for someone.
    assert!(matches!(
        shop.for_staff(&ctx, alice.customer_id()),
        Err(ShopError::Forbidden(_))
    ));
    assert_eq!(
        shop.store().order(&id(10)).unwrap().unwrap().status,
        OrderStatus::Pending
    );
    assert_eq!(shop.orders_of(&bob).unwrap().len(), 1);
}

#[test]
fn a_confirmation_token_is_single_use_and_bound_to_its_action() {
    let orders = vec![
        order(30, "alice_1", OrderStatus::Pending, "credit_card_1"),
        order(31, "alice_1", OrderStatus::Pending, "credit_card_1"),
    ];
    let shop = fixture("shop-tokens", orders, Policy::default());
    let who = alice(&shop);
    let ctx = Ctx::shopper(Channel::Assistant);
    let id = |n: u64| OrderId::parse(&format!("#W{n}")).unwrap();
    let cancel = action(ActionKind::Cancel, &id(30));
    let c = shop.prepare(&ctx, &who, &cancel).unwrap();
    assert!(c.summary.text().contains("#W30"), "{}", c.summary.text());

    // The same token for another reason, another action, another order, or made up: refused.
    let others = [
        OrderAction::Cancel {
            order_id: id(30),
            reason: "ordered by mistake".into(),
        },
        action(ActionKind::ModifyAddress, &id(30)),
        action(ActionKind::Cancel, &id(31)),
    ];
    for other in &others {
        let e = shop.confirm(&ctx, &who, other, &c.token).unwrap_err();
        assert!(matches!(e, ShopError::Confirmation(_)), "{other:?}: {e}");
    }
    assert!(matches!(
        shop.confirm(&ctx, &who, &cancel, "0123abcd"),
        Err(ShopError::Confirmation(_))
    ));
    assert_eq!(
        shop.store().order(&id(31)).unwrap().unwrap().status,
        OrderStatus::Pending
    );

    shop.confirm(&ctx, &who, &cancel, &c.token).unwrap();
    let again = shop.confirm(&ctx, &who, &cancel, &c.token).unwrap_err();
    assert!(matches!(again, ShopError::Confirmation(_)), "{again}");

    // A summary that went stale (the order changed meanwhile) is not acted on: the refund of
    // this cancellation would now go to another method.
    let cancel31 = action(ActionKind::Cancel, &id(31));
    let c_cancel = shop.prepare(&ctx, &who, &cancel31).unwrap();
    let pay = action(ActionKind::ModifyPayment, &id(31));
    let c_pay = shop.prepare(&ctx, &who, &pay).unwrap();
    shop.confirm(&ctx, &who, &pay, &c_pay.token).unwrap();
    let stale = shop
        .confirm(&ctx, &who, &cancel31, &c_cancel.token)
        .unwrap_err();
    assert!(matches!(stale, ShopError::Conflict(_)), "{stale}");
    assert_eq!(
        shop.store().order(&id(31)).unwrap().unwrap().status,
        OrderStatus::Pending
    );

    // An expired one is refused.
    let policy = Policy {
        confirmation_ttl_secs: 0,
        ..Policy::default()
    };
    let shop = fixture(
        "shop-tokens-ttl",
        vec![order(40, "alice_1", OrderStatus::Pending, "credit_card_1")],
        policy,
    );
    let who = self::alice(&shop);
    let cancel = action(ActionKind::Cancel, &id(40));
    let c = shop.prepare(&ctx, &who, &cancel).unwrap();
    assert!(matches!(
        shop.confirm(&ctx, &who, &cancel, &c.token),
        Err(ShopError::Confirmation(_))
    ));
    assert_eq!(
        shop.store().order(&id(40)).unwrap().unwrap().status,
        OrderStatus::Pending
    );
}

#[test]
fn complaints_handoffs_and_privacy() {
    let shop = fixture(
        "shop-care",
        vec![order(
            50,
            "alice_1",
            OrderStatus::Delivered,
            "credit_card_1",
        )],
        Policy::default(),
    );
    let who = alice(&shop);
    let ctx = Ctx::shopper(Channel::Assistant);
    let staff = Ctx::staff("dana", Channel::Console);
    shop.ensure_conversation(&ctx, "conv-1", Some(&who))
        .unwrap();
    shop.append_message(&ctx, "conv-1", Role::Shopper, "my lamp caught fire")
        .unwrap();

    let about = About {
        conversation_id: Some("conv-1".into()),
        order_id: Some(OrderId::parse("W50").unwrap()),
    };
    let c = shop
        .complaint(
            &ctx,
            Some(&who),
            &about,
            "The lamp started to smoke and burn my desk",
        )
        .unwrap();
    assert_eq!(c.severity, service::Severity::High);
    assert_eq!(c.resolution, Resolution::Escalation);
    assert!(!c.auto_approved);

    // Without the severe words, the policy's automatic resolution (a discount code) applies.
    let mild = shop
        .complaint(
            &ctx,
            Some(&who),
            &About::default(),
            "The box was a bit scuffed",
        )
        .unwrap();
    assert_eq!(
        (mild.resolution, mild.auto_approved),
        (Resolution::DiscountCode, true)
    );
    assert!(
        mild.resolution_note.contains("10%"),
        "{}",
        mild.resolution_note
    );

    // A complaint about someone else's order is refused as not found.
    let bob = shop
        .identify(
            &ctx,
            &IdentifyBy::Email {
                email: Email::parse("bob_2@example.com").unwrap(),
            },
        )
        .unwrap();
    assert!(matches!(
        shop.complaint(&ctx, Some(&bob), &about, "bad"),
        Err(ShopError::NotFound { .. })
    ));

    // Handoff: open, claim, reply (only by the claimer), close.
    let h = shop
        .open_handoff(
            &ctx,
            Some(&who),
            "conv-1",
            "safety",
            "Lamp smoked; customer wants a person",
        )
        .unwrap();
    assert!(shop.store().conversation("conv-1").unwrap().unwrap().human);
    assert!(matches!(
        shop.claim_handoff(&ctx, h.id),
        Err(ShopError::Forbidden(_))
    ));
    assert!(matches!(
        shop.reply_handoff(&staff, h.id, "hello"),
        Err(ShopError::Conflict(_))
    ));
    let claimed = shop.claim_handoff(&staff, h.id).unwrap();
    assert_eq!(
        (claimed.status, claimed.claimed_by.as_deref()),
        (HandoffStatus::Claimed, Some("dana"))
    );
    assert!(matches!(
        shop.claim_handoff(&Ctx::staff("eve", Channel::Console), h.id),
        Err(ShopError::Conflict(_))
    ));
    let reply = shop
        .reply_handoff(&staff, h.id, "Hi Alice, I'm Dana. We'll replace it.")
        .unwrap();
    assert_eq!(
        (reply.role, reply.author.as_deref()),
        (Role::Staff, Some("dana"))
    );
    let msgs = shop.store().messages("conv-1", 0).unwrap();
    assert_eq!(
        msgs.last().unwrap().content,
        "Hi Alice, I'm Dana. We'll replace it."
    );
    assert_eq!(
        shop.close_handoff(&staff, h.id).unwrap().status,
        HandoffStatus::Closed
    );
    assert!(!shop.store().conversation("conv-1").unwrap().unwrap().human);

    // Export holds everything; erase removes the personal parts and keeps the accounting.
    let export = shop.export_customer(&staff, &who).unwrap();
    assert_eq!(export["customer"]["email"], "alice_1@example.com");
    assert_eq!(export["customer"]["saved_addresses"][0]["label"], "work");
    assert_eq!(
        export["customer"]["saved_addresses"][0]["address1"],
        "200 Office Park"
    );
    assert_eq!(export["orders"].as_array().unwrap().len(), 1);
    assert_eq!(export["complaints"].as_array().unwrap().len(), 2);
    assert_eq!(
        export["conversations"][0]["messages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(!export["audit"].as_array().unwrap().is_empty());
    let (session, _) = shop.open_session(&ctx, &who, 3600).unwrap();
    let before = shop.counts().unwrap();
    shop.erase_customer(&staff, &who).unwrap();
    let after = shop.store().customer(who.customer_id()).unwrap().unwrap();
    assert!(after.email.is_none() && after.erased_at.is_some() && after.saved_addresses.is_empty());
    assert_eq!(after.first_name, "erased");
    let o = shop
        .store()
        .order(&OrderId::parse("W50").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((o.total(), o.address.address1.as_str()), (Money(5000), ""));
    assert_eq!(shop.counts().unwrap().paid_total, before.paid_total);
    let text =
        serde_json::to_string(&shop.store().customer_records(who.customer_id()).unwrap()).unwrap();
    assert!(
        !text.contains("caught fire") && !text.contains("smoke"),
        "{text}"
    );
    assert!(matches!(
        shop.session(&session),
        Err(ShopError::NotIdentified)
    ));
    assert!(matches!(
        shop.identify(
            &ctx,
            &IdentifyBy::Email {
                email: Email::parse("alice_1@example.com").unwrap()
            }
        ),
        Err(ShopError::NotIdentified)
    ));
    let audit = shop
        .store()
        .audit(&Default::default(), &store::Page::first(1000))
        .unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "privacy_erase" && a.actor == "staff:dana"));
}

#[test]
fn feedback_is_classified_offline_and_routed() {
    let embedder = shared_embedder();
    let classifier = Arc::new(FeedbackClassifier::new(embedder).unwrap());
    let set = parse_labelled(include_str!("../data/feedback-eval.jsonl")).unwrap();
    assert!(set.len() >= 100);
    let report = evaluate(&classifier, &set).unwrap();
    eprintln!(
        "feedback classifier: topic {:.3}, sentiment {:.3} on {}",
        report.topic_accuracy, report.sentiment_accuracy, report.examples
    );
    // Floors a little under the measured figures (README), so a regression fails here.
    assert!(
        report.topic_accuracy >= 0.74,
        "topic accuracy {:.3}",
        report.topic_accuracy
    );
    assert!(
        report.sentiment_accuracy >= 0.62,
        "sentiment accuracy {:.3}",
        report.sentiment_accuracy
    );

    let shop = fixture("shop-feedback", vec![], Policy::default());
    shop.set_classifier(classifier);
    let ctx = Ctx::shopper(Channel::Api);
    let f = shop
        .feedback(
            &ctx,
            None,
            &About::default(),
            "The parcel arrived two weeks late and the courier never called",
            Some(2),
        )
        .unwrap();
    assert_eq!((f.topic, f.queue.as_str()), (Topic::Delivery, "logistics"));
    assert!(shop
        .feedback(&ctx, None, &About::default(), "ok", Some(9))
        .is_err());
    assert!(shop
        .feedback(&ctx, None, &About::default(), "   ", None)
        .is_err());
    let listed = shop
        .store()
        .feedback(Some("logistics"), &store::Page::first(10))
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[test]
fn recommendations_exclude_what_they_own_and_say_why() {
    let mut o1 = order(60, "alice_1", OrderStatus::Delivered, "credit_card_1");
    o1.items.truncate(1); // Alice owns only the lamp.
    let bob_order = order(61, "bob_2", OrderStatus::Delivered, "credit_card_2"); // lamp + mug
    let shop = fixture("shop-recommend", vec![o1, bob_order], Policy::default());
    let who = alice(&shop);
    let recs = shop
        .recommend(&Ctx::shopper(Channel::Api), &who, "", None, 5)
        .unwrap();
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].product_id.as_str(), "mug");
    assert!(recs[0].reason.contains("Desk Lamp"), "{}", recs[0].reason);
    assert!(shop
        .recommend(&Ctx::shopper(Channel::Api), &who, "", None, 0)
        .is_err());
}

async fn call(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    session: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(s) = session {
        req = req.header("x-clerk-session", s);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_routes_enforce_scopes_and_sessions() {
    let widget = "widget-key-0123456789";
    let staff = "staff-key-0123456789";
    let admin = "admin-key-0123456789";
    let config = ServerConfig {
        api_keys: [
            format!("widget:{widget}"),
            format!("staff:{staff}"),
            admin.to_string(),
        ]
        .iter()
        .map(|k| ApiKey::parse(k).unwrap())
        .collect(),
        ..ServerConfig::default()
    };
    let (state, _stop) = AppState::new(config, false);
    state.set_shop(fixture(
        "shop-http",
        vec![
            order(70, "alice_1", OrderStatus::Pending, "credit_card_1"),
            order(80, "bob_2", OrderStatus::Pending, "credit_card_2"),
        ],
        Policy::default(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app(state)).await });

    // A widget with no session sees nothing; staff-only lists are refused.
    let (s, body) = call(&base, "GET", "/v1/shop/orders", widget, None, None).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("not_identified"))
    );
    let (s, body) = call(&base, "GET", "/v1/shop/customers", widget, None, None).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("permission_denied"))
    );

    // Identify, then only Alice's records are reachable.
    let (s, body) = call(
        &base,
        "POST",
        "/v1/shop/identify",
        widget,
        None,
        Some(json!({"email": "alice_1@example.com"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let session = body["session"].as_str().unwrap().to_string();
    let sess = Some(session.as_str());
    let (s, body) = call(
        &base,
        "GET",
        "/v1/shop/orders?customer_id=bob_2",
        widget,
        sess,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["#W70"]);
    for path in [
        "/v1/shop/orders/W80",
        "/v1/shop/customers/bob_2",
        "/v1/shop/customers/bob_2/recommendations",
    ] {
        let (s, body) = call(&base, "GET", path, widget, sess, None).await;
        assert_eq!(s, 404, "{path}: {body}");
    }
    let (s, _) = call(
        &base,
        "POST",
        "/v1/shop/orders/W80/cancel",
        widget,
        sess,
        Some(json!({"reason": "no longer needed"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, body) = call(&base, "GET", "/v1/shop/orders/W70", widget, sess, None).await;
    assert_eq!((s, body["total"].as_f64()), (200, Some(50.0)));

    // The two-step cancel over HTTP, with errors in OpenAI's shape.
    let (s, body) = call(
        &base,
        "POST",
        "/v1/shop/orders/W70/cancel",
        widget,
        sess,
        Some(json!({"reason": "meh"})),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (422, Some("cancel_reason")),
        "{body}"
    );
    let (s, body) = call(
        &base,
        "POST",
        "/v1/shop/orders/W70/cancel",
        widget,
        sess,
        Some(json!({"reason": "no longer needed"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let token = body["confirmation"]["token"].as_str().unwrap().to_string();
    let (s, body) = call(&base, "POST", "/v1/shop/orders/W70/modify_address", widget, sess,
        Some(json!({"address": {"address1": "2 Elm", "city": "Denver", "country": "USA", "zip": "80203"}, "confirmation_token": token}))).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("invalid_confirmation")),
        "{body}"
    );
    let (s, body) = call(
        &base,
        "POST",
        "/v1/shop/orders/W70/cancel",
        widget,
        sess,
        Some(json!({"reason": "no longer needed", "confirmation_token": token})),
    )
    .await;
    assert_eq!(
        (s, body["result"]["order"]["status"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    let (s, _) = call(
        &base,
        "POST",
        "/v1/shop/orders/W70/teleport",
        widget,
        sess,
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 404);

    // Staff reach every customer; export and the audit log need admin.
    let (s, body) = call(
        &base,
        "GET",
        "/v1/shop/customers?limit=2",
        staff,
        None,
        None,
    )
    .await;
    assert_eq!((s, body["has_more"].as_bool()), (200, Some(true)), "{body}");
    let after = body["last_id"].as_str().unwrap();
    let (_, page2) = call(
        &base,
        "GET",
        &format!("/v1/shop/customers?limit=2&after={after}"),
        staff,
        None,
        None,
    )
    .await;
    assert_eq!(
        (
            page2["data"].as_array().unwrap().len(),
            page2["has_more"].as_bool()
        ),
        (1, Some(false))
    );
    let (s, _) = call(&base, "GET", "/v1/shop/orders/W80", staff, None, None).await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &base,
        "GET",
        "/v1/shop/customers/bob_2/export",
        staff,
        None,
        None,
    )
    .await;
    assert_eq!(s, 403);
    let (s, body) = call(
        &base,
        "GET",
        "/v1/shop/customers/bob_2/export",
        admin,
        None,
        None,
    )
    .await;
    assert_eq!((s, body["customer"]["id"].as_str()), (200, Some("bob_2")));
    let (s, body) = call(
        &base,
        "GET",
        "/v1/shop/audit?customer_id=alice_1&limit=100",
        admin,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "cancel" && a["channel"] == "api"));
    // Knowledge writes are staff work too.
    let (s, _) = call(
        &base,
        "DELETE",
        "/v1/knowledge/documents/x",
        widget,
        None,
        None,
    )
    .await;
    assert_eq!(s, 403);
}

#[test]
fn csv_exports_import_and_a_bad_row_refuses_the_whole_batch() {
    let dir = scratch_dir("shop-csv");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("customers.csv"),
        "id,first_name,last_name,email,phone,address1,city,country,zip\n\
         carla_1,Carla,Diaz,Carla@Example.com,+34 600,Calle Mayor 1,Madrid,Spain,28013\n\
         dev_2,Dev,Rao,dev@example.com,,5 Lake Rd,Austin,USA,78701\n",
    )
    .unwrap();
    std::fs::write(
        files.join("orders.csv"),
        "order_id,customer_id,status,product_id,item_id,name,price,payment_method_id,address1,city,country,zip\n\
         W501,carla_1,delivered,mug,mug-white,Mug,10.50,card_9,Calle Mayor 1,Madrid,Spain,28013\n\
         W501,carla_1,Delivered,lamp,lamp-red,Desk Lamp,40.25,card_9,Calle Mayor 1,Madrid,Spain,28013\n\
         W502,dev_2,pending,mug,mug-black,Mug,10.00,card_7,5 Lake Rd,Austin,USA,78701\n",
    )
    .unwrap();
    let shop = Shop::open(&dir.join("data"), Policy::default()).unwrap();
    let ctx = Ctx::system(Channel::Cli);

    // A bad price on one row: the file and line are named and nothing is written.
    let bad = dir.join("bad-orders.csv");
    std::fs::write(
        &bad,
        "order_id,customer_id,status,product_id,item_id,name,price,payment_method_id\n\
         W601,dev_2,pending,mug,mug-white,Mug,10.00,card_7\n\
         W602,dev_2,pending,mug,mug-white,Mug,ten,card_7\n",
    )
    .unwrap();
    let err = shop
        .import_paths(&ctx, &[files.as_path(), bad.as_path()])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad-orders.csv") && err.contains("line 3") && err.contains("price"),
        "{err}"
    );
    assert_eq!(shop.counts().unwrap(), ShopCounts::default());
    // Rows of one order that disagree on whose it is, or a negative price: refused, naming the
    // line or the record, where the first row's customer used to win and the sum went negative.
    for (body, said) in [
        (
            "W701,dev_2,pending,mug,mug-white,Mug,10.00,card_7\n\
             W701,carla_1,delivered,mug,mug-black,Mug,10.00,card_9\n",
            ["line 3", "customer_id"],
        ),
        (
            "W702,dev_2,pending,mug,mug-white,Mug,10.00,card_7\n\
             W702,dev_2,pending,mug,mug-black,Mug,10.00,card_9\n",
            ["line 3", "payment_method_id"],
        ),
        (
            "W703,dev_2,pending,mug,mug-white,Mug,10.00,card_7\n\
             W703,dev_2,pending,lamp,lamp-red,Lamp,-20.00,card_7\n",
            ["lamp-red", "negative"],
        ),
    ] {
        std::fs::write(
            &bad,
            format!("order_id,customer_id,status,product_id,item_id,name,price,payment_method_id\n{body}"),
        )
        .unwrap();
        let err = shop
            .import_paths(&ctx, &[files.as_path(), bad.as_path()])
            .unwrap_err()
            .to_string();
        assert!(said.iter().all(|s| err.contains(s)), "{err}");
        assert_eq!(shop.counts().unwrap(), ShopCounts::default());
    }

    let counts = shop.import_paths(&ctx, &[files.as_path()]).unwrap();
    assert_eq!(
        (counts.customers, counts.orders, counts.order_items),
        (2, 2, 3)
    );
    assert_eq!(counts.paid_total, Money(6075));
    let carla = shop
        .identify(
            &ctx,
            &IdentifyBy::OrderAndEmail {
                order_id: OrderId::parse("#W501").unwrap(),
                email: Email::parse("carla@example.com").unwrap(),
            },
        )
        .unwrap();
    let order = shop
        .order_status(&ctx, &carla, &OrderId::parse("w501").unwrap())
        .unwrap();
    assert_eq!(
        (order.total, order.order.status),
        (Money(5075), OrderStatus::Delivered)
    );
}

#[test]
fn a_merchant_policy_changes_what_is_allowed() {
    let policy: Policy = serde_json::from_str(
        r#"{"allowed": {"cancel": ["pending", "processed"], "return": ["delivered"]},
            "cancel_reasons": ["changed my mind"], "refund_to_any_gift_card": false,
            "card_refund_business_days": [10, 10]}"#,
    )
    .unwrap();
    let orders = vec![
        order(90, "alice_1", OrderStatus::Processed, "credit_card_1"),
        order(91, "alice_1", OrderStatus::Delivered, "credit_card_1"),
        order(92, "alice_1", OrderStatus::Pending, "credit_card_1"),
    ];
    let shop = fixture("shop-custom-policy", orders, policy);
    let who = alice(&shop);
    let ctx = Ctx::shopper(Channel::Assistant);
    let id = |n: u64| OrderId::parse(&format!("#W{n}")).unwrap();
    let cancel = OrderAction::Cancel {
        order_id: id(90),
        reason: "Changed my mind".into(),
    };
    let c = shop.prepare(&ctx, &who, &cancel).unwrap();
    // The refund's timing is the merchant's, not a fixed sentence.
    let said = c.summary.effects.join(" ");
    assert!(
        said.contains("refunded to") && said.contains("within 10 business days"),
        "{said}"
    );
    assert!(!said.contains("5 to 7"), "{said}");
    let backwards = scratch_dir("shop-policy-backwards").join("policy.json");
    std::fs::write(&backwards, r#"{"card_refund_business_days": [7, 5]}"#).unwrap();
    let err = Policy::load(&backwards).unwrap_err().to_string();
    assert!(err.contains("card_refund_business_days"), "{err}");
    assert_eq!(
        shop.confirm(&ctx, &who, &cancel, &c.token)
            .unwrap()
            .order
            .status,
        OrderStatus::Cancelled
    );
    // Actions the file leaves out are not allowed at all.
    let err = shop
        .prepare(&ctx, &who, &action(ActionKind::ModifyAddress, &id(92)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ShopError::Refused {
                code: Refusal::Status,
                ..
            }
        ),
        "{err}"
    );
    // No refunds to gift cards other than the original method.
    let ret = OrderAction::Return {
        order_id: id(91),
        item_ids: vec![Sku::parse("mug-white").unwrap()],
        payment_method_id: PaymentMethodId::parse("gift_card_1").unwrap(),
    };
    let err = shop.prepare(&ctx, &who, &ret).unwrap_err();
    assert!(
        matches!(
            err,
            ShopError::Refused {
                code: Refusal::PaymentMethod,
                ..
            }
        ),
        "{err}"
    );
}

/// What the merchant keeps for staff (`handoff_actions`, `handoff_order_total_cents`) is refused
/// to a shopper on every path, the shop routes too, not only in the assistant; staff still act.
#[test]
fn what_the_policy_keeps_for_staff_no_shopper_can_do() {
    let policy: Policy = serde_json::from_str(
        r#"{"handoff_actions": ["return"], "handoff_order_total_cents": 100000}"#,
    )
    .unwrap();
    let mut big = order(94, "alice_1", OrderStatus::Pending, "credit_card_1");
    big.payments[0].amount = Money(200_000);
    big.items[0].price = Money(200_000 - big.items[1..].iter().map(|i| i.price.0).sum::<i64>());
    let orders = vec![
        order(93, "alice_1", OrderStatus::Delivered, "credit_card_1"),
        big,
        order(95, "alice_1", OrderStatus::Pending, "credit_card_1"),
    ];
    let shop = fixture("shop-staff-decide", orders, policy);
    let who = alice(&shop);
    let shopper = Ctx::shopper(Channel::Api);
    let id = |n: u64| OrderId::parse(&format!("#W{n}")).unwrap();
    let staff_decide = |err: ShopError| {
        matches!(err, ShopError::Refused { code: Refusal::Policy, ref phrase, .. }
            if phrase.key == "staff_decide")
    };
    let ret = action(ActionKind::Return, &id(93));
    let err = shop.prepare(&shopper, &who, &ret).unwrap_err();
    assert!(staff_decide(err));
    let cancel_big = action(ActionKind::Cancel, &id(94));
    let err = shop.prepare(&shopper, &who, &cancel_big).unwrap_err();
    assert!(staff_decide(err));
    // A smaller order's cancel is the shopper's to do.
    let cancel = action(ActionKind::Cancel, &id(95));
    shop.prepare(&shopper, &who, &cancel).unwrap();
    // A token staff prepared can't be confirmed by the shopper either.
    let staff = Ctx::staff("sam", Channel::Api);
    let c = shop.prepare(&staff, &who, &ret).unwrap();
    let err = shop.confirm(&shopper, &who, &ret, &c.token).unwrap_err();
    assert!(staff_decide(err));
    let done = shop.confirm(&staff, &who, &ret, &c.token).unwrap();
    assert_eq!(done.order.status, OrderStatus::ReturnRequested);
}

#[test]
fn demo_shop_recommendations_come_from_the_catalogue_and_history() {
    let dir = scratch_dir("shop-demo-recommend");
    let knowledge = clerk::retrieval::Knowledge::open(&dir, shared_embedder(), 0.32).unwrap();
    knowledge.ingest(clerk::retrieval::demo::inputs()).unwrap();
    let shop = Shop::open(&dir, Policy::default()).unwrap();
    let data = seed::demo_shop(40, unix_now()).unwrap();
    shop.import(&Ctx::system(Channel::Import), &data, &["demo".into()])
        .unwrap();
    let ctx = Ctx::staff("dana", Channel::Console);
    let jacket = ProductId::parse("hp-ridgeline-rain-jacket").unwrap();
    let mut checked = 0;
    for c in &data.customers {
        let who = shop.for_staff(&ctx, &c.id).unwrap();
        let owned: Vec<ProductId> = data
            .orders
            .iter()
            .filter(|o| o.customer_id == c.id)
            .flat_map(|o| o.items.iter().map(|i| i.product_id.clone()))
            .collect();
        let recs = shop
            .recommend(
                &ctx,
                &who,
                "a waterproof rain jacket for hiking",
                Some(&knowledge),
                5,
            )
            .unwrap();
        assert!(!recs.is_empty(), "{}", c.id);
        for r in &recs {
            assert!(
                !owned.contains(&r.product_id),
                "{} already owns {}",
                c.id,
                r.product_id
            );
            let p = shop.store().product(&r.product_id).unwrap().unwrap();
            assert!(p
                .variants
                .iter()
                .any(|v| v.available && v.stock.is_none_or(|s| s > 0)));
            assert!(!r.reason.is_empty());
        }
        if !owned.contains(&jacket) {
            assert_eq!(recs[0].product_id, jacket, "{recs:?}");
            checked += 1;
        }
        // From history alone, each suggestion names something they bought.
        let recs = shop.recommend(&ctx, &who, "", Some(&knowledge), 5).unwrap();
        let names: Vec<&str> = data
            .orders
            .iter()
            .filter(|o| o.customer_id == c.id)
            .flat_map(|o| o.items.iter().map(|i| i.name.as_str()))
            .collect();
        for r in &recs {
            assert!(
                names.iter().any(|n| r.reason.contains(n)),
                "{}: {}",
                c.id,
                r.reason
            );
        }
    }
    assert!(checked > 20, "only {checked} customers without the jacket");
}
