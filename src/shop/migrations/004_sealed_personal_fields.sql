-- clerk shop schema, version 4: personal fields are sealed with the operator's data key
-- (shop/crypto.rs). Sealing itself happens in code right after this migration, in the same
-- start-up, because SQL can't encrypt.

-- Which key the sealed values are under; one row once the database is sealed.
CREATE TABLE crypto (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    key_id TEXT NOT NULL
);

-- A sealed email can't be searched: lookups go through its keyed hash instead.
ALTER TABLE customers ADD COLUMN email_hash TEXT;
DROP INDEX customers_email;
CREATE INDEX customers_email_hash ON customers(email_hash);
-- The postal code is sealed too: name and postal code are matched by name, then the code is
-- compared in code.
DROP INDEX customers_name_zip;
CREATE INDEX customers_name ON customers(lower(first_name), lower(last_name));
