"""Privileges and secrets in the database, checked systematically from the catalog.

tests/test_roles.py shows the three roles at work on hand-picked statements; this
module enumerates instead: every relation, column, sequence and function of the
schemas pki and dd, for pki_admin, pki_agent, pki_report and PUBLIC, on a database
that holds real keys issued by the agent's handlers (the local CA, local
certificates of every key algorithm, an ACME account), once with the keys in clear
and once after -X encrypted them.

- pki_report (and pki_admin, which "never reads a private key") read every row of
  everything they may SELECT and call every function they may EXECUTE; no value
  holds private key material: a PEM private-key marker, or 40 characters of the
  base64 (or 32 bytes of the hex, 40 digits of a private number) of any stored key,
  in clear or encrypted. KeyMaterial is the detector; test_secrets.py uses it too.
- nobody but pki_admin writes a table directly, pki_admin only the configuration;
  pki_agent acts through SECURITY DEFINER functions, whose code (with the triggers
  it fires) writes neither configuration nor the state machine's tables.
- pki.events is append-only for every role and for its owner, TRUNCATE included.
- PUBLIC holds nothing in pki and dd but the citext extension's functions;
  SECURITY DEFINER functions pin their search_path.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from helpers import inlined_by_the_planner, owner_conn
from serverpki.config import Config, LocalCAConfig, PathsConfig, X509Config
from serverpki.errors import GiveUp
from serverpki.handlers import HANDLERS, Completion, Context, Job
from serverpki.handlers import issue_local as _issue_local  # noqa: F401  (registers issue_local, issue_local_ca)
from serverpki.handlers import keys as _keys  # noqa: F401  (registers encrypt_keys, decrypt_keys)
from lab.lab import secret as secret_file
from helpers import complete

INSUFFICIENT_PRIVILEGE = "42501"
ROLES = ("pki_admin", "pki_agent", "pki_report")
SCHEMAS = ("pki", "dd")
AGENT = "privileges-test"
# the lease token of each job the tests claimed (the agent keeps it; the keyed copies share the jobs)
LEASES: dict[int, str] = {}
CA_PASS = "ca passphrase of the privileges test"
DB_PASS = "db passphrase of the privileges test"

# what each role may write directly; everything else (new tables too) must refuse every write
ADMIN_WRITES = {"certificates", "subjects", "services", "certificates_services", "disthosts", "jails", "places", "targets"}
ADMIN_COLUMN_UPDATES = {"settings": {"value", "remarks"}}
# SECURITY DEFINER functions the agent may call (some of them: the test follows whatever the catalog lists)
AGENT_DEFINER_FUNCTIONS = {"claim_jobs", "extend_lease", "release_jobs", "complete_issue", "complete_distribute", "fail_job",
                           "save_job_progress"}
# tables no SECURITY DEFINER code may write: configuration, the state machine, the job kinds
NEVER_WRITTEN_BY_DEFINERS = {"subjects", "services", "certificates_services", "disthosts", "jails", "places",
                             "targets", "settings", "state_transitions", "job_kinds", "schema_migrations"}
# the one column of a configuration table the database's own functions keep: the reminder's / authorization's date
DEFINER_MAY_UPDATE = {"certificates": {"authorized_until"}}
# the one function that adds configuration: an ACME completion stores the issuer of its chain (verified by
# check_result_certs) as an LE certificate of subject type CA, named after the issuer, on first use (130_acme)
DEFINER_MAY_INSERT = {"apply_acme_chain": {"certificates", "subjects"}}


# =========================================================================== the detector

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
# a PEM private-key marker of any kind (PRIVATE KEY, RSA/EC/DSA/OPENSSH/ENCRYPTED PRIVATE KEY) with key material
# next to it: base64 after a BEGIN line (header lines, real or JSON-escaped line ends between), or before an END
# line. A marker alone (SQL such as key LIKE '-----BEGIN %PRIVATE KEY-----%') holds no key.
_NL = r"(?:\s|\\[rn])*"
PRIVATE_MARKER = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----" + _NL + r"(?:[A-Za-z-]+: [^\n\\]*" + _NL + r")*[A-Za-z0-9+/]{8}"
    r"|[A-Za-z0-9+/=]{8}" + _NL + r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_B64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}")
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{64,}")
_DEC_RUN = re.compile(r"[0-9]{40,}")
B64_WINDOW, HEX_WINDOW, DEC_WINDOW = 40, 64, 40


def pem_body(pem: str) -> str:
    """The base64 of a PEM block without its header lines (Proc-Type, DEK-Info) and line ends."""
    m = _PEM_BLOCK.search(pem)
    text = m.group(2) if m else pem
    return "".join(line.strip() for line in text.strip().splitlines() if ":" not in line)


def _b64_shifts(der: bytes) -> list[str]:
    """The base64 of der at every byte alignment: a piece of it shows up in some longer base64 only aligned."""
    return [base64.b64encode(der[k:]).decode().rstrip("=") for k in range(3)]


def _windows(text: str, width: int) -> set[str]:
    return {text[i:i + width] for i in range(0, max(len(text) - width + 1, 0))}


def _private_numbers(key) -> list[int]:
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()
        return [n.d, n.p, n.q, n.dmp1, n.dmq1, n.iqmp]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return [key.private_numbers().private_value]
    return []


def _public_numbers(key) -> list[int]:
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        return [pub.public_numbers().n, pub.public_numbers().e]
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return [pub.public_numbers().x, pub.public_numbers().y]
    return []


def _hex(value: int) -> str:
    h = format(value, "x")
    return h if len(h) % 2 == 0 else "0" + h


@dataclass
class KeyMaterial:
    """What private key material looks like, and a scanner for texts that might hold some.

    For each key: the stored PEM's base64 (clear or encrypted), the base64 at all byte
    alignments and the hex of its DER forms (PKCS#8 and traditional), the hex and decimal of
    its private numbers. Pieces that are public as well (the certificate, the public key,
    its numbers: they sit inside the private key's DER too) are left out, so that a
    certificate or a TLSA record is not mistaken for a key.
    """

    b64: dict[str, str] = field(default_factory=dict)
    hex: dict[str, str] = field(default_factory=dict)
    dec: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    _public_b64: set[str] = field(default_factory=set)
    _public_hex: set[str] = field(default_factory=set)
    _public_dec: set[str] = field(default_factory=set)

    def add_key(self, pem: str | bytes, label: str, passphrases: tuple[bytes | None, ...] = (None,),
                cert_pem: str | bytes | None = None) -> None:
        """A stored private key (PEM); the passphrases are tried to open an encrypted one."""
        pem = pem.decode() if isinstance(pem, bytes) else pem
        key = None
        for passphrase in passphrases:
            try:
                key = serialization.load_pem_private_key(pem.encode(), passphrase)
                break
            except (TypeError, ValueError):
                continue
        assert key is not None, f"{label}: none of the passphrases opens the key"
        self.labels.append(label)
        b64, hexes, decs = set(_windows(pem_body(pem), B64_WINDOW)), set(), set()
        ders = [key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())]
        if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            ders.append(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
        for der in ders:
            for shifted in _b64_shifts(der):
                b64 |= _windows(shifted, B64_WINDOW)
            hexes |= _windows(der.hex(), HEX_WINDOW)
        for number in _private_numbers(key):
            hexes |= _windows(_hex(number), HEX_WINDOW)
            decs |= _windows(str(number), DEC_WINDOW)
        # what is public is no secret: the public key (its DER lies inside the private key's) and the certificate
        public = [key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)]
        if cert_pem is not None:
            cert_pem = cert_pem.decode() if isinstance(cert_pem, bytes) else cert_pem
            public.append(x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER))
        for der in public:
            for shifted in _b64_shifts(der):
                self._public_b64 |= _windows(shifted, B64_WINDOW)
            self._public_hex |= _windows(der.hex(), HEX_WINDOW)
        for number in _public_numbers(key):
            self._public_hex |= _windows(_hex(number), HEX_WINDOW)
            self._public_dec |= _windows(str(number), DEC_WINDOW)
        for windows, table in ((b64, self.b64), (hexes, self.hex), (decs, self.dec)):
            for w in windows:
                table.setdefault(w, label)
        for table, public_set in ((self.b64, self._public_b64), (self.hex, self._public_hex), (self.dec, self._public_dec)):
            for w in public_set & table.keys():
                del table[w]

    def add_secret(self, text: str, label: str) -> None:
        """A passphrase or shared secret: it must not appear verbatim."""
        assert len(text) >= 8, f"{label}: too short to search for"
        self.secrets[text] = label

    def find(self, text: str | bytes | None, _nested: bool = False) -> list[str]:
        """What in text is private key material (or a secret), as short descriptions; [] when clean."""
        if text is None:
            return []
        if isinstance(text, (bytes, bytearray, memoryview)):
            raw = bytes(text)
            return self.find(raw.decode("latin-1")) + self.find(raw.hex())
        hits: list[str] = []
        for m in PRIVATE_MARKER.finditer(text):
            hits.append(f"PEM marker {m.group(0)!r} at {m.start()}")
            break
        for s, label in self.secrets.items():
            if s in text:
                hits.append(f"the secret {label}")
        # once as it is, once with line ends (real and JSON-escaped) removed: a wrapped PEM body joins up
        joined = re.sub(r"\\r|\\n|[\r\n]", "", text)
        for variant in (text, joined) if joined != text else (text,):
            hits += self._runs(variant, _B64_RUN, self.b64, B64_WINDOW, "base64", str)
            hits += self._runs(variant, _HEX_RUN, self.hex, HEX_WINDOW, "hex", str.lower)
            hits += self._runs(variant, _DEC_RUN, self.dec, DEC_WINDOW, "decimal", str)
            if hits:
                break
        if not hits and not _nested:
            # text as hex (a bytea cast to text, "\\x2d2d2d2d2d424547494e..."): decoded, the same checks
            for m in re.finditer(r"(?:[0-9A-Fa-f]{2}){40,}", text):
                inner = self.find(bytes.fromhex(m.group(0)).decode("latin-1"), _nested=True)
                if inner:
                    hits.append(f"hex-encoded text at {m.start()}: {inner[0]}")
                    break
        return hits

    @staticmethod
    def _runs(text: str, pattern: re.Pattern, needles: dict[str, str], width: int, what: str, norm) -> list[str]:
        for m in pattern.finditer(text):
            run = norm(m.group(0))
            for i in range(len(run) - width + 1):
                label = needles.get(run[i:i + width])
                if label is not None:
                    return [f"{what} of {label} at {m.start() + i}: …{run[i:i + 16]}…"]
        return []

    def check(self, where: str, text) -> list[str]:
        return [f"{where}: {hit}" for hit in self.find(text)]


def values_of(row) -> list:
    """The values of a row, nested values (json, arrays, records) as text too."""
    out = []
    for v in (row.values() if isinstance(row, dict) else row):
        if isinstance(v, (bytes, bytearray, memoryview)):
            out.append(bytes(v))
        elif isinstance(v, (dict, list)):
            out.append(json.dumps(v))
        elif v is not None:
            out.append(str(v))
    return out


# =========================================================================== the database with keys


def make_config(folder: Path) -> Config:
    return Config(
        paths=PathsConfig(work_dir=folder, db_encryption_key=secret_file(folder / "db.pass", DB_PASS)),
        x509=X509Config(country="DE", organization="Example e.V.", rsa_key_size=2048, ec_curve="secp256r1"),
        local_ca=LocalCAConfig(key_type="rsa", key_size=2048, passphrase_file=secret_file(folder / "ca.pass", CA_PASS)),
    )


def claim(conn, job_id: int) -> dict:
    """Claim the job (the jobs of its kind come in id order: the callers take them in that order)."""
    row = conn.cursor(row_factory=dict_row).execute(
        "SELECT * FROM claim_jobs(%s, ARRAY[(SELECT kind FROM jobs WHERE id = %s)], 1)", (AGENT, job_id)).fetchone()
    assert row is not None and row["id"] == job_id, f"job {job_id} was not claimable: {row}"
    LEASES[job_id] = str(row["lease_token"])
    return row


def run_job(conn, job_id: int, config) -> Completion:
    """What the agent loop does with one job: claim, handle, complete (or fail)."""
    row = claim(conn, job_id)
    job = Job(id=row["id"], kind=row["kind"], certificate=row["certificate"], instance=row["instance"],
              disthost=row["disthost"], zone=row["zone"], args=row["args"], attempts=row["attempts"],
              max_attempts=row["max_attempts"], lease=str(row["lease_token"]))
    try:
        result = HANDLERS[job.kind](job, Context(config=config, conn=conn, agent_name=AGENT))
    except GiveUp as exc:
        conn.execute("SELECT fail_job(%s, %s, %s, false)", (job_id, job.lease, str(exc)))
        raise
    complete(conn, job_id, job.lease, result)
    return result


def populate(conn, config) -> None:
    """A fleet as the operator and the agent leave it: CA, certificates of every algorithm issued,
    some deployed, an ACME account, failed and finished jobs, a saved progress."""
    run_job(conn, conn.execute("SELECT request_local_ca('Local CA', 'rsa')").fetchone()[0], config)
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_disthost('jails.example.org', '/usr/jails')")
    conn.execute("SELECT add_jail('mail', 'jails.example.org')")
    conn.execute("SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, 0, 80, 416, false, false, "
                 "'service nginx reload')")
    conn.execute("SELECT add_place('postfix', 'separate', '/usr/local/etc/postfix/ssl', '/usr/local/etc/postfix/private', "
                 "0, 0, NULL, false, true, 'jexec {} service postfix reload')")
    for name, algo, host, jail, place in (
            ("www.example.org", "rsa", "web1.example.org", None, "nginx"),
            ("ec.example.org", "ec", "web1.example.org", None, "nginx"),
            ("mail.example.org", "rsa_plus_ec", "jails.example.org", "mail", "postfix")):
        conn.execute("SELECT * FROM add_cert(%s, 'server', 'local', %s, false, NULL, 'https', 443, %s, %s, %s)",
                     (name, algo, host, jail, place))
    conn.execute("SELECT * FROM add_cert('backup_op', 'client', 'local', 'ec', false, NULL, NULL, NULL, NULL, NULL, NULL)")
    for (job_id,) in conn.execute("SELECT job FROM request_create(selection(all_certs => true)) WHERE job IS NOT NULL "
                                  "ORDER BY job").fetchall():
        run_job(conn, job_id, config)
    # the ACME account, registered as a register_acme job reports it (its key in the result)
    account_pem = make_ec_key_pem()
    job_id = conn.execute("SELECT request_acme_account('https://acme.example.org/dir', 'pki@example.org')").fetchone()[0]
    claim(conn, job_id)
    complete(conn, job_id, LEASES[job_id], {"directory_url": "https://acme.example.org/dir", "uri": "https://acme.example.org/acct/1",
                                            "contact": "pki@example.org", "key": account_pem})
    # distribution: one job done (as the distribute handler reports it), one failing with an error that quotes a key
    jobs = conn.execute("SELECT job FROM request_distribute(selection(all_certs => true)) WHERE job IS NOT NULL "
                        "ORDER BY job").fetchall()
    assert len(jobs) >= 2
    done, failing = jobs[0][0], jobs[1][0]
    claim(conn, done)
    conn.execute("SELECT save_job_progress(%s, %s, %s)", (done, LEASES[done], Jsonb({"files": 2, "key": account_pem})))
    complete(conn, done, LEASES[done], {"host": "web1.example.org", "files": [{"path": "/x/key.pem", "sha256": "00" * 32}],
                                        "reload": [], "private_key": account_pem, "note": f"a careless handler: {account_pem}"})
    claim(conn, failing)
    conn.execute("SELECT fail_job(%s, %s, %s)", (failing, LEASES[failing], f"could not parse {account_pem} (bad)"))
    # an ACME order in flight keeps its key in the database (when this release has job keys)
    conn.execute("SELECT * FROM add_cert('acme.example.org', 'server', 'LE', 'rsa', false, "
                 "NULL, NULL, NULL, 'web1.example.org', NULL, 'nginx')")
    acme_job = conn.execute("SELECT job FROM request_create(selection(only_certs => ARRAY['acme.example.org']))"
                            ).fetchone()[0]
    claim(conn, acme_job)
    conn.execute("SELECT save_job_key(%s, %s, 'rsa', %s)", (acme_job, LEASES[acme_job], make_rsa_key_pem()))
    # an issue that keeps its predecessor's key (key reuse): its args name the instance, reused_key reads the key
    conn.execute("SELECT set_key_reuse('www.example.org', 2, NULL)")
    reuse_job = conn.execute("SELECT job FROM request_create(selection(only_certs => ARRAY['www.example.org']))"
                             ).fetchone()[0]
    claim(conn, reuse_job)
    conn.execute("ANALYZE")


def make_ec_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def make_rsa_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def key_tables(conn) -> list[str]:
    """The tables of pki with a private key column (certkeydata, acme_accounts, ...), from the catalog."""
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relnamespace = 'pki'::regnamespace AND c.relkind = 'r' AND a.attname IN ('key', 'private_key') "
        "AND NOT a.attisdropped ORDER BY 1")]


def stored_key_material(conn) -> KeyMaterial:
    """Every private key the database holds (read as the superuser), and the passphrases."""
    material = KeyMaterial()
    passphrases = (None, DB_PASS.encode(), CA_PASS.encode())
    tables = key_tables(conn)
    assert {"certkeydata", "acme_accounts"} <= set(tables)
    for table in tables:
        for n, row in enumerate(conn.cursor(row_factory=dict_row).execute(
                f"SELECT * FROM pki.{table} WHERE key IS NOT NULL").fetchall()):
            cert = row.get("cert")
            material.add_key(row["key"], f"{table} row {n + 1}", passphrases, bytes(cert) if cert else None)
    material.add_secret(DB_PASS, "db_encryption_key passphrase")
    material.add_secret(CA_PASS, "local CA passphrase")
    return material


@dataclass
class KeyedDB:
    name: str
    dsn: str
    encrypted: bool
    material: KeyMaterial



@pytest.fixture
def conn(owner):
    """This module proves the privileges through login roles of its own; its conn is the owner, who
    sets the fleet up and inspects what the roles did."""
    return owner

@pytest.fixture(scope="module")
def keyed_dbs(pg_server, template_db, tmp_path_factory):
    """Two databases with the same fleet: keys in clear, and after -X (encrypt_keys) with the keys encrypted."""
    config = make_config(tmp_path_factory.mktemp("privileges"))
    plain = pg_server.new_database(template_db, "t_priv_")
    with psycopg.connect(pg_server.dsn(plain), autocommit=True) as c:
        populate(c, config)
    encrypted = pg_server.new_database(plain, "t_priv_")
    with psycopg.connect(pg_server.dsn(encrypted), autocommit=True) as c:
        run_job(c, c.execute("SELECT request_key_encryption(true)").fetchone()[0], config)
        assert c.execute("SELECT keysencrypted FROM revision ORDER BY id DESC LIMIT 1").fetchone()[0] is True
        # one more certificate issued under encryption: its key is stored encrypted from the start
        c.execute("SELECT * FROM add_cert('late.example.org', 'server', 'local', 'rsa', false, "
                  "NULL, NULL, NULL, 'web1.example.org', NULL, 'nginx')")
        run_job(c, c.execute("SELECT job FROM request_create(selection(only_certs => ARRAY['late.example.org']))"
                             ).fetchone()[0], config)
        c.execute("ANALYZE")
    dbs = {}
    for name, enc in ((plain, False), (encrypted, True)):
        with psycopg.connect(pg_server.dsn(name), autocommit=True) as c:
            material = stored_key_material(c)
            stored = [bytes(r[0]).decode() for r in c.execute("SELECT key FROM certkeydata WHERE key IS NOT NULL")]
            stored += [r[0] for r in c.execute("SELECT key FROM acme_accounts")]
        assert len(stored) >= 7, stored
        # the database holds what the test is about: clear and encrypted keys (the CA's is always encrypted)
        n_encrypted = sum("ENCRYPTED PRIVATE KEY" in k for k in stored)
        assert (n_encrypted == len(stored)) if enc else (n_encrypted == 1)
        dbs["encrypted" if enc else "plain"] = KeyedDB(name, pg_server.dsn(name), enc, material)
    # the encrypted database's keys are the plain one's, encrypted: a leak of either form counts there
    dbs["encrypted"].material = merge(dbs["plain"].material, dbs["encrypted"].material)
    yield dbs
    for name in (plain, encrypted):
        pg_server.drop_database(name)


def merge(a: KeyMaterial, b: KeyMaterial) -> KeyMaterial:
    m = KeyMaterial()
    for part in ("b64", "hex", "dec", "secrets"):
        getattr(m, part).update(getattr(a, part))
        getattr(m, part).update(getattr(b, part))
    m.labels = a.labels + b.labels
    return m


@pytest.fixture(scope="module")
def logins(pg_server):
    """login(group, dbname): a connection of a LOGIN role that is a member of that group (one role per group)."""
    made: dict[str, str] = {}
    conns: list[psycopg.Connection] = []

    def login(group: str, dbname: str) -> psycopg.Connection:
        if group not in made:
            role = f"t_{group}_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(pg_server.dsn(), autocommit=True) as su:
                su.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE {group}')
            made[group] = role
        c = psycopg.connect(make_conninfo(pg_server.dsn(dbname), user=made[group]), autocommit=True)
        conns.append(c)
        assert c.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0] is False
        return c

    yield login
    for c in conns:
        c.close()
    with psycopg.connect(pg_server.dsn(), autocommit=True) as su:
        for role in made.values():
            su.execute(f'DROP ROLE "{role}"')


# =========================================================================== the detector works

def test_the_detector_finds_planted_keys_and_passes_public_material(keyed_dbs):
    """Positive and negative controls: a scanner that finds nothing must be able to find something."""
    db = keyed_dbs["plain"]
    m = db.material
    with psycopg.connect(db.dsn, autocommit=True) as su:
        rows = su.execute("SELECT convert_from(key, 'UTF8'), convert_from(cert, 'UTF8'), key, hash "
                          "FROM certkeydata WHERE key IS NOT NULL").fetchall()
        acme = su.execute("SELECT key FROM acme_accounts").fetchone()[0]
        tlsa = su.execute("SELECT tlsa_data(cert, 1, 0), tlsa_data(cert, 0, 0) FROM certkeydata").fetchall()
    with psycopg.connect(db.dsn, autocommit=True) as su:
        assert len(m.labels) == sum(su.execute(f"SELECT count(key) FROM pki.{t}").fetchone()[0] for t in key_tables(su))
    pieces = []
    for key, cert, raw, digest in rows:
        assert m.find(key), "a whole PEM key"
        body = pem_body(key)
        # the pieces of the base64 that are secret (the modulus or public point inside it is not)
        secret_at = [i for i in range(len(body) - B64_WINDOW + 1) if body[i:i + B64_WINDOW] in m.b64]
        assert len(secret_at) > len(body) / 4, "most of a key is secret"
        i = secret_at[len(secret_at) // 2]
        piece = body[i:i + 41]
        pieces.append(piece)
        assert m.find(f"error: {piece} (cut)"), "41 characters of its base64, no marker"
        header = len(key.splitlines()[0]) + 1
        at = header + (i // 64) * 65 + i % 64   # where the piece begins in the PEM (64 characters a line)
        assert key[at:at + 100].replace("\n", "").startswith(piece[:20])
        assert m.find(json.dumps({"error": key[at:at + 100]})), "inside JSON, line ends escaped"
        assert m.find(bytes(raw)), "the bytea as stored"
        assert m.find("\\x" + f"…{piece}…".encode().hex()), "as the hex of a bytea cast to text"
        # public material is not key material
        assert m.find(cert) == [], f"a certificate is flagged: {m.find(cert)}"
        assert m.find(digest) == []
    for spki, whole in tlsa:
        assert m.find(spki) == [] and m.find(whole) == [], "a TLSA 3 1 0 / 3 0 0 record is flagged"
    assert m.find(acme) and m.find(pem_body(acme)[5:50])
    # a PEM marker with material next to it, whatever the key (even one the detector does not know)
    assert m.find("log: -----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG9w0BBQ0wPDAbBgkqhkiG (cut)")
    assert m.find('{"k": "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"}')
    assert m.find("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0F1E\n\nMIIEow")
    assert m.find("…9w0BAQEFAAfQ==\n-----END EC PRIVATE KEY-----")
    assert m.find("CHECK (key LIKE '-----BEGIN %PRIVATE KEY-----%')") == []
    assert m.find("(private key removed)") == []
    assert m.find(f"passphrase is {DB_PASS}")
    assert m.find("nothing to see: (private key removed), key_path /etc/ssl/private, subject_key cert:3") == []
    # the private numbers: an RSA key's d in hex or decimal, an EC scalar
    for key, *_ in rows:
        k = serialization.load_pem_private_key(key.encode(), CA_PASS.encode() if "ENCRYPTED" in key else None)
        number = _private_numbers(k)[0]
        assert m.find(f"d={number}") and m.find(f"d=0x{_hex(number)}")
    # encrypted forms: the second database knows the clear keys and their encrypted forms
    enc = keyed_dbs["encrypted"]
    with psycopg.connect(enc.dsn, autocommit=True) as su:
        for (key,) in su.execute("SELECT convert_from(key, 'UTF8') FROM certkeydata WHERE key IS NOT NULL"):
            body = pem_body(key)
            assert "ENCRYPTED" in key and enc.material.find(body[len(body) // 2 - 20:][:41])
    for piece in pieces:
        assert enc.material.find(piece)


def test_the_superuser_sees_the_keys_so_the_scan_can_see_them(keyed_dbs):
    """The scan below, run as the superuser, flags certkeydata and acme_accounts: it reads what it claims to read."""
    for db in (keyed_dbs["plain"], keyed_dbs["encrypted"]):
        with psycopg.connect(db.dsn, autocommit=True) as su:
            leaks, _ = scan_relations(su, db.material)
        flagged = {leak.split(":")[0].split(".")[1] for leak in leaks}
        assert {"certkeydata", "acme_accounts"} <= flagged, flagged


# =========================================================================== reading: no key for pki_report, pki_admin

def readable_relations(conn, role: str) -> list[tuple[str, str, list[str]]]:
    """(schema, relation, readable columns) of every relation in pki and dd that role may read at all."""
    rows = conn.execute(
        """SELECT n.nspname, c.relname,
                  array_agg(a.attname ORDER BY a.attnum) FILTER (WHERE has_column_privilege(%(role)s, c.oid, a.attnum, 'SELECT'))
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE n.nspname = ANY(%(schemas)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
            GROUP BY n.nspname, c.relname ORDER BY 1, 2""", {"role": role, "schemas": list(SCHEMAS)}).fetchall()
    return [(s, r, cols) for s, r, cols in rows if cols]


def scan_relations(conn, material: KeyMaterial, role: str | None = None) -> tuple[list[str], dict]:
    """Read every row of every relation (the columns role may read; all for the superuser) and scan each value."""
    who = role or conn.execute("SELECT current_user").fetchone()[0]
    leaks, counts = [], {"relations": 0, "rows": 0, "values": 0}
    for schema, rel, cols in readable_relations(conn, who):
        column_list = ", ".join(f'"{c}"' for c in cols)
        rows = conn.execute(f'SELECT {column_list} FROM "{schema}"."{rel}"').fetchall()
        counts["relations"] += 1
        counts["rows"] += len(rows)
        for row in rows:
            for col, value in zip(cols, row):
                if value is None:
                    continue
                counts["values"] += 1
                for hit in material.find(value if isinstance(value, (bytes, memoryview)) else
                                         json.dumps(value) if isinstance(value, (dict, list)) else str(value)):
                    leaks.append(f"{schema}.{rel}.{col}: {hit}")
    return leaks, counts


SAMPLES = {
    "text": "'www.example.org'", "dd.citext": "'www.example.org'::dd.citext", "citext": "'www.example.org'::dd.citext",
    "character": "'w'::character",
    "boolean": "true", "inet": "'127.0.0.1'::inet", "interval": "'1 day'::interval", "jsonb": "'{}'::jsonb",
    "integer": "%(instance)s", "bigint": "%(job)s", "smallint": "1", "text[]": "ARRAY['www.example.org']",
    "integer[]": "ARRAY[%(instance)s]", "bytea": "'\\x00'::bytea", "timestamp with time zone": "now()",
    "regtype": "'text'::regtype", "dd.selection": "NULL::dd.selection",
}


def executable_functions(conn, role: str) -> list[dict]:
    return conn.cursor(row_factory=dict_row).execute(
        """SELECT p.oid, p.oid::regprocedure::text AS signature, n.nspname, p.proname, p.prokind, p.prosecdef,
                  format_type(p.prorettype, NULL) AS returns, p.proretset,
                  ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) t) AS argtypes,
                  p.pronargs - p.pronargdefaults AS required,
                  EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                             AND d.deptype = 'e') AS from_extension
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = ANY(%(schemas)s) AND has_function_privilege(%(role)s, p.oid, 'EXECUTE')
            ORDER BY 2""", {"role": role, "schemas": list(SCHEMAS)}).fetchall()


def call_sql(fn: dict, ids: dict) -> str | None:
    """A statement that calls the function with plausible arguments; None when SQL cannot call it."""
    if fn["returns"] in ("trigger", "event_trigger", "internal") or fn["prokind"] not in ("f", "a"):
        return None
    args = []
    for t in fn["argtypes"][:max(fn["required"], 0)]:
        if t not in SAMPLES:
            return None
        args.append(SAMPLES[t] % ids)
    name = f'"{fn["nspname"]}"."{fn["proname"]}"'
    if fn["prokind"] == "a":
        return f"SELECT {name}(v) FROM (VALUES ({args[0]})) t(v)" if len(args) == 1 else None
    return f"SELECT * FROM {name}({', '.join(args)})"


def key_returning_functions(conn) -> dict[str, dict]:
    """Functions of pki that hand out a stored key: an output column named key, or a body that reads the
    key column of a key table (key_tables) and returns something. signature -> name, argument names."""
    tables = "|".join(key_tables(conn))
    rows = conn.cursor(row_factory=dict_row).execute(
        r"""SELECT p.oid::regprocedure::text AS signature, p.proname AS name,
                   coalesce(p.proargnames[1:p.pronargs], '{}') AS argnames
              FROM pg_proc p
             WHERE p.pronamespace = 'pki'::regnamespace
               AND ((SELECT bool_or(name ~* '^(private_)?key$')
                       FROM unnest(p.proargnames, p.proargmodes) AS a(name, mode) WHERE mode IN ('o', 't', 'b'))
                    OR (p.prosrc ~* ('\m(' || %s || ')\M') AND p.prosrc ~* '\m\w+\.key\M'
                        AND p.prorettype <> 'trigger'::regtype AND p.prorettype <> 'void'::regtype))""",
        (tables,)).fetchall()
    return {r["signature"]: r for r in rows}


def ids_for_calls(conn) -> dict:
    return conn.cursor(row_factory=dict_row).execute(
        "SELECT (SELECT max(id) FROM certinstances WHERE state = 'deployed') AS instance, "
        "(SELECT max(id) FROM jobs WHERE kind = 'distribute') AS job, "
        "(SELECT max(id) FROM jobs WHERE kind = 'issue_acme') AS acme_job, "
        "(SELECT max(id) FROM jobs WHERE kind = 'issue_local' AND args ? 'reuse_from') AS reuse_job").fetchone()


def key_function_calls(fn: dict, ids: dict) -> list[str]:
    """Calls of a key-returning function with plausible arguments (by their names): one per candidate job."""
    jobs = [ids["job"], ids["acme_job"], ids["reuse_job"]] if "job_id" in fn["argnames"] else [None]
    calls = []
    for job in jobs:
        args = []
        for name in fn["argnames"]:
            token = f"'{LEASES[job]}'::uuid" if job in LEASES else "gen_random_uuid()"
            args.append({"job_id": str(job), "lease_token": token, "algo": "'rsa'"}.get(name, "NULL"))
        calls.append(f"SELECT * FROM pki.{fn['name']}({', '.join(args)})")
    return calls


@pytest.mark.parametrize("keys", ["plain", "encrypted"])
@pytest.mark.parametrize("role", ["pki_report", "pki_admin"])
def test_no_view_table_or_column_a_role_may_read_holds_key_material(keyed_dbs, logins, role, keys, record_property):
    db = keyed_dbs[keys]
    c = logins(role, db.name)
    leaks, counts = scan_relations(c, db.material, role)
    assert leaks == [], "\n".join(leaks[:20])
    # the statistics the planner keeps are readable for the columns one may read: no key there either
    stats = c.execute("SELECT tablename, attname, most_common_vals::text, histogram_bounds::text FROM pg_stats "
                      "WHERE schemaname = 'pki'").fetchall()
    leaks = [f"pg_stats {t}.{a}: {hit}" for t, a, *vals in stats for v in vals for hit in db.material.find(v)]
    assert leaks == [], leaks
    assert not any(t == "certkeydata" and a == "key" for t, a, *_ in stats)
    assert counts["relations"] >= (3 if role == "pki_report" else 20) and counts["rows"] > 50, counts
    if role == "pki_report":
        # pki_report reads views and the SQLSTATE registry, never a table of pki but the list of
        # applied migrations (every login checks it first: migrate.check_compatible)
        kinds = dict(c.execute("SELECT c.relname, c.relkind FROM pg_class c WHERE c.relnamespace = 'pki'::regnamespace "
                               "AND has_table_privilege(c.oid, 'SELECT')").fetchall())
        assert kinds.pop("schema_migrations") == "r"
        assert kinds and set(kinds.values()) == {"v"}, kinds
    record_property(f"{role}/{keys}", counts)
    print(f"\n{role} ({keys} keys): {counts}")


@pytest.mark.parametrize("keys", ["plain", "encrypted"])
def test_every_function_pki_report_may_execute_returns_no_key(keyed_dbs, logins, keys):
    db = keyed_dbs[keys]
    c = logins("pki_report", db.name)
    with psycopg.connect(db.dsn, autocommit=True) as su:
        ids = ids_for_calls(su)
        key_functions = key_returning_functions(su)
    assert {"distribution_files(bigint)", "keys_under_db_passphrase()", "acme_keys_under_db_passphrase()"} <= key_functions.keys()
    functions = executable_functions(c, "pki_report")
    called, not_callable, leaks = [], [], []
    for fn in functions:
        sql = call_sql(fn, ids)
        if sql is None:
            not_callable.append(fn["signature"])
            continue
        try:
            rows = c.execute(sql).fetchall()
        except psycopg.Error as exc:
            if not (exc.diag.sqlstate or "").startswith("22"):
                raise
            # a text argument that must be a flag (regexp_match(citext, citext, flags)): once more with one
            leaks += db.material.check(fn["signature"], str(exc))
            rows = c.execute(sql.replace("'www.example.org')", "'i')")).fetchall()
        called.append(fn["signature"])
        for row in rows:
            for v in values_of(row):
                leaks += db.material.check(fn["signature"], v)
    assert leaks == []
    assert not key_functions.keys() & {fn["signature"] for fn in functions}
    # what pki_report may run: the clock of the report views (and the owner's time-travel switch it
    # reads, one boolean), monitoring's summaries (the metrics text, -n's problems that
    # pki.alerts shows, and the CRLs due that its crl: alerts read: numbers and dates) and the citext
    # extension's own functions, nothing else
    monitoring = {"metrics()", "config_problems()", "crls_due()"}
    pki_functions = {fn["signature"] for fn in functions if fn["nspname"] == "pki"}
    assert pki_functions == {"pki.now()", "time_travel_enabled()"} | monitoring, pki_functions
    assert all(fn["from_extension"] for fn in functions if fn["nspname"] == "dd")
    # no SECURITY DEFINER function is pki_report's but that switch and the summaries (called above: no key)
    assert sorted(fn["signature"] for fn in functions if fn["prosecdef"]) == sorted({"time_travel_enabled()"} | monitoring)
    # a function that is not executable refuses the call (the check above relies on has_function_privilege)
    for fn in key_functions.values():
        for sql in key_function_calls(fn, ids):
            with pytest.raises(psycopg.Error) as info:
                c.execute(sql)
            assert info.value.diag.sqlstate == INSUFFICIENT_PRIVILEGE, (sql, info.value.diag.message_primary)
    assert len(called) >= 40 and len(not_callable) <= 10, (len(called), not_callable)
    print(f"\npki_report ({keys} keys): {len(called)} functions called, {len(not_callable)} not callable from SQL "
          f"({', '.join(not_callable)})")


@pytest.mark.parametrize("keys", ["plain", "encrypted"])
def test_the_functions_that_return_keys_refuse_pki_admin_and_serve_the_agent(keyed_dbs, logins, keys):
    """Caller's rights: pki_admin may EXECUTE them, but they read certkeydata.key / acme_accounts.key, which it may not."""
    db = keyed_dbs[keys]
    admin, agent = logins("pki_admin", db.name), logins("pki_agent", db.name)
    with psycopg.connect(db.dsn, autocommit=True) as su:
        ids = ids_for_calls(su)
        key_functions = key_returning_functions(su)
    for sig, fn in sorted(key_functions.items()):
        found, refused = [], 0
        for sql in key_function_calls(fn, ids):
            with pytest.raises(psycopg.Error) as info:
                admin.execute(sql)
            # refused for want of privileges; or, called with a job of another kind, before it reads a key
            refused += info.value.diag.sqlstate == INSUFFICIENT_PRIVILEGE
            assert info.value.diag.sqlstate in (INSUFFICIENT_PRIVILEGE, "SP023"), (sql, info.value.diag.message_primary)
            # the agent deploys and re-encrypts keys: it gets them (and the detector sees them: a positive control)
            try:
                rows = agent.execute(sql).fetchall()
            except psycopg.Error as exc:   # a function of one job kind, called with a job of another
                assert exc.diag.sqlstate.startswith("SP"), (sql, exc.diag.message_primary)
                continue
            found += [hit for row in rows for v in values_of(row) for hit in db.material.find(v)]
        assert found, f"{sig} returned no key to the agent"
        assert refused, f"{sig}: pki_admin was never refused"


