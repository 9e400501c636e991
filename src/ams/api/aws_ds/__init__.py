"""The AWS Directory Service-compatible endpoint (JSON 1.1 over SigV4) of ``ams serve``.

See docs/aws-compat.md for the endpoint URL, the credentials mapping and the operations.
"""

from __future__ import annotations

from ams.api.aws_ds.router import ENDPOINT_PATH, router

__all__ = ["ENDPOINT_PATH", "router"]
