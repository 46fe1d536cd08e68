"""The documents: those generated from the database stay in step with it, and docs/ holds
everything the code and its output refer to (the repository stands alone)."""

import re
import subprocess
from pathlib import Path


def test_state_diagram_in_docs_is_generated_from_the_transition_table(conn, repo_root: Path):
    dot = conn.execute("SELECT dot FROM state_diagram").fetchone()[0]
    assert (repo_root / "docs" / "states.dot").read_text().strip() == dot.strip(), \
        "regenerate: psql -At -c 'SELECT dot FROM state_diagram' > docs/states.dot && dot -Tsvg docs/states.dot -o docs/states.svg"
    for from_state, to_state in conn.execute("SELECT from_state, to_state FROM state_transitions"):
        assert f'"{from_state or "(none)"}" -> "{to_state or "(deleted)"}"' in dot


# ------------------------------------------------------------------ the repository stands alone
PLAN_SQL = ("db/functions/070_scheduler.sql", "db/functions/150_ca_targets.sql", "db/functions/155_crls.sql")
# applied migrations cannot be edited; their comments keep the names of notes kept outside
APPLIED_MIGRATIONS = re.compile(r"db/schema/000[1-3][^/]*\.sql")
OUTSIDE = re.compile(r"\b(?:LIFECYCLE|ARCHITECTURE|COMPONENTS)\.md\b|\.\./shared\b")


def _string_literals(sql: str) -> list[str]:
    """The single-quoted literals of SQL, comments left out ('' is a quote inside one)."""
    literals, i, n = [], 0, len(sql)
    while i < n:
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql[i] == "'":
            j, text = i + 1, []
            while j < n:
                if sql[j] == "'" and sql.startswith("''", j):
                    text.append("'")
                    j += 2
                elif sql[j] == "'":
                    break
                else:
                    text.append(sql[j])
                    j += 1
            literals.append("".join(text))
            i = j + 1
        else:
            i += 1
    return literals


def _lifecycle_rules(repo_root: Path) -> dict[int, str]:
    """The rows of the table of rules in docs/lifecycle.md: number -> the rest of the row."""
    text = (repo_root / "docs" / "lifecycle.md").read_text()
    section = text.split("## The rules of one scheduler pass", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \|(.*)$", section, re.M)}


def test_every_rule_a_plan_reason_names_is_in_docs_lifecycle(repo_root: Path):
    said: set[int] = set()
    for path in PLAN_SQL:
        for literal in _string_literals((repo_root / path).read_text()):
            said.update(int(n) for n in re.findall(r"\brule (\d+)\b", literal))
    assert said >= {1, 2, 3, 4, 5, 6, 7, 9}, f"the scan of {PLAN_SQL} found only rules {sorted(said)}"
    rules = _lifecycle_rules(repo_root)
    missing = sorted(said - rules.keys())
    assert not missing, f"docs/lifecycle.md, '## The rules of one scheduler pass', lacks a row for rule(s) {missing}"
    for number, row in rules.items():
        cells = [c.strip() for c in row.split("|")]
        assert len(cells) >= 3 and all(cells[:3]), f"rule {number} in docs/lifecycle.md has no name or meaning"
    assert sorted(rules) == list(range(1, max(rules) + 1)), "the rules of docs/lifecycle.md are numbered without a gap"


def test_every_kind_of_plan_row_is_in_docs_lifecycle(repo_root: Path):
    literals = {lit for path in PLAN_SQL for lit in _string_literals((repo_root / path).read_text())}
    text = (repo_root / "docs" / "lifecycle.md").read_text()
    section = text.split("## The kinds of plan rows", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z][a-zA-Z ]*)` \|", section, re.M))
    for kind in ("delete", "archive", "expire", "issue", "distribute", "prepublish", "remind",
                 "distribute CA", "sign CRL", "wait", "skip", "warn", "overdue"):
        assert kind in literals, f"{kind!r} is no longer a literal of {PLAN_SQL}: update this test and the doc"
        assert kind in documented, f"docs/lifecycle.md, '## The kinds of plan rows', lacks {kind!r}"
    stale = documented - literals
    assert not stale, f"docs/lifecycle.md documents plan rows the SQL has not: {sorted(stale)}"


def test_no_tracked_file_points_outside_the_repository(repo_root: Path):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=repo_root, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    assert "docs/architecture.md" in files and "docs/lifecycle.md" in files
    offenders = []
    for name in filter(None, files):
        path = repo_root / name
        if APPLIED_MIGRATIONS.fullmatch(name) or not path.is_file() or path.is_symlink():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue        # a picture
        offenders += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE.search(line)]
    assert not offenders, "files name notes outside the repository (docs/ has them):\n" + "\n".join(offenders)
