"""distribute: an instance's files to its targets on one disthost, over one SSH connection.

pki.distribution_files(job) gives a row per (target, key pair): disthost, jail,
place, subject, the pair, the CA certificate and chain. Each target's directory is
the place's cert_path ('{}' = subject name) under jailroot/jail when the target has
a jail, else under "/"; files that hold the key go to key_path when the place has
one. The layout follows the place's cert_file_type with the original serverPKI
names (NAME_TYPE_[ec_]cert.pem ...; `ec_` marks the EC pair of an rsa_plus_ec
certificate); files holding the key get the place's mode (else 0400) and
uid/gid, a certificate file gets them too with chownboth and is 0644 otherwise.
pglink adds postgresql.key to the file that holds the key and postgresql.crt to the
certificate file when it holds no key (as the original did: a combined file gets the
key's link only), to the RSA pair when there are two (to the last, EC, pair of an instance
imported from 0.9.x: where the original left them). A pair imported from 0.9.x keeps
the files the original wrote (0010_imported_key_files): traditional PEM keys, and the
file names of the algorithm it labelled the pair with.

A CA certificate's target (functions/150_ca_targets.sql: the CA's newest issued instance, its
state unchanged) gets one file whatever the place's cert_file_type: the CA certificate
as NAME_CA_cert.pem in cert_path, the name the original serverPKI gives it (its local
CA is RSA; the name stays the same for an EC CA, so a trust configuration that names
the file survives a change of the CA's key type). It never gets a key: the database
sends none for a CA, and none would be written. The file gets the place's mode (0644
when it has none) and uid/gid: it is all the place receives. pglink adds root.crt
(libpq's and the server's usual name of the trusted CA file) pointing to it. A local CA
that revoked certificates (handlers/revoke.py) has a CRL: its newest one goes beside the
certificate as NAME_CA_crl.pem, with the same mode and owner, and the place's reload runs.

Every file is written atomically and privately (sshclient.Connection.put_atomic).
A jail belongs to someone else: before anything is read or written on the host,
every directory in a jail is resolved there (SFTP realpath) and one that leads out
of jailroot/jail (a symbolic link planted in the jail) gives the job up, nothing
done on the host; a link in place of a file is replaced by the rename, not followed.
After all files are in place each distinct reload command of the targets' places
runs once ('{}' = the jail name, shell-quoted; '' without a jail), with the command
timeout; a non-zero
exit or a timeout fails the job (retried), its output in the error. In 'consolidate'
mode (-K) each file is compared first (SHA-256, mode, owner) and only what drifted is
rewritten and reported; reloads run only for places whose files changed.

The result names paths, hashes, modes and the commands' output, never key material.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import shlex
import stat
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .. import keystore, sshclient
from ..errors import GiveUp, RetryLater, ServerPKIError
from ..faults import crash_point
from ..log import one_line
from ..queries import q
from ..sshclient import RemoteFile
from . import Completion, Context, Job, handler
from .common import every

log = logging.getLogger("serverpki.handlers.distribute")

CERT_MODE = 0o644
KEY_MODE = 0o400
LINK_CERT, LINK_KEY = "postgresql.crt", "postgresql.key"
LINK_CA = "root.crt"


def _pem(text: str | None) -> str:
    """PEM text that ends with one line end, so concatenations stay valid PEM."""
    if not text:
        return ""
    return text if text.endswith("\n") else text + "\n"


def target_root(jailroot: str | None, jail: str | None) -> str:
    """The target's "/": jailroot/jail for a target in a jail, else the host's root."""
    if not jail:
        return "/"
    return posixpath.join("/", (jailroot or "").lstrip("/"), jail)


def under(root: str, path: str, subject: str) -> str:
    """A place's path ('{}' = subject name) below the target's root."""
    return posixpath.normpath(posixpath.join(root, path.replace("{}", subject).lstrip("/")))


def file_names(subject: str, subject_type: str, algo: str) -> dict[str, str]:
    """The original serverPKI file names of one pair."""
    ec = "ec_" if algo == "ec" else ""
    base = f"{subject}_{subject_type}_"
    return {
        "cert": f"{base}{ec}cert.pem",
        "key": f"{base}{ec}key.pem",
        "cert_cacert": f"{base}{ec}cert_cacert.pem",
        "cert_cacert_chain": f"{base}{ec}cert_cacert_chain.pem",
        "key_cert": f"{base}key_{ec}cert.pem",
        "key_cert_cacert": f"{base}key_{ec}cert_cacert.pem",
        "key_cert_cacert_chain": f"{base}key_{ec}cert_cacert_chain.pem",
    }


def layout(row: dict[str, Any], key_pem: str | None) -> tuple[list[tuple[str, str, bool]], str | None, str | None]:
    """The files of one (target, pair) row as (name, content, holds_key), and which of them
    postgresql.crt (None: none, the certificate is in the key's file) and postgresql.key point to."""
    names = file_names(row["subject"], row["subject_type"], row["file_name_algo"])
    cert, cacert, chain = _pem(row["cert"]), _pem(row["cacert"]), _pem(row["chain"])
    key = _pem(key_pem)
    le = row["cert_type"] == "LE"
    kind = row["cert_file_type"] if key else "cert only"
    if kind == "cert only":
        files = [(names["cert"], cert, False)]
        return files, names["cert"], None
    if kind == "separate":
        files = [(names["cert"], cert, False), (names["key"], key, True)]
        if le:
            files.append((names["cert_cacert_chain"], cert + chain, False))
        return files, names["cert"], names["key"]
    if kind == "combine key":
        files = [(names["key_cert"], key + cert, True)]
        if le:
            files.append((names["key_cert_cacert_chain"], key + cert + chain, True))
        return files, None, names["key_cert"]
    if kind == "combine cacert":
        files = [(names["cert_cacert"], cert + cacert, False), (names["key"], key, True)]
        return files, names["cert_cacert"], names["key"]
    if kind == "combine both":
        files = [(names["key_cert_cacert"], key + cert + cacert, True)]
        return files, None, names["key_cert_cacert"]
    raise GiveUp(f"place {row['place']}: unknown cert_file_type {kind!r}")


def ca_file_name(subject: str) -> str:
    """The file a CA certificate's target gets (the original serverPKI's name of a CA's certificate)."""
    return f"{subject}_CA_cert.pem"


def crl_file_name(subject: str) -> str:
    """The file beside a CA certificate's that holds the CA's newest CRL."""
    return f"{subject}_CA_crl.pem"


@dataclass
class Plan:
    """What one job puts on its host: files, links, and the reload commands with the paths they follow."""

    fqdn: str
    instance: int
    targets: list[int] = field(default_factory=list)
    files: dict[str, RemoteFile] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)          # link path -> target (relative)
    reloads: dict[str, set[str]] = field(default_factory=dict)   # command -> file and link paths of its places
    jails: dict[str, str] = field(default_factory=dict)          # directory in a jail -> that jail's root
    _origin: dict[str, str] = field(default_factory=dict)

    def add_file(self, f: RemoteFile, origin: str) -> None:
        old = self.files.get(f.path)
        if old is not None and (old.content, old.mode, old.uid, old.gid) != (f.content, f.mode, f.uid, f.gid):
            raise GiveUp(f"{self.fqdn}: {origin} and {self._origin[f.path]} both write {f.path}, differently "
                         "(content, mode or owner): give them different paths")
        self.files.setdefault(f.path, f)
        self._origin.setdefault(f.path, origin)

    def add_link(self, path: str, target: str, origin: str) -> None:
        if self.links.get(path, target) != target:
            raise GiveUp(f"{self.fqdn}: {origin} and {self._origin[path]} both make the link {path}, to different files")
        self.links[path] = target
        self._origin.setdefault(path, origin)


