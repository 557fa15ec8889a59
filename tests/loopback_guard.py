"""Refuse, and record, every network call that would leave loopback.

Tests that talk to local emulators install this guard to prove that nothing (a credential lookup,
a metadata-server probe, a DNS query) goes past 127.0.0.0/8. It patches ``socket.getaddrinfo``
and ``socket.socket.connect``/``connect_ex`` of this process; a refused call raises
``OSError(ENETUNREACH)`` at once and appends one line to the file named by
``STEMBEAM_LOOPBACK_LOG``. Importing the module installs the guard when that variable is set, so
an SDK worker process that imports it (through the test module defining its DoFns) is guarded as
well, and records into the same file. gRPC's C core
resolves and connects outside the ``socket`` module and is not covered (Beam uses it only for its
own localhost control channels).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
import traceback

LOG_ENV = "STEMBEAM_LOOPBACK_LOG"

_LOCAL_NAMES = {None, "", "localhost", "localhost.localdomain", "ip6-localhost"}
_lock = threading.Lock()
_original: dict[str, object] = {}


def is_local_host(host: object) -> bool:
    """Whether ``host`` (name, IP literal, bytes or None) stays on this machine."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _refuse(what: str) -> OSError:
    path = os.environ.get(LOG_ENV)
    if path:
        with _lock, open(path, "a", encoding="utf-8") as log:
            frames = traceback.extract_stack()[-12:-2]
            where = " <- ".join(
                f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in reversed(frames)
            )
            log.write(f"pid {os.getpid()}: {what} from {where}\n")
    return OSError(errno.ENETUNREACH, f"non-loopback network call refused in tests: {what}")


def _guarded_getaddrinfo(host, *args, **kwargs):
    if not is_local_host(host):
        raise _refuse(f"getaddrinfo({host!r})")
    return _original["getaddrinfo"](host, *args, **kwargs)


def _target_is_local(sock: socket.socket, address: object) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True  # unix sockets, netlink...
    return is_local_host(address[0])  # type: ignore[index]


def _guarded_connect(self: socket.socket, address):
    if not _target_is_local(self, address):
        raise _refuse(f"connect({address!r})")
    return _original["connect"](self, address)


def _guarded_connect_ex(self: socket.socket, address):
    if not _target_is_local(self, address):
        _refuse(f"connect_ex({address!r})")
        return errno.ENETUNREACH
    return _original["connect_ex"](self, address)


def install() -> None:
    """Install the guard in this process (idempotent)."""
    with _lock:
        if _original:
            return
        _original["getaddrinfo"] = socket.getaddrinfo
        _original["connect"] = socket.socket.connect
        _original["connect_ex"] = socket.socket.connect_ex
        socket.getaddrinfo = _guarded_getaddrinfo
        socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


def uninstall() -> None:
    """Restore the original socket functions (idempotent)."""
    with _lock:
        if not _original:
            return
        socket.getaddrinfo = _original.pop("getaddrinfo")
        socket.socket.connect = _original.pop("connect")  # type: ignore[method-assign]
        socket.socket.connect_ex = _original.pop("connect_ex")  # type: ignore[method-assign]


def violations(path: str) -> list[str]:
    """Lines recorded in the log file at ``path`` (empty when none)."""
    try:
        with open(path, encoding="utf-8") as log:
            return log.read().splitlines()
    except FileNotFoundError:
        return []


if os.environ.get(LOG_ENV):
    install()
