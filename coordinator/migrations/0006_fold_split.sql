-- Which algorithm splits a sweep's rows into folds: sweepfold's own (every
-- sweep stored before this migration) or scikit-learn's StratifiedKFold.
ALTER TABLE sweeps ADD COLUMN fold_split TEXT NOT NULL DEFAULT 'sweepfold';
