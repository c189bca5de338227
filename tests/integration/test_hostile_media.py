"""Hostile and broken uploads, generated here, each end as a coded, actionable failure (or a
4xx at ingest) and never stop the preprocessing worker from serving the next job."""

import io
import struct
import zlib
from dataclasses import dataclass
from fractions import Fraction

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from scripts.localstack import LocalStack
from scripts.sample_media import encode_image, sample_image, sample_jpeg, sample_mp4, sample_pdf
from tests.client import auth, result, submit, wait_terminal
from tests.unit.test_pages import make_pdf

RED = (200, 30, 30)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose hand-written header claims a size its few bytes of pixel data do not hold."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose screen and one image descriptor claim a size; the pixel data is one code."""
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b","
            + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x4c\x01\x00;")


def long_sparse_video(hours: float, seconds_per_frame: int = 10) -> bytes:
    """An H.264 MP4 hours long but tiny: 64x64, one frame every `seconds_per_frame`."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(1, seconds_per_frame))
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for index in range(int(hours * 3600 / seconds_per_frame)):
            pixels = np.full((64, 64, 3), index % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def audio_only_mp4() -> bytes:
    """An MP4 (as an .m4a is) holding one second of AAC audio and no video stream."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), dtype=np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def submit_claiming(stack: LocalStack, filename: str, data: bytes,
                    content_type: str) -> httpx.Response:
    """POST /v1/jobs with one file whose multipart part claims a content type."""
    return httpx.post(f"{stack.ingest_url}/v1/jobs",
                      data={"prompt": "Describe this.", "max_new_tokens": "8"},
                      files=[("files", (filename, data, content_type))], timeout=30,
                      headers=auth(stack))


def cut(data: bytes) -> bytes:
    """The first half of a file, as an interrupted upload or copy leaves it."""
    return data[: len(data) // 2]


@dataclass(frozen=True)
class Hostile:
    """One file of the corpus and how the job must end."""

    filename: str
    data: bytes
    code: str
    hint: str  # what the message must tell a person to do, or say about the file


CORPUS = {
    "truncated_jpeg": Hostile("photo.jpg", sample_jpeg()[:3000], "decode_failed", "truncated"),
    "truncated_png": Hostile("photo.png", cut(encode_image(sample_image(), "PNG")),
                             "decode_failed", "upload it again"),
    "garbage_after_jpeg_magic": Hostile("photo.jpg", b"\xff\xd8\xff" + bytes(range(256)) * 8,
                                        "decode_failed", "re-export"),
    "truncated_mp4": Hostile("clip.mp4", cut(sample_mp4()), "decode_failed", "re-encode"),
    "truncated_pdf": Hostile("doc.pdf", cut(make_pdf([(72, 72, RED)] * 3)), "decode_failed",
                             "re-export"),
    "encrypted_pdf": Hostile("secret.pdf", make_pdf([(72, 72, RED)], encrypted=True),
                             "decode_failed", "password"),
    "png_bomb_100k_square": Hostile("bomb.png", png_claiming(100_000, 100_000),
                                    "media_limits_exceeded", "downscale"),
    "png_just_over_pixel_limit": Hostile("big.png", png_claiming(9_000, 9_000),
                                         "media_limits_exceeded", "megapixels"),
    "gif_huge_dimensions": Hostile("huge.gif", gif_claiming(65_535, 65_535),
                                   "media_limits_exceeded", "downscale"),
    "aspect_1x10000": Hostile("sliver.png", encode_image(Image.new("RGB", (1, 10_000)), "PNG"),
                              "media_limits_exceeded", "crop it"),
    "pdf_thousands_of_pages": Hostile("book.pdf", make_pdf([(72, 72, RED)] * 3000),
                                      "media_limits_exceeded", "first_page"),
    "audio_only_mp4": Hostile("song.m4a", audio_only_mp4(), "unsupported_media", "audio only"),
}


@pytest.mark.parametrize("name", CORPUS)
def test_hostile_upload_fails_job_with_stable_code_and_actionable_message(
        stack: LocalStack, name: str) -> None:
    item = CORPUS[name]
    response = submit(stack, [(item.filename, item.data)])
    assert response.status_code == 202, response.text
    job = wait_terminal(stack, response.json()["id"], timeout=30)
    assert job["status"] == "failed", job
    error = job["error"]
    assert (error["code"], error["stage"], error["retryable"]) == (item.code, "preprocess", False)
    assert item.hint in error["message"], error["message"]
    assert result(stack, job["id"]).json()["job_error"]["code"] == item.code


@pytest.mark.parametrize(("filename", "data"), [
    ("empty.jpg", b""),
    ("notes.jpg", b"Quarterly figures: see attached.\n" * 10),
    ("page.pdf", b"<html><body>not a pdf</body></html>"),
])
def test_submit_job_rejects_file_that_is_no_supported_media(
        stack: LocalStack, filename: str, data: bytes) -> None:
    response = submit(stack, [(filename, data)])
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media"
    assert "content was checked" in response.json()["detail"]


def test_png_named_mp4_with_video_content_type_succeeds_as_image(stack: LocalStack) -> None:
    # The type comes from the bytes, not from the name or the content type the client claims.
    png = encode_image(sample_image(448, 448), "PNG")
    response = submit_claiming(stack, "clip.mp4", png, "video/mp4")
    job = wait_terminal(stack, response.json()["id"])
    assert job["status"] == "succeeded", job
    [summary] = result(stack, job["id"]).json()["inputs"]
    assert summary["kind"] == "image"


def test_hours_long_video_samples_frames_by_seeking_within_budget(stack: LocalStack) -> None:
    video = long_sparse_video(hours=2)
    response = submit(stack, [("lecture.mp4", video)], num_frames=8)
    job = wait_terminal(stack, response.json()["id"], timeout=60)
    assert job["status"] == "succeeded", job
    [summary] = result(stack, job["id"]).json()["inputs"]
    stamps = [image["timestamp_seconds"] for image in summary["images"]]
    # Midpoints of eight 15-minute segments, on the frame shown then (one every 10 s).
    assert stamps == [450.0 + 900.0 * i for i in range(8)]


def test_pdf_with_thousands_of_pages_succeeds_for_a_chosen_range(stack: LocalStack) -> None:
    response = submit(stack, [("book.pdf", CORPUS["pdf_thousands_of_pages"].data)],
                      first_page=2500, last_page=2502, max_tiles=1)
    assert response.status_code == 202, response.text
    job = wait_terminal(stack, response.json()["id"])
    assert job["status"] == "succeeded", job
    [summary] = result(stack, job["id"]).json()["inputs"]
    assert [image["page"] for image in summary["images"]] == [2500, 2501, 2502]


def test_worker_still_serves_jobs_after_the_hostile_corpus(stack: LocalStack) -> None:
    files = [("a.jpg", sample_jpeg(800, 600)), ("b.pdf", sample_pdf(pages=1))]
    job = wait_terminal(stack, submit(stack, files, max_tiles=4).json()["id"], timeout=30)
    assert job["status"] == "succeeded", job

