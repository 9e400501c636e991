"""Directory tables (added by the directory capability)."""

from __future__ import annotations

__all__: list[str] = []
