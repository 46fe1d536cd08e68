"""`operate_serverPKI`: the seed's command line (operation.txt), every option with its meaning.

Each action is one call of its SQL function (the database validates the
selection, decides and enqueues), followed by draining the queue with the
agent. The exit status says whether every job the run performed succeeded
(errors.ExitStatus; docs/cli.md has the table, and the JSON of --json).
Jobs of kinds this release has no handler for stay queued, and the run says so.
"""

from __future__ import annotations

import gc

# no cyclic garbage collection while this module's libraries load (typer, and in a run psycopg): they make
# some 100,000 objects and no garbage, and collecting over them took 10-25 ms of every run; restored below
_COLLECTING = gc.isenabled()
gc.disable()

import logging
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

try:  # typer up to 0.2x uses click, later releases carry their own copy
    from click import ClickException
except ImportError:
    from typer._click.exceptions import ClickException

from . import __version__
from .errors import ExitStatus, ServerPKIError, UsageError
from .log import one_line, setup_logging
from .revocation import REVOCATION_REASONS

if TYPE_CHECKING:
    import psycopg

    from .config import Config

log = logging.getLogger("serverpki.operate")

app = typer.Typer(add_completion=True, rich_markup_mode=None, pretty_exceptions_show_locals=False,
                  context_settings={"help_option_names": ["-h", "--help"]})

Flag = bool
Names = Optional[list[str]]


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(f"operate_serverPKI {__version__}")
        raise typer.Exit()


def _selection(all_certs: bool, include: Names, exclude: Names, only: Names,
               skip: Names, limit: Names, no_tlsa: bool) -> dict:
    """The selection's bind parameters: every query that takes a selection (queries.sql) passes them to
    pki.selection(%(sel_all)s, ...), which refuses unknown names (SP024)."""
    return {"sel_all": all_certs, "sel_include": include or [], "sel_exclude": exclude or [], "sel_only": only or [],
            "sel_skip": skip or [], "sel_limit": limit or [], "sel_no_tlsa": no_tlsa}


def _check_names(*lists: Names) -> None:
    """Names from the command line must be text the database can hold (argv may carry undecodable bytes)."""
    for name in (n for names in lists for n in names or ()):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"{name!r} is not valid UTF-8; certificate and disthost names are text") from None


def _load_config(path: Optional[Path]) -> Config:
    """The configuration: -f, else $SERVERPKI_CONFIG, else the usual places, else defaults (serverpki.config)."""
    from .config import load_config

    return load_config(path)


def _check_combination(actions: dict[str, bool], export: Optional[str], check_only: bool, renew: Optional[int],
                       as_json: bool = False, reason: Optional[str] = None) -> None:
    chosen = [name for name, on in actions.items() if on]
    if reason is not None and not actions["--revoke"]:
        raise UsageError("--reason goes with --revoke SERIAL")
    if actions["--revoke"] and (len(chosen) > 1 or export is not None or check_only or renew is not None):
        raise UsageError("--revoke SERIAL may not be combined with other actions")
    if as_json and not check_only:   # the listings are -n's; an action's outcome is its exit status and log
        raise UsageError("--json goes with the listings of -n: -n [-v], -S -n, -r N -n, -D -r N -n")
    if export is not None and (chosen or check_only or renew is not None):
        raise UsageError("-E (export) may not be combined with other actions")
    if actions["-Z"] and len(chosen) > 1:
        raise UsageError("-Z (register) may not be combined with other actions")
    if actions["-X"] and actions["-Y"]:
        raise UsageError("-X (encrypt keys) and -Y (decrypt keys) contradict each other")
    # -r N alone is -C -r N (the original: create unless distributing); with -D it selects what -D sends
    if renew is not None and not check_only and set(chosen) - {"-C", "-D"}:
        raise UsageError("-r REMAINING_DAYS goes with -C, -D or -n, or alone (= -C -r)")


