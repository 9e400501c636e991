"""The answers' encoding: pyasn1's encoder over plain values with ldap3's schema gives the
same bytes as the same message built from ldap3's pyasn1 objects (the slower way)."""

from __future__ import annotations

from typing import Any

import pytest
from ldap3.protocol.rfc4511 import (
    Attribute,
    AttributeValue,
    LDAPMessage,
    PartialAttributeList,
    ProtocolOp,
    SearchResultDone,
    SearchResultEntry,
    Vals,
)
from pyasn1.codec.ber import decoder, encoder

from ams.ldapserver import codec


def _wrapped(message_id: int, name: str, op: Any) -> bytes:
    message = LDAPMessage()
    message["messageID"] = message_id
    protocol_op = ProtocolOp()
    protocol_op[name] = op
    message["protocolOp"] = protocol_op
    return bytes(encoder.encode(message))


def _entry_from_objects(message_id: int, dn: str, attributes: list[tuple[str, list[bytes]]]) -> bytes:
    entry = SearchResultEntry()
    entry["object"] = dn.encode("utf-8")
    partial = PartialAttributeList()
    for i, (name, values) in enumerate(attributes):
        attribute = Attribute()
        attribute["type"] = name.encode("utf-8")
        vals = Vals()
        for j, value in enumerate(values):
            vals[j] = AttributeValue(value)
        attribute["vals"] = vals
        partial[i] = attribute
    entry["attributes"] = partial
    return _wrapped(message_id, "searchResEntry", entry)


@pytest.mark.parametrize(
    "message_id, dn, attributes",
    [
        (1, "", []),
        (7, "CN=Zoë Ångström,OU=People,DC=corp,DC=example,DC=com",
         [("objectClass", [b"top", b"person"]), ("cn", ["Zoë Ångström".encode()]),
          ("jpegPhoto", [bytes(range(256)) * 3]), ("description", [])]),
        (2**31 - 1, "uid=u1,dc=x", [("memberOf", [b"cn=g%d,dc=x" % i for i in range(300)])]),
    ],
)  # fmt: skip
def test_an_entry_encodes_as_from_ldap3_objects(
    message_id: int, dn: str, attributes: list[tuple[str, list[bytes]]]
) -> None:
    encoded = codec.encode_entry(message_id, dn, attributes)
    assert encoded == _entry_from_objects(message_id, dn, attributes)
    decoded, rest = decoder.decode(encoded, asn1Spec=LDAPMessage())
    assert rest == b"" and int(decoded["messageID"]) == message_id
    entry = decoded["protocolOp"]["searchResEntry"]
    assert bytes(entry["object"]).decode() == dn
    assert [
        (bytes(a["type"]).decode(), [bytes(v) for v in a["vals"]]) for a in entry["attributes"]
    ] == attributes


@pytest.mark.parametrize(
    "code, message, matched",
    [(0, "", ""), (32, "", "OU=People,DC=x"), (52, "directory d-1 is restoring", "")],
)
def test_a_result_encodes_as_from_ldap3_objects(code: int, message: str, matched: str) -> None:
    done = SearchResultDone()
    done["resultCode"] = code
    done["matchedDN"] = matched.encode()
    done["diagnosticMessage"] = message.encode()
    assert codec.encode_result(9, "searchResDone", code, message, matched) == _wrapped(
        9, "searchResDone", done
    )
