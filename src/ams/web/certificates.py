"""The Password settings page: per scope (the agent store and each directory), its encryption
certificates and its password policy.

The same service calls as ``ams certs new|activate|export|import|lost`` and ``ams password
policy``. An exported PFX goes straight to the browser as a download (nothing is kept on the
server); an imported one is read from the upload, which is bounded by :data:`MAX_PFX_BYTES`.
Marking a key lost asks first, naming how many devices will be made to rotate.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response

from ams.errors import AMSError, BadInput, WeakPassword
from ams.security.policy import password_rule
from ams.web import forms
from ams.web._render import FORM_BODY, checked_post, instance_of, now_of, render
from ams.web.session import ConsoleRefused, current

__all__ = ["MAX_PFX_BYTES", "router"]

router = APIRouter(include_in_schema=False, max_body_size=FORM_BODY)
# A PFX of one certificate and its RSA key is a few kilobytes; this leaves room for chains.
MAX_PFX_BYTES = 256 * 1024
_POLICY_FIELDS = ("length", "max_age_days", "history_keep_count", "history_keep_days")


def _scopes(instance: Any) -> list[tuple[str, str]]:
    from ams.directory import directories

    found = [("agent", "Access Manager Agent")]
    for d in directories.list_directories(instance):
        if d.stage != "Deleted":
            found.append((d.id, f"{d.dns_name} ({d.id})"))
    return found


def _page(request: Request, session: Any, scope: str, **context: Any) -> Response:
    from ams.vault import certificates
    from ams.vault.policy import get_policy

    instance = instance_of(request)
    try:
        certificates.check_scope(scope)
        certs = certificates.list_certificates(instance, scope)
        with instance.session() as db:
            policy = get_policy(db, scope)
    except AMSError as exc:
        raise ConsoleRefused(exc, session) from None
    now = now_of(request)
    values: dict[str, Any] = {
        "scope": scope,
        "scopes": _scopes(instance),
        "certs": certs,
        "policy": policy,
        "now": now,
        "csrf": forms.form_for(forms.CsrfOnlyForm, None, secret=session.csrf_secret, now=now),
        "rule": password_rule("PFX password"),
        "message": None,
        "error": None,
        "export_error": None,
        "import_error": None,
        "policy_error": None,
        "confirm_lost": None,
    }
    values.update(context)
    status_code = values.pop("status_code", 200)
    return render(request, "certificates.html", values, session=session, status_code=status_code)


def _back(scope: str, done: str) -> Response:
    return RedirectResponse(f"/certificates?scope={quote(scope)}&done={done}", status_code=303)


_DONE = {
    "generated": "A new certificate was generated.",
    "activated": "The certificate is now the active one of its scope.",
    "imported": "The certificate was imported.",
    "restored": "The private key of the lost certificate is back: its passwords read again.",
    "policy": "The password policy was saved.",
}


@router.get("/certificates")
def certificates_page(request: Request) -> Response:
    session = current(request)
    scope = request.query_params.get("scope") or "agent"
    done = _DONE.get(request.query_params.get("done", ""))
    return _page(request, session, scope, message=done)


@router.post("/certificates/generate")
async def generate(request: Request) -> Response:
    from ams.vault import certificates

    session, data = await checked_post(request)
    scope = str(data.get("scope") or "")
    try:
        await asyncio.to_thread(
            certificates.create,
            instance_of(request),
            scope,
            session.actor,
            activate=bool(data.get("activate")),
        )
    except AMSError as exc:
        return _page(request, session, scope or "agent", error=exc.message, status_code=exc.http_status)
    return _back(scope, "generated")


@router.post("/certificates/{thumbprint}/activate")
async def activate(request: Request, thumbprint: str) -> Response:
    from ams.vault import certificates

    session, data = await checked_post(request)
    scope = str(data.get("scope") or "agent")
    try:
        info = await asyncio.to_thread(certificates.activate, instance_of(request), thumbprint, session.actor)
    except AMSError as exc:
        return _page(request, session, scope, error=exc.message, status_code=exc.http_status)
    return _back(info.scope, "activated")


@router.post("/certificates/{thumbprint}/export")
async def export(request: Request, thumbprint: str) -> Response:
    from ams.vault import certificates

    session, data = await checked_post(request)
    scope = str(data.get("scope") or "agent")
    password, confirm = str(data.get("password") or ""), str(data.get("confirm") or "")
    if password != confirm:
        return _page(
            request, session, scope, export_error=(thumbprint, "the two passwords differ"), status_code=400
        )
    try:
        pfx = await asyncio.to_thread(
            certificates.export,
            instance_of(request),
            thumbprint,
            password,
            session.actor,
            compat=bool(data.get("compat")),
        )
    except WeakPassword as exc:
        return _page(request, session, scope, export_error=(thumbprint, exc.message), status_code=422)
    except AMSError as exc:
        return _page(request, session, scope, error=exc.message, status_code=exc.http_status)
    name = "".join(c for c in thumbprint if c.isalnum())[:64] or "certificate"
    return Response(
        pfx,
        media_type="application/x-pkcs12",
        headers={"Content-Disposition": f'attachment; filename="{name}.pfx"', "Cache-Control": "no-store"},
    )


@router.post("/certificates/import", max_body_size=MAX_PFX_BYTES + FORM_BODY)
async def import_pfx(request: Request) -> Response:
    from ams.vault import certificates

    session, data = await checked_post(request)
    scope = str(data.get("scope") or "agent")
    upload = data.get("pfx")
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise BadInput("choose the PFX file to import")
        content = await upload.read(MAX_PFX_BYTES + 1)
        if len(content) > MAX_PFX_BYTES:
            raise BadInput(
                f"the file is larger than {MAX_PFX_BYTES // 1024} KiB: that is not a PFX of one certificate"
            )
        # An empty password is allowed: openssl and Windows write such files.
        result = await asyncio.to_thread(
            certificates.import_pfx,
            instance_of(request),
            content,
            str(data.get("password") or ""),
            scope,
            session.actor,
            activate=bool(data.get("activate")),
        )
    except AMSError as exc:
        return _page(request, session, scope, import_error=exc.message, status_code=exc.http_status)
    return _back(result.certificate.scope, "restored" if result.restored else "imported")


@router.post("/certificates/{thumbprint}/lost")
async def mark_lost(request: Request, thumbprint: str) -> Response:
    from ams.vault import certificates

    session, data = await checked_post(request)
    scope = str(data.get("scope") or "agent")
    instance = instance_of(request)
    if data.get("confirm") != "yes":
        try:
            info = certificates.get(instance, thumbprint)
        except AMSError as exc:
            return _page(request, session, scope, error=exc.message, status_code=exc.http_status)
        return _page(request, session, info.scope, confirm_lost=info)
    try:
        result = await asyncio.to_thread(certificates.lost, instance, thumbprint, session.actor)
    except AMSError as exc:
        return _page(request, session, scope, error=exc.message, status_code=exc.http_status)
    replacement = f" New active certificate: {result.replacement.thumbprint}." if result.replacement else ""
    return _page(
        request,
        session,
        result.certificate.scope,
        message=(
            f"Certificate {result.certificate.thumbprint} is marked lost; {result.expired_passwords} "
            f"device passwords were expired and rotate at their next check-in.{replacement}"
        ),
    )


@router.post("/certificates/policy")
async def policy(request: Request) -> Response:
    from ams.vault.policy import set_policy

    session, data = await checked_post(request)
    scope = str(data.get("scope") or "agent")
    changes: dict[str, Any] = {}
    try:
        for name in _POLICY_FIELDS:
            raw = str(data.get(name) or "").strip()
            if raw:
                if not raw.isdigit() or len(raw) > 9:
                    raise BadInput(f"{name.replace('_', '-')} must be a whole number")
                changes[name] = int(raw)
        account = str(data.get("account") or "").strip()
        if account:
            changes["account"] = account
        await asyncio.to_thread(set_policy, instance_of(request), scope, session.actor, **changes)
    except AMSError as exc:
        return _page(request, session, scope, policy_error=exc.message, status_code=exc.http_status)
    return _back(scope, "policy")