# =========================================================================== writing

def tables(conn) -> list[tuple[str, str]]:
    return conn.execute("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') ORDER BY 1, 2", (list(SCHEMAS),)).fetchall()


def test_the_catalog_grants_writes_to_pki_admin_on_the_configuration_only(conn):
    """Every table, sequence and column of pki and dd, for every role and PUBLIC: who may write what."""
    all_tables = tables(conn)
    assert {"state_transitions", "job_kinds", "settings", "events", "jobs", "certkeydata", "acme_accounts"} <= \
        {t for _, t in all_tables}
    wrong, checked = [], 0
    for schema, table in all_tables:
        for role in (*ROLES, "public"):
            for priv in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
                checked += 1
                has = conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, f"{schema}.{table}", priv)).fetchone()[0]
                want = role == "pki_admin" and schema == "pki" and table in ADMIN_WRITES and priv in ("INSERT", "UPDATE", "DELETE")
                if has != want:
                    wrong.append(f"{role} {priv} on {schema}.{table}: {has}")
            for priv in ("INSERT", "UPDATE", "REFERENCES"):
                checked += 1
                cols = {r[0] for r in conn.execute(
                    "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 "
                    "AND NOT a.attisdropped AND has_column_privilege(%s, a.attrelid, a.attnum, %s)",
                    (f"{schema}.{table}", role, priv))}
                if role == "pki_admin" and schema == "pki" and table in ADMIN_WRITES and priv != "REFERENCES":
                    continue
                want = ADMIN_COLUMN_UPDATES.get(table, set()) if (role, priv, schema) == ("pki_admin", "UPDATE", "pki") else set()
                if cols != want:
                    wrong.append(f"{role} {priv} on columns {sorted(cols)} of {schema}.{table}")
    for (seq,) in conn.execute("SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind = 'S' "
                               "AND c.relnamespace = ANY(ARRAY['pki'::regnamespace, 'dd'::regnamespace])").fetchall():
        for role in (*ROLES, "public"):
            for priv in ("USAGE", "SELECT", "UPDATE"):
                checked += 1
                has = conn.execute("SELECT has_sequence_privilege(%s, %s, %s)", (role, seq, priv)).fetchone()[0]
                if has != (role == "pki_admin" and priv == "USAGE"):
                    wrong.append(f"{role} {priv} on sequence {seq}: {has}")
    assert wrong == [], "\n".join(wrong)
    print(f"\n{len(all_tables)} tables x 4 grantees: {checked} (table|column|sequence, privilege) checks")


