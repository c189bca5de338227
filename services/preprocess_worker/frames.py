"""Video frame sampling for InternVL: N frames at segment midpoints, each one upright tile."""

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from services.preprocess_worker.tiling import tile_image
from shared.errors import ErrorCode, TesseraError
from shared.pixels import TILE_SIZE
from shared.tile_plan import TilePlan

# InternVL feeds each video frame as a single tile (max_num = 1): a 1x1 grid, no thumbnail.
_FRAME_PLAN = TilePlan(cols=1, rows=1, thumbnail=False)
# Without a seek index we cannot tell whether a seek would skip work; decoding this much video
# forward is cheaper than a seek that may land a whole keyframe interval back.
_FORWARD_WITHOUT_INDEX_S = 5.0


@dataclass(frozen=True)
class SampledFrames:
    """Frames picked from a video, in time order, with when each is shown."""

    frames: npt.NDArray[np.uint8]  # (N, 448, 448, 3) RGB
    timestamps: list[float]  # seconds from the start of the video, of each picked frame
    duration: float  # seconds, of the whole video
    width: int  # of the upright source frames, before resizing to a tile
    height: int


def sample_frames(
    data: bytes,
    *,
    num_frames: int = 32,
    start: float | None = None,
    end: float | None = None,
    max_decode_seconds: float = 60.0,
) -> SampledFrames:
    """Sample `num_frames` upright 448x448 frames at the midpoints of N equal parts of a range.

    The range [start, end] (seconds, default the whole video) is clamped to the video. For each
    midpoint the frame on screen at that time is taken (the last frame starting at or before
    it), chosen by timestamp so variable frame rates work; on constant-rate video this is,
    within a frame, what the reference's frame-index arithmetic picks.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    deadline = _Deadline(max_decode_seconds)
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = _video_stream(container)
            base = _time_base(stream)
            duration = _duration(container, stream, base, deadline)
            low, high = _clamp_range(start, end, duration)
            step = (high - low) / num_frames
            targets = [low + (i + 0.5) * step for i in range(num_frames)]
            frames = _Cursor(container, stream, base, deadline)
            return _sample(frames, targets, _origin(stream), base, duration, deadline)
    except av.FFmpegError as exc:
        raise TesseraError(
            ErrorCode.decode_failed,
            "The video could not be decoded; it may be truncated or corrupt: re-encode it "
            "(H.264 in MP4 works everywhere) and upload it again.",
        ) from exc


class _Deadline:
    """A decode time budget that fails the job with media_limits_exceeded when spent."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def check(self) -> None:
        """Raise once the budget is spent."""
        if time.monotonic() > self._end:
            raise TesseraError(
                ErrorCode.media_limits_exceeded,
                f"Decoding the video took longer than the {self.seconds:g} s limit: send a "
                "shorter time range (start/end), fewer frames, or a lower-resolution video.",
                max_decode_seconds=self.seconds,
            )


def _video_stream(container: InputContainer) -> VideoStream:
    """The first real video stream (cover art in audio files does not count)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise TesseraError(
        ErrorCode.unsupported_media,
        "The file has no video stream (is it audio only?): send a video file.",
    )


def _time_base(stream: VideoStream) -> Fraction:
    """The stream's time base, which every timestamp needs."""
    if stream.time_base is None:
        raise TesseraError(
            ErrorCode.decode_failed,
            "The video stream has no time base: re-encode it (H.264 in MP4 works everywhere) "
            "and upload it again.",
        )
    return stream.time_base


def _duration(
    container: InputContainer, stream: VideoStream, base: Fraction, deadline: _Deadline
) -> float:
    """The video's length in seconds, from its header or else by scanning its packets."""
    if stream.duration:
        return float(stream.duration * base)
    if container.duration:
        return container.duration / av.time_base
    # Live recordings (e.g. a browser's WebM) state no duration. Demuxing is cheap next to
    # decoding, and it also fills the demuxer's keyframe index that later seeks rely on.
    last = None
    for packet in container.demux(stream):
        deadline.check()
        if packet.pts is not None:
            end = packet.pts + (packet.duration or 0)
            last = end if last is None else max(last, end)
    return 0.0 if last is None else float((last - _origin(stream)) * base)


def _origin(stream: VideoStream) -> int:
    """The stream's first timestamp, in its time base."""
    return stream.start_time or 0


def _clamp_range(start: float | None, end: float | None, duration: float) -> tuple[float, float]:
    """Clamp the requested range to [0, duration], refusing one that is empty there."""
    low = 0.0 if start is None else min(max(start, 0.0), duration)
    high = duration if end is None else min(max(end, 0.0), duration)
    if high < low or (high == low and duration > 0):
        raise TesseraError(
            ErrorCode.invalid_request,
            f"The requested time range (start={start}, end={end}) holds no video: the video is "
            f"{duration:.2f} s long, so choose 0 <= start < end <= {duration:.2f}.",
            start=start, end=end, duration=duration,
        )
    return low, high


