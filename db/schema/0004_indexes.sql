-- 0004_indexes: the foreign key certinstances.cacert is checked on every deleted
-- instance; without an index each check scans the whole table.
CREATE INDEX certinstances_cacert ON pki.certinstances (cacert) WHERE cacert IS NOT NULL;
