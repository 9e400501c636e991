"""The LDAPv3 endpoint: an asyncio server in its own thread, database work in a thread pool.

Under ``ams serve --workers N`` that thread runs in a process of its own, which the
supervisor forks, replaces and stops like a worker (:meth:`LdapServer.serve`).

``ams serve --ldap-port N`` starts it beside the HTTP service (docs/operations.md, "LDAP
access"). Each connection reads whole messages (:mod:`ams.ldapserver.codec`), runs each
operation as a task (so an abandon or the next request is read while a search runs), and
hands its database calls to a thread pool, so neither this loop nor the HTTP side waits
on the database long. The exception is a short search (a base read or an indexed
equality, :func:`ams.directory.search.is_short`): its first _INLINE_ROWS rows are read and
encoded in this loop, since handing them to the pool and waking the loop again costs
more than the few index lookups. Which directory an operation touches follows from its DN (the directory
whose ``DC=`` suffix ends it); who may do what is :mod:`ams.ldapserver.access`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ams.directory import dn as dnlib
from ams.directory import objects
from ams.directory import search as searching
from ams.directory.entry import Entry, Value, text_or_bytes
from ams.errors import (
    AlreadyExists,
    AMSError,
    AuthenticationRequired,
    BadInput,
    Conflict,
    DirectoryAttributeAbsent,
    DirectoryEntryNotFound,
    DirectoryNotFound,
    DirectoryUnavailable,
    DirectoryValueExists,
    PasswordUndecryptable,
    PermissionDenied,
    TooManyRequests,
    WeakPassword,
)
from ams.instance import Instance
from ams.ldapserver import access, codec
from ams.ldapserver.access import ANONYMOUS, Change, DirectoryRef, Principal

__all__ = ["LdapServer"]

log = logging.getLogger("ams.ldap")

T = TypeVar("T")

START_TLS = "1.3.6.1.4.1.1466.20037"
WHO_AM_I = "1.3.6.1.4.1.4203.1.11.3"
NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"

# Result codes (RFC 4511 appendix A) that AMS answers.
SUCCESS = 0
OPERATIONS_ERROR = 1
PROTOCOL_ERROR = 2
TIME_LIMIT_EXCEEDED = 3
SIZE_LIMIT_EXCEEDED = 4
COMPARE_FALSE = 5
COMPARE_TRUE = 6
AUTH_METHOD_NOT_SUPPORTED = 7
UNAVAILABLE_CRITICAL_EXTENSION = 12
NO_SUCH_ATTRIBUTE = 16
CONSTRAINT_VIOLATION = 19
ATTRIBUTE_OR_VALUE_EXISTS = 20
NO_SUCH_OBJECT = 32
INVALID_DN_SYNTAX = 34
INVALID_CREDENTIALS = 49
INSUFFICIENT_ACCESS = 50
BUSY = 51
UNAVAILABLE = 52
UNWILLING_TO_PERFORM = 53
NAMING_VIOLATION = 64
OBJECT_CLASS_VIOLATION = 65
NOT_ALLOWED_ON_NON_LEAF = 66
ENTRY_ALREADY_EXISTS = 68
OTHER = 80

_RESPONSE = {
    "bindRequest": "bindResponse",
    "searchRequest": "searchResDone",
    "modifyRequest": "modifyResponse",
    "addRequest": "addResponse",
    "delRequest": "delResponse",
    "modDNRequest": "modDNResponse",
    "compareRequest": "compareResponse",
}
_SCOPES: dict[int, searching.Scope] = {0: "base", 1: "one", 2: "sub"}
_OPS = {0: "add", 1: "delete", 2: "replace"}
# Rows read per trip to the database during a search (between looks at abandon and time).
_ROWS = 1000
# Rows a short search (searching.is_short) reads in the listener's own thread.
_INLINE_ROWS = 50
_DIRECTORIES_TTL = 1.0


@dataclass
class LdapResult(Exception):
    """An operation's non-success answer."""

    code: int
    message: str = ""
    matched: str = ""