@app.command(help=f"Server PKI {__version__}: issue, renew and distribute certificates and their TLSA records.")
def operate(
    create_certs: Annotated[Flag, typer.Option("-C", "--create-certs", help="Create all selected certs (state issued).")] = False,
    renew_local_certs: Annotated[Optional[int], typer.Option("-r", "--renew-local-certs", metavar="REMAINING_DAYS", min=0, max=3650,
        help="Create (-C) the local certs in state deployed expiring within REMAINING_DAYS; with -D distribute those issued within as many days; with -n list them.")] = None,
    schedule_actions: Annotated[Flag, typer.Option("-S", "--schedule-actions", help="Schedule necessary actions; -C and -D are ignored.")] = False,
    distribute_certs: Annotated[Flag, typer.Option("-D", "--distribute-certs", help="Distribute issued, currently valid certs.")] = False,
    consolidate_certs: Annotated[Flag, typer.Option("-K", "--consolidate-certs", help="Re-distribute deployed certs.")] = False,
    consolidate_tlsas: Annotated[Flag, typer.Option("-T", "--consolidate-TLSAs", help="Publish TLSA RRs of deployed and prepublished certs.")] = False,
    remove_tlsas: Annotated[Flag, typer.Option("-R", "--remove-TLSAs", help="Remove TLSA RRs.")] = False,
    export_cert_and_key: Annotated[Optional[str], typer.Option("-E", "--export-cert-and-key", metavar="CERT_SERIAL",
        help="Write cert-SERIAL-ALGO.pem and key-SERIAL-ALGO.pem (the key in clear, mode 0400) of instance CERT_SERIAL into [paths] work_dir; alone.")] = None,
    all_certs: Annotated[Flag, typer.Option("-a", "--all", help="Include all certs, even disabled ones.")] = False,
    include: Annotated[Names, typer.Option("-i", "--include", metavar="CERT_TO_BE_INCLUDED", help="Include this cert even if disabled; repeatable.")] = None,
    exclude: Annotated[Names, typer.Option("-e", "--exclude", metavar="CERT_TO_BE_EXCLUDED", help="Exclude this cert; repeatable.")] = None,
    only: Annotated[Names, typer.Option("-o", "--only", metavar="ONLY_CERT", help="Only these certs; repeatable.")] = None,
    skip_disthost: Annotated[Names, typer.Option("-s", "--skip-disthost", metavar="SKIP_HOST", help="No distribution to this disthost; repeatable.")] = None,
    limit_to_disthost: Annotated[Names, typer.Option("-l", "--limit-to-disthost", metavar="ONLY_HOST", help="Distribute to these disthosts only; repeatable.")] = None,
    no_tlsa_records: Annotated[Flag, typer.Option("-N", "--no-TLSA-records", help="Do not change TLSA records.")] = False,
    encrypt_keys: Annotated[Flag, typer.Option("-X", "--encrypt-keys", help="Encrypt all keys in the DB.")] = False,
    decrypt_keys: Annotated[Flag, typer.Option("-Y", "--decrypt-keys", help="Decrypt all keys in the DB.")] = False,
    issue_local_cacert: Annotated[Flag, typer.Option("-I", "--issue-local-CAcert", help="Issue a new local CA cert.")] = False,
    register: Annotated[Flag, typer.Option("-Z", "--register", help="Register an ACME account; alone.")] = False,
    revoke: Annotated[Optional[int], typer.Option("--revoke", metavar="SERIAL", min=1, max=2**31 - 1,
        help="Revoke instance SERIAL (at the ACME CA, or on the local CA's CRL) and withdraw its TLSA records; "
             "the active instance is replaced in the same run (keyCompromise: without the DANE wait); alone.")] = None,
    reason: Annotated[Optional[str], typer.Option("--reason", metavar="REASON",
        help="With --revoke: RFC 5280's reason, one of " + ", ".join(REVOCATION_REASONS) + " (default unspecified).")] = None,
    check_only: Annotated[Flag, typer.Option("-n", "--check-only", help="Check the configuration; with -v list certs and instances.")] = False,
    as_json: Annotated[Flag, typer.Option("--json", help="With -n: print the check and its listing as JSON (docs/cli.md), logs on stderr.")] = False,
    debug: Annotated[Flag, typer.Option("-d", "--debug", help="Turn on debugging.")] = False,
    quiet: Annotated[Flag, typer.Option("-q", "--quiet", help="Only log (for cron).")] = False,
    verbose: Annotated[Flag, typer.Option("-v", "--verbose", help="Be more verbose.")] = False,
    config_file: Annotated[Optional[Path], typer.Option("-f", "--config_file", "--config-file", metavar="CONFIG_FILE",
        help="Path of an alternate configuration file.")] = None,
    version: Annotated[Flag, typer.Option("--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    actions = {"-C": create_certs, "-S": schedule_actions, "-D": distribute_certs, "-K": consolidate_certs,
               "-T": consolidate_tlsas, "-R": remove_tlsas, "-X": encrypt_keys, "-Y": decrypt_keys,
               "-I": issue_local_cacert, "-Z": register, "--revoke": revoke is not None}
    try:
        _check_combination(actions, export_cert_and_key, check_only, renew_local_certs, as_json, reason)
        if revoke is not None and (include or exclude or only or skip_disthost or limit_to_disthost or no_tlsa_records):
            # a selection would leave the revocation's own jobs (the CRL's distribution, the replacement) unclaimed
            raise UsageError("--revoke SERIAL takes no selection (-i, -e, -o, -s, -l, -N): its jobs go wherever they must")
        _check_names(include, exclude, only, skip_disthost, limit_to_disthost)
        config = _load_config(config_file)
        setup_logging(config, quiet=quiet, verbose=verbose, debug=debug)
        if schedule_actions:  # operation.txt: with -S, -C and -D are ignored
            actions["-C"] = actions["-D"] = False
        elif renew_local_certs is not None and not actions["-D"]:
            actions["-C"] = True  # -r N alone: create the local certificates deployed and expiring within N days
        # --revoke: its jobs run whether or not the certificate is disabled (and the CA's new CRL goes out)
        sel_params = _selection(all_certs or revoke is not None, include, exclude, only, skip_disthost, limit_to_disthost,
                                no_tlsa_records)
        # the database code (psycopg alone takes 0.15 s to import) only once the options are sound: -h is quick
        from . import migrate, reports
        from .db import connect, refusals_as_errors
        from .queries import q

        with connect(config.database.dsn, autocommit=True) as conn, refusals_as_errors():
            migrate.check_compatible(conn)   # a schema of another release: exit status 3, nothing done
            conn.execute(q("check_selection"), sel_params)  # unknown names stop the run first
            if check_only:
                found = reports.check(conn, sel_params, verbose=verbose and not quiet, only=only or [],
                                      schedule=actions["-S"], remaining=renew_local_certs, distribute=actions["-D"],
                                      for_json=as_json)
                typer.echo(found.json() if as_json else found.text())
                if not found.sound:
                    raise typer.Exit(ExitStatus.CHECK_PROBLEMS)
                return
            if export_cert_and_key is not None:
                if not config.paths.work_dir:
                    raise UsageError("-E needs [paths] work_dir in the configuration file")
                from .export import export_instance   # the keystore and cryptography: for -E only

                for path in export_instance(conn, export_cert_and_key, config.paths.work_dir,
                                            config.paths.db_encryption_key, config.local_ca.passphrase_file):
                    typer.echo(str(path))
                return
            wanted = [name for name in ACTION_ORDER if actions[name]]
            if not wanted:
                raise UsageError("no action given; see operate_serverPKI -h")
            ok = _run(conn, config, wanted, sel_params, renew_local_certs, quiet,
                      {"revoke_serial": revoke, "revoke_reason": reason or "unspecified"})
        if not ok:
            raise typer.Exit(ExitStatus.FAILED)
    except ServerPKIError as exc:   # its exit_code: a bad selection (SP024) is a usage error too, nothing done
        typer.echo(f"operate_serverPKI: {one_line(str(exc))}", err=True)
        raise typer.Exit(exc.exit_code)


# the seed's order: CA, keys, create, distribute, consolidate, TLSA
ACTION_ORDER = ("-I", "-X", "-Y", "-S", "-C", "-D", "-K", "-T", "-R", "-Z", "--revoke")


def _run(conn: psycopg.Connection, config: Config, wanted: list[str], sel_params: dict,
         remaining: Optional[int], quiet: bool, revocation: Optional[dict] = None) -> bool:
    """Each action: its SQL request, then drain. True when every job the run performed succeeded."""
    gc.enable()   # main() turned it off for checking and listing; the agent's drains may run long
    # the agent with its handlers (ACME, SSH, DNS, cryptography): only for runs that act, never for -n or -h
    from psycopg.types.json import Jsonb

    from . import notices
    from .actions import run_action
    from .agent import Agent
    from .queries import q

    # the run acts only on its selection: its drains claim the jobs of the selected certificates and
    # disthosts (and those its requests returned); other due jobs wait for a run that selects them
    agent = Agent(config.database.dsn or "", config, name=config.agent.name,
                  lease=config.agent.lease_seconds, batch=config.agent.batch, selection=sel_params)
    params = {"remaining": remaining, "ca_name": config.local_ca.name, "ca_algo": config.local_ca.key_type,
              "acme_url": config.acme.directory_url, "acme_contact": config.acme.contact_email, **(revocation or {})}
    ok = True
    started = conn.execute(q("db_now")).fetchone()[0]
    outcomes: Counter = Counter()
    try:
        for action in wanted:
            outcome = run_action(conn, agent, action, sel_params, params)
            log.info("%s: %s", action, outcome.stats.summary())
            for error in outcome.stats.errors:
                log.error("%s: %s", action, error)
            ok = ok and outcome.stats.all_succeeded
            outcomes.update(outcome.stats.outcomes)
        for kind, count in agent.unhandled_pending():
            log.warning("%s job(s) of kind %s stay queued: this run does not take them (no handler in this "
                        "release; for notify_alerts, no channel in [alerts])", count, kind)
        # the run's record first: the 'schedule' alert must know that this -S ran before the alerts are told;
        # on the agent's connection, which its drains renewed if the database restarted meanwhile
        agent.conn.execute(q("record_run"), {"agent": agent.name, "actions": wanted, "started": started,
                                       "succeeded": ok, "jobs": Jsonb(dict(outcomes))})
        told = notices.tell(agent)
        if told is not None:
            log.info("alerts: %s", told.summary())
            for error in told.errors:
                log.error("alerts: %s", error)
            ok = ok and told.all_succeeded
    finally:
        agent.close()
    return ok


def main() -> None:
    # a run from the command line: no cyclic collection while it loads the database code and checks or lists
    # (it makes no cycles worth collecting); a run that acts turns it on again (_run)
    gc.disable()
    try:
        status = app(prog_name="operate_serverPKI", standalone_mode=False)
    except ClickException as exc:  # a bad option: one line like our errors, not typer's framed box
        typer.echo(f"operate_serverPKI: {one_line(exc.format_message())} (see operate_serverPKI -h)", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    finally:
        # what the run made stays until the process ends: the interpreter's collection at exit need not walk
        # it (the modules and a listing's rows: 40 ms of CPU of -n -v -a at 5,000 certificates)
        gc.freeze()
    sys.exit(status or 0)


if _COLLECTING:   # whoever imported this module (the tests' CliRunner) collects as before
    gc.enable()

if __name__ == "__main__":
    sys.exit(main())
