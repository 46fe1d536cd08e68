-- 0021_job_kind_concurrency: how the agent may run a kind's jobs is the kind's to say, registered by its
-- file in db/jobs/ with its completion (define_job_kind), not a list of kinds kept in the agent
ALTER TABLE pki.job_kinds
    -- serial: one after the other, in claim order; pooled: the jobs of one claim at once (up to [ssh]
    -- max_parallel_hosts), each acting on one disthost only; overlapped: the handler acts only inside the
    -- agent (it computes its completion), so its jobs run while the completions of those before are on
    -- their way, are claimed ahead, and are claimed beside those completions (no other kind is: it may
    -- depend on them)
    ADD COLUMN concurrency text NOT NULL DEFAULT 'serial'
        CONSTRAINT job_kinds_concurrency_known CHECK (concurrency IN ('serial', 'pooled', 'overlapped'));
