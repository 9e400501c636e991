"""Binding the LDAP ports (ams.ldapserver.server._listening): what asyncio's own server
accepted is accepted, and what cannot be bound is one BadInput line, nothing left bound."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from ams.errors import BadInput
from ams.ldapserver import server


def _close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def test_an_empty_host_means_every_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    """``[server] host = ""`` (the LDAP host defaults to the HTTP one): asked of the resolver
    as no host, which is every interface (as asyncio's server took it). Bound here on
    loopback: the tests listen nowhere else."""
    real_getaddrinfo = socket.getaddrinfo
    asked: list[Any] = []

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        return real_getaddrinfo("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(server.socket, "getaddrinfo", getaddrinfo)
    sockets = server._listening("", 0, "--ldap-port")
    try:
        assert asked == [None]
        with socket.create_connection(("127.0.0.1", sockets[0].getsockname()[1]), timeout=5):
            pass
    finally:
        _close(sockets)


def test_a_name_that_is_no_host_name_is_a_clear_error() -> None:
    with pytest.raises(BadInput, match=r"cannot listen for LDAP on a{64}:0: that is not a valid host name"):
        server._listening("a" * 64, 0, "--ldap-port")


def test_a_taken_port_names_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BadInput, match=f"127.0.0.1:{port}: the address is already in use; choose another "
                                           "--ldap-host or --ldaps-port"):  # fmt: skip
            server._listening("127.0.0.1", port, "--ldaps-port")


def test_an_address_family_the_kernel_lacks_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel booted with ipv6.disable=1, and a name that resolves to ::1 too."""
    real_getaddrinfo, real_socket = socket.getaddrinfo, socket.socket
    v4 = real_getaddrinfo("127.0.0.1", 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0))

    def getaddrinfo(*args: Any, **kwargs: Any) -> list[Any]:
        return [v6, v4]

    def make(family: int = socket.AF_INET, *args: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return real_socket(family, *args)

    monkeypatch.setattr(server.socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(server.socket, "socket", make)
    sockets = server._listening("dual", 0, "--ldap-port")
    try:
        assert [sock.getsockname()[0] for sock in sockets] == ["127.0.0.1"]
    finally:
        _close(sockets)
    monkeypatch.setattr(server.socket, "getaddrinfo", lambda *a, **k: [v6])
    with pytest.raises(BadInput, match="dual:0: Address family not supported by protocol"):
        server._listening("dual", 0, "--ldap-port")
