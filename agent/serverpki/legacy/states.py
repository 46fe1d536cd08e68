"""How an imported instance reaches its state: a new row may only be 'reserved' (our state machine,
pki.state_transitions), so it walks allowed transitions from there, each recorded in pki.events with
the import as the reason."""

from __future__ import annotations

PATHS = {
    "reserved": (),
    "issued": ("issued",),
    "prepublished": ("issued", "prepublished"),
    "deployed": ("issued", "deployed"),
    "expired": ("issued", "expired"),
    "revoked": ("revoked",),
    "archived": ("issued", "expired", "archived"),
}


def path_to(state: str) -> tuple[str, ...] | None:
    """The transitions after 'reserved' that end in state; None for a state we do not have."""
    return PATHS.get(state)
