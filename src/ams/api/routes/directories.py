"""/api/v1/directories (with their objects and snapshots) and /api/v1/snapshots."""

from __future__ import annotations

import tempfile
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from ams.api import limits
from ams.api.deps import AdminKey, CurrentInstance, ReaderKey
from ams.directory import directories, ldif, objects, snapshots
from ams.directory.entry import Entry, attributes_from_json
from ams.errors import BadInput

router = APIRouter(tags=["directories"], max_body_size=limits.NO_BODY)
_LDIF_IN_MEMORY = 1024 * 1024


class _DnConvertor(Convertor[str]):
    """A DN in the path, whatever it holds: Starlette's ``path`` (``.*``) stops at a line
    feed, so an entry whose DN has one could be added but never named again."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("dn", _DnConvertor())


def _actor(key: Any) -> str:
    return f"apikey:{key.id}"


class DirectoryCreate(BaseModel):
    dns_name: str = Field(min_length=1, max_length=255)
    short_name: str | None = None
    type: str = "MicrosoftAD"
    edition: str = "Standard"
    region: str = "us-east-1"
    additional_regions: list[str] = Field(default_factory=list)
    description: str | None = None
    size: str | None = None


class EntryCreate(BaseModel):
    dn: str = Field(min_length=1)
    object_classes: list[str] = Field(default_factory=list)
    attributes: dict[str, Any] = Field(default_factory=dict)


class EntryModify(BaseModel):
    replace: dict[str, Any] = Field(default_factory=dict)
    add: dict[str, Any] = Field(default_factory=dict)
    delete: dict[str, Any] = Field(default_factory=dict)


class SnapshotCreate(BaseModel):
    name: str | None = Field(default=None, max_length=128)


@router.get("/api/v1/directories")
def list_directories(instance: CurrentInstance, _key: ReaderKey) -> list[dict[str, Any]]:
    return [d.to_dict() for d in directories.list_directories(instance)]


@router.post("/api/v1/directories", status_code=status.HTTP_201_CREATED, max_body_size=limits.ADMIN_JSON)
def create_directory(body: DirectoryCreate, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    return directories.create(
        instance,
        dns_name=body.dns_name,
        short_name=body.short_name,
        type=body.type,
        edition=body.edition,
        region=body.region,
        additional_regions=body.additional_regions,
        description=body.description,
        size=body.size,
        actor=_actor(key),
    ).to_dict()


@router.get("/api/v1/directories/{directory_id}")
def show_directory(directory_id: str, instance: CurrentInstance, _key: ReaderKey) -> dict[str, Any]:
    return directories.get(instance, directory_id).to_dict()


@router.delete("/api/v1/directories/{directory_id}")
def delete_directory(directory_id: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    return directories.delete(instance, directory_id, actor=_actor(key)).to_dict()


# Objects (entries). A DN travels in the path, percent-encoded (commas and = may stay).


@router.get("/api/v1/directories/{directory_id}/objects")
def list_objects(
    directory_id: str,
    instance: CurrentInstance,
    _key: ReaderKey,
    base: str | None = None,
    contains: str | None = None,
    region: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[dict[str, Any]]:
    entries = objects.list_entries(
        instance, directory_id, base=base, contains=contains, region=region, limit=limit, offset=offset
    )
    return [e.to_dict() for e in entries]


@router.post(
    "/api/v1/directories/{directory_id}/objects",
    status_code=status.HTTP_201_CREATED,
    max_body_size=limits.DIRECTORY_ENTRY,
)
def add_object(
    directory_id: str, body: EntryCreate, instance: CurrentInstance, key: AdminKey
) -> dict[str, Any]:
    entry = Entry(body.dn, list(body.object_classes), attributes_from_json(body.attributes))
    return objects.add(instance, directory_id, entry, actor=_actor(key)).to_dict()


@router.get("/api/v1/directories/{directory_id}/objects/{dn:dn}")
def read_object(
    directory_id: str, dn: str, instance: CurrentInstance, _key: ReaderKey, region: str | None = None
) -> dict[str, Any]:
    return objects.get(instance, directory_id, dn, region=region).to_dict()


@router.patch("/api/v1/directories/{directory_id}/objects/{dn:dn}", max_body_size=limits.DIRECTORY_ENTRY)
def modify_object(
    directory_id: str, dn: str, body: EntryModify, instance: CurrentInstance, key: AdminKey
) -> dict[str, Any]:
    return objects.modify(
        instance,
        directory_id,
        dn,
        replace=attributes_from_json(body.replace),
        add=attributes_from_json(body.add),
        delete=attributes_from_json(body.delete),
        actor=_actor(key),
    ).to_dict()


@router.delete("/api/v1/directories/{directory_id}/objects/{dn:dn}")
def delete_object(directory_id: str, dn: str, instance: CurrentInstance, key: AdminKey) -> dict[str, Any]:
    return objects.delete(instance, directory_id, dn, actor=_actor(key)).to_dict()


@router.post("/api/v1/directories/{directory_id}/import", max_body_size=limits.LDIF_IMPORT)
async def import_ldif(
    directory_id: str, request: Request, instance: CurrentInstance, key: AdminKey
) -> dict[str, Any]:
    """Import an LDIF body (content records only); all entries or none."""
    # Up to limits.LDIF_IMPORT, spooled to an unnamed 0600 temporary file as it arrives
    # (LDIF may carry password hashes): the first MiB in memory, the rest on disk.
    with tempfile.SpooledTemporaryFile(max_size=_LDIF_IN_MEMORY) as spool:
        async for chunk in request.stream():
            spool.write(chunk)
        size = spool.tell()
        spool.seek(0)
        if size < _LDIF_IN_MEMORY and not spool.read().strip():
            raise BadInput(
                "the request body is empty: send LDIF (content type text/plain or application/ldif)"
            )
        spool.seek(0)

        # One transaction: a bad line anywhere rolls back every entry before it.
        def work() -> int:
            return objects.import_entries(instance, directory_id, ldif.parse(spool), actor=_actor(key))

        count = await run_in_threadpool(work)
    return {"directory_id": directory_id, "imported": count}


@router.get("/api/v1/directories/{directory_id}/export", response_class=PlainTextResponse)
def export_ldif(directory_id: str, instance: CurrentInstance, _key: ReaderKey) -> PlainTextResponse:
    text = ldif.dump(objects.iter_entries(instance, directory_id))
    return PlainTextResponse(text, media_type="text/plain; charset=utf-8")


# Snapshots.


@router.get("/api/v1/directories/{directory_id}/snapshots")
def list_directory_snapshots(
    directory_id: str, instance: CurrentInstance, _key: ReaderKey
) -> list[dict[str, Any]]:
    return [s.to_dict() for s in snapshots.list_snapshots(instance, directory_id)]


@router.post(
    "/api/v1/directories/{directory_id}/snapshots",
    status_code=status.HTTP_201_CREATED,
    max_body_size=limits.ADMIN_JSON,
)
def create_snapshot(
    directory_id: str,
    instance: CurrentInstance,
    key: AdminKey,
    body: SnapshotCreate | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    name = body.name if body is not None else None
    return snapshots.create(instance, directory_id, name=name, region=region, actor=_actor(key)).to_dict()


@router.get("/api/v1/directories/{directory_id}/snapshots/limits")
def snapshot_limits(directory_id: str, instance: CurrentInstance, _key: ReaderKey) -> dict[str, Any]:
    return snapshots.limits(instance, directory_id).to_dict()


@router.get("/api/v1/snapshots")
def list_all_snapshots(
    instance: CurrentInstance, _key: ReaderKey, directory_id: str | None = None
) -> list[dict[str, Any]]:
    return [s.to_dict() for s in snapshots.list_snapshots(instance, directory_id)]


@router.get("/api/v1/snapshots/{snapshot_id}")
def show_snapshot(snapshot_id: str, instance: CurrentInstance, _key: ReaderKey) -> dict[str, Any]:
    return snapshots.get(instance, snapshot_id).to_dict()


@router.post("/api/v1/snapshots/{snapshot_id}/restore", status_code=status.HTTP_202_ACCEPTED)
def restore_snapshot(
    snapshot_id: str, instance: CurrentInstance, key: AdminKey, region: str | None = None
) -> dict[str, Any]:
    """Start the restore and answer at once: the directory is Restoring; poll it until Active."""
    return snapshots.restore(instance, snapshot_id, region=region, actor=_actor(key)).to_dict()


@router.delete("/api/v1/snapshots/{snapshot_id}")
def delete_snapshot(
    snapshot_id: str, instance: CurrentInstance, key: AdminKey, region: str | None = None
) -> dict[str, Any]:
    return snapshots.delete(instance, snapshot_id, region=region, actor=_actor(key)).to_dict()
