"""`serverpki`: the administrative verbs the seed's command line does not have."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__, migrate, reports
from .db import connect, refusals_as_errors
from .errors import ServerPKIError, UsageError
from .config_import import import_command
from .monitor import metrics_command
from .queries import q

# locals can hold keys and passphrases: never print them in a traceback
# -h as well as --help, on every subcommand (click hands help_option_names down to them)
app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=True, rich_markup_mode=None,
                  help="serverPKI administration: database schema, agent, demo.",
                  context_settings={"help_option_names": ["-h", "--help"]})
db_app = typer.Typer(no_args_is_help=True, help="Install or upgrade the serverPKI schema.")
app.add_typer(db_app, name="db")

DsnOption = Annotated[Optional[str], typer.Option(
    "--dsn", envvar="SERVERPKI_DSN",
    help="libpq connection string; default: PGHOST, PGPORT, PGDATABASE, PGUSER")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts (docs/cli.md has the schema)")]


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"serverpki {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    """serverPKI administration: database schema, agent, demo."""


def _fail(exc: ServerPKIError) -> None:
    typer.echo(f"serverpki: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


@db_app.command("init")
def db_init(dsn: DsnOption = None) -> None:
    """Install the schema into an empty database (the same as upgrade, which is safe to repeat)."""
    db_upgrade(dsn)


@db_app.command("upgrade")
def db_upgrade(dsn: DsnOption = None) -> None:
    """Apply new versioned DDL once, and re-apply functions, views and triggers."""
    try:
        with connect(dsn, autocommit=True) as conn, refusals_as_errors():
            applied = migrate.upgrade(conn, log=lambda line: typer.echo(line))
            typer.echo(f"schema is current ({len(applied)} migration(s) applied now; functions, views and triggers re-applied)")
    except ServerPKIError as exc:
        _fail(exc)


@db_app.command("import-legacy")
def db_import_legacy(
        from_dsn: Annotated[str, typer.Option("--from", help="libpq connection string of the serverPKI 0.9.x database")],
        dsn: DsnOption = None,
        passphrase_file: Annotated[Optional[Path], typer.Option(help="the original's db_encryption_key file (its whole content)")] = None,
        ca_passphrase_file: Annotated[Optional[Path], typer.Option(help="our local CA's passphrase file (default: --passphrase-file)")] = None,
        account_file: Annotated[Optional[Path], typer.Option(help="the original's Let's Encrypt account file (JSON)")] = None,
        acme_directory: Annotated[Optional[str], typer.Option(help="the directory URL of that account (default: its uri's server)")] = None,
        force: Annotated[bool, typer.Option("--force", help="import into a database that holds certificates already")] = False,
        ca_cert_file: Annotated[Optional[Path], typer.Option(help="the flat ca_cert file of a local CA older than 0.9 (not in the database)")] = None,
        ca_key_file: Annotated[Optional[Path], typer.Option(help="its flat ca_key file (opened with --ca-passphrase-file when encrypted)")] = None,
        local_ca_name: Annotated[str, typer.Option(help="the name of that CA: the original's SUBJECT_LOCAL_CA")] = "Local CA",
) -> None:
    """Import a serverPKI 0.9.x database (ids, states, keys, local CA, account) in one transaction; run as the schema owner."""
    from . import legacy   # the importer (keys, cryptography): for this command only

    try:
        report = legacy.import_legacy(legacy.Options(from_dsn, dsn, passphrase_file, ca_passphrase_file,
                                                     account_file, acme_directory, force, ca_cert_file, ca_key_file,
                                                     local_ca_name))
    except ServerPKIError as exc:
        _fail(exc)
    typer.echo(report.text())


@db_app.command("status")
def db_status(dsn: DsnOption = None, as_json: JsonOption = False) -> None:
    """Show applied and pending migrations and whether keys are encrypted; exit status 3 when the
    agent and operate_serverPKI would refuse the database (pending migrations, or a newer schema)."""
    try:
        with connect(dsn, autocommit=True) as conn, refusals_as_errors():
            st = migrate.status(conn)
    except ServerPKIError as exc:
        _fail(exc)
    typer.echo(reports.db_status_json(st) if as_json else reports.db_status_text(st))
    if st.problem is not None:   # what the agent and operate_serverPKI would refuse, and their exit status
        _fail(st.problem)


@app.command("jobs")
def jobs_command(
    dsn: DsnOption = None,
    states: Annotated[Optional[list[str]], typer.Option("--state", help="only jobs in this state; repeatable")] = None,
    kinds: Annotated[Optional[list[str]], typer.Option("--kind", help="only jobs of this kind; repeatable")] = None,
    certificate: Annotated[Optional[str], typer.Option("--certificate", help="only jobs of this certificate")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="the newest N jobs; 0: all")] = 50,
    as_json: JsonOption = False,
) -> None:
    """List the queue's jobs, newest first (the view pki.jobs_overview; pki_report may read it)."""
    try:
        with connect(dsn, autocommit=True) as conn, refusals_as_errors():
            known = conn.execute(q("job_states")).fetchone()[0]
            unknown = [s for s in states or () if s not in known]
            if unknown:
                raise UsageError(f"--state {', '.join(unknown)}: not a job state ({', '.join(known)})")
            found = reports.jobs(conn, states or [], kinds or [], certificate, limit or None)
    except ServerPKIError as exc:
        _fail(exc)
    typer.echo(reports.jobs_json(found) if as_json else found.grid())


@app.command("agent")
def agent_command(
    config_file: Annotated[Optional[Path], typer.Option("-f", "--config-file", help="configuration file")] = None,
    kinds: Annotated[Optional[list[str]], typer.Option("--kind", help="only jobs of this kind; repeatable")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
    debug: Annotated[bool, typer.Option("-d", "--debug")] = False,
) -> None:
    """Work the queue until stopped: woken by NOTIFY, polling as a fallback, reconnecting after outages."""
    import signal
    import threading

    from .agent import Agent
    from .config import load_config
    from .log import setup_logging

    try:
        config = load_config(config_file)
        setup_logging(config, quiet=False, verbose=verbose, debug=debug)
        agent = Agent(config.database.dsn or "", config, name=config.agent.name, lease=config.agent.lease_seconds,
                      batch=config.agent.batch, kinds=kinds)
    except ServerPKIError as exc:
        _fail(exc)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent.forever(poll_seconds=config.agent.poll_seconds, stop=stop)
    except ServerPKIError as exc:   # a schema of another release (migrate.check_compatible), at start or reconnection
        _fail(exc)
    finally:
        agent.close()


app.command("metrics")(metrics_command)

config_app = typer.Typer(no_args_is_help=True, help="Take over the configuration of serverPKI 0.9.")
app.add_typer(config_app, name="config")
config_app.command("import")(import_command)


@app.command("demo")
def demo_command(keep: Annotated[bool, typer.Option(help="leave the lab running and print how to reach it")] = False) -> None:
    """Run the whole job on a self-contained local setup (a private lab on loopback)."""
    from .demo import run_demo

    try:
        run_demo(keep=keep)
    except ServerPKIError as exc:
        _fail(exc)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
