"""Probing a verified direct upload: dimensions, duration or pages from headers, nothing decoded."""

import io
import logging
from fractions import Fraction

import av
import pypdfium2 as pdfium

from services.preprocess_worker.config import PreprocessSettings
from services.preprocess_worker.decode import open_image, upright_size
from shared.errors import ErrorCode, TesseraError
from shared.object_store import ObjectStore
from shared.schemas import MediaKind
from shared.upload_store import MediaProbe, UploadError, UploadRecord, UploadStatus, UploadStore

# A probe that kills its worker is redelivered (acks late); this many starts, then the upload fails.
MAX_PROBE_ATTEMPTS = 3
logger = logging.getLogger(__name__)


def probe_upload(*, upload_id: str, uploads: UploadStore, objects: ObjectStore,
                 settings: PreprocessSettings) -> UploadRecord:
    """Probe an upload that is `probing` and mark it `ready` or `failed` (redeliveries no-op).

    Every outcome ends the probe: an unexpected error fails the upload (internal_error), and
    an upload whose probe was started MAX_PROBE_ATTEMPTS times without ending is failed too.
    """

    def started(current: UploadRecord) -> UploadRecord | None:
        if current.status is not UploadStatus.probing:
            return None
        current.probe_attempts += 1
        return current

    record = uploads.update(upload_id, started)
    if record.status is not UploadStatus.probing or record.kind is None \
            or record.content_type is None:
        return record
    if record.probe_attempts > MAX_PROBE_ATTEMPTS:
        logger.error("upload %s: probe started %d times without finishing; failing it",
                     upload_id, record.probe_attempts - 1)
        return _fail(upload_id, uploads, UploadError(
            code=ErrorCode.internal_error,
            message=f"Probing upload {upload_id} stopped the worker {MAX_PROBE_ATTEMPTS} times. "
                    "Re-encode or re-export the file and upload it again; report the upload id "
                    "if it happens again."))
    try:
        probe = probe_media(objects.get_bytes(record.key), record.kind, record.content_type,
                            settings=settings)
    except TesseraError as error:
        return _fail(upload_id, uploads, UploadError(code=error.code, message=error.message))
    except Exception:
        # S3, Pillow or PyAV failing in an unforeseen way must not leave the upload probing.
        logger.exception("upload %s: probe failed unexpectedly", upload_id)
        return _fail(upload_id, uploads, UploadError(
            code=ErrorCode.internal_error,
            message=f"Upload {upload_id} could not be probed because of an internal error. "
                    "Create a new upload and try again; report the upload id if it happens "
                    "again."))

    return _end_probe(upload_id, uploads, status=UploadStatus.ready, probe=probe)


def _fail(upload_id: str, uploads: UploadStore, failure: UploadError) -> UploadRecord:
    """Mark a probing upload failed with failure (an upload no longer probing is kept)."""
    return _end_probe(upload_id, uploads, status=UploadStatus.failed, error=failure)


def _end_probe(upload_id: str, uploads: UploadStore, **outcome: object) -> UploadRecord:
    """Set the probe's outcome on an upload still probing (a redelivered probe changes none)."""

    def end(current: UploadRecord) -> UploadRecord | None:
        if current.status is not UploadStatus.probing:
            return None
        return current.model_copy(update=outcome)

    return uploads.update(upload_id, end)


def probe_media(data: bytes, kind: MediaKind, content_type: str, *,
                settings: PreprocessSettings) -> MediaProbe:
    """What the headers of an image, video or PDF say; limits are checked as in preprocessing."""
    if kind == "image":
        image = open_image(data, max_pixels=settings.MAX_IMAGE_PIXELS,
                           max_aspect=settings.MAX_ASPECT_RATIO)
        width, height = upright_size(image)
        return MediaProbe(kind=kind, content_type=content_type, width=width, height=height)
    if kind == "pdf":
        return MediaProbe(kind=kind, content_type=content_type, pages=_pdf_pages(data))
    return _probe_video(data, content_type)


def _pdf_pages(data: bytes) -> int:
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise TesseraError(ErrorCode.decode_failed,
                           "The file is not a readable PDF, or it is password-protected: "
                           "re-export it (without a password) and upload it again.") from exc
    try:
        return len(pdf)
    finally:
        pdf.close()


def _probe_video(data: bytes, content_type: str) -> MediaProbe:
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            streams = [stream for stream in container.streams.video
                       if not stream.disposition & av.stream.Disposition.attached_pic]
            if not streams:
                raise TesseraError(ErrorCode.unsupported_media,
                                   "The file has no video stream (is it audio only?): send a "
                                   "video file.")
            stream = streams[0]
            duration = None
            if stream.duration and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / av.time_base
            rate: Fraction | None = stream.average_rate
            return MediaProbe(kind="video", content_type=content_type,
                              width=stream.codec_context.width,
                              height=stream.codec_context.height, duration_seconds=duration,
                              frame_rate=float(rate) if rate else None)
    except av.FFmpegError as exc:
        raise TesseraError(ErrorCode.decode_failed,
                           "The video's container could not be read; it may be truncated or "
                           "damaged: re-encode it (H.264 in MP4 works everywhere) and upload "
                           "it again.") from exc
