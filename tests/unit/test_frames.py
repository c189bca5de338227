"""Video frame sampling: which frames are picked, rotation, ranges and broken inputs."""

import io
import math

import av
import numpy as np
import pytest

from services.preprocess_worker.frames import sample_frames
from shared.errors import ErrorCode, TesseraError

FPS = 10
FRAME_COUNT = 30  # 3 seconds
WIDTH, HEIGHT = 64, 48


def make_video(
    *,
    container: str = "mp4",
    codec: str = "libx264",
    keyframe_interval: int = 250,
    rotation: int | None = None,
    options: dict[str, str] | None = None,
) -> bytes:
    """A 3 s, 10 fps video whose frame i is red level 8*i, with a green top-left quadrant."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container, options=options or {}) as output:
        stream = output.add_stream(codec, rate=FPS)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.gop_size = keyframe_interval
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(FRAME_COUNT):
            pixels = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
            pixels[..., 0] = 8 * index
            pixels[: HEIGHT // 2, : WIDTH // 2, 1] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            output.mux(stream.encode(frame))
        output.mux(stream.encode())
    return buffer.getvalue()


def frame_indices(frames: np.ndarray) -> list[int]:
    """Read each sampled tile's source frame index back from its red level (bottom right)."""
    return [round(int(tile[400, 400, 0]) / 8) for tile in frames]


def on_screen(seconds: float) -> int:
    """The index of the frame shown at a time (the last one starting at or before it)."""
    return math.floor(seconds * FPS + 1e-9)


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_video()


def test_sample_frames_picks_frame_on_screen_at_each_segment_midpoint(video: bytes) -> None:
    sampled = sample_frames(video, num_frames=4)
    # Midpoints of four 0.75 s segments: 0.375, 1.125, 1.875, 2.625 s.
    assert frame_indices(sampled.frames) == [3, 11, 18, 26]
    assert sampled.timestamps == pytest.approx([0.3, 1.1, 1.8, 2.6])
    assert sampled.duration == pytest.approx(3.0)


def test_sample_frames_returns_one_448_tile_per_frame(video: bytes) -> None:
    sampled = sample_frames(video, num_frames=8)
    assert sampled.frames.shape == (8, 448, 448, 3)
    assert sampled.frames.dtype == np.uint8


@pytest.mark.parametrize("num_frames", [1, 3, 7, 32, 64])
def test_sample_frames_matches_midpoints_for_any_count(video: bytes, num_frames: int) -> None:
    sampled = sample_frames(video, num_frames=num_frames)
    step = 3.0 / num_frames
    assert frame_indices(sampled.frames) == [on_screen((i + 0.5) * step)
                                             for i in range(num_frames)]


@pytest.mark.parametrize(("container", "codec"), [
    ("mp4", "libx264"),
    ("matroska", "libx264"),
    ("webm", "libvpx-vp9"),
    # No seek index, and its seeks land after the target: exercises the back-off.
    ("mpegts", "libx264"),
])
def test_sample_frames_is_frame_exact_around_keyframes(container: str, codec: str) -> None:
    video = make_video(container=container, codec=codec, keyframe_interval=5)
    for seconds in [0.0, 0.49, 0.5, 0.51, 0.99, 1.0, 1.45, 2.95]:
        sampled = sample_frames(video, num_frames=1, start=seconds - 0.001, end=seconds + 0.001)
        assert frame_indices(sampled.frames) == [on_screen(seconds)], seconds


def test_sample_frames_samples_within_requested_range(video: bytes) -> None:
    sampled = sample_frames(video, num_frames=2, start=1.0, end=2.0)
    assert frame_indices(sampled.frames) == [12, 17]


def test_sample_frames_clamps_range_to_video(video: bytes) -> None:
    clamped = sample_frames(video, num_frames=4, start=-5.0, end=100.0)
    assert frame_indices(clamped.frames) == [3, 11, 18, 26]


@pytest.mark.parametrize(("start", "end"), [(5.0, None), (2.0, 1.0), (3.0, 10.0)])
def test_sample_frames_rejects_range_outside_video(
    video: bytes, start: float, end: float | None
) -> None:
    with pytest.raises(TesseraError) as caught:
        sample_frames(video, num_frames=4, start=start, end=end)
    assert caught.value.code is ErrorCode.invalid_request


@pytest.mark.parametrize(("rotation", "marker"), [(90, "bottom-left"), (-90, "top-right"),
                                                  (180, "bottom-right")])
def test_sample_frames_turns_frames_upright_from_display_matrix(
    rotation: int, marker: str
) -> None:
    tile = sample_frames(make_video(rotation=rotation), num_frames=1).frames[0]
    quadrants = {"top-left": tile[100, 100], "top-right": tile[100, 348],
                 "bottom-left": tile[348, 100], "bottom-right": tile[348, 348]}
    assert [name for name, pixel in quadrants.items() if pixel[1] > 200] == [marker]


def test_sample_frames_reads_webm_that_states_no_duration() -> None:
    # A live-mode WebM (as browsers record) carries neither a duration nor a seek index.
    video = make_video(container="webm", codec="libvpx-vp9", options={"live": "1"})
    sampled = sample_frames(video, num_frames=4)
    assert sampled.duration == pytest.approx(3.0, abs=0.11)
    assert frame_indices(sampled.frames) == [3, 11, 18, 26]


def test_sample_frames_rejects_file_without_video_stream() -> None:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="wav") as output:
        stream = output.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), dtype=np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        output.mux(stream.encode(frame))
        output.mux(stream.encode())
    with pytest.raises(TesseraError) as caught:
        sample_frames(buffer.getvalue())
    assert caught.value.code is ErrorCode.unsupported_media


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_sample_frames_rejects_broken_file(video: bytes, damage: str) -> None:
    data = {"truncated": video[: len(video) // 2], "garbage": b"\x00\x01junk" * 100,
            "empty": b""}[damage]
    with pytest.raises(TesseraError) as caught:
        sample_frames(data)
    assert caught.value.code is ErrorCode.decode_failed


def test_sample_frames_stops_when_decode_budget_is_spent(video: bytes) -> None:
    with pytest.raises(TesseraError) as caught:
        sample_frames(video, num_frames=4, max_decode_seconds=0.0)
    assert caught.value.code is ErrorCode.media_limits_exceeded
