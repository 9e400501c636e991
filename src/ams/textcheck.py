"""Text that AMS stores must be storable and readable back: checked once, at the service edge.

A Python ``str`` may hold what no UTF-8 byte string can (a lone surrogate such as U+D800,
which JSON can spell as ``"\\ud800"``), and NUL, which PostgreSQL text refuses and C
tools cut at. Both are refused with :class:`~ams.errors.BadInput` (422, exit 12) before
anything is written, with a message that names the field but never echoes the value.

A *name* (of an API key, a registration key, a device, a snapshot, a directory's short name
or description) is one line that people read in lists and logs: :func:`check_name` also
refuses every other control character (C0, DEL, C1: escape sequences, newlines, tabs) and
the Unicode line and paragraph separators.
"""

from __future__ import annotations

import unicodedata

from ams.errors import BadInput

__all__ = ["check_name", "check_text"]


def check_text(value: str, what: str) -> str:
    """``value`` unchanged when it is text UTF-8 can encode and holds no NUL; else BadInput.

    ``what`` names the field in the message, e.g. ``"the description"`` or ``"attribute cn"``.
    """
    if not isinstance(value, str):
        raise BadInput(f"{what} must be text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadInput(
            f"{what} holds U+{ord(value[exc.start]):04X} at character {exc.start + 1}, a lone "
            "surrogate that is not text (UTF-8 cannot encode it): send valid Unicode text"
        ) from None
    nul = value.find("\x00")
    if nul >= 0:
        raise BadInput(f"{what} holds a NUL character (U+0000) at character {nul + 1}: remove it")
    return value


# Cc: C0 controls, DEL and C1 controls; Zl/Zp: U+2028 and U+2029, which break a line.
_NOT_IN_A_NAME = frozenset({"Cc", "Zl", "Zp"})


def check_name(value: str, what: str) -> str:
    """``value`` unchanged when it is one line of printable text (:func:`check_text`, and no
    control character); else BadInput. ``what`` names the field, e.g. ``"the API key name"``."""
    check_text(value, what)
    for index, char in enumerate(value):
        if unicodedata.category(char) in _NOT_IN_A_NAME:
            raise BadInput(
                f"{what} holds the control character U+{ord(char):04X} at character {index + 1}: "
                "a name is one line of printable text; remove it"
            )
    return value
