-- sweepfold coordinator store, version 3: ensembles and their submissions.

CREATE TABLE ensembles (
    id                   INTEGER PRIMARY KEY,
    sweep_ids_json       TEXT    NOT NULL,  -- [1, 2]
    members_json         TEXT    NOT NULL,  -- [{sweep_id, sweep_name, config_index, params, weight, oof_accuracy}]
    method               TEXT    NOT NULL,
    oof_accuracy         REAL    NOT NULL,
    best_member          TEXT    NOT NULL,
    best_member_accuracy REAL    NOT NULL,
    submission_path      TEXT    NOT NULL,
    probabilities_path   TEXT    NOT NULL,
    test_rows            INTEGER NOT NULL,
    automatic            INTEGER NOT NULL,
    created_at_ms        INTEGER NOT NULL
);
