-- 0013_key_reuse: keep a certificate's private key across renewals (issue 17 item 3), so a TLSA
-- "3 1 1" record set does not change when the certificate is renewed (certbot's --reuse-key).

-- how many renewals one key may serve before a new one is made; NULL: no limit by count
-- (both reuse_key_renewals and reuse_key_days NULL: key reuse is off, a new key every renewal)
ALTER TABLE pki.certificates ADD COLUMN reuse_key_renewals int4
    CONSTRAINT certificates_reuse_key_renewals_positive CHECK (reuse_key_renewals > 0);
-- how many days after it was made a key may still be reused; NULL: no limit by age
ALTER TABLE pki.certificates ADD COLUMN reuse_key_days int4
    CONSTRAINT certificates_reuse_key_days_positive CHECK (reuse_key_days > 0);

-- when this pair's private key was made: copied forward when a renewal reuses it; NULL for pairs
-- stored before key reuse existed (their row's created is the key's age)
ALTER TABLE pki.certkeydata ADD COLUMN key_created timestamptz;
-- how many renewals this pair's private key has served: 0 for a new key, one more each time it is reused
ALTER TABLE pki.certkeydata ADD COLUMN key_renewals int4 NOT NULL DEFAULT 0
    CONSTRAINT certkeydata_key_renewals_not_negative CHECK (key_renewals >= 0);