class _Cursor:
    """Walks a stream forward, seeking only when a keyframe lies between it and the target."""

    def __init__(
        self, container: InputContainer, stream: VideoStream, base: Fraction, deadline: _Deadline
    ) -> None:
        self._container = container
        self._stream = stream
        self._base = base
        self._origin = _origin(stream)
        self._one_second = max(1, round(1 / base))
        self._deadline = deadline
        self._frames: Iterator[VideoFrame] = iter(())
        self._previous: VideoFrame | None = None
        self._current: VideoFrame | None = None
        self._exhausted = False

    def frame_at(self, target: int) -> VideoFrame:
        """The last frame with pts <= target (the first frame if none is that early)."""
        if self._current is None or (
            _pts(self._current) < target and not self._exhausted and self._seek_pays_off(target)
        ):
            self._seek(target)
        while self._current is None or (_pts(self._current) < target and not self._exhausted):
            self._advance()
        if _pts(self._current) > target and self._previous is not None:
            return self._previous
        return self._current

    def _seek_pays_off(self, target: int) -> bool:
        """Whether seeking to `target` would skip frames that decoding forward would read."""
        assert self._current is not None
        entries = self._stream.index_entries
        if len(entries) == 0:
            gap = (target - _pts(self._current)) * self._base
            return gap > _FORWARD_WITHOUT_INDEX_S
        index = entries.search_timestamp(target, backward=True)
        return index >= 0 and entries[index].timestamp > _pts(self._current)

    def _seek(self, target: int) -> None:
        """Restart decoding at a keyframe at or before `target`.

        Some demuxers (MPEG-TS, for one) land after the target or past the last frame, so
        seek again from further back, doubling the distance, until rewound to the start.
        """
        back = 0
        while True:
            position = target - back
            rewind = position <= self._origin
            if rewind:
                # Timestamp 0 of the whole file rewinds every demuxer tried; a seek to the
                # stream's first timestamp lands late in MPEG-TS and one before it fails in FLV.
                self._container.seek(0)
            else:
                self._container.seek(position, stream=self._stream, backward=True)
            self._frames = self._container.decode(self._stream)
            self._previous, self._exhausted = None, False
            self._current = self._next_frame()
            if rewind or (self._current is not None and _pts(self._current) <= target):
                break
            back = max(2 * back, self._one_second)
        if self._current is None:
            raise TesseraError(
                ErrorCode.decode_failed,
                "The video stream holds no decodable frames: re-encode it (H.264 in MP4 "
                "works everywhere) and upload it again.",
            )

    def _advance(self) -> None:
        """Step to the next frame, or note the end of the stream."""
        frame = self._next_frame()
        if frame is None:
            self._exhausted = True
        else:
            self._previous, self._current = self._current, frame

    def _next_frame(self) -> VideoFrame | None:
        """Decode the next frame that has a timestamp; None at the end of the stream."""
        for frame in self._frames:
            self._deadline.check()
            if frame.pts is not None:
                return frame
        return None


def _sample(
    frames: _Cursor,
    targets: list[float],
    origin: int,
    base: Fraction,
    duration: float,
    deadline: _Deadline,
) -> SampledFrames:
    """Decode the frame on screen at each target time and make it one upright tile."""
    tiles = np.empty((len(targets), TILE_SIZE, TILE_SIZE, 3), dtype=np.uint8)
    timestamps = []
    size = (0, 0)
    for i, target in enumerate(targets):
        frame = frames.frame_at(origin + round(Fraction(target) / base))
        upright = _upright(frame)
        size = upright.size
        tiles[i] = tile_image(upright, _FRAME_PLAN)[0]
        timestamps.append(float((_pts(frame) - origin) * base))
        deadline.check()
    return SampledFrames(frames=tiles, timestamps=timestamps, duration=duration,
                         width=size[0], height=size[1])


def _pts(frame: VideoFrame) -> int:
    """A decoded frame's timestamp (frames without one are skipped before this is asked)."""
    assert frame.pts is not None
    return frame.pts


def _upright(frame: VideoFrame) -> Image.Image:
    """The frame as an RGB image, turned as its display matrix says (phones film sideways)."""
    pixels = frame.to_ndarray(format="rgb24")
    # np.rot90 turns counter-clockwise, the direction VideoFrame.rotation is measured in.
    return Image.fromarray(np.ascontiguousarray(np.rot90(pixels, round(frame.rotation / 90))))
