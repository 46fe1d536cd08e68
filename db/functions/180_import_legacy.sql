-- 180_import_legacy: the rules `serverpki db import-legacy` follows when it writes instances of a
-- serverPKI 0.9.x database, kept here so the state machine's rules live in one place.

-- import_instance_state: walk an instance imported from serverPKI 0.9.x (inserted 'reserved', as every
-- new row) to the state it had there, along pki.state_transitions: the shortest path that passes through
-- no 'revoked' on the way, each step an event with the session's context (the import's reason). 0.9.11
-- leaves the instance a newer one replaced 'deployed' until its next run, which expires it; ours keeps
-- one deployed instance per certificate: of two deployed, the older is expired. Refuses (SP020) a state
-- no path reaches. Returns each instance whose state it set, with that state.
CREATE OR REPLACE FUNCTION pki.import_instance_state(inst int, legacy_state dd.cert_state)
RETURNS TABLE (imported_instance int, imported_state dd.cert_state)
LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    this certinstances;
    target dd.cert_state := legacy_state;
    older int;
    path dd.cert_state[];
    step dd.cert_state;
BEGIN
    SELECT * INTO this FROM certinstances ci WHERE ci.id = inst FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM raise_error('SP002', format('no instance %s to import', inst), 'insert the instance first');
    END IF;
    IF target = 'deployed' THEN
        SELECT max(ci.id) INTO older FROM certinstances ci
         WHERE ci.certificate = this.certificate AND ci.state = 'deployed' AND ci.id <> inst;
        IF older > inst THEN          -- a newer one is deployed already: this one is what 0.9.11 would expire
            target := 'expired';
        ELSIF older < inst THEN       -- this one replaces the older deployed one
            UPDATE certinstances ci SET state = 'expired' WHERE ci.id = older;
            imported_instance := older;
            imported_state := 'expired';
            RETURN NEXT;
        END IF;
    END IF;
    WITH RECURSIVE walk(at, steps) AS (
        SELECT this.state, ARRAY[]::dd.cert_state[]
        UNION ALL
        SELECT t.to_state, w.steps || t.to_state
          FROM walk w JOIN state_transitions t ON t.from_state = w.at
         WHERE t.to_state IS NOT NULL AND w.at <> 'revoked' AND NOT t.to_state = ANY (w.steps)
    )
    SELECT w.steps INTO path FROM walk w WHERE w.at = target ORDER BY cardinality(w.steps) LIMIT 1;
    IF path IS NULL THEN
        PERFORM raise_error('SP020', format('instance %s cannot go from %s to %s along the state machine',
                inst, this.state, target), 'see SELECT * FROM pki.state_transitions');
    END IF;
    FOREACH step IN ARRAY path LOOP
        UPDATE certinstances ci SET state = step WHERE ci.id = inst;
    END LOOP;
    imported_instance := inst;
    imported_state := target;
    RETURN NEXT;
END
$$;
