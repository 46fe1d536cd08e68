"""What the lab's daemon wrappers share: stopping a process politely, the
close/with-statement life of a service that may own its folder, and stopping
everything the lab started when the process gets SIGTERM, whenever it comes.

SIGTERM: the first `starting()` block installs a handler (in the main thread, when
SIGTERM still has its default action) that raises KeyboardInterrupt, so with blocks
and finally clauses stop what they started. Inside `starting()` — a temporary folder
made, a daemon spawned, an initdb — the signal waits until the block is over, so a
peer is always registered (`on_exit`) before the signal can end the process; once
stopping has begun, further SIGTERMs are ignored so the cleanup finishes. Whatever is
still registered when the interpreter exits is cleaned up then (atexit), newest first.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_cleanups: dict[object, Callable[[], None]] = {}
_depth = 0            # starting() blocks open in the main thread
_pending = False      # a SIGTERM came inside one
_terminating = False  # the KeyboardInterrupt of a SIGTERM was raised: stopping is under way


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would raise KeyboardInterrupt."""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _stop_now() -> None:
    global _terminating
    _terminating = True
    raise Terminated("SIGTERM")


def _on_sigterm(signum, frame) -> None:
    global _pending
    if _terminating:
        return
    if _depth:
        _pending = True
        return
    _stop_now()


def handle_sigterm() -> None:
    """From now on SIGTERM stops the lab as Ctrl-C does (see the module); a handler someone else set stays."""
    if _main_thread() and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextmanager
def starting() -> Iterator[None]:
    """Start something and register it (on_exit) inside: a SIGTERM meanwhile takes effect at the end."""
    global _depth, _pending
    if not _main_thread():
        yield
        return
    handle_sigterm()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending and not _terminating:
            _pending = False
            _stop_now()


def _key(key: object) -> object:
    return key if isinstance(key, (str, tuple)) else id(key)   # services need not be hashable


def on_exit(key: object, cleanup: Callable[[], None]) -> None:
    """Run cleanup at interpreter exit unless done(key) came first (one entry per key)."""
    _cleanups.pop(_key(key), None)
    _cleanups[_key(key)] = cleanup


def done(key: object) -> None:
    _cleanups.pop(_key(key), None)


def keep_running() -> None:
    """Leave what the lab started running after this process exits (`serverpki demo --keep`)."""
    _cleanups.clear()


@atexit.register
def _clean_up() -> None:
    global _terminating
    _terminating = True  # a SIGTERM now must not cut the cleanup short
    while _cleanups:
        _key, cleanup = _cleanups.popitem()
        try:
            cleanup()
        except Exception:
            pass


def temp_dir(prefix: str, mode: int = 0o700, parent: Path | None = None) -> Path:
    """mkdtemp, removed at exit unless remove_dir() came first (also when SIGTERM ends the process)."""
    with starting():
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        on_exit(("dir", str(path)), lambda: shutil.rmtree(path, ignore_errors=True))
    if mode != 0o700:
        os.chmod(path, mode)
    return path


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    done(("dir", str(path)))


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


def await_ready(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float, name: str,
                not_ready: str, log: Path) -> None:
    """Poll ready() at a growing interval until it holds; RuntimeError when proc exits first (with its
    stderr) or after timeout ("NAME NOT_READY within T s"). The caller stops what it started."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise RuntimeError(f"{name} exited at start: {err or 'see ' + str(log)}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} {not_ready} within {timeout} s (see {log})")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class LabService:
    """A daemon of the lab: start() and stop() are the subclass's; close() also removes
    the folder when the service made it itself (base was not given)."""

    base: Path
    _own_base: bool

    def close(self) -> None:
        self.stop()
        if self._own_base:
            remove_dir(self.base)
        done(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
