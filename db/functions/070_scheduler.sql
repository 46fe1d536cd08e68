-- 070_scheduler: one scheduler pass (docs/lifecycle.md), set-based. plan_rows decides
-- for all selected certificates in one query; plan shows it; schedule applies
-- exactly those rows with one statement per kind of action.

-- plan_rows: every action of one pass, with the reason; writes nothing. Linear in the certificates,
-- their instances and jobs whatever the mix: each fact is computed once per row (grouped aggregates,
-- not window functions: no sort of the instances) and no CTE is tested per row of another (NOT IN,
-- correlated EXISTS), so no plan grows as N x M however wrong the planner's estimates: every join here
-- is a bulk join of whole sets, so no nested loop (a CTE scanned once per row of another when an
-- estimate says 1 row); and no JIT: compiling this query took 0.95 s at 5,000 certificates, running it
-- 0.05 s. PL/pgSQL for its plan: planned for the selection at hand (a custom plan, forced), the
-- selection's conditions fold away and the planner knows how many certificates it works on (a SQL
-- function is planned with the selection unknown: 500 rows of 100,000). Only the certificates that a
-- rule may act on in this pass (due) go through the rules of the certificate: 0.1 s of 0.8 s at
-- 100,000 certificates, in a settled fleet. The instances are read in one grouped pass (c), which
-- gives each certificate's rules all they need of its instances (its successor, what it has left);
-- rules 1, 3 and 4 then look only at the instances they may act on, a few (c picks a certificate's
-- leftovers in that pass). The nested loops left are each row's decision (LATERAL ... OFFSET 0: one row
-- per row, evaluated once; pulled up into the query, its CASE and format() calls ran once per reference
-- to it, three times) and the unnest of those leftovers. Merge joins and sorted grouping, not hash
-- joins or hashed aggregates (enable_hashjoin, enable_hashagg off): c reads the certificates, their main
-- subjects and instances in certificate order (their indexes), groups the TLSA services sorted once and
-- joins them, the targets and the failed jobs in that order, where three hash tables of 100,000 rows, built and
-- probed in random order, cost 15-20% of the whole at 100,000 certificates; the joins after c are of a
-- few rows, or of rows that arrive in certificate order (a sort of sorted input is one pass).
-- The IN lookups (hashed SubPlans) stay hashed
CREATE OR REPLACE FUNCTION pki.plan_rows(sel dd.selection)
RETURNS TABLE (certificate_id int, certificate text, instance int, action text, reason text, then_action text)
LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
SET enable_nestloop = off
SET enable_hashjoin = off   -- merge joins (see above)
SET enable_hashagg = off
SET jit = off
SET plan_cache_mode = force_custom_plan
SET work_mem = '64MB'   -- its sorts and hashes in memory up to about 200,000 instances
AS $$
BEGIN
RETURN QUERY
WITH cfg AS (
    SELECT pki.now() AS now,
           setting_int('pre_publish_days') * interval '1 day' AS pre_publish,
           setting_int('local_issue_mail_days') * interval '1 day' AS mail_days,
           setting_interval('expire_grace') AS grace
), horizon AS (   -- how long before its end a rule below may act on a certificate: the longest of their windows,
                  -- as a time span no shorter than any of them is on the calendar (a month may have 31 days,
                  -- a day 25 hours), so due is never later than a rule, and comparing costs no calendar arithmetic
    SELECT pg_catalog.make_interval(secs => greatest(0, max(extract(epoch FROM w) + 86400 * (12 * extract(year FROM w) + extract(month FROM w)) + 7200))) AS span
      FROM cfg CROSS JOIN LATERAL (VALUES (cfg.grace), (cfg.mail_days), (cfg.pre_publish)) v(w)
), hosts AS MATERIALIZED (   -- the disthosts that distribution may go to (-s, -l)
    SELECT d.id FROM disthosts d WHERE host_selected(sel, d.fqdn)
), c AS MATERIALIZED (   -- the selection; disabled is the certificate's own flag: -a and -i do not lift it here (rule 6)
    -- With each certificate's newest instance of each state, which rule 1 keeps (the active instance is the newest
    -- deployed one), and what rules 3 and 4 say of its newest issued and prepublished ones: all a certificate's
    -- rules need of its instances, in ONE grouped pass over the table (not window functions: no sort; no join
    -- back from the instances to their certificate), so the planner's estimates start from the table's statistics
    -- the flags that judged's branches filter c by first, the text and arrays last: a scan of c takes apart each
    -- row's columns up to the last one it reads
    SELECT cfg.now >= x.iss_na + cfg.grace AS iss_expiring,
           cfg.now >= x.pp_na + cfg.grace AS pp_expiring,
           -- rule 4 (the margin is capped to a third of the lifetime, for short-lived certificates). Without an
           -- issued instance false at once (a NULL term lets AND go on: it computed the margins for every certificate)
           (x.iss_na IS NOT NULL AND x.act_id IS NOT NULL AND NOT cfg.now >= x.iss_na + cfg.grace
            AND x.iss_na < x.act_na + least(cfg.mail_days, (x.act_na - x.act_nb) / 3)
            -- LE: only when a new one would do better; when the CA has shortened its lifetimes,
            -- deleting it would make every pass issue another useless one
            AND (x.type = 'local' OR cfg.now + (x.iss_na - x.iss_nb) >= x.act_na + least(cfg.mail_days, (x.act_na - x.act_nb) / 3))) IS TRUE AS iss_useless,
           x.*
      FROM (SELECT n.deployed > 1 OR n.issued > 1 OR n.prepublished > 1 AS older,   -- rule 1 has older instances to delete
                   sc.id, sc.type, sc.disabled, sc.authorized_until, sc.tlsa_ttl, sc.tlsa_ee,   -- what the rules read
                   n.act_id, n.issued_id, n.prepub_id, n.expired_id, n.exp_revoking_id, n.revoking,
                   tg.certificate IS NOT NULL AS has_targets,   -- a target on a selected disthost
                   -- the dates of the newest instance of a state: the one's when it is the only one (rule 1 sees
                   -- to that), else looked up
                   CASE WHEN coalesce(n.deployed, 0) <= 1 THEN n.act_nb1 ELSE (SELECT a.not_before FROM certinstances a WHERE a.id = n.act_id) END AS act_nb,
                   CASE WHEN coalesce(n.deployed, 0) <= 1 THEN n.act_na1 ELSE (SELECT a.not_after FROM certinstances a WHERE a.id = n.act_id) END AS act_na,
                   CASE WHEN coalesce(n.issued, 0) <= 1 THEN n.iss_nb1 ELSE (SELECT a.not_before FROM certinstances a WHERE a.id = n.issued_id) END AS iss_nb,
                   CASE WHEN coalesce(n.issued, 0) <= 1 THEN n.iss_na1 ELSE (SELECT a.not_after FROM certinstances a WHERE a.id = n.issued_id) END AS iss_na,
                   CASE WHEN coalesce(n.issued, 0) <= 1 THEN n.iss_pub1 ELSE (SELECT a.tlsa_published FROM certinstances a WHERE a.id = n.issued_id) END AS iss_published,
                   CASE WHEN coalesce(n.prepublished, 0) <= 1 THEN n.pp_na1 ELSE (SELECT a.not_after FROM certinstances a WHERE a.id = n.prepub_id) END AS pp_na,
                   CASE WHEN coalesce(n.prepublished, 0) <= 1 THEN n.pp_pub1 ELSE (SELECT a.tlsa_published FROM certinstances a WHERE a.id = n.prepub_id) END AS pp_published,
                   sc.name, n.leftover_ids, n.leftover_states, tr.errors
              FROM selected_certs(sel) sc
              LEFT JOIN (SELECT ci.certificate,
                                max(ci.id) FILTER (WHERE ci.state = 'deployed') AS act_id,
                                count(*) FILTER (WHERE ci.state = 'deployed') AS deployed,
                                max(ci.not_before) FILTER (WHERE ci.state = 'deployed') AS act_nb1,
                                max(ci.not_after) FILTER (WHERE ci.state = 'deployed') AS act_na1,
                                max(ci.id) FILTER (WHERE ci.state = 'issued') AS issued_id,
                                count(*) FILTER (WHERE ci.state = 'issued') AS issued,
                                max(ci.not_before) FILTER (WHERE ci.state = 'issued') AS iss_nb1,
                                max(ci.not_after) FILTER (WHERE ci.state = 'issued') AS iss_na1,
                                max(ci.tlsa_published) FILTER (WHERE ci.state = 'issued') AS iss_pub1,
                                max(ci.id) FILTER (WHERE ci.state = 'prepublished') AS prepub_id,
                                count(*) FILTER (WHERE ci.state = 'prepublished') AS prepublished,
                                max(ci.not_after) FILTER (WHERE ci.state = 'prepublished') AS pp_na1,
                                max(ci.tlsa_published) FILTER (WHERE ci.state = 'prepublished') AS pp_pub1,
                                max(ci.id) FILTER (WHERE ci.state = 'expired') AS expired_id,
                                -- rule 3 archives an expired or revoked instance once its revocation reached the CA
                                max(ci.id) FILTER (WHERE ci.state = 'expired' AND ci.revocation_pending) AS exp_revoking_id,
                                bool_or(ci.state = 'revoked' AND ci.revocation_pending) AS revoking,
                                -- the instances neither deployed nor a successor (judged below, by rules 1 and 3: a few),
                                -- picked in this pass, not by a second one over the instances joined to c (c sorted again)
                                array_agg(ci.id) FILTER (WHERE ci.state NOT IN ('deployed', 'issued', 'prepublished')) AS leftover_ids,
                                array_agg(ci.state) FILTER (WHERE ci.state NOT IN ('deployed', 'issued', 'prepublished')) AS leftover_states
                           -- in certificate order (their index), not sorted for it: a revocation not done yet is
                           -- looked up (hashed IN, a few), not merge joined by instance (which wanted them in id order;
                           -- the sort cost 3% at 100,000 certificates). No NULL in the set: IN would be NULL, not false
                           FROM (SELECT i.*, i.id IN (SELECT r.instance FROM revocations r
                                                       WHERE r.done_at IS NULL AND r.instance IS NOT NULL) AS revocation_pending
                                   FROM certinstances i) ci
                          GROUP BY ci.certificate) n ON n.certificate = sc.id
              -- partial failure: a wait on failed jobs shows their errors. Joined here, where the certificates
              -- arrive in order (a merge join of a few rows), not to the rows decided below (sorted again for it)
              LEFT JOIN (SELECT j.certificate,
                                string_agg(format('%s job %s%s failed (attempt %s of %s): %s; next attempt at %s', j.kind, j.id,
                                                  ' to ' || d.fqdn, j.attempts, j.max_attempts, j.last_error, j.run_after), '; ' ORDER BY j.id) AS errors
                           FROM jobs j LEFT JOIN disthosts d ON d.id = j.disthost
                          WHERE j.state = 'failed'
                          GROUP BY j.certificate) tr ON tr.certificate = sc.id
              -- the certificates with a target on a selected disthost, in their order (a hashed set of the targets
              -- asked per due certificate cost 7% at 100,000 certificates). Without -s/-l every disthost is selected:
              -- their index alone, in certificate order (the planner drops the branch its selection rules out; the
              -- join to the disthosts wants the targets in disthost order, sorted again: 5% of rollover's plan)
              LEFT JOIN (SELECT DISTINCT t.certificate FROM targets t
                          WHERE cardinality(coalesce(sel.only_hosts, '{}')) = 0 AND cardinality(coalesce(sel.skip_hosts, '{}')) = 0
                         UNION ALL
                         SELECT DISTINCT t.certificate FROM targets t
                          WHERE NOT (cardinality(coalesce(sel.only_hosts, '{}')) = 0 AND cardinality(coalesce(sel.skip_hosts, '{}')) = 0)
                            AND t.disthost IN (SELECT h.id FROM hosts h)) tg
                ON tg.certificate = sc.id) x
      CROSS JOIN cfg
), pending AS MATERIALIZED (   -- active jobs of the selected certificates
    SELECT j.certificate, j.instance, j.kind, j.id, j.state, j.disthost, j.attempts, j.max_attempts, j.run_after, j.last_error
      FROM jobs j JOIN c ON c.id = j.certificate
     WHERE j.state IN ('queued', 'running', 'failed')
), requested AS (      -- successors that -D asked to deploy: request_distribute marks its publish_tlsa job
    SELECT DISTINCT j.certificate, (j.args ->> 'deploy')::int AS id
      FROM jobs j JOIN c ON c.id = j.certificate
     WHERE j.kind = 'publish_tlsa' AND j.args ? 'deploy' AND j.state <> 'dead'
), on_instance AS (    -- the pending jobs of each instance, one row per instance
    SELECT p.instance, bool_or(p.kind LIKE 'issue%') AS issuing, bool_or(p.kind = 'distribute') AS distributing
      FROM pending p WHERE p.instance IS NOT NULL GROUP BY p.instance
), on_cert AS (        -- and of each certificate
    SELECT p.certificate, bool_or(p.kind = 'publish_tlsa') AS tlsa_pending FROM pending p GROUP BY p.certificate
), judged AS (        -- the instances that rule 1, 3 or 4 may act on (a few of them: the rules of the certificate
                        -- below take what they need of the others from c), with what these rules say of each
    SELECT a.*,
           -- rule 1: why it goes (NULL: it stays, it is alive)
           CASE WHEN a.state = 'reserved' AND NOT a.issuing THEN 'rule 1: reserved, and no issue job is pending'
                WHEN a.state = 'archived' THEN 'rule 1: archived in an earlier run'
                WHEN a.id <> CASE a.state WHEN 'deployed' THEN a.act_id WHEN 'issued' THEN a.issued_id
                                          WHEN 'prepublished' THEN a.prepub_id WHEN 'expired' THEN a.expired_id END
                    THEN format('rule 1: an older %s instance (a newer one exists)', a.state) END AS cleanup_why,
           -- rule 3, first half (and revoked ones, once their revocation reached the CA: --revoke retries it)
           a.state IN ('expired', 'revoked')
               AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.instance = a.id AND r.done_at IS NULL) AS archiving,
           -- rule 3, second half
           a.state IN ('issued', 'prepublished') AND cfg.now >= a.not_after + cfg.grace AS expiring,
           -- rule 4, decided in c for the newest issued instance (an older one goes by rule 1)
           CASE WHEN a.state = 'issued' AND a.id = a.issued_id AND a.iss_useless
               THEN format('rule 4: successor expires %s, too soon after the active instance (%s)', a.not_after, a.act_na) END AS useless_why
      FROM (SELECT ci.*, coalesce(ci.id IN (SELECT oi.instance FROM on_instance oi WHERE oi.issuing), false) AS issuing
              FROM (   -- a certificate without older instances: its leftovers (c picked them), and its successors
                       -- that rule 3 or 4 takes (as c has them); its deployed instance is not judged (it is the
                       -- active one, past its end too: rules 7 and 9 below replace it)
                    SELECT u.id, c.id AS certificate, c.name, u.state, NULL::timestamptz AS not_after,
                           c.act_id, c.act_na, c.issued_id, c.prepub_id, c.expired_id, c.iss_useless
                      FROM c CROSS JOIN LATERAL unnest(c.leftover_ids, c.leftover_states) u(id, state)
                     WHERE c.leftover_ids IS NOT NULL AND c.older IS NOT TRUE
                    UNION ALL   -- the issued successor: useless (rule 4) or past its end (rule 3)
                    SELECT c.issued_id, c.id, c.name, 'issued', c.iss_na,
                           c.act_id, c.act_na, c.issued_id, c.prepub_id, c.expired_id, c.iss_useless
                      FROM c WHERE (c.iss_useless OR c.iss_expiring) AND c.older IS NOT TRUE
                    UNION ALL   -- the prepublished one past its end (rule 3)
                    SELECT c.prepub_id, c.id, c.name, 'prepublished', c.pp_na,
                           c.act_id, c.act_na, c.issued_id, c.prepub_id, c.expired_id, c.iss_useless
                      FROM c WHERE c.pp_expiring AND c.older IS NOT TRUE
                    UNION ALL   -- every instance of a certificate with older instances (rule 1: a few certificates)
                    SELECT ci.id, ci.certificate, c.name, ci.state, ci.not_after,
                           c.act_id, c.act_na, c.issued_id, c.prepub_id, c.expired_id, c.iss_useless
                      FROM certinstances ci JOIN c ON c.id = ci.certificate AND c.older) ci) a
      CROSS JOIN cfg
), due AS (   -- the certificates a rule below may act on in this pass (most of a settled fleet is not: rules 1, 3
              -- and 4 above are all it needs), with their active instance. Each rule below needs one of: no active
              -- instance, a -D request, or the active instance within expire_grace (rule 7), local_issue_mail_days
              -- (rule 5) or rule 9's window of its end, or past it. Read once, by st (not stored: sd is)
    -- only what the rules below read: their rows are scanned once per rule
    SELECT s.id, s.type, s.disabled, s.authorized_until, s.tlsa_ttl, s.tlsa_ee,
           s.active_id, s.act_nb, s.act_na, s.succ_id, s.has_left, s.has_targets,
           CASE WHEN s.prepub_ok THEN 'prepublished' WHEN s.issued_ok THEN 'issued' END::cert_state AS succ_state,
           CASE WHEN s.prepub_ok THEN s.pp_published WHEN s.issued_ok THEN s.iss_published END AS succ_published,
           s.name, s.errors   -- the text last (as in c)
      FROM (SELECT c.*, c.act_id AS active_id,
                   -- the successor (rule 7): the prepublished instance, else the issued one, unless rule 3 or 4 takes it
                   CASE WHEN c.pp_expiring IS FALSE THEN c.prepub_id
                        WHEN c.iss_expiring IS FALSE AND NOT c.iss_useless THEN c.issued_id END AS succ_id,
                   c.pp_expiring IS FALSE AS prepub_ok,
                   c.iss_expiring IS FALSE AND NOT c.iss_useless AS issued_ok,
                   -- what the certificate has left after rules 1 and 3 (rule 2: nothing)
                   coalesce(c.act_id IS NOT NULL OR NOT c.iss_expiring OR NOT c.pp_expiring
                            OR c.expired_id = c.exp_revoking_id OR c.revoking, false) AS has_left
              FROM c CROSS JOIN cfg
             WHERE c.act_id IS NULL
                OR cfg.now >= c.act_na - (SELECT h.span FROM horizon h)
                OR c.id IN (SELECT r.certificate FROM requested r)) s
), reserving AS (       -- the certificates with a reserved instance whose issue job is pending
    SELECT DISTINCT ci.certificate FROM certinstances ci JOIN on_instance oi ON oi.instance = ci.id
     WHERE ci.state = 'reserved' AND oi.issuing
), reusing AS (         -- the instances that kept a key of their predecessor (key reuse, 125_key_reuse)
    SELECT DISTINCT k.certinstance FROM certkeydata k WHERE k.key_renewals > 0
), st AS (              -- one row per certificate with its roles
    SELECT cfg.*,   -- the fixed-width columns first, the text last (see c)
           -- each a lookup in a hashed set (IN), not a join: joined, the planner's guess of these sets' sizes
           -- (unknown, for a CTE) multiplied the rows it expected, and it sorted the due certificates for
           -- merge joins, twice. coalesce: IN is NULL, not false, for a NULL successor
           coalesce(c.id IN (SELECT rs.certificate FROM reserving rs), false) AS issuing,
           coalesce(c.succ_id IN (SELECT oi.instance FROM on_instance oi WHERE oi.distributing), false) AS succ_distributing,
           coalesce(c.id IN (SELECT oc.certificate FROM on_cert oc WHERE oc.tlsa_pending), false) AS tlsa_pending,
           coalesce(c.succ_id IN (SELECT rq.id FROM requested rq), false) AS succ_requested,
           coalesce(sel.no_tlsa, false) AS no_tlsa,
           -- may the TLSA records stay as they are? Only a successor that kept the key, or one whose records
           -- are all trust-anchor ones (usage 0/2), can keep them; tlsa_unchanged (125_key_reuse, which
           -- hashes certificates: 2 ms) is asked only for those, and only where rule 7 or 9 decides
           c.tlsa_ttl IS NOT NULL AND c.active_id IS NOT NULL AND c.succ_id IS NOT NULL
               AND (coalesce(c.succ_id IN (SELECT ru.certinstance FROM reusing ru), false) OR NOT c.tlsa_ee) AS tlsa_same_possible,
           c.*
      FROM due c CROSS JOIN cfg
), sd AS (              -- what the DANE-safe order allows
    SELECT -- rule 7 is due: nothing active, the active instance is about to expire, or -D asked for the successor
           st.active_id IS NULL OR st.now >= st.act_na - st.grace AS replace_due,   -- first: what the rules filter by
           -- the successor may go live: nothing to roll over from, no TLSA services, or published for 2 x TTL
           dane_ok(st.active_id IS NOT NULL, st.tlsa_ttl, st.succ_state, st.succ_published, st.now) AS dane_ok,
           -- -N: the operator takes over DNS; the rollover goes on without TLSA changes and without the wait
           st.no_tlsa AND st.tlsa_ttl IS NOT NULL AND st.active_id IS NOT NULL AS dane_off,
           st.*
      FROM st
), decided AS (
    -- rule 5: the reminder for a local certificate (before rule 6: disabled ones are reminded too, marked so)
    SELECT sd.id, sd.name, sd.active_id AS inst, 'remind' AS action,
           format('rule 5: active instance expires %s; mail a reminder to issue its successor (-C)%s', sd.act_na,
                  CASE WHEN sd.disabled THEN ' [DISABLED]' ELSE '' END) AS why, NULL AS then_action,
           false AS on_jobs, NULL AS errors, false AS skipped
      FROM sd
     WHERE sd.type = 'local' AND sd.active_id IS NOT NULL AND sd.authorized_until IS NULL
       AND sd.now >= sd.act_na - sd.mail_days
    UNION ALL
    -- rules 2 and 7: nothing deployed, or the active instance is about to expire, or -D asked for the
    -- successor: replace it (rule 6: a disabled certificate only shows what would be due, as 'skip')
    SELECT sd.id, sd.name,
           CASE WHEN sd.succ_id IS NOT NULL THEN sd.succ_id ELSE sd.active_id END,
           r.d[1], r.d[2],
           CASE WHEN sd.succ_id IS NULL AND sd.type = 'LE'
                THEN CASE WHEN sd.active_id IS NULL OR sd.tlsa_ttl IS NULL OR sd.no_tlsa THEN 'distribute' ELSE 'prepublish' END END,
           sd.issuing OR sd.succ_distributing OR sd.tlsa_pending, sd.errors,
           sd.disabled
      FROM sd
      -- one decision: each branch gives the action and its reason, {action, reason}
      CROSS JOIN LATERAL (SELECT CASE
           WHEN sd.issuing THEN ARRAY['wait', 'rule 7: an issue job is pending']
           WHEN sd.succ_id IS NULL AND sd.type = 'local' AND sd.active_id IS NULL AND NOT sd.has_left
               THEN ARRAY['wait', 'rule 2: nothing left; local certificates are issued on request only (operate_serverPKI -C)']
           WHEN sd.succ_id IS NULL AND sd.type = 'local'
               THEN ARRAY['wait', format('rule 7: active instance expires %s; local certificates are issued on request only (-C)', sd.act_na)]
           WHEN sd.succ_id IS NULL AND sd.active_id IS NULL AND NOT sd.has_left
               THEN ARRAY['issue', 'rule 2: nothing left; issue one and distribute it']
           WHEN sd.succ_id IS NULL AND sd.active_id IS NULL THEN ARRAY['issue', 'rule 7: no active instance; issue one and distribute it']
           WHEN sd.succ_id IS NULL
               THEN ARRAY['issue', format('rule 7: active instance expires %s and there is no successor; issue one', sd.act_na)]
           WHEN sd.succ_distributing THEN ARRAY['wait', 'rule 7: the successor''s distribution is pending']
           WHEN NOT sd.has_targets AND (sd.dane_ok OR sd.dane_off)
               THEN ARRAY['wait', 'rule 7: the successor is ready, but none of the certificate''s targets is on a selected disthost (-s/-l)']
           -- below, with a successor: no active instance or no TLSA service makes dane_ok true
           WHEN sd.active_id IS NULL THEN ARRAY['distribute', 'rule 7: no active instance; distribute the successor']
           WHEN sd.tlsa_ttl IS NULL
               THEN ARRAY['distribute', format('rule 7: active instance expires %s; distribute the successor', sd.act_na)]
           WHEN sd.tlsa_same_possible AND NOT sd.tlsa_pending AND tlsa_unchanged(sd.active_id, sd.succ_id)   -- a pending publication may change DNS: wait for it
               THEN ARRAY['distribute', format('rule 7: %s; key reused, the TLSA records do not change; distribute the successor without the DANE-safe wait',
                           CASE WHEN sd.replace_due THEN format('active instance expires %s', sd.act_na) ELSE 'requested (-D)' END)]
           WHEN sd.dane_ok AND NOT sd.replace_due
               THEN ARRAY['distribute', format('rule 7: requested (-D): successor''s TLSA published %s (2 x TTL ago); distribute it', sd.succ_published)]
           WHEN sd.dane_ok
               THEN ARRAY['distribute', format('rule 7: active instance expires %s; successor''s TLSA published %s (2 x TTL ago); distribute it', sd.act_na, sd.succ_published)]
           WHEN sd.dane_off
               THEN ARRAY['distribute', format('rule 7: %s; -N: distribute the successor without the DANE-safe wait',
                           CASE WHEN sd.replace_due THEN format('active instance expires %s', sd.act_na) ELSE 'requested (-D)' END)]
           WHEN sd.succ_state = 'prepublished'
               THEN ARRAY['wait', format('DANE-safe order: %ssuccessor''s TLSA published %s; deploy after %s',
                           CASE WHEN sd.replace_due THEN '' ELSE 'requested (-D): ' END, sd.succ_published, dane_safe_after(sd.succ_published, sd.tlsa_ttl))]
           WHEN sd.tlsa_pending
               THEN ARRAY['wait', format('DANE-safe order: %sthe successor''s TLSA publication is pending; deploy after its TLSA records are published and 2 x TTL has passed, about %s',
                           CASE WHEN sd.replace_due THEN '' ELSE 'requested (-D): ' END, dane_safe_after(sd.now, sd.tlsa_ttl))]
           -- the successor is 'issued' here (cand: issued or prepublished)
           ELSE ARRAY['prepublish', 'rule 7: DANE-safe order: publish the successor''s TLSA before deploying it']
      END OFFSET 0) r(d)   -- OFFSET 0: decided once per row (pulled up, the CASE and its format() calls ran once per reference)
     WHERE sd.replace_due OR sd.succ_requested
    UNION ALL
    -- rule 9: prepublish the successor of an LE certificate (-N: only issue it; the warning below says why)
    SELECT sd.id, sd.name, coalesce(sd.succ_id, sd.active_id), r.d[1], r.d[2],
           CASE WHEN sd.succ_id IS NULL THEN CASE WHEN sd.tlsa_ttl IS NULL OR sd.no_tlsa THEN NULL ELSE 'prepublish' END END,
           sd.issuing OR sd.tlsa_pending, sd.errors,
           sd.disabled
      FROM sd
      CROSS JOIN LATERAL (SELECT CASE   -- {action, reason}, as above
           WHEN sd.issuing THEN ARRAY['wait', 'rule 9: an issue job for the successor is pending']
           WHEN sd.tlsa_pending THEN ARRAY['wait', 'rule 9: the successor''s TLSA publication is pending']
           WHEN sd.succ_id IS NULL
               THEN ARRAY['issue', format('rule 9: active instance expires %s (within pre_publish_days); issue a successor', sd.act_na)]
           WHEN sd.tlsa_same_possible AND tlsa_unchanged(sd.active_id, sd.succ_id)   -- nothing to prepublish: rule 7 deploys it when due, without the DANE-safe wait
               THEN ARRAY['wait', format('rule 9: key reused, the TLSA records do not change; nothing to prepublish, the successor is deployed from %s', sd.act_na - sd.grace)]
           WHEN sd.tlsa_ttl IS NULL OR sd.no_tlsa THEN NULL   -- nothing to prepublish: no row
           ELSE ARRAY['prepublish', format('rule 9: active instance expires %s; publish the TLSA of active and successor', sd.act_na)]
      END OFFSET 0) r(d)
     WHERE sd.type = 'LE' AND NOT sd.replace_due AND NOT sd.succ_requested
       AND sd.now >= sd.act_na - least(sd.pre_publish, (sd.act_na - sd.act_nb) / 3)
       AND sd.succ_state IS DISTINCT FROM 'prepublished'
    UNION ALL
    -- -N: the rollover of a certificate with TLSA services goes on without TLSA changes; say so on every run
    SELECT sd.id, sd.name, coalesce(sd.succ_id, sd.active_id), 'warn',
           format('-N (no TLSA changes): the TLSA records of %s are left as they are; its successor is deployed %s '
                  'without waiting for its TLSA records (DANE-safe order off): DNS is the operator''s '
                  '(publish them yourself, or run operate_serverPKI -T without -N)',
                  sd.name, CASE WHEN sd.replace_due OR sd.succ_requested THEN 'now' ELSE format('from %s', sd.act_na - sd.grace) END),
           NULL, false, NULL, false
      FROM sd
     WHERE sd.dane_off AND NOT sd.disabled
       AND (sd.replace_due OR sd.succ_requested
            OR (sd.type = 'LE' AND sd.now >= sd.act_na - least(sd.pre_publish, (sd.act_na - sd.act_nb) / 3)))
    UNION ALL
    -- no flag leaves an active instance in service past its not_after unsaid
    SELECT sd.id, sd.name, sd.active_id, 'overdue',
           format('active instance %s expired %s and is still in service: %s', sd.active_id, sd.act_na,
                  CASE WHEN sd.disabled
                           THEN format('the certificate is disabled, the scheduler does not replace it '
                                       '(operate_serverPKI -C -o %1$s -i %1$s, then -D -o %1$s -i %1$s; or enable_cert)', sd.name)
                       WHEN sd.type = 'local' AND sd.succ_id IS NULL AND NOT sd.issuing
                           THEN format('local certificates are issued on request only (operate_serverPKI -C -o %s)', sd.name)
                       ELSE 'its successor is not deployed yet (see the other rows of this certificate)' END),
           NULL, false, NULL, false
      FROM sd
     WHERE sd.active_id IS NOT NULL AND sd.now >= sd.act_na
)
SELECT x.certificate, x.name, x.inst, x.action, x.why, x.then_action
  FROM (
    -- rules 1, 3 and 4, in one pass over the instances (an instance meets at most one of them)
    SELECT a.certificate, a.name, a.id AS inst, r.d[1] AS action, r.d[2] AS why, NULL AS then_action
      FROM judged a
      CROSS JOIN LATERAL (SELECT CASE   -- {action, reason}
           WHEN a.cleanup_why IS NOT NULL THEN ARRAY['delete', a.cleanup_why]
           WHEN a.useless_why IS NOT NULL THEN ARRAY['delete', a.useless_why]
           WHEN a.archiving THEN ARRAY['archive', format('rule 3: %s in an earlier run', a.state)]
           WHEN a.expiring THEN ARRAY['expire', format('rule 3: not deployed and not_after %s + expire_grace has passed', a.not_after)]
      END OFFSET 0) r(d)
     WHERE r.d IS NOT NULL
    UNION ALL
    SELECT d.id, d.name, d.inst, r.d[1], r.d[2], r.d[3]
      FROM decided d
      CROSS JOIN LATERAL (SELECT CASE   -- rule 6 or the decision: {action, reason, what follows} together
           WHEN d.skipped
               THEN ARRAY['skip', format('rule 6: the certificate is disabled; the scheduler leaves it alone, even with -a or -i '
                                         '(enabled it would %s: %s)', d.action, d.why), NULL]
           ELSE ARRAY[d.action, CASE WHEN d.action = 'wait' AND d.on_jobs AND d.errors IS NOT NULL
                                     THEN d.why || ' (' || d.errors || ')' ELSE d.why END, d.then_action]
      END OFFSET 0) r(d)
     WHERE d.action IS NOT NULL
  ) x(certificate, name, inst, action, why, then_action)
 ORDER BY x.name, x.inst NULLS LAST, x.action;
