"""issue_local and issue_local_ca: certificates of the local CA, made with `cryptography`.

issue_local signs one key/certificate pair per algorithm of the certificate
(rsa_plus_ec: two) with the newest issued local CA; the CA's key is stored
encrypted with the local CA passphrase (local_ca.passphrase_file, or asked on
the terminal). New keys are stored encrypted with the db_encryption_key
passphrase when the database says the keys are encrypted (revision.keysencrypted).

issue_local_ca makes a new CA key and its self-signed certificate; the CA's key
is always stored encrypted with the local CA passphrase, and -X/-Y leave it so.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from typing import Any

from .. import keystore, x509util
from ..errors import GiveUp
from . import Completion, Context, IssuedPair, Job, handler
from .common import (about, algorithms, batch_db_passphrase, batch_issue_request, batch_read, batch_value, db_now,
                     issue_request, open_stored_key, reused_key)

NO_CA = "no local CA: issue one with operate_serverPKI -I"


@contextlib.contextmanager
def _no_retry() -> Iterator[None]:
    """A configuration, passphrase or CA problem does not mend by trying again: give up, saying why."""
    try:
        with about(None):
            yield
    except ValueError as exc:
        raise GiveUp(f"cannot issue: {exc}") from exc


def x509_names(config: Any) -> dict[str, str | None]:
    """The distinguished-name parts of the x509 configuration (C, ST, L, O, OU)."""
    section = config.x509
    return {name: getattr(section, name, None)
            for name in ("country", "state", "locality", "organization", "organizational_unit")}


@handler("issue_local")
def issue_local(job: Job, ctx: Context) -> Completion:
    """One pair per algorithm of the certificate, signed by the newest local CA."""
    with _no_retry():
        # what is the same for the agent's whole claimed batch is read once for it (ctx.batch)
        req = batch_issue_request(job, ctx)
        if req["cert_type"] != "local" or req["subject_type"] not in x509util.SUBJECT_TYPES:
            raise GiveUp(f"certificate {req['name']} is a {req['cert_type']} {req['subject_type']} certificate, "
                         "not a local server or client certificate")
        ca = batch_read(ctx, "local_ca_current")
        if ca is None:
            raise GiveUp(NO_CA)
        # the opened key by the instance read for the batch: its key's digest (_open_ca_key) taken once a batch
        ca_cert = _ca_certificate(ca["cert"])
        ca_key = batch_value(ctx, f"ca_key {ca['id']}", lambda: _open_ca_key(ca, ctx))
        now = batch_read(ctx, "db_now")["now"]
        x509cfg = ctx.config.x509
        lifetime = x509cfg.server_lifetime_days if req["subject_type"] == "server" else x509cfg.client_lifetime_days
        pairs = []
        for algo in algorithms(req["encryption_algo"]):
            # the database decided whether the key of the predecessor stays (key reuse, stable TLSA records)
            key = reused_key(job, ctx, algo) or x509util.new_key(algo, x509cfg.rsa_key_size, x509cfg.ec_curve)
            ctx.keep_alive()
            cert = x509util.issue_leaf(
                ca_cert, ca_key, key.public_key(), req["name"], altnames=req["altnames"] or [],
                subject_type=req["subject_type"], must_staple=req["ocsp_must_staple"],
                lifetime_days=lifetime, names=x509_names(ctx.config), now=now)
            pairs.append((algo, cert, key))
        # a -X/-Y applied meanwhile: complete_issue refuses the key's form, the job is retried
        passphrase = batch_db_passphrase(ctx)
        return Completion(args={
            "pairs": [IssuedPair(algo, x509util.cert_pem(cert), keystore.dump_key(key, passphrase))
                      for algo, cert, key in pairs],
            "cacert": ca["id"],
        })


def _read_ahead(jobs: list[Job], ctx: Context) -> None:
    """What the issue_local handlers of a claim read once for it (ctx.batch), read by the agent before they
    start (Agent._claim_ahead): the certificates, the database's clock. Not the local CA nor the stored keys'
    form: a claim made ahead waits for the one before it, and a CA replaced (-I) or keys encrypted (-X/-Y)
    meanwhile must be what its jobs use (_read_at_turn)."""
    batch_issue_request(jobs[0], ctx)
    batch_read(ctx, "db_now")


def _read_at_turn(jobs: list[Job], ctx: Context) -> None:
    """The local CA and the stored keys' form (a -X/-Y applied later: the completion refuses the key's form,
    SP028, and the job is retried), read by the agent when the claim's turn comes: as the last handlers of the
    claim before it start (Agent._read_at_turn: a few jobs before), or before its first handler, after the jobs
    of other kinds claimed before it (Agent._outcomes)."""
    batch_read(ctx, "local_ca_current")
    batch_read(ctx, "keys_encrypted")


issue_local.read_ahead = _read_ahead
issue_local.read_at_turn = _read_at_turn


# opened CA keys of this process, by instance and stored form: a run that issues many
# certificates asks for (and derives) the passphrase once, not once per certificate
_OPEN_CA_KEYS: dict[tuple[int, str], x509util.PrivateKey] = {}


def _open_ca_key(ca: dict[str, Any], ctx: Context) -> x509util.PrivateKey:
    cache_key = (ca["id"], hashlib.sha256(ca["key"].encode()).hexdigest())
    if cache_key not in _OPEN_CA_KEYS:
        _OPEN_CA_KEYS[cache_key] = _load_ca_key(ca, ctx)
    return _OPEN_CA_KEYS[cache_key]


@functools.lru_cache(maxsize=8)
def _ca_certificate(pem: str) -> Any:
    """A CA certificate, parsed once per process (by its PEM text): parsed anew for every job, its extensions
    were read again for each one's authority key identifier."""
    return x509util.load_cert(pem)