def test_no_role_but_the_admin_writes_any_table_and_the_admin_only_the_configuration(conn, logins, dbname, record_property):
    """Every INSERT / UPDATE / DELETE / TRUNCATE on every table of pki and dd that the role may not do, really tried."""
    # some rows, so that an UPDATE or DELETE that got through would change something
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'local', 'rsa', false, "
                 "NULL, NULL, NULL, NULL, NULL, NULL)")
    conn.execute("INSERT INTO certinstances (certificate, state) SELECT max(id), 'reserved' FROM certificates")
    before = dump_all(conn)
    tried = 0
    for role in ROLES:
        c = logins(role, dbname)
        for schema, table in tables(conn):
            col = conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum = 1",
                               (f"{schema}.{table}",)).fetchone()[0]
            statements = {
                "INSERT": f'INSERT INTO {schema}.{table} DEFAULT VALUES',
                "UPDATE": f'UPDATE {schema}.{table} SET "{col}" = "{col}"',
                "DELETE": f'DELETE FROM {schema}.{table}',
                "TRUNCATE": f'TRUNCATE {schema}.{table} CASCADE',
            }
            for op, sql in statements.items():
                if role == "pki_admin" and schema == "pki" and table in ADMIN_WRITES and op != "TRUNCATE":
                    continue
                with pytest.raises(psycopg.Error) as info:
                    c.execute(sql)
                assert info.value.diag.sqlstate == INSUFFICIENT_PRIVILEGE, \
                    f"{role}: {sql}: {info.value.diag.sqlstate} {info.value.diag.message_primary}"
                tried += 1
            # and every sequence's value stays as it is
        for (seq,) in conn.execute("SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind = 'S' "
                                   "AND c.relnamespace = 'pki'::regnamespace").fetchall():
            with pytest.raises(psycopg.Error) as info:
                c.execute("SELECT setval(%s, 1000000)", (seq,))
            assert info.value.diag.sqlstate == INSUFFICIENT_PRIVILEGE
            tried += 1
    assert dump_all(conn) == before
    # the configuration tables of the brief, the transition table among them
    assert {"subjects", "certificates", "disthosts", "jails", "places", "targets", "services", "certificates_services",
            "state_transitions", "job_kinds", "settings"} <= {t for _, t in tables(conn)}
    record_property("refused writes", tried)
    print(f"\n{tried} writes refused")


