"""What `pip install .` puts on a production host: the package serverpki with its SQL, its man pages,
and only what production runs — no lab (lab/ stays in the checkout), no demo story, no aiosmtpd; and
what an operator installs beside it: contrib/ (systemd units, a cron.d file), shell completion."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from configparser import ConfigParser
from email.parser import Parser
from pathlib import Path

import pytest
import typer.main

from serverpki import admin, manpage, operate


@pytest.fixture(scope="module")
def wheel(repo_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    # a copy of the working tree, so building leaves no build/ or egg-info behind in the checkout
    shutil.copytree(repo_root, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                                  ".pytest_cache", ".hypothesis", "lab-run"))
    out = tmp / "wheels"
    # the test venv is the build environment (no download): setup.py's build step imports the commands
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = out.glob("serverpki-*.whl")
    return built


def test_the_wheel_ships_serverpki_and_its_sql_but_not_the_lab(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        code = {n: z.read(n).decode() for n in names if n.endswith(".py")}
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert packages == {"serverpki"}, packages
    assert "serverpki/db/schema/0001_core.sql" in names
    assert not [n for n in names if "/lab/" in n or n.startswith("lab/")], "the lab is in the wheel"
    # serverpki/demo.py is only the door to the checkout's lab: none of the demo's story
    demo = code["serverpki/demo.py"]
    assert "from lab.demo import" in demo and "class Demo" not in demo
    for name, text in code.items():
        assert "aiosmtpd" not in text, name
        assert not [line for line in text.splitlines() if line.strip().startswith(("import lab", "from lab"))
                    and name != "serverpki/demo.py"], f"{name} imports the lab"


def test_aiosmtpd_is_only_the_lab_extra(wheel):
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(z.read(meta).decode())
    requires = metadata.get_all("Requires-Dist") or []
    smtp = [r for r in requires if r.lower().startswith("aiosmtpd")]
    assert smtp and all('extra == "lab"' in r for r in smtp), requires
    assert "lab" in (metadata.get_all("Provides-Extra") or [])


def test_both_commands_print_their_version_and_take_h_everywhere():
    """--version on both commands; -h as well as --help on every subcommand of serverpki."""
    from typer.testing import CliRunner

    from serverpki import __version__, admin, operate

    runner = CliRunner()
    done = runner.invoke(operate.app, ["--version"])
    assert (done.exit_code, done.output) == (0, f"operate_serverPKI {__version__}\n")
    done = runner.invoke(admin.app, ["--version"])
    assert (done.exit_code, done.output) == (0, f"serverpki {__version__}\n")
    for args in (["-h"], ["db", "-h"], ["db", "init", "-h"], ["db", "upgrade", "-h"], ["db", "status", "-h"],
                 ["agent", "-h"], ["demo", "-h"]):
        done = runner.invoke(admin.app, args)
        assert done.exit_code == 0 and "Usage:" in done.output, (args, done.output)
    assert runner.invoke(operate.app, ["-h"]).exit_code == 0


# ------------------------------------------------------------------ man pages
@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel alone (--no-deps: the pages need no dependency); its bin/."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                           "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv / "bin"


def _man(bin_dir: Path, page: str) -> subprocess.CompletedProcess:
    # man-db finds <venv>/share/man from <venv>/bin on PATH; MANPATH unset, so that lookup is what is tested
    env = {k: v for k, v in os.environ.items() if k not in ("MANPATH", "MANOPT")}
    env.update(PATH=f"{bin_dir}:/usr/bin:/bin", MANWIDTH="200", LANG="C.UTF-8")
    return subprocess.run(["man", "-P", "cat", page], env=env, capture_output=True, text=True, timeout=60)


def _leaf(app: typer.Typer, *path: str):
    """The click command of `prog sub sub` and its context, as --help sees them."""
    command = typer.main.get_command(app)
    ctx = command.make_context(path[0], [], resilient_parsing=True)
    for name in path[1:]:
        command = command.get_command(ctx, name)
        ctx = command.make_context(name, [], parent=ctx, resilient_parsing=True)
    return command, ctx


def _options(app: typer.Typer, *path: str) -> list[str]:
    """Every option string the command's --help lists (-C, --create-certs, ...)."""
    command, ctx = _leaf(app, *path)
    return [opt for p in command.get_params(ctx) if p.get_help_record(ctx) for opt in p.opts + p.secondary_opts]


