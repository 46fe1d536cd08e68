"""`serverpki db import-legacy`: take over a serverPKI 0.9.x database.

    serverpki db import-legacy --from 'dbname=serverpki host=old.example.org user=pki_op' \\
        [--dsn TARGET] [--passphrase-file /usr/local/etc/serverpki/db_encryption_key] \\
        [--ca-passphrase-file FILE] [--account-file /var/serverpki/account.json] \\
        [--acme-directory URL] [--force]

What it does, for the operator
------------------------------
It reads the original's database (--from; read only, in one snapshot) and writes everything into ours
(--dsn, SERVERPKI_DSN or PG* like `db upgrade`; run it as the schema owner, as the installer: it writes
instances and keys) in ONE transaction: either all of it is there afterwards, or nothing changed.
Run `serverpki db upgrade` on the target first.

- It refuses a schema version it does not know (pki.revision.schemaversion; 0.9.11 = 6, its fresh
  install says 5 for the same tables), naming it: exit status 3.
- It refuses a target that holds certificates of its own unless --force (then the legacy rows are
  added beside them; an id the target uses for something else stops the import): exit status 1.
- Running it again changes nothing and prints the same report: every row is matched first (same
  instance id and certificate hash, same certificate id and subject name, same host/place/... name).
  A jail or place of the target with the legacy one's name but other content (a jail's disthost; a
  place's file type, paths, owner, mode, reload command) is not reused: the import stops naming both
  (exit status 1, nothing changed). Services are matched by (name, port), disthosts by fqdn.
- Instance ids (the serials of `-n -v` and `-E`) and certificate ids are kept; disthosts, jails,
  places and services keep theirs when free (services are matched by name and port: ours has the
  usual ones already). Our sequences are set past the imported ids.
- Keys: --passphrase-file is the original's db_encryption_key file; its WHOLE content is the
  passphrase (as the original read it). Every key is opened in memory and stored as PKCS#8: encrypted
  with that same passphrase when our database keeps keys encrypted (pki.revision.keysencrypted; it is
  switched on when the original's were encrypted and the target holds no keys yet), so point our
  configuration's paths.db_encryption_key at the same file. A key that does not open stops the
  import, naming the instance (exit status 1, nothing changed), and so does a stored certificate that
  does not parse. No key is written to disk or a log.
  Encrypted 0.9.x keys are never stored in clear: key encryption is switched on only in a target that
  holds no certificates and no stored keys (ACME accounts, keys of orders in flight); a target that
  keeps its keys in clear and holds any of these (certificates: --force) is refused (exit status 1,
  nothing changed): encrypt its keys first (operate_serverPKI -X), or import into an empty database. When the target keeps its keys encrypted
  already, the passphrase the import stores keys with (the --passphrase-file one, else asked twice on
  the terminal) must open the target's newest encrypted key, else it is refused before anything is
  written (exit status 1).
- The local CA: the original's CA certificate (subject type CA, e.g. "Local CA") and its instances are
  imported like any certificate (a CA of versions before 0.9, kept only in the flat ca_cert/ca_key
  files, comes from --ca-cert-file/--ca-key-file as 0.9.11's first -C would have stored it, named
  --local-ca-name: flat_ca.py); its key is stored encrypted with --ca-passphrase-file (default: the
  --passphrase-file passphrase, which the original's CA key was encrypted with), so set our
  local_ca.passphrase_file to that file and local_ca.name to the original's SUBJECT_LOCAL_CA; -C
  then signs with it and what it signed stays verifiable. Let's Encrypt's intermediate (a CA
  certificate without a key) comes along as it is.
- The ACME account: the original keeps it in a file of its work directory (manuale/automatoes JSON:
  {"key": PEM, "uri": account URL}); give it with --account-file and it becomes our pki.acme_accounts
  row for its directory, so no new registration. The directory is that of the server the account's uri
  names (https://HOST/directory: Let's Encrypt's production or staging); an --acme-directory on another
  host than the uri's is refused (exit status 2).
- What the original deployed stays deployed: a pki.deployments row (by no job, at the instance's 0.9
  'updated' time) for each deployed instance on every target of its certificate, and for each CA's
  current instance (the newest issued) on every target of the CA, so the first -S distributes none again.
- What ours would write elsewhere than 0.9.x did is reported per target: the key of a jailed target
  whose place has an absolute key_path (0.9.x wrote it outside the jail), the chain files of an LE
  certificate in a place with a key_path (0.9.x wrote none). docs/migrating.md explains both.
- It ends with a report: rows read and imported per table, and every row not carried over with why
  and the fix (an unknown state, an instance without a stored certificate, a place our validation
  refuses, a target without a place, ...).

The mapping (0.9.11 schema version 6 -> ours)
---------------------------------------------
  disthosts (id, fqdn, jailroot, remarks)            -> disthosts, matched by fqdn
  jails (id, name, disthost)                         -> jails, matched by name (validation: jailroot)
  places (id, name, cert_file_type, cert_path, key_path, uid, gid, mode, chownboth, pglink,
          reload_command)                            -> places, matched by name (validation: mode); one
        with a key_path comes as 'separate', what 0.9.x wrote for it whatever its type (reported)
  services (id, name, port, tlsaprefix)              -> services, matched by (name, port)
  certificates (id, type, disabled, authorized_until, encryption_algo ('rsa plus ec' of 0.9.x ->
          rsa_plus_ec), ocsp_must_staple, created)   -> certificates, same id
  subjects (type, name, isaltname, certificate)      -> subjects (new ids); one without a certificate
                                                        is left out
  certificates_services, targets                     -> the same, ids mapped; a target needs a place
  certinstances (id, certificate, state, ocsp_must_staple, cacert, not_before, not_after, updated)
                                                     -> certinstances, same id; cacert pointing at
        itself (a self-signed CA) becomes NULL; not_before/not_after are derived from the stored
        certificates by our trigger; the state is reached along our state machine from 'reserved'
        (each step an event with the reason "imported from serverPKI 0.9.x"); an older instance 0.9.11
        left 'deployed' beside a newer one (until its next run) ends 'expired', said in the report
        (both rules: pki.import_instance_state, db/functions/180_import_legacy.sql);
        tlsa_published of a prepublished or deployed instance is its 0.9 'updated' time (its TLSA
        records are live)
  certkeydata (certinstance, encryption_algo, cert, key (traditional PEM, maybe DEK-Info encrypted;
          b'' for a CA without key), hash)           -> certkeydata (hash and dates derived by our
                                                        trigger; key PKCS#8, ours encrypted or clear);
        key_file_format 'traditional' and file_name_algo = its label when that is not the key's
        algorithm, so the hosts' files stay what 0.9.x wrote (distribute and -K write them so)
  revision (schemaversion, keysencrypted)            -> checked; keysencrypted carried over
  the account file (work dir)                        -> acme_accounts
Naive TIMESTAMP columns of 0.9.x are read in the old server's TimeZone, as the original wrote them.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from .. import keystore
from ..db import connect, refusals_as_errors
from ..errors import ServerPKIError, UsageError
from ..queries import q
from ..secretfile import read_secret
from .flat_ca import add_flat_ca
from .reader import read_legacy
from .report import Report
from .writer import REASON, Writer


class TargetNotEmpty(ServerPKIError):
    """The target holds certificates of its own."""


@dataclass
class Options:
    from_dsn: str
    dsn: str | None = None
    passphrase_file: Path | None = None
    ca_passphrase_file: Path | None = None
    account_file: Path | None = None
    acme_directory: str | None = None   # None: the directory of the account's own server
    force: bool = False
    ca_cert_file: Path | None = None     # the flat local CA of versions before 0.9 (flat_ca.py)
    ca_key_file: Path | None = None
    local_ca_name: str = "Local CA"      # the original's SUBJECT_LOCAL_CA


def _account(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        account = json.loads(read_secret(path, "--account-file"))
    except ValueError:
        raise UsageError(f"--account-file {path}: not the original's account file (JSON with key and uri)") from None
    if not isinstance(account, dict) or not isinstance(account.get("key"), str) or not isinstance(account.get("uri"), str):
        raise UsageError(f"--account-file {path}: not the original's account file (JSON with key and uri)")
    return account


def _directory(uri: str, given: str | None) -> str:
    """The ACME directory of the account: the given one, which must be on the account's server, else that
    server's https://HOST/directory (Let's Encrypt's production or staging: the uri says which)."""
    host = urlsplit(uri).netloc.lower()
    if given is None:
        return f"https://{host}/directory"
    if urlsplit(given).netloc.lower() != host:
        raise UsageError(f"--acme-directory {given} is not on the account's server ({host}, its uri {uri}): "
                         f"give https://{host}/directory, or leave --acme-directory out")
    return given