def key_file(clear_pem: str, file_format: str) -> str:
    """The key as its file holds it: as stored (PKCS#8), or traditional PEM for a pair imported from 0.9.x."""
    if file_format == "traditional":
        try:
            return keystore.traditional_pem(clear_pem, "a stored key")
        except keystore.KeystoreError as exc:
            raise GiveUp(str(exc)) from None
    return clear_pem


def build_plan(rows: list[dict[str, Any]], open_key) -> Plan:
    """The plan of a job from its rows; open_key(pem) gives a stored key in clear."""
    plan = Plan(rows[0]["fqdn"], rows[0]["instance"])
    # pglink: one pair per target gets the links: the RSA one when there are two (rows come rsa first);
    # for a pair imported from 0.9.x the last one, as 0.9.x re-linked on each pair it wrote
    links_from: dict[int, int] = {}
    for n, row in enumerate(rows):
        if row["target"] not in links_from or row["key_file_format"] == "traditional":
            links_from[row["target"]] = n
    for n, row in enumerate(rows):
        if row["target"] not in plan.targets:
            plan.targets.append(row["target"])
        origin = f"target {row['target']} (place {row['place']}{', jail ' + row['jail'] if row['jail'] else ''})"
        root = target_root(row["jailroot"], row["jail"])
        cert_dir = under(root, row["cert_path"], row["subject"])
        is_ca = row["subject_type"] == "CA"
        key_dir = under(root, row["key_path"], row["subject"]) if row["key_path"] and not is_ca else cert_dir
        # a CA's key never leaves the database (distribution_files sends none); none is opened or written here
        key_pem = key_file(open_key(row["key"]), row["key_file_format"]) if row["key"] and not is_ca else None
        if is_ca:
            files, crt_name, key_name = [(ca_file_name(row["subject"]), _pem(row["cert"]), False)], None, None
            if row.get("crl"):   # the CA's newest CRL (a local CA that revoked something) goes beside it
                files.append((crl_file_name(row["subject"]), _pem(row["crl"]), False))
        else:
            files, crt_name, key_name = layout(row, key_pem)
        paths: dict[str, str] = {}
        if row["jail"]:   # a directory of two targets stays in the narrower root
            for directory in (cert_dir, key_dir):
                plan.jails[directory] = max(plan.jails.get(directory, ""), root, key=len)
        for name, content, holds_key in files:
            directory = key_dir if holds_key else cert_dir
            path = posixpath.join(directory, name)
            paths[name] = path
            owned = holds_key or row["chownboth"] or is_ca
            default_mode = KEY_MODE if holds_key else CERT_MODE
            plan.add_file(RemoteFile(path, content.encode("utf-8"),
                                     (row["mode"] if row["mode"] is not None else default_mode) if holds_key or is_ca
                                     else CERT_MODE,
                                     row["uid"] if owned else None, row["gid"] if owned else None, holds_key), origin)
        touched = set(paths.values())
        if row["pglink"] and links_from[row["target"]] == n:
            wanted = (((LINK_CA, files[0][0], cert_dir),) if is_ca
                      else ((LINK_CERT, crt_name, cert_dir), (LINK_KEY, key_name, key_dir)))
            for link_name, name, directory in wanted:
                if name is None:
                    continue
                link = posixpath.join(directory, link_name)
                plan.add_link(link, posixpath.relpath(paths[name], directory), origin)
                touched.add(link)
        if row["reload_command"]:
            command = row["reload_command"].replace("{}", shlex.quote(row["jail"] or ""))
            plan.reloads.setdefault(command, set()).update(touched)
    return plan


