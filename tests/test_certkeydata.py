"""The certkeydata trigger (db/triggers/030_certkeydata.sql): server-side Python
(Debian's python3-cryptography) parses every stored certificate, derives the
TLSA hash and the validity dates, checks the algorithm and the key, and keeps
each instance's validity the intersection of its key pairs.

Certificates are made here with the virtualenv's cryptography, so the trigger
is tested against certificates it did not produce itself.
"""

from __future__ import annotations

import datetime
import hashlib

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from helpers import assert_refused

UTC = datetime.timezone.utc
NOW = datetime.datetime.now(UTC).replace(microsecond=0)


class Pair:
    """A self-signed certificate and its private key, as the agent would store them."""

    def __init__(self, algo: str = "rsa", not_before: datetime.datetime | None = None,
                 not_after: datetime.datetime | None = None, name: str = "www.example.org"):
        self.algo = algo
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if algo == "rsa" \
            else ec.generate_private_key(ec.SECP256R1())
        self.not_before = not_before or NOW - datetime.timedelta(days=1)
        self.not_after = not_after or NOW + datetime.timedelta(days=90)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder()
                     .subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(self.not_before).not_valid_after(self.not_after)
                     .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                     .sign(self.key, hashes.SHA256()))

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def encrypted_key_pem(self, passphrase: bytes = b"correct horse battery staple") -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(passphrase))

    @property
    def tlsa_hash(self) -> str:
        """TLSA 3 0 1: SHA-256 of the DER certificate, upper-case hex."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()


INSERT = ("INSERT INTO certkeydata (certinstance, encryption_algo, cert, key, hash) "
          "VALUES (%s, %s, %s, %s, %s) RETURNING id")


def store(conn, instance: int, pair: Pair, *, algo: str | None = None, cert: bytes | None = None,
          key: bytes | None | str = "clear", hash: str | None = None) -> int:
    key_pem = pair.key_pem if key == "clear" else key
    return conn.execute(INSERT, (instance, algo or pair.algo, cert if cert is not None else pair.cert_pem,
                                 key_pem, hash)).fetchone()[0]


def refused_insert(conn, instance: int, pair: Pair, sqlstate: str = "SP008", match: str = "", **kw):
    key = kw.pop("key", "clear")
    key_pem = pair.key_pem if key == "clear" else key
    params = (instance, kw.pop("algo", pair.algo), kw.pop("cert", pair.cert_pem), key_pem, kw.pop("hash", None))
    assert not kw
    return assert_refused(conn, INSERT, params, sqlstate=sqlstate, match=match)


def new_instance(conn, cert_id: int) -> int:
    """A reserved instance: the state in which an issue job stores its key pairs (NULL -> reserved is
    the only way in, see pki.state_transitions)."""
    return conn.execute("INSERT INTO certinstances (certificate, state) VALUES (%s, 'reserved') RETURNING id",
                        (cert_id,)).fetchone()[0]



@pytest.fixture
def conn(owner):
    """The certkeydata trigger guards what the owner's functions write (no role writes the table):
    this module writes pairs directly, as those functions do, so its conn is the owner."""
    return owner

@pytest.fixture
def instance(conn) -> int:
    """An instance of an rsa_plus_ec certificate, without key pairs yet."""
    conn.execute("SELECT * FROM add_cert('www.example.org','server','local','rsa_plus_ec',false,"
                 "NULL,NULL,NULL,NULL,NULL,NULL)")
    cert_id = conn.execute("SELECT cert_id('www.example.org')").fetchone()[0]
    return new_instance(conn, cert_id)


@pytest.fixture(scope="module")
def rsa_pair() -> Pair:
    return Pair("rsa", NOW - datetime.timedelta(days=10), NOW + datetime.timedelta(days=80))


@pytest.fixture(scope="module")
def ec_pair() -> Pair:
    return Pair("ec", NOW - datetime.timedelta(days=5), NOW + datetime.timedelta(days=90))


def instance_dates(conn, instance: int):
    return conn.execute("SELECT not_before, not_after FROM certinstances WHERE id = %s", (instance,)).fetchone()


# --- what a row may hold ------------------------------------------------------

def test_a_valid_pair_is_stored_with_derived_hash_and_dates(conn, instance, rsa_pair):
    conn.execute("SET TIME ZONE 'America/New_York'")   # dates are instants, whatever the session's zone
    row_id = store(conn, instance, rsa_pair)
    row = conn.execute("SELECT hash, not_before, not_after, cert, key FROM certkeydata WHERE id = %s",
                       (row_id,)).fetchone()
    assert row[0] == rsa_pair.tlsa_hash
    assert row[0] == row[0].upper() and len(row[0]) == 64
    assert row[1] == rsa_pair.cert.not_valid_before_utc
    assert row[2] == rsa_pair.cert.not_valid_after_utc
    assert bytes(row[3]) == rsa_pair.cert_pem and bytes(row[4]) == rsa_pair.key_pem


def test_client_supplied_dates_are_overwritten(conn, instance, ec_pair):
    row_id = conn.execute(
        "INSERT INTO certkeydata (certinstance, encryption_algo, cert, key, not_before, not_after) "
        "VALUES (%s, 'ec', %s, %s, '2000-01-01', '2100-01-01') RETURNING id",
        (instance, ec_pair.cert_pem, ec_pair.key_pem)).fetchone()[0]
    nb, na = conn.execute("SELECT not_before, not_after FROM certkeydata WHERE id = %s", (row_id,)).fetchone()
    assert (nb, na) == (ec_pair.cert.not_valid_before_utc, ec_pair.cert.not_valid_after_utc)


def test_garbage_is_not_a_certificate(conn, instance, rsa_pair):
    refused_insert(conn, instance, rsa_pair, cert=b"this is not a certificate", match="exactly one PEM certificate")
    refused_insert(conn, instance, rsa_pair, cert=b"", match="exactly one PEM certificate")
    garbled = b"-----BEGIN CERTIFICATE-----\nTm90IGEgY2VydGlmaWNhdGUgYXQgYWxs\n-----END CERTIFICATE-----\n"
    refused_insert(conn, instance, rsa_pair, cert=garbled, match="not a parsable PEM certificate")
    # a real certificate with its body damaged
    pem = rsa_pair.cert_pem
    damaged = pem[:100] + (b"A" if pem[100:101] != b"A" else b"B") * 40 + pem[140:]
    refused_insert(conn, instance, rsa_pair, cert=damaged)


def test_two_certificates_in_one_row_are_refused(conn, instance, rsa_pair):
    ca = Pair("rsa", name="Local CA")
    refused_insert(conn, instance, rsa_pair, cert=rsa_pair.cert_pem + ca.cert_pem, match="exactly one PEM certificate")
    refused_insert(conn, instance, rsa_pair, cert=rsa_pair.cert_pem + rsa_pair.cert_pem, match="exactly one")


def test_a_private_key_in_the_cert_column_is_refused(conn, instance, rsa_pair):
    """pki_admin and the TLSA code read the cert column: a key appended to it would leak."""
    refused_insert(conn, instance, rsa_pair, cert=rsa_pair.cert_pem + rsa_pair.key_pem, match="cert")
    refused_insert(conn, instance, rsa_pair, cert=rsa_pair.key_pem + rsa_pair.cert_pem, match="cert")


def test_encryption_algo_must_match_the_certificate(conn, instance, rsa_pair, ec_pair):
    refused_insert(conn, instance, rsa_pair, algo="ec", match="the certificate's key is rsa, the row says ec")
    refused_insert(conn, instance, ec_pair, algo="rsa", match="the certificate's key is ec, the row says rsa")
    # a pair is one algorithm; rsa_plus_ec is the certificate's setting, never a pair's
    err = refused_insert(conn, instance, rsa_pair, algo="rsa_plus_ec", sqlstate="SP008")
    assert "rsa_plus_ec" in err.diag.message_primary


def test_a_wrong_hash_is_refused(conn, instance, rsa_pair, ec_pair):
    refused_insert(conn, instance, rsa_pair, hash="0" * 64, match="is not the SHA-256 of the certificate")
    refused_insert(conn, instance, rsa_pair, hash=ec_pair.tlsa_hash, match="is not the SHA-256")
    refused_insert(conn, instance, rsa_pair, hash="not hex at all")
    # the SHA-256 of the PEM text is not the TLSA hash (which is over DER)
    refused_insert(conn, instance, rsa_pair, hash=hashlib.sha256(rsa_pair.cert_pem).hexdigest().upper())


def test_a_correct_hash_is_accepted_in_either_case_and_stored_upper(conn, instance, rsa_pair):
    row_id = store(conn, instance, rsa_pair, hash=rsa_pair.tlsa_hash.lower())
    assert conn.execute("SELECT hash FROM certkeydata WHERE id = %s", (row_id,)).fetchone()[0] == rsa_pair.tlsa_hash


def test_a_null_hash_is_derived(conn, instance, rsa_pair, ec_pair):
    store(conn, instance, rsa_pair, hash=None)
    store(conn, instance, ec_pair, hash=None)
    rows = conn.execute("SELECT encryption_algo, hash FROM certkeydata ORDER BY encryption_algo").fetchall()
    assert rows == [("rsa", rsa_pair.tlsa_hash), ("ec", ec_pair.tlsa_hash)]
    # the report view shows the same hash the TLSA record will carry
    hashes_in_view = conn.execute('SELECT "ALGO", "Hash" FROM inst ORDER BY "ALGO"').fetchall()
    assert hashes_in_view == rows


def test_a_key_of_another_certificate_is_refused(conn, instance, rsa_pair, ec_pair):
    other_rsa = Pair("rsa")
    refused_insert(conn, instance, rsa_pair, key=other_rsa.key_pem, match="does not belong to the certificate")
    refused_insert(conn, instance, rsa_pair, key=ec_pair.key_pem, match="does not belong to the certificate")
    refused_insert(conn, instance, ec_pair, key=Pair("ec").key_pem, match="does not belong")


def test_a_garbage_key_is_refused(conn, instance, rsa_pair):
    refused_insert(conn, instance, rsa_pair, key=b"not a key", match="key must hold exactly one PEM private key")
    garbled = b"-----BEGIN PRIVATE KEY-----\nTm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n"
    refused_insert(conn, instance, rsa_pair, key=garbled, match="not a parsable PEM private key")
    garbled = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nTm90IGEga2V5IGF0IGFsbA==\n-----END ENCRYPTED PRIVATE KEY-----\n"
    refused_insert(conn, instance, rsa_pair, key=garbled, match="not a parsable PEM private key")
    refused_insert(conn, instance, rsa_pair, key=rsa_pair.cert_pem, match="not a parsable PEM private key")


def test_the_word_encrypted_does_not_skip_the_key_check(conn, instance, rsa_pair):
    """Only a key that really is encrypted goes unchecked; a clear key with the word in it is still checked."""
    wrong = Pair("rsa").key_pem
    refused_insert(conn, instance, rsa_pair, key=wrong + b"ENCRYPTED\n")
    refused_insert(conn, instance, rsa_pair, key=b"# ENCRYPTED\n" + wrong)


def test_one_key_per_row(conn, instance, rsa_pair):
    refused_insert(conn, instance, rsa_pair, key=rsa_pair.key_pem + Pair("rsa").key_pem, match="key")
    refused_insert(conn, instance, rsa_pair, key=rsa_pair.key_pem + rsa_pair.encrypted_key_pem(), match="key")


def test_an_encrypted_key_is_accepted_unchecked(conn, instance, rsa_pair, ec_pair):
    encrypted = rsa_pair.encrypted_key_pem()
    assert encrypted.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    row_id = store(conn, instance, rsa_pair, key=encrypted)
    assert bytes(conn.execute("SELECT key FROM certkeydata WHERE id = %s", (row_id,)).fetchone()[0]) == encrypted
    # the database has no passphrase: it cannot tell whose key an encrypted one is
    store(conn, instance, ec_pair, key=Pair("ec").encrypted_key_pem())


def test_a_pair_without_a_key_is_accepted(conn, instance, rsa_pair):
    """A CA certificate may be stored without its key (an ACME CA's intermediate)."""
    row_id = store(conn, instance, rsa_pair, key=None)
    assert conn.execute("SELECT key IS NULL, hash FROM certkeydata WHERE id = %s", (row_id,)).fetchone() == \
        (True, rsa_pair.tlsa_hash)


def test_one_pair_per_algorithm(conn, instance, rsa_pair):
    store(conn, instance, rsa_pair)
    with pytest.raises(psycopg.errors.UniqueViolation):
        store(conn, instance, Pair("rsa"))


# --- the instance's validity --------------------------------------------------

def test_instance_validity_is_the_intersection_of_its_pairs(conn, instance, rsa_pair, ec_pair):
    assert instance_dates(conn, instance) == (None, None)
    store(conn, instance, rsa_pair)
    assert instance_dates(conn, instance) == (rsa_pair.cert.not_valid_before_utc, rsa_pair.cert.not_valid_after_utc)
    store(conn, instance, ec_pair)
    # rsa: -10d .. +80d, ec: -5d .. +90d  →  -5d .. +80d
    assert instance_dates(conn, instance) == (ec_pair.cert.not_valid_before_utc, rsa_pair.cert.not_valid_after_utc)
    inst_view = conn.execute('SELECT DISTINCT "not before", "not after" FROM inst WHERE "Serial" = %s',
                             (instance,)).fetchall()
    assert inst_view == [instance_dates(conn, instance)]
    # the issue job's success (reserved -> issued) keeps the derived dates
    derived = instance_dates(conn, instance)
    conn.execute("UPDATE certinstances SET state = 'issued' WHERE id = %s", (instance,))
    assert instance_dates(conn, instance) == derived


def test_instance_validity_cannot_be_set_by_hand(conn, instance, rsa_pair, ec_pair):
    store(conn, instance, rsa_pair)
    store(conn, instance, ec_pair)
    derived = instance_dates(conn, instance)
    conn.execute("UPDATE certinstances SET not_before = '2000-01-01', not_after = '2100-01-01' WHERE id = %s", (instance,))
    assert instance_dates(conn, instance) == derived


def test_pairs_that_are_never_valid_together_are_refused(conn, instance):
    early = Pair("rsa", NOW - datetime.timedelta(days=30), NOW - datetime.timedelta(days=10))
    late = Pair("ec", NOW - datetime.timedelta(days=5), NOW + datetime.timedelta(days=90))
    store(conn, instance, early)
    refused_insert(conn, instance, late, match="instance")


def test_deleting_a_pair_re_derives_the_instance_dates(conn, instance, rsa_pair, ec_pair):
    store(conn, instance, rsa_pair)
    store(conn, instance, ec_pair)
    conn.execute("DELETE FROM certkeydata WHERE certinstance = %s AND encryption_algo = 'rsa'", (instance,))
    assert instance_dates(conn, instance) == (ec_pair.cert.not_valid_before_utc, ec_pair.cert.not_valid_after_utc)
    conn.execute("DELETE FROM certkeydata WHERE certinstance = %s", (instance,))
    assert instance_dates(conn, instance) == (None, None)


def test_instances_keep_their_own_dates(conn, instance, rsa_pair):
    """Storing a pair touches its own instance only."""
    cert_id = conn.execute("SELECT certificate FROM certinstances WHERE id = %s", (instance,)).fetchone()[0]
    other = new_instance(conn, cert_id)
    other_pair = Pair("rsa", NOW - datetime.timedelta(days=2), NOW + datetime.timedelta(days=30))
    store(conn, other, other_pair)
    store(conn, instance, rsa_pair)
    assert instance_dates(conn, other) == (other_pair.cert.not_valid_before_utc, other_pair.cert.not_valid_after_utc)
    assert instance_dates(conn, instance) == (rsa_pair.cert.not_valid_before_utc, rsa_pair.cert.not_valid_after_utc)


# --- a stored certificate is immutable, its key may be re-encrypted --------------

def test_cert_and_hash_cannot_change(conn, instance, rsa_pair):
    row_id = store(conn, instance, rsa_pair)
    other = Pair("rsa")
    update = "UPDATE certkeydata SET {} WHERE id = %s"
    assert_refused(conn, update.format("cert = %s"), (other.cert_pem, row_id), sqlstate="SP012", match="cert")
    assert_refused(conn, update.format("cert = %s, key = %s"), (other.cert_pem, other.key_pem, row_id), sqlstate="SP012")
    assert_refused(conn, update.format("hash = %s"), (other.tlsa_hash, row_id), sqlstate="SP012", match="hash")
    assert_refused(conn, update.format("hash = lower(hash)"), (row_id,), sqlstate="SP012", match="hash")
    assert_refused(conn, update.format("encryption_algo = 'ec'"), (row_id,), sqlstate="SP012")
    assert_refused(conn, update.format("not_after = not_after + interval '1 year'"), (row_id,), sqlstate="SP012")
    assert_refused(conn, update.format("certinstance = certinstance + 1"), (row_id,), sqlstate="SP012")
    # assigning the same values is no change
    conn.execute(update.format("certinstance = certinstance, cert = cert, hash = hash, remarks = 'checked'"), (row_id,))
    assert conn.execute("SELECT hash, remarks FROM certkeydata WHERE id = %s", (row_id,)).fetchone() == \
        (rsa_pair.tlsa_hash, "checked")


def test_the_key_may_be_re_encrypted(conn, instance, rsa_pair):
    row_id = store(conn, instance, rsa_pair)
    before = conn.execute("SELECT hash, not_before, not_after FROM certkeydata WHERE id = %s", (row_id,)).fetchone()
    dates = instance_dates(conn, instance)

    encrypted = rsa_pair.encrypted_key_pem()
    conn.execute("UPDATE certkeydata SET key = %s WHERE id = %s", (encrypted, row_id))   # operate_serverPKI -X
    assert bytes(conn.execute("SELECT key FROM certkeydata WHERE id = %s", (row_id,)).fetchone()[0]) == encrypted
    conn.execute("UPDATE certkeydata SET key = %s WHERE id = %s", (rsa_pair.key_pem, row_id))   # operate_serverPKI -Y
    assert bytes(conn.execute("SELECT key FROM certkeydata WHERE id = %s", (row_id,)).fetchone()[0]) == rsa_pair.key_pem

    assert conn.execute("SELECT hash, not_before, not_after FROM certkeydata WHERE id = %s", (row_id,)).fetchone() == before
    assert instance_dates(conn, instance) == dates
    # a clear key is still checked on UPDATE: decrypting to the wrong key is refused
    assert_refused(conn, "UPDATE certkeydata SET key = %s WHERE id = %s", (Pair("rsa").key_pem, row_id),
                   sqlstate="SP008", match="does not belong")