def _text(value: Any) -> str:
    return bytes(value).decode("utf-8", "surrogateescape")


def _value(value: Value) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def result_of(exc: BaseException) -> LdapResult:
    """The LDAP answer to a service error (OpenLDAP's codes; AMS's message says what to do)."""
    if isinstance(exc, LdapResult):
        return exc
    if isinstance(exc, DirectoryEntryNotFound):
        return LdapResult(NO_SUCH_OBJECT, "", exc.matched_dn)
    if isinstance(exc, AlreadyExists):
        return LdapResult(ENTRY_ALREADY_EXISTS, "")
    if isinstance(exc, DirectoryUnavailable):
        return LdapResult(UNAVAILABLE, exc.message)
    if isinstance(exc, DirectoryNotFound):
        return LdapResult(NO_SUCH_OBJECT, "")
    if isinstance(exc, TooManyRequests):
        return LdapResult(BUSY, exc.message)
    if isinstance(exc, AuthenticationRequired):
        return LdapResult(INVALID_CREDENTIALS, "")
    if isinstance(exc, PermissionDenied):
        return LdapResult(INSUFFICIENT_ACCESS, exc.message)
    if isinstance(exc, DirectoryAttributeAbsent):
        return LdapResult(NO_SUCH_ATTRIBUTE, exc.message)
    if isinstance(exc, DirectoryValueExists):
        return LdapResult(ATTRIBUTE_OR_VALUE_EXISTS, exc.message)
    if isinstance(exc, Conflict):
        if "entries under it" in exc.message:
            return LdapResult(NOT_ALLOWED_ON_NON_LEAF, "subordinate objects must be deleted first")
        return LdapResult(UNWILLING_TO_PERFORM, exc.message)
    if isinstance(exc, (PasswordUndecryptable, WeakPassword)):
        return LdapResult(CONSTRAINT_VIOLATION, exc.message)
    if isinstance(exc, BadInput):
        if "objectClass" in exc.message and "no objectClass" in exc.message:
            return LdapResult(OBJECT_CLASS_VIOLATION, "no objectClass attribute")
        return LdapResult(UNWILLING_TO_PERFORM, exc.message)
    if isinstance(exc, AMSError):
        return LdapResult(UNWILLING_TO_PERFORM, exc.message)
    # One line, no traceback: what failed and where (a client's data is not logged).
    log.error("LDAP operation failed unexpectedly: %s: %.200s", type(exc).__name__, exc)
    return LdapResult(OTHER, "internal error: the server log says more")


def build_filter(node: Any) -> searching.Filter:
    """The protocol's Filter (ASN.1) as ams.directory.search's tree."""
    kind = node.getName()
    inner = node.getComponent()
    if kind == "and":
        return searching.And(tuple(build_filter(i) for i in inner))
    if kind == "or":
        return searching.Or(tuple(build_filter(i) for i in inner))
    if kind == "notFilter":
        return searching.Not(build_filter(inner))
    if kind == "present":
        return searching.Present(_text(inner))
    if kind in ("equalityMatch", "approxMatch", "greaterOrEqual", "lessOrEqual"):
        attribute = _text(inner["attributeDesc"])
        value = text_or_bytes(bytes(inner["assertionValue"]))
        if kind == "greaterOrEqual":
            return searching.Greater(attribute, value)
        if kind == "lessOrEqual":
            return searching.Less(attribute, value)
        return searching.Equal(attribute, value)
    if kind == "substringFilter":
        initial: Value | None = None
        final: Value | None = None
        middle: list[Value] = []
        for piece in inner["substrings"]:
            which = piece.getName()
            value = text_or_bytes(bytes(piece.getComponent()))
            if which == "initial":
                initial = value
            elif which == "final":
                final = value
            else:
                middle.append(value)
        return searching.Substrings(_text(inner["type"]), initial, tuple(middle), final)
    return searching.Undefined()


