-- 125_key_reuse: keeping a certificate's private key across renewals (set_key_reuse, 040_manage).
-- The database decides when an issue job is enqueued (key_reuse, called by enqueue_issue) and
-- puts the instance whose keys to reuse in the job's args (reuse_from); the agent reads that
-- instance's stored keys through reused_key, never through the job's args or results. A reused
-- key keeps "3 1 1" (and "2 1 1" with an unchanged issuer) records as they are: tlsa_unchanged
-- tells the scheduler (rule 7 and 9), complete_issue and complete_distribute that no TLSA change
-- and no DANE-safe wait is needed.

-- key_revoked: is the key of this certificate (PEM) of the given algorithm the key of a revoked
-- certificate of the same certificate (by its name, which revocations keep after the instance is
-- gone)? One rule for key_reuse (never pick it) and complete_issue (never store it)
CREATE OR REPLACE FUNCTION pki.key_revoked(the_cert int, the_algo text, the_pem bytea)
RETURNS boolean LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    -- the key of the_pem is read (tlsa_data parses the certificate: 0.4 ms, planned as a constant) only
    -- when the certificate has a revoked one of this algorithm at all; most never had
    IF NOT EXISTS (SELECT 1 FROM revocations r
                    WHERE r.certificate = (SELECT s.name::text FROM main_subjects s WHERE s.certificate = the_cert)
                      AND r.encryption_algo::text = the_algo) THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM revocations r
                    WHERE r.certificate = (SELECT s.name::text FROM main_subjects s WHERE s.certificate = the_cert)
                      AND r.encryption_algo::text = the_algo AND tlsa_data(r.cert, 1, 0) = tlsa_data(the_pem, 1, 0));
END
$$;

-- key_reuse: whether a new instance of the certificate reuses the keys of its predecessor (the
-- deployed instance, else the newest issued or prepublished one): reuse_from is that instance when
-- key reuse is on for the certificate and each key of it has served fewer renewals than
-- reuse_key_renewals and is younger than reuse_key_days; a key of a revoked certificate is never
-- reused. note says what was decided and why (NULL: key reuse is off). Called by enqueue_issue in
-- the owner's functions (schedule, request_create, request_revoke); it never reads a key (the pairs
-- of a server or client instance always have theirs: reused_key finding none makes a new key)
CREATE OR REPLACE FUNCTION pki.key_reuse(the_cert int, OUT reuse_from int, OUT note text)
LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    c certificates;
    pred int;
    wanted text[];
    have text[];
    served int;
    made timestamptz;
BEGIN
    SELECT * INTO c FROM certificates WHERE id = the_cert;
    IF NOT FOUND OR (c.reuse_key_renewals IS NULL AND c.reuse_key_days IS NULL) OR is_ca_cert(the_cert) THEN
        RETURN;
    END IF;
    SELECT i.id INTO pred FROM certinstances i
     WHERE i.certificate = the_cert AND i.state IN ('deployed', 'prepublished', 'issued')
     ORDER BY i.state = 'deployed' DESC, i.id DESC LIMIT 1;
    IF pred IS NULL THEN
        note := 'new key: no predecessor to reuse the key of';
        RETURN;
    END IF;
    wanted := CASE c.encryption_algo WHEN 'rsa_plus_ec' THEN ARRAY['ec', 'rsa'] ELSE ARRAY[c.encryption_algo::text] END;
    SELECT array_agg(k.encryption_algo::text ORDER BY k.encryption_algo::text), max(k.key_renewals),
           min(coalesce(k.key_created, k.not_before))   -- an imported (0.9.x) key: as old as its first certificate
      INTO have, served, made
      FROM certkeydata k WHERE k.certinstance = pred;
    IF have IS DISTINCT FROM wanted THEN
        note := format('new key: instance %s has no pair for each of %s', pred, wanted);
    ELSIF c.reuse_key_renewals IS NOT NULL AND served >= c.reuse_key_renewals THEN
        note := format('key rotated: the key of instance %s has served %s renewals (reuse_key_renewals %s)',
                       pred, served, c.reuse_key_renewals);
    ELSIF c.reuse_key_days IS NOT NULL AND pki.now() >= made + c.reuse_key_days * interval '1 day' THEN
        note := format('key rotated: the key of instance %s was made %s, more than reuse_key_days %s ago',
                       pred, made, c.reuse_key_days);
    ELSIF EXISTS (SELECT 1 FROM certkeydata k WHERE k.certinstance = pred
                     AND key_revoked(the_cert, k.encryption_algo::text, k.cert)) THEN
        note := format('key rotated: the key of instance %s is the key of a revoked certificate', pred);
    ELSE
        reuse_from := pred;
        note := format('key of instance %s reused (renewal %s of the key)', pred, served + 1);
    END IF;
END
$$;

