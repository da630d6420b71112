"""Where the fetcher may connect: only http(s), and by default never to private, loopback or link-local
addresses (a server-side request forgery guard).

The check runs on the address actually connected to, inside the HTTP connection itself, for every hop:
a redirect to `http://169.254.169.254/` or a public-looking name that resolves to 127.0.0.1 is refused
at connect time, and there is no second DNS lookup for a rebinding attack to exploit.

yt-dlp opens its own connections (its extractors, its redirects, a CDN the page points to), through
handlers of its own. `connections_checked` holds them to the same policy: an audit hook (PEP 578) sees
every `socket.connect` of the process, and refuses those of a thread running under a policy whose address
that policy does not permit. Connections of processes yt-dlp starts (ffmpeg fetching a protocol yt-dlp
does not download itself, such as RTMP or RTSP) are outside its reach.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

Resolver = Callable[[str, int], list[str]]


class BlockedAddress(Exception):
    """A connection the policy refuses; never retried."""


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def refusal(address: str) -> str | None:
    """Why an address is not public (None when it is)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for test, name in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_private, "private"),
        (ip.is_multicast, "multicast"),
        (ip.is_reserved, "reserved"),
        (ip.is_unspecified, "unspecified"),
    ):
        if test:
            return name
    if not ip.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    resolver: Resolver = system_resolver
    allowed_networks: tuple[str, ...] = ()  # non-public networks allowed by name, e.g. an intranet archive

    def permits(self, address: str) -> bool:
        if self.allow_private or refusal(address) is None:
            return True
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.allowed_networks)

    def addresses(self, host: str, port: int) -> list[str]:
        """Addresses to try for a host, all checked; raises BlockedAddress if none may be used."""
        try:
            candidates = [host] if _is_ip(host) else self.resolver(host, port)
        except OSError as exc:
            raise urllib3.exceptions.NameResolutionError(host, None, exc) from exc  # type: ignore[arg-type]
        allowed = [a for a in candidates if self.permits(a)]
        if not allowed:
            reasons = ", ".join(f"{a} ({refusal(a) or 'not allowed'})" for a in candidates)
            raise BlockedAddress(
                f"refused to connect to {host}: {reasons} address; allow_private_addresses or --allow-private "
                "permits it"
            )
        return allowed


class RefusedConnection(ConnectionRefusedError):
    """A connect the policy refused, raised inside `socket.connect`: an OSError, so a library that opened
    the socket (yt-dlp) reports it as the connection error it is."""


_checked = threading.local()  # the policy this thread's connections are held to, if any
_hook_lock = threading.Lock()
_hook_installed = False


def _connect_hook(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect":
        return
    policy: AddressPolicy | None = getattr(_checked, "policy", None)
    if policy is None:
        return
    sock, address = args
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return
    host = str(address[0])
    if not policy.permits(host):
        _checked.refused = (
            f"refused to connect to {host} ({refusal(host) or 'not allowed'} address); allow_private_addresses "
            "or --allow-private permits it"
        )
        raise RefusedConnection(_checked.refused)


def refused_in_this_thread() -> str | None:
    """The latest connection `connections_checked` refused in this thread's current block, if any."""
    return getattr(_checked, "refused", None)


@contextmanager
def connections_checked(policy: AddressPolicy) -> Iterator[None]:
    """Hold every connection this thread opens, by any library, to `policy` while the block runs."""
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_connect_hook)  # for the life of the process; inert in threads without a policy
            _hook_installed = True
    previous = getattr(_checked, "policy", None)
    _checked.policy, _checked.refused = policy, None
    try:
        yield
    finally:
        _checked.policy = previous


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


_last_peer = threading.local()


def last_peer_address() -> str | None:
    """The address this thread's latest request was sent to (for `WARC-IP-Address`).

    Read from the connection when the request goes out: by the time a short response is read, urllib3 may
    already have handed the connection back to its pool."""
    return getattr(_last_peer, "address", None)


class _GuardedConnectionMixin:
    policy: AddressPolicy = AddressPolicy()
    peer_address: str | None = None

    def request(self, *args: Any, **kwargs: Any) -> Any:
        _last_peer.address = None
        try:
            return super().request(*args, **kwargs)  # type: ignore[misc]
        finally:
            _last_peer.address = self.peer_address

    def _new_conn(self) -> socket.socket:  # the one place urllib3 opens sockets
        host = self._dns_host  # type: ignore[attr-defined]
        error: OSError | None = None
        for address in self.policy.addresses(host, self.port):  # type: ignore[attr-defined]
            try:
                sock = socket.create_connection(
                    (address, self.port),  # type: ignore[attr-defined]
                    self.timeout,  # type: ignore[attr-defined]
                    source_address=self.source_address,  # type: ignore[attr-defined]
                )
            except OSError as exc:
                error = exc
                continue
            for option in self.socket_options or ():  # type: ignore[attr-defined]
                sock.setsockopt(*option)
            self.peer_address = address
            return sock
        raise urllib3.exceptions.NewConnectionError(self, f"Failed to connect to {host}: {error}")  # type: ignore[arg-type]


def guarded_session(policy: AddressPolicy, hosts: int = 64, per_host: int = 4) -> requests.Session:
    """A requests Session whose every connection goes through the address policy; it keeps connection
    pools for `hosts` hosts with up to `per_host` idle connections each."""
    http_conn = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), {"policy": policy})
    https_conn = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), {"policy": policy})
    http_pool = type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn})
    https_pool = type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn})

    class GuardedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: object, **kwargs: object) -> None:
            super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
            self.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}

    session = requests.Session()
    adapter = GuardedAdapter(pool_connections=hosts, pool_maxsize=per_host, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # no proxies or .netrc credentials picked up from the environment
    return session
