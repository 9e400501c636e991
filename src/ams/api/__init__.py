"""The HTTP interfaces: admin REST API, health and metrics (agent and AWS-compatible APIs later)."""

from __future__ import annotations

from ams.api.app import create_app

__all__ = ["create_app"]
