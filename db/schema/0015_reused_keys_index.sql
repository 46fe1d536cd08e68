-- 0015_reused_keys_index: which instances kept the key of their predecessor (key reuse). plan_rows asks it on
-- every pass; without an index that is a scan of every key pair, 60 ms at 100,000 certificates, for the few
-- rows of the fleets that reuse keys.

-- the key pairs kept from a predecessor (key_renewals > 0), by instance (plan_rows, reusing)
CREATE INDEX certkeydata_reused ON pki.certkeydata (certinstance) WHERE key_renewals > 0;