def dump_all(conn) -> dict[str, list]:
    return {f"{s}.{t}": conn.execute(f"SELECT x::text FROM {s}.{t} x ORDER BY 1").fetchall() for s, t in tables(conn)}


def _written_tables(source: str) -> dict[str, set[str]]:
    """table -> the columns set by UPDATE (or {'*'} for INSERT/DELETE/TRUNCATE) in PL/pgSQL or SQL source."""
    source = re.sub(r"--[^\n]*", "", source)
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"\b(INSERT\s+INTO|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?)\s+(?:ONLY\s+)?(?:pki\.)?(\w+)", source, re.I):
        out.setdefault(m.group(2).lower(), set()).add("*")
    for m in re.finditer(r"\bUPDATE\s+(?:ONLY\s+)?(?:pki\.)?(\w+)(?:\s+(?:AS\s+)?(\w+))?\s+SET\s+(.*?)(?:\bFROM\b|\bWHERE\b|\bRETURNING\b|;|$)",
                         source, re.I | re.S):
        cols = {c.split(".")[-1].strip().lower() for c in re.findall(r"(?:^|,)\s*([\w.]+)\s*=", m.group(3))}
        out.setdefault(m.group(1).lower(), set()).update(cols or {"*"})
    return out


def test_the_agent_writes_only_through_security_definer_functions_that_leave_configuration_alone(conn):
    """What pki_agent can reach beyond its privileges: the SECURITY DEFINER functions it may run, the functions
    they call and the triggers of the tables they write, transitively. None writes configuration or the
    state machine's tables (certificates: the reminder's / authorization's date only)."""
    procs = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT p.proname, p.prosrc, p.prosecdef FROM pg_proc p WHERE p.pronamespace = 'pki'::regnamespace")}
    definers = {r[0] for r in conn.execute(
        "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'pki'::regnamespace AND p.prosecdef "
        "AND has_function_privilege('pki_agent', p.oid, 'EXECUTE')")}
    assert AGENT_DEFINER_FUNCTIONS <= definers, definers
    triggers: dict[str, set[str]] = {}
    for table, fn in conn.execute("SELECT c.relname, p.proname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                  "JOIN pg_proc p ON p.oid = t.tgfoid WHERE NOT t.tgisinternal "
                                  "AND c.relnamespace = 'pki'::regnamespace"):
        triggers.setdefault(table, set()).add(fn)
    # finish_failed calls the clean-up functions job kinds registered (define_job_kind) by name: it reaches every one
    hooks = {h for (h,) in conn.execute("SELECT on_dead FROM job_kinds WHERE on_dead IS NOT NULL")}
    assert hooks and hooks <= procs.keys(), hooks
    seen: set[str] = set()
    todo = sorted(definers)
    written: dict[str, set[str]] = {}
    while todo:
        name = todo.pop()
        if name in seen or name not in procs:
            continue
        seen.add(name)
        # strings and comments in one pass, whichever comes first: an apostrophe in a comment would pair with
        # a quote, and a string's "-----BEGIN" would cut its line as a comment, the closing quote with it (the
        # calls after it went unseen); messages and hints name functions too
        source = re.sub(r"'(?:[^']|'')*'|--[^\n]*", lambda m: "''" if m.group(0).startswith("'") else "",
                        procs[name][0])
        called = {n for n in procs if re.search(rf"\b{re.escape(n)}\s*\(", source)}
        todo += sorted(called - seen)
        if name == "finish_failed":
            todo += sorted(hooks - seen)
        for table, cols in _written_tables(source).items():
            if table in DEFINER_MAY_INSERT.get(name, set()):
                cols = cols - {"*"}   # its inserts; not its updates (the table's triggers are followed all the same)
            if cols:
                written.setdefault(table, set()).update(cols)
            todo += sorted(triggers.get(table, set()) - seen)
    assert {"claim_jobs", "complete_issue", "complete_distribute", "job_done", "issue_dead", "record_transition"} <= seen
    assert {"jobs", "certkeydata", "certinstances", "events"} <= written.keys(), written
    bad = {t: c for t, c in written.items() if t in NEVER_WRITTEN_BY_DEFINERS}
    assert bad == {}, f"SECURITY DEFINER code reachable by pki_agent writes {bad}"
    for table, allowed in DEFINER_MAY_UPDATE.items():
        assert written.get(table, set()) <= allowed, f"{table}: {written[table]}"
    print(f"\nSECURITY DEFINER closure of pki_agent: {len(seen)} functions; writes {sorted(written)}")


