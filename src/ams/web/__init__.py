"""The web console, served by ``ams serve`` beside the REST and AWS-compatible APIs.

Server-rendered (Jinja2), forms with CSRF tokens (WTForms), a vendored htmx for the parts of
pages that update themselves, and nothing fetched from another host.
"""

from __future__ import annotations

from ams.web.pages import install

__all__ = ["install"]