@pytest.mark.parametrize("page, app, path", [
    ("operate_serverPKI", operate.app, ["operate_serverPKI"]),
    ("serverpki", admin.app, ["serverpki"]),
    ("serverpki-db-status", admin.app, ["serverpki", "db", "status"]),
    ("serverpki-agent", admin.app, ["serverpki", "agent"]),
])
def test_man_finds_the_installed_pages_from_path(installed, page, app, path):
    shown = _man(installed, page)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.startswith(page.upper() + "(1)"), text[:200]
    for option in _options(app, *path):   # every option --help shows, in the page
        assert re.search(rf"(^|[ ,]){re.escape(option)}\b", text, re.M), f"{option} is not in man {page}"
    if len(path) == 1:
        assert "EXIT STATUS" in text and re.search(r"^ +3 +database unreachable or schema incompatible", text, re.M)


def test_a_page_for_every_command_and_subcommand(wheel):
    with zipfile.ZipFile(wheel) as z:
        pages = {Path(n).name for n in z.namelist() if "/share/man/man1/" in n}
    assert pages == set(manpage.pages()), pages
    assert {"operate_serverPKI.1", "serverpki.1", "serverpki-db.1", "serverpki-db-upgrade.1",
            "serverpki-agent.1"} <= pages


def test_roff_escapes_what_would_be_read_as_requests():
    # a help line starting with . or ' would be a roff request; a backslash an escape; - a hyphen
    assert manpage._roff(".dot first\n'quote -x \\n") == "\\&.dot first\n\\&'quote \\-x \\en"


# ------------------------------------------------------------------ contrib: systemd and cron
CONTRIB = Path(__file__).resolve().parents[1] / "contrib"
PREFIX = "/usr/local/venv/serverpki"   # the install prefix contrib/ names (README.md's cron line too)
APPS = {"operate_serverPKI": operate.app, "serverpki": admin.app}


def _parse(argv: list[str]) -> dict:
    """Our parser's verdict on a command line, without running it: the leaf command's parameters
    (a bad option or subcommand raises, as the command would exit 2)."""
    prog = Path(argv[0]).name
    command, name, args, parent = typer.main.get_command(APPS[prog]), prog, argv[1:], None
    while getattr(command, "commands", None):   # a group: then the subcommand (no group options here)
        parent = command.make_context(name, [], parent=parent, resilient_parsing=True)
        name, args = args[0], args[1:]
        command = command.get_command(parent, name)
        assert command is not None, f"{prog}: no subcommand {name!r}"
    return command.make_context(name, list(args), parent=parent).params


def _units() -> dict[str, ConfigParser]:
    units = {}
    for path in sorted((CONTRIB / "systemd").iterdir()):
        unit = ConfigParser(strict=False, interpolation=None, delimiters=("=",))
        unit.optionxform = str
        unit.read(path)
        units[path.name] = unit
    return units


def test_the_units_are_the_agent_and_an_hourly_timer_for_the_cron_run():
    units = _units()
    assert set(units) == {"serverpki-agent.service", "serverpki-operate.service", "serverpki-operate.timer"}
    agent = units["serverpki-agent.service"]["Service"]
    assert agent["Restart"] == "on-failure"
    # a usage error or an incompatible schema is not mended by restarting: no restart loop
    assert set(agent["RestartPreventExitStatus"].split()) == {"2", "3"}
    for name in ("serverpki-agent.service", "serverpki-operate.service"):
        service = units[name]["Service"]
        assert service["User"] == "serverpki" and service["NoNewPrivileges"] == "yes"
        assert service["ProtectSystem"] == "strict" and service["PrivateTmp"] == "yes"
        # the home holding ~/.ssh/known_hosts, the SSH key and ~/.pgpass stays reachable under ProtectHome
        assert service["ProtectHome"] == "yes" and service["StateDirectory"] == "serverpki"
        assert service["Environment"] == "HOME=/var/lib/serverpki"
    assert units["serverpki-operate.service"]["Service"]["Type"] == "oneshot"
    timer = units["serverpki-operate.timer"]["Timer"]
    assert timer["OnCalendar"] == "hourly" and timer["Persistent"] == "true" and timer["RandomizedDelaySec"]


def test_every_command_line_in_contrib_is_accepted_by_our_parsers():
    lines = [unit["Service"]["ExecStart"] for unit in _units().values() if unit.has_section("Service")]
    cron = [line for line in (CONTRIB / "cron.d" / "serverpki").read_text().splitlines()
            if line.strip() and not line.startswith("#") and not re.match(r"^[A-Z_]+=", line)]
    assert len(cron) == 1
    fields = cron[0].split(None, 6)   # /etc/cron.d: five time fields, the user, the command
    minute, hour, dom, month, dow, user, command = fields
    assert 0 <= int(minute) <= 59 and (hour, dom, month, dow) == ("*", "*", "*", "*") and user == "serverpki"
    lines.append(command)
    assert len(lines) == 3
    for line in lines:
        argv = shlex.split(line)
        assert argv[0].startswith(PREFIX + "/bin/"), line
        params = _parse(argv)
        assert params.get("config_file"), f"{line}: no -f, the run would pick a config file by chance"
    # the cron run, parsed as the seed's options: -S -q -a
    cron_run = _parse(shlex.split(command))
    assert cron_run["schedule_actions"] and cron_run["quiet"] and cron_run["all_certs"]
    assert not any(cron_run[k] for k in ("create_certs", "distribute_certs", "check_only", "verbose"))
    with pytest.raises(Exception):
        _parse([f"{PREFIX}/bin/operate_serverPKI", "-S", "--no-such-option"])   # the check can fail