# =========================================================================== events: append-only

@pytest.fixture
def events(conn):
    """A few events: an instance reserved, then deleted (the history of one row)."""
    conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'local', 'rsa', false, "
                 "NULL, NULL, NULL, NULL, NULL, NULL)")
    conn.execute("INSERT INTO certinstances (certificate, state) SELECT max(id), 'reserved' FROM certificates")
    conn.execute("DELETE FROM certinstances")
    n = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert n >= 2
    return n


def _events_changes(c) -> dict[str, str]:
    return {"UPDATE": "UPDATE pki.events SET reason = 'rewritten'",
            "DELETE": "DELETE FROM pki.events",
            "TRUNCATE": "TRUNCATE pki.events",
            "TRUNCATE CASCADE": "TRUNCATE pki.events CASCADE",
            "TRUNCATE ONLY": "TRUNCATE ONLY pki.events"}


@pytest.mark.parametrize("role", ROLES)
def test_events_are_append_only_for_every_role(conn, logins, dbname, events, role):
    c = logins(role, dbname)
    before = conn.execute("SELECT e::text FROM events e ORDER BY id").fetchall()
    for op, sql in _events_changes(c).items():
        with pytest.raises(psycopg.Error) as info:
            c.execute(sql)
        assert info.value.diag.sqlstate == INSUFFICIENT_PRIVILEGE, (role, op, info.value.diag.message_primary)
    with pytest.raises(psycopg.Error) as info:
        c.execute("INSERT INTO pki.events (at, reason) VALUES (now(), 'forged')")
    assert info.value.diag.sqlstate == INSUFFICIENT_PRIVILEGE
    assert conn.execute("SELECT e::text FROM events e ORDER BY id").fetchall() == before


