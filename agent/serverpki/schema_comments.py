"""The descriptions of the tables, columns and types that the migrations (db/schema/) create: the
comment block right above a CREATE TABLE (or TYPE, DOMAIN), a column's comment on its line or right
above it, the comment of an ALTER TABLE ... ADD COLUMN; the migrations read in order, so that a later
one's comment wins (they are frozen: a later one is the only way to change a table). What they leave
unsaid is written in db/descriptions.md (db/README.md). The installer (migrate.described) turns each
into COMMENT ON, so psql's \\dt+, \\d+ and \\dT+ document the schema.
"""

from __future__ import annotations

import re

DESCRIPTIONS_FILE = "descriptions.md"   # what the frozen migrations leave unsaid (db/README.md)
# the kinds whose every object must have a description (tests/test_descriptions.py); a type,
# domain or schema is described when a comment is there
REQUIRED = ("TABLE", "COLUMN")
_NAME = r"((?:pki|dd)\.\w+)"
_CREATE_TABLE = re.compile(rf"^CREATE (?:UNLOGGED )?TABLE (?:IF NOT EXISTS )?{_NAME}\s*\(", re.I)
_CREATE_TYPE = re.compile(rf"^CREATE TYPE {_NAME} AS (?:ENUM )?\(", re.I)
_CREATE_OTHER = re.compile(r"^CREATE (DOMAIN|SCHEMA) (?:IF NOT EXISTS )?((?:pki|dd)(?:\.\w+)?)\b", re.I)
_ALTER_TABLE = re.compile(rf"^ALTER TABLE (?:IF EXISTS )?(?:ONLY )?{_NAME}", re.I)
_DROP = re.compile(rf"^DROP (TABLE|TYPE|DOMAIN) (?:IF EXISTS )?{_NAME}", re.I)
_ADD_COLUMN = re.compile(r"\bADD (?:COLUMN )?(?:IF NOT EXISTS )?((\w+).*)", re.I)
_DROP_COLUMN = re.compile(r"\bDROP (?:COLUMN )?(?:IF EXISTS )?(\w+)", re.I)
_RENAME_COLUMN = re.compile(r"\bRENAME (?:COLUMN )?(\w+) TO (\w+)", re.I)
_RENAME_TABLE = re.compile(r"\bRENAME TO (\w+)", re.I)
# an item of a table's (...) or of ADD that is no column
_CONSTRAINT = re.compile(r"CONSTRAINT\s|PRIMARY\s+KEY|FOREIGN\s+KEY|UNIQUE\s*(?:\(|NULLS)|CHECK\s*\(|EXCLUDE\s*(?:\(|USING)|LIKE\s",
                         re.I)
_LABEL = re.compile(r"'((?:[^']|'')*)'")
_LINE = re.compile(r"^- `([\w.*]+)`: (.*)$")


