"""Read a serverPKI 0.9.x database: every table the import carries over, as plain rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row

from ..errors import SchemaIncompatible
from ..queries import q

# the schema versions whose tables this importer knows (0.9.11 writes 6; its fresh install says 5
# for the same tables, see the issue: both have certkeydata with one row per instance and algorithm)
KNOWN_VERSIONS = (5, 6)

QUERIES = {"disthosts": "legacy_disthosts", "jails": "legacy_jails", "places": "legacy_places",
           "services": "legacy_services", "certificates": "legacy_certificates", "subjects": "legacy_subjects",
           "certificates_services": "legacy_certificates_services", "targets": "legacy_targets",
           "certinstances": "legacy_instances", "certkeydata": "legacy_certkeydata"}


@dataclass
class LegacyData:
    schemaversion: int
    keysencrypted: bool
    rows: dict[str, list[dict]] = field(default_factory=dict)


def read_legacy(conn: psycopg.Connection) -> LegacyData:
    """All rows of the legacy database, read in one snapshot; a schema version we do not know is refused."""
    cur = conn.cursor(row_factory=dict_row)
    try:
        revision = cur.execute(q("legacy_revision")).fetchone()
    except psycopg.errors.UndefinedTable:
        raise SchemaIncompatible("--from: no pki.revision table: this is not a serverPKI 0.9.x database") from None
    if revision is None:
        raise SchemaIncompatible("--from: pki.revision is empty: this is not a serverPKI 0.9.x database")
    version = revision["schemaversion"]
    if version not in KNOWN_VERSIONS:
        raise SchemaIncompatible(
            f"--from: serverPKI schema version {version} is not one this importer knows "
            f"({', '.join(map(str, KNOWN_VERSIONS))}: serverPKI 0.9.x); upgrade the old installation to 0.9.11 first")
    data = LegacyData(version, revision["keysencrypted"])
    for table, query in QUERIES.items():
        data.rows[table] = cur.execute(q(query)).fetchall()
    return data