def test_events_are_append_only_for_the_owner_truncate_included(conn, pg_server, dbname, events):
    """Not even the owner changes history by accident: a superuser owner, and a plain role that owns the table."""
    before = conn.execute("SELECT e::text FROM events e ORDER BY id").fetchall()
    owner = conn.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'pki.events'::regclass").fetchone()[0]
    assert owner == conn.execute("SELECT current_user").fetchone()[0]

    def refused(c, who):
        for op, sql in _events_changes(c).items():
            with pytest.raises(psycopg.Error) as info:
                c.execute(sql)
            assert info.value.diag.sqlstate == "SP012", (who, op, info.value.diag.message_primary)
            assert "append-only" in info.value.diag.message_primary and info.value.diag.message_hint

    refused(conn, "superuser owner")
    role = f"t_owner_{uuid.uuid4().hex[:8]}"
    conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        # an installer's role that owns the table (and, like the installer, may run the functions of pki)
        conn.execute(f'GRANT USAGE ON SCHEMA pki, dd TO "{role}"')
        conn.execute(f'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pki TO "{role}"')
        conn.execute(f'GRANT SELECT ON dd.sqlstates TO "{role}"')
        conn.execute(f'ALTER TABLE pki.events OWNER TO "{role}"')
        with psycopg.connect(make_conninfo(pg_server.dsn(dbname), user=role), autocommit=True) as c:
            refused(c, "non-superuser owner")
    finally:
        conn.execute(f"ALTER TABLE pki.events OWNER TO {owner}")
        conn.execute(f'REVOKE ALL ON SCHEMA pki, dd FROM "{role}"')
        conn.execute(f'REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pki FROM "{role}"')
        conn.execute(f'REVOKE ALL ON dd.sqlstates FROM "{role}"')
        conn.execute(f'DROP ROLE "{role}"')
    assert conn.execute("SELECT e::text FROM events e ORDER BY id").fetchall() == before
    # appending stays possible: history grows
    conn.execute("INSERT INTO certinstances (certificate, state) SELECT max(id), 'reserved' FROM certificates")
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == events + 1