-- reused_key: the stored private key (PEM as stored, maybe encrypted) of the given algorithm of the
-- instance an issue job reuses the keys of (its args' reuse_from), for the job's current holder only;
-- NULL when that instance or its key is gone (the agent then makes a new key)
CREATE OR REPLACE FUNCTION pki.reused_key(job_id bigint, lease_token uuid, algo text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    j jobs := held_job(job_id, lease_token);
BEGIN
    IF j.kind NOT IN ('issue_acme', 'issue_local') OR NOT j.args ? 'reuse_from' THEN
        PERFORM raise_error('SP023', format('job %s is a %s job that reuses no key', j.id, j.kind),
            'only an issue job whose args name reuse_from reads the key it reuses');
    END IF;
    RETURN (SELECT convert_from(k.key, 'UTF8') FROM certkeydata k JOIN certinstances i ON i.id = k.certinstance
             WHERE i.id = (j.args ->> 'reuse_from')::int AND i.certificate = j.certificate
               AND k.encryption_algo::text = algo);
END
$$;

-- tlsa_unchanged: does deploying the successor need no TLSA change and no DANE-safe wait? Yes when
-- its TLSA records (every owner, usage, selector, matching and data) are exactly those of the active
-- instance, and these are in DNS since 2 x TTL at every owner the certificate has (an alt name added
-- since has none: prepublished then): a reused key with "3 1 1", an unchanged issuer key with "2 1 1".
-- No certificate with TLSA services, or either instance missing: false
CREATE OR REPLACE FUNCTION pki.tlsa_unchanged(active int, successor int)
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT coalesce((
        SELECT a.tlsa_published IS NOT NULL AND pki.now() >= dane_safe_after(a.tlsa_published, tlsa_ttl(a.certificate))
               -- cheap first: a new key changes every end-entity record (usage 1 and 3), no need to hash
               AND NOT (EXISTS (SELECT 1 FROM certkeydata k WHERE k.certinstance = s.id AND k.key_renewals = 0)
                        AND EXISTS (SELECT 1 FROM tlsa_owners o WHERE o.certificate = a.certificate AND o.usage IN (1, 3)))
               AND ARRAY(SELECT DISTINCT format('%s %s %s %s %s', d.owner, d.usage, d.selector, d.matching, d.data)
                           FROM tlsa_desired d WHERE d.instance = a.id ORDER BY 1)
                 = ARRAY(SELECT DISTINCT format('%s %s %s %s %s', d.owner, d.usage, d.selector, d.matching, d.data)
                           FROM tlsa_desired d WHERE d.instance = s.id ORDER BY 1)
               AND EXISTS (SELECT 1 FROM tlsa_owners o WHERE o.certificate = a.certificate)
               AND NOT EXISTS (SELECT 1 FROM tlsa_owners o WHERE o.certificate = a.certificate
                                  AND NOT EXISTS (SELECT 1 FROM tlsa_owners_in_dns d
                                                   WHERE d.certificate = o.certificate AND d.owner = o.owner))
          FROM certinstances a JOIN certinstances s ON s.certificate = a.certificate
         WHERE a.id = active AND s.id = successor AND a.id <> s.id), false)
$$;

-- same_key: do the two instances share a private key (a pair of the same algorithm with the same
-- public key)? A successor that reused the key of a revoked instance must not replace it
CREATE OR REPLACE FUNCTION pki.same_key(one int, other int)
RETURNS boolean LANGUAGE sql STABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM certkeydata a JOIN certkeydata b ON b.encryption_algo = a.encryption_algo
                    WHERE a.certinstance = one AND b.certinstance = other
                      AND tlsa_data(a.cert, 1, 0) = tlsa_data(b.cert, 1, 0))
$$;

-- forget_revoked_key: the instance `revoked` of the certificate was revoked; its key is never used
-- again: a successor that reused it is deleted (the scheduler or the emergency rollover then issues
-- one with a new key), and an issue job not done yet makes a new key instead of reusing or resuming one
CREATE OR REPLACE FUNCTION pki.forget_revoked_key(cert int, revoked int)
RETURNS void LANGUAGE plpgsql
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM set_context(format('instance %s revoked: a successor with its key is given up', revoked));
    DELETE FROM certinstances i WHERE i.certificate = cert AND i.state IN ('issued', 'prepublished') AND same_key(i.id, revoked);
    UPDATE jobs j SET args = j.args - 'reuse_from'
     WHERE j.certificate = cert AND j.kind IN ('issue_acme', 'issue_local') AND j.args ? 'reuse_from'
       AND j.state IN ('queued', 'running', 'failed');
    -- nor does an ACME issue job resume with it: the key it kept for its next attempt and the orders
    -- whose CSRs carry it go (its next attempt makes a new key and orders again)
    DELETE FROM job_keys k USING jobs j
     WHERE k.job = j.id AND j.certificate = cert AND j.kind = 'issue_acme' AND j.state IN ('queued', 'running', 'failed');
    UPDATE jobs j SET result = j.result - 'orders'
     WHERE j.certificate = cert AND j.kind = 'issue_acme' AND j.state IN ('queued', 'running', 'failed') AND j.result ? 'orders';
END
$$;
