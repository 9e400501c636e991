"""Certificates tables (added by the certificates capability)."""

from __future__ import annotations

__all__: list[str] = []
