"""Real OpenSSH servers as disthosts: one sshd per host on 127.0.0.2, 127.0.0.3, ...

Each host is `/usr/sbin/sshd -D -e -f CONF` with its own ed25519 host key, port and
root folder; the lab writes the client side too: one client key (authorized on every
host), a known_hosts file and an OpenSSH client config with a Host alias per FQDN.

Several sshd share one filesystem, so each host's "/" is its own folder through sshd's
`ChrootDirectory`: production paths stay absolute (/usr/local/etc/nginx/ssl lands in
ROOT/usr/local/etc/nginx/ssl), SFTP is `internal-sftp`, and reload commands run in the
chroot with a small copied userland (bash, sh, cat, sleep, ... and their libraries).
ChrootDirectory needs root and root-owned path components that nobody else may write,
hence the base folder under /var/lib/serverpki-lab rather than /tmp.

    with SSHLab(["web1.example.org", "web2.example.org"]) as lab:
        lab.host("web1.example.org").root      # its "/" on this machine
        lab.client_config, lab.known_hosts, lab.identity
        lab.host("web2.example.org").stop()    # a host that is down; .start() again
        lab.host("web2.example.org").rekey()   # a changed host key (known_hosts not told)
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port
from .process import done, on_exit, remove_dir, starting, temp_dir

SSHD = "/usr/sbin/sshd"
BASE = Path(os.environ.get("SERVERPKI_LAB_DIR", "/var/lib/serverpki-lab"))
# the commands a reload in the lab may use; sshd runs them with root's shell (bash) in the chroot
USERLAND = ("bash", "sh", "cat", "sleep", "true", "false", "ls", "touch", "date", "id", "mkdir", "rm")


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _keygen(path: Path, comment: str) -> None:
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))


def _check_chroot_safe(path: Path) -> None:
    """ChrootDirectory refuses a path with a component not owned by root or writable by others: say so first."""
    for part in [path, *path.parents]:
        st = part.stat()
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise RuntimeError(f"the lab's sshd chroots into {path}, but {part} is not owned by root or is writable by "
                               f"others (mode {stat.S_IMODE(st.st_mode):04o}): set SERVERPKI_LAB_DIR to a root-owned folder")


class _Userland:
    """Copies binaries with their shared libraries (from ldd) into a root folder, mirroring the host's layout."""

    def __init__(self, root: Path):
        self.root = root
        self.done: set[str] = set()

    def install(self, names: tuple[str, ...]) -> None:
        # merged /usr: /bin, /lib, /lib64, /sbin are links on Debian 12; the same links inside
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = Path("/") / top
            if host.is_symlink() and not (self.root / top).is_symlink():
                (self.root / top).symlink_to(os.readlink(host))
        for name in names:
            found = shutil.which(name)
            if found is None:
                raise RuntimeError(f"the lab's userland needs {name}, which is not installed")
            self._file(found)

    def _file(self, path: str) -> None:
        if path in self.done:
            return
        self.done.add(path)
        parent = os.path.realpath(os.path.dirname(path))
        source = os.path.join(parent, os.path.basename(path))
        dest = self.root / parent.lstrip("/") / os.path.basename(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(source):
            target = os.readlink(source)
            if not dest.is_symlink():
                dest.symlink_to(target)
            self._file(os.path.normpath(os.path.join(parent, target)))
            return
        if not dest.exists():
            shutil.copy2(source, dest)
        for lib in self._libraries(source):
            self._file(lib)

    @staticmethod
    def _libraries(path: str) -> list[str]:
        done = subprocess.run(["ldd", path], capture_output=True, text=True)
        if done.returncode:  # a static binary or a script
            return []
        libs = []
        for line in done.stdout.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) > parts.index("=>") + 1 and parts[parts.index("=>") + 1].startswith("/"):
                libs.append(parts[parts.index("=>") + 1])
            elif parts and parts[0].startswith("/"):
                libs.append(parts[0])
        return libs


