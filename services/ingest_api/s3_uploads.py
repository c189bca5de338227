"""S3 calls of direct uploads: presigned PUT and part URLs, multipart completion, verification.

The MinIO SDK (7.2) exposes multipart creation, listing and completion only as underscore
methods (`_create_multipart_upload`, `_list_parts`, `_complete_multipart_upload`,
`_abort_multipart_upload`); this module is the one place that calls them.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from minio.datatypes import Part
from minio.error import S3Error

from shared.object_store import ObjectStore
from shared.settings import BaseServiceSettings

_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StoredObject:
    """An uploaded object as read back: its size, SHA-256 and first bytes."""

    size: int
    sha256: str
    head: bytes


class DirectUploads:
    """Presigns for the host clients reach, and completes and reads back through the store."""

    def __init__(self, objects: ObjectStore, settings: BaseServiceSettings,
                 public_endpoint: str | None) -> None:
        self.objects = objects
        # Presigning is local computation (the region is configured), so a client for the public
        # host works even where that host does not resolve from inside the cluster.
        signer = objects if public_endpoint is None else ObjectStore(
            settings.model_copy(update={"S3_ENDPOINT": public_endpoint}))
        self._signer = signer.client

    def presigned_put(self, key: str, expires: timedelta) -> str:
        """A URL that stores the whole object with one PUT."""
        return self._signer.get_presigned_url("PUT", self.objects.bucket, key, expires=expires)

    def create_multipart(self, key: str, content_type: str) -> str:
        """Start a multipart upload; returns its S3 upload id."""
        return self.objects.client._create_multipart_upload(
            self.objects.bucket, key, {"Content-Type": content_type})

    def presigned_part(self, key: str, s3_upload_id: str, part_number: int,
                       expires: timedelta) -> str:
        """A URL that stores one part of a multipart upload with one PUT."""
        return self._signer.get_presigned_url(
            "PUT", self.objects.bucket, key, expires=expires,
            extra_query_params={"partNumber": str(part_number), "uploadId": s3_upload_id})

    def uploaded_parts(self, key: str, s3_upload_id: str) -> dict[int, str]:
        """The parts S3 holds so far, as part number → ETag (at most 1000 parts)."""
        listing = self.objects.client._list_parts(self.objects.bucket, key, s3_upload_id)
        return {part.part_number: part.etag for part in listing.parts}

    def complete_multipart(self, key: str, s3_upload_id: str, parts: dict[int, str]) -> None:
        """Join the parts into the object (S3Error when a part is missing or too small)."""
        self.objects.client._complete_multipart_upload(
            self.objects.bucket, key, s3_upload_id,
            [Part(number, etag) for number, etag in sorted(parts.items())])

    def abort_multipart(self, key: str, s3_upload_id: str) -> None:
        """Drop a multipart upload and the parts stored so far."""
        try:
            self.objects.client._abort_multipart_upload(self.objects.bucket, key, s3_upload_id)
        except S3Error as error:
            if error.code != "NoSuchUpload":
                raise

    def size(self, key: str) -> int | None:
        """The stored object's size, or None when nothing was uploaded yet."""
        try:
            return self.objects.client.stat_object(self.objects.bucket, key).size
        except S3Error as error:
            if error.code in {"NoSuchKey", "NoSuchObject"}:
                return None
            raise

    def snapshot(self, key: str, target: str) -> int | None:
        """Copy key to target inside S3; the copy's size, or None when nothing is at key."""
        try:
            self.objects.copy(key, target)
        except S3Error as error:
            if error.code in {"NoSuchKey", "NoSuchObject"}:
                return None
            raise
        return self.size(target)

    def read_back(self, key: str, head_bytes: int) -> StoredObject:
        """Stream the stored object once to hash it and keep its first bytes."""
        digest = hashlib.sha256()
        head = b""
        size = 0
        for chunk in self._chunks(key):
            if len(head) < head_bytes:
                head += chunk[:head_bytes - len(head)]
            digest.update(chunk)
            size += len(chunk)
        return StoredObject(size, digest.hexdigest(), head)

    def delete(self, key: str) -> None:
        """Remove the object (refused uploads are not kept)."""
        self.objects.client.remove_object(self.objects.bucket, key)

    def _chunks(self, key: str) -> Iterator[bytes]:
        response = self.objects.client.get_object(self.objects.bucket, key)
        try:
            yield from response.stream(_CHUNK_BYTES)
        finally:
            response.close()
            response.release_conn()
