-- 020_validation: the syntax rules of names, paths and numbers. Each check
-- raises our SQLSTATE naming the value and what it was for, or returns quietly.
-- Triggers call them, so plain INSERT/UPDATE is checked as strictly as the
-- management functions.

-- check_required: a value must be given and not be blank
CREATE OR REPLACE FUNCTION pki.check_required(value text, what text)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF value IS NULL OR btrim(value) = '' THEN
        PERFORM pki.raise_error('SP009', format('%s must not be empty', what),
            format('give a value for %s', what));
    END IF;
END
$$;

-- unprintable_char: the first control or invisible character of value (Unicode Cc, Cf, Zl, Zp:
-- tabs, newlines, escapes, bidi overrides, zero-width spaces, line separators), or NULL.
-- Spelled as code points (Unicode 14), so the rule does not depend on the database's locale.
CREATE OR REPLACE FUNCTION pki.unprintable_char(value text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT substring(value FROM '[\x01-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]')
$$;

-- char_name: 'U+202E' for a character
CREATE OR REPLACE FUNCTION pki.char_name(c text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT 'U+' || upper(lpad(to_hex(ascii(c)), greatest(4, length(to_hex(ascii(c)))), '0'))
$$;

-- check_printable: no control or invisible characters (they break logs, file names and shells,
-- and a bidi override makes a command or path read differently from what runs)
CREATE OR REPLACE FUNCTION pki.check_printable(value text, what text, max_length int)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    bad text := pki.unprintable_char(value);
BEGIN
    IF value IS NULL THEN
        RETURN;
    END IF;
    IF bad IS NOT NULL THEN
        PERFORM pki.raise_error('SP001', format('%s %s contains a control character (%s)', what, quote_literal(left(value, 80)), pki.char_name(bad)),
            format('remove tabs, newlines and other control or invisible characters (here %s)', pki.char_name(bad)));
    END IF;
    IF length(value) > max_length THEN
        PERFORM pki.raise_error('SP001', format('%s %s… is %s characters long, more than %s',
                what, quote_literal(left(value, 40)), length(value), max_length),
            format('use at most %s characters', max_length));
    END IF;
END
$$;

-- check_host_name: LDH labels of 1..63, 253 in all; '*' only as the whole leftmost label
CREATE OR REPLACE FUNCTION pki.check_host_name(value text, what text, allow_wildcard boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    labels text[];
    label text;
    i int;
BEGIN
    PERFORM pki.check_required(value, what);
    PERFORM pki.check_printable(value, what, 253);
    labels := string_to_array(value, '.');
    FOR i IN 1 .. array_length(labels, 1) LOOP
        label := labels[i];
        IF label = '*' AND i = 1 AND allow_wildcard AND array_length(labels, 1) > 2 THEN
            CONTINUE;
        END IF;
        IF label = '*' OR position('*' IN label) > 0 THEN
            PERFORM pki.raise_error('SP001', format('%s "%s": a wildcard is allowed only as the whole leftmost label%s',
                    what, value, CASE WHEN allow_wildcard THEN ' of a name with at least two more labels' ELSE ' of a certificate name, not here' END),
                'write it as *.example.org');
        END IF;
        IF label = '' THEN
            PERFORM pki.raise_error('SP001', format('%s "%s" has an empty label', what, value),
                'write the name without leading, trailing or doubled dots');
        END IF;
        IF length(label) > 63 THEN
            PERFORM pki.raise_error('SP001', format('%s "%s": label "%s" is longer than 63 characters', what, value, label),
                'DNS labels have at most 63 characters');
        END IF;
        IF label !~ '^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?$' THEN
            PERFORM pki.raise_error('SP001', format('%s "%s": label "%s" is not letters, digits and inner hyphens', what, value, label),
                'host names use letters, digits and hyphens (LDH), no hyphen at either end of a label');
        END IF;
    END LOOP;
END
$$;

-- check_simple_name: one safe path component (jail, place, client, service names)
CREATE OR REPLACE FUNCTION pki.check_simple_name(value text, what text, max_length int DEFAULT 64)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    PERFORM pki.check_required(value, what);
    PERFORM pki.check_printable(value, what, max_length);
    IF value !~ '^[A-Za-z0-9][A-Za-z0-9._@-]*$' THEN
        PERFORM pki.raise_error('SP001', format('%s "%s" must start with a letter or digit and hold only letters, digits, ".", "_", "@" and "-"', what, value),
            'it becomes part of a path or file name on the target; pick a name without "/", spaces or shell characters');
    END IF;
END
$$;

-- check_subject_name: the syntax a subject's name needs for its type
CREATE OR REPLACE FUNCTION pki.check_subject_name(value text, subject_type dd.subject_type, is_altname boolean)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    what text := CASE WHEN is_altname THEN 'alt name' ELSE 'subject name' END;
BEGIN
    CASE subject_type
        WHEN 'client' THEN
            PERFORM pki.check_simple_name(value, 'client ' || what);
        WHEN 'CA' THEN
            PERFORM pki.check_required(value, 'CA ' || what);
            PERFORM pki.check_printable(value, 'CA ' || what, 64);
            IF value ~ '[/\\]' OR value ~ '^[ .]' THEN
                PERFORM pki.raise_error('SP001', format('CA %s "%s" must not contain "/" or "\" nor start with a space or a dot', what, value),
                    'use a plain name such as "Local CA"');
            END IF;
        ELSE
            PERFORM pki.check_host_name(value, what, true);
    END CASE;
END
$$;

-- check_abs_path: absolute, no "." or ".." component, no control characters
CREATE OR REPLACE FUNCTION pki.check_abs_path(value text, what text)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    bad text := pki.unprintable_char(value);
BEGIN
    IF value IS NULL THEN
        RETURN;
    END IF;
    IF bad IS NOT NULL THEN
        PERFORM pki.raise_error('SP004', format('%s %s contains a control character (%s)', what, quote_literal(left(value, 80)), pki.char_name(bad)),
            format('remove tabs, newlines and other control or invisible characters (here %s) from the path', pki.char_name(bad)));
    END IF;
    IF length(value) > 1024 THEN
        PERFORM pki.raise_error('SP004', format('%s "%s…" is longer than 1024 characters', what, left(value, 40)),
            'use a shorter path');
    END IF;
    IF left(value, 1) <> '/' THEN
        PERFORM pki.raise_error('SP004', format('%s "%s" is not an absolute path', what, value),
            'start the path with "/"');
    END IF;
    IF value ~ '(^|/)\.\.?(/|$)' THEN
        PERFORM pki.raise_error('SP004', format('%s "%s" contains a "." or ".." component', what, value),
            'write the path without "." and ".." so it cannot leave its directory');
    END IF;
    IF value ~ '//' THEN
        PERFORM pki.raise_error('SP004', format('%s "%s" contains an empty component ("//")', what, value),
            'write the path with single slashes');
    END IF;
END
$$;

-- check_range: an integer within lo..hi
CREATE OR REPLACE FUNCTION pki.check_range(value bigint, lo bigint, hi bigint, what text, hint text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF value IS NOT NULL AND (value < lo OR value > hi) THEN
        PERFORM pki.raise_error('SP005', format('%s %s is out of range %s..%s', what, value, lo, hi),
            coalesce(hint, format('give a number from %s to %s', lo, hi)));
    END IF;
END
$$;

-- tlsa_prefix_parts: the fields of a TLSA prefix such as '_443._tcp.{}. 3600 IN TLSA 3 0 1', or NULL
-- (the port without leading zeros: DNS clients look up _443, never _0443)
CREATE OR REPLACE FUNCTION pki.tlsa_prefix_parts(prefix text,
    OUT port int, OUT proto text, OUT ttl bigint, OUT usage int, OUT selector int, OUT matching int)
LANGUAGE sql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT m[1]::int, m[2], m[3]::bigint, m[4]::int, m[5]::int, m[6]::int
      FROM regexp_match(prefix,
        '^_([1-9][0-9]{0,4})\._(tcp|udp|sctp)\.\{\}\.[ \t]+([0-9]{1,10})[ \t]+IN[ \t]+TLSA[ \t]+([0-9]{1,3})[ \t]+([0-9]{1,3})[ \t]+([0-9]{1,3})$', 'i') AS m
$$;

-- tlsa_owner_name: the name a TLSA owner name stands for ('_443._tcp.www.example.org.' gives
-- 'www.example.org'), or NULL when it is not one: the one spelling of an owner name that publish_tlsa
-- reports are checked against and owners are looked up by (a prefix's port and protocol, as above)
CREATE OR REPLACE FUNCTION pki.tlsa_owner_name(owner text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
    SELECT rtrim((regexp_match(owner, '^_[1-9][0-9]{0,4}\._(?:tcp|udp|sctp)\.((?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+)$', 'i'))[1], '.')
$$;

-- check_tlsa_prefix: the prefix parses, its port is the service's, and its fields are in range
CREATE OR REPLACE FUNCTION pki.check_tlsa_prefix(prefix text, service_port int)
RETURNS void LANGUAGE plpgsql IMMUTABLE
SET search_path = pki, dd, pg_temp
AS $$
DECLARE
    p record;
    example text := format('_%s._tcp.{}. 3600 IN TLSA 3 0 1', coalesce(service_port, 443));
BEGIN
    PERFORM pki.check_required(prefix, 'TLSA prefix');
    PERFORM pki.check_printable(prefix, 'TLSA prefix', 200);
    SELECT * INTO p FROM pki.tlsa_prefix_parts(prefix);
    IF p.port IS NULL THEN
        PERFORM pki.raise_error('SP006', format('TLSA prefix "%s" is not of the form "_PORT._PROTO.{}. TTL IN TLSA USAGE SELECTOR MATCHING"', prefix),
            format('write it like "%s"; {} stands for the certificate''s names', example));
    END IF;
    IF p.port <> service_port THEN
        PERFORM pki.raise_error('SP006', format('TLSA prefix "%s" names port %s, but the service''s port is %s', prefix, p.port, service_port),
            format('write it like "%s"', example));
    END IF;
    IF p.ttl > 2147483647 THEN
        PERFORM pki.raise_error('SP006', format('TLSA prefix "%s": TTL %s is out of range 0..2147483647', prefix, p.ttl),
            'use a TTL such as 3600');
    END IF;
    IF p.usage > 3 OR p.selector > 1 OR p.matching > 2 THEN
        PERFORM pki.raise_error('SP006', format('TLSA prefix "%s": usage %s, selector %s, matching type %s are not all in range (usage 0-3, selector 0-1, matching 0-2)',
                prefix, p.usage, p.selector, p.matching),
            'DANE-EE with the full certificate and SHA-256 is "3 0 1"');
    END IF;
END
$$;

-- refuse_in_use: a DELETE refused while certificates still refer to the object (SP010). what says
-- how they use it ('disthost "x" is a target of'); the message ends with the certificates' names.
-- Nothing happens when certs is empty.
CREATE OR REPLACE FUNCTION pki.refuse_in_use(what text, certs int[], hint text)
RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pki, dd, pg_temp
AS $$
BEGIN
    IF cardinality(certs) > 0 THEN
        PERFORM raise_error('SP010', format('%s certificate(s) %s', what,
                (SELECT string_agg(DISTINCT s.name, ', ') FROM main_subjects s WHERE s.certificate = ANY (certs))),
            hint);
    END IF;
END
$$;