# --------------------------------------------------------------------------- reading the job

def _rows(job: Job, ctx: Context) -> list[dict[str, Any]]:
    try:
        rows = every(ctx, "distribution_files", {"job": job.id})
    except psycopg.Error as exc:
        if exc.diag.sqlstate in ("SP002", "SP023"):
            raise GiveUp(f"{exc.diag.sqlstate}: {exc.diag.message_primary}") from exc
        raise
    if rows and rows[0]["subject_type"] == "CA":   # a CA's instance: its newest CRL, if it signed one
        crl = ctx.conn.execute(q("newest_crl"), {"instance": rows[0]["instance"]}).fetchone()
        for row in rows:
            row["crl"] = crl[0] if crl else None
    return rows


def _key_opener(ctx: Context):
    """open_key(pem): the stored key in clear; an encrypted one needs the db_encryption_key passphrase (read once)."""
    cache: dict[str, bytes] = {}

    def open_key(pem: str) -> str:
        if not keystore.is_encrypted(pem):
            return pem
        if "passphrase" not in cache:
            try:
                cache["passphrase"] = keystore.read_passphrase(ctx.config.paths.db_encryption_key,
                                                               "Passphrase of the stored keys: ")
            except ServerPKIError as exc:
                raise GiveUp(f"the stored keys are encrypted: db_encryption_key: {exc}") from None
        try:
            return keystore.decrypt_pem(pem, cache["passphrase"], "a stored key")
        except keystore.WrongPassphrase:
            raise GiveUp("db_encryption_key: wrong passphrase, it does not open the stored key") from None
        except keystore.KeystoreError as exc:
            raise GiveUp(str(exc)) from None

    return open_key


