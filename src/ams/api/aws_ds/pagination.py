"""Opaque, tamper-evident NextToken values, and paging a list with Limit/NextToken.

A token says where the next page starts (the offset and the id of the last item handed
out) and is bound to the operation and its filters. It is MACed with a key derived from
the caller's secret access key, so a token is worth nothing to another key, and any change
to it is refused with InvalidNextTokenException. Nothing is stored on the server.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ams import crypto
from ams.api.aws_ds.protocol import AwsError

__all__ = ["Pager", "page"]

T = TypeVar("T")
_MAX_TOKEN = 2048


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Pager:
    """Issues and checks tokens for one caller (``secret``) and one query."""

    secret: str
    operation: str
    query: dict[str, Any]

    def _key(self) -> bytes:
        return hmac.new(self.secret.encode(), b"ams-aws-ds-next-token-v1", hashlib.sha256).digest()

    def _fingerprint(self) -> str:
        canonical = json.dumps([self.operation, self.query], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def issue(self, offset: int, last_id: str) -> str:
        payload = _b64(json.dumps({"v": 1, "q": self._fingerprint(), "n": offset, "l": last_id}).encode())
        mac = _b64(hmac.new(self._key(), payload.encode(), hashlib.sha256).digest())
        return f"{payload}.{mac}"

    def read(self, token: str) -> tuple[int, str]:
        bad = AwsError(
            "InvalidNextTokenException",
            "the NextToken is not one this server issued for this request and key: "
            "start again without NextToken",
        )
        payload, _, mac = token.partition(".")
        if len(token) > _MAX_TOKEN or not payload or not mac:
            raise bad
        expected = _b64(hmac.new(self._key(), payload.encode(), hashlib.sha256).digest())
        if not crypto.constant_time_equal(expected, mac):
            raise bad
        try:
            data = json.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            raise bad from None
        if (
            not isinstance(data, dict)
            or data.get("v") != 1
            or data.get("q") != self._fingerprint()
            or not isinstance(data.get("n"), int)
            or not isinstance(data.get("l"), str)
        ):
            raise bad
        return data["n"], data["l"]


def page(
    items: Sequence[T],
    *,
    limit: int | None,
    token: str | None,
    pager: Pager,
    id_of: Callable[[T], str],
    default_limit: int = 100,
) -> tuple[list[T], str | None]:
    """One page of ``items`` and the token for the next one (None on the last page).

    The next page starts after the item the previous one ended with, so deleting items
    between calls neither repeats nor skips the ones that remain; if that item itself is
    gone, it starts at the same position.
    """
    start = 0
    if token is not None:
        offset, last_id = pager.read(token)
        ids = [id_of(item) for item in items]
        start = ids.index(last_id) + 1 if last_id in ids else min(offset, len(items))
    size = limit if limit else default_limit  # Limit 0 means "the server's default", as on AWS
    chunk = list(items[start : start + size])
    if start + size < len(items) and chunk:
        return chunk, pager.issue(start + size, id_of(chunk[-1]))
    return chunk, None
