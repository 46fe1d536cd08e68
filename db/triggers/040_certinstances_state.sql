-- 040_certinstances_state: the state machine's guard and its history.
-- A change of certinstances.state is allowed only along pki.state_transitions;
-- every transition appends to pki.events with the reason and job of its context.

-- set_context: the reason and job that the next transitions of this transaction are recorded
-- with. It writes pki.event_context, which only the owner may write: the functions that change
-- states (SECURITY DEFINER) call it; no role may, so nobody can forge an event's reason or job.
-- PL/pgSQL, as event_reason: planned once a session (a SQL function with SET is planned at each call,
-- and these run once per job and per transition)
CREATE OR REPLACE FUNCTION pki.set_context(reason text, job bigint DEFAULT NULL)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    INSERT INTO pki.event_context AS c (backend_pid, xact, reason, job)
    VALUES (pg_backend_pid(), pg_current_xact_id(), coalesce(set_context.reason, ''), set_context.job)
    ON CONFLICT (backend_pid) DO UPDATE SET xact = EXCLUDED.xact, reason = EXCLUDED.reason, job = EXCLUDED.job;
END
$$;

-- event_reason: the context set_context wrote in this transaction (none: NULL)
CREATE OR REPLACE FUNCTION pki.event_reason(OUT reason text, OUT job bigint)
LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    SELECT nullif(c.reason, ''), c.job INTO event_reason.reason, event_reason.job FROM pki.event_context c
     WHERE c.backend_pid = pg_backend_pid() AND c.xact = pg_current_xact_id_if_assigned();
END
$$;

-- guard_instance_state: refuse every change not in state_transitions, naming both states
CREATE OR REPLACE FUNCTION pki.guard_instance_state()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    from_s dd.cert_state;
    to_s dd.cert_state;
    inst_id int;
    ttl interval;
BEGIN
    IF TG_OP = 'INSERT' THEN
        from_s := NULL; to_s := NEW.state; inst_id := NEW.id;
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.state = OLD.state THEN
            RETURN NEW;
        END IF;
        from_s := OLD.state; to_s := NEW.state; inst_id := OLD.id;
    ELSE
        -- remove_cert: the instances go with their certificate
        IF NOT EXISTS (SELECT 1 FROM certificates c WHERE c.id = OLD.certificate) THEN
            RETURN OLD;
        END IF;
        from_s := OLD.state; to_s := NULL; inst_id := OLD.id;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM state_transitions st
                    WHERE st.from_state IS NOT DISTINCT FROM from_s AND st.to_state IS NOT DISTINCT FROM to_s) THEN
        PERFORM raise_error('SP020', format('instance %s: %s -> %s is not an allowed transition', inst_id,
                coalesce(from_s::text, '(none)'), coalesce(to_s::text, '(deleted)')),
            'see SELECT * FROM state_transitions; state changes are made by the scheduler and the job functions');
    END IF;
    -- DANE-safe order: a successor goes live only after its TLSA records were published for 2 x TTL,
    -- unless a distribution the operator asked for with -N (no TLSA changes: DNS is theirs) promotes it;
    -- the job comes from event_context, which only the owner's functions write
    IF to_s = 'deployed' THEN
        ttl := tlsa_ttl(NEW.certificate);
        IF ttl IS NOT NULL AND EXISTS (SELECT 1 FROM certinstances o WHERE o.certificate = NEW.certificate
                                        AND o.state = 'deployed' AND o.id <> NEW.id)
           AND (NEW.tlsa_published IS NULL OR pki.now() < dane_safe_after(NEW.tlsa_published, ttl))
           AND NOT coalesce((SELECT (j.args ->> 'no_tlsa')::boolean FROM jobs j
                              WHERE j.id = (event_reason()).job AND j.kind = 'distribute' AND j.instance = NEW.id), false) THEN
            PERFORM raise_error('SP021', format('instance %s cannot be deployed yet: its TLSA records %s', NEW.id,
                    CASE WHEN NEW.tlsa_published IS NULL THEN 'are not published'
                         ELSE format('were published at %s, deploy after %s', NEW.tlsa_published, dane_safe_after(NEW.tlsa_published, ttl)) END),
                'let the scheduler prepublish the TLSA records and wait twice their TTL');
        END IF;
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
DROP TRIGGER IF EXISTS guard_instance_state ON pki.certinstances;
CREATE TRIGGER guard_instance_state BEFORE INSERT OR UPDATE OF state OR DELETE ON pki.certinstances
    FOR EACH ROW EXECUTE FUNCTION pki.guard_instance_state();

-- record_transition: append the transition to the history
CREATE OR REPLACE FUNCTION pki.record_transition()
RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER  -- events: writable by the owner only, even when an admin's remove_cert cascades
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    why text;
    job_id bigint;
BEGIN
    SELECT c.reason, c.job INTO why, job_id FROM event_reason() c;
    why := coalesce(why, 'changed directly by ' || session_user);
    IF TG_OP = 'INSERT' THEN
        INSERT INTO events (at, instance, certificate, from_state, to_state, job, reason)
        VALUES (pki.now(), NEW.id, NEW.certificate, NULL, NEW.state, job_id, why);
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.state <> OLD.state THEN
            INSERT INTO events (at, instance, certificate, from_state, to_state, job, reason)
            VALUES (pki.now(), NEW.id, NEW.certificate, OLD.state, NEW.state, job_id, why);
        END IF;
    ELSE
        INSERT INTO events (at, instance, certificate, from_state, to_state, job, reason)
        VALUES (pki.now(), OLD.id, OLD.certificate, OLD.state, NULL, job_id, why);
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS record_transition ON pki.certinstances;
CREATE TRIGGER record_transition AFTER INSERT OR UPDATE OF state OR DELETE ON pki.certinstances
    FOR EACH ROW EXECUTE FUNCTION pki.record_transition();

-- events are history: nobody but the owner changes them (privileges), and not even
-- the owner by accident (this trigger; the owner may disable it deliberately)
CREATE OR REPLACE FUNCTION pki.events_append_only()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM raise_error('SP012', CASE WHEN TG_OP = 'TRUNCATE' THEN 'events are append-only; truncate refused'
            ELSE format('events are append-only; %s of event %s refused', lower(TG_OP), OLD.id) END,
        'history is kept as written; add a new event instead');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS events_append_only ON pki.events;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON pki.events
    FOR EACH ROW EXECUTE FUNCTION pki.events_append_only();
-- TRUNCATE fires no row trigger: this statement trigger refuses the owner's TRUNCATE as the one above its DELETE
DROP TRIGGER IF EXISTS events_no_truncate ON pki.events;
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON pki.events
    FOR EACH STATEMENT EXECUTE FUNCTION pki.events_append_only();

-- notify_jobs: wake long-running agents when work is enqueued (one NOTIFY per statement)
CREATE OR REPLACE FUNCTION pki.notify_jobs()
RETURNS trigger LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('pki_jobs', 'enqueued');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS notify_jobs ON pki.jobs;
CREATE TRIGGER notify_jobs AFTER INSERT ON pki.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pki.notify_jobs();
