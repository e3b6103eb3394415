//! The default store: one SQLite file in the data directory (`shop.sqlite`), in WAL mode with
//! full sync, so a committed write survives a killed process and readers never see half of one.
//! Migrations are numbered SQL files applied in order, tracked by `PRAGMA user_version`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction as SqlTx};

use super::crypto::{KeySource, Sealer, SEALED};
use super::domain::*;
use super::error::{Result, ShopError};
use super::records::*;
use super::service::*;
use super::store::*;

const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_init.sql"),
    include_str!("migrations/002_saved_addresses.sql"),
    include_str!("migrations/003_answers_and_console.sql"),
    include_str!("migrations/004_sealed_personal_fields.sql"),
];

pub struct SqliteStore {
    // One connection: SQLite serialises writers anyway, and shop traffic is small next to the
    // model's. Held only for the length of one statement group, never across an await.
    conn: Mutex<Connection>,
    /// Seals and opens the personal fields (shop/crypto.rs).
    sealer: Sealer,
}

fn storage(e: impl std::fmt::Display) -> ShopError {
    ShopError::Storage(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/shop.sqlite`, brings its schema up to date, and seals
    /// any personal field still in clear with the data key `key` names.
    pub fn open(dir: &Path, key: &KeySource) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(storage)?;
        let conn = Self::migrate(Connection::open(dir.join("shop.sqlite"))?)?;
        let sealer = Sealer::resolve(dir, key, sealed_with(&conn)?.as_deref())?;
        Self::unlock(conn, sealer)
    }

    /// A private database in memory, for tests and one-off evaluations, under a random key.
    pub fn in_memory() -> Result<Self> {
        let sealer = Sealer::from_text(&Sealer::generate(), "memory")?;
        Self::unlock(Self::migrate(Connection::open_in_memory()?)?, sealer)
    }

    /// The data key's id, as a backup manifest records it.
    pub fn key_id(&self) -> &str {
        self.sealer.id()
    }

    /// Checks `sealer` against the key the database is sealed with, or seals it now.
    fn unlock(mut conn: Connection, sealer: Sealer) -> Result<Self> {
        match sealed_with(&conn)? {
            Some(id) if id == sealer.id() => {}
            Some(id) => {
                return Err(ShopError::Key(format!(
                    "the shop's personal fields are sealed with data key {id}, not with the key \
                     given ({}); pass the key the database was sealed or last rotated with",
                    sealer.id()
                )))
            }
            None => {
                let tx = conn.transaction()?;
                let sealed = reseal(&tx, &sealer, &sealer)?;
                tx.execute(
                    "INSERT INTO crypto (id, key_id) VALUES (1, ?1)",
                    [sealer.id()],
                )?;
                tx.commit()?;
                if sealed > 0 {
                    scrub(&conn);
                }
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
            sealer,
        })
    }

    /// Re-seals every personal field under `new` in one transaction, then scrubs the old
    /// ciphertexts from the file. Run it with the server stopped: a server still holding the old
    /// key refuses to write once it sees the rotation, but can no longer read either.
    pub fn rotate(&self, new: Sealer) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = reseal(&tx, &self.sealer, &new)?;
        tx.execute("UPDATE crypto SET key_id = ?1 WHERE id = 1", [new.id()])?;
        tx.commit()?;
        // The rotation stands once committed; a scrub that fails is reported, not the rotation.
        scrub(&conn);
        Ok(n)
    }

    fn migrate(mut conn: Connection) -> Result<Connection> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted and overwritten content is zeroed, so an erased shopper or a rotated-away
        // ciphertext does not linger in free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let version = usize::try_from(version).unwrap_or(usize::MAX);
        if version > MIGRATIONS.len() {
            return Err(ShopError::Storage(format!(
                "the shop database is at schema version {version}, newer than this clerk knows \
                 ({}); upgrade clerk",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(conn)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no open transaction (rusqlite rolls back on drop),
        // so the connection is still sound.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The id of the key the database is sealed with, if it is sealed yet.
fn sealed_with(conn: &Connection) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT key_id FROM crypto WHERE id = 1", [], |r| r.get(0))
        .optional()?)
}

/// Opens every personal field with `from` (text never sealed passes through) and seals it with
/// `to`, recomputing the email index; returns the rows touched.
fn reseal(tx: &SqlTx, from: &Sealer, to: &Sealer) -> Result<u64> {
    let mut touched = 0;
    for (table, cols) in SEALED {
        let select = format!("SELECT rowid, {} FROM {table}", cols.join(", "));
        let rows: Vec<(i64, Vec<Option<String>>)> = all(tx, &select, [], |r| {
            let values = (0..cols.len())
                .map(|i| r.get::<_, Option<String>>(i + 1))
                .collect::<rusqlite::Result<_>>()?;
            Ok((r.get(0)?, values))
        })?;
        let sets: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 2))
            .collect();
        let update = format!("UPDATE {table} SET {} WHERE rowid = ?1", sets.join(", "));
        for (rowid, values) in rows {
            let mut plain = Vec::with_capacity(values.len());
            for (col, v) in cols.iter().zip(values) {
                plain.push(from.open_opt(&format!("{table}.{col}"), v)?);
            }
            let sealed: Vec<Option<String>> = cols
                .iter()
                .zip(&plain)
                .map(|(col, v)| to.seal_opt(&format!("{table}.{col}"), v.as_deref()))
                .collect();
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![&rowid];
            args.extend(sealed.iter().map(|v| v as &dyn rusqlite::ToSql));
            tx.execute(&update, args.as_slice())?;
            if *table == "customers" {
                let hash = plain[0]
                    .as_deref()
                    .filter(|e| !e.is_empty())
                    .map(|e| to.blind(e));
                tx.execute(
                    "UPDATE customers SET email_hash = ?1 WHERE rowid = ?2",
                    params![hash, rowid],
                )?;
            }
            touched += 1;
        }
    }
    Ok(touched)
}

/// Rewrites the file and empties the write-ahead log, so no page written before a sealing or a
/// rotation survives anywhere on disk. Runs after the commit: a failure (a full disk, another
/// process reading) is logged, and leaves the committed data as it is.
fn scrub(conn: &Connection) {
    let done = conn.execute_batch("VACUUM").and_then(|()| {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
    });
    match done {
        Ok(0) => {}
        Ok(_) => tracing::warn!(
            "the write-ahead log could not be emptied (another process is reading the shop); \
             older pages stay in shop.sqlite-wal until the next checkpoint"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "rewriting shop.sqlite after sealing failed; the data is sealed, but older pages may \
             stay in free space until the next VACUUM"
        ),
    }
}

/// A personal field read back: opened with the store's key.
fn opened(s: &Sealer, row: &Row, idx: usize, field: &str) -> rusqlite::Result<String> {
    let stored: String = row.get(idx)?;
    parsed(idx, s.open(field, &stored))
}

fn opened_opt(s: &Sealer, row: &Row, idx: usize, field: &str) -> rusqlite::Result<Option<String>> {
    let stored: Option<String> = row.get(idx)?;
    parsed(idx, s.open_opt(field, stored))
}

/// A sealed JSON column read back.
fn opened_json<T: serde::de::DeserializeOwned>(
    s: &Sealer,
    row: &Row,
    idx: usize,
    field: &str,
) -> rusqlite::Result<T> {
    let text = opened(s, row, idx, field)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Every row of a cached statement, mapped by `f`.
fn all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnMut(&Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params, f)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

fn json_col<T: serde::de::DeserializeOwned>(row: &Row, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn parsed<T>(idx: usize, r: Result<T>) -> rusqlite::Result<T> {
    r.map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn address_at(s: &Sealer, table: &str, row: &Row, start: usize) -> rusqlite::Result<Address> {
    Ok(Address {
        address1: opened(s, row, start, &format!("{table}.address1"))?,
        address2: opened(s, row, start + 1, &format!("{table}.address2"))?,
        city: opened(s, row, start + 2, &format!("{table}.city"))?,
        state: opened(s, row, start + 3, &format!("{table}.state"))?,
        country: opened(s, row, start + 4, &format!("{table}.country"))?,
        zip: opened(s, row, start + 5, &format!("{table}.zip"))?,
    })
}

/// An address as the six sealed column values, in `ADDRESS_COLS` order.
fn sealed_address(s: &Sealer, table: &str, a: &Address) -> [String; 6] {
    [
        s.seal(&format!("{table}.address1"), &a.address1),
        s.seal(&format!("{table}.address2"), &a.address2),
        s.seal(&format!("{table}.city"), &a.city),
        s.seal(&format!("{table}.state"), &a.state),
        s.seal(&format!("{table}.country"), &a.country),
        s.seal(&format!("{table}.zip"), &a.zip),
    ]
}

const ADDRESS_COLS: &str = "address1, address2, city, state, country, zip";

fn load_customer(conn: &Connection, s: &Sealer, id: &CustomerId) -> Result<Option<Customer>> {
    let row = conn
        .query_row(
            &format!(
                "SELECT id, first_name, last_name, email, phone, erased_at, {ADDRESS_COLS} \
                 FROM customers WHERE id = ?1"
            ),
            [id.as_str()],
            |r| customer_from_row(s, r),
        )
        .optional()?;
    let Some(mut customer) = row else {
        return Ok(None);
    };
    customer.payment_methods = payment_methods(conn, s, id)?;
    customer.saved_addresses = saved_addresses(conn, s, id)?;
    Ok(Some(customer))
}

fn customer_from_row(s: &Sealer, row: &Row) -> rusqlite::Result<Customer> {
    let id: String = row.get(0)?;
    let email = opened_opt(s, row, 3, "customers.email")?;
    Ok(Customer {
        id: parsed(0, CustomerId::parse(&id))?,
        first_name: row.get(1)?,
        last_name: row.get(2)?,
        // An erased customer's email is gone; a malformed imported one reads as none.
        email: email.and_then(|e| Email::parse(&e).ok()),
        phone: opened_opt(s, row, 4, "customers.phone")?,
        erased_at: row.get(5)?,
        address: address_at(s, "customers", row, 6)?,
        saved_addresses: Vec::new(),
        payment_methods: Vec::new(),
    })
}

fn saved_addresses(conn: &Connection, s: &Sealer, id: &CustomerId) -> Result<Vec<SavedAddress>> {
    all(
        conn,
        &format!(
            "SELECT label, {ADDRESS_COLS} FROM addresses WHERE customer_id = ?1 ORDER BY position"
        ),
        [id.as_str()],
        |row| {
            Ok(SavedAddress {
                label: row.get(0)?,
                address: address_at(s, "addresses", row, 1)?,
            })
        },
    )
}

fn payment_methods(conn: &Connection, s: &Sealer, id: &CustomerId) -> Result<Vec<PaymentMethod>> {
    all(
        conn,
        "SELECT id, source, brand, last_four, balance FROM payment_methods \
         WHERE customer_id = ?1 ORDER BY position",
        [id.as_str()],
        |row| {
            let id: String = row.get(0)?;
            let source: String = row.get(1)?;
            Ok(PaymentMethod {
                id: parsed(0, PaymentMethodId::parse(&id))?,
                source: parsed(1, PaymentSource::parse(&source))?,
                brand: opened_opt(s, row, 2, "payment_methods.brand")?,
                last_four: opened_opt(s, row, 3, "payment_methods.last_four")?,
                balance: row.get::<_, Option<i64>>(4)?.map(Money),
            })
        },
    )
}

fn variant_from_row(row: &Row) -> rusqlite::Result<Variant> {
    let sku: String = row.get(0)?;
    let product: String = row.get(1)?;
    Ok(Variant {
        sku: parsed(0, Sku::parse(&sku))?,
        product_id: parsed(1, ProductId::parse(&product))?,
        options: json_col(row, 2)?,
        price: Money(row.get(3)?),
        available: row.get(4)?,
        stock: row.get(5)?,
    })
}

const VARIANT_COLS: &str = "sku, product_id, options, price, available, stock";

fn load_product(conn: &Connection, id: &str) -> Result<Option<Product>> {
    let head = conn
        .query_row(
            "SELECT id, name, category FROM products WHERE id = ?1",
            [id],
            |row| {
                let id: String = row.get(0)?;
                Ok((
                    parsed(0, ProductId::parse(&id))?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((id, name, category)) = head else {
        return Ok(None);
    };
    let variants = all(
        conn,
        &format!("SELECT {VARIANT_COLS} FROM variants WHERE product_id = ?1 ORDER BY sku"),
        [id.as_str()],
        variant_from_row,
    )?;
    Ok(Some(Product {
        id,
        name,
        category,
        variants,
    }))
}

fn load_order(conn: &Connection, s: &Sealer, id: &OrderId) -> Result<Option<Order>> {
    let head = conn
        .query_row(
            &format!(
                "SELECT id, customer_id, status, cancel_reason, estimated_delivery, created_at, \
                 {ADDRESS_COLS} FROM orders WHERE id = ?1"
            ),
            [id.as_str()],
            |row| {
                let id: String = row.get(0)?;
                let customer: String = row.get(1)?;
                let status: String = row.get(2)?;
                Ok(Order {
                    id: parsed(0, OrderId::parse(&id))?,
                    customer_id: parsed(1, CustomerId::parse(&customer))?,
                    status: parsed(2, OrderStatus::parse(&status))?,
                    cancel_reason: row.get(3)?,
                    estimated_delivery: row.get(4)?,
                    created_at: row.get(5)?,
                    address: address_at(s, "orders", row, 6)?,
                    items: Vec::new(),
                    payments: Vec::new(),
                    fulfillments: Vec::new(),
                    returns: Vec::new(),
                })
            },
        )
        .optional()?;
    let Some(mut order) = head else {
        return Ok(None);
    };
    let key = id.as_str();
    order.items = all(
        conn,
        "SELECT product_id, sku, name, options, price FROM order_items \
         WHERE order_id = ?1 ORDER BY line",
        [key],
        |row| {
            let product: String = row.get(0)?;
            let sku: String = row.get(1)?;
            Ok(OrderItem {
                product_id: parsed(0, ProductId::parse(&product))?,
                sku: parsed(1, Sku::parse(&sku))?,
                name: row.get(2)?,
                options: json_col(row, 3)?,
                price: Money(row.get(4)?),
            })
        },
    )?;
    order.payments = all(
        conn,
        "SELECT kind, amount, payment_method_id, at FROM transactions \
         WHERE order_id = ?1 ORDER BY id",
        [key],
        |row| {
            let kind: String = row.get(0)?;
            let method: String = row.get(2)?;
            Ok(Transaction {
                kind: parsed(0, TransactionKind::parse(&kind))?,
                amount: Money(row.get(1)?),
                payment_method_id: parsed(2, PaymentMethodId::parse(&method))?,
                at: row.get(3)?,
            })
        },
    )?;
    order.fulfillments = all(
        conn,
        "SELECT carrier, tracking_ids, skus, events FROM fulfillments \
         WHERE order_id = ?1 ORDER BY id",
        [key],
        |row| {
            Ok(Fulfillment {
                carrier: row.get(0)?,
                tracking_ids: json_col(row, 1)?,
                skus: json_col(row, 2)?,
                events: json_col(row, 3)?,
            })
        },
    )?;
    order.returns = all(
        conn,
        "SELECT kind, skus, new_skus, payment_method_id, amount, at FROM returns \
         WHERE order_id = ?1 ORDER BY id",
        [key],
        |row| {
            let kind: String = row.get(0)?;
            let method: String = row.get(3)?;
            Ok(ReturnRequest {
                kind: ReturnKind::parse(&kind).ok_or_else(|| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        format!("unknown return kind {kind}").into(),
                    )
                })?,
                skus: json_col(row, 1)?,
                new_skus: json_col(row, 2)?,
                payment_method_id: parsed(3, PaymentMethodId::parse(&method))?,
                amount: Money(row.get(4)?),
                at: row.get(5)?,
            })
        },
    )?;
    Ok(Some(order))
}

fn insert_customer(tx: &SqlTx, s: &Sealer, c: &Customer) -> Result<()> {
    let [a1, a2, city, state, country, zip] = sealed_address(s, "customers", &c.address);
    let email = c.email.as_ref().map(Email::as_str);
    tx.execute(
        &format!(
            "INSERT INTO customers (id, first_name, last_name, email, email_hash, phone, \
             erased_at, {ADDRESS_COLS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ),
        params![
            c.id.as_str(),
            c.first_name,
            c.last_name,
            s.seal_opt("customers.email", email),
            email.map(|e| s.blind(e)),
            s.seal_opt("customers.phone", c.phone.as_deref()),
            c.erased_at,
            a1,
            a2,
            city,
            state,
            country,
            zip
        ],
    )
    .map_err(|e| duplicate(e, "customer", c.id.as_str()))?;
    for (i, saved) in c.saved_addresses.iter().enumerate() {
        let [a1, a2, city, state, country, zip] = sealed_address(s, "addresses", &saved.address);
        tx.execute(
            &format!(
                "INSERT INTO addresses (customer_id, position, label, {ADDRESS_COLS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ),
            params![
                c.id.as_str(),
                i as i64,
                saved.label,
                a1,
                a2,
                city,
                state,
                country,
                zip
            ],
        )?;
    }
    for (i, p) in c.payment_methods.iter().enumerate() {
        tx.execute(
            "INSERT INTO payment_methods (id, customer_id, source, brand, last_four, balance, \
             position) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                p.id.as_str(),
                c.id.as_str(),
                p.source.as_str(),
                s.seal_opt("payment_methods.brand", p.brand.as_deref()),
                s.seal_opt("payment_methods.last_four", p.last_four.as_deref()),
                p.balance.map(Money::cents),
                i as i64
            ],
        )
        .map_err(|e| duplicate(e, "payment method", p.id.as_str()))?;
    }
    Ok(())
}

/// A primary-key clash in an import is the file's fault: say which record.
fn duplicate(e: rusqlite::Error, kind: &str, id: &str) -> ShopError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            ShopError::Import {
                file: "shop".into(),
                message: format!("{kind} `{id}` already exists or refers to a missing record"),
            }
        }
        e => e.into(),
    }
}

fn insert_product(tx: &SqlTx, p: &Product) -> Result<()> {
    tx.execute(
        "INSERT INTO products (id, name, category) VALUES (?1, ?2, ?3)",
        params![p.id.as_str(), p.name, p.category],
    )
    .map_err(|e| duplicate(e, "product", p.id.as_str()))?;
    for v in &p.variants {
        tx.execute(
            &format!("INSERT INTO variants ({VARIANT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                v.sku.as_str(),
                p.id.as_str(),
                serde_json::to_string(&v.options)?,
                v.price.cents(),
                v.available,
                v.stock
            ],
        )
        .map_err(|e| duplicate(e, "variant", v.sku.as_str()))?;
    }
    Ok(())
}

fn insert_order(tx: &SqlTx, s: &Sealer, o: &Order, position: i64) -> Result<()> {
    let [a1, a2, city, state, country, zip] = sealed_address(s, "orders", &o.address);
    tx.execute(
        &format!(
            "INSERT INTO orders (id, customer_id, status, cancel_reason, estimated_delivery, \
             created_at, position, {ADDRESS_COLS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ),
        params![
            o.id.as_str(),
            o.customer_id.as_str(),
            o.status.as_str(),
            o.cancel_reason,
            o.estimated_delivery,
            o.created_at,
            position,
            a1,
            a2,
            city,
            state,
            country,
            zip
        ],
    )
    .map_err(|e| duplicate(e, "order", o.id.as_str()))?;
    for (line, item) in o.items.iter().enumerate() {
        tx.execute(
            "INSERT INTO order_items (order_id, line, product_id, sku, name, options, price) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                o.id.as_str(),
                line as i64,
                item.product_id.as_str(),
                item.sku.as_str(),
                item.name,
                serde_json::to_string(&item.options)?,
                item.price.cents()
            ],
        )?;
    }
    for t in &o.payments {
        insert_transaction(tx, &o.id, t)?;
    }
    for f in &o.fulfillments {
        tx.execute(
            "INSERT INTO fulfillments (order_id, carrier, tracking_ids, skus, events) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                o.id.as_str(),
                f.carrier,
                serde_json::to_string(&f.tracking_ids)?,
                serde_json::to_string(&f.skus)?,
                serde_json::to_string(&f.events)?
            ],
        )?;
    }
    for r in &o.returns {
        insert_return(tx, &o.id, r)?;
    }
    Ok(())
}

fn insert_transaction(tx: &SqlTx, order: &OrderId, t: &Transaction) -> Result<()> {
    tx.execute(
        "INSERT INTO transactions (order_id, kind, amount, payment_method_id, at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            order.as_str(),
            t.kind.as_str(),
            t.amount.cents(),
            t.payment_method_id.as_str(),
            t.at
        ],
    )?;
    Ok(())
}

fn insert_return(tx: &SqlTx, order: &OrderId, r: &ReturnRequest) -> Result<()> {
    tx.execute(
        "INSERT INTO returns (order_id, kind, skus, new_skus, payment_method_id, amount, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            order.as_str(),
            r.kind.as_str(),
            serde_json::to_string(&r.skus)?,
            serde_json::to_string(&r.new_skus)?,
            r.payment_method_id.as_str(),
            r.amount.cents(),
            r.at
        ],
    )?;
    Ok(())
}

fn insert_audit(tx: &Connection, s: &Sealer, a: &AuditEntry) -> Result<()> {
    tx.execute(
        "INSERT INTO audit (at, actor, channel, action, target, customer_id, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            a.at,
            a.actor,
            a.channel.as_str(),
            a.action,
            a.target,
            a.customer_id.as_ref().map(CustomerId::as_str),
            s.seal("audit.detail", &serde_json::to_string(&a.detail)?)
        ],
    )?;
    Ok(())
}

/// Fails the transaction as a conflict when an expected row was not there to update.
fn expect_one(changed: usize, what: impl FnOnce() -> String) -> Result<()> {
    if changed == 1 {
        Ok(())
    } else {
        Err(ShopError::Conflict(what()))
    }
}

fn apply(tx: &SqlTx, s: &Sealer, change: &Change, inserted: &mut Vec<i64>) -> Result<()> {
    match change {
        Change::OrderAsPlanned {
            order,
            status,
            transactions,
        } => {
            let now: Option<(String, i64)> = tx
                .query_row(
                    "SELECT status, (SELECT COUNT(*) FROM transactions WHERE order_id = ?1) \
                     FROM orders WHERE id = ?1",
                    params![order.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if now.is_some_and(|(s, n)| s == status.as_str() && n == *transactions as i64) {
                Ok(())
            } else {
                Err(ShopError::Conflict(format!(
                    "order {order} changed since the summary; nothing was changed"
                )))
            }
        }
        Change::OrderStatus { order, from, to } => {
            let n = tx.execute(
                "UPDATE orders SET status = ?1 WHERE id = ?2 AND status = ?3",
                params![to.as_str(), order.as_str(), from.as_str()],
            )?;
            expect_one(n, || {
                format!("order {order} is no longer {from}; nothing was changed")
            })
        }
        Change::CancelReason { order, reason } => {
            let n = tx.execute(
                "UPDATE orders SET cancel_reason = ?1 WHERE id = ?2",
                params![reason, order.as_str()],
            )?;
            expect_one(n, || format!("order {order} disappeared"))
        }
        Change::OrderAddress { order, address } => {
            let [a1, a2, city, state, country, zip] = sealed_address(s, "orders", address);
            let n = tx.execute(
                "UPDATE orders SET address1 = ?1, address2 = ?2, city = ?3, state = ?4, \
                 country = ?5, zip = ?6 WHERE id = ?7",
                params![a1, a2, city, state, country, zip, order.as_str()],
            )?;
            expect_one(n, || format!("order {order} disappeared"))
        }
        Change::ReplaceItem {
            order,
            line,
            from,
            to,
        } => {
            let n = tx.execute(
                "UPDATE order_items SET sku = ?1, options = ?2, price = ?3 \
                 WHERE order_id = ?4 AND line = ?5 AND sku = ?6",
                params![
                    to.sku.as_str(),
                    serde_json::to_string(&to.options)?,
                    to.price.cents(),
                    order.as_str(),
                    *line as i64,
                    from.as_str()
                ],
            )?;
            expect_one(n, || {
                format!("item {from} of order {order} changed meanwhile")
            })
        }
        Change::Transaction { order, transaction } => insert_transaction(tx, order, transaction),
        Change::GiftCard { method, delta } => {
            let n = tx.execute(
                "UPDATE payment_methods SET balance = balance + ?1 \
                 WHERE id = ?2 AND source = 'gift_card' AND balance + ?1 >= 0",
                params![delta.cents(), method.as_str()],
            )?;
            expect_one(n, || {
                format!("gift card {method} no longer has the balance; nothing was changed")
            })
        }
        Change::Return { order, request } => insert_return(tx, order, request),
        Change::InsertFeedback(f) => {
            tx.execute(
                "INSERT INTO feedback (conversation_id, customer_id, text, rating, topic, \
                 sentiment, confidence, queue, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    f.conversation_id,
                    f.customer_id.as_ref().map(CustomerId::as_str),
                    s.seal("feedback.text", &f.text),
                    f.rating,
                    f.topic.as_str(),
                    f.sentiment.as_str(),
                    f.confidence,
                    f.queue,
                    f.created_at
                ],
            )?;
            inserted.push(tx.last_insert_rowid());
            Ok(())
        }
        Change::InsertComplaint(c) => {
            tx.execute(
                "INSERT INTO complaints (customer_id, order_id, conversation_id, text, category, \
                 severity, resolution, resolution_note, auto_approved, created_at, status) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    c.customer_id.as_ref().map(CustomerId::as_str),
                    c.order_id.as_ref().map(OrderId::as_str),
                    c.conversation_id,
                    s.seal("complaints.text", &c.text),
                    c.category.as_str(),
                    c.severity.as_str(),
                    c.resolution.as_str(),
                    c.resolution_note,
                    c.auto_approved,
                    c.created_at,
                    c.status.as_str()
                ],
            )?;
            inserted.push(tx.last_insert_rowid());
            Ok(())
        }
        Change::InsertHandoff(h) => {
            tx.execute(
                "INSERT INTO handoffs (conversation_id, customer_id, reason, summary, status, \
                 claimed_by, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    h.conversation_id,
                    h.customer_id.as_ref().map(CustomerId::as_str),
                    h.reason,
                    s.seal("handoffs.summary", &h.summary),
                    h.status.as_str(),
                    h.claimed_by,
                    h.created_at,
                    h.updated_at
                ],
            )?;
            inserted.push(tx.last_insert_rowid());
            Ok(())
        }
        Change::HandoffStatus {
            id,
            from,
            to,
            staff,
        } => {
            let allowed: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
            let current: Option<String> = tx
                .query_row("SELECT status FROM handoffs WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            match current {
                Some(s) if allowed.contains(&s.as_str()) => {}
                Some(s) => {
                    return Err(ShopError::Conflict(format!(
                        "handoff {id} is {s}, so it can't become {to}"
                    )))
                }
                None => return Err(ShopError::not_found("handoff", id)),
            }
            tx.execute(
                "UPDATE handoffs SET status = ?1, claimed_by = COALESCE(?2, claimed_by), \
                 updated_at = ?3 WHERE id = ?4",
                params![to.as_str(), staff, unix_now(), id],
            )?;
            Ok(())
        }
        Change::Conversation(c) => {
            tx.execute(
                "INSERT INTO conversations (id, customer_id, channel, human, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT(id) DO UPDATE SET customer_id = COALESCE(customer_id, \
                 excluded.customer_id)",
                params![
                    c.id,
                    c.customer_id.as_ref().map(CustomerId::as_str),
                    c.channel.as_str(),
                    c.human,
                    c.created_at
                ],
            )?;
            Ok(())
        }
        Change::Message(m) => {
            tx.execute(
                "INSERT INTO messages (conversation_id, role, author, content, created_at, meta) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    m.conversation_id,
                    m.role.as_str(),
                    m.author,
                    s.seal("messages.content", &m.content),
                    m.created_at,
                    m.meta.as_ref().map(|v| v.to_string())
                ],
            )?;
            inserted.push(tx.last_insert_rowid());
            Ok(())
        }
        Change::ConversationHuman {
            conversation,
            human,
        } => {
            let n = tx.execute(
                "UPDATE conversations SET human = ?1 WHERE id = ?2",
                params![human, conversation],
            )?;
            expect_one(n, || format!("conversation {conversation} does not exist"))
        }
        Change::ComplaintStatus {
            id,
            from,
            to,
            staff,
        } => {
            let n = tx.execute(
                "UPDATE complaints SET status = ?1, resolved_by = ?2, resolved_at = ?3 \
                 WHERE id = ?4 AND status = ?5",
                params![to.as_str(), staff, unix_now(), id, from.as_str()],
            )?;
            expect_one(n, || format!("complaint {id} is not {from}"))
        }
        Change::PutRating(r) => {
            // One rating per message: rating again replaces the earlier one (and its review).
            tx.execute(
                "INSERT INTO answer_ratings (message_id, conversation_id, rating, question, \
                 answer, correction, status, reviewed_by, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?8) \
                 ON CONFLICT(message_id) DO UPDATE SET rating = excluded.rating, \
                 correction = excluded.correction, status = excluded.status, reviewed_by = NULL, \
                 updated_at = excluded.updated_at \
                 WHERE answer_ratings.status IN ('noted', 'pending')",
                params![
                    r.message_id,
                    r.conversation_id,
                    r.rating,
                    s.seal("answer_ratings.question", &r.question),
                    s.seal("answer_ratings.answer", &r.answer),
                    s.seal_opt("answer_ratings.correction", r.correction.as_deref()),
                    r.status.as_str(),
                    r.created_at
                ],
            )
            .map_err(ShopError::from)
            .and_then(|n| {
                // A rating staff already reviewed stays as they left it.
                expect_one(n, || {
                    format!("the answer {} was already rated and reviewed", r.message_id)
                })
            })?;
            let id: i64 = tx.query_row(
                "SELECT id FROM answer_ratings WHERE message_id = ?1",
                [r.message_id],
                |row| row.get(0),
            )?;
            inserted.push(id);
            Ok(())
        }
        Change::RatingStatus {
            id,
            from,
            to,
            staff,
        } => {
            let n = tx.execute(
                "UPDATE answer_ratings SET status = ?1, reviewed_by = ?2, updated_at = ?3 \
                 WHERE id = ?4 AND status = ?5",
                params![to.as_str(), staff, unix_now(), id, from.as_str()],
            )?;
            expect_one(n, || format!("answer rating {id} is not {from}"))
        }
        Change::InsertCurated(c) => {
            tx.execute(
                "INSERT INTO curated_answers (question, answer, rating_id, created_by, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    s.seal("curated_answers.question", &c.question),
                    s.seal("curated_answers.answer", &c.answer),
                    c.rating_id,
                    c.created_by,
                    c.created_at
                ],
            )?;
            inserted.push(tx.last_insert_rowid());
            Ok(())
        }
        Change::DeleteCurated(id) => {
            let n = tx.execute("DELETE FROM curated_answers WHERE id = ?1", [id])?;
            expect_one(n, || format!("curated answer {id} does not exist"))
        }
        Change::EraseCustomer(id) => erase(tx, id),
        Change::PutToken(t) => {
            tx.execute(
                "INSERT INTO tokens (hash, kind, customer_id, payload, created_at, expires_at, \
                 used_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    t.hash,
                    t.kind.as_str(),
                    t.customer_id.as_str(),
                    s.seal("tokens.payload", &serde_json::to_string(&t.payload)?),
                    t.created_at,
                    t.expires_at,
                    t.used_at
                ],
            )?;
            Ok(())
        }
    }
}

/// Blanks every personal field of a customer and of what they wrote; keeps the rows that
/// accounting needs (orders, items, payments) with their amounts.
fn erase(tx: &SqlTx, id: &CustomerId) -> Result<()> {
    let key = id.as_str();
    let n = tx.execute(
        "UPDATE customers SET first_name = 'erased', last_name = 'erased', email = NULL, \
         email_hash = NULL, phone = NULL, address1 = '', address2 = '', city = '', state = '', zip = '', \
         erased_at = ?2 WHERE id = ?1 AND erased_at IS NULL",
        params![key, unix_now()],
    )?;
    expect_one(n, || {
        format!("customer {id} does not exist or is already erased")
    })?;
    tx.execute(
        "UPDATE payment_methods SET brand = NULL, last_four = NULL WHERE customer_id = ?1",
        [key],
    )?;
    tx.execute("DELETE FROM addresses WHERE customer_id = ?1", [key])?;
    // Street and city go; the country stays, because tax reports need it.
    tx.execute(
        "UPDATE orders SET address1 = '', address2 = '', city = '', state = '', zip = '' \
         WHERE customer_id = ?1",
        [key],
    )?;
    tx.execute(
        "UPDATE messages SET content = '[erased]', meta = NULL WHERE conversation_id IN \
         (SELECT id FROM conversations WHERE customer_id = ?1)",
        [key],
    )?;
    // Curated answers approved from their words go too: the question is what they wrote.
    tx.execute(
        "DELETE FROM curated_answers WHERE rating_id IN (SELECT r.id FROM answer_ratings r \
         JOIN conversations c ON c.id = r.conversation_id WHERE c.customer_id = ?1)",
        [key],
    )?;
    tx.execute(
        "UPDATE answer_ratings SET question = '[erased]', answer = '[erased]', \
         correction = CASE WHEN correction IS NULL THEN NULL ELSE '[erased]' END \
         WHERE conversation_id IN (SELECT id FROM conversations WHERE customer_id = ?1)",
        [key],
    )?;
    tx.execute(
        "UPDATE feedback SET text = '[erased]' WHERE customer_id = ?1",
        [key],
    )?;
    tx.execute(
        "UPDATE complaints SET text = '[erased]' WHERE customer_id = ?1",
        [key],
    )?;
    tx.execute(
        "UPDATE handoffs SET summary = '[erased]' WHERE customer_id = ?1",
        [key],
    )?;
    tx.execute(
        "UPDATE tokens SET used_at = COALESCE(used_at, ?2) WHERE customer_id = ?1",
        params![key, unix_now()],
    )?;
    Ok(())
}

fn feedback_from_row(s: &Sealer, row: &Row) -> rusqlite::Result<Feedback> {
    let customer: Option<String> = row.get(2)?;
    let topic: String = row.get(5)?;
    let sentiment: String = row.get(6)?;
    Ok(Feedback {
        id: row.get(0)?,
        conversation_id: row.get(1)?,
        customer_id: customer.and_then(|c| CustomerId::parse(&c).ok()),
        text: opened(s, row, 3, "feedback.text")?,
        rating: row.get(4)?,
        topic: Topic::parse(&topic).unwrap_or(Topic::Other),
        sentiment: Sentiment::parse(&sentiment).unwrap_or(Sentiment::Neutral),
        confidence: row.get(7)?,
        queue: row.get(8)?,
        created_at: row.get(9)?,
    })
}

const FEEDBACK_COLS: &str = "id, conversation_id, customer_id, text, rating, topic, sentiment, \
                             confidence, queue, created_at";

fn complaint_from_row(s: &Sealer, row: &Row) -> rusqlite::Result<Complaint> {
    let customer: Option<String> = row.get(1)?;
    let order: Option<String> = row.get(2)?;
    let category: String = row.get(5)?;
    let severity: String = row.get(6)?;
    let resolution: String = row.get(7)?;
    let status: String = row.get(11)?;
    Ok(Complaint {
        id: row.get(0)?,
        customer_id: customer.and_then(|c| CustomerId::parse(&c).ok()),
        order_id: order.and_then(|o| OrderId::parse(&o).ok()),
        conversation_id: row.get(3)?,
        text: opened(s, row, 4, "complaints.text")?,
        category: Topic::parse(&category).unwrap_or(Topic::Other),
        severity: Severity::parse(&severity).unwrap_or(Severity::Medium),
        resolution: super::policy::Resolution::parse(&resolution)
            .unwrap_or(super::policy::Resolution::Escalation),
        resolution_note: row.get(8)?,
        auto_approved: row.get(9)?,
        created_at: row.get(10)?,
        status: ComplaintStatus::parse(&status).unwrap_or(ComplaintStatus::Open),
        resolved_by: row.get(12)?,
        resolved_at: row.get(13)?,
    })
}

const COMPLAINT_COLS: &str = "id, customer_id, order_id, conversation_id, text, category, \
                              severity, resolution, resolution_note, auto_approved, created_at, \
                              status, resolved_by, resolved_at";

fn handoff_from_row(s: &Sealer, row: &Row) -> rusqlite::Result<Handoff> {
    let customer: Option<String> = row.get(2)?;
    let status: String = row.get(5)?;
    Ok(Handoff {
        id: row.get(0)?,
        conversation_id: row.get(1)?,
        customer_id: customer.and_then(|c| CustomerId::parse(&c).ok()),
        reason: row.get(3)?,
        summary: opened(s, row, 4, "handoffs.summary")?,
        status: HandoffStatus::parse(&status).unwrap_or(HandoffStatus::Open),
        claimed_by: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
    })
}

const HANDOFF_COLS: &str =
    "id, conversation_id, customer_id, reason, summary, status, claimed_by, created_at, updated_at";

fn conversation_from_row(row: &Row) -> rusqlite::Result<Conversation> {
    let customer: Option<String> = row.get(1)?;
    let channel: String = row.get(2)?;
    Ok(Conversation {
        id: row.get(0)?,
        customer_id: customer.and_then(|c| CustomerId::parse(&c).ok()),
        channel: Channel::parse(&channel).unwrap_or(Channel::Api),
        human: row.get(3)?,
        created_at: row.get(4)?,
    })
}

fn message_from_row(s: &Sealer, row: &Row) -> rusqlite::Result<Message> {
    let role: String = row.get(2)?;
    let meta: Option<String> = row.get(6)?;
    Ok(Message {
        id: row.get(0)?,
        conversation_id: row.get(1)?,
        role: Role::parse(&role).unwrap_or(Role::System),
        author: row.get(3)?,
        content: opened(s, row, 4, "messages.content")?,
        created_at: row.get(5)?,
        // A meta that no longer parses is dropped, not fatal: the message text is what counts.
        meta: meta.and_then(|m| serde_json::from_str(&m).ok()),
    })
}

const MESSAGE_COLS: &str = "id, conversation_id, role, author, content, created_at, meta";

fn rating_from_row(s: &Sealer, row: &Row) -> rusqlite::Result<AnswerRating> {
    let status: String = row.get(7)?;
    Ok(AnswerRating {
        id: row.get(0)?,
        message_id: row.get(1)?,
        conversation_id: row.get(2)?,
        rating: row.get(3)?,
        question: opened(s, row, 4, "answer_ratings.question")?,
        answer: opened(s, row, 5, "answer_ratings.answer")?,
        correction: opened_opt(s, row, 6, "answer_ratings.correction")?,
        status: RatingStatus::parse(&status).unwrap_or(RatingStatus::Noted),
        reviewed_by: row.get(8)?,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
    })
}

const RATING_COLS: &str = "id, message_id, conversation_id, rating, question, answer, correction, \
                           status, reviewed_by, created_at, updated_at";

fn curated_from_row(s: &Sealer, row: &Row) -> rusqlite::Result<CuratedAnswer> {
    Ok(CuratedAnswer {
        id: row.get(0)?,
        question: opened(s, row, 1, "curated_answers.question")?,
        answer: opened(s, row, 2, "curated_answers.answer")?,
        rating_id: row.get(3)?,
        created_by: row.get(4)?,
        created_at: row.get(5)?,
    })
}

const CURATED_COLS: &str = "id, question, answer, rating_id, created_by, created_at";

fn audit_from_row(s: &Sealer, row: &Row) -> rusqlite::Result<AuditEntry> {
    let channel: String = row.get(3)?;
    let customer: Option<String> = row.get(6)?;
    Ok(AuditEntry {
        id: row.get(0)?,
        at: row.get(1)?,
        actor: row.get(2)?,
        channel: Channel::parse(&channel).unwrap_or(Channel::Api),
        action: row.get(4)?,
        target: row.get(5)?,
        customer_id: customer.and_then(|c| CustomerId::parse(&c).ok()),
        detail: opened_json(s, row, 7, "audit.detail")?,
    })
}

const AUDIT_COLS: &str = "id, at, actor, channel, action, target, customer_id, detail";

/// The most asked of `questions`, case folded (the first spelling seen is shown), erased ones
/// left out; ties by text.
fn top_questions(questions: Vec<String>, limit: usize) -> Vec<Counted> {
    let mut groups: std::collections::HashMap<String, Counted> = Default::default();
    for q in questions {
        if q == "[erased]" {
            continue;
        }
        groups
            .entry(q.to_lowercase())
            .or_insert_with(|| Counted { label: q, count: 0 })
            .count += 1;
    }
    let mut out: Vec<Counted> = groups.into_values().collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.label.cmp(&b.label)));
    out.truncate(limit);
    out
}

impl SqliteStore {
    /// Refuses a write when another process rotated the data key since this one opened the
    /// database: what it wrote would be sealed under a key the database no longer uses.
    fn check_key(&self, tx: &SqlTx) -> Result<()> {
        match sealed_with(tx)? {
            Some(id) if id == self.sealer.id() => Ok(()),
            other => Err(ShopError::Key(format!(
                "the data key was rotated (the database is now under {}); restart clerk with \
                 the new key",
                other.unwrap_or_else(|| "no key".into())
            ))),
        }
    }
}

/// Numeric keyset cursor; a malformed one is the caller's error.
fn after_id(page: &Page) -> Result<i64> {
    match &page.after {
        None => Ok(0),
        Some(s) => s.parse().map_err(|_| ShopError::Invalid {
            field: "after",
            message: format!("`{s}` is not an id from a previous page"),
        }),
    }
}

impl ShopStore for SqliteStore {
    fn counts(&self) -> Result<ShopCounts> {
        let conn = self.conn();
        let one = |sql: &str| -> Result<i64> { Ok(conn.query_row(sql, [], |r| r.get(0))?) };
        Ok(ShopCounts {
            customers: one("SELECT count(*) FROM customers")? as u64,
            payment_methods: one("SELECT count(*) FROM payment_methods")? as u64,
            products: one("SELECT count(*) FROM products")? as u64,
            variants: one("SELECT count(*) FROM variants")? as u64,
            orders: one("SELECT count(*) FROM orders")? as u64,
            order_items: one("SELECT count(*) FROM order_items")? as u64,
            payments: one("SELECT count(*) FROM transactions WHERE kind = 'payment'")? as u64,
            refunds: one("SELECT count(*) FROM transactions WHERE kind = 'refund'")? as u64,
            item_total: Money(one("SELECT coalesce(sum(price), 0) FROM order_items")?),
            paid_total: Money(one(
                "SELECT coalesce(sum(amount), 0) FROM transactions WHERE kind = 'payment'",
            )?),
            refunded_total: Money(one(
                "SELECT coalesce(sum(amount), 0) FROM transactions WHERE kind = 'refund'",
            )?),
            gift_card_balance: Money(one(
                "SELECT coalesce(sum(balance), 0) FROM payment_methods",
            )?),
        })
    }

    fn customer(&self, id: &CustomerId) -> Result<Option<Customer>> {
        load_customer(&self.conn(), &self.sealer, id)
    }

    fn customers_by_email(&self, email: &Email) -> Result<Vec<CustomerId>> {
        let conn = self.conn();
        let ids = all(
            &conn,
            "SELECT id FROM customers WHERE email_hash = ?1 AND erased_at IS NULL ORDER BY id",
            [self.sealer.blind(email.as_str())],
            |r| {
                let id: String = r.get(0)?;
                parsed(0, CustomerId::parse(&id))
            },
        )?;
        Ok(ids)
    }

    fn customers_by_name_zip(&self, first: &str, last: &str, zip: &str) -> Result<Vec<CustomerId>> {
        let conn = self.conn();
        let zip = zip.trim();
        let named = all(
            &conn,
            "SELECT id, zip FROM customers WHERE lower(first_name) = lower(?1) \
             AND lower(last_name) = lower(?2) AND erased_at IS NULL ORDER BY id",
            params![first.trim(), last.trim()],
            |r| {
                let id: String = r.get(0)?;
                Ok((
                    parsed(0, CustomerId::parse(&id))?,
                    opened(&self.sealer, r, 1, "customers.zip")?,
                ))
            },
        )?;
        // The postal code is sealed, so it is compared here, among the few namesakes.
        Ok(named
            .into_iter()
            .filter(|(_, z)| z == zip)
            .map(|(id, _)| id)
            .collect())
    }

    fn list_customers(&self, page: &Page) -> Result<Vec<Customer>> {
        let conn = self.conn();
        let mut customers: Vec<Customer> = all(
            &conn,
            &format!(
                "SELECT id, first_name, last_name, email, phone, erased_at, {ADDRESS_COLS} \
             FROM customers WHERE id > ?1 ORDER BY id LIMIT ?2"
            ),
            params![page.after.as_deref().unwrap_or(""), page.limit as i64],
            |r| customer_from_row(&self.sealer, r),
        )?;
        for c in &mut customers {
            c.payment_methods = payment_methods(&conn, &self.sealer, &c.id)?;
            c.saved_addresses = saved_addresses(&conn, &self.sealer, &c.id)?;
        }
        Ok(customers)
    }

    fn order(&self, id: &OrderId) -> Result<Option<Order>> {
        load_order(&self.conn(), &self.sealer, id)
    }

    fn list_orders(&self, filter: &OrderFilter, page: &Page) -> Result<Vec<OrderSummary>> {
        let conn = self.conn();
        let rows = all(
            &conn,
            "SELECT o.id, o.customer_id, o.status, \
               (SELECT coalesce(sum(price), 0) FROM order_items i WHERE i.order_id = o.id), \
               (SELECT count(*) FROM order_items i WHERE i.order_id = o.id) \
             FROM orders o WHERE o.id > ?1 AND (?2 IS NULL OR o.customer_id = ?2) \
               AND (?3 IS NULL OR o.status = ?3) ORDER BY o.id LIMIT ?4",
            params![
                page.after.as_deref().unwrap_or(""),
                filter.customer.as_ref().map(CustomerId::as_str),
                filter.status.map(OrderStatus::as_str),
                page.limit as i64
            ],
            |row| {
                let id: String = row.get(0)?;
                let customer: String = row.get(1)?;
                let status: String = row.get(2)?;
                Ok(OrderSummary {
                    id: parsed(0, OrderId::parse(&id))?,
                    customer_id: parsed(1, CustomerId::parse(&customer))?,
                    status: parsed(2, OrderStatus::parse(&status))?,
                    total: Money(row.get(3)?),
                    items: row.get::<_, i64>(4)? as usize,
                })
            },
        )?;
        Ok(rows)
    }

    fn product(&self, id: &ProductId) -> Result<Option<Product>> {
        load_product(&self.conn(), id.as_str())
    }

    fn products(&self) -> Result<Vec<Product>> {
        let conn = self.conn();
        let ids: Vec<String> = all(&conn, "SELECT id FROM products ORDER BY id", [], |r| {
            r.get(0)
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(load_product(&conn, &id)?);
        }
        Ok(out)
    }

    fn variant(&self, sku: &Sku) -> Result<Option<Variant>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {VARIANT_COLS} FROM variants WHERE sku = ?1"),
                [sku.as_str()],
                variant_from_row,
            )
            .optional()?)
    }

    fn co_purchased(&self, products: &[ProductId]) -> Result<Vec<(ProductId, u32)>> {
        let conn = self.conn();
        let ids = serde_json::to_string(&products)?;
        let rows = all(
            &conn,
            "SELECT b.product_id, count(DISTINCT b.order_id) AS n FROM order_items a \
             JOIN order_items b ON a.order_id = b.order_id AND a.product_id <> b.product_id \
             WHERE a.product_id IN (SELECT value FROM json_each(?1)) \
             GROUP BY b.product_id ORDER BY n DESC, b.product_id LIMIT 50",
            [ids],
            |r| {
                let id: String = r.get(0)?;
                Ok((
                    parsed(0, ProductId::parse(&id))?,
                    r.get::<_, i64>(1)? as u32,
                ))
            },
        )?;
        Ok(rows)
    }

    fn import(&self, data: &ShopData, audit: AuditEntry) -> Result<ShopCounts> {
        {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            self.check_key(&tx)?;
            let start: i64 = tx.query_row(
                "SELECT coalesce(max(position) + 1, 0) FROM orders",
                [],
                |r| r.get(0),
            )?;
            for p in &data.products {
                insert_product(&tx, p)?;
            }
            for c in &data.customers {
                insert_customer(&tx, &self.sealer, c)?;
            }
            for (i, o) in data.orders.iter().enumerate() {
                insert_order(&tx, &self.sealer, o, start + i as i64)?;
            }
            insert_audit(&tx, &self.sealer, &audit)?;
            tx.commit()?;
        }
        self.counts()
    }

    fn commit(&self, write: Write) -> Result<Vec<i64>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        self.check_key(&tx)?;
        if let Some(hash) = &write.consume_token {
            let n = tx.execute(
                "UPDATE tokens SET used_at = ?1 WHERE hash = ?2 AND kind = 'confirmation' \
                 AND used_at IS NULL AND expires_at > ?1",
                params![unix_now(), hash],
            )?;
            if n != 1 {
                return Err(ShopError::Confirmation(
                    "this confirmation was already used or has expired; ask for a new summary",
                ));
            }
        }
        let mut inserted = Vec::new();
        for change in &write.changes {
            apply(&tx, &self.sealer, change, &mut inserted)?;
        }
        insert_audit(&tx, &self.sealer, &write.audit)?;
        tx.commit()?;
        Ok(inserted)
    }

    fn record(&self, audit: AuditEntry) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        self.check_key(&tx)?;
        insert_audit(&tx, &self.sealer, &audit)?;
        tx.commit()?;
        Ok(())
    }

    fn audit(&self, filter: &AuditFilter, page: &Page) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let rows = all(
            &conn,
            &format!(
            "SELECT {AUDIT_COLS} FROM audit WHERE id > ?1 AND (?2 IS NULL OR customer_id = ?2) \
             AND (?3 IS NULL OR target = ?3) ORDER BY id LIMIT ?4"
        ),
            params![
                after_id(page)?,
                filter.customer.as_ref().map(CustomerId::as_str),
                filter.target,
                page.limit as i64
            ],
            |r| audit_from_row(&self.sealer, r),
        )?;
        Ok(rows)
    }

    fn token(&self, hash: &str) -> Result<Option<StoredToken>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT hash, kind, customer_id, payload, created_at, expires_at, used_at \
                 FROM tokens WHERE hash = ?1",
                [hash],
                |row| {
                    let kind: String = row.get(1)?;
                    let customer: String = row.get(2)?;
                    Ok(StoredToken {
                        hash: row.get(0)?,
                        kind: TokenKind::parse(&kind).unwrap_or(TokenKind::Session),
                        customer_id: parsed(2, CustomerId::parse(&customer))?,
                        payload: opened_json(&self.sealer, row, 3, "tokens.payload")?,
                        created_at: row.get(4)?,
                        expires_at: row.get(5)?,
                        used_at: row.get(6)?,
                    })
                },
            )
            .optional()?)
    }

    fn feedback(&self, queue: Option<&str>, page: &Page) -> Result<Vec<Feedback>> {
        let conn = self.conn();
        let rows = all(
            &conn,
            &format!(
            "SELECT {FEEDBACK_COLS} FROM feedback WHERE id > ?1 AND (?2 IS NULL OR queue = ?2) \
             ORDER BY id LIMIT ?3"
        ),
            params![after_id(page)?, queue, page.limit as i64],
            |r| feedback_from_row(&self.sealer, r),
        )?;
        Ok(rows)
    }

    fn complaints(&self, page: &Page) -> Result<Vec<Complaint>> {
        let conn = self.conn();
        let rows = all(
            &conn,
            &format!("SELECT {COMPLAINT_COLS} FROM complaints WHERE id > ?1 ORDER BY id LIMIT ?2"),
            params![after_id(page)?, page.limit as i64],
            |r| complaint_from_row(&self.sealer, r),
        )?;
        Ok(rows)
    }

    fn handoff(&self, id: i64) -> Result<Option<Handoff>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {HANDOFF_COLS} FROM handoffs WHERE id = ?1"),
                [id],
                |r| handoff_from_row(&self.sealer, r),
            )
            .optional()?)
    }

    fn handoffs(&self, status: Option<HandoffStatus>, page: &Page) -> Result<Vec<Handoff>> {
        let conn = self.conn();
        let rows = all(
            &conn,
            &format!(
            "SELECT {HANDOFF_COLS} FROM handoffs WHERE id > ?1 AND (?2 IS NULL OR status = ?2) \
             ORDER BY id LIMIT ?3"
        ),
            params![
                after_id(page)?,
                status.map(HandoffStatus::as_str),
                page.limit as i64
            ],
            |r| handoff_from_row(&self.sealer, r),
        )?;
        Ok(rows)
    }

    fn conversation_handoffs(&self, conversation: &str) -> Result<Vec<Handoff>> {
        all(
            &self.conn(),
            &format!("SELECT {HANDOFF_COLS} FROM handoffs WHERE conversation_id = ?1 ORDER BY id"),
            [conversation],
            |r| handoff_from_row(&self.sealer, r),
        )
    }

    fn conversation(&self, id: &str) -> Result<Option<Conversation>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, customer_id, channel, human, created_at FROM conversations \
                 WHERE id = ?1",
                [id],
                conversation_from_row,
            )
            .optional()?)
    }

    fn messages(&self, conversation: &str, after: i64) -> Result<Vec<Message>> {
        let conn = self.conn();
        let rows = all(
            &conn,
            &format!(
                "SELECT {MESSAGE_COLS} FROM messages \
                 WHERE conversation_id = ?1 AND id > ?2 ORDER BY id"
            ),
            params![conversation, after],
            |r| message_from_row(&self.sealer, r),
        )?;
        Ok(rows)
    }

    fn message(&self, id: i64) -> Result<Option<Message>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {MESSAGE_COLS} FROM messages WHERE id = ?1"),
                [id],
                |r| message_from_row(&self.sealer, r),
            )
            .optional()?)
    }

    fn complaint(&self, id: i64) -> Result<Option<Complaint>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COMPLAINT_COLS} FROM complaints WHERE id = ?1"),
                [id],
                |r| complaint_from_row(&self.sealer, r),
            )
            .optional()?)
    }

    fn rating(&self, id: i64) -> Result<Option<AnswerRating>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {RATING_COLS} FROM answer_ratings WHERE id = ?1"),
                [id],
                |r| rating_from_row(&self.sealer, r),
            )
            .optional()?)
    }

    fn ratings(&self, status: Option<RatingStatus>, page: &Page) -> Result<Vec<AnswerRating>> {
        all(
            &self.conn(),
            &format!(
                "SELECT {RATING_COLS} FROM answer_ratings WHERE id > ?1 \
                 AND (?2 IS NULL OR status = ?2) ORDER BY id LIMIT ?3"
            ),
            params![
                after_id(page)?,
                status.map(RatingStatus::as_str),
                page.limit as i64
            ],
            |r| rating_from_row(&self.sealer, r),
        )
    }

    fn curated_answers(&self) -> Result<Vec<CuratedAnswer>> {
        all(
            &self.conn(),
            &format!("SELECT {CURATED_COLS} FROM curated_answers ORDER BY id"),
            [],
            |r| curated_from_row(&self.sealer, r),
        )
    }

    fn purge_before(&self, cutoff: i64, audit_cutoff: Option<i64>) -> Result<Purged> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        // Conversations idle since before the cutoff, unless a person still holds them.
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS purge_conversations (id TEXT PRIMARY KEY); \
             DELETE FROM purge_conversations;",
        )?;
        tx.execute(
            "INSERT INTO purge_conversations (id) SELECT c.id FROM conversations c \
             WHERE COALESCE((SELECT MAX(m.created_at) FROM messages m \
                             WHERE m.conversation_id = c.id), c.created_at) < ?1 \
             AND NOT EXISTS (SELECT 1 FROM handoffs h WHERE h.conversation_id = c.id \
                             AND h.status <> 'closed')",
            [cutoff],
        )?;
        let gone = "SELECT id FROM purge_conversations";
        tx.execute(
            &format!(
                "UPDATE curated_answers SET rating_id = NULL WHERE rating_id IN \
                 (SELECT id FROM answer_ratings WHERE conversation_id IN ({gone}))"
            ),
            [],
        )?;
        tx.execute(
            &format!("DELETE FROM answer_ratings WHERE conversation_id IN ({gone})"),
            [],
        )?;
        let messages = tx.execute(
            &format!("DELETE FROM messages WHERE conversation_id IN ({gone})"),
            [],
        )?;
        let handoffs = tx.execute(
            &format!("DELETE FROM handoffs WHERE conversation_id IN ({gone})"),
            [],
        )?;
        let conversations = tx.execute(
            &format!("DELETE FROM conversations WHERE id IN ({gone})"),
            [],
        )?;
        let audit = match audit_cutoff {
            Some(c) => tx.execute("DELETE FROM audit WHERE at < ?1", [c])?,
            None => 0,
        };
        let tokens = tx.execute("DELETE FROM tokens WHERE expires_at < ?1", [cutoff])?;
        tx.execute("DELETE FROM purge_conversations", [])?;
        tx.commit()?;
        Ok(Purged {
            conversations: conversations as u64,
            messages: messages as u64,
            handoffs: handoffs as u64,
            audit: audit as u64,
            tokens: tokens as u64,
        })
    }

    fn analytics(&self, since: i64, now: i64) -> Result<Analytics> {
        const DAY: i64 = 86_400;
        let conn = self.conn();
        let ndays = ((now - since + DAY - 1) / DAY).clamp(1, 366) as usize;
        let mut days: Vec<DayCount> = (0..ndays)
            .map(|d| DayCount {
                date: crate::clock::iso_date(since + d as i64 * DAY),
                ..DayCount::default()
            })
            .collect();
        let per_day = |table: &str| -> Result<Vec<(i64, u64)>> {
            all(
                &conn,
                &format!(
                    "SELECT (created_at - ?1) / {DAY}, COUNT(*) FROM {table} \
                     WHERE created_at >= ?1 AND created_at < ?2 GROUP BY 1"
                ),
                params![since, now],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
            )
        };
        for (d, n) in per_day("conversations")? {
            if let Some(day) = days.get_mut(d as usize) {
                day.conversations = n;
            }
        }
        for (d, n) in per_day("handoffs")? {
            if let Some(day) = days.get_mut(d as usize) {
                day.handoffs = n;
            }
        }
        let conversations: u64 = days.iter().map(|d| d.conversations).sum();
        let with_human: i64 = conn.query_row(
            "SELECT COUNT(DISTINCT h.conversation_id) FROM handoffs h \
             JOIN conversations c ON c.id = h.conversation_id \
             WHERE c.created_at >= ?1 AND c.created_at < ?2",
            params![since, now],
            |r| r.get(0),
        )?;
        let (handoff_rate, resolved_without_human) = if conversations == 0 {
            (0.0, 0.0)
        } else {
            let rate = with_human as f64 / conversations as f64;
            (rate, 1.0 - rate)
        };
        let counted = |sql: &str| -> Result<Vec<Counted>> {
            all(&conn, sql, params![since, now], |r| {
                Ok(Counted {
                    label: r.get(0)?,
                    count: r.get::<_, i64>(1)? as u64,
                })
            })
        };
        let handoff_reasons = counted(
            "SELECT reason, COUNT(*) FROM handoffs WHERE created_at >= ?1 AND created_at < ?2 \
             GROUP BY reason ORDER BY 2 DESC, 1 LIMIT 10",
        )?;
        let top_intents = counted(
            "SELECT json_extract(meta, '$.intent'), COUNT(*) FROM messages \
             WHERE role = 'assistant' AND created_at >= ?1 AND created_at < ?2 \
             AND json_extract(meta, '$.intent') IS NOT NULL \
             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10",
        )?;
        // The shopper's message just before each reply that found no answer. Messages are
        // sealed, so they are opened and grouped here rather than in SQL.
        let questions: Vec<String> = all(
            &conn,
            "SELECT (SELECT p.content FROM messages p \
               WHERE p.conversation_id = m.conversation_id AND p.id < m.id \
               AND p.role = 'shopper' ORDER BY p.id DESC LIMIT 1) AS q FROM messages m \
             WHERE m.role = 'assistant' AND m.created_at >= ?1 AND m.created_at < ?2 \
             AND json_extract(m.meta, '$.unanswered') = 1 AND q IS NOT NULL",
            params![since, now],
            |r| opened(&self.sealer, r, 0, "messages.content"),
        )?;
        let unanswered = top_questions(questions, 20);
        let (up, down): (i64, i64) = conn.query_row(
            "SELECT COALESCE(SUM(rating = 1), 0), COALESCE(SUM(rating = -1), 0) \
             FROM answer_ratings WHERE created_at >= ?1 AND created_at < ?2",
            params![since, now],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut latencies: Vec<f64> = all(
            &conn,
            "SELECT json_extract(meta, '$.latency_ms') FROM messages \
             WHERE role = 'assistant' AND created_at >= ?1 AND created_at < ?2 \
             AND json_extract(meta, '$.latency_ms') IS NOT NULL",
            params![since, now],
            |r| r.get::<_, f64>(0),
        )?;
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| -> Option<f64> {
            if latencies.is_empty() {
                return None;
            }
            let i = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
            Some(latencies[i])
        };
        Ok(Analytics {
            days,
            conversations,
            resolved_without_human,
            handoff_rate,
            handoff_reasons,
            ratings: RatingCounts {
                up: up as u64,
                down: down as u64,
            },
            top_intents,
            unanswered,
            latency_ms: Latency {
                count: latencies.len() as u64,
                p50: pct(0.50),
                p90: pct(0.90),
                p99: pct(0.99),
            },
        })
    }

    fn customer_records(&self, id: &CustomerId) -> Result<CustomerRecords> {
        let conn = self.conn();
        let key = id.as_str();
        let feedback = all(
            &conn,
            &format!("SELECT {FEEDBACK_COLS} FROM feedback WHERE customer_id = ?1 ORDER BY id"),
            [key],
            |r| feedback_from_row(&self.sealer, r),
        )?;
        let complaints = all(
            &conn,
            &format!("SELECT {COMPLAINT_COLS} FROM complaints WHERE customer_id = ?1 ORDER BY id"),
            [key],
            |r| complaint_from_row(&self.sealer, r),
        )?;
        let handoffs = all(
            &conn,
            &format!("SELECT {HANDOFF_COLS} FROM handoffs WHERE customer_id = ?1 ORDER BY id"),
            [key],
            |r| handoff_from_row(&self.sealer, r),
        )?;
        let conversations: Vec<Conversation> = all(
            &conn,
            "SELECT id, customer_id, channel, human, created_at FROM conversations \
                 WHERE customer_id = ?1 ORDER BY created_at, id",
            [key],
            conversation_from_row,
        )?;
        let mut with_messages = Vec::with_capacity(conversations.len());
        for c in conversations {
            let messages = all(
                &conn,
                &format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE conversation_id = ?1 ORDER BY id"
                ),
                [c.id.as_str()],
                |r| message_from_row(&self.sealer, r),
            )?;
            with_messages.push((c, messages));
        }
        let audit = all(
            &conn,
            &format!("SELECT {AUDIT_COLS} FROM audit WHERE customer_id = ?1 ORDER BY id"),
            [key],
            |r| audit_from_row(&self.sealer, r),
        )?;
        Ok(CustomerRecords {
            feedback,
            complaints,
            handoffs,
            conversations: with_messages,
            audit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_database_is_migrated_in_place_and_a_newer_one_refused() {
        let dir = std::env::temp_dir().join(format!("clerk-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let conn = Connection::open(dir.join("shop.sqlite")).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1i64).unwrap();
            conn.execute(
                "INSERT INTO customers (id, first_name, last_name, email) \
                 VALUES ('old_1', 'Olga', 'Old', 'olga@example.com')",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&dir, &KeySource::Auto).unwrap();
        let c = store
            .customer(&CustomerId::parse("old_1").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.first_name.as_str(), c.saved_addresses.len()),
            ("Olga", 0)
        );
        // The plaintext email was sealed in place, is found through its blind index, and is
        // gone from every file of the database.
        assert_eq!(
            store
                .customers_by_email(&Email::parse("olga@example.com").unwrap())
                .unwrap(),
            vec![c.id.clone()]
        );
        for file in ["shop.sqlite", "shop.sqlite-wal"] {
            let bytes = std::fs::read(dir.join(file)).unwrap_or_default();
            assert!(
                !bytes.windows(16).any(|w| w == b"olga@example.com"),
                "{file} still holds the email in clear"
            );
        }
        let version: i64 = store
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        store
            .conn()
            .pragma_update(None, "user_version", 99i64)
            .unwrap();
        drop(store);
        let err = SqliteStore::open(&dir, &KeySource::Auto)
            .err()
            .expect("a newer schema is refused")
            .to_string();
        assert!(err.contains("newer"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
