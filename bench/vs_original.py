"""This project beside the original serverPKI 0.9.11, on the same fleet, as whole processes.

Run:  .venv/bin/python bench/vs_original.py [CERTIFICATES]     (default 5000; e.g. 500 for a quick run)

The original comes from the package registry into a virtualenv of its own, patched only where it cannot
run here, and its schema from its own SQL: tests/legacy.py (legacy_venv, create_legacy_schema,
legacy_install; cached in SERVERPKI_TEST_CACHE, default ~/.cache/serverpki-tests). Both databases live
in one private PostgreSQL cluster (lab.postgres) started for the run.

The fleet, the same in both (issue 18): 10 disthosts; CERTIFICATES Let's Encrypt server certificates,
each added through each one's own `add_cert` (the same 11 arguments in both: an alt name for every
third, a target on one of the disthosts for half, the https TLSA service for a quarter); every
certificate has a deployed instance, a fifth of them also an issued successor (their deployed one 20
days from expiry), every 25th a deployed instance that has expired (still in service). Neither has a
path that makes instances without a CA, so instances and key pairs are bulk-inserted (executemany): each
instance its own real certificate with its dates (the original keys instances by the certificate's
hash), made on one EC or RSA key; in this project with its triggers off for that load only, as
bench/schedule.py does (the state machine admits new rows only as 'reserved'). The original's
instances name a 'Lets Encrypt CA' instance as their CA (its CAcert is NOT NULL), the rows its own
first Let's Encrypt issuance makes.

Then `operate_serverPKI -S -n -a` and `operate_serverPKI -n -v -a` of each, alternately (original,
this project) three times, each a whole process: the original with its config file (-f), ours as
the cron run's role (pki_cron). Each with Python's bytecode cache, as installed: the original's
virtualenv has the one pip compiled, ours one in the bench's folder (bench/startup.py, after a warm-up
run), else every run of the checkout would compile its modules again (PYTHONDONTWRITEBYTECODE=1). It prints the median of each and the ratio, with the target: 40×.
"""

from __future__ import annotations

import datetime as dt
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))
sys.path.insert(0, str(ROOT / "tests"))   # tests/legacy.py: the original, installed and set up as the tests do
sys.path.insert(0, str(ROOT))  # the lab (lab/): in the checkout, never installed

import legacy  # noqa: E402
from startup import cached_environment, cron_environment, installed_database, operate_command  # noqa: E402  (bench/, the script's folder)
from lab import roles  # noqa: E402
from lab.postgres import PostgresCluster  # noqa: E402
from lab.process import remove_dir, temp_dir  # noqa: E402

TARGET_RATIO = 40.0
ROUNDS = 3
COMMANDS = (("-S", "-n", "-a"), ("-n", "-v", "-a"))
DISTHOSTS = 10


def keys() -> dict[str, object]:
    """One key per algorithm: every bulk-loaded certificate of that algorithm is made on it."""
    return {"ec": ec.generate_private_key(ec.SECP256R1()), "rsa": rsa.generate_private_key(65537, 2048)}


def pem_pair(key, name: str, not_before: dt.datetime, not_after: dt.datetime) -> tuple[bytes, bytes, bytes, str]:
    """A real self-signed certificate for name with these dates, its key in clear as each one stores it (PKCS#8
    here, "traditional" OpenSSL PEM in the original) and its TLSA 3 0 1 hash: the original keys its instances
    by that hash, so no two instances may share a certificate."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before)
            .not_valid_after(not_after).sign(key, hashes.SHA256()))
    digest = hashes.Hash(hashes.SHA256())
    digest.update(cert.public_bytes(serialization.Encoding.DER))
    clear = [key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
             for form in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL)]
    return cert.public_bytes(serialization.Encoding.PEM), *clear, digest.finalize().hex().upper()


def fleet_rows(n: int) -> list[tuple]:
    """add_cert's 11 arguments for each certificate (name, subject type, cert type, algo, must staple,
    alt name, TLSA name, TLSA port, disthost, jail, place)."""
    rows = []
    for i in range(1, n + 1):
        targeted, tlsa = i % 2 == 0, i % 4 == 0
        rows.append((f"c{i}.fleet.example", "server", "LE", "rsa" if i % 7 == 0 else "ec", False,
                     f"alt{i}.fleet.example" if i % 3 == 0 else None,
                     "https" if tlsa else None, 443 if tlsa else None,
                     f"web{i // 2 % DISTHOSTS}.fleet.example" if targeted else None, None, "p" if targeted else None))
    return rows


@dataclass
class Instance:
    """One instance with its one key pair, loaded alike into both."""
    name: str            # the certificate's subject name
    algo: str
    state: str
    not_before: dt.datetime
    not_after: dt.datetime
    cert: bytes
    key: bytes           # PKCS#8
    key_original: bytes  # the same key as the original stores it
    hash: str


def fleet_instances(rows: list[tuple], now: dt.datetime) -> list[Instance]:
    """Every certificate's deployed instance; a fifth of them also an issued successor (their deployed one
    20 days from expiry); every 25th's deployed instance expired 10 days ago (still in service)."""
    made = keys()
    instances = []
    for i, row in enumerate(rows, start=1):
        name, algo = row[0], row[3]
        if i % 25 == 0:
            specs = [("deployed", -100, -10)]
        elif i % 5 == 1:
            specs = [("deployed", -70, 20), ("issued", -1, 89)]
        else:
            specs = [("deployed", -30, 60)]
        for state, nb, na in specs:
            not_before, not_after = now + dt.timedelta(days=nb), now + dt.timedelta(days=na)
            instances.append(Instance(name, algo, state, not_before, not_after,
                                      *pem_pair(made[algo], name, not_before, not_after)))
    return instances


