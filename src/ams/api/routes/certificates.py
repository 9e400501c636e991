"""/api/v1/certificates"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel

from ams.api import limits
from ams.api.deps import AdminKey, CurrentInstance, ReaderKey, UnlockedBox
from ams.vault import certificates

router = APIRouter(prefix="/api/v1/certificates", tags=["certificates"], max_body_size=limits.ADMIN_JSON)


class CertificateCreate(BaseModel):
    scope: str
    activate: bool = False


def _with_pem(info: certificates.CertificateInfo) -> dict[str, Any]:
    return {**info.to_dict(), "pem": info.pem}


@router.get("")
def list_certificates(
    instance: CurrentInstance, _key: ReaderKey, scope: str | None = Query(default=None)
) -> list[dict[str, Any]]:
    """Every certificate, expired and lost ones too, with the passwords encrypted to each."""
    return [i.to_dict() for i in certificates.list_certificates(instance, scope)]


@router.get("/{thumbprint}")
def get_certificate(thumbprint: str, instance: CurrentInstance, _key: ReaderKey) -> dict[str, Any]:
    """One certificate, with its PEM (never its private key)."""
    return _with_pem(certificates.get(instance, thumbprint))


@router.post("", status_code=status.HTTP_201_CREATED)
def create_certificate(
    body: CertificateCreate, instance: CurrentInstance, key: AdminKey, _box: UnlockedBox
) -> dict[str, Any]:
    """Generate a certificate for a scope (RSA-4096, 20 years)."""
    return _with_pem(certificates.create(instance, body.scope, f"apikey:{key.id}", activate=body.activate))


@router.post("/{thumbprint}/activate")
def activate_certificate(thumbprint: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    """Make a certificate the active one of its scope."""
    return certificates.activate(instance, thumbprint, f"apikey:{key.id}").to_dict()


@router.post("/{thumbprint}/lost")
def certificate_lost(thumbprint: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    """Declare a private key lost (see `ams certs lost`)."""
    return certificates.lost(instance, thumbprint, f"apikey:{key.id}").to_dict()
