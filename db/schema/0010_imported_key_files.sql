-- 0010_imported_key_files: how the files of a pair imported from serverPKI 0.9.x look on the hosts,
-- so that what the original deployed is what ours would write (-K finds no drift, no file is rewritten).
-- The original wrote every key as traditional OpenSSL PEM (BEGIN RSA/EC PRIVATE KEY); ours write
-- PKCS#8. And 0.9.11 issued local certificates with RSA keys only, an 'ec' one too: it named that
-- RSA pair's files as an EC pair's (NAME_TYPE_ec_cert.pem ...), which the hosts' services now read.

-- how the pair's key is written to the hosts: pkcs8 (ours), traditional (a pair imported from 0.9.x)
ALTER TABLE pki.certkeydata ADD COLUMN key_file_format text NOT NULL DEFAULT 'pkcs8'
    CONSTRAINT certkeydata_key_file_format CHECK (key_file_format IN ('pkcs8', 'traditional'));
-- the algorithm the pair's file names say, when it is not encryption_algo (NULL): an RSA pair 0.9.x labelled 'ec'
ALTER TABLE pki.certkeydata ADD COLUMN file_name_algo dd.cert_encryption_algo
    CONSTRAINT certkeydata_file_name_algo CHECK (file_name_algo IN ('rsa', 'ec'));
