"""Base64 media in a chat body is decoded to files while the body streams in, whatever the
chunking, and the JSON left to parse is small."""

import base64
import json
from collections.abc import AsyncIterator

import anyio
import pytest

from services.ingest_api.data_urls import DataUrlSpool, spool_data_urls
from shared.errors import ErrorCode, TesseraError
from shared.schemas import MediaKind

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
MIB = 1024 * 1024


def _limits(kind: MediaKind | None) -> int:
    return {"image": MIB, None: 2 * MIB}.get(kind, 2 * MIB)


def _spool(body: bytes, chunk: int, max_inline_bytes: int = MIB) -> DataUrlSpool:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk):
            yield body[start:start + chunk]

    async def run() -> DataUrlSpool:
        return await spool_data_urls(chunks(), max_bytes=_limits,
                                     max_inline_bytes=max_inline_bytes)

    return anyio.run(run)


def _chat(*parts: dict[str, object], text: str = "What is it?") -> bytes:
    content = [{"type": "text", "text": text}, *parts]
    return json.dumps({"messages": [{"role": "user", "content": content}],
                       "metadata": {"url": "data:x;base64,AAAA"}}).encode()


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 10_000])
def test_data_urls_become_files_and_references_whatever_the_chunking(chunk: int) -> None:
    encoded = base64.b64encode(PNG).decode()
    body = _chat({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}},
                 {"type": "file", "file": {"file_data": encoded, "filename": "a.png"}},
                 {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}})
    spool = _spool(body, chunk)
    parsed = json.loads(bytes(spool.out))
    parts = parsed["messages"][0]["content"]
    references = [parts[1]["image_url"]["url"], parts[2]["file"]["file_data"]]
    assert all(spool.is_reference(reference) for reference in references)
    for reference in references:
        decoded = spool.files[reference]
        assert decoded.invalid is None and decoded.file.read() == PNG
    assert parts[3]["image_url"]["url"] == "https://example.com/a.png"
    # Only `url` and `file_data` values carry media: a metadata value or text stays as it is.
    assert parsed["metadata"] == {"url": "data:x;base64,AAAA"}
    assert len(spool.out) < 1000


def test_json_escapes_are_followed_and_an_escaped_slash_is_base64() -> None:
    encoded = base64.b64encode(b"\xff\xff\xff" * 400).decode()
    assert "/" in encoded
    body = (b'{"text": "a \\"quoted\\" \\\\ text", "image_url": {"url": "data:image/png;base64,'
            + encoded.replace("/", "\\/").encode() + b'"}}')
    spool = _spool(body, 5)
    parsed = json.loads(bytes(spool.out))
    assert parsed["text"] == 'a "quoted" \\ text'
    assert spool.files[parsed["image_url"]["url"]].file.read() == b"\xff\xff\xff" * 400


@pytest.mark.parametrize(("payload", "reason"), [
    ("AAAA*AAA", "Only base64 data is allowed"), ("AAA", "multiple of 4"),
    ("AA==AAAA", "padding"), ("AA\\nAA", "escaped character")])
def test_invalid_base64_is_recorded_for_the_part(payload: str, reason: str) -> None:
    spool = _spool(b'{"image_url": {"url": "data:image/png;base64,' + payload.encode() + b'"}}', 2)
    decoded = spool.files[json.loads(bytes(spool.out))["image_url"]["url"]]
    assert decoded.invalid is not None and reason.lower() in decoded.invalid.lower()


def test_a_data_url_over_its_kinds_limit_is_refused_while_it_streams() -> None:
    too_big = base64.b64encode(PNG + b"\0" * MIB)
    with pytest.raises(TesseraError) as refused:
        _spool(b'{"video_url": {"url": "data:image/png;base64,' + too_big + b'"}}', 65536)
    assert refused.value.code is ErrorCode.media_too_large
    assert "1,048,576 bytes" in refused.value.message


def test_long_text_outside_media_is_refused_past_the_inline_limit() -> None:
    with pytest.raises(TesseraError) as refused:
        _spool(_chat(text="x" * 5000), 100, max_inline_bytes=4000)
    assert refused.value.code is ErrorCode.media_too_large
