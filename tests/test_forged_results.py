"""Forged issue results (issue 12, item 6): the database reads names, issuer and chain from
the certificates themselves (db/functions/110_result_checks.sql) and refuses a result that
does not fit its job with SP023, naming the job and what was wrong, and storing nothing.

Each test claims a real issue job, hands complete_issue a forged result, and then proves the
same job still accepts the correct result (so the refusal was about the forgery).
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certfactory import (ACME_CA_NAME, LOCAL_CA_NAME, _ca, issue_result, local_ca_instance, make_leaf, pem,
                         shared_ca)
from helpers import assert_refused, completion_call, snapshot

UTC = dt.timezone.utc
T0 = dt.datetime(2027, 1, 1, tzinfo=UTC)
AGENT = "forger"
NAME, ALT = "www.example.org", "example.org"


# --------------------------------------------------------------------------- the queue, in one place

def claim_sql(kind: str) -> tuple[str, tuple]:
    return "SELECT * FROM claim_jobs(%s, ARRAY[%s], 1)", (AGENT, kind)


def complete_sql(conn, job: dict, result: dict) -> tuple:
    return completion_call(conn, job["id"], job["lease_token"], result)


def claim(conn, kind: str) -> dict:
    row = conn.cursor(row_factory=psycopg.rows.dict_row).execute(*claim_sql(kind)).fetchone()
    assert row is not None, f"no {kind} job to claim"
    return row


def complete(conn, job: dict, result: dict) -> None:
    conn.execute(*complete_sql(conn, job, result))


def refused(conn, job: dict, result: dict, match: str) -> str:
    """complete_issue refuses with SP023 naming the job and `match`, and nothing changed (snapshot)."""
    before = conn.execute("SELECT t::text FROM jobs t WHERE id = %s", (job["id"],)).fetchone()
    err = assert_refused(conn, *complete_sql(conn, job, result), sqlstate="SP023", match=match)
    assert err.diag.message_primary.startswith(f"job {job['id']}: "), err.diag.message_primary
    assert conn.execute("SELECT t::text FROM jobs t WHERE id = %s", (job["id"],)).fetchone() == before
    return err.diag.message_primary


def accepted(conn, job: dict, result: dict) -> None:
    """The job still takes the correct result: the refusal was about the forgery alone."""
    complete(conn, job, result)
    assert conn.execute("SELECT state::text FROM jobs WHERE id = %s", (job["id"],)).fetchone()[0] == "done"


def at(conn, when: dt.datetime) -> None:
    conn.execute("SELECT set_config('pki.now', %s, false)", (when.isoformat(),))


def issue_job(conn, name: str = NAME, cert_type: str = "local", algo: str = "ec", subject_type: str = "server",
              alt: str | None = ALT) -> dict:
    """A certificate and its claimed issue job (-C)."""
    at(conn, T0)
    conn.execute("SELECT * FROM add_cert(%s, %s, %s, %s, false, %s, NULL, NULL, NULL, NULL, NULL)",
                 (name, subject_type, cert_type, algo, alt))
    conn.execute("SELECT * FROM request_create(selection(only_certs => ARRAY[%s]))", (name,)).fetchall()
    return claim(conn, "issue_acme" if cert_type == "LE" else "issue_local")


def local_leaf(cn, sans, algo="ec", ca=LOCAL_CA_NAME, issuer=None, **kw) -> dict:
    key, cert = shared_ca(ca)
    return make_leaf(cn, sans, algo, T0, 90, key, issuer or cert.subject, **kw)


# --------------------------------------------------------------------------- names

@pytest.mark.parametrize("cn, sans, match", [
    ("evil.attacker.net", ["evil.attacker.net"], "is for CN ['evil.attacker.net']"),
    (NAME, [NAME, ALT, "evil.attacker.net"], "(extra ['evil.attacker.net'])"),
    (NAME, [NAME], "(missing ['example.org'])"),
    ("evil.attacker.net", [NAME, ALT], "is for CN ['evil.attacker.net']"),
    (None, [NAME, ALT], "is for CN (none)"),
])
def test_a_local_certificate_for_other_names_is_refused(conn, cn, sans, match):
    job = issue_job(conn)
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    message = refused(conn, job, {**good, "pairs": [local_leaf(cn, sans)]}, match)
    assert "certificate www.example.org (server) wants CN www.example.org" in message
    accepted(conn, job, good)


def test_names_compare_case_insensitively(conn):
    job = issue_job(conn)
    accepted(conn, job, {"pairs": [local_leaf("WWW.Example.ORG", ["Example.org", "www.EXAMPLE.org"])],
                         "cacert": local_ca_instance(conn)})


def test_a_client_certificate_carries_its_alt_names_only(conn):
    job = issue_job(conn, "backup_op", subject_type="client", alt=None)
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    # a client certificate with a DNS name would authenticate as that host
    refused(conn, job, {**good, "pairs": [local_leaf("backup_op", ["evil.attacker.net"])]}, "(extra ['evil.attacker.net'])")
    accepted(conn, job, good)


def test_an_acme_certificate_for_other_names_is_refused(conn):
    job = issue_job(conn, cert_type="LE")
    good = issue_result(conn, "issue_acme", job["certificate"], T0)
    key, ca = shared_ca(ACME_CA_NAME)
    forged = make_leaf(NAME, [NAME, ALT, "evil.attacker.net"], "ec", T0, 90, key, ca.subject)
    refused(conn, job, {**good, "pairs": [forged]}, "(extra ['evil.attacker.net'])")
    accepted(conn, job, good)


def test_an_acme_certificate_may_leave_the_cn_out(conn):
    job = issue_job(conn, cert_type="LE")
    good = issue_result(conn, "issue_acme", job["certificate"], T0)
    key, ca = shared_ca(ACME_CA_NAME)
    accepted(conn, job, {**good, "pairs": [make_leaf(None, [NAME, ALT], "ec", T0, 90, key, ca.subject)]})


def test_a_ca_certificate_as_a_server_certificate_is_refused(conn):
    job = issue_job(conn)
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    key, ca = shared_ca(LOCAL_CA_NAME)
    leaf = issue_result(conn, "issue_local", job["certificate"], T0)["pairs"][0]
    forged = x509.load_pem_x509_certificate(leaf["cert"].encode())
    builder = (x509.CertificateBuilder().subject_name(forged.subject).issuer_name(ca.subject)
               .public_key(forged.public_key()).serial_number(1).not_valid_before(T0)
               .not_valid_after(T0 + dt.timedelta(days=90))
               .add_extension(forged.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, False)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), True))
    refused(conn, job, {**good, "pairs": [{**leaf, "cert": pem(builder.sign(key, hashes.SHA256()))}]},
            "is a CA certificate, not a server certificate")
    accepted(conn, job, good)


# --------------------------------------------------------------------------- keys and algorithms

def test_a_key_of_another_certificate_is_refused(conn):
    job = issue_job(conn, algo="rsa_plus_ec")
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    other = issue_result(conn, "issue_local", job["certificate"], T0)
    rsa_pair, ec_pair = sorted(good["pairs"], key=lambda p: p["algo"], reverse=True)
    forged = {**good, "pairs": [rsa_pair, {**ec_pair, "key": other["pairs"][1]["key"]}]}
    refused(conn, job, forged, "the ec pair cannot be stored: certkeydata for instance")
    refused(conn, job, forged, "the key does not belong to the certificate")
    accepted(conn, job, good)


def test_pairs_of_the_wrong_algorithm_are_refused(conn):
    job = issue_job(conn, algo="rsa_plus_ec")
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    ec_pairs = issue_result(conn, "issue_local", job["certificate"], T0, algos=["ec", "ec"])["pairs"]
    refused(conn, job, {**good, "pairs": ec_pairs}, "issued pairs {ec,ec}, the certificate wants {ec,rsa}")
    # an EC certificate labelled rsa
    refused(conn, job, {**good, "pairs": [{**ec_pairs[0], "algo": "rsa"}, ec_pairs[1]]},
            "the rsa pair cannot be stored")
    accepted(conn, job, good)


# --------------------------------------------------------------------------- the issuer of a local certificate

def test_cacert_naming_the_jobs_own_reserved_instance_is_refused(conn):
    job = issue_job(conn)
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    refused(conn, job, {**good, "cacert": job["instance"]},
            f"cacert {job['instance']} is a reserved instance of the local server certificate \"www.example.org\"")
    accepted(conn, job, good)


def test_cacert_naming_a_server_instance_is_refused(conn):
    first = issue_job(conn, "a.example.org", alt=None)
    accepted(conn, first, issue_result(conn, "issue_local", first["certificate"], T0))
    job = issue_job(conn)
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    refused(conn, job, {**good, "cacert": first["instance"]},
            f"cacert {first['instance']} is an issued instance of the local server certificate \"a.example.org\", "
            "not an issued or deployed instance of the local CA")
    accepted(conn, job, good)


@pytest.mark.parametrize("cacert", [None, 999999])
def test_a_local_result_without_a_stored_cacert_is_refused(conn, cacert):
    job = issue_job(conn)
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    refused(conn, job, {**good, "cacert": cacert}, "cacert ")
    accepted(conn, job, good)


def test_a_cacert_that_is_no_number_never_reaches_the_checks(conn):
    """cacert is an int argument of complete_issue: text such as "1; DROP TABLE jobs" is refused by
    PostgreSQL's input of the type, before any function runs; the job is still the agent's."""
    job = issue_job(conn)
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    before = snapshot(conn)
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute(*complete_sql(conn, job, {**good, "cacert": "1; DROP TABLE jobs"}))
    assert snapshot(conn) == before
    accepted(conn, job, good)


def test_cacert_naming_a_different_local_ca_is_refused(conn):
    job = issue_job(conn)
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    # a second local CA (-I again): its instance is genuine, but it did not sign this leaf
    conn.execute("SELECT request_local_ca('Other local CA', 'ec')")
    ca_job = claim(conn, "issue_local_ca")
    complete(conn, ca_job, issue_result(conn, "issue_local_ca", ca_job["certificate"], T0, days=3650))
    refused(conn, job, {**good, "cacert": ca_job["instance"]},
            f"names its issuer \"CN={LOCAL_CA_NAME}\", but the local CA of cacert {ca_job['instance']} is \"CN=Other local CA\"")
    accepted(conn, job, good)


def test_a_signature_by_another_key_under_the_ca_name_is_refused(conn):
    job = issue_job(conn)
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    impostor, _ = _ca(LOCAL_CA_NAME)   # same name, own key
    _, ca = shared_ca(LOCAL_CA_NAME)
    forged = make_leaf(NAME, [NAME, ALT], "ec", T0, 90, impostor, ca.subject)
    refused(conn, job, {**good, "pairs": [forged]},
            f"does not verify with the key of the local CA of cacert {good['cacert']}")
    accepted(conn, job, good)


def test_a_local_ca_is_self_signed(conn):
    conn.execute("SELECT request_local_ca('Local CA', 'ec')")
    job = claim(conn, "issue_local_ca")
    good = issue_result(conn, "issue_local_ca", job["certificate"], T0, days=3650)
    refused(conn, job, {**good, "cacert": local_ca_instance(conn)}, "a local CA is self-signed")
    # a CA certificate named Local CA but signed by the test CA's key
    key, _ = shared_ca(LOCAL_CA_NAME)
    own = x509.load_pem_x509_certificate(good["pairs"][0]["cert"].encode())
    forged = (x509.CertificateBuilder().subject_name(own.subject).issuer_name(own.subject).public_key(own.public_key())
              .serial_number(2).not_valid_before(T0).not_valid_after(T0 + dt.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), True).sign(key, hashes.SHA256()))
    refused(conn, job, {**good, "pairs": [{**good["pairs"][0], "cert": pem(forged)}]},
            "does not verify with the key of itself")
    accepted(conn, job, good)


# --------------------------------------------------------------------------- ACME chains and authorized_until

def chain_of_two(name: str, issuer_key=None):
    """root -> intermediate `name`: (intermediate key, intermediate, root)"""
    root_key, root = _ca(f"{name} Root")
    key = issuer_key or ec.generate_private_key(ec.SECP256R1())
    inter = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(root.subject).public_key(key.public_key()).serial_number(3)
             .not_valid_before(T0 - dt.timedelta(days=1)).not_valid_after(T0 + dt.timedelta(days=3650))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), True).sign(root_key, hashes.SHA256()))
    return key, inter, root


def test_a_chain_of_two_that_links_is_accepted(conn):
    job = issue_job(conn, cert_type="LE")
    key, inter, root = chain_of_two("R99")
    leaf = make_leaf(NAME, [NAME, ALT], "ec", T0, 90, key, inter.subject)
    accepted(conn, job, {"pairs": [leaf], "chain": [pem(inter), pem(root)]})
    assert conn.execute("SELECT count(*) FROM subjects WHERE name = 'R99' AND type = 'CA'").fetchone()[0] == 1


def test_an_acme_chain_that_does_not_link_is_refused(conn):
    job = issue_job(conn, cert_type="LE")
    good = issue_result(conn, "issue_acme", job["certificate"], T0)
    key, inter, root = chain_of_two("R99")
    leaf = make_leaf(NAME, [NAME, ALT], "ec", T0, 90, key, inter.subject)
    _, stranger = _ca("shop.example.org")
    # the leaf under an issuer that did not sign it (the review's forged chain would have named a real host)
    refused(conn, job, {**good, "chain": [pem(stranger)]},
            f"names its issuer \"CN={ACME_CA_NAME}\", but chain certificate 1 of pair 1 is \"CN=shop.example.org\"")
    # same issuer name, other key
    _, impostor = _ca(ACME_CA_NAME)
    refused(conn, job, {**good, "chain": [pem(impostor)]}, "does not verify with the key of chain certificate 1 of pair 1")
    # leaf -> intermediate links, intermediate -> "root" does not
    refused(conn, job, {**good, "pairs": [leaf], "chain": [pem(inter), pem(stranger)]},
            "chain certificate 1 of pair 1 names its issuer \"CN=R99 Root\", but chain certificate 2 of pair 1 is")
    _, other_root = _ca("R99 Root")
    refused(conn, job, {**good, "pairs": [leaf], "chain": [pem(inter), pem(other_root)]},
            "the signature of chain certificate 1 of pair 1 does not verify with the key of chain certificate 2")
    # the intermediate's place taken by the leaf itself (not a CA)
    refused(conn, job, {**good, "chain": [good["pairs"][0]["cert"]]}, "is not a CA certificate")
    refused(conn, job, {**good, "chain": []}, '"chain" of the ec certificate (pair 1) must be a non-empty list')
    refused(conn, job, {**good, "chain": None}, 'an ACME result must carry "chain"')
    accepted(conn, job, good)
    # no CA subject was made from the refused chains: the name is free for a real certificate
    conn.execute("SELECT * FROM add_cert('shop.example.org', 'server', 'LE', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)")


def test_the_second_pair_may_bring_its_own_chain(conn):
    job = issue_job(conn, cert_type="LE", algo="rsa_plus_ec")
    good = issue_result(conn, "issue_acme", job["certificate"], T0, algos=["rsa", "ec"])
    key, inter, root = chain_of_two("E99")
    ec_leaf = make_leaf(NAME, [NAME, ALT], "ec", T0, 90, key, inter.subject)
    refused(conn, job, {**good, "pairs": [good["pairs"][0], ec_leaf]},
            "the ec certificate (pair 2) names its issuer \"CN=E99\"")
    accepted(conn, job, {**good, "pairs": [good["pairs"][0], {**ec_leaf, "chain": [pem(inter), pem(root)]}]})


def test_authorized_until_is_at_most_the_leafs_not_after(conn):
    job = issue_job(conn, cert_type="LE")
    good = issue_result(conn, "issue_acme", job["certificate"], T0)
    # a timestamptz argument: what is no timestamp is refused by PostgreSQL's input of the type, nothing runs
    before = snapshot(conn)
    with pytest.raises(psycopg.errors.InvalidDatetimeFormat):
        conn.execute(*complete_sql(conn, job, {**good, "authorized_until": "tomorrow-ish"}))
    assert snapshot(conn) == before
    # clamped, not refused: the certificate ends 90 days after T0, and so does what it authorizes
    accepted(conn, job, {**good, "authorized_until": "2999-01-01T00:00:00Z"})
    assert conn.execute("SELECT authorized_until FROM certificates WHERE id = %s",
                        (job["certificate"],)).fetchone()[0] == T0 + dt.timedelta(days=90)


def test_an_earlier_authorized_until_is_kept(conn):
    job = issue_job(conn, cert_type="LE")
    good = issue_result(conn, "issue_acme", job["certificate"], T0)
    accepted(conn, job, {**good, "authorized_until": "2027-01-31T00:00:00Z"})
    assert conn.execute("SELECT authorized_until FROM certificates WHERE id = %s",
                        (job["certificate"],)).fetchone()[0] == dt.datetime(2027, 1, 31, tzinfo=UTC)


@pytest.mark.parametrize("extra, match", [
    ({"authorized_until": "2999-01-01T00:00:00Z"}, 'the issue_local result carries "authorized_until"'),
    ({"authorized_until": "2027-01-02T00:00:00Z"}, 'the issue_local result carries "authorized_until"'),
    ({"chain": "CHAIN"}, 'the issue_local result carries "chain"'),
])
def test_a_local_result_carries_no_chain_nor_authorized_until(conn, extra, match):
    job = issue_job(conn)
    good = issue_result(conn, "issue_local", job["certificate"], T0)
    if extra.get("chain"):
        extra = {"chain": [pem(shared_ca(LOCAL_CA_NAME)[1])]}
    refused(conn, job, {**good, **extra}, match)
    accepted(conn, job, good)
    # a local certificate's reminder is not silenced
    assert conn.execute("SELECT authorized_until FROM certificates WHERE id = %s",
                        (job["certificate"],)).fetchone()[0] is None


def test_an_issuer_facts_key_from_the_agent_is_ignored(conn):
    job = issue_job(conn, cert_type="LE")
    good = issue_result(conn, "issue_acme", job["certificate"], T0)
    accepted(conn, job, {**good, "issuer_facts": {"subject_cn": "www.example.org", "algo": "ec", "hash": "00",
                                                  "is_ca": True}})
    assert conn.execute("SELECT s.name::text FROM certinstances i JOIN subjects s ON s.certificate = "
                        "(SELECT certificate FROM certinstances WHERE id = i.cacert) WHERE i.id = %s",
                        (job["instance"],)).fetchone()[0] == ACME_CA_NAME
