"""`serverpki demo` end to end: the lab starts, the whole job runs, time travels through
prepublish and rollover, and everything stops again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_job_and_cleans_up():
    # the lab (lab/) is the checkout's, never installed: on the path as `make demo` puts it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "serverpki.admin", "demo"], capture_output=True, text=True, timeout=600,
                          env=env)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    statuses = re.findall(r"\(exit status (\d+)", out)
    assert statuses and set(statuses) == {"0"}, statuses
    # TLSA records per owner: 2 after the first deployment (rsa + ec), 4 while prepublished, 2 after the rollover,
    # 2 after the emergency rollover;
    # read through the validating resolver (unbound, the zone's key as trust anchor): each time with AD
    counts = [int(n) for n in re.findall(r"_443\._tcp\.www\.demo\.serverpki\.test\.\s+(\d+) TLSA", out)]
    assert counts == [2, 4, 2, 2], counts
    verdicts = re.findall(r"^\S+\s+\d+ TLSA record\(s\), (.*)$", out, re.M)
    assert len(verdicts) >= 4 and set(verdicts) == {"validated (AD)"}, verdicts
    # the last scene: the key compromise of www; one run replaces it on the hosts and in DNS
    said = re.findall(r"emergency rollover of www\.demo\.serverpki\.test: revoked instance (\d+) replaced by "
                      r"successor (\d+).*key compromise: DANE wait skipped$", out, re.M)
    assert len(said) == 1, out[-3000:]
    revoked, successor = said[0]
    scene = out[out.index("the new serial on the hosts and in DNS"):]
    assert scene.startswith(f"the new serial on the hosts and in DNS: instance {successor} (revoked: {revoked})")
    served = re.findall(r"^\S+:/\S+\.pem  instance (\S+) \(X\.509 serial", scene, re.M)
    assert len(served) >= 2 and set(served) == {successor}, served   # web1 and the jail on jailhost
    # the validated records: the successor's, none of those the revoked instance had after the rollover
    def records(block: str) -> set[str]:
        return set(re.findall(r"^    (\d \d \d .+)$", block, re.M))
    revoked_records = records(out.split("after the rollover the TLSA records hold the active instance only")[1].split("\n===")[0])
    assert revoked_records and records(scene) and not records(scene) & revoked_records
    # the history of the ACME certificate: prepublished -> deployed, expired -> archived -> deleted
    assert re.search(r"issued\s+\|\s+prepublished", out) and re.search(r"prepublished\s+\|\s+deployed", out)
    assert re.search(r"expired\s+\|\s+archived", out) and re.search(r"archived\s+\|\s+\|", out)
    assert "jexec mail service postfix reload" in out
    assert out.rstrip().endswith("demo finished; everything it started is stopped")
    # nothing of this demo is left: no process working in its folder, and no folder
    base = re.search(r"the lab lives in (\S+)", out).group(1)
    leftovers = subprocess.run(["pgrep", "-f", base], capture_output=True, text=True).stdout.strip()
    assert leftovers == "", f"processes of the demo still run: {leftovers}"
    assert not Path(base).exists(), f"the demo left {base}"