class _Connection:
    def __init__(
        self, server: LdapServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.address: str | None = peer[0] if isinstance(peer, tuple) else None
        self.principal: Principal = ANONYMOUS
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.abandoned: set[int] = set()
        # A search's last entries, sent with its result (one write, not two).
        self.held: dict[int, list[bytes]] = {}
        self.write_lock = asyncio.Lock()
        self.closing = False
        self.tls = writer.get_extra_info("sslcontext") is not None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # A search answers with several messages: without this each small write after
            # the first waits for the client's delayed ACK (tens of milliseconds).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- I/O ------------------------------------------------------------------------------

    async def send(self, data: bytes | list[bytes]) -> None:
        async with self.write_lock:
            if self.closing:
                return
            if isinstance(data, list):
                self.writer.writelines(data)
            else:
                self.writer.write(data)
            await self.writer.drain()

    async def run(self) -> None:
        buffer = bytearray()
        try:
            while not self.closing:
                size = codec.message_size(buffer)
                while size < 0 or len(buffer) < size:
                    chunk = await self.reader.read(65536)
                    if not chunk:
                        return
                    buffer += chunk
                    size = codec.message_size(buffer)
                raw = bytes(buffer[:size])
                del buffer[:size]
                message = codec.decode(raw)
                await self.dispatch(message)
        except codec.ProtocolError as exc:
            log.warning("LDAP client %s sent garbage (%s): connection closed", self.address, exc)
            await self.disconnect(PROTOCOL_ERROR, "protocol error: the request could not be decoded")
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.info("LDAP connection from %s ended: %s", self.address, type(exc).__name__)
        finally:
            await self.close()

    async def disconnect(self, code: int, message: str) -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.send(codec.encode_extended(0, code, message, NOTICE_OF_DISCONNECTION))

    async def close(self) -> None:
        self.closing = True
        for task in list(self.tasks.values()):
            task.cancel()
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError):
            pass

    async def settle(self) -> None:
        """Wait for the operations in progress (before a bind or a StartTLS)."""
        pending = [t for t in self.tasks.values() if not t.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- dispatch -------------------------------------------------------------------------

    async def dispatch(self, message: Any) -> None:
        message_id = int(message["messageID"])
        op = message["protocolOp"]
        name = op.getName()
        request = op.getComponent()
        controls = message["controls"] if message["controls"].hasValue() else None
        if name == "unbindRequest":
            self.closing = True
            return
        if name == "abandonRequest":
            target = int(request)
            self.abandoned.add(target)
            task = self.tasks.get(target)
            if task is not None and not task.done():
                task.cancel()
            return
        if name in ("bindRequest", "extendedReq"):
            await self.settle()
            await self.answer(message_id, name, request, controls)
            return
        if name not in _RESPONSE:
            raise codec.ProtocolError(f"unexpected {name}")
        task = asyncio.ensure_future(self.answer(message_id, name, request, controls))
        self.tasks[message_id] = task
        task.add_done_callback(lambda _t: self.tasks.pop(message_id, None))

    async def answer(self, message_id: int, name: str, request: Any, controls: Any) -> None:
        response = _RESPONSE.get(name, "extendedResp")
        reply: list[tuple[str, bytes]] | None = None
        try:
            critical = codec.critical_controls(controls)
            if critical:
                raise LdapResult(
                    UNAVAILABLE_CRITICAL_EXTENSION, f"critical control {critical[0]} not supported"
                )
            handler: Callable[[int, Any, Any], Awaitable[list[tuple[str, bytes]] | None]] = getattr(
                self, "op_" + name
            )
            reply = await handler(message_id, request, controls)
            outcome = LdapResult(SUCCESS)
        except asyncio.CancelledError:
            self.held.pop(message_id, None)
            return
        except codec.ProtocolError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes an LDAP result
            outcome = result_of(exc)
        held = self.held.pop(message_id, [])
        if message_id in self.abandoned:
            self.abandoned.discard(message_id)
            return
        if name == "extendedReq":
            if outcome.code == SUCCESS and reply is not None:
                oid, value = reply[0]
                await self.send(codec.encode_extended(message_id, SUCCESS, "", oid or None, value))
            else:
                await self.send(codec.encode_extended(message_id, outcome.code, outcome.message))
            return
        if name == "compareRequest" and outcome.code == SUCCESS:
            outcome = LdapResult(COMPARE_TRUE if reply else COMPARE_FALSE)
            reply = None
        done = codec.encode_result(
            message_id, response, outcome.code, outcome.message, outcome.matched, reply
        )
        await self.send([*held, done] if held else done)

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.server.run_db(fn, *args)

    # -- routing --------------------------------------------------------------------------

    async def directory_of(self, dn: str) -> tuple[DirectoryRef, str]:
        """The directory that holds ``dn`` and the DN's normal form; noSuchObject when none."""
        try:
            norm = dnlib.normalise(dn)
        except BadInput:
            raise LdapResult(INVALID_DN_SYNTAX, "invalid DN") from None
        served = await self.server.directories()
        owner = max(
            (d for d in served if norm == d.suffix_norm or norm.endswith("," + d.suffix_norm)),
            key=lambda d: len(d.suffix_norm),
            default=None,
        )
        if owner is None:
            raise LdapResult(NO_SUCH_OBJECT, "")
        if owner.stage != "Active":
            raise LdapResult(
                UNAVAILABLE,
                f"directory {owner.id} is {owner.stage}: its entries are offline until it is Active again",
            )
        return owner, norm

    # -- operations -----------------------------------------------------------------------

    async def op_bindRequest(self, message_id: int, request: Any, controls: Any) -> None:  # noqa: N802
        self.principal = ANONYMOUS
        if int(request["version"]) != 3:
            raise LdapResult(PROTOCOL_ERROR, "requested protocol version not allowed")
        auth = request["authentication"]
        if auth.getName() != "simple":
            raise LdapResult(AUTH_METHOD_NOT_SUPPORTED, "only simple binds are supported")
        name = _text(request["name"])
        password = bytes(auth.getComponent()).decode("utf-8", "replace")
        if not name and not password:
            return None
        if not password:
            raise LdapResult(UNWILLING_TO_PERFORM, "unauthenticated bind (DN with no password) disallowed")
        served = await self.server.directories()
        self.principal = await self.run_db(
            access.authenticate, self.server.instance, served, name, password, self.address
        )
        return None

    async def op_extendedReq(  # noqa: N802
        self, message_id: int, request: Any, controls: Any
    ) -> list[tuple[str, bytes]]:
        oid = str(request["requestName"])
        if oid == WHO_AM_I:
            who = f"dn:{self.principal.bind_dn}" if self.principal.kind != "anonymous" else ""
            return [("", who.encode("utf-8"))]
        if oid != START_TLS:
            raise LdapResult(PROTOCOL_ERROR, f"{oid} not supported")
        if self.server.tls is None:
            raise LdapResult(
                UNAVAILABLE, "Could not initialize TLS: start ams serve with --ldap-tls-cert/--ldap-tls-key"
            )
        if self.tls:
            raise LdapResult(OPERATIONS_ERROR, "TLS already started")
        # The answer goes out in the clear, then the handshake starts (RFC 4511 4.14.2).
        await self.send(codec.encode_extended(message_id, SUCCESS, "", START_TLS))
        await self.writer.start_tls(self.server.tls)
        self.tls = True
        self.abandoned.add(message_id)  # answered already
        return []

    async def op_searchRequest(  # noqa: N802
        self, message_id: int, request: Any, controls: Any
    ) -> list[tuple[str, bytes]] | None:
        base = _text(request["baseObject"])
        scope = _SCOPES.get(int(request["scope"]))
        if scope is None:
            raise LdapResult(PROTOCOL_ERROR, "invalid scope")
        size_limit = int(request["sizeLimit"])
        time_limit = int(request["timeLimit"])
        types_only = bool(request["typesOnly"])
        wanted = [_text(a) for a in request["attributes"]]
        node = build_filter(request["filter"])
        if not base.strip():
            if scope != "base":
                raise LdapResult(NO_SUCH_OBJECT, "")
            await self.root_dse(message_id, node, wanted, types_only)
            return None
        directory, _norm = await self.directory_of(base)
        access.check_read(self.principal, directory.id)
        paged = codec.paged_request(controls)
        after = 0
        page_size: int | None = None
        if paged is not None:
            page_size, cookie, _critical = paged
            if cookie:
                try:
                    after = int(cookie.decode("ascii"))
                except ValueError:
                    raise LdapResult(UNWILLING_TO_PERFORM, "paged results cookie is invalid") from None
            if page_size == 0:
                return [codec.paged_control(0, b"")]
        deadline = time.monotonic() + time_limit if time_limit else None
        sent = 0
        inline = after == 0 and searching.is_short(node, scope)
        while True:
            if message_id in self.abandoned:
                return None
            room = None
            if page_size is not None:
                room = page_size - sent
            if size_limit:
                room = min(room, size_limit + 1 - sent) if room is not None else size_limit + 1 - sent
            if inline:
                # A base read or an indexed equality: a few rows by an index, read and encoded
                # here (a hand-off to the pool and back costs more than the work); at most
                # _INLINE_ROWS rows, so the loop is never held long; the rest go to the pool.
                inline = False
                page, encoded = self._search_page(
                    directory, base, scope, node, after, room, wanted, types_only, message_id, _INLINE_ROWS
                )
            else:
                page, encoded = await self.run_db(
                    self._search_page, directory, base, scope, node, after, room, wanted, types_only,
                    message_id, _ROWS,
                )  # fmt: skip
            after = page.last_id
            if size_limit and sent + len(encoded) > size_limit:
                self.held[message_id] = encoded[: size_limit - sent]
                raise LdapResult(SIZE_LIMIT_EXCEEDED, "")
            if page.done or (page_size is not None and sent + len(encoded) >= page_size):
                # The last entries go out with the searchResDone, in one write.
                self.held[message_id] = encoded
            elif encoded:
                await self.send(encoded)
            sent += len(encoded)
            if page.done:
                return [codec.paged_control(0, b"")] if paged is not None else None
            if page_size is not None and sent >= page_size:
                return [codec.paged_control(0, str(after).encode("ascii"))]
            if deadline is not None and time.monotonic() > deadline:
                raise LdapResult(TIME_LIMIT_EXCEEDED, "")

    def _search_page(
        self,
        directory: DirectoryRef,
        base: str,
        scope: searching.Scope,
        node: searching.Filter,
        after: int,
        room: int | None,
        wanted: list[str],
        types_only: bool,
        message_id: int,
        most: int,
    ) -> tuple[searching.Page, list[bytes]]:
        """One page of at most ``most`` rows read, read and encoded (in a worker thread unless
        the search is short: encoding is most of a long search's CPU)."""
        instance = self.server.instance
        try:
            page = searching.search_page(
                instance,
                directory.id,
                base=base,
                scope=scope,
                node=node,
                suffix=directory.suffix,
                after_id=after,
                rows=most if room is None else max(1, min(most, room * 4)),
                limit=room,
            )
        except DirectoryEntryNotFound as exc:
            if after == 0:
                exc.matched_dn = objects.matched_dn(instance, directory.id, base)
            raise
        encoded = []
        for _row_id, entry in page.entries:
            visible = access.may_read(instance, self.principal, directory.id, entry)
            if visible is not None and not visible:
                continue
            encoded.append(
                codec.encode_entry(message_id, entry.dn, _select(entry, wanted, types_only, visible))
            )
        return page, encoded

    async def root_dse(
        self, message_id: int, node: searching.Filter, wanted: list[str], types_only: bool
    ) -> None:
        served = await self.server.directories()
        attributes: dict[str, list[Value]] = {
            "namingContexts": [d.suffix for d in served],
            "supportedLDAPVersion": ["3"],
            "supportedControl": [codec.PAGED_RESULTS],
            "supportedExtension": [START_TLS, WHO_AM_I] if self.server.tls else [WHO_AM_I],
            "supportedSASLMechanisms": [],
            "vendorName": ["AMS"],
        }
        attributes = {k: v for k, v in attributes.items() if v}
        entry = Entry("", ["top"], attributes)
        if not searching.matches(node, entry):
            return
        # The rootDSE's attributes are operational: a plain "*" gets them too, for convenience.
        chosen = [w for w in wanted if w not in ("*", "+")] or []
        pairs = _select(entry, chosen, types_only, None) if chosen else _all(entry, types_only)
        await self.send(codec.encode_entry(message_id, "", pairs))

    async def op_compareRequest(self, message_id: int, request: Any, controls: Any) -> list[Any]:  # noqa: N802
        dn = _text(request["entry"])
        attribute = _text(request["ava"]["attributeDesc"])
        value = text_or_bytes(bytes(request["ava"]["assertionValue"]))
        directory, _norm = await self.directory_of(dn)
        access.check_read(self.principal, directory.id)

        def compare() -> bool:
            instance = self.server.instance
            try:
                entry = objects.get(instance, directory.id, dn)
            except DirectoryEntryNotFound as exc:
                exc.matched_dn = objects.matched_dn(instance, directory.id, dn)
                raise
            visible = access.may_read(instance, self.principal, directory.id, entry)
            if visible is not None and attribute.lower() not in visible:
                raise LdapResult(INSUFFICIENT_ACCESS, "")
            if not searching.matches(searching.Present(attribute), entry):
                raise LdapResult(NO_SUCH_ATTRIBUTE, "")
            return searching.matches(searching.Equal(attribute, value), entry)

        return [True] if await self.run_db(compare) else []

    # -- writes ---------------------------------------------------------------------------

    def _actor(self) -> str:
        return f"ldap:{self.principal.bind_dn}"

    async def op_addRequest(self, message_id: int, request: Any, controls: Any) -> None:  # noqa: N802
        dn = _text(request["entry"])
        directory, _norm = await self.directory_of(dn)
        access.check_write(self.principal, directory.id, dn, None)
        attributes: dict[str, list[Value]] = {}
        for attribute in request["attributes"]:
            name = _text(attribute["type"])
            attributes.setdefault(name, []).extend(text_or_bytes(bytes(v)) for v in attribute["vals"])
        entry = Entry(dn=dn, object_classes=[], attributes=attributes)
        await self.run_db(self._write, objects.add, directory.id, entry, {"require_parent": directory.suffix})

    async def op_delRequest(self, message_id: int, request: Any, controls: Any) -> None:  # noqa: N802
        dn = _text(request)
        directory, _norm = await self.directory_of(dn)
        access.check_write(self.principal, directory.id, dn, None)
        await self.run_db(self._write, objects.delete, directory.id, dn, {})

    async def op_modifyRequest(self, message_id: int, request: Any, controls: Any) -> None:  # noqa: N802
        dn = _text(request["object"])
        directory, _norm = await self.directory_of(dn)
        changes = []
        for change in request["changes"]:
            op = _OPS.get(int(change["operation"]))
            if op is None:
                raise LdapResult(UNWILLING_TO_PERFORM, "increment is not supported")
            modification = change["modification"]
            values = [text_or_bytes(bytes(v)) for v in modification["vals"]]
            changes.append(Change(op, _text(modification["type"]), values))  # type: ignore[arg-type]
        access.check_write(self.principal, directory.id, dn, changes)
        if self.principal.kind == "device":
            try:
                await self.run_db(
                    access.device_modify, self.server.instance, self.principal, directory.id, dn, changes
                )
            except BadInput as exc:
                # What a device writes is its password blob: a bad one violates a constraint.
                if isinstance(exc, DirectoryAttributeAbsent):
                    raise
                raise LdapResult(CONSTRAINT_VIOLATION, exc.message) from None
            return
        ordered = [(c.op, c.attribute, c.values) for c in changes]
        await self.run_db(self._write, objects.apply_changes, directory.id, dn, {}, ordered)

    async def op_modDNRequest(self, message_id: int, request: Any, controls: Any) -> None:  # noqa: N802
        dn = _text(request["entry"])
        new_rdn = _text(request["newrdn"])
        delete_old = bool(request["deleteoldrdn"])
        superior = _text(request["newSuperior"]) if request["newSuperior"].hasValue() else None
        directory, _norm = await self.directory_of(dn)
        if superior is not None:
            target, _ = await self.directory_of(superior)
            if target.id != directory.id:
                raise LdapResult(UNWILLING_TO_PERFORM, "cannot move an entry to another directory")
        access.check_write(self.principal, directory.id, dn, None)
        await self.run_db(
            self._write,
            objects.rename,
            directory.id,
            dn,
            {"delete_old_rdn": delete_old, "new_superior": superior},
            new_rdn,
        )

    def _write(self, fn: Callable[..., Any], directory_id: str, target: Any, keywords: dict[str, Any],
               *extra: Any) -> None:  # fmt: skip
        instance = self.server.instance
        dn = target.dn if isinstance(target, Entry) else target
        try:
            fn(instance, directory_id, target, *extra, actor=self._actor(), **keywords)
        except DirectoryEntryNotFound as exc:
            if not exc.matched_dn:
                exc.matched_dn = objects.matched_dn(instance, directory_id, dn)
            raise


def _all(entry: Entry, types_only: bool) -> list[tuple[str, list[bytes]]]:
    out: list[tuple[str, list[bytes]]] = []
    if entry.object_classes:
        out.append(("objectClass", [] if types_only else [_value(c) for c in entry.object_classes]))
    for name, values in entry.attributes.items():
        out.append((name, [] if types_only else [_value(v) for v in values]))
    return out


def _select(
    entry: Entry, wanted: list[str], types_only: bool, visible: set[str] | None
) -> list[tuple[str, list[bytes]]]:
    """The attributes a search returns: all user attributes for none or "*", none for "1.1",
    entryDN for "+", else the ones named (without regard to case); only ``visible`` ones."""
    lowered = {w.lower() for w in wanted}
    everything = not wanted or "*" in lowered
    if lowered == {"1.1"}:
        return []
    pairs = _all(entry, types_only)
    chosen = [
        (n, v) for n, v in pairs if everything or n.lower() in lowered or n.split(";")[0].lower() in lowered
    ]
    if "+" in lowered or "entrydn" in lowered:
        chosen.append(("entryDN", [] if types_only else [_value(entry.dn)]))
    if visible is not None:
        chosen = [(n, v) for n, v in chosen if n.lower() in visible]
    return chosen


def _listening(host: str, port: int, option: str) -> list[socket.socket]:
    """Listening sockets for ``host``:``port``: every address the name resolves to, as
    asyncio's own server binds them (an empty host: every interface; an address family
    the kernel does not offer is skipped). BadInput, naming the host and ``option``, when
    none can be made or one cannot be bound."""
    sockets: list[socket.socket] = []
    where = f"{host or '*'}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        unsupported: OSError | None = None
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:  # e.g. IPv6 disabled, while the name also resolves to ::1
                unsupported = exc
                continue
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(100)
            sock.setblocking(False)
        if not sockets and unsupported is not None:
            raise unsupported
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
        for sock in sockets:
            sock.close()
        if isinstance(exc, UnicodeError):
            reason = "that is not a valid host name"
        elif exc.errno == errno.EADDRINUSE:
            reason = "the address is already in use"
        else:
            reason = exc.strerror or str(exc)
        raise BadInput(
            f"cannot listen for LDAP on {where}: {reason}; choose another --ldap-host or {option}"
        ) from None
    return sockets


class LdapServer:
    """The LDAP listener(s) of one ``ams serve``.

    :meth:`listen` binds the ports, in the calling thread: a port that is taken is refused
    before the service starts. :meth:`start` serves them from a thread of its own with its
    own event loop; :meth:`serve` does that in a process of its own until SIGTERM or SIGINT
    (``ams serve --workers N`` forks one for LDAP: the supervisor, which forks the workers
    again when one ends, runs no thread)."""

    def __init__(
        self,
        instance: Instance,
        *,
        host: str,
        port: int | None,
        tls_port: int | None = None,
        tls: ssl.SSLContext | None = None,
        workers: int = 8,
    ) -> None:
        self.instance = instance
        self.host = host
        self.port = port
        self.tls_port = tls_port
        self.tls = tls
        self._workers = workers
        self.sockets: list[tuple[socket.socket, ssl.SSLContext | None]] = []
        # Made by start(), in the process that serves: nothing of it crosses a fork.
        self.pool: ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.servers: list[asyncio.Server] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._served: list[DirectoryRef] = []
        self._served_at = 0.0

    async def run_db(self, fn: Callable[..., T], *args: Any) -> T:
        assert self.loop is not None and self.pool is not None
        return await self.loop.run_in_executor(self.pool, fn, *args)

    async def directories(self) -> list[DirectoryRef]:
        now = time.monotonic()
        if now - self._served_at > _DIRECTORIES_TTL:
            self._served = await self.run_db(access.served_directories, self.instance)
            self._served_at = now
        return self._served

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Cancelled when the server stops: the connection is closed, nothing to report.
        with contextlib.suppress(asyncio.CancelledError):
            await _Connection(self, reader, writer).run()

    def listen(self) -> list[tuple[str, str, int]]:
        """Bind the LDAP port and the ldaps port; what was bound: ("LDAP" or "ldaps",
        address, port). BadInput when a port cannot be bound (nothing stays bound then)."""
        try:
            wanted = ((self.port, None, "--ldap-port"), (self.tls_port, self.tls, "--ldaps-port"))
            for port, tls, option in wanted:
                if port is not None:
                    self.sockets += [(sock, tls) for sock in _listening(self.host, port, option)]
        except BadInput:
            self.close()
            raise
        return [
            ("ldaps" if tls is not None else "LDAP", *sock.getsockname()[:2]) for sock, tls in self.sockets
        ]

    def filenos(self) -> list[int]:
        """The listening sockets' descriptors (for a forked process that must not keep them)."""
        return [sock.fileno() for sock, _ in self.sockets]

    def close(self) -> None:
        """Close the listening sockets (in a process that does not serve them)."""
        for sock, _ in self.sockets:
            sock.close()
        self.sockets = []

    async def _start(self) -> None:
        for sock, tls in self.sockets:
            self.servers.append(await asyncio.start_server(self._client, sock=sock, ssl=tls))

    def _shutdown(self) -> None:
        assert self.loop is not None
        for server in self.servers:
            server.close()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.call_later(0.2, self.loop.stop)

    def _run(self) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        for server in self.servers:
            server.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    def start(self) -> None:
        """Serve the bound ports (:meth:`listen` first) from a thread of this process."""
        self.pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="ams-ldap")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="ams-ldap", daemon=True)
        self.thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._shutdown)
            self.thread.join(10)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.close()

    def serve(self, instance: Instance) -> None:
        """Serve in this process until SIGTERM or SIGINT, then stop (the LDAP process of
        ``ams serve --workers N``; ``instance`` is this process's own, as a worker's is)."""
        self.instance = instance
        stop = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # the listener's threads inherit it
        self.start()
        try:
            signal.sigwait(stop)
        finally:
            self.stop()
