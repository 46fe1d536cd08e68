-- 005_main_subjects: a certificate's main subject (its name and type; the others are alt names).

-- main_subjects: the one main subject of each certificate (subjects_one_main_per_certificate), joined
-- as "JOIN main_subjects s ON s.certificate = c.id". A plain view: the planner inlines it, so plans
-- stay those of the written-out join (the partial unique index serves it). First of db/views/: the
-- views after it use it (functions too, checked when first called: db/README.md).
CREATE VIEW pki.main_subjects AS
SELECT s.* FROM pki.subjects s WHERE NOT s.isaltname;
