"""Man pages of operate_serverPKI and serverpki, written from their own --help: the click command tree
typer builds, option by option as --help prints it, so a page cannot drift from its command.

setup.py runs `python -m serverpki.manpage DIR` at build time (one page per command: serverpki-db-status.1
for `serverpki db status`, as git does); `pip install .` puts the pages into share/man/man1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer.main

from . import __version__, admin, operate

# the statuses every command shares (docs/cli.md has the table with the details)
EXIT_STATUS = (
    ("0", "success"),
    ("1", "a job failed"),
    ("2", "usage error: a bad option, selection or configuration file; nothing done"),
    ("3", "database unreachable or schema incompatible (serverpki db upgrade); nothing done"),
    ("4", "operate_serverPKI -n found configuration problems (warnings do not count)"),
)


def _roff(text: str) -> str:
    """Text as roff: backslashes and hyphens escaped, no line read as a request (. or ' first)."""
    lines = text.replace("\\", "\\e").replace("-", "\\-").splitlines()
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def _paragraphs(text: str) -> str:
    return "\n.PP\n".join(_roff(" ".join(p.split())) for p in text.strip().split("\n\n") if p.strip())


def _page(command, ctx, path: list[str]) -> str:
    name = " ".join(path)
    helptext = command.help or ""
    summary = command.get_short_help_str(limit=200).rstrip(".")
    out = [f'.TH "{"-".join(path).upper()}" 1 "" "serverPKI {__version__}" "serverPKI"',
           ".SH NAME", f"{_roff('-'.join(path))} \\- {_roff(summary)}",
           ".SH SYNOPSIS", f".B {_roff(name)}", _roff(" ".join(command.collect_usage_pieces(ctx))),
           ".SH DESCRIPTION", _paragraphs(helptext), ".SH OPTIONS"]
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)   # exactly the two columns --help prints
        if record:
            out += [".TP", f".B {_roff(record[0])}", _roff(record[1]) if record[1] else ""]
    subcommands = getattr(command, "commands", {})
    if subcommands:
        out.append(".SH COMMANDS")
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            out += [".TP", f".B {_roff(sub_name)}",
                    _roff(f"{sub.get_short_help_str(limit=200)} See {'-'.join(path + [sub_name])}(1).")]
    if len(path) == 1:
        out.append(".SH EXIT STATUS")
        for status, meaning in EXIT_STATUS:
            out += [".TP", f".B {status}", _roff(meaning)]
    related = sorted({"operate_serverPKI(1)", "serverpki(1)"} - {f"{path[0]}(1)"})
    out += [".SH SEE ALSO", _roff(", ".join(related) + "; the documentation in the source: README.md, docs/.")]
    return "\n".join(line for line in out if line != "") + "\n"


def pages() -> dict[str, str]:
    """File name -> roff, for each command and subcommand."""
    found: dict[str, str] = {}

    def walk(command, parent, path: list[str]) -> None:
        ctx = command.make_context(path[-1], [], parent=parent, resilient_parsing=True)
        found["-".join(path) + ".1"] = _page(command, ctx, path)
        for sub_name in getattr(command, "commands", {}):
            walk(command.get_command(ctx, sub_name), ctx, path + [sub_name])

    walk(typer.main.get_command(operate.app), None, ["operate_serverPKI"])
    walk(typer.main.get_command(admin.app), None, ["serverpki"])
    return found


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in pages().items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1])):
        print(path)