# =========================================================================== PUBLIC and SECURITY DEFINER

def test_public_holds_nothing_in_pki_and_dd(conn):
    wrong = []
    for schema in (*SCHEMAS, "public"):
        for role in (*ROLES, "public"):
            if conn.execute("SELECT has_schema_privilege(%s, %s, 'CREATE')", (role, schema)).fetchone()[0]:
                wrong.append(f"{role} may CREATE in schema {schema} (it is on the search_path)")
        if schema in SCHEMAS and conn.execute("SELECT has_schema_privilege('public', %s, 'USAGE')", (schema,)).fetchone()[0]:
            wrong.append(f"PUBLIC has USAGE on schema {schema}")
    for role in (*ROLES, "public"):
        if conn.execute("SELECT has_database_privilege(%s, current_database(), 'CREATE')", (role,)).fetchone()[0]:
            wrong.append(f"{role} may create schemas in the database")
    # relations: no ACL entry for PUBLIC (grantee 0) on any relation of pki and dd
    rows = conn.execute(
        """SELECT c.oid::regclass::text, a.privilege_type FROM pg_class c, aclexplode(c.relacl) a
            WHERE c.relnamespace = ANY(ARRAY['pki'::regnamespace, 'dd'::regnamespace]) AND a.grantee = 0""").fetchall()
    wrong += [f"PUBLIC has {p} on {r}" for r, p in rows]
    rows = conn.execute(
        """SELECT c.oid::regclass::text, att.attname, a.privilege_type FROM pg_class c
             JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a
            WHERE c.relnamespace = ANY(ARRAY['pki'::regnamespace, 'dd'::regnamespace]) AND a.grantee = 0""").fetchall()
    wrong += [f"PUBLIC has {p} on {r}.{col}" for r, col, p in rows]
    # functions: PUBLIC may run the citext extension's, none of ours
    rows = conn.execute(
        """SELECT p.oid::regprocedure::text FROM pg_proc p
            WHERE p.pronamespace = ANY(ARRAY['pki'::regnamespace, 'dd'::regnamespace])
              AND has_function_privilege('public', p.oid, 'EXECUTE')
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                 AND d.deptype = 'e')""").fetchall()
    wrong += [f"PUBLIC may EXECUTE {r[0]}" for r in rows]
    # nothing of pki and dd belongs to one of the roles (an owner ignores the grants)
    rows = conn.execute(
        """SELECT 'relation ' || c.oid::regclass::text, pg_get_userbyid(c.relowner) FROM pg_class c
            WHERE c.relnamespace = ANY(ARRAY['pki'::regnamespace, 'dd'::regnamespace])
           UNION ALL
           SELECT 'function ' || p.oid::regprocedure::text, pg_get_userbyid(p.proowner) FROM pg_proc p
            WHERE p.pronamespace = ANY(ARRAY['pki'::regnamespace, 'dd'::regnamespace])
           UNION ALL
           SELECT 'schema ' || n.nspname, pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = ANY(%s)""",
        (list(SCHEMAS),)).fetchall()
    wrong += [f"{what} is owned by {owner}" for what, owner in rows if owner in ROLES]
    # the roles are groups without powers of their own
    for role, login, superuser, createrole, createdb, bypass in conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
            "WHERE rolname = ANY(%s)", (list(ROLES),)):
        if login or superuser or createrole or createdb or bypass:
            wrong.append(f"role {role} has attributes")
    # the untrusted language: superusers only
    if conn.execute("SELECT lanpltrusted FROM pg_language WHERE lanname = 'plpython3u'").fetchone()[0]:
        wrong.append("plpython3u is trusted")
    assert wrong == [], "\n".join(wrong)


