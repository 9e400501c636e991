"""Backups tables (added by the backups capability)."""

from __future__ import annotations

__all__: list[str] = []