def certificate_ids(conn: psycopg.Connection) -> dict[str, int]:
    return {name: cid for name, cid in conn.execute(
        "SELECT name::text, certificate FROM pki.subjects WHERE NOT isaltname AND name LIKE 'c%.fleet.example'")}


def load_ours(cluster: PostgresCluster, db: str, rows: list[tuple], instances: list[Instance]) -> None:
    installed_database(cluster, db)
    with psycopg.connect(cluster.dsn(db, roles.OPERATOR)) as conn:   # an operator with psql, as docs/ shows
        for h in range(DISTHOSTS):
            conn.execute("SELECT add_disthost(%s)", (f"web{h}.fleet.example",))
        conn.execute("SELECT add_place('p', 'separate', '/etc/ssl/{}')")
        with conn.cursor() as cur:
            cur.executemany("SELECT * FROM add_cert(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
    with psycopg.connect(cluster.dsn(db)) as owner:   # no path makes instances without a CA: bulk, triggers off
        owner.execute("SET LOCAL session_replication_role = replica")
        ids = certificate_ids(owner)
        first = owner.execute("SELECT coalesce(max(id), 0) + 1 FROM pki.certinstances").fetchone()[0]
        numbered = list(enumerate(instances, start=first))
        with owner.cursor() as cur:
            cur.executemany("INSERT INTO pki.certinstances (id, certificate, state, not_before, not_after, tlsa_published) "
                            "VALUES (%s, %s, %s, %s, %s, %s)",
                            [(k, ids[c.name], c.state, c.not_before, c.not_after,
                              c.not_before if c.state == "deployed" else None) for k, c in numbered])
            cur.executemany("INSERT INTO pki.certkeydata (certinstance, encryption_algo, cert, key, hash, not_before, not_after) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                            [(k, c.algo, c.cert, c.key, c.hash, c.not_before, c.not_after) for k, c in numbered])
        owner.execute("SELECT setval('pki.certinstances_id_seq', (SELECT max(id) FROM pki.certinstances))")
    with psycopg.connect(cluster.dsn(db), autocommit=True) as owner:
        owner.execute("ANALYZE")


def load_original(cluster: PostgresCluster, venv: Path, home: Path, db: str, rows: list[tuple],
                  instances: list[Instance], ca: Instance) -> legacy.LegacyInstall:
    dsn = legacy.create_legacy_schema(cluster, venv, db)
    inst = legacy_install(cluster, venv, home, db)
    with psycopg.connect(dsn) as conn:   # as its docs show an operator: psql as the database's owner
        conn.execute("SET search_path = pki, dd, public")
        for h in range(DISTHOSTS):
            conn.execute("INSERT INTO disthosts (fqdn) VALUES (%s)", (f"web{h}.fleet.example",))
        conn.execute("INSERT INTO places (name, cert_file_type, cert_path) VALUES ('p', 'separate', '/etc/ssl')")
        with conn.cursor() as cur:
            cur.executemany("SELECT * FROM add_cert(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
        # the CA its Let's Encrypt instances name (its CAcert is NOT NULL): the rows its create_CAcert_meta
        # makes (tests/legacy.py, use_acme_server), with an instance; a CA instance's cacert is itself
        ca_cert = conn.execute("INSERT INTO certificates (type) VALUES ('LE') RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO subjects (type, name, isaltname, certificate) VALUES ('CA', 'Lets Encrypt CA', false, %s)",
                     (ca_cert,))
        ids = certificate_ids(conn)
        first = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM certinstances").fetchone()[0]
        numbered = list(enumerate([ca, *instances], start=first))
        ca_id = first
        ids[ca.name] = ca_cert
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO certinstances (id, certificate, state, cacert, not_before, not_after) "
                            "VALUES (%s, %s, %s, %s, %s, %s)",
                            [(k, ids[c.name], c.state, ca_id, c.not_before, c.not_after) for k, c in numbered])
            cur.executemany("INSERT INTO certkeydata (certinstance, encryption_algo, cert, key, hash) VALUES (%s, %s, %s, %s, %s)",
                            [(k, c.algo, c.cert, c.key_original, c.hash) for k, c in numbered])
        conn.execute("SELECT setval('certinstances_id_seq', (SELECT max(id) FROM certinstances))")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")
    return inst


def legacy_install(cluster: PostgresCluster, venv: Path, home: Path, db: str) -> legacy.LegacyInstall:
    port = int(psycopg.conninfo.conninfo_to_dict(cluster.dsn()).get("port", 5432))
    return legacy.legacy_install(venv, home, "127.0.0.1", port, db)   # py-postgresql speaks TCP only


def count_rows(dsn: str, schema_sql: str) -> tuple:
    with psycopg.connect(dsn) as conn:
        return conn.execute(schema_sql).fetchone()


def timed(command: list[str], env: dict[str, str] | None, ok: tuple[int, ...]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def main(n: int) -> int:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    started = time.perf_counter()
    venv = legacy.legacy_venv()
    base = temp_dir("serverpki-bench-", 0o755)  # removed also when SIGTERM ends the run (lab.process)
    config_file = base / "serverpki.toml"
    config_file.write_text('[logging]\nsyslog_address = ""\n')
    cluster = PostgresCluster(base / "pg")
    cluster.start()
    try:
        rows = fleet_rows(n)
        instances = fleet_instances(rows, now)
        ca_not_before, ca_not_after = now - dt.timedelta(days=100), now + dt.timedelta(days=900)
        ca = Instance("Lets Encrypt CA", "rsa", "issued", ca_not_before, ca_not_after,
                      *pem_pair(keys()["rsa"], "Lets Encrypt CA", ca_not_before, ca_not_after))
        load_ours(cluster, "ours", rows, instances)
        inst = load_original(cluster, venv, base / "original", "original", rows, instances, ca)
        counts = "SELECT (SELECT count(*) FROM pki.certificates), (SELECT count(*) FROM pki.certinstances), " \
                 "(SELECT count(*) FROM pki.targets), (SELECT count(DISTINCT disthost) FROM pki.targets), " \
                 "(SELECT count(DISTINCT certificate) FROM pki.certificates_services)"
        print(f"fleet of {n} certificates loaded in {time.perf_counter() - started:.0f} s (certificates, instances, "
              f"targets, disthosts with targets, certificates with TLSA; the original's include its CA):")
        print(f"  this project:     {count_rows(cluster.dsn('ours'), counts)}")
        print(f"  serverPKI {legacy.VERSION}: {count_rows(cluster.dsn('original'), counts)}")

        # with the bytecode cache, as bench/startup.py: the original runs from its virtualenv, which pip compiled
        env = cached_environment(cron_environment(cluster, "ours", config_file), base)
        ours = operate_command()
        timed([*ours, "-h"], env, (0,))   # warm-up: writes the cache
        times: dict[tuple, dict[str, list[float]]] = {c: {"original": [], "ours": []} for c in COMMANDS}
        for _ in range(ROUNDS):
            for command in COMMANDS:
                times[command]["original"].append(
                    timed([str(inst.operate), "-f", str(inst.config), *command], None, (0,)))
                times[command]["ours"].append(timed([*ours, *command], env, (0, 4)))   # 4: -n found problems
    finally:
        cluster.destroy()
        remove_dir(base)
    print(f"operate_serverPKI, median of {ROUNDS} runs each, alternately, whole processes ({n} certificates):")
    for command, runs in times.items():
        original, mine = statistics.median(runs["original"]), statistics.median(runs["ours"])
        ratio = original / mine
        print(f"  {' '.join(command):9}  serverPKI {legacy.VERSION}: {original:7.2f} s   this project: {mine:6.2f} s   "
              f"{ratio:6.1f}×  — {'within' if ratio >= TARGET_RATIO else 'BELOW'} the target of {TARGET_RATIO:.0f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