def test_the_server_logs_no_bind_parameter_of_this_database(conn, pg_server, dbname):
    """The agent hands issued keys to complete_issue as bind parameters; with log_statement = all the server would
    write them to its log ("DETAIL: parameters: $3 = '{"pairs": [{"key": "-----BEGIN..."). The database's own
    settings turn that off for every session, whoever connects (test_secrets.py reads the log of the demo)."""
    settings = conn.execute("SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s "
                            "JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database() "
                            "AND s.setrole = 0").fetchone()[0]
    assert "log_parameter_max_length=0" in settings and "log_parameter_max_length_on_error=0" in settings, settings
    role = f"t_plain_{uuid.uuid4().hex[:8]}"
    conn.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE pki_agent')
    try:
        with psycopg.connect(make_conninfo(pg_server.dsn(dbname), user=role), autocommit=True) as c:
            assert c.execute("SELECT current_setting('log_parameter_max_length'), "
                             "current_setting('log_parameter_max_length_on_error')").fetchone() == ("0", "0")
            # and the agent cannot turn it back on
            with pytest.raises(psycopg.Error) as info:
                c.execute("SET log_parameter_max_length = -1")
            assert info.value.diag.sqlstate == INSUFFICIENT_PRIVILEGE
    finally:
        conn.execute(f'DROP ROLE "{role}"')


def test_every_security_definer_function_pins_a_safe_search_path(conn):
    rows = conn.execute(
        """SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p
            WHERE p.prosecdef AND p.pronamespace = ANY(ARRAY['pki'::regnamespace, 'dd'::regnamespace])""").fetchall()
    assert len(rows) >= 10
    wrong = []
    for sig, config in rows:
        paths = [c.split("=", 1)[1] for c in (config or []) if c.startswith("search_path=")]
        if not paths:
            wrong.append(f"{sig}: no search_path")
            continue
        schemas = [s.strip().strip('"') for s in paths[0].split(",")]
        # every schema on it is one nobody but the owner may create objects in; pg_temp last (not first, implicitly)
        if schemas[-1] != "pg_temp":
            wrong.append(f"{sig}: search_path {paths[0]} does not end with pg_temp")
        for s in schemas[:-1]:
            if s not in SCHEMAS:
                wrong.append(f"{sig}: search_path has {s}")
    # and the functions that are not SECURITY DEFINER pin it too (they run inside the definers and triggers),
    # all but those the planner inlines (a SET clause would stop that): their body becomes part of the calling
    # query, planned under the caller's search_path, and names no object of ours unqualified
    unpinned = conn.execute(
        """SELECT p.oid::regprocedure::text, p.prosrc FROM pg_proc p WHERE p.pronamespace = 'pki'::regnamespace
              AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%%')""").fetchall()
    owner = owner_conn(conn)
    ours = {r[0] for r in owner.execute(
        """SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = ANY(ARRAY['pki'::regnamespace, 'dd'::regnamespace])
           UNION SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = ANY(ARRAY['pki'::regnamespace, 'dd'::regnamespace])
           UNION SELECT t.typname::text FROM pg_type t WHERE t.typnamespace = ANY(ARRAY['pki'::regnamespace, 'dd'::regnamespace])""")}
    for sig, body in unpinned:
        if not inlined_by_the_planner(owner, sig):
            wrong.append(f"{sig}: no search_path")
            continue
        names = set(re.findall(r"(?<![\w.])([a-z_][a-z0-9_]*)", re.sub(r"'(?:[^']|'')*'", "''", body))) & ours
        wrong += [f"{sig}: inlined without a search_path, but names {n} unqualified" for n in sorted(names)]
    assert wrong == [], "\n".join(wrong)
