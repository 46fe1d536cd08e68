"""Assertions shared by the SQL tests."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from serverpki.handlers import Completion, IssuedPair, StoredKey

# every table an operator or the agent can change; a refusal must leave all of them as they were
STATE_TABLES = (
    "certificates", "subjects", "services", "certificates_services", "disthosts", "jails",
    "places", "targets", "settings", "revision", "certinstances", "certkeydata",
)


def add_small_world(conn: psycopg.Connection) -> None:
    """Two disthosts (jailhost with jails under /usr/jails), the jail 'mail', the place 'nginx' and the
    LE server certificate www.example.org (alt name example.org, https/443, target web1/nginx)."""
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_disthost('jailhost.example.org', '/usr/jails')")
    conn.execute("SELECT add_jail('mail', 'jailhost.example.org')")
    conn.execute("SELECT add_place('nginx', 'combine cacert', '/usr/local/etc/nginx/ssl', NULL, "
                 "0, 80, 416, false, false, 'service nginx reload')")
    conn.execute("SELECT * FROM add_cert('www.example.org', 'server', 'LE', 'rsa_plus_ec', false, "
                 "'example.org', 'https', 443, 'web1.example.org', NULL, 'nginx')")


def snapshot(conn: psycopg.Connection) -> dict[str, list[tuple]]:
    """The whole content of the state tables, for before/after comparisons."""
    out = {}
    for table in STATE_TABLES:
        if conn.execute("SELECT to_regclass(%s)", (f"pki.{table}",)).fetchone()[0] is None:
            continue
        rows = conn.execute(f"SELECT t::text FROM pki.{table} t ORDER BY 1").fetchall()
        out[table] = rows
    return out


def assert_refused(conn: psycopg.Connection, sql: str, params=None, sqlstate: str = "", match: str = "") -> psycopg.Error:
    """Run sql, expect our SQLSTATE (and a message containing match), and prove nothing changed."""
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    err = info.value
    assert err.diag.sqlstate == sqlstate, f"expected {sqlstate}, got {err.diag.sqlstate}: {err.diag.message_primary}"
    if match:
        assert match in (err.diag.message_primary or ""), err.diag.message_primary
    assert err.diag.message_hint, f"refusal without a hint: {err.diag.message_primary}"
    assert snapshot(conn) == before, "a refused statement changed the database"
    return err


_OWNERS: dict[str, psycopg.Connection] = {}


def need_root(why: str) -> None:
    """The suite runs as root, as CI does (the lab's sshd, network namespaces, chown): without it a test
    that needs it fails, saying why, rather than pass by skipping what it was to prove."""
    if os.geteuid() != 0:
        pytest.fail(f"run the tests as root: {why}")


def owner_conn(conn: psycopg.Connection) -> psycopg.Connection:
    """The schema owner's session on conn's database, for what a test sets up or inspects that no
    login role may touch (internal functions, state columns); the paths under test keep conn."""
    info = conn.info.get_parameters()
    key = f"{info.get('host')}:{info.get('port')}/{info['dbname']}"
    owner = _OWNERS.get(key)
    if owner is None or owner.closed or owner.broken:
        owner = _OWNERS[key] = psycopg.connect(
            make_conninfo(conn.info.dsn, user=os.environ.get("SERVERPKI_TEST_OWNER", "postgres")), autocommit=True)
    # the same clock as the session under test
    now = conn.execute("SELECT coalesce(current_setting('pki.now', true), '')").fetchone()[0]
    owner.execute("SELECT set_config('pki.now', %s, false)", (now,))
    return owner


# the lease tokens of the tests' claims, as an agent keeps them: (database, job) -> (agent, token)
_LEASES: dict[tuple[str, int], tuple[str, str]] = {}


def remember_leases(conn: psycopg.Connection, claimed: list) -> list:
    """Keep the token of each claimed job (rows of claim_jobs as dicts or objects); returns claimed."""
    for row in claimed:
        get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
        _LEASES[conn.info.dbname, get("id")] = (get("locked_by"), str(get("lease_token")))
    return claimed


def lease_of(conn: psycopg.Connection, job_id: int, agent: str) -> str:
    """The token agent got when it claimed the job; an agent that did not claim it has only a guess."""
    claimer, token = _LEASES.get((conn.info.dbname, job_id), (None, None))
    return token if claimer == agent else str(uuid.uuid4())


# the outcome of a job as the tests write it down, one dict, split into the typed arguments of the
# kind's completion function (the rest is the report), as the handlers build their Completion
ARGS_OF_KIND = {
    "issue_local": ("pairs", "cacert", "chain", "authorized_until"),
    "issue_acme": ("pairs", "cacert", "chain", "authorized_until"),
    "issue_local_ca": ("pairs", "cacert", "chain", "authorized_until"),
    "encrypt_keys": ("keys", "accounts", "job_keys"),
    "decrypt_keys": ("keys", "accounts", "job_keys"),
    "register_acme": ("directory_url", "uri", "contact", "key"),
    "revoke": ("ca_instance", "crl", "crl_number", "this_update", "next_update", "listed_through"),
    "sign_crl": ("ca_instance", "crl", "crl_number", "this_update", "next_update", "listed_through"),
}


def completion_of(kind: str, result: dict | None) -> Completion:
    """result as its kind's Completion: pairs as IssuedPair, stored keys as StoredKey."""
    result = dict(result or {})
    args = {name: result.pop(name) for name in ARGS_OF_KIND.get(kind, ()) if name in result}
    if "pairs" in args:
        args["pairs"] = [IssuedPair(p.get("algo"), p.get("cert"), p.get("key"), p.get("chain")) for p in args["pairs"]]
    for name in ("keys", "accounts", "job_keys"):
        if name in args:
            args[name] = [StoredKey(k.get("id"), k.get("key")) for k in args[name]]
    result.pop("encrypted", None)   # the kind says it
    return Completion(args=args, report=result)


def completion_call(conn: psycopg.Connection, job_id: int, token: str, result: Completion | dict | None = None) -> tuple:
    """The statement and parameters that report the job done with result (a handler's Completion, or
    a dict for completion_of), as the agent sends them."""
    kind, function = conn.execute("SELECT j.kind, k.complete_with FROM jobs j JOIN job_kinds k USING (kind) "
                                  "WHERE j.id = %s", (job_id,)).fetchone()
    completion = result if isinstance(result, Completion) else completion_of(kind, result)
    return completion.statement(function, job_id, token)


def complete(conn: psycopg.Connection, job_id: int, token: str, result: Completion | dict | None = None) -> None:
    """Report the job done with result through its kind's completion function."""
    conn.execute(*completion_call(conn, job_id, token, result))


def small_cli_world(conn: psycopg.Connection, tmp_path) -> Path:
    """A client certificate c1 with a target on web1.example.org, and a configuration file for the
    CLI and the agent (local CA passphrase file, no syslog, slow polling); returns the file."""
    conn.execute("SELECT add_disthost('web1.example.org')")
    conn.execute("SELECT add_place('p', 'separate', '/etc/ssl')")
    conn.execute("SELECT * FROM add_cert('c1', 'client', 'local', 'ec', false, NULL, NULL, NULL, "
                 "'web1.example.org', NULL, 'p')")
    passfile = tmp_path / "ca.pass"
    passfile.write_text("secret\n")
    passfile.chmod(0o600)
    config = tmp_path / "serverpki.toml"
    config.write_text(f'[local_ca]\npassphrase_file = "{passfile}"\nkey_size = 2048\n'
                      '[logging]\nsyslog_address = ""\n[agent]\npoll_seconds = 60\n')
    return config


def inlined_by_the_planner(owner: psycopg.Connection, signature: str) -> bool:
    """Whether the planner puts the body of the function (a regprocedure text) into the calling query:
    the generic plan of a call with parameters (nothing folded to a constant) shows no call of it. A
    set-returning function is called as a table (FROM), where the planner inlines one."""
    name, argtypes, returns_set = owner.execute(
        "SELECT p.oid::regproc::text, ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) t), p.proretset "
        "FROM pg_proc p WHERE p.oid = %s::regprocedure", (signature,)).fetchone()
    params = ", ".join(f"${i}" for i in range(1, len(argtypes) + 1))
    call = f"* FROM {name}({params})" if returns_set else f"{name}({params})"
    with owner.transaction():
        owner.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        owner.execute(f"PREPARE inline_probe{'(' + ', '.join(argtypes) + ')' if argtypes else ''} AS SELECT {call}")
        try:
            plan = "\n".join(r[0] for r in owner.execute(
                f"EXPLAIN (VERBOSE, COSTS OFF) EXECUTE inline_probe{'(' + ', '.join(['NULL'] * len(argtypes)) + ')' if argtypes else ''}"))
        finally:
            owner.execute("DEALLOCATE inline_probe")
    return f"{name.rsplit('.', 1)[-1]}(" not in plan
