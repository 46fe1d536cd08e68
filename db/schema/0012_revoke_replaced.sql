-- 0012_revoke_replaced: a replaced instance whose certificate is still valid can be revoked (its key may
-- have leaked from a backup), and a revocation that has not reached its CA keeps its instance.

INSERT INTO pki.state_transitions (from_state, to_state, rule) VALUES
    ('expired', 'revoked', 'revocation requested of a replaced certificate that is still valid (--revoke)');

-- the revocations whose job has not finished (the scheduler keeps their instances: --revoke retries them)
CREATE INDEX revocations_pending ON pki.revocations (instance) WHERE done_at IS NULL;
