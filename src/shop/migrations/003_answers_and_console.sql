-- clerk shop schema, version 3: what the web chat and the staff console need.

-- What the assistant attached to a message (sources, cards, intent, language, how long the turn
-- took), as JSON, so a reloaded chat shows it again and analytics can count it.
ALTER TABLE messages ADD COLUMN meta TEXT;

-- Staff close complaints once they have acted on them.
ALTER TABLE complaints ADD COLUMN status TEXT NOT NULL DEFAULT 'open';
ALTER TABLE complaints ADD COLUMN resolved_by TEXT;
ALTER TABLE complaints ADD COLUMN resolved_at INTEGER;

-- A shopper's thumbs up or down on one assistant message, with an optional correction that
-- staff review. One rating per message: a second one replaces the first.
CREATE TABLE answer_ratings (
    id              INTEGER PRIMARY KEY,
    message_id      INTEGER NOT NULL UNIQUE REFERENCES messages(id),
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    rating          INTEGER NOT NULL CHECK (rating IN (-1, 1)),
    question        TEXT NOT NULL,
    answer          TEXT NOT NULL,
    correction      TEXT,
    status          TEXT NOT NULL,
    reviewed_by     TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX answer_ratings_status ON answer_ratings(status, id);

-- Answers staff approved: they win over retrieval for the same question.
CREATE TABLE curated_answers (
    id          INTEGER PRIMARY KEY,
    question    TEXT NOT NULL,
    answer      TEXT NOT NULL,
    rating_id   INTEGER REFERENCES answer_ratings(id),
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE INDEX handoffs_conversation ON handoffs(conversation_id, id);
CREATE INDEX conversations_created ON conversations(created_at);
-- Analytics read the assistant's messages of a period.
CREATE INDEX messages_role_created ON messages(role, created_at);
