"""One SSH connection to a disthost: strict host keys, SFTP with atomic private writes, commands with a timeout.

The [ssh] configuration says how: host keys are checked against `known_hosts`
(paramiko's RejectPolicy: an unknown or changed key refuses the host, naming the
key offered); an OpenSSH client config (`config_file`) may give a disthost's FQDN
another HostName, Port, User and IdentityFile; `user` and `identity_file` are the
defaults; `connect_timeout_seconds` and `command_timeout_seconds` bound the waits.

Faults are sorted for the job queue: HostUnreachable and SessionFailed (network,
host down, a step on the host failed, broken session: RetryLater), HostRefused and
PathEscape (host key, authentication, configuration, a path out of its jail:
GiveUp). A Connection used as a context manager turns what its session raises
(OSError, SFTP and SSH errors) into SessionFailed as the block ends.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import posixpath
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_WRITE
from paramiko.sftp_attr import SFTPAttributes
from paramiko.sftp_file import SFTPFile

from .errors import GiveUp, RetryLater, ServerPKIError, clean_text
from .faults import crash_point

# output of a command kept in a job's result, from its end
OUTPUT_LIMIT = 4000

_opened_lock = threading.Lock()
_opened_total = 0


def connections_opened() -> int:
    """How many SSH connections this process has opened (the benchmark counts them)."""
    return _opened_total


def _count_connection() -> None:
    global _opened_total
    with _opened_lock:
        _opened_total += 1


class SSHError(ServerPKIError):
    """SSH to a disthost failed."""


class HostUnreachable(SSHError, RetryLater):
    """The disthost cannot be reached now (network, host down, connection lost): try again later."""


class SessionFailed(SSHError, RetryLater):
    """A step on the disthost failed (an SFTP status, a timeout) or the session broke off: the host may mend."""


class HostRefused(SSHError, GiveUp):
    """The disthost is refused or refuses us (host key, authentication, configuration): no retry mends it."""


class PathEscape(SSHError, GiveUp):
    """A path on the host resolves outside the root it must stay in (a symbolic link points out of a jail)."""


# what a session raises when a step on the host fails or the connection breaks
_SESSION_FAULTS = (OSError, paramiko.SSHException, paramiko.SFTPError, EOFError)


def within(path: str, root: str) -> bool:
    """Whether the (resolved) path is root or below it."""
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


class HostKeyUnknown(HostRefused):
    """The host offered a key that known_hosts does not have."""


class HostKeyChanged(HostRefused):
    """The host offered another key than known_hosts has for it."""


def fingerprint(key: paramiko.PKey) -> str:
    """SHA256:... as OpenSSH shows it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def describe_key(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {fingerprint(key)}"


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom a disthost is reached, after the OpenSSH client config is applied."""

    fqdn: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]

    @property
    def known_hosts_name(self) -> str:
        """The name known_hosts files it under: host keys are looked up by HostName, not by the alias."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def __str__(self) -> str:
        via = "" if self.hostname == self.fqdn and self.port == 22 else f" ({self.hostname}:{self.port})"
        return f"{self.user}@{self.fqdn}{via}"


def endpoint(fqdn: str, ssh: Any) -> Endpoint:
    """HostName, Port, User and IdentityFile for fqdn from [ssh] config_file, else the [ssh] defaults."""
    found: dict[str, Any] = {}
    if ssh.config_file is not None:
        path = Path(ssh.config_file).expanduser()
        try:
            found = paramiko.SSHConfig.from_path(str(path)).lookup(fqdn)
        except FileNotFoundError:
            raise HostRefused(f"[ssh] config_file {path} does not exist") from None
        except (OSError, paramiko.ConfigParseError) as exc:
            raise HostRefused(f"[ssh] config_file {path} cannot be read: {exc}") from None
    port_text = str(found.get("port", "22"))  # SSHConfig gives the port as a string
    try:
        port = int(port_text)
    except ValueError:
        raise HostRefused(f"[ssh] config_file: Port {port_text!r} of Host {fqdn} is not a number") from None
    # IdentityFile may repeat: SSHConfig gives a list; the configured default comes after
    identities = [os.path.expanduser(p) for p in found.get("identityfile", [])]
    if ssh.identity_file is not None:
        identities.append(str(Path(ssh.identity_file).expanduser()))
    return Endpoint(fqdn, found.get("hostname", fqdn), port, found.get("user", ssh.user),
                    tuple(dict.fromkeys(identities)))


class _RefuseUnknown(paramiko.RejectPolicy):
    """RejectPolicy that says which key was offered."""

    def __init__(self, where: Endpoint, known_hosts: Path):
        self.where, self.known_hosts = where, known_hosts

    def missing_host_key(self, client, hostname, key):
        raise HostKeyUnknown(
            f"host key of {self.where.fqdn} is unknown: {self.where.known_hosts_name} offered {describe_key(key)}, "
            f"which is not in {self.known_hosts}; check the fingerprint with the host's admin, then add it "
            f"(ssh-keyscan -p {self.where.port} {self.where.hostname} >> {self.known_hosts})")


@dataclass
class RemoteFile:
    """One file to put on a host: its path, content, final mode and owner (None: leave as created)."""

    path: str
    content: bytes
    mode: int
    uid: int | None = None
    gid: int | None = None
    private: bool = False  # holds a private key

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass
class CommandResult:
    command: str
    exit: int | None  # None: it timed out
    output: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"command": self.command, "exit": self.exit, "output": self.output,
                               "seconds": round(self.seconds, 3)}
        if self.exit is None:
            out["timed_out"] = True
        return out


