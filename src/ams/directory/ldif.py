"""LDIF (RFC 2849) content records: read and write.

Read: an optional ``version: 1`` line, comments (``#``, also folded), folded lines (a line
starting with one space continues the one before), ``attr: value``, ``attr:: base64``,
CRLF or LF line ends. A base64 value is text when it decodes to UTF-8 without NUL, else
binary. Refused with the line number: change records (``changetype:``, ``control:``),
values from URLs (``attr:< url``), bad base64, lines that are not UTF-8, a NUL in a plain
value, a DN that is not text, an objectClass that is not one line of text, lines that are
not ``attr: value``, records without ``dn:`` or without an objectClass.

Write: each entry (objectClass values first), values that are not
SAFE-STRING base64-encoded, lines folded at 76 characters, one blank line between records.
``slapcat`` output reads, and what is written loads into ``slapadd``.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections.abc import Iterable, Iterator
from typing import IO

from ams.directory.entry import Entry, Value, check_attribute_name, text_or_bytes
from ams.errors import BadInput, LdifInvalid
from ams.textcheck import check_name

__all__ = ["FOLD_AT", "dump", "emit", "parse"]

FOLD_AT = 76


def _fail(line: int, what: str) -> LdifInvalid:
    return LdifInvalid(f"LDIF line {line}: {what}; nothing was imported")


def _physical_lines(data: bytes | IO[bytes]) -> Iterable[bytes]:
    if isinstance(data, bytes):
        return data.split(b"\n")
    # A file (an upload spooled to disk) is read a line at a time, never whole.
    return (line[:-1] if line.endswith(b"\n") else line for line in data)


def _logical_lines(data: bytes | IO[bytes]) -> Iterator[tuple[int, str | None]]:
    """Unfolded lines with the number of their first physical line; None marks a record
    separator (an empty line). Comments are dropped here."""
    current: list[str] | None = None
    start = 0
    in_comment = False
    for number, raw in enumerate(_physical_lines(data), start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(number, "is not UTF-8 text (binary values must be base64, as attr:: ...)") from None
        if text.startswith(" "):
            if in_comment:
                continue
            if current is None:
                raise _fail(number, "a continuation line (starting with a space) follows nothing")
            current.append(text[1:])
            continue
        if current is not None:
            yield start, "".join(current)
            current = None
        in_comment = False
        if text.startswith("#"):
            in_comment = True
            continue
        if text == "":
            yield number, None
            continue
        current = [text]
        start = number
    if current is not None:
        yield start, "".join(current)


def _split(line_no: int, line: str) -> tuple[str, Value]:
    name, sep, rest = line.partition(":")
    if not sep:
        raise _fail(line_no, f"{_clip(line)!r} is not 'attribute: value'")
    try:
        check_attribute_name(name)
    except BadInput:
        raise _fail(line_no, f"{_clip(name)!r} is not an attribute name") from None
    if rest.startswith(":"):
        encoded = rest[1:].strip(" ")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(line_no, f"the base64 value of {name} is not valid base64") from None
        # Text when it is text (UTF-8, no NUL); anything else stays binary.
        return name, text_or_bytes(raw)
    if rest.startswith("<"):
        raise _fail(
            line_no,
            f"values from URLs ({name}:< ...) are not supported: put the value in the file "
            f"base64-encoded, as {name}:: ...",
        )
    if "\x00" in rest:
        raise _fail(
            line_no,
            f"the value of {name} holds a NUL character: binary values must be base64, as {name}:: ...",
        )
    return name, rest.lstrip(" ")


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def parse(data: bytes | str | IO[bytes]) -> Iterator[Entry]:
    """The entries of an LDIF file, one at a time (errors carry the line number). ``data``
    may be an open binary file, read from where it stands, a line at a time."""
    if isinstance(data, str):
        text = data
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate (JSON can carry one)
            number = text.count("\n", 0, exc.start) + 1
            raise _fail(number, "is not UTF-8 text (it holds an unpaired surrogate)") from None
    if isinstance(data, bytes):
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
    else:
        start = data.tell()
        if data.read(3) != b"\xef\xbb\xbf":
            data.seek(start)
    record: list[tuple[int, str]] = []
    first_record = True
    for line_no, line in itertools.chain(_logical_lines(data), [(0, None)]):
        if line is not None:
            record.append((line_no, line))
            continue
        if not record:
            continue
        if first_record:
            first_record = False
            head_no, head = record[0]
            name, _, value = head.partition(":")
            if name.lower() == "version":
                if value.strip() != "1":
                    raise _fail(head_no, f"LDIF version {value.strip()!r} is not supported (only version: 1)")
                record = record[1:]
                if not record:
                    continue
        yield _entry(record)
        record = []


def _name(line_no: int, value: str, what: str) -> str:
    try:
        return check_name(value, what)
    except BadInput as exc:
        raise _fail(line_no, exc.message) from None


def _entry(record: list[tuple[int, str]]) -> Entry:
    dn_no, dn_line = record[0]
    name, value = _split(dn_no, dn_line)
    if name.lower() != "dn":
        raise _fail(dn_no, f"a record must start with 'dn:', not {_clip(dn_line)!r}")
    if isinstance(value, bytes):
        raise _fail(dn_no, "the DN is not text (it must be UTF-8 without NUL)")
    if not value.strip():
        raise _fail(dn_no, "the DN is empty")
    classes: list[str] = []
    attributes: dict[str, list[Value]] = {}
    keys: dict[str, str] = {}
    for line_no, line in record[1:]:
        attr, val = _split(line_no, line)
        lowered = attr.lower()
        if lowered in ("changetype", "control"):
            raise _fail(
                line_no,
                f"change records ({attr}: ...) are not supported: give plain entries, as slapcat "
                "or `ams directory export` write them",
            )
        if lowered == "dn":
            raise _fail(line_no, "a second dn: line in one record (records are separated by an empty line)")
        if lowered == "objectclass":
            if isinstance(val, bytes):
                raise _fail(line_no, "an objectClass value is not text (it must be UTF-8 without NUL)")
            classes.append(_name(line_no, val, "an objectClass value"))
            continue
        key = keys.setdefault(lowered, attr)
        attributes.setdefault(key, []).append(val)
    if not classes:
        raise _fail(dn_no, f"entry {_clip(value)!r} has no objectClass")
    return Entry(dn=value, object_classes=classes, attributes=attributes)


def _safe(value: str) -> bool:
    """SAFE-STRING of RFC 2849 (and no trailing space, which tools strip)."""
    if value == "":
        return True
    if value[0] in " :<" or value[-1] == " ":
        return False
    return all(0 < ord(c) < 128 and c not in "\r\n" for c in value)


def _fold(line: str) -> str:
    if len(line) <= FOLD_AT:
        return line + "\n"
    parts = [line[:FOLD_AT]]
    rest = line[FOLD_AT:]
    step = FOLD_AT - 1
    parts.extend(" " + rest[i : i + step] for i in range(0, len(rest), step))
    return "\n".join(parts) + "\n"


def _line(name: str, value: Value) -> str:
    if value == "":
        return f"{name}:\n"
    if isinstance(value, str) and _safe(value):
        return _fold(f"{name}: {value}")
    # surrogatepass: even a str that is not text (which no write lets in) is written, as bytes.
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return _fold(f"{name}:: {base64.b64encode(raw).decode('ascii')}")


def emit(entries: Iterable[Entry], *, version: bool = False) -> Iterator[str]:
    """LDIF text, one record (ending with its blank line) at a time.

    No ``version: 1`` line unless asked: slapadd refuses one (it reads it as an attribute of
    an entry without a DN), and slapcat writes none.
    """
    if version:
        yield "version: 1\n\n"
    for entry in entries:
        parts = [_line("dn", entry.dn)]
        parts.extend(_line("objectClass", c) for c in entry.object_classes)
        for name, values in entry.attributes.items():
            parts.extend(_line(name, v) for v in values)
        parts.append("\n")
        yield "".join(parts)


def dump(entries: Iterable[Entry], *, version: bool = False) -> str:
    return "".join(emit(entries, version=version))
