-- clerk shop schema, version 2: customers keep saved addresses besides their default one.
CREATE TABLE addresses (
    customer_id TEXT NOT NULL REFERENCES customers(id),
    position    INTEGER NOT NULL,
    label       TEXT NOT NULL DEFAULT '',
    address1    TEXT NOT NULL,
    address2    TEXT NOT NULL DEFAULT '',
    city        TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT '',
    country     TEXT NOT NULL,
    zip         TEXT NOT NULL,
    PRIMARY KEY (customer_id, position)
);
