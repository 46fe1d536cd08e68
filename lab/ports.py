"""Free ports on loopback: ask the kernel, never guess."""

from __future__ import annotations

import socket

# the ports this process handed out: a lab picks all its peers' ports before it starts them, and the
# kernel may give a port back again once the probing socket is closed (PostgreSQL and BIND once got the same)
_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, and that this process has not handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
