"""Base64 media inside a JSON body, decoded to temporary files while the body streams in.

A chat body carries its media as `data:` URLs (or bare base64 in `file_data`). Parsing such a
body whole holds it several times over (bytes, str, decoded bytes); here every media string
is decoded in chunks to a spooled temporary file as it arrives and replaced in the JSON by a
short reference, so what is parsed is small and one request costs about one copy of its
media, mostly on disk.
"""

import binascii
import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope

from services.ingest_api.config import get_settings
from shared.errors import ErrorCode, TesseraError, format_size
from shared.media_types import SNIFF_BYTES, sniff_media_type
from shared.schemas import MediaKind

# The JSON of a chat body apart from its media (texts, options, schema).
MAX_INLINE_JSON_BYTES = 8 * 1024 * 1024
# Decoded media up to this size stays in memory; larger spills to disk.
_SPOOL_BYTES = 8 * 1024 * 1024
# Enough of a string to see a data URL's header ("data:<type>;base64,").
_HEAD_BYTES = 512
# (key of the object, key of the string) of the strings that carry media: the url of an
# image_url or video_url part, the file_data of a file part.
_MEDIA_STRINGS = frozenset({(b"image_url", b"url"), (b"video_url", b"url"),
                            (b"file", b"file_data")})
_STRING_END_OR_ESCAPE = re.compile(rb'["\\]')
_DATA_URL_HEAD = re.compile(rb"^data:[^,;]*(?:;[^,;]*)*;base64,")
# A short string just read, kept to know which key the next value belongs to.
_KEY_BYTES = 64


@dataclass
class DataUrlFile:
    """One decoded media string: its temporary file, or why it could not be decoded."""

    file: BinaryIO
    size: int = 0
    invalid: str | None = None


@dataclass
class _Base64Sink:
    """Decodes base64 text in 4-character groups into a temporary file, checking its size
    against the limit for the media kind its first bytes show."""

    target: DataUrlFile
    max_bytes: Callable[[MediaKind | None], int]
    pending: bytes = b""
    head: bytes = b""
    padded: bool = False
    limit: int | None = None

    def write(self, text: bytes) -> None:
        if self.target.invalid:
            return
        text = self.pending + text
        usable = len(text) - len(text) % 4
        self.pending = text[usable:]
        if usable:
            self._decode(text[:usable])

    def close(self) -> None:
        if self.pending and not self.target.invalid:
            self.target.invalid = "its length is not a multiple of 4 (missing padding)"
        self.target.file.seek(0)

    def _decode(self, text: bytes) -> None:
        if self.padded:
            self.target.invalid = "it has data after its padding"
            return
        try:
            data = binascii.a2b_base64(text, strict_mode=True)
        except binascii.Error as error:
            self.target.invalid = str(error)
            return
        self.padded = text.endswith(b"=")
        self.target.file.write(data)
        self.target.size += len(data)
        if self.limit is None:
            self.head += data[:SNIFF_BYTES - len(self.head)]
            if len(self.head) >= SNIFF_BYTES:
                media_type = sniff_media_type(self.head)
                self.limit = self.max_bytes(media_type.kind if media_type else None)
        limit = self.limit if self.limit is not None else self.max_bytes(None)
        if self.target.size > limit:
            raise TesseraError(ErrorCode.media_too_large,
                               f"A data URL in the body decodes to more than "
                               f"{format_size(limit)}, the limit for its kind of media; upload "
                               "large files with POST /v1/uploads.", limit_bytes=limit)


