"""HTTP routes of presigned direct uploads (`/v1/uploads`)."""

import threading
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from services.ingest_api.deps import ProducerDep, SettingsDep
from services.ingest_api.media_source_settings import MediaSourceSettings
from services.ingest_api.s3_uploads import DirectUploads
from services.ingest_api.uploads import (
    UploadComplete,
    UploadCreate,
    UploadCreated,
    UploadPublic,
    complete_upload,
    create_upload,
    get_upload,
)
from shared.http_api import ObjectStoreDep, ReaderDep, SubmitterDep
from shared.upload_store import UploadStore

router = APIRouter(prefix="/v1", tags=["uploads"])


@lru_cache
def get_media_source_settings() -> MediaSourceSettings:
    """Presigned-upload and URL-fetch settings, read once from the environment."""
    return MediaSourceSettings()


MediaSourceSettingsDep = Annotated[MediaSourceSettings, Depends(get_media_source_settings)]


# Sync dependencies run in the threadpool: two first requests must not build two clients.
_BUILD_LOCK = threading.Lock()


def get_uploads(request: Request, settings: MediaSourceSettingsDep) -> UploadStore:
    """The upload store on the job store's Redis connection, built once per app."""
    state = request.app.state
    with _BUILD_LOCK:
        if getattr(state, "uploads", None) is None:
            state.uploads = UploadStore(state.jobs.redis, settings.KEY_PREFIX)
        store: UploadStore = state.uploads
    return store


def get_direct_uploads(request: Request, objects: ObjectStoreDep,
                       settings: MediaSourceSettingsDep) -> DirectUploads:
    """The S3 side of direct uploads, built once per app."""
    state = request.app.state
    with _BUILD_LOCK:
        if getattr(state, "direct_uploads", None) is None:
            state.direct_uploads = DirectUploads(objects, settings, settings.S3_PUBLIC_ENDPOINT)
        direct: DirectUploads = state.direct_uploads
    return direct


UploadStoreDep = Annotated[UploadStore, Depends(get_uploads)]
DirectUploadsDep = Annotated[DirectUploads, Depends(get_direct_uploads)]


@router.post("/uploads", status_code=201, response_model=UploadCreated,
             summary="Announce a large file; answers with presigned S3 URLs to PUT it to")
def create(body: UploadCreate, principal: SubmitterDep, settings: SettingsDep,
           sources: MediaSourceSettingsDep, uploads: UploadStoreDep,
           direct: DirectUploadsDep) -> UploadCreated:
    """Presign one PUT, or one per part when `parts` > 1."""
    return create_upload(request=body, tenant_id=principal.tenant_id, settings=sources,
                         max_bytes=settings.max_bytes, uploads=uploads, direct=direct)


@router.post("/uploads/{upload_id}/complete", response_model=UploadPublic,
             summary="Verify the uploaded bytes (size, SHA-256, type) and queue the media probe")
def complete(upload_id: str, body: UploadComplete, principal: SubmitterDep,
             settings: SettingsDep, uploads: UploadStoreDep, direct: DirectUploadsDep,
             producer: ProducerDep) -> UploadPublic:
    """Verified uploads become `probing`, then `ready` once a worker has read their headers."""
    record = complete_upload(upload_id=upload_id, tenant_id=principal.tenant_id, request=body,
                             max_bytes=settings.max_bytes, uploads=uploads, direct=direct,
                             producer=producer)
    return UploadPublic.from_record(record)


@router.get("/uploads/{upload_id}", response_model=UploadPublic,
            summary="An upload's status and, once ready, its probe")
def read(upload_id: str, principal: ReaderDep, uploads: UploadStoreDep) -> UploadPublic:
    """Poll until `ready` (or `failed`, with its error)."""
    return UploadPublic.from_record(get_upload(upload_id=upload_id, tenant_id=principal.tenant_id,
                                               uploads=uploads))
