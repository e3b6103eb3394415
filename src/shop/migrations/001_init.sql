-- clerk shop schema, version 1. Money is in integer cents; times are Unix seconds.
CREATE TABLE customers (
    id          TEXT PRIMARY KEY,
    first_name  TEXT NOT NULL,
    last_name   TEXT NOT NULL,
    email       TEXT,
    phone       TEXT,
    address1    TEXT NOT NULL DEFAULT '',
    address2    TEXT NOT NULL DEFAULT '',
    city        TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL DEFAULT '',
    country     TEXT NOT NULL DEFAULT '',
    zip         TEXT NOT NULL DEFAULT '',
    erased_at   INTEGER
);
CREATE INDEX customers_email ON customers(email);
CREATE INDEX customers_name_zip ON customers(lower(first_name), lower(last_name), zip);

CREATE TABLE payment_methods (
    id          TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(id),
    source      TEXT NOT NULL,
    brand       TEXT,
    last_four   TEXT,
    balance     INTEGER CHECK (balance IS NULL OR balance >= 0),
    position    INTEGER NOT NULL
);
CREATE INDEX payment_methods_customer ON payment_methods(customer_id);

CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    category    TEXT
);

CREATE TABLE variants (
    sku         TEXT PRIMARY KEY,
    product_id  TEXT NOT NULL REFERENCES products(id),
    options     TEXT NOT NULL,
    price       INTEGER NOT NULL,
    available   INTEGER NOT NULL,
    stock       INTEGER
);
CREATE INDEX variants_product ON variants(product_id);

CREATE TABLE orders (
    id                 TEXT PRIMARY KEY,
    customer_id        TEXT NOT NULL REFERENCES customers(id),
    status             TEXT NOT NULL,
    address1           TEXT NOT NULL DEFAULT '',
    address2           TEXT NOT NULL DEFAULT '',
    city               TEXT NOT NULL DEFAULT '',
    state              TEXT NOT NULL DEFAULT '',
    country            TEXT NOT NULL DEFAULT '',
    zip                TEXT NOT NULL DEFAULT '',
    cancel_reason      TEXT,
    estimated_delivery INTEGER,
    created_at         INTEGER,
    position           INTEGER NOT NULL
);
CREATE INDEX orders_customer ON orders(customer_id);

CREATE TABLE order_items (
    order_id    TEXT NOT NULL REFERENCES orders(id),
    line        INTEGER NOT NULL,
    product_id  TEXT NOT NULL,
    sku         TEXT NOT NULL,
    name        TEXT NOT NULL,
    options     TEXT NOT NULL,
    price       INTEGER NOT NULL,
    PRIMARY KEY (order_id, line)
);
CREATE INDEX order_items_product ON order_items(product_id);

CREATE TABLE transactions (
    id                INTEGER PRIMARY KEY,
    order_id          TEXT NOT NULL REFERENCES orders(id),
    kind              TEXT NOT NULL,
    amount            INTEGER NOT NULL,
    payment_method_id TEXT NOT NULL,
    at                INTEGER
);
CREATE INDEX transactions_order ON transactions(order_id);

CREATE TABLE fulfillments (
    id           INTEGER PRIMARY KEY,
    order_id     TEXT NOT NULL REFERENCES orders(id),
    carrier      TEXT,
    tracking_ids TEXT NOT NULL,
    skus         TEXT NOT NULL,
    events       TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX fulfillments_order ON fulfillments(order_id);

CREATE TABLE returns (
    id                INTEGER PRIMARY KEY,
    order_id          TEXT NOT NULL REFERENCES orders(id),
    kind              TEXT NOT NULL,
    skus              TEXT NOT NULL,
    new_skus          TEXT NOT NULL,
    payment_method_id TEXT NOT NULL,
    amount            INTEGER NOT NULL,
    at                INTEGER NOT NULL
);
CREATE INDEX returns_order ON returns(order_id);

CREATE TABLE tokens (
    hash        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);

CREATE TABLE conversations (
    id          TEXT PRIMARY KEY,
    customer_id TEXT,
    channel     TEXT NOT NULL,
    human       INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);
CREATE INDEX conversations_customer ON conversations(customer_id);

CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    role            TEXT NOT NULL,
    author          TEXT,
    content         TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX messages_conversation ON messages(conversation_id, id);

CREATE TABLE feedback (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT,
    customer_id     TEXT,
    text            TEXT NOT NULL,
    rating          INTEGER,
    topic           TEXT NOT NULL,
    sentiment       TEXT NOT NULL,
    confidence      REAL NOT NULL,
    queue           TEXT NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX feedback_queue ON feedback(queue, id);

CREATE TABLE complaints (
    id              INTEGER PRIMARY KEY,
    customer_id     TEXT,
    order_id        TEXT,
    conversation_id TEXT,
    text            TEXT NOT NULL,
    category        TEXT NOT NULL,
    severity        TEXT NOT NULL,
    resolution      TEXT NOT NULL,
    resolution_note TEXT NOT NULL,
    auto_approved   INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE TABLE handoffs (
    id              INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    customer_id     TEXT,
    reason          TEXT NOT NULL,
    summary         TEXT NOT NULL,
    status          TEXT NOT NULL,
    claimed_by      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX handoffs_status ON handoffs(status, id);

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    channel     TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    customer_id TEXT,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_customer ON audit(customer_id, id);
CREATE INDEX audit_target ON audit(target, id);
