"""The Security page: the master key, the recovery password, and the unlock form.

The same keyring calls as ``ams security recovery-password set`` and ``ams security
unlock``. A generated recovery password is shown once, on the answer to the form that made
it, and never again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ams.errors import AMSError, WeakPassword
from ams.security.policy import password_rule
from ams.web import forms
from ams.web._render import FORM_BODY, checked_post, instance_of, now_of, posted_form, render
from ams.web.session import current

__all__ = ["router"]

router = APIRouter(include_in_schema=False, max_body_size=FORM_BODY)

RECOVERY_WARNING = (
    "Keep the recovery password offline (on paper, in a safe). It is the only way to open a "
    "backup on another machine. Without the service key and without the recovery password, "
    "nothing AMS keeps can be recovered, by anyone."
)


def _page(request: Request, session: Any, **context: Any) -> Response:
    instance = instance_of(request)
    keyring = instance.keyring
    now = now_of(request)
    defaults: dict[str, Any] = {
        "state": str(keyring.state),
        "fingerprint": keyring.fingerprint,
        "lock_reason": keyring.lock_reason,
        "service_key": keyring.source.describe(),
        "set_at": keyring.recovery_password_set_at(),
        "rule": password_rule("recovery password"),
        "warning": RECOVERY_WARNING,
        "recovery_form": forms.form_for(
            forms.RecoveryPasswordForm, None, secret=session.csrf_secret, now=now
        ),
        "generate_form": forms.form_for(forms.CsrfOnlyForm, None, secret=session.csrf_secret, now=now),
        "unlock_form": forms.form_for(forms.UnlockForm, None, secret=session.csrf_secret, now=now),
        "generated": None,
        "message": None,
        "error": None,
    }
    defaults.update(context)
    status_code = defaults.pop("status_code", 200)
    return render(request, "security.html", defaults, session=session, status_code=status_code)


@router.get("/security")
def security_page(request: Request) -> Response:
    return _page(request, current(request))


@router.post("/security/recovery-password")
async def set_recovery_password(request: Request) -> Response:
    session, form, valid = await posted_form(request, forms.RecoveryPasswordForm)
    instance = instance_of(request)
    if not valid:
        return _page(request, session, recovery_form=form, status_code=400)
    if not form.password.data:
        form.password.errors = ["type the new recovery password twice, or generate one"]
        return _page(request, session, recovery_form=form, status_code=400)
    try:
        set_at = await asyncio.to_thread(
            instance.keyring.set_recovery_password, form.password.data, session.actor
        )
    except WeakPassword as exc:
        form.password.errors = [exc.message]
        form.password.data = form.confirm.data = ""
        return _page(request, session, recovery_form=form, status_code=422)
    except AMSError as exc:
        return _page(request, session, error=exc.message, status_code=exc.http_status)
    return _page(
        request, session, message=f"The recovery password was replaced at {set_at:%Y-%m-%d %H:%M} UTC."
    )


@router.post("/security/recovery-password/generate")
async def generate_recovery_password(request: Request) -> Response:
    from ams import crypto

    session, _data = await checked_post(request)
    instance = instance_of(request)
    password = crypto.generate_recovery_password()
    try:
        set_at = await asyncio.to_thread(instance.keyring.set_recovery_password, password, session.actor)
    except AMSError as exc:
        return _page(request, session, error=exc.message, status_code=exc.http_status)
    return _page(
        request,
        session,
        generated=password,
        message=f"The recovery password was replaced at {set_at:%Y-%m-%d %H:%M} UTC.",
    )


@router.post("/security/unlock")
async def unlock(request: Request) -> Response:
    session, form, valid = await posted_form(request, forms.UnlockForm)
    instance = instance_of(request)
    if not valid:
        return _page(request, session, unlock_form=form, status_code=400)
    if str(instance.keyring.state) == "unlocked":
        return _page(request, session, message="The master key is already unlocked.")
    try:
        await asyncio.to_thread(
            instance.keyring.unlock_with_recovery_password, form.password.data, session.actor
        )
    except AMSError as exc:
        form.password.errors = [exc.message]
        form.password.data = ""
        return _page(request, session, unlock_form=form, status_code=exc.http_status)
    return _page(request, session, message="The master key is unlocked; a new service key was written.")
