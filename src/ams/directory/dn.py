"""Distinguished names: split into RDNs and normalised for case-insensitive comparison."""

from __future__ import annotations

import functools

from ams.errors import BadInput
from ams.textcheck import check_text

__all__ = ["depth", "normalise", "parent", "rdns"]


def rdns(dn: str) -> list[str]:
    """The RDNs of ``dn`` (leftmost first), split on commas that are not escaped."""
    if "\\" not in dn:  # no escapes: every comma separates (most DNs; str.split is C)
        return dn.split(",")
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in dn:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


@functools.lru_cache(maxsize=65536)
def _normalise_rdn(rdn: str) -> str:
    # Cached: a directory's DNs share their upper RDNs (ou=..., dc=...), and a restore's
    # equality index normalises every member DN of every group.
    # A multi-valued RDN (a=1+b=2) is kept in the order given.
    out = []
    for ava in rdn.split("+"):
        attr, sep, value = ava.partition("=")
        if not sep or not attr.strip():
            raise BadInput(f"{rdn.strip()!r} is not a valid RDN: write it as attribute=value")
        out.append(f"{attr.strip().lower()}={value.strip().lower()}")
    return "+".join(out)


def normalise(dn: str) -> str:
    """``CN=Alice , OU=People,dc=Example`` → ``cn=alice,ou=people,dc=example``.

    Enough for uniqueness and lookups: attribute names and values compare without case and
    without the spaces around separators; escapes are kept as written. A DN that is not
    text (a lone surrogate, NUL) is refused (PostgreSQL could not even be asked for a
    NUL).
    """
    if not isinstance(dn, str) or not dn.strip():
        raise BadInput("the DN is empty: give one like cn=alice,ou=people,dc=example,dc=com")
    check_text(dn, "the DN")
    return ",".join(_normalise_rdn(r) for r in rdns(dn))


def parent(dn_norm: str) -> str | None:
    """The normalised parent DN, or None for a one-RDN DN."""
    parts = rdns(dn_norm)
    return ",".join(parts[1:]) if len(parts) > 1 else None


def depth(dn: str) -> int:
    return len(rdns(dn))