# --------------------------------------------------------------------------- on the host

def _drift(conn: sshclient.Connection, f: RemoteFile) -> list[str]:
    """How the file on the host differs from what it should be ([]: not at all)."""
    attrs = conn.lstat(f.path)
    if attrs is None:
        return ["missing"]
    if not stat.S_ISREG(attrs.st_mode or 0):
        return ["not a regular file"]
    why = []
    # another size is another content: not read (it may be a huge sparse file); else no more is read than ours
    if attrs.st_size != len(f.content) or conn.sha256(f.path, limit=len(f.content)) != f.sha256:
        why.append("content")
    if stat.S_IMODE(attrs.st_mode) != f.mode:
        why.append(f"mode {stat.S_IMODE(attrs.st_mode):04o}, not {f.mode:04o}")
    if (f.uid is not None and attrs.st_uid != f.uid) or (f.gid is not None and attrs.st_gid != f.gid):
        why.append(f"owner {attrs.st_uid}:{attrs.st_gid}, not "
                   f"{'-' if f.uid is None else f.uid}:{'-' if f.gid is None else f.gid}")
    return why


def _at(path: str, action):
    """Run one step on the host; an error names the path it was about."""
    try:
        return action()
    except OSError as exc:
        text = exc.strerror or str(exc) or (
            "no answer from the host in time ([ssh] command_timeout_seconds)" if isinstance(exc, TimeoutError)
            else type(exc).__name__)
        raise OSError(exc.errno, text if path in text else f"{path}: {text}") from None


def _in_jails(conn: sshclient.Connection, plan: Plan):
    """Resolve every directory of the plan that lies in a jail on the host, before anything is read or
    written: a symbolic link a jail's owner planted must not lead a write (or -K's reads) out of the jail
    (PathEscape, and nothing is done on the host). Returns on_host(path) -> where to write it, and
    makedirs(directory), which makes a directory and checks it again before the first write into it."""
    real = {d: _at(d, lambda: conn.resolve_inside(d, root)) for d, root in plan.jails.items()}
    checked: set[str] = set()

    def on_host(path: str) -> str:
        directory, name = posixpath.split(path)
        return posixpath.join(real.get(directory, directory), name)

    def makedirs(directory: str) -> list[str]:
        made = conn.makedirs(real.get(directory, directory))
        if directory in plan.jails and directory not in checked:
            # made or not, it must still be where it was resolved to (no link swapped in meanwhile)
            if conn.resolve_inside(directory, plan.jails[directory]) != real[directory]:
                raise sshclient.PathEscape(f"{plan.fqdn}: {directory} resolved to {real[directory]} before the "
                                           f"first write, and elsewhere now: its path was changed meanwhile")
            checked.add(directory)
        return made

    return on_host, makedirs