@dataclass
class DataUrlSpool:
    """Rewrites a streamed JSON body: each data: URL (a `url` value) and each `file_data` value
    is decoded into a DataUrlFile and replaced by a reference (see `reference`).

    Only the JSON's string syntax is followed (quotes and escapes); the rewritten body is
    parsed normally afterwards, so anything malformed is refused there.
    """

    max_bytes: Callable[[MediaKind | None], int]
    max_inline_bytes: int
    files: dict[str, DataUrlFile] = field(default_factory=dict)
    out: bytearray = field(default_factory=bytearray)
    _nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    _in_string: bool = False
    _escaped: bool = False
    _value_of: bytes | None = None
    _last_string: bytes | None = None
    # For each open object or array, the key it is the value of.
    _containers: list[bytes | None] = field(default_factory=list)
    _string: bytearray = field(default_factory=bytearray)
    _deciding: bool = False
    _sink: _Base64Sink | None = None

    def is_reference(self, value: str) -> bool:
        """True when value is a reference this spool put in place of a media string."""
        return value in self.files

    def close(self) -> None:
        """Close every temporary file."""
        for item in self.files.values():
            item.file.close()

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the body."""
        position = 0
        while position < len(chunk):
            position = (self._feed_string(chunk, position) if self._in_string
                        else self._feed_structure(chunk, position))
            inline = len(self.out) + (0 if self._sink is not None else len(self._string))
            if inline > self.max_inline_bytes:
                raise TesseraError(ErrorCode.media_too_large,
                                   f"The body's JSON apart from its media is over "
                                   f"{format_size(self.max_inline_bytes)}; send long texts as "
                                   "files.", limit_bytes=self.max_inline_bytes)

    def _feed_structure(self, chunk: bytes, position: int) -> int:
        quote = chunk.find(b'"', position)
        between = chunk[position:] if quote < 0 else chunk[position:quote]
        self.out += between
        for byte in between.translate(None, b" \t\r\n"):
            self._structure(byte)
        if quote < 0:
            return len(chunk)
        self._in_string, self._string = True, bytearray()
        parent = self._containers[-1] if self._containers else None
        self._deciding = (parent, self._value_of) in _MEDIA_STRINGS
        return quote + 1

    def _structure(self, byte: int) -> None:
        """Follow which key the next value belongs to, and the keys of open containers."""
        if byte == ord(":"):
            self._value_of = self._last_string
        elif byte in b"{[":
            self._containers.append(self._value_of)
            self._value_of = None
        elif byte in b"}]":
            if self._containers:
                self._containers.pop()
            self._value_of = None
        else:  # a comma, or a number, true, false or null
            self._value_of = None
        self._last_string = None

    def _feed_string(self, chunk: bytes, position: int) -> int:
        if self._escaped:
            self._take(chunk[position:position + 1], escaped=True)
            self._escaped = False
            return position + 1
        match = _STRING_END_OR_ESCAPE.search(chunk, position)
        end = len(chunk) if match is None else match.start()
        self._take(chunk[position:end], escaped=False)
        if match is None:
            return end
        if chunk[end:end + 1] == b"\\":
            self._escaped = True
            return end + 1
        self._end_string()
        return end + 1

    def _take(self, text: bytes, *, escaped: bool) -> None:
        """Content of the current string (an escaped character comes alone)."""
        if self._sink is not None:
            if escaped and text != b"/":
                # Base64 has no characters JSON must escape; "\/" is the one legal spelling.
                self._sink.target.invalid = self._sink.target.invalid or (
                    "it contains an escaped character")
            self._sink.write(text)
            return
        self._string += (b"\\" + text) if escaped else text
        if self._deciding and len(self._string) >= _HEAD_BYTES:
            self._decide()

    def _decide(self) -> None:
        """Start decoding the current string if it is media, else keep it inline."""
        self._deciding = False
        head = bytes(self._string)
        match = _DATA_URL_HEAD.match(head)
        if match is None and self._value_of != b"file_data":
            return
        reference = f"tessera-data:{self._nonce}:{len(self.files)}"
        target = DataUrlFile(cast(BinaryIO, tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=_SPOOL_BYTES)))
        self.files[reference] = target
        self._sink = _Base64Sink(target, self.max_bytes)
        self._string = bytearray(reference.encode())
        payload = head[match.end():] if match else head
        if b"\\" in payload.replace(b"\\/", b""):
            target.invalid = "it contains an escaped character"
        self._sink.write(payload.replace(b"\\/", b"/"))

    def _end_string(self) -> None:
        if self._deciding:
            self._decide()
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        self.out += b'"' + self._string + b'"'
        self._last_string = bytes(self._string) if len(self._string) <= _KEY_BYTES else None
        self._in_string = False


async def spool_data_urls(body: AsyncIterator[bytes], *,
                          max_bytes: Callable[[MediaKind | None], int],
                          max_inline_bytes: int) -> DataUrlSpool:
    """Read a JSON body to its end, decoding its media strings to temporary files."""
    spool = DataUrlSpool(max_bytes=max_bytes, max_inline_bytes=max_inline_bytes)
    try:
        async for chunk in body:
            spool.feed(chunk)
    except BaseException:
        spool.close()
        raise
    return spool


class DataUrlRoute(APIRoute):
    """A route whose JSON body is read through a DataUrlSpool: the endpoint parses the
    rewritten body and finds the decoded files at `request.state.data_urls`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The endpoint's handler, behind the spool (its files close after the answer)."""
        handler = super().get_route_handler()
        settings = get_settings()

        def max_bytes(kind: MediaKind | None) -> int:
            return settings.max_file_bytes if kind is None else settings.max_bytes(kind)

        async def spooling_handler(request: Request) -> Response:
            spool = await spool_data_urls(request.stream(), max_bytes=max_bytes,
                                          max_inline_bytes=MAX_INLINE_JSON_BYTES)
            request.state.data_urls = spool
            try:
                return await handler(_RewrittenRequest(request.scope, request.receive,
                                                       bytes(spool.out)))
            finally:
                spool.close()

        return spooling_handler


class _RewrittenRequest(Request):
    """A request whose body was already read and rewritten."""

    def __init__(self, scope: Scope, receive: Receive, body: bytes) -> None:
        super().__init__(scope, receive)
        self._rewritten = body

    async def body(self) -> bytes:
        """The rewritten body."""
        return self._rewritten
