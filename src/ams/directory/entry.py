"""One directory entry, and how its values are kept as JSON.

A value is text (``str``) when it is valid UTF-8 without NUL, and bytes otherwise; in JSON
(the database, the snapshot file, the REST API) bytes travel as ``{"base64": "..."}``.
Writes refuse text that breaks this (:func:`ams.textcheck.check_text`); reads turn whatever
an older version stored into something every interface can return: a stored string that is
not such text comes back as bytes (its UTF-8 bytes, a lone surrogate as its 3 bytes), and a
DN or objectClass with a lone surrogate comes back with U+FFFD in its place.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ams.errors import BadInput

__all__ = [
    "Entry",
    "Value",
    "check_attribute_name",
    "decode_values",
    "encode_values",
    "readable",
    "text_or_bytes",
]

Value = str | bytes

# An attribute description: a name (or numeric OID) and options such as ;binary or ;lang-en.
_ATTR = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*")


def check_attribute_name(name: str) -> str:
    if not isinstance(name, str) or not _ATTR.fullmatch(name):
        raise BadInput(
            f"{name!r} is not an attribute name: letters, digits and hyphens, starting with a letter"
        )
    return name


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def text_or_bytes(raw: bytes) -> Value:
    """``raw`` as text when it is UTF-8 without NUL, else the bytes themselves."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    return text if "\x00" not in text else raw


def readable(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD: a name that can always be shown."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def _encode_value(value: Value) -> Any:
    """Text stays a JSON string; anything else (bytes, or a str that is not text) is base64,
    so what is written can always be read and answered."""
    if isinstance(value, str):
        if _is_text(value):
            return value
        value = value.encode("utf-8", "surrogatepass")
    shown = text_or_bytes(value)
    return shown if isinstance(shown, str) else {"base64": base64.b64encode(value).decode("ascii")}


def _stored_value(raw: Any) -> Value:
    """A value as stored (by this version or an older one): a string that is not text is bytes."""
    value = _decode_value(raw, "a stored value")
    if isinstance(value, str) and not _is_text(value):
        return value.encode("utf-8", "surrogatepass")
    return value


def _decode_value(raw: Any, where: str = "a value") -> Value:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, dict) and set(raw) == {"base64"} and isinstance(raw["base64"], str):
        try:
            return base64.b64decode(raw["base64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(f"{where}: the base64 value is not valid base64") from None
    raise BadInput(f'{where}: a value must be a string or {{"base64": "..."}}')


def encode_values(attributes: dict[str, list[Value]]) -> str:
    return json.dumps(
        {name: [_encode_value(v) for v in values] for name, values in attributes.items()},
        ensure_ascii=True,
        separators=(",", ":"),
    )


def decode_values(text: str) -> dict[str, list[Value]]:
    """The attributes of a stored row (see :func:`_stored_value`)."""
    return {name: [_stored_value(v) for v in values] for name, values in json.loads(text).items()}


def attributes_from_json(raw: Any) -> dict[str, list[Value]]:
    """Attributes as a client sends them: {"cn": ["x"]} or {"cn": "x"}, bytes as {"base64": ...}."""
    if not isinstance(raw, dict):
        raise BadInput('attributes must be an object like {"cn": ["Alice"]}')
    out: dict[str, list[Value]] = {}
    for name, values in raw.items():
        check_attribute_name(name)
        if not isinstance(values, list):
            values = [values]
        out[name] = [_decode_value(v, f"attribute {name}") for v in values]
    return out


@dataclass(frozen=True)
class Entry:
    dn: str
    object_classes: list[str]
    attributes: dict[str, list[Value]] = field(default_factory=dict)

    def get(self, name: str) -> list[Value]:
        lowered = name.lower()
        for key, values in self.attributes.items():
            if key.lower() == lowered:
                return values
        return []

    def to_dict(self) -> dict[str, Any]:
        return {
            "dn": readable(self.dn),
            "object_classes": [readable(c) for c in self.object_classes],
            "attributes": {n: [_encode_value(v) for v in vs] for n, vs in self.attributes.items()},
        }
