"""What the lab's daemon wrappers share: stopping a process politely, and the
close/with-statement life of a service that may own its folder."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path


def terminate(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not gone within timeout; closes its stderr pipe."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


class LabService:
    """A daemon of the lab: start() and stop() are the subclass's; close() also removes
    the folder when the service made it itself (base was not given)."""

    base: Path
    _own_base: bool

    def close(self) -> None:
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
