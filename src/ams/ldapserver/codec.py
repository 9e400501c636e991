"""LDAPv3 messages to and from bytes: ldap3's ASN.1 definitions (RFC 4511) over pyasn1's BER.

Nothing here parses BER by hand: :func:`message_size` only reads the outer length (the
framing of one message on the stream, as ldap3's own client does), and
:func:`decode` / the builders hand the rest to pyasn1.
"""

from __future__ import annotations

from typing import Any

from ldap3.protocol import rfc4511
from ldap3.protocol.rfc2696 import RealSearchControlValue
from ldap3.protocol.rfc4511 import (
    AddResponse,
    BindResponse,
    CompareResponse,
    Control,
    DelResponse,
    ExtendedResponse,
    LDAPMessage,
    ModifyDNResponse,
    ModifyResponse,
    ProtocolOp,
    SearchResultDone,
)
from pyasn1.codec.ber import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import namedtype, tag, univ

__all__ = [
    "MAX_MESSAGE",
    "PAGED_RESULTS",
    "ProtocolError",
    "decode",
    "encode_entry",
    "encode_extended",
    "encode_result",
    "message_size",
    "paged_control",
    "paged_request",
]

PAGED_RESULTS = "1.2.840.113556.1.4.319"
# The largest request accepted; a client that announces more is cut off (slapd's default
# sockbuf_max_incoming_auth is 4 MiB).
MAX_MESSAGE = 4 * 1024 * 1024


# -- the request side's schema -----------------------------------------------------------------
#
# ldap3 only ever encodes requests, and its recursive Filter does not decode: its And, Or and
# Not instances inside Filter are made before their component types and the [2] tag of Not
# are set. The requests are therefore decoded against the same definitions with a Filter
# built level by level (nesting up to FILTER_DEPTH: deeper is refused as a protocol error).

FILTER_DEPTH = 8


def _filter_type(depth: int) -> univ.Choice:
    leaves = [
        namedtype.NamedType("equalityMatch", rfc4511.EqualityMatch()),
        namedtype.NamedType("substringFilter", rfc4511.SubstringFilter()),
        namedtype.NamedType("greaterOrEqual", rfc4511.GreaterOrEqual()),
        namedtype.NamedType("lessOrEqual", rfc4511.LessOrEqual()),
        namedtype.NamedType("present", rfc4511.Present()),
        namedtype.NamedType("approxMatch", rfc4511.ApproxMatch()),
        namedtype.NamedType("extensibleMatch", rfc4511.ExtensibleMatch()),
    ]
    if depth > 0:
        inner = _filter_type(depth - 1)

        def context(number: int) -> tag.Tag:
            return tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, number)

        leaves = [
            namedtype.NamedType("and", univ.SetOf(componentType=inner).subtype(implicitTag=context(0))),
            namedtype.NamedType("or", univ.SetOf(componentType=inner).subtype(implicitTag=context(1))),
            namedtype.NamedType("notFilter", inner.subtype(explicitTag=context(2))),
            *leaves,
        ]
    return univ.Choice(componentType=namedtype.NamedTypes(*leaves))


class _SearchRequest(univ.Sequence):  # type: ignore[misc]  # pyasn1 has no types
    tagSet = rfc4511.SearchRequest.tagSet
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("baseObject", rfc4511.LDAPDN()),
        namedtype.NamedType("scope", rfc4511.Scope()),
        namedtype.NamedType("derefAliases", rfc4511.DerefAliases()),
        namedtype.NamedType("sizeLimit", rfc4511.Integer0ToMax()),
        namedtype.NamedType("timeLimit", rfc4511.Integer0ToMax()),
        namedtype.NamedType("typesOnly", rfc4511.TypesOnly()),
        namedtype.NamedType("filter", _filter_type(FILTER_DEPTH)),
        namedtype.NamedType("attributes", rfc4511.AttributeSelection()),
    )


class _RequestOp(univ.Choice):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("bindRequest", rfc4511.BindRequest()),
        namedtype.NamedType("unbindRequest", rfc4511.UnbindRequest()),
        namedtype.NamedType("searchRequest", _SearchRequest()),
        namedtype.NamedType("modifyRequest", rfc4511.ModifyRequest()),
        namedtype.NamedType("addRequest", rfc4511.AddRequest()),
        namedtype.NamedType("delRequest", rfc4511.DelRequest()),
        namedtype.NamedType("modDNRequest", rfc4511.ModifyDNRequest()),
        namedtype.NamedType("compareRequest", rfc4511.CompareRequest()),
        namedtype.NamedType("abandonRequest", rfc4511.AbandonRequest()),
        namedtype.NamedType("extendedReq", rfc4511.ExtendedRequest()),
    )


class _RequestMessage(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("messageID", rfc4511.MessageID()),
        namedtype.NamedType("protocolOp", _RequestOp()),
        namedtype.OptionalNamedType("controls", rfc4511.Controls()),
    )


class ProtocolError(Exception):
    """The bytes are not an LDAP message: the connection is closed."""


