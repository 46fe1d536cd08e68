"""Write the legacy rows into our database, as its owner, in the caller's one transaction.

Every row is matched first: a row the target holds already (same id and name, same hash) counts as
imported and is not written again, so a second run changes nothing and reports the same. A row our
validation refuses is left out (savepoint) and reported with its fix, unless leaving it out would
make the rest wrong: a key that does not open stops everything.
"""

from __future__ import annotations

import hashlib

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from psycopg.rows import dict_row

from ..errors import ConfigError, ServerPKIError
from ..queries import q
from ..x509util import key_algo
from .keys import KeyDoesNotOpen, account_key, restore_key
from .reader import LegacyData
from .report import Report

REASON = "imported from serverPKI 0.9.x (serverpki db import-legacy)"
# what a place is: a place of the target with the same name and other content is not the legacy one
PLACE_CONTENT = ("cert_file_type", "cert_path", "key_path", "uid", "gid", "mode", "chownboth", "pglink", "reload_command")
SEQUENCED = ("disthosts", "jails", "places", "services", "certificates", "certinstances")


def is_placeholder(cert: dict, main: dict) -> bool:
    """The row 0.9.x's create_triggers_pki.sql inserts "to resolve chicken-egg-problem": certificate 1, CA 'No cert'."""
    return cert["id"] == 1 and main["name"] == "No cert" and main["type"] == "CA"


class ImportConflict(ServerPKIError):
    """The target holds something else under an id the import must keep."""


def _refusal(exc: psycopg.Error) -> str:
    """One line for a row our validation refuses (SPnnn, or an integrity constraint); anything else goes on up."""
    diag = exc.diag
    if not (diag.sqlstate or "").startswith(("SP", "23")):
        raise exc
    hint = f" ({diag.message_hint})" if diag.message_hint else ""
    return f"{diag.sqlstate} {diag.message_primary}{hint}"


class DamagedCertificate(ServerPKIError):
    """A stored certificate of the legacy database does not parse: the import stops, naming the instance."""


def _certificate(cert_pem: bytes, instance: int, algo: str) -> tuple[str, str]:
    """The stored certificate's key algorithm ('rsa' or 'ec': our certkeydata trigger insists on the truth)
    and its hash; a damaged one stops the import, naming the instance."""
    try:
        cert = x509.load_pem_x509_certificate(bytes(cert_pem))
        its_algo = key_algo(cert.public_key())   # a key of neither kind is no certificate of ours either
    except (ValueError, ConfigError) as exc:
        raise DamagedCertificate(f"instance {instance} ({algo}): its stored certificate is damaged ({exc}): repair or "
                                 "delete that certkeydata row in the 0.9 database and import again; nothing was imported") from None
    der = cert.public_bytes(serialization.Encoding.DER)
    return its_algo, hashlib.sha256(der).hexdigest().upper()