def _load_ca_key(ca: dict[str, Any], ctx: Context) -> x509util.PrivateKey:
    return open_stored_key(ca["key"], ctx.config.local_ca.passphrase_file, "local_ca.passphrase_file",
                           f"key of local CA instance {ca['id']}")


@handler("issue_local_ca")
def issue_local_ca(job: Job, ctx: Context) -> Completion:
    """A new CA key and its self-signed certificate; the key encrypted with the local CA passphrase."""
    with _no_retry():
        req = issue_request(job, ctx)
        if req["cert_type"] != "local" or req["subject_type"] != "CA":
            raise GiveUp(f"certificate {req['name']} is not a local CA (cert type local, subject type CA): "
                         "-I issues the local CA; add the CA with add_cert as the operation manual shows")
        if req["encryption_algo"] not in ("rsa", "ec"):
            raise GiveUp(f"local CA {req['name']}: a CA has one key, 'rsa' or 'ec', not {req['encryption_algo']!r}: "
                         f"UPDATE certificates SET encryption_algo = 'ec' WHERE id = cert_id('{req['name']}'), then -I again")
        cfg = ctx.config.local_ca
        # read the passphrase first: no key is made that could not be stored
        passphrase = keystore.read_passphrase(cfg.passphrase_file, "Passphrase of the new local CA: ")
        if req["encryption_algo"] == "rsa":
            key = x509util.new_key("rsa", cfg.key_size)
        else:
            # local_ca.key_size names the curve by its size (256, 384, 521); else the x509 curve
            curve = x509util.CURVE_BY_BITS.get(cfg.key_size, ctx.config.x509.ec_curve)
            key = x509util.new_key("ec", ec_curve=curve)
        ctx.keep_alive()
        cert = x509util.build_ca_certificate(key, req["name"], cfg.lifetime_days,
                                             names=x509_names(ctx.config), now=db_now(ctx))
        return Completion(args={
            "pairs": [IssuedPair(req["encryption_algo"], x509util.cert_pem(cert), keystore.dump_key(key, passphrase))],
        })
