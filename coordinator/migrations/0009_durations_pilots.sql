-- Learned run times and Slurm pilots. Jobs with the same duration key are
-- expected to run about as long on the same GPU model (trainer: model,
-- image size, batch size, precision, epochs, dataset; command: the
-- configuration). `planned_epochs` is 0 when the spec does not say.
ALTER TABLE jobs ADD COLUMN duration_key TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN planned_epochs INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET
    duration_key = (
        SELECT CASE
            WHEN json_extract(c.spec_json, '$.trainer') IS NOT NULL THEN
                'trainer/' || json_extract(c.spec_json, '$.trainer.model') || '/' ||
                json_extract(c.spec_json, '$.trainer.image_size') || '/' ||
                json_extract(c.spec_json, '$.trainer.batch_size') || '/' ||
                json_extract(c.spec_json, '$.trainer.precision') || '/' ||
                json_extract(c.spec_json, '$.trainer.epochs') || '/' || s.dataset
            ELSE 'command/sweep-' || jobs.sweep_id || '/config-' || jobs.config_index
        END
        FROM configurations c JOIN sweeps s ON s.id = c.sweep_id
        WHERE c.sweep_id = jobs.sweep_id AND c.config_index = jobs.config_index),
    planned_epochs = COALESCE((
        SELECT json_extract(c.spec_json, '$.trainer.epochs') FROM configurations c
        WHERE c.sweep_id = jobs.sweep_id AND c.config_index = jobs.config_index), 0);
UPDATE jobs SET duration_key = '' WHERE duration_key IS NULL;

-- The GPU model an attempt ran on ('cpu' for CPU slots), for run times by
-- GPU model.
ALTER TABLE attempts ADD COLUMN gpu_model TEXT NOT NULL DEFAULT '';

-- Agents the coordinator submitted into Slurm (`[executors.slurm]`).
CREATE TABLE pilots (
    slurm_job_id    TEXT    PRIMARY KEY,
    state           TEXT    NOT NULL,   -- pending | running | ended
    slurm_state     TEXT    NOT NULL DEFAULT '',  -- as squeue/sacct last said
    agent           TEXT    NOT NULL DEFAULT '',  -- the agent name it registered as
    submitted_at_ms INTEGER NOT NULL,
    ended_at_ms     INTEGER,
    reason          TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX pilots_by_state ON pilots (state);

-- "Is any job of this sweep still open?" on every job's end, without
-- scanning every open job of every sweep.
CREATE INDEX jobs_by_sweep_state ON jobs (sweep_id, state);

-- "Which jobs does this agent run?" on every heartbeat, without reading
-- every open job of every agent.
CREATE INDEX jobs_by_agent_state ON jobs (agent, state);