def _split_comment(line: str) -> tuple[str, str | None]:
    """A line's SQL and its trailing `-- comment`, None if it has none (a -- inside a quoted literal is SQL)."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == "'":
            quoted = not quoted
        elif not quoted and line.startswith("--", i):
            return line[:i], line[i + 2:].strip()
    return line, None


def _depth_change(code: str) -> int:
    code = re.sub(r"'(?:[^']|'')*'", "", code)
    return code.count("(") - code.count(")")


def _joined(comments: list[str | None], sep: str = " ") -> str:
    return sep.join(c for c in comments if c)


def _own_text(block: list[str | None], name: str) -> str | None:
    """A comment block as a description: from the line that starts with the object's own "name:" (a
    block may begin with the file's header), that name taken off; else the whole block, the file's
    "NNNN_migration:" taken off."""
    lines = [line for line in block if line]
    own = re.compile(rf"{re.escape(name.split('.')[-1])}:\s*")
    starts = [i for i, line in enumerate(lines) if own.match(line)]
    if starts:
        lines = lines[starts[-1]:]
        lines[0] = own.sub("", lines[0], count=1)
    text = re.sub(r"^\d{4}_\w+:\s*", "", "\n".join(lines))
    return text or None


class _Migration:
    """One migration's lines, read statement by statement into the descriptions gathered so far."""

    def __init__(self, text: str, found: dict[tuple[str, str], str | None]):
        self.lines = [_split_comment(line) for line in text.splitlines()]
        self.found = found

    def read(self) -> None:
        above: list[str] = []   # the comment lines right above the statement
        i = 0
        while i < len(self.lines):
            code, comment = self.lines[i]
            if not code.strip():
                above = [] if comment is None else above + [comment]   # a blank line ends a block
                i += 1
                continue
            i = self.statement(i, above)
            above = []

    def statement(self, i: int, above: list[str]) -> int:
        """Read the statement that starts at line i; returns the line after it."""
        code, comment = self.lines[i]
        head = code.strip()
        end = self.end_of(i)
        if m := _CREATE_TABLE.match(head):
            self.found["TABLE", m[1]] = _own_text(above + [comment], m[1])
            self.members(m[1], i, end, required=True)
        elif m := _CREATE_TYPE.match(head):
            labels = self.members(m[1], i, end, required=False)   # a composite type's fields: columns
            text = _own_text(above + [comment], m[1])
            if text:
                self.found["TYPE", m[1]] = "\n".join([text, *labels])
        elif m := _CREATE_OTHER.match(head):
            text = _own_text(above + [comment], m[2])
            if text:
                self.found[m[1].upper(), m[2]] = text
        elif m := _ALTER_TABLE.match(head):
            self.alter(m[1], i, end, above)
        elif m := _DROP.match(head):
            self.forget(m[2])
        return end + 1

    def end_of(self, i: int) -> int:
        """The line where the statement starting at line i ends (its ; outside parentheses)."""
        depth, dollar_quoted = 0, False
        for j in range(i, len(self.lines)):
            code = self.lines[j][0]
            depth += _depth_change(code)
            dollar_quoted ^= code.count("$$") % 2 == 1   # a DO block's body
            if depth <= 0 and not dollar_quoted and code.rstrip().endswith(";"):
                return j
        return len(self.lines) - 1

    def members(self, owner: str, start: int, end: int, required: bool) -> list[str]:
        """The columns of a CREATE TABLE (or composite type) between its ( and ): each gets the
        comment on its line or the comment lines right above it. Returns an enum's labels as
        "label: comment" lines."""
        labels, pending, indent = [], [], None
        for code, comment in self.lines[start + 1:end + 1]:
            item = code.strip().rstrip(";").strip()
            if item.startswith(")"):
                break
            if not item:
                pending = [] if comment is None else pending + [comment]
                continue
            width = len(code) - len(code.lstrip())
            indent = width if indent is None else indent
            if width > indent:   # the continuation of the item above
                continue
            if label := _LABEL.match(item):
                labels.append(_joined([label[1].replace("''", "'"), comment], ": "))
            elif not _CONSTRAINT.match(item):
                text = _joined(pending + [comment]) or None
                column = item.split()[0].strip('"')
                if text or required:
                    self.found["COLUMN", f"{owner}.{column}"] = text
            pending = []
        return labels

    def alter(self, table: str, start: int, end: int, above: list[str]) -> None:
        """An ALTER TABLE statement: an added column's comment is on its line, or right above it, or (one column
        added) above the statement; dropped and renamed columns and tables follow."""
        added, pending = [], []
        for j in range(start, end + 1):
            code, comment = self.lines[j]
            if j > start and not code.strip():
                pending = [] if comment is None else pending + [comment]
                continue
            for m in _ADD_COLUMN.finditer(code):
                if not _CONSTRAINT.match(m[1]):
                    added.append([m[2], _joined(pending + [comment])])
            for m in _DROP_COLUMN.finditer(code):   # (DROP CONSTRAINT x names no column: nothing to forget)
                self.found.pop(("COLUMN", f"{table}.{m[1]}"), None)
            for m in _RENAME_COLUMN.finditer(code):
                self.rename(f"{table}.{m[1]}", f"{table}.{m[2]}")
            if m := _RENAME_TABLE.search(code):
                self.rename(table, f"{table.split('.')[0]}.{m[1]}")
            pending = []
        if len(added) == 1 and not added[0][1]:
            added[0][1] = _own_text(above, added[0][0]) or ""
        for column, text in added:
            self.found["COLUMN", f"{table}.{column}"] = text or None

    def rename(self, old: str, new: str) -> None:
        for kind, name in list(self.found):
            if name == old or name.startswith(old + "."):
                self.found[kind, new + name[len(old):]] = self.found.pop((kind, name))

    def forget(self, name: str) -> None:
        for key in [k for k in self.found if k[1] == name or k[1].startswith(name + ".")]:
            del self.found[key]


def schema_descriptions(migrations: list[str], described: str = "") -> dict[tuple[str, str], str | None]:
    """(kind, qualified name) -> description of the tables, columns and types the migrations create
    (their texts in order: a later one's comment wins), then the lines of db/descriptions.md
    (described): an object's own line wins, a "*.column" line describes that column of every table of
    pki that nothing else describes. None: a table or column that nothing describes."""
    found: dict[tuple[str, str], str | None] = {}
    for text in migrations:
        _Migration(text, found).read()
    standard = {}
    for name, text in _described_lines(described):
        kinds = [k for k, n in found if n == name]
        if name.startswith("*."):
            standard[name[2:]] = text
        elif not kinds:
            raise ValueError(f"db/{DESCRIPTIONS_FILE} describes {name}, which no migration creates: correct the name")
        else:
            found[kinds[0], name] = text
    for (kind, name), text in found.items():
        column = name.split(".")[-1]
        if kind == "COLUMN" and not text and name.startswith("pki.") and column in standard:
            found[kind, name] = standard[column]
    return found


def _described_lines(markdown: str) -> list[tuple[str, str]]:
    """The "- `name`: description" lines of db/descriptions.md (an indented line continues one)."""
    lines: list[list[str]] = []
    for line in markdown.splitlines():
        if m := _LINE.match(line):
            lines.append([m[1], m[2].strip()])
        elif lines and line.startswith("  ") and line.strip():
            lines[-1][1] += " " + line.strip()
        else:
            lines.append(["", ""])   # prose ends a description
    return [(name, text) for name, text in lines if name]


def undescribed(found: dict[tuple[str, str], str | None]) -> str | None:
    """What no migration comment and no line of db/descriptions.md describes, as one message; None: nothing."""
    missing = [f"{name} ({kind.lower()})" for (kind, name), text in found.items() if kind in REQUIRED and not text]
    if not missing:
        return None
    return (f"without a description: {', '.join(missing)}: write a comment above the CREATE TABLE (or on the "
            f"column's line) of a new migration, or a line in db/{DESCRIPTIONS_FILE}")