def message_size(buffer: bytes | bytearray) -> int:
    """The size of the first message in ``buffer``: -1 while its header is incomplete."""
    if not buffer:
        return -1
    if buffer[0] != 0x30:  # every LDAPMessage is a SEQUENCE
        raise ProtocolError("not an LDAP message")
    if len(buffer) < 2:
        return -1
    first = buffer[1]
    if first < 0x80:
        return first + 2
    count = first & 0x7F
    if count == 0 or count > 4:
        raise ProtocolError("indefinite or oversized length")
    if len(buffer) < 2 + count:
        return -1
    size = int.from_bytes(buffer[2 : 2 + count], "big") + 2 + count
    if size > MAX_MESSAGE:
        raise ProtocolError("message too large")
    return size


def decode(data: bytes) -> Any:
    """One request LDAPMessage (exactly ``data``)."""
    try:
        message, rest = decoder.decode(data, asn1Spec=_RequestMessage())
    except (PyAsn1Error, ValueError, TypeError) as exc:
        raise ProtocolError(f"undecodable message: {type(exc).__name__}") from None
    if rest:
        raise ProtocolError("trailing bytes after the message")
    return message


def _message(message_id: int, name: str, op: Any, controls: list[tuple[str, bytes]] | None = None) -> bytes:
    message = LDAPMessage()
    message["messageID"] = message_id
    protocol_op = ProtocolOp()
    protocol_op[name] = op
    message["protocolOp"] = protocol_op
    if controls:
        seq = message.getComponentByName("controls")
        for i, (oid, value) in enumerate(controls):
            control = Control()
            control["controlType"] = oid
            control["criticality"] = False
            control["controlValue"] = value
            seq[i] = control
    return bytes(encoder.encode(message))


_RESULTS: dict[str, Any] = {
    "bindResponse": BindResponse,
    "searchResDone": SearchResultDone,
    "modifyResponse": ModifyResponse,
    "addResponse": AddResponse,
    "delResponse": DelResponse,
    "modDNResponse": ModifyDNResponse,
    "compareResponse": CompareResponse,
}


class _Fields(dict[str, Any]):
    """A SEQUENCE's components as plain Python values, for pyasn1's encoder with a schema
    (``encoder.encode(value, asn1Spec=...)``): no pyasn1 object is built per component, which
    makes a search's answer about four times cheaper to encode, byte for byte the same.
    An OPTIONAL component left out reads as None (pyasn1 looks it up before it asks whether
    it is there) and is not encoded."""

    def __missing__(self, key: str) -> None:
        return None


_MESSAGE = LDAPMessage()


def _encode_native(message_id: int, name: str, op: _Fields) -> bytes:
    return bytes(encoder.encode(_Fields(messageID=message_id, protocolOp={name: op}), asn1Spec=_MESSAGE))


def encode_result(
    message_id: int,
    name: str,
    code: int,
    message: str = "",
    matched: str = "",
    controls: list[tuple[str, bytes]] | None = None,
) -> bytes:
    if not controls:
        fields = _Fields(resultCode=code, matchedDN=matched.encode("utf-8"))
        fields["diagnosticMessage"] = message.encode("utf-8")
        return _encode_native(message_id, name, fields)
    result = _RESULTS[name]()
    result["resultCode"] = code
    result["matchedDN"] = matched.encode("utf-8")
    result["diagnosticMessage"] = message.encode("utf-8")
    return _message(message_id, name, result, controls)


def encode_extended(
    message_id: int, code: int, message: str = "", name: str | None = None, value: bytes | None = None
) -> bytes:
    result = ExtendedResponse()
    result["resultCode"] = code
    result["matchedDN"] = b""
    result["diagnosticMessage"] = message.encode("utf-8")
    if name is not None:
        result["responseName"] = name
    if value is not None:
        result["responseValue"] = value
    # Message id 0 is the unsolicited Notice of Disconnection (RFC 4511 4.4.1).
    return _message(message_id, "extendedResp", result)


def encode_entry(message_id: int, dn: str, attributes: list[tuple[str, list[bytes]]]) -> bytes:
    listed = [_Fields(type=name.encode("utf-8"), vals=values) for name, values in attributes]
    return _encode_native(message_id, "searchResEntry", _Fields(object=dn.encode("utf-8"), attributes=listed))


def paged_request(controls: Any) -> tuple[int, bytes, bool] | None:
    """The paged-results control of a request, as (size, cookie, critical), or None."""
    if controls is None or not controls.hasValue():
        return None
    for control in controls:
        if str(control["controlType"]) == PAGED_RESULTS:
            critical = bool(control["criticality"]) if control["criticality"].hasValue() else False
            raw = bytes(control["controlValue"]) if control["controlValue"].hasValue() else b""
            try:
                value, _ = decoder.decode(raw, asn1Spec=RealSearchControlValue())
            except (PyAsn1Error, ValueError, TypeError) as exc:
                raise ProtocolError("undecodable paged results control") from exc
            return int(value["size"]), bytes(value["cookie"]), critical
    return None


def critical_controls(controls: Any) -> list[str]:
    """The OIDs of critical controls other than paged results (to refuse, as RFC 4511 says)."""
    if controls is None or not controls.hasValue():
        return []
    out = []
    for control in controls:
        critical = bool(control["criticality"]) if control["criticality"].hasValue() else False
        if critical and str(control["controlType"]) != PAGED_RESULTS:
            out.append(str(control["controlType"]))
    return out


def paged_control(size: int, cookie: bytes) -> tuple[str, bytes]:
    value = RealSearchControlValue()
    value["size"] = size
    value["cookie"] = cookie
    return PAGED_RESULTS, bytes(encoder.encode(value))
