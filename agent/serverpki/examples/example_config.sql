-- An example configuration, written as an operator would type it into psql.
-- The demo loads it with `psql -v ON_ERROR_STOP=1 -f example_config.sql`.

-- disthosts: one plain host, one with FreeBSD jails (the seed's plain SQL works too)
SELECT add_disthost('web1.demo.serverpki.test');
SELECT add_disthost('jailhost.demo.serverpki.test', '/usr/jails');
SELECT add_jail('mail', 'jailhost.demo.serverpki.test');

-- places: where the files go on a host, how they are laid out, what reloads the service
SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, 0, 0, 384, false, false, 'service nginx reload');
SELECT add_place('postfix', 'separate', '/usr/local/etc/postfix/ssl', '/usr/local/etc/postfix/private', 0, 0, NULL, false, false, 'jexec {} service postfix reload');
SELECT add_place('pg_client', 'separate', '/var/db/postgres/.postgresql', NULL, 770, 770, 384, true, true, NULL);

-- a local server certificate, deployed to the plain host
SELECT * FROM add_cert('intranet.demo.serverpki.test', 'server', 'local', 'rsa', false,
                       NULL, NULL, NULL, 'web1.demo.serverpki.test', NULL, 'nginx');

-- a local client certificate for a database user
SELECT * FROM add_cert('backup_op', 'client', 'local', 'ec', false,
                       NULL, NULL, NULL, 'web1.demo.serverpki.test', NULL, 'pg_client');

-- an ACME certificate with an alt name, TLSA records for https and smtp, two targets
SELECT * FROM add_cert('www.demo.serverpki.test', 'server', 'LE', 'rsa_plus_ec', false,
                       'mail.demo.serverpki.test', 'https', 443, 'web1.demo.serverpki.test', NULL, 'nginx');
SELECT add_service('www.demo.serverpki.test', 'smtp', 25);
SELECT add_target('www.demo.serverpki.test', 'jailhost.demo.serverpki.test', 'mail', 'postfix');
