"""`serverpki metrics`: the database's metrics in the Prometheus text format (pki.metrics), on stdout or
written atomically for node_exporter's textfile collector, and `--check`, a Nagios plugin graded by the
open alerts (pki.alerts). Meant for the monitoring login (pki_reader); docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import migrate
from .db import connect, refusals_as_errors
from .errors import ServerPKIError
from .export import write_atomic
from .queries import q

# Nagios plugin exit statuses, by the worst open alert
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
SEVERITY_STATUS = {"critical": CRITICAL, "warning": WARNING}
FIRST_LINE_ALERTS = 3    # summaries on the status line; every alert follows on a line of its own
TEXTFILE_MODE = 0o644    # node_exporter runs as a user of its own


class TextfileUnwritable(ServerPKIError):
    """The --textfile could not be written; nothing was left behind (exit status 1, a failed run)."""


def metrics_text(conn) -> str:
    return conn.execute(q("metrics")).fetchone()[0]


def write_textfile(path: Path, text: str) -> None:
    """Replace path at once: a temporary file beside it (which the collector skips: it reads *.prom only),
    written, fsynced and renamed over it; on failure nothing is left behind."""
    try:
        write_atomic(path, text, TEXTFILE_MODE)
    except OSError as exc:
        raise TextfileUnwritable(f"cannot write --textfile {path}: {exc.strerror or exc}") from exc


def _line(text: object) -> str:
    """Text for a plugin output line: one line, no '|' (which would start the performance data)."""
    return re.sub(r"\s+", " ", str(text)).replace("|", "/").strip()


def check_report(alerts: list[tuple[str, str, Optional[str]]]) -> tuple[int, str]:
    """The exit status and output of --check for the open alerts (severity, summary, detail), critical
    first: a status line with the counts and the first summaries, the performance data after '|', then
    one line per alert (the plugin's long output)."""
    counts = {severity: sum(1 for a in alerts if a[0] == severity) for severity in ("critical", "warning")}
    status = max((SEVERITY_STATUS.get(a[0], UNKNOWN) for a in alerts), default=OK)
    if alerts:
        shown = "; ".join(_line(a[1]) for a in alerts[:FIRST_LINE_ALERTS])
        more = f" (+{len(alerts) - FIRST_LINE_ALERTS} more)" if len(alerts) > FIRST_LINE_ALERTS else ""
        text = f"{counts['critical']} critical, {counts['warning']} warning: {shown}{more}"
    else:
        text = "no open alerts"
    lines = [f"SERVERPKI {STATUS[status]} - {text} | critical={counts['critical']} warning={counts['warning']}"]
    lines += [_line(f"{severity.upper()}: {summary}" + (f" ({detail})" if detail else "")) for severity, summary, detail in alerts]
    return status, "\n".join(lines)


def _run(dsn: Optional[str], textfile: Optional[Path], check: bool) -> tuple[int, str]:
    # unreachable (DatabaseUnreachable) or a schema of another release (check_compatible): exit status 3, UNKNOWN
    with connect(dsn, autocommit=True) as conn, refusals_as_errors():
        migrate.check_compatible(conn)
        if textfile is not None or not check:
            text = metrics_text(conn)
            if textfile is None:
                return OK, text.rstrip("\n")
            write_textfile(textfile, text)
        if not check:
            return OK, ""
        return check_report(conn.execute(q("open_alerts")).fetchall())


def metrics_command(
    dsn: Annotated[Optional[str], typer.Option(
        "--dsn", envvar="SERVERPKI_DSN",
        help="libpq connection string (the monitoring login, pki_reader); default: PGHOST, PGPORT, PGDATABASE, PGUSER")] = None,
    textfile: Annotated[Optional[Path], typer.Option(
        "--textfile", metavar="PATH",
        help="write the metrics to PATH atomically (node_exporter's textfile collector reads *.prom) instead of stdout")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="a Nagios plugin: exit 0 OK, 1 WARNING, 2 CRITICAL by the worst open alert, 3 UNKNOWN")] = False,
) -> None:
    """Print the metrics in the Prometheus text format, write them for node_exporter (--textfile),
    or grade the open alerts as a Nagios plugin (--check)."""
    try:
        status, output = _run(dsn, textfile, check)
    except Exception as exc:   # noqa: BLE001 - a plugin answers UNKNOWN, whatever went wrong
        if not check:
            if not isinstance(exc, ServerPKIError):
                raise
            typer.echo(f"serverpki: {_line(exc)}", err=True)
            raise typer.Exit(exc.exit_code)
        status, output = UNKNOWN, f"SERVERPKI UNKNOWN - {_line(exc) or type(exc).__name__}"
    if output:
        typer.echo(output)
    raise typer.Exit(status)