@contextmanager
def _as_owner():
    """A role that may not write instances and keys gets told whom to run as, in one line."""
    try:
        yield
    except psycopg.errors.InsufficientPrivilege:
        raise ServerPKIError("the target refuses the import: run it as the schema owner (the role that ran "
                             "serverpki db init), as it writes instances and keys; nothing was imported") from None


def _our_passphrase(cur, legacy_passphrase: bytes | None, passphrase_file: Path | None) -> bytes:
    """The passphrase our keys will be stored with (the original's, else asked twice on a terminal), proven
    on the target's newest encrypted key before anything is written: a key under another passphrase than its
    neighbours could never be opened again (the agent checks the same, handlers/common.py)."""
    passphrase, source = legacy_passphrase, (f"--passphrase-file {passphrase_file}" if passphrase_file
                                             else "the passphrase entered")
    if passphrase is None:
        passphrase = keystore.read_passphrase(None, "Passphrase of our stored keys: ")
        if keystore.read_passphrase(None, "The same passphrase again: ") != passphrase:
            raise UsageError("the two passphrases entered differ; nothing was imported")
    sample = cur.execute(q("newest_encrypted_key")).fetchone()
    if sample is not None:
        try:
            keystore.load_key(sample[1], passphrase, f"stored key {sample[0]}")
        except keystore.WrongPassphrase:
            raise ServerPKIError(f"{source}: wrong passphrase, it does not open the target's stored key {sample[0]} "
                                 "(our keys are stored under one passphrase, that of paths.db_encryption_key); "
                                 "nothing was imported") from None
    return passphrase