@dataclass
class SSHHost:
    """One disthost: an sshd on its own loopback address and port, chrooted into `root`."""

    fqdn: str
    address: str
    folder: Path
    authorized_keys: Path
    port: int = 0
    # internal-sftp's log level (-l, e.g. "INFO": every open with its mode, chown, chmod, rename); in the
    # chroot it logs to syslog at ROOT/dev/log, so whoever wants the lines binds a datagram socket there
    sftp_log_level: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    _manifest: set[str] = field(default_factory=set, repr=False)

    @property
    def root(self) -> Path:
        """The host's "/": the targets' files land below it."""
        return self.folder / "root"

    @property
    def host_key(self) -> Path:
        return self.folder / "ssh_host_ed25519_key"

    @property
    def config(self) -> Path:
        return self.folder / "sshd_config"

    @property
    def log(self) -> Path:
        return self.folder / "sshd.log"

    def path(self, remote: str) -> Path:
        """Where a path of the host (absolute, as the handler writes it) is on this machine."""
        return self.root / remote.lstrip("/")

    # -- setup

    def prepare(self) -> None:
        self.folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o755)
        self.root.mkdir(mode=0o755, exist_ok=True)
        os.chmod(self.root, 0o755)
        _Userland(self.root).install(USERLAND)
        # root's home, so sshd can chdir there inside the chroot
        (self.root / "root").mkdir(mode=0o700, exist_ok=True)
        self._manifest = {str(p.relative_to(self.root)) for p in self.root.rglob("*")}
        if not self.host_key.exists():
            _keygen(self.host_key, f"host key of {self.fqdn}")
        if not self.port:
            self.port = free_port(self.address)
        self.config.write_text("\n".join([
            f"ListenAddress {self.address}:{self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.folder / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            # the keys live in the lab's folders, not in ~/.ssh
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "LogLevel INFO",
            # many connections at once (the baseline of the benchmark) must not be dropped
            "MaxStartups 200",
            "Subsystem sftp internal-sftp" + (f" -l {self.sftp_log_level}" if self.sftp_log_level else ""),
            f"ChrootDirectory {self.root}",
            "",
        ]))

    def deployed_files(self) -> set[str]:
        """The files and links in the root that the lab did not put there, as paths of the host."""
        return {"/" + rel for p in self.root.rglob("*")
                if (p.is_file() or p.is_symlink()) and (rel := str(p.relative_to(self.root))) not in self._manifest}

    def reset(self) -> None:
        """Remove what deployments left in the root; the userland stays."""
        for path in sorted(self.root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            rel = str(path.relative_to(self.root))
            if rel in self._manifest:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # -- life

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10) -> "SSHHost":
        if self.running:
            return self
        log = open(self.log, "a")
        try:
            with starting():   # sshd is registered before a SIGTERM can end us
                self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
                on_exit(self, self.stop)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd of {self.fqdn} exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"sshd of {self.fqdn} does not listen on {self.address}:{self.port} "
                                       f"after {timeout} s: {self.log.read_text()[-2000:]}")
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop listening (the host is down); sessions that run go on until they end."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        done(self)

    def rekey(self) -> None:
        """A new host key (as after a reinstall), and a restart; known_hosts still has the old one."""
        was_running = self.running
        self.stop()
        _keygen(self.host_key, f"new host key of {self.fqdn}")
        if was_running:
            self.start()

    # -- what the client sees

    def public_key(self) -> str:
        """The host key as "ssh-ed25519 AAAA..." (no comment)."""
        return " ".join(self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2])

    def fingerprint(self) -> str:
        """SHA256:... of the host key, as ssh-keygen -l shows it."""
        return _run("ssh-keygen", "-l", "-E", "sha256", "-f", str(self.host_key) + ".pub").split()[1]

    def known_hosts_line(self) -> str:
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{name} {self.public_key()}"

    def accepted_logins(self) -> int:
        """How many SSH connections this sshd has accepted (authenticated) so far, from its log."""
        if not self.log.exists():
            return 0
        return sum(1 for line in self.log.read_text(errors="replace").splitlines() if "Accepted publickey" in line)


