"""The agent's named SQL statements, parsed from queries.sql at import."""

from __future__ import annotations

import re
from importlib import resources

_TEXT = (resources.files("serverpki") / "queries.sql").read_text()


def _parse(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        # comment lines after a statement introduce the next ones: not part of it
        queries[name.strip()] = re.sub(r"(\n\s*(--[^\n]*)?)+\Z", "", body.strip())
    return queries


QUERIES = _parse(_TEXT)


def q(name: str) -> str:
    return QUERIES[name]