def put_files(conn: sshclient.Connection, plan: Plan, consolidate: bool, keep_alive=lambda: None,
              tag: str | None = None) -> dict[str, Any]:
    """Write the plan's files and links (in consolidate mode only what drifted); returns what was done.
    tag (the job's) names the temporary files, so a retry replaces what a crashed attempt left.
    Files in a jail go where their directory resolves to on the host (_in_jails); the result names
    the configured paths."""
    files, links, drift, created = [], [], [], []
    on_host, makedirs = _in_jails(conn, plan)
    for f in plan.files.values():
        there = dataclasses.replace(f, path=on_host(f.path))
        why = _at(f.path, lambda: _drift(conn, there)) if consolidate else []
        write = not consolidate or bool(why)
        if write:
            created += _at(f.path, lambda: makedirs(posixpath.dirname(f.path)))
            _at(f.path, lambda: conn.put_atomic(there, tag))
            crash_point("distribute.file_written")
        if why:
            drift.append({"path": f.path, "drift": why})
        files.append({"path": f.path, "sha256": f.sha256, "mode": f"{f.mode:04o}", "uid": f.uid, "gid": f.gid,
                      "written": write})
        keep_alive()
    for path, target in plan.links.items():
        there = on_host(path)
        now = _at(path, lambda: conn.readlink(there)) if consolidate else None
        write = not consolidate or now != target
        if write:
            created += _at(path, lambda: makedirs(posixpath.dirname(path)))
            _at(path, lambda: conn.symlink_atomic(target, there, tag))
        if consolidate and write:
            drift.append({"path": path, "drift": ["missing link" if now is None else f"link to {now}, not {target}"]})
        links.append({"path": path, "target": target, "written": write})
    return {"files": files, "links": links, "drift": drift, "directories_created": created}


def run_reloads(conn: sshclient.Connection, plan: Plan, changed: set[str] | None,
                label: str | None = None) -> list[dict[str, Any]]:
    """Each distinct reload command once (only those whose places changed, when `changed` is given);
    label: the job's, for the log lines (default: the host)."""
    done = []
    for command, paths in plan.reloads.items():
        if changed is not None and not (paths & changed):
            continue
        result = conn.run(command)
        log.info("%s: reload `%s`: %s", label or plan.fqdn, one_line(command),
                 "timed out" if result.exit is None else f"exit {result.exit}")
        done.append(result.as_dict())
    return done


@handler("distribute")
def distribute(job: Job, ctx: Context) -> Completion:
    """Put the instance on the job's targets of one disthost, then reload their services."""
    consolidate = job.args.get("mode") == "consolidate"
    rows = _rows(job, ctx)
    if not rows:  # the targets were removed meanwhile: nothing to put anywhere
        return Completion(report={"host": None, "mode": job.args.get("mode", "deploy"), "targets": [], "files": [],
                                  "drift": [], "reload": []})
    plan = build_plan(rows, _key_opener(ctx))
    # the connection's faults leave it as RetryLater or GiveUp (sshclient): passed on as they are
    with sshclient.connect(plan.fqdn, ctx.config.ssh) as conn:
        done = put_files(conn, plan, consolidate, ctx.keep_alive, tag=f"job{job.id}")
        crash_point("distribute.files_written")
        changed = None
        if consolidate:
            changed = {d["path"] for d in done["drift"]}
        reloads = run_reloads(conn, plan, changed, job.label)
        endpoint = str(conn.where)
    failed = [r for r in reloads if r["exit"] != 0]
    if failed:
        raise RetryLater(f"{plan.fqdn}: the files are in place, but " + "; ".join(
            f"reload `{r['command']}` {'timed out' if r['exit'] is None else 'exited ' + str(r['exit'])}: "
            f"{r['output'].strip() or '(no output)'}" for r in failed))
    return Completion(report={"host": plan.fqdn, "endpoint": endpoint, "mode": "consolidate" if consolidate else "deploy",
                              "instance": plan.instance, "targets": plan.targets, **done, "reload": reloads})
