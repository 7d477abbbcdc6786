-- sweepfold coordinator store, version 4: access tokens. Only their
-- SHA-256 is stored; the token itself is shown once, when it is created.

CREATE TABLE tokens (
    name          TEXT    PRIMARY KEY,
    kind          TEXT    NOT NULL,            -- user | agent
    admin         INTEGER NOT NULL,
    sha256        TEXT    NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);
