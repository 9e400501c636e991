"""The console's forms (WTForms), every one CSRF-protected.

WTForms parses and validates the fields and renders their errors beside them; the CSRF
token is WTForms' own hidden field, filled and checked by :class:`SessionBoundCSRF`: an
HMAC-SHA256, under a secret that belongs to one console session, of the token's expiry.
A token from another session, an expired one or none at all fails the form. Before login
(the login form itself) the secret is a random value in a short-lived cookie, so a page
on another site cannot log a browser in to an account of its choosing either.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from wtforms import Form, HiddenField, PasswordField, StringField
from wtforms.csrf.core import CSRF
from wtforms.form import BaseForm
from wtforms.validators import DataRequired, Length, ValidationError

from ams import crypto

__all__ = ["CsrfOnlyForm", "LoginForm", "RecoveryPasswordForm", "SessionBoundCSRF", "UnlockForm", "form_for"]

TOKEN_LIFETIME = timedelta(hours=12)


class SessionBoundCSRF(CSRF):
    """CSRF tokens ``<expiry>.<hmac>`` bound to a secret of the session (``meta.csrf_context``)."""

    def setup_form(self, form: BaseForm) -> Any:
        context: Any = form.meta.csrf_context
        self.secret: str = context["secret"]
        self.now: datetime = context["now"]
        return super().setup_form(form)

    def generate_csrf_token(self, csrf_token_field: Any) -> str:
        expires = str(int((self.now + TOKEN_LIFETIME).timestamp()))
        return f"{expires}.{crypto.sign_token(self.secret, 'csrf:' + expires)}"

    def validate_csrf_token(self, form: BaseForm, field: Any) -> None:
        expires, _, mac = (field.data or "").partition(".")
        if not expires.isdigit() or not crypto.constant_time_equal(
            mac, crypto.sign_token(self.secret, "csrf:" + expires)
        ):
            raise ValidationError("the form's security token is missing or wrong: reload the page")
        if int(expires) < self.now.timestamp():
            raise ValidationError("the form has expired: reload the page and send it again")


class _ConsoleForm(Form):
    class Meta:
        csrf = True
        csrf_class = SessionBoundCSRF


def form_for(form_class: type[Form], formdata: Any, *, secret: str, now: datetime, **kwargs: Any) -> Any:
    """A form bound to the posted data (or none) and to the CSRF secret of this browser."""
    return form_class(formdata, meta={"csrf_context": {"secret": secret, "now": now}}, **kwargs)


class CsrfOnlyForm(_ConsoleForm):
    """A button that changes state and carries nothing but the token (logout, Backup now)."""


class LoginForm(_ConsoleForm):
    name = StringField("User name", validators=[DataRequired("type your user name"), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired("type your password"), Length(max=1024)])
    next = HiddenField()


class RecoveryPasswordForm(_ConsoleForm):
    password = PasswordField("New recovery password", validators=[Length(max=1024)])
    confirm = PasswordField("The same again", validators=[Length(max=1024)])

    def validate_confirm(self, field: Any) -> None:
        if self.password.data and field.data != self.password.data:
            raise ValidationError("the two passwords differ")


class UnlockForm(_ConsoleForm):
    password = PasswordField(
        "Recovery password", validators=[DataRequired("type the recovery password"), Length(max=1024)]
    )
