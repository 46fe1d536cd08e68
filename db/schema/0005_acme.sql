-- 0005_acme: the ACME accounts. One account per directory URL, shared by every
-- agent: the account key lives here (encrypted like the other keys when
-- revision.keysencrypted), written only by complete_job of a register_acme job.
CREATE TABLE pki.acme_accounts (
    id              serial PRIMARY KEY,
    directory_url   text NOT NULL,          -- the CA's directory, e.g. https://acme-v02.api.letsencrypt.org/directory
    contact         text,                   -- the mail address registered with the CA
    key             text NOT NULL,          -- the account key, PKCS#8 PEM (maybe encrypted)
    uri             text NOT NULL,          -- the account URL the CA returned (the JWS "kid")
    created         dd.created,
    updated         dd.updated,
    remarks         text,
    CONSTRAINT acme_accounts_directory_unique UNIQUE (directory_url),
    CONSTRAINT acme_accounts_urls_https CHECK (directory_url ~ '^https://' AND uri ~ '^https://'),
    CONSTRAINT acme_accounts_key_is_pem CHECK (key LIKE '-----BEGIN %PRIVATE KEY-----%')
);
