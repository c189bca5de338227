"""The S3/MinIO adapter and the one place where object keys are derived from a job id."""

import io
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import BinaryIO, TypeVar
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from pydantic import BaseModel

from shared.settings import BaseServiceSettings

M = TypeVar("M", bound=BaseModel)


class JobKeys:
    """Object keys of one job: a redelivered task rewrites the same keys (idempotent stages)."""

    def __init__(self, job_id: str) -> None:
        self.prefix = f"jobs/{job_id}/"

    def media(self, index: int) -> str:
        """Where the index-th uploaded input is stored."""
        return f"{self.prefix}media/{index}"

    def prepared_manifest(self) -> str:
        """Where the preprocessing worker writes the prepared-inputs manifest."""
        return f"{self.prefix}prepared/manifest.json"

    def prepared_tiles(self, index: int) -> str:
        """Where the tiles of the index-th input are stored (a uint8 .npy array)."""
        return f"{self.prefix}prepared/input-{index}.npy"

    def result(self, run: int) -> str:
        """Where run (the attempt number of the inference stage) stores the job's result; the
        job record names the one that committed, so a stale run never overwrites it."""
        return f"{self.prefix}result-{run}.json"


def _http_client(timeout_seconds: float) -> urllib3.PoolManager:
    """MinIO's own pool waits 5 minutes per read and retries 5 times: a frozen S3 would hold
    a request for half an hour. Reads that timed out are not retried (the request may have
    been applied); refused connections and 5xx answers are, twice."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(timeout_seconds, 5.0), read=timeout_seconds),
        maxsize=32, cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=2, read=0, backoff_factor=0.2,
                              status_forcelist=[500, 502, 503, 504]))


class ObjectStore:
    """Bytes and JSON documents in one bucket."""

    def __init__(self, settings: BaseServiceSettings) -> None:
        endpoint = urlsplit(settings.S3_ENDPOINT)
        self.bucket = settings.S3_BUCKET
        self.client = Minio(
            endpoint.netloc,
            access_key=settings.S3_ACCESS_KEY,
            secret_key=settings.S3_SECRET_KEY.get_secret_value(),
            secure=endpoint.scheme == "https",
            region=settings.S3_REGION,
            http_client=_http_client(settings.S3_TIMEOUT_SECONDS),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet."""
        if not self.client.bucket_exists(self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as error:  # another process created it first
                if error.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store bytes under key, replacing what was there."""
        self.client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                               content_type=content_type)

    def get_bytes(self, key: str) -> bytes:
        """Read the bytes stored under key (KeyError when there are none)."""
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as error:
            if error.code == "NoSuchKey":
                raise KeyError(key) from error
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def put_file(self, key: str, file: BinaryIO, size: int, content_type: str) -> None:
        """Stream size bytes from an open file to key (multipart for large files)."""
        self.client.put_object(self.bucket, key, file, size, content_type=content_type)

    def copy(self, source: str, target: str) -> None:
        """Copy an object inside the bucket; its bytes never pass through this process."""
        self.client.copy_object(self.bucket, target, CopySource(self.bucket, source))

    def put_model(self, key: str, document: BaseModel) -> None:
        """Store a pydantic document as JSON."""
        self.put_bytes(key, document.model_dump_json().encode(), "application/json")

    def get_model(self, key: str, model: type[M]) -> M:
        """Read a JSON document stored by put_model."""
        return model.model_validate_json(self.get_bytes(key))

    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys under prefix, recursively."""
        for item in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
            if item.object_name is not None:
                yield item.object_name

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under prefix."""
        doomed = [DeleteObject(key) for key in self.list_keys(prefix)]
        for failure in self.client.remove_objects(self.bucket, doomed):
            raise RuntimeError(f"could not delete {failure.name}: {failure.message}")

    def presigned_get_url(self, key: str, expires: timedelta) -> str:
        """A URL that reads key without credentials until it expires."""
        return self.client.presigned_get_object(self.bucket, key, expires=expires)
