-- 0014_scale_indexes: the joins of the listing (operate_serverPKI -n -v reads pki.certs, which joins each
-- certificate's alt names) and the subjects trigger's look-up of a certificate's other subjects go by
-- subjects.certificate; only the main subject had an index (subjects_one_main_per_certificate), so each
-- scanned every subject.

-- a certificate's subjects, main and alt names (pki.certs, validate_subject)
CREATE INDEX subjects_certificate ON pki.subjects (certificate);
