"""Documents generated from the database stay in step with it."""

from pathlib import Path


def test_state_diagram_in_docs_is_generated_from_the_transition_table(conn, repo_root: Path):
    dot = conn.execute("SELECT dot FROM state_diagram").fetchone()[0]
    assert (repo_root / "docs" / "states.dot").read_text().strip() == dot.strip(), \
        "regenerate: psql -At -c 'SELECT dot FROM state_diagram' > docs/states.dot && dot -Tpng docs/states.dot -o docs/states.png"
    for from_state, to_state in conn.execute("SELECT from_state, to_state FROM state_transitions"):
        assert f'"{from_state or "(none)"}" -> "{to_state or "(deleted)"}"' in dot