def test_systemd_accepts_the_units(installed, tmp_path):
    """systemd-analyze verify: syntax, every key known, the ExecStart binaries and the man: pages found
    (the units point into the wheel's fresh virtualenv instead of the install prefix)."""
    venv = installed.parent
    for path in (CONTRIB / "systemd").iterdir():
        (tmp_path / path.name).write_text(path.read_text().replace(PREFIX, str(venv)))
    env = {k: v for k, v in os.environ.items() if k != "MANPATH"}
    env["PATH"] = f"{installed}:/usr/bin:/bin"
    done = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, tmp_path.iterdir()))],
                          env=env, capture_output=True, text=True, timeout=120)
    # an unknown key is only a warning on stderr: none is allowed
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true",
                               str(tmp_path / "serverpki-agent.service")], env=env,
                              capture_output=True, text=True, timeout=120)
    level = re.search(r"Overall exposure level for serverpki-agent.service: ([0-9.]+)", security.stdout)
    assert level and float(level[1]) <= 2.0, security.stdout[-2000:]


# ------------------------------------------------------------------ shell completion
def _cli(prog: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run a command as its console script would (the name in argv[0] picks the completion variable)."""
    main = {"operate_serverPKI": "serverpki.operate", "serverpki": "serverpki.admin"}[prog]
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.argv[0] = {prog!r}; from {main} import main; main()",
                           *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def _complete(prog: str, words: str, cword: int) -> list[str]:
    """Ask a command for its bash completions, as the shell script of --show-completion does."""
    env = {f"_{prog.upper()}_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    return _cli(prog, [], env).stdout.split()


def test_both_commands_complete_options_and_subcommands():
    assert _complete("operate_serverPKI", "operate_serverPKI --sch", 1) == ["--schedule-actions"]
    assert set(_complete("operate_serverPKI", "operate_serverPKI --con", 1)) == {
        "--consolidate-certs", "--consolidate-TLSAs", "--config_file", "--config-file"}
    assert _complete("serverpki", "serverpki db u", 2) == ["upgrade"]
    assert set(_complete("serverpki", "serverpki ", 1)) >= {"agent", "db", "demo"}


def test_completion_adds_two_long_options_and_takes_no_seed_option():
    command, ctx = _leaf(operate.app, "operate_serverPKI")
    opts = [o for p in command.get_params(ctx) for o in p.opts + p.secondary_opts]
    assert len(opts) == len(set(opts))
    completion = [o for o in opts if "completion" in o]
    assert sorted(completion) == ["--install-completion", "--show-completion"]
    # the seed's short options are all still there, one letter each, and -h
    shorts = {o for o in opts if re.fullmatch(r"-[A-Za-z]", o)}
    assert shorts == set("-" + c for c in "CrSDKTREaieoslNXYIZndqvfh")


# ------------------------------------------------------------------ --help in 80 columns (the typer pin)
@pytest.mark.parametrize("prog, args", [("operate_serverPKI", []), ("serverpki", []), ("serverpki", ["agent"]),
                                        ("serverpki", ["db", "status"])])
def test_help_renders_whole_in_80_columns(prog, args):
    """Every option with its whole help text: no line cut, no name shortened with …, no [section] of the
    text taken for markup, no type shown as Python (<list[str]>, <bool>). typer's rich help did all four."""
    text = _cli(prog, [*args, "-h"], {"COLUMNS": "80"}).stdout
    assert max(map(len, text.splitlines())) <= 80 and "…" not in text and "│" not in text
    assert not re.search(r"<(bool|list\[)", text), text
    words = "".join(text.split())   # wrapped lines (at spaces, or after a hyphen) joined again
    command, ctx = _leaf(APPS[prog], prog, *args)
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record:
            assert "".join(record[0].split()) in words, record[0]
            assert "".join(record[1].split()) in words, record[1]
    if prog == "operate_serverPKI":
        # what rich made of them: "into work_dir; alone." and "--config_file,--confi…"
        assert "into[paths]work_dir;alone." in words and "-f,--config_file,--config-fileCONFIG_FILE" in words