class SSHLab:
    """N disthosts on 127.0.0.2, 127.0.0.3, ... and the client files that reach them."""

    def __init__(self, fqdns: list[str] | int, base: Path | None = None, first_address: int = 2, user: str = "root",
                 sftp_log_level: str | None = None):
        if isinstance(fqdns, int):
            fqdns = [f"host{n}.lab.serverpki.test" for n in range(1, fqdns + 1)]
        if len(set(fqdns)) != len(fqdns):
            raise ValueError("the lab's hosts need distinct FQDNs")
        if first_address + len(fqdns) > 255:
            raise ValueError("too many hosts for 127.0.0.x")
        self.fqdns = list(fqdns)
        self.user = user
        self.sftp_log_level = sftp_log_level  # opt-in: SFTP operations to each host's ROOT/dev/log
        self._base_parent = Path(base) if base else BASE
        self._first = first_address
        self.base: Path | None = None
        self.hosts: dict[str, SSHHost] = {}

    # -- the client side

    @property
    def client(self) -> Path:
        assert self.base is not None, "the lab is not started"
        return self.base / "client"

    @property
    def identity(self) -> Path:
        return self.client / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.client / "known_hosts"

    @property
    def client_config(self) -> Path:
        return self.client / "ssh_config"

    def host(self, fqdn: str) -> SSHHost:
        return self.hosts[fqdn]

    def write_known_hosts(self, path: Path | None = None, fqdns: list[str] | None = None) -> Path:
        """A known_hosts file with the current keys of these hosts (all by default)."""
        path = path or self.known_hosts
        path.write_text("".join(self.hosts[f].known_hosts_line() + "\n" for f in (fqdns or self.fqdns)))
        return path

    def write_client_config(self) -> Path:
        blocks = []
        for fqdn in self.fqdns:
            h = self.hosts[fqdn]
            blocks.append(f"Host {fqdn}\n    HostName {h.address}\n    Port {h.port}\n    User {self.user}\n"
                          f"    IdentityFile {self.identity}\n    IdentitiesOnly yes\n")
        self.client_config.write_text("\n".join(blocks))
        return self.client_config

    def ssh_settings(self) -> dict:
        """The [ssh] keys of the agent's configuration that reach the lab."""
        return {"known_hosts": self.known_hosts, "config_file": self.client_config, "user": self.user,
                "identity_file": self.identity}

    # -- life

    def start(self) -> "SSHLab":
        if os.geteuid() != 0:
            raise RuntimeError("the SSH lab needs root: sshd's ChrootDirectory gives each disthost its own \"/\"")
        if self.base is None:
            self._base_parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            _check_chroot_safe(self._base_parent)
            with starting():   # the folder is registered before a SIGTERM can end us
                self.base = temp_dir("ssh-", 0o755, self._base_parent)
                on_exit(self, self.close)
            self.client.mkdir(mode=0o700)
            _keygen(self.identity, "serverpki lab client")
            authorized = self.base / "authorized_keys"
            authorized.write_text(self.identity.with_name("id_ed25519.pub").read_text())
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
            for n, fqdn in enumerate(self.fqdns):
                host = SSHHost(fqdn, f"127.0.0.{self._first + n}", self.base / fqdn, authorized,
                               sftp_log_level=self.sftp_log_level)
                host.prepare()
                self.hosts[fqdn] = host
        try:
            for host in self.hosts.values():
                host.start()
        except Exception:
            self.close()
            raise
        self.write_known_hosts()
        self.write_client_config()
        return self

    def stop(self) -> None:
        for host in self.hosts.values():
            host.stop()

    def close(self) -> None:
        self.stop()
        if self.base is not None:
            remove_dir(self.base)
            self.base = None
        self.hosts = {}
        done(self)

    def reset(self) -> None:
        """Every host up, with its files gone, and known_hosts as the hosts' keys are now."""
        for host in self.hosts.values():
            host.reset()
            host.start()
        self.write_known_hosts()

    def __enter__(self) -> "SSHLab":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