@dataclass
class Connection:
    """An open SSH connection with its SFTP session; use as a context manager (see connect())."""

    where: Endpoint
    client: paramiko.SSHClient
    command_timeout: float
    _sftp: paramiko.SFTPClient | None = field(default=None, repr=False)
    _dirs: set[str] = field(default_factory=set, repr=False)
    _roots: dict[str, str] = field(default_factory=dict, repr=False)   # jail root -> resolved

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
            # every SFTP request waits for its answer at most the command timeout: a host that falls
            # silent fails the job (TimeoutError), it does not hold the agent (paramiko waits forever)
            self._sftp.get_channel().settimeout(self.command_timeout)
        return self._sftp

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except _SESSION_FAULTS as fault:
            raise self._failed(fault) from None
        if isinstance(exc, _SESSION_FAULTS):
            raise self._failed(exc) from None

    def _failed(self, exc: BaseException) -> SessionFailed:
        """A fault of the session in words, for the job's error."""
        if isinstance(exc, OSError):   # SFTP status errors and a broken socket alike
            return SessionFailed(f"{self.where.fqdn}: {exc.strerror or exc}")
        return SessionFailed(f"{self.where.fqdn}: the SSH session broke off: {type(exc).__name__}: {exc}")

    # -- files

    def lstat(self, path: str) -> paramiko.SFTPAttributes | None:
        try:
            return self.sftp.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def read(self, path: str, limit: int | None = None) -> bytes:
        """The file's content; with a limit at most limit + 1 bytes (enough to tell that it is longer),
        so that a huge file put in place of ours is not read whole."""
        if limit is None:
            with self.sftp.open(path, "rb") as f:
                return f.read()
        # unbuffered: paramiko asks the server for no more than is still wanted
        with self.sftp.open(path, "rb", bufsize=0) as f:
            return f.read(limit + 1)

    def sha256(self, path: str, limit: int | None = None) -> str:
        return hashlib.sha256(self.read(path, limit)).hexdigest()

    def resolve(self, path: str) -> str:
        """Where the path is on the host, symbolic links resolved by the server (SFTP realpath); missing
        trailing components (directories still to be made) are appended to their deepest existing ancestor."""
        path = posixpath.normpath(path)
        missing: list[str] = []
        probe = path
        while probe != "/" and self.lstat(probe) is None:
            missing.append(posixpath.basename(probe))
            probe = posixpath.dirname(probe)
        try:
            base = self.sftp.normalize(probe)
        except OSError as exc:   # a dangling link whose target's parent is missing too
            raise OSError(exc.errno, f"{probe} cannot be resolved on the host ({exc.strerror or exc}), "
                                     f"so {path} cannot be checked; is it a dangling symbolic link?") from None
        return posixpath.join(base, *reversed(missing))

    def resolve_inside(self, path: str, root: str) -> str:
        """The path resolved on the host (resolve()); PathEscape when that leaves root, resolved as well
        (the root itself may be a link, e.g. a jailroot on another file system)."""
        if root not in self._roots:
            self._roots[root] = self.resolve(root)
        real_root, real = self._roots[root], self.resolve(path)
        if not within(real, real_root):
            shown = root if real_root == root else f"{root} (on the host {real_root})"
            raise PathEscape(
                f"{self.where.fqdn}: refused to write to {path}: it resolves to {real}, outside the jail root "
                f"{shown}; a symbolic link in the jail points out of it: have the jail's owner remove it or point "
                f"it inside the jail, or give the place a path that has no such link")
        return real

    def readlink(self, path: str) -> str | None:
        try:
            return self.sftp.readlink(path)
        except OSError:
            return None

    def makedirs(self, directory: str) -> list[str]:
        """Create the directory and its missing parents (mode 0755); returns those created.

        A component that exists but is no directory, or that cannot be created, is named in the error.
        """
        directory = posixpath.normpath(directory)
        if directory in self._dirs or directory == "/":
            return []
        missing: list[str] = []
        probe = directory
        while probe != "/":
            attrs = self.lstat(probe)
            if attrs is not None:
                if not stat.S_ISDIR(attrs.st_mode or 0) and not stat.S_ISLNK(attrs.st_mode or 0):
                    raise OSError(errno.ENOTDIR, f"{probe} is not a directory, so {directory} cannot be made")
                break
            missing.append(probe)
            probe = posixpath.dirname(probe)
        made: list[str] = []
        for path in reversed(missing):
            try:
                self.sftp.mkdir(path, 0o755)
            except OSError as exc:
                # another agent's job to this host made it meanwhile (SFTP says only "Failure")
                attrs = self.lstat(path)
                if attrs is not None and stat.S_ISDIR(attrs.st_mode or 0):
                    continue
                parent = posixpath.dirname(path)
                raise OSError(exc.errno, f"cannot create {path} (to make {directory}): {exc.strerror or exc}; "
                                         f"is the parent {parent} there and writable?") from None
            made.append(path)
        self._dirs.add(directory)
        return made

    def _create_private(self, path: str) -> SFTPFile:
        """Open a new file (it must not exist) that is created with mode 0600: never readable by others."""
        # SFTPClient.open() sends no attributes, so the server's umask decides the mode; ask for 0600 at creation
        attrs = SFTPAttributes()
        attrs.st_mode = 0o600
        flags = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL
        sftp = self.sftp
        t, msg = sftp._request(CMD_OPEN, path, flags, attrs)
        if t != CMD_HANDLE:
            raise paramiko.SFTPError(f"expected a handle opening {path}")
        return SFTPFile(sftp, msg.get_binary(), "wb", -1)

    def _fsync(self, handle: SFTPFile) -> None:
        # the data on disk before the rename makes it visible (OpenSSH's fsync@openssh.com); optional
        try:
            self.sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle.handle)
        except OSError:
            pass

    @staticmethod
    def temp_name(path: str, tag: str | None) -> str:
        """Where a file is written before its rename. A job's tag makes the name its own: a retry
        after a crash replaces what the crashed attempt left, and two jobs never share one."""
        directory, name = posixpath.split(path)
        return posixpath.join(directory, f".{name}.serverpki-{tag or secrets.token_hex(6)}.tmp")

    def _remove_stale(self, temp: str) -> None:
        try:
            self.sftp.remove(temp)
        except FileNotFoundError:
            pass

    def _discard(self, temp: str) -> None:
        """Remove a temporary file after a failure, if the connection still allows it (else a
        retry of the job, whose temporary names are its own, replaces it)."""
        try:
            self.sftp.remove(temp)
        except (OSError, paramiko.SSHException, EOFError):
            pass

    def put_atomic(self, f: RemoteFile, tag: str | None = None) -> None:
        """Write the file under a temporary name in its directory (created 0600), flush it, give it
        its mode and owner, then rename it over the old one: a reader sees the old or the new file."""
        temp = self.temp_name(f.path, tag)
        if tag:
            self._remove_stale(temp)
        try:
            handle = self._create_private(temp)
            try:
                handle.set_pipelined(True)
                handle.write(f.content)
                handle.flush()
                self._fsync(handle)
                if f.uid is not None or f.gid is not None:
                    current = handle.stat()
                    handle.chown(current.st_uid if f.uid is None else f.uid,
                                 current.st_gid if f.gid is None else f.gid)
                handle.chmod(f.mode)
            finally:
                handle.close()
            crash_point("distribute.temp_written")
            self.sftp.posix_rename(temp, f.path)
        except BaseException:
            self._discard(temp)
            raise

    def symlink_atomic(self, target: str, path: str, tag: str | None = None) -> None:
        """Make path a symbolic link to target, replacing what is there in one rename."""
        temp = self.temp_name(path, tag)
        if tag:
            self._remove_stale(temp)
        # paramiko sends (target, link); OpenSSH's server takes them in this order too
        self.sftp.symlink(target, temp)
        try:
            self.sftp.posix_rename(temp, path)
        except BaseException:
            self._discard(temp)
            raise

    # -- commands

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        """Run a command on the host (stderr merged into stdout); exit None when it outlived the timeout."""
        timeout = self.command_timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise HostUnreachable(f"{self.where}: the connection is gone")
        chan = transport.open_session(timeout=timeout)
        try:
            chan.set_combine_stderr(True)
            chan.exec_command(command)
            output = bytearray()
            timed_out = False
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                chan.settimeout(min(remaining, 1.0))
                try:
                    data = chan.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                output += data
                if len(output) > 4 * OUTPUT_LIMIT:
                    del output[:len(output) - 2 * OUTPUT_LIMIT]
            status = None
            if not timed_out:
                while not chan.exit_status_ready():
                    if time.monotonic() >= deadline:
                        timed_out = True
                        break
                    time.sleep(0.01)
                if not timed_out:
                    status = chan.recv_exit_status()
        finally:
            chan.close()
        # the host's output goes into the job's result and error: readable, no NUL or control characters
        text = clean_text(bytes(output), limit=None)
        if len(text) > OUTPUT_LIMIT:
            text = "..." + text[-OUTPUT_LIMIT:]
        if timed_out:
            text += f"{'' if not text or text.endswith(chr(10)) else chr(10)}(timed out after {timeout:g} s)"
        return CommandResult(command, status, text, time.monotonic() - started)


