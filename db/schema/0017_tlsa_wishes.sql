-- 0017_tlsa_wishes: what is asked of a certificate's TLSA records while an agent runs its publish_tlsa job
-- (a successor to prepublish, a removal, a changed configuration). The running job takes no new args (its
-- agent already read them), so the request waits here and the job's completion enqueues it; before, it
-- was dropped, and only a change of the instances was caught by the completion's re-check. Not a column of
-- the job: the completion holds the job's row while it takes lock_tlsa, and the asker holds lock_tlsa: a
-- lock cycle. Its rows are locked only under the certificate's lock_tlsa (no foreign key to certinstances:
-- a cascade from the scheduler's deletes would lock them without it); a successor gone is not prepublished.
CREATE TABLE pki.tlsa_wishes (
    -- the certificate whose running publish_tlsa job was asked (one wish each: the newest counts, a successor
    -- asked for stays asked for until a removal)
    certificate int4 PRIMARY KEY REFERENCES pki.certificates ON DELETE CASCADE ON UPDATE CASCADE,
    -- the running job (jobs.id) whose completion carries it out; a wish of a job that died is not (no
    -- foreign key: its lock on the job's row would wait for the transaction that lets the job die)
    job         int8 NOT NULL,
    -- the successor (certinstances.id) whose TLSA records are to be prepublished with the active instance's;
    -- NULL: none, the records of what is wanted then (tlsa_wanted)
    prepublish  int4,
    -- the records are to be removed (the certificate disabled, -R)
    remove      boolean NOT NULL DEFAULT false,
    -- why it was asked (the follow-up's or the pass's reason), carried into the job that does it
    reason      text NOT NULL,
    -- when the newest wish was kept
    asked       timestamptz NOT NULL DEFAULT now()
);
