"""Vault tables (added by the vault capability)."""

from __future__ import annotations

__all__: list[str] = []
