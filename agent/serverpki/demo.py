"""`serverpki demo`: the demo lives with the lab in the source checkout (lab/demo.py), which
production installs do not get; this finds it there or says in one line why it cannot."""

from __future__ import annotations

from .errors import ServerPKIError


def run_demo(keep: bool = False) -> None:
    try:
        from lab.demo import run_demo as lab_run_demo
    except ModuleNotFoundError as exc:
        if exc.name in ("lab", "lab.demo"):
            raise ServerPKIError("the demo needs the lab of the source checkout (lab/, never installed): "
                                 "run `make demo` in the checkout") from None
        raise ServerPKIError(f"the lab needs {exc.name}, which is not installed: "
                             "pip install -e '.[lab]' in the checkout (or run `make demo`)") from None
    lab_run_demo(keep=keep)