class Writer:
    def __init__(self, conn: psycopg.Connection, data: LegacyData, report: Report):
        self.cur = conn.cursor(row_factory=dict_row)
        self.conn, self.data, self.report = conn, data, report
        self.ids: dict[str, dict[int, int]] = {t: {} for t in ("disthosts", "jails", "places", "services")}
        self.certificates: set[int] = set()
        self.imported: set[int] = set()
        self.targets: dict[int, list[int]] = {}   # certificate -> our target ids
        self.states: dict[int, str] = {}           # instance -> the state it is imported in

    def one(self, name: str, params: dict) -> dict | None:
        return self.cur.execute(q(name), params).fetchone()

    def attempt(self, name: str, params: dict) -> str | None:
        """Run one statement in a savepoint: None, or the refusal in one line."""
        try:
            with self.conn.transaction():
                self.cur.execute(q(name), params)
        except psycopg.Error as exc:
            return _refusal(exc)
        return None

    # ------------------------------------------------------------------ configuration rows
    def keyed(self, table: str, insert: str, find: str, row: dict, what: str, fix: str, same: tuple[str, ...] = ()) -> None:
        """A row matched by its natural key: reused when present, else written with its legacy id when free;
        one present with other content (the columns in same) stops the import, as reusing it would change
        where and how the legacy certificates go."""
        refusal = self.attempt(insert, row)
        found = self.one(find, row)
        if found is None:
            self.report.skip(what, refusal or "not written", fix)
            return
        differ = [c for c in same if found[c] != row[c]]
        if differ:
            theirs = ", ".join(f"{c}={row[c]!r}" for c in differ)
            mine = ", ".join(f"{c}={found[c]!r}" for c in differ)
            raise ImportConflict(f"{what} ({theirs}): the target's {what} (id {found['id']}) has {mine}; make them "
                                 "equal or rename one of them, and import again; nothing was imported")
        self.ids[table][row["id"]] = found["id"]
        self.report.count(table)

    def config(self) -> None:
        rows = self.data.rows
        for r in rows["disthosts"]:
            self.keyed("disthosts", "import_disthost", "import_disthost_id", r, f"disthost {r['fqdn']}",
                       "correct it in the 0.9 database and import again")
        for r in rows["jails"]:
            host = self.ids["disthosts"].get(r["disthost"])
            if host is None:
                self.report.skip(f"jail {r['name']}", "its disthost was not carried over", "see that disthost above")
                continue
            self.keyed("jails", "import_jail", "import_jail_id", {**r, "disthost": host}, f"jail {r['name']}",
                       "give its disthost a jailroot in the 0.9 database and import again", ("disthost",))
        for r in rows["places"]:
            # a place with a key_path: its type may be set back after the import (place_as_deployed)
            same = tuple(c for c in PLACE_CONTENT if c != "cert_file_type") if r["key_path"] else PLACE_CONTENT
            self.keyed("places", "import_place", "import_place_id", self.place_as_deployed(r), f"place {r['name']}",
                       "correct the place in the 0.9 database as the message says, and import again", same)
        for r in rows["services"]:
            self.keyed("services", "import_service", "import_service_id", r, f"service {r['name']}/{r['port']}",
                       "correct it in the 0.9 database and import again")

    def place_as_deployed(self, place: dict) -> dict:
        """0.9.x wrote every place with a key_path as if it were 'separate' (its certdist tests key_path
        before cert_file_type): NAME_key.pem in key_path, NAME_cert.pem in cert_path. Those are the
        files the hosts' services read, so such a place comes as 'separate', said in the report."""
        if not place["key_path"] or place["cert_file_type"] == "separate":
            return place
        self.report.notes.append(
            f"place {place['name']}: cert_file_type {place['cert_file_type']!r} with a key_path, which 0.9.x "
            "wrote as 'separate' (NAME_cert.pem, NAME_key.pem); imported as 'separate' so the hosts keep those "
            f"files; set it back to {place['cert_file_type']!r} (or drop key_path) when the services read its files "
            "(a later import leaves the type as you set it)")
        return {**place, "cert_file_type": "separate"}

    # ------------------------------------------------------------------ certificates
    def certificate(self, cert: dict, main: dict) -> None:
        present = self.one("import_certificate_present", {"id": cert["id"]})
        if present is not None:
            if present["name"] is None or present["name"].lower() != main["name"].lower():
                raise ImportConflict(f"certificate {cert['id']} ({main['name']}): the target holds certificate "
                                     f"{cert['id']} as {present['name']!r}; import into a database without it")
        else:
            algo = cert["encryption_algo"].replace(" ", "_")   # 0.9.x renamed rsa_plus_ec to 'rsa plus ec'
            try:
                with self.conn.transaction():
                    self.cur.execute(q("import_certificate"), {**cert, "encryption_algo": algo})
                    self.cur.execute(q("import_subject"), main)
            except psycopg.Error as exc:
                self.report.skip(f"certificate {cert['id']} ({main['name']})", _refusal(exc),
                                 "correct it in the 0.9 database and import again")
                return
        self.certificates.add(cert["id"])
        self.report.count("certificates")
        self.report.count("subjects")

    def certificates_and_names(self) -> None:
        rows = self.data.rows
        mains = {s["certificate"]: s for s in rows["subjects"] if not s["isaltname"] and s["certificate"] is not None}
        for cert in rows["certificates"]:
            main = mains.get(cert["id"])
            if main is not None and is_placeholder(cert, main):
                self.report.skip(f"certificate {cert['id']} ({main['name']})", "the original's placeholder "
                                 "(its fresh install makes it, with instance 1)", "nothing: ours needs none")
                continue
            if main is None:
                self.report.skip(f"certificate {cert['id']}", "it has no subject name",
                                 "give it one in the 0.9 database (a subject with isaltname false), or drop it")
                continue
            self.certificate(cert, main)
        for s in rows["subjects"]:
            if not s["isaltname"] and s["certificate"] in self.certificates:
                continue
            if s["certificate"] not in self.certificates:
                if s["certificate"] is None:
                    self.report.skip(f"subject {s['name']}", "it belongs to no certificate", "nothing: ours has no such subjects")
                continue   # its certificate was reported
            present = self.one("import_subject_present", s)
            if present is not None and present["certificate"] == s["certificate"]:
                self.report.count("subjects")
                continue
            refusal = self.attempt("import_subject", s)
            if refusal:
                self.report.skip(f"alt name {s['name']} of certificate {s['certificate']}", refusal,
                                 "correct it in the 0.9 database and import again")
            else:
                self.report.count("subjects")
        for cs in rows["certificates_services"]:
            params = {"certificate": cs["certificate"], "service": self.ids["services"].get(cs["service"])}
            if params["certificate"] not in self.certificates or params["service"] is None:
                continue
            if self.one("import_certificate_service_present", params) is None:
                self.cur.execute(q("import_certificate_service"), params)
            self.report.count("certificates_services")
        for t in rows["targets"]:
            what = f"target {t['id']} of certificate {t['certificate']}"
            if t["certificate"] not in self.certificates:
                continue
            if t["place"] is None:
                self.report.skip(what, "it has no place (ours needs one: where the files go)",
                                 "give the target a place in the 0.9 database, or add it after the import")
                continue
            params = {"certificate": t["certificate"], "disthost": self.ids["disthosts"].get(t["disthost"]),
                      "jail": self.ids["jails"].get(t["jail"]) if t["jail"] is not None else None,
                      "place": self.ids["places"].get(t["place"]), "remarks": t["remarks"]}
            if None in (params["disthost"], params["place"]) or (t["jail"] is not None and params["jail"] is None):
                self.report.skip(what, "its disthost, jail or place was not carried over", "see that row above")
                continue
            if self.one("import_target_present", params) is None:
                refusal = self.attempt("import_target", params)
                if refusal:
                    self.report.skip(what, refusal, "correct it in the 0.9 database and import again")
                    continue
            self.targets.setdefault(t["certificate"], []).append(self.one("import_target_present", params)["id"])
            self.placement_notes(t, what)
            self.report.count("targets")

    def placement_notes(self, target: dict, what: str) -> None:
        """Where ours writes or runs other things than 0.9.x did for this target, said in the report
        (docs/migrating.md, "What ours writes differently"); none of the files it wrote is rewritten
        but where a note says so."""
        place = next(p for p in self.data.rows["places"] if p["id"] == target["place"])
        cert = next(c for c in self.data.rows["certificates"] if c["id"] == target["certificate"])
        subject = next(s for s in self.data.rows["subjects"] if s["certificate"] == cert["id"] and not s["isaltname"])
        key_path, kind = place["key_path"], ("separate" if place["key_path"] else place["cert_file_type"])
        notes = []
        if subject["type"] == "CA":
            if kind != "cert only":
                notes.append(f"0.9.x wrote the CA's private key there too (as for any certificate: {subject['name']}_CA_key*.pem "
                             f"in {key_path or place['cert_path']}): delete it, ours writes {subject['name']}_CA_cert.pem only")
            notes.append("ours gives the CA certificate file the place's mode and owner")
        elif "key" in subject["name"]:
            notes.append("0.9.x gave every file of a subject whose name holds 'key' the key's mode and owner (and "
                         "re-linked postgresql.key to the last); ours gives certificate files 0644: the first -K changes them")
        if place["pglink"] and place["chownboth"] and kind not in ("combine key", "combine both") and subject["type"] != "CA":
            notes.append("0.9.x made no postgresql.crt link with chownboth; ours adds it (the first -K)")
        if target["jail"] is not None and key_path and key_path.startswith("/"):
            notes.append(f"0.9.x wrote its key to {key_path} on the host, outside its jail (an absolute key_path drops "
                         "the jail from its path); ours writes it into the jail: the first -K puts it there, make the "
                         "jail's service read it there")
        if key_path and "{}" in key_path:
            notes.append(f"0.9.x wrote its key into a folder named '{{}}' (it filled in cert_path only); ours puts the "
                         f"subject's name there: {key_path.replace('{}', subject['name'])}")
        if cert["type"] == "LE" and key_path:
            notes.append(f"0.9.x wrote no chain file (NAME_cert_cacert_chain.pem) into place {place['name']}, which "
                         "has a key_path; ours adds it (the first -K writes it), the other files stay as they are")
        if place["reload_command"] and target["jail"] is None:
            notes.append("0.9.x ran reload commands only for targets in a jail; ours runs "
                         f"`{place['reload_command']}` after each change here too"
                         + (" with '' for {}: give the target a place whose command needs no jail"
                            if "{}" in place["reload_command"] else ""))
        self.report.notes.extend(f"{what}: {note}" for note in notes)

    # ------------------------------------------------------------------ instances and keys
    def instances(self, keys: dict) -> None:
        """keys: the passphrases: legacy (the original's), ours (None: clear), ca (the local CA's)."""
        pairs: dict[int, list[dict]] = {}
        for k in self.data.rows["certkeydata"]:
            pairs.setdefault(k["certinstance"], []).append(k)
        ca_subjects = {s["certificate"] for s in self.data.rows["subjects"] if s["type"] == "CA"}
        ours = {r["state"] for r in self.cur.execute(q("cert_states"))}
        wanted = []
        for i in self.data.rows["certinstances"]:
            what = f"instance {i['id']} of certificate {i['certificate']}"
            if i["certificate"] not in self.certificates:
                continue
            if i["state"] not in ours:
                self.report.skip(what, f"state {i['state']!r} is not one of ours", "nothing: it is left behind")
            elif i["id"] not in pairs:
                self.report.skip(what, f"{i['state']} without a stored certificate (an issue the original did not finish)",
                                 "nothing: ours issues the certificate anew when it is due")
            else:
                wanted.append(i)
        ids = {i["id"] for i in wanted}
        for i in wanted:
            present = self.one("import_instance_present", {"id": i["id"]})
            if present is not None and present["certificate"] != i["certificate"]:
                raise ImportConflict(f"instance {i['id']}: the target holds instance {i['id']} of certificate "
                                     f"{present['certificate']}, not of {i['certificate']}; import into a database without it")
            cacert = i["cacert"] if i["cacert"] != i["id"] and i["cacert"] in ids else None
            published = (i["updated"] or i["not_before"]) if i["state"] in ("prepublished", "deployed") else None
            if present is None:
                self.cur.execute(q("import_instance"), {**i, "cacert": cacert, "tlsa_published": published})
            ca = i["certificate"] in ca_subjects
            for k in pairs[i["id"]]:
                self.pair(i, k, keys, ca)
            if present is None:   # the state machine's rules: db/functions/180_import_legacy.sql
                self.cur.execute(q("import_instance_state"), {"id": i["id"], "state": i["state"]})
            self.imported.add(i["id"])
            self.report.count("certinstances")
        self.states = {r["id"]: r["state"] for r in self.cur.execute(q("import_states"), {"ids": sorted(self.imported)})}
        self.cur.execute(q("import_tlsa_owners_in_dns"), {"ids": sorted(self.imported)})
        for i in wanted:
            if i["state"] == "deployed" and self.states[i["id"]] == "expired":
                newer = max((j["id"] for j in wanted if j["certificate"] == i["certificate"]
                             and self.states[j["id"]] == "deployed"), default="of ours")
                self.report.notes.append(
                    f"instance {i['id']} of certificate {i['certificate']}: deployed beside the newer instance "
                    f"{newer}; imported as expired (what 0.9.11's next run makes of it)")

    def pair(self, instance: dict, k: dict, keys: dict, ca: bool) -> None:
        algo, cert_hash = _certificate(k["cert"], instance["id"], k["encryption_algo"])
        if algo != k["encryption_algo"]:
            self.report.notes.append(
                f"instance {instance['id']}: the original labelled its {algo} certificate and key '{k['encryption_algo']}' "
                f"(0.9.11 issues local certificates with RSA keys only); imported as {algo}, its files keep their {k['encryption_algo']} names")
        params = {"certinstance": instance["id"], "encryption_algo": algo}
        present = self.one("import_certkeydata_present", params)
        if present is not None:
            if present["hash"] != cert_hash:
                raise ImportConflict(f"instance {instance['id']} ({algo}): the target holds another "
                                     "certificate for it; import into a database without it")
        else:
            what = f"the {algo} key of instance {instance['id']}"
            ours = keys["ca"] if ca else keys["ours"]
            key = restore_key(k["key"], keys["legacy"], ours, what)
            if ca and key and ours is None:
                note = f"the local CA's key (instance {instance['id']}) is stored in clear: give --ca-passphrase-file to store it encrypted"
                self.report.notes.append(note)
            # the hosts hold what 0.9.x wrote: traditional PEM keys, files named by its label (0010_imported_key_files)
            self.cur.execute(q("import_certkeydata"), {**params, "cert": bytes(k["cert"]),
                                                       "key": key.encode("ascii") if key else None,
                                                       "file_name_algo": k["encryption_algo"] if algo != k["encryption_algo"] else None})
        self.report.count("certkeydata")

    def deployments(self) -> None:
        """What the original had deployed, recorded as deployed (at its 'updated' time, by no job of ours):
        each deployed instance on every target of its certificate, each CA's current instance (the newest
        issued, what its targets get) on every target of the CA; else the first -S distributes them again."""
        rows = {i["id"]: i for i in self.data.rows["certinstances"]}
        placed = [(iid, rows[iid]) for iid in sorted(self.imported) if self.states[iid] == "deployed"]
        ca_certificates = {s["certificate"] for s in self.data.rows["subjects"] if s["type"] == "CA"}
        for certificate in sorted(ca_certificates & self.targets.keys()):
            current = self.one("import_ca_current", {"certificate": certificate})["id"]
            if current in rows:
                placed.append((current, rows[current]))
        for iid, i in placed:
            for target in self.targets.get(i["certificate"], []):
                self.cur.execute(q("import_deployment"), {"instance": iid, "target": target,
                                                          "deployed": i["updated"] or i["not_before"]})

    # ------------------------------------------------------------------ account and sequences
    def account(self, account: dict, directory_url: str, passphrase: bytes | None) -> None:
        from .. import keystore
        present = self.one("import_acme_account_uri", {"directory_url": directory_url})
        if present is None:
            key = account_key(account["key"])
            if passphrase is not None:
                key = keystore.encrypt_pem(key, passphrase, "the account key")
            self.cur.execute(q("import_acme_account"), {"directory_url": directory_url, "key": key, "uri": account["uri"]})
        elif present["uri"] != account["uri"]:
            self.report.skip(f"the account {account['uri']}", f"the target has another account for {directory_url}",
                             "keep that one, or delete it (DELETE FROM pki.acme_accounts ...) and import again")
            return
        self.report.count("acme_accounts")

    def sequences(self) -> None:
        for table in SEQUENCED:
            source = "certinstances" if table == "certinstances" else table
            top = max((r["id"] for r in self.data.rows[source]), default=0)
            self.cur.execute(q("import_legacy_max"), {"table": table, "max": top})
        self.cur.execute(q("import_sequences_past"))


__all__ = ["Writer", "ImportConflict", "DamagedCertificate", "KeyDoesNotOpen", "REASON"]
