"""Recognises uploads by their first bytes, never by the name or content type a client claims."""

from typing import NamedTuple

from shared.schemas import MediaKind

# Enough bytes to recognise every supported container.
SNIFF_BYTES = 16
# ISO-BMFF brands of still images (HEIF/AVIF): they share MP4's 'ftyp' box but are no videos.
_STILL_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"avif",
                                 b"avis"})


class MediaType(NamedTuple):
    """What an upload really is."""

    kind: MediaKind
    mime: str


def sniff_media_type(head: bytes) -> MediaType | None:
    """The media type the leading bytes of a file announce, or None when it is unsupported."""
    if head.startswith(b"\xff\xd8\xff"):
        return MediaType("image", "image/jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaType("image", "image/png")
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return MediaType("image", "image/gif")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaType("image", "image/webp")
    if head.startswith(b"BM"):
        return MediaType("image", "image/bmp")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return MediaType("image", "image/tiff")
    if head.startswith(b"%PDF-"):
        return MediaType("pdf", "application/pdf")
    if head[4:8] == b"ftyp" and head[8:12] not in _STILL_IMAGE_BRANDS:
        return MediaType("video", "video/quicktime" if head[8:12] == b"qt  " else "video/mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return MediaType("video", "video/webm")
    return None