def import_legacy(opts: Options) -> Report:
    """Import the 0.9.x database into ours in one transaction; the report of what was carried over."""
    account = _account(opts.account_file)
    directory = _directory(account["uri"], opts.acme_directory) if account else None
    with connect(opts.from_dsn) as old, refusals_as_errors():
        old.read_only = True
        old.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ   # one snapshot of every table
        data = read_legacy(old)
        old.rollback()
    report = Report(read={t: len(r) for t, r in data.rows.items()})
    if account:
        report.read["acme_accounts"] = 1
    legacy_passphrase = (keystore.read_passphrase(opts.passphrase_file, "Passphrase of the 0.9.x keys: ")
                         if data.keysencrypted or opts.passphrase_file else None)
    ca = (keystore.read_passphrase(opts.ca_passphrase_file, "Passphrase of the local CA: ")
          if opts.ca_passphrase_file else legacy_passphrase)
    if (opts.ca_cert_file is None) != (opts.ca_key_file is None):
        raise UsageError("--ca-cert-file and --ca-key-file go together: the flat local CA's certificate and key")
    if opts.ca_cert_file is not None:
        add_flat_ca(data, report, opts.ca_cert_file, opts.ca_key_file, opts.local_ca_name, ca)
    with connect(opts.dsn) as conn, refusals_as_errors(), _as_owner():
        with conn.transaction():
            cur = conn.cursor()
            mains = [(s["certificate"], s["name"]) for s in data.rows["subjects"] if not s["isaltname"]]
            foreign = cur.execute(q("import_foreign_certificates"),
                                  {"ids": [c for c, _ in mains], "names": [n for _, n in mains]}).fetchall()
            if foreign and not opts.force:
                named = ", ".join(f"{i} ({n})" for i, n in foreign)
                raise TargetNotEmpty(f"the target database holds certificates of its own ({named}, ...): import into "
                                     "a fresh one (serverpki db init), or give --force to add the legacy rows beside them")
            encrypted = cur.execute(q("keys_encrypted_any_release")).fetchone()[0]
            if data.keysencrypted and not encrypted:
                # encryption is switched on only in a target without any stored key, else it is left off
                held = ("certificates" if cur.execute(q("import_certificate_count")).fetchone()[0] > 0 else
                        "stored keys (ACME accounts or orders)" if cur.execute(q("import_stored_key_count")).fetchone()[0] > 0
                        else None)
                if held:
                    raise ServerPKIError(
                        f"the 0.9.x keys are encrypted but the target keeps its keys in clear (it holds {held}, so "
                        "key encryption stays off): encrypt the target's keys first (operate_serverPKI -X), or import "
                        "into an empty database; nothing was imported")
                cur.execute(q("import_keys_encrypted"))
                encrypted = True
            if encrypted and data.keysencrypted:
                report.notes.append("our keys are stored encrypted (as the original's were): "
                                    "set paths.db_encryption_key to the --passphrase-file file")
            ours = _our_passphrase(cur, legacy_passphrase, opts.passphrase_file) if encrypted else None
            cur.execute(q("import_set_context"), {"reason": REASON})
            writer = Writer(conn, data, report)
            writer.sequences()
            writer.config()
            writer.certificates_and_names()
            writer.instances({"legacy": legacy_passphrase, "ours": ours, "ca": ca})
            writer.deployments()
            if account:
                writer.account(account, directory, ours)
            writer.sequences()
    return report
