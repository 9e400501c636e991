"""Text that AMS stores must be storable and readable back: checked once, at the service edge.

A Python ``str`` may hold what no UTF-8 byte string can (a lone surrogate such as U+D800,
which JSON can spell as ``"\\ud800"``), and NUL, which PostgreSQL text refuses and C
tools cut at. Both are refused with :class:`~ams.errors.BadInput` (422, exit 12) before
anything is written, with a message that names the field but never echoes the value.
A name (an API key's, an objectClass, a directory's short name) must also be one line of
printable text: no C0 control character (U+0001-U+001F, so no tab, CR or LF), no DEL, no
C1 control, no U+2028/U+2029. (A DN may hold them, escaped or not, as LDAP allows: the
REST path names it whatever it holds.)
"""

from __future__ import annotations

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


def check_name(value: str, what: str) -> str:
    """:func:`check_text`, and no control character (C0, DEL, C1, U+2028/9): a name is one line."""
    check_text(value, what)
    for i, c in enumerate(value):
        if c < " " or "\x7f" <= c <= "\x9f" or c in "\u2028\u2029":
            raise BadInput(
                f"{what} holds a control character (U+{ord(c):04X}) at character {i + 1}: "
                "a name is one line of printable text"
            )
    return value
