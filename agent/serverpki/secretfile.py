"""Files that hold a secret: passphrase files, the TSIG key file, the mail password
file, and the configuration file when it holds a password or an EAB HMAC key.

Such a file must be a regular file (not a symbolic link, which could be turned to
another file), owned by the user serverPKI runs as, and closed to group and others.
It is opened with O_NOFOLLOW and checked with fstat on the opened descriptor, so
what is checked is what is read. A refusal names the file and the command that
fixes it; it never shows the content.
"""

from __future__ import annotations

import errno
import os
import pwd
import shlex
import stat
from pathlib import Path

from .errors import ServerPKIError

_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us


class SecretFileError(ServerPKIError):
    """A file holding a secret is not private to the user serverPKI runs as."""


def read_secret(path: str | os.PathLike, what: str) -> bytes:
    """The content of the secret file at path; SecretFileError when it is missing or not private.

    what names the file in messages, e.g. "[dns] tsig_key_file".
    """
    data, problem = _read(Path(path), what, follow=False)
    if problem:
        raise SecretFileError(problem)
    return data


def read_inspected(path: str | os.PathLike, what: str) -> tuple[bytes, str | None]:
    """The content of the file at path and why it is not private (None when it is).

    For a file that holds a secret only sometimes (the configuration): a symbolic
    link is followed here, and reported as the problem.
    """
    return _read(Path(path), what, follow=True)


def _read(path: Path, what: str, follow: bool) -> tuple[bytes, str | None]:
    link = False
    try:
        fd = os.open(path, _FLAGS | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.ELOOP or not path.is_symlink():
            raise SecretFileError(f"cannot read {what} {path}: {exc.strerror}") from None
        if not follow:
            return b"", _link_problem(path, what)
        link = True
        try:
            fd = os.open(path, _FLAGS)
        except OSError as exc2:
            raise SecretFileError(f"cannot read {what} {path}: {exc2.strerror}") from None
    try:
        st = os.fstat(fd)
        problem = _link_problem(path, what) if link else not_private(st, path, what)
        if not follow and not stat.S_ISREG(st.st_mode):
            return b"", problem  # a secret is not read from a device or a pipe; a configuration may be (-f /dev/stdin)
        os.set_blocking(fd, True)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks), problem
    except OSError as exc:
        raise SecretFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def not_private(st: os.stat_result, path: Path, what: str) -> str | None:
    """Why a file with these attributes cannot hold a secret, with the fix; None when it can."""
    quoted = shlex.quote(str(path))
    if not stat.S_ISREG(st.st_mode):
        return f"{what} {path} is not a regular file: make it a file that only {_me()} can read"
    if st.st_uid != os.geteuid():
        return f"{what} {path} belongs to {_user(st.st_uid)}, not to {_me()} who runs serverPKI: chown {_me()} {quoted}"
    if st.st_mode & 0o077:
        return (f"{what} {path} is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}), "
                f"so the secret in it is not: chmod 600 {quoted}")
    return None


def _link_problem(path: Path, what: str) -> str:
    return (f"{what} {path} is a symbolic link, which could be turned to another file: "
            f"name the file itself (realpath {shlex.quote(str(path))}) instead")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _me() -> str:
    return _user(os.geteuid())
