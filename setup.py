"""The one build step pyproject.toml cannot declare: the man pages, written from the commands' own --help
(serverpki.manpage) at build time and installed to share/man/man1, where man finds them from PATH."""

import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build

HERE = Path(__file__).resolve().parent


class build_man(Command):
    """Run serverpki.manpage on the source tree into build/man, and hand the pages to install_data."""

    description = "write the man pages from the commands' --help"
    user_options = []

    def initialize_options(self):
        self.build_base = None

    def finalize_options(self):
        self.set_undefined_options("build", ("build_base", "build_base"))

    def run(self):
        out = Path(self.build_base).resolve() / "man"
        # the source tree goes onto sys.path inside the child: pip's isolated build environment (pip 26)
        # rebuilds sys.path at start-up from its own site folder, so a PYTHONPATH entry would be dropped
        code = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
                "runpy.run_module('serverpki.manpage', run_name='__main__', alter_sys=True)")
        done = subprocess.run([sys.executable, "-c", code, str(HERE / "agent"), str(out)],
                              capture_output=True, text=True, cwd=HERE)
        if done.returncode:
            raise SystemExit(f"writing the man pages failed:\n{done.stderr}")
        self.distribution.data_files = [("share/man/man1", sorted(done.stdout.splitlines()))]


build.sub_commands.append(("build_man", None))

# The pages come from importing the commands, so building needs what importing them needs: the
# project's own dependencies (setup_requires, read from pyproject.toml: no second list to keep in step).
dependencies = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]["dependencies"]

setup(cmdclass={"build_man": build_man}, setup_requires=dependencies)