def connect(fqdn: str, ssh: Any) -> Connection:
    """Open one SSH connection to the disthost, its host key checked against [ssh] known_hosts."""
    where = endpoint(fqdn, ssh)
    known_hosts = Path(ssh.known_hosts).expanduser()
    if not known_hosts.is_file():
        raise HostRefused(f"[ssh] known_hosts {known_hosts} does not exist: without it no host key can be checked")
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        raise HostRefused(f"[ssh] known_hosts {known_hosts} cannot be read: {exc}") from None
    client.set_missing_host_key_policy(_RefuseUnknown(where, known_hosts))
    timeout = ssh.connect_timeout_seconds
    try:
        client.connect(where.hostname, port=where.port, username=where.user,
                       key_filename=list(where.identity_files) or None,
                       look_for_keys=not where.identity_files, allow_agent=not where.identity_files,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, channel_timeout=timeout)
    except HostRefused:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyChanged(
            f"host key of {fqdn} has changed: {where.known_hosts_name} offered {describe_key(exc.key)}, "
            f"but {known_hosts} has {describe_key(exc.expected_key)}; if the host was reinstalled, replace its "
            f"line in {known_hosts} after checking the new fingerprint") from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise HostRefused(f"{where}: authentication refused ({exc}); identity files: "
                          f"{', '.join(where.identity_files) or 'the default keys'}") from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        # refused, timed out, unreachable, banner or key exchange broken off
        client.close()
        raise HostUnreachable(f"{where}: cannot connect: {_why_not(exc)}") from None
    except Exception:
        client.close()
        raise
    _count_connection()
    _limit_silence(client, float(ssh.command_timeout_seconds))
    return Connection(where, client, float(ssh.command_timeout_seconds))


def _why_not(exc: BaseException) -> str:
    """Why a connection failed, in words: paramiko's NoValidConnectionsError says "[Errno None] Unable to
    connect" and keeps the socket errors (refused, unreachable) per address apart."""
    errors = getattr(exc, "errors", None)
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError) and errors:
        return "; ".join(sorted({f"{type(e).__name__}: {e.strerror or e}" for e in errors.values()}))
    return f"{type(exc).__name__}: {exc}"


def _limit_silence(client: paramiko.SSHClient, seconds: float) -> None:
    """What we send that the host does not acknowledge within `seconds` breaks the connection
    (TCP_USER_TIMEOUT, Linux): a host cut off in mid-session ends paramiko's waits that have no
    timeout of their own (opening a channel, starting a command) instead of leaving them to
    TCP's retransmissions, which give up after about 15 minutes."""
    transport = client.get_transport()
    sock = getattr(transport, "sock", None)
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None or not hasattr(sock, "setsockopt"):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
    except OSError:  # not a TCP socket (a ProxyCommand): the SFTP timeout still applies
        pass
