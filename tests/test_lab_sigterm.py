"""A process starting the lab and ended by SIGTERM at any moment leaves nothing behind: no
postgres, named, pebble or sshd of it runs on, and no folder it made remains (lab.process).

Each case runs a real starter — `serverpki demo` or the bench `bench/concurrent_agents.py`
(tests/fleet.py's Fleet) — with TMPDIR and SERVERPKI_LAB_DIR pointing at folders of the
case's own, sends SIGTERM at one moment of its start-up (after a delay, or right after the
lab reported a peer up) and waits for it to end. Then no process may have its command line
or working folder in those folders, and both must be empty."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lab.sshd import BASE as SSH_LAB_BASE
from helpers import need_root

ROOT = Path(__file__).resolve().parents[1]

STARTERS = {
    "demo": [sys.executable, "-m", "serverpki.admin", "demo"],
    "bench": [sys.executable, str(ROOT / "bench" / "concurrent_agents.py"), "1", "1", "1", "phased"],
}
# a moment: seconds after the start, or the first line of the lab's start-up report that begins so
MOMENTS = [0.3, 1.5, "PostgreSQL 15", "BIND 9 on", "unbound on", "Pebble (ACME)", "web1.", "SMTP relay"]
CASES = [("demo", m) for m in MOMENTS] + [("bench", m) for m in (1.0, "BIND 9 on", "SMTP relay")]


def processes_in(*folders: Path) -> dict[int, str]:
    """The processes whose command line or working folder lies in one of the folders: pid -> what it is."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if any(str(f) in cmdline or cwd == str(f) or cwd.startswith(f"{f}/") for f in folders):
            found[int(entry.name)] = f"{cmdline.strip()[:160]} (in {cwd})"
    return found


@pytest.fixture
def private_dirs():
    tmp = Path(tempfile.mkdtemp(prefix="serverpki-sigterm-"))
    tmp.chmod(0o755)  # the postgres and bind users reach their folders below it
    SSH_LAB_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    ssh = Path(tempfile.mkdtemp(prefix="sigterm-", dir=SSH_LAB_BASE))  # root-owned: sshd's ChrootDirectory
    ssh.chmod(0o755)
    yield tmp, ssh
    for pid in processes_in(tmp, ssh):   # what a failed case left, so that it does not outlive the test
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(ssh, ignore_errors=True)


@pytest.mark.parametrize(("starter", "moment"), CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_sigterm_during_start_up_leaves_no_process_and_no_folder(starter, moment, private_dirs):
    need_root("the lab's sshd needs it")
    tmp, ssh = private_dirs
    env = {**os.environ, "TMPDIR": str(tmp), "SERVERPKI_LAB_DIR": str(ssh), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(STARTERS[starter], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen = []
    try:
        if isinstance(moment, float):
            time.sleep(moment)
        else:
            for line in proc.stdout:
                seen.append(line)
                if line.startswith(moment):
                    break
            else:
                pytest.fail(f"{starter} ended before reporting {moment!r}: {''.join(seen)[-3000:]}")
            running = processes_in(tmp, ssh)
            assert running, f"nothing of the lab runs after {moment!r}: the case would prove nothing"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(seen) + (rest or "")
    assert proc.returncode != 0, f"{starter} was not stopped by SIGTERM: {output[-3000:]}"
    deadline = time.monotonic() + 5   # a stopped daemon's last children may take a moment to exit
    while (left := processes_in(tmp, ssh)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == {}, (f"processes left after SIGTERM at {moment!r}:\n"
                        + "\n".join(f"{pid}: {what}" for pid, what in left.items()) + "\n" + output[-3000:])
    remains = sorted(str(p) for p in [*tmp.iterdir(), *ssh.iterdir()])
    assert remains == [], f"folders left after SIGTERM at {moment!r}: {remains}\n{output[-3000:]}"