END
$$;

-- plan: what schedule would do now, and why; writes nothing (operate_serverPKI -S -n). Plain SQL, no SET
-- clause, every name qualified: the planner inlines it into the calling query, which reads plan_rows' rows
-- as they are (as PL/pgSQL it copied every row into a result of its own: 110,000 rows, 6% of the time)
CREATE OR REPLACE FUNCTION pki.plan(sel dd.selection DEFAULT NULL)
RETURNS TABLE (certificate text, instance int, action text, reason text)
LANGUAGE sql STABLE
AS $$
    SELECT p.certificate, p.instance, p.action, p.reason FROM pki.plan_rows(pki.checked_selection(sel)) p
    UNION ALL   -- CAs (150_ca_targets)
    SELECT p.certificate, p.instance, p.action, p.reason FROM pki.ca_plan_rows(pki.checked_selection(sel)) p
    UNION ALL   -- stale CRLs (155_crls)
    SELECT p.certificate, p.instance, p.action, p.reason FROM pki.crl_plan_rows(pki.checked_selection(sel)) p
$$;

-- schedule: one scheduler pass (operate_serverPKI -S); returns the plan it carried out. The rows
-- 'wait', 'skip', 'warn' and 'overdue' only inform (the CLI logs 'warn' and 'overdue' as warnings)
CREATE OR REPLACE FUNCTION pki.schedule(sel dd.selection DEFAULT NULL)
RETURNS TABLE (certificate text, instance int, action text, reason text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
SET jit = off   -- its bulk statements cost more to compile than to run (see plan_rows)
AS $$
BEGIN
    sel := checked_selection(sel);
    -- one pass at a time: a second cron run waits instead of deciding on the same facts
    PERFORM pg_advisory_xact_lock(hashtext('pki.schedule'));
    -- and -C (enqueue_issue) waits too, from before the plan: else a certificate that -C enqueued
    -- and an agent issued after this pass read its facts would be issued a second time
    PERFORM pg_advisory_xact_lock(hashtext('pki.enqueue_issue'));
    CREATE TEMP TABLE IF NOT EXISTS pass_plan (certificate_id int, certificate text, instance int, action text, reason text, then_action text)
        ON COMMIT DROP;
    TRUNCATE pass_plan;
    INSERT INTO pass_plan SELECT * FROM plan_rows(sel);
    ANALYZE pass_plan;   -- the statements below join it: true row counts, not a temp table's guess

    PERFORM set_context('scheduler: rule 1 (cleanup) or rule 4 (useless successor)');
    DELETE FROM certinstances ci USING pass_plan p WHERE p.action = 'delete' AND ci.id = p.instance;
    PERFORM set_context('scheduler: rule 3 (archive what expired or was revoked in an earlier run)');
    UPDATE certinstances ci SET state = 'archived' FROM pass_plan p WHERE p.action = 'archive' AND ci.id = p.instance;
    PERFORM set_context('scheduler: rule 3 (not deployed, past not_after + expire_grace)');
    UPDATE certinstances ci SET state = 'expired' FROM pass_plan p WHERE p.action = 'expire' AND ci.id = p.instance;

    PERFORM enqueue_issue(array_agg(p.certificate_id), array_agg(p.then_action), array_agg(p.reason), sel)
       FROM pass_plan p WHERE p.action = 'issue' HAVING count(*) > 0;
    PERFORM enqueue_distribution(array_agg(p.instance), sel, 'deploy', 'scheduler rule 7: distribute the successor')
       FROM pass_plan p WHERE p.action = 'distribute' HAVING count(*) > 0;
    -- CA certificates: their newest issued instance to the targets that lack it, once (150_ca_targets)
    INSERT INTO pass_plan SELECT * FROM ca_plan_rows(sel);
    PERFORM enqueue_ca_targets(array_agg(p.instance), sel) FROM pass_plan p WHERE p.action = 'distribute CA' HAVING count(*) > 0;
    -- the local CA's CRLs: the next one before the newest goes stale (155_crls)
    INSERT INTO pass_plan SELECT * FROM crl_plan_rows(sel);
    PERFORM enqueue_sign_crl(array_agg(p.instance), 'scheduler: the CRL reaches its nextUpdate; sign the next one')
       FROM pass_plan p WHERE p.action = 'sign CRL' HAVING count(*) > 0;

    -- rule 5: one message lists every local certificate due; each is mailed once
    IF EXISTS (SELECT 1 FROM pass_plan p WHERE p.action = 'remind') THEN
        PERFORM enqueue('mail_reminder', reminder_subject_key(txid_current()), 'rule 5: local certificates must be issued',
                        jsonb_build_object('certificates', jsonb_agg(jsonb_build_object(
                            'name', p.certificate, 'instance', p.instance, 'not_after', ci.not_after,
                            'disabled', c.disabled) ORDER BY p.certificate)))
           FROM pass_plan p JOIN certinstances ci ON ci.id = p.instance JOIN certificates c ON c.id = p.certificate_id
          WHERE p.action = 'remind';
        UPDATE certificates c SET authorized_until = pki.now() FROM pass_plan p WHERE p.action = 'remind' AND c.id = p.certificate_id;
    END IF;
    -- last: enqueue_tlsa_many takes lock_tlsa of each (lock_tlsa_many); a job's completion may hold rows of
    -- certinstances or certificates changed above while it waits for one of those locks (no cycle this way)
    PERFORM enqueue_tlsa_many(array_agg(p.certificate_id), array_agg(p.reason), array_agg(p.instance))
       FROM pass_plan p WHERE p.action = 'prepublish' HAVING count(*) > 0;
    RETURN QUERY SELECT p.certificate, p.instance, p.action, p.reason FROM pass_plan p
                  ORDER BY p.certificate, p.instance NULLS LAST, p.action;
END
$$;
