"""Settings of the media sources beyond a plain upload: presigned direct uploads and URLs."""

import ipaddress

from pydantic import Field

from shared.settings import BaseServiceSettings
from shared.ssrf import IPNetwork


class MediaSourceSettings(BaseServiceSettings):
    """Presigned-upload and URL-fetch settings (a mixin of the ingest API's settings)."""

    # Where clients reach S3 (presigned URLs are signed for this host); S3_ENDPOINT when unset.
    S3_PUBLIC_ENDPOINT: str | None = None
    UPLOAD_URL_EXPIRES_SECONDS: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    # How long a completed upload can be used by new jobs; an S3 lifecycle rule on `uploads/`
    # should expire the objects after the same time and abort incomplete multipart uploads
    # (AbortIncompleteMultipartUpload).
    UPLOAD_RETENTION_SECONDS: int = Field(default=24 * 3600, ge=600)
    URL_FETCH_TIMEOUT_SECONDS: float = Field(default=60.0, gt=0)
    URL_FETCH_ALLOW_HTTP: bool = False
    # Comma-separated CIDRs that media URLs may reach although not public (an internal media
    # server, or 127.0.0.0/8 in tests); cloud metadata addresses stay refused.
    URL_FETCH_ALLOWED_NETWORKS: str = ""

    @property
    def url_fetch_allowed_networks(self) -> tuple[IPNetwork, ...]:
        """URL_FETCH_ALLOWED_NETWORKS, parsed."""
        return tuple(ipaddress.ip_network(item.strip())
                     for item in self.URL_FETCH_ALLOWED_NETWORKS.split(",") if item.strip())
