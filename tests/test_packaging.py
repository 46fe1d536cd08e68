"""What `pip install .` puts on a production host: the package serverpki with its SQL, and only
what production runs — no lab (lab/ stays in the checkout), no demo story, no aiosmtpd."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest


@pytest.fixture(scope="module")
def wheel(repo_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    # a copy of the working tree, so building leaves no build/ or egg-info behind in the checkout
    shutil.copytree(repo_root, source, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                                  ".pytest_cache", ".hypothesis", "lab-run"))
    out = tmp / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    (built,) = out.glob("serverpki-*.whl")
    return built


def test_the_wheel_ships_serverpki_and_its_sql_but_not_the_lab(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        code = {n: z.read(n).decode() for n in names if n.endswith(".py")}
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
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
