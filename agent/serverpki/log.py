"""Logging of the agent and the command lines: the terminal, syslog, and never a private key.

The terminal (stderr) shows INFO and up; -v adds the VERBOSE details, -d
everything; -q leaves only errors there, for cron, which mails what a job
prints. Syslog receives [logging] level and up (lowered by -v and -d) with
[logging] syslog_facility, at [logging] syslog_address; "" there means no
syslog, and a socket that does not exist disables it with one warning.
Other libraries (acme, paramiko, dnspython) log their warnings, with -d their
info as well. Every handler carries PrivateKeyFilter, and so does the
serverpki logger itself.

A drain on a terminal shows a progress bar (rich) on stderr, never with -q;
while it is shown, the terminal's log lines go through the bar's console, so
each appears whole above the bar.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from logging.handlers import SysLogHandler
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # one_line's users (and -h) need no configuration code
    from .config import Config

# between DEBUG and INFO: what -v adds ("INFO with details")
VERBOSE = 15
logging.addLevelName(VERBOSE, "VERBOSE")

LOGGER_NAME = "serverpki"
LEVELS = {"debug": logging.DEBUG, "verbose": VERBOSE, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}

# a PEM private key of any kind (PRIVATE, RSA/EC/DSA/OPENSSH/ENCRYPTED PRIVATE); a cut-off one up to the end
_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S)
REMOVED = "(private key removed)"

if TYPE_CHECKING:   # rich is imported by the bar that is shown (a check-only run, cron, never draw one)
    from rich.console import Console
    from rich.progress import Progress

_show_progress = True
# the console of the progress bar while one is shown: the terminal's log lines go through it
_live_console: Console | None = None


def remove_private_keys(text: str) -> str:
    """text with every PEM private-key block replaced by "(private key removed)"."""
    return _PEM_PRIVATE_KEY.sub(REMOVED, text)


class PrivateKeyFilter(logging.Filter):
    """Replace PEM private-key blocks in a record's message, traceback and stack by a notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as logging does
            return True
        cleaned = remove_private_keys(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = remove_private_keys(record.exc_text)
        if record.stack_info:
            record.stack_info = remove_private_keys(record.stack_info)
        return True


class _Stderr(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is at the moment (test runners replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        console = _live_console
        if console is None:
            return super().emit(record)
        try:   # above the bar, whole: rich clears the bar, writes the line, draws the bar again
            console.out(self.format(record), highlight=False)
        except Exception:
            self.handleError(record)


class _TerminalFormatter(logging.Formatter):
    """Plain messages; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def setup_logging(config: Config, quiet: bool = False, verbose: bool = False, debug: bool = False,
                  program: str = "serverpki") -> logging.Logger:
    """Install the handlers (again: earlier ones of ours are replaced) and return the serverpki logger."""
    global _show_progress
    _show_progress = not quiet
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_serverpki", False)]:
        root.removeHandler(old)
        old.close()

    detail = logging.DEBUG if debug else VERBOSE if verbose else logging.INFO
    terminal_level = logging.ERROR if quiet else detail
    terminal = _Stderr()
    terminal.setLevel(terminal_level)
    terminal.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s") if debug
                          else _TerminalFormatter("%(message)s"))
    handlers: list[logging.Handler] = [terminal]

    settings = config.logging
    syslog_level = min(LEVELS[settings.level], detail)
    syslog, problem = _syslog_handler(settings.syslog_address, settings.syslog_facility, program)
    if syslog is not None:
        syslog.setLevel(syslog_level)
        handlers.append(syslog)

    for handler in handlers:
        handler._serverpki = True  # type: ignore[attr-defined]
        handler.addFilter(PrivateKeyFilter())
        root.addHandler(handler)
    # libraries: their warnings, with -d their info too; ours: as much as any handler takes
    root.setLevel(logging.INFO if debug else logging.WARNING)
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(min(h.level for h in handlers))
    # records of this logger are cleaned before any handler sees them, a test runner's too
    if not any(isinstance(f, PrivateKeyFilter) for f in logger.filters):
        logger.addFilter(PrivateKeyFilter())
    if problem:
        logger.warning("%s; logging to stderr only (set [logging] syslog_address = \"\" in %s to silence this)",
                       problem, config.source or "the configuration")
    return logger


def _syslog_handler(address: str, facility: str, program: str) -> tuple[SysLogHandler | None, str | None]:
    """The syslog handler for address, or (None, why not); "" is no syslog and no complaint."""
    if not address:
        return None, None
    from .config import split_host_port

    if address.startswith("/"):
        if not os.path.exists(address):
            return None, f"syslog disabled: socket {address} does not exist"
        target: str | tuple[str, int] = address
    else:
        target = split_host_port(address, 514)
    try:
        handler = SysLogHandler(address=target, facility=SysLogHandler.facility_names[facility])
    except OSError as exc:
        return None, f"syslog disabled: cannot connect to {address}: {exc.strerror or exc}"
    handler.ident = f"{program}[{os.getpid()}]: "
    # syslog has no "verbose" priority: send it as info
    handler.priority_map = {**SysLogHandler.priority_map, "VERBOSE": "info"}
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    return handler, None


def one_line(text: object) -> str:
    """text on one line, for a log line: control and invisible characters (a name with a newline) shown escaped."""
    text = str(text)
    if text.isprintable():   # nearly always: one C call instead of a look at each character
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def on_terminal() -> bool:
    """Whether a progress bar may show: stderr is a terminal and -q was not given."""
    try:
        return _show_progress and sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


class ProgressBar:
    """A drain's progress bar on stderr, "label ━━━━━ done/total elapsed", while the `with` block runs:
    only for some work (a total above 0), on a terminal and without -q (else `shown` is False and
    nothing is drawn). The total may grow (set_total) as the work turns out to be more; log lines
    appear above the bar."""

    def __init__(self, label: str, total: int):
        self.label = label
        self.shown = total > 0 and on_terminal()
        self._total = total
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> "ProgressBar":
        global _live_console
        if not self.shown:
            return self
        # rich (20 ms to import) only for a bar that is drawn
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        # stdout stays where it is (a pipe gets no bar's output); stray writes to stderr go above the bar
        console = Console(stderr=True)
        self._progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, redirect_stdout=False, redirect_stderr=True)
        self._task = self._progress.add_task(self.label, total=self._total)
        self._progress.start()
        _live_console = console
        return self

    def __exit__(self, *exc) -> None:
        global _live_console
        if self._progress is None:
            return
        _live_console = None
        self._progress.stop()
        self._progress = None

    def set_total(self, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, total=total)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)
