-- Model-based (`method: tpe`) sweeps: their configurations are proposed
-- while they run, so a sweep knows how many it will have in all, and each
-- configuration where it came from and its objective.
ALTER TABLE sweeps ADD COLUMN planned_configs INTEGER;            -- tpe: `count` (lowered if the space runs out); NULL otherwise
ALTER TABLE sweeps ADD COLUMN objective TEXT;                     -- tpe: e.g. 'maximize oof_accuracy'; NULL otherwise
ALTER TABLE configurations ADD COLUMN origin TEXT NOT NULL DEFAULT '';  -- tpe: startup | model; '' otherwise
ALTER TABLE configurations ADD COLUMN objective REAL;              -- tpe: recorded once every fold succeeded
ALTER TABLE configurations ADD COLUMN objective_error TEXT NOT NULL DEFAULT '';  -- why no objective could be computed
