"""32 frames from a 10-minute 1080p H.264 video: our seeking sampler against decoding it all.

Run: python -m benchmarks.preprocess_video [--minutes 10] [--gop 250 60] [--repeat 3]

The video is generated without encoding ten minutes of 1080p (minutes on two cores): one
keyframe interval (`--gop` frames at 30 fps, libx264 ultrafast) is encoded once, and its packets
are remuxed back to back with shifted timestamps into a 10-minute MP4. Every frame still has to
be decoded by whoever wants it. The baseline, timed in the same run on the same file, decodes
every frame in order and converts the ones on screen at the 32 segment midpoints, which is what
the model card's `load_video` amounts to once its frame indices are known.
"""

import argparse
import io
import tempfile
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
from PIL import Image

from benchmarks.timing import median_seconds, report
from services.preprocess_worker.frames import sample_frames
from shared.pixels import TILE_SIZE

WIDTH, HEIGHT, FPS, NUM_FRAMES = 1920, 1080, 30, 32


def gop_clip(gop: int) -> bytes:
    """One keyframe interval of moving 1080p content, as an H.264 MP4."""
    luma = (np.add.outer(np.arange(HEIGHT) // 4, np.arange(WIDTH) // 4) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(gop), "keyint_min": str(gop)}
        for index in range(gop):
            y = np.roll(luma, index * 8, axis=1)
            x = index * 40 % (WIDTH - 200)
            y[200:400, x:x + 200] = 255
            chroma = np.full((HEIGHT // 2, WIDTH), 128 + index % 64, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def long_video(path: Path, minutes: float, gop: int) -> None:
    """Write `minutes` of video made of the clip's packets repeated with shifted timestamps."""
    clip = gop_clip(gop)
    copies = round(minutes * 60 * FPS / gop)
    with av.open(io.BytesIO(clip), mode="r") as source, av.open(str(path), mode="w") as output:
        stream = source.streams.video[0]
        packets = [packet for packet in source.demux(stream) if packet.dts is not None]
        out = output.add_stream_from_template(stream)
        assert stream.time_base is not None
        span = round(Fraction(gop, FPS) / stream.time_base)
        for copy in range(copies):
            for packet in packets:
                shifted = av.Packet(bytes(packet))
                shifted.pts = None if packet.pts is None else packet.pts + copy * span
                assert packet.dts is not None
                shifted.dts = packet.dts + copy * span
                shifted.duration = packet.duration
                shifted.time_base = stream.time_base
                shifted.is_keyframe = packet.is_keyframe
                shifted.stream = out
                output.mux(shifted)


def to_tile(frame: av.VideoFrame) -> np.ndarray:
    """One decoded frame as a 448x448 RGB tile, resized as the reference resizes it."""
    image = Image.fromarray(frame.to_ndarray(format="rgb24"))
    return np.asarray(image.resize((TILE_SIZE, TILE_SIZE), Image.Resampling.BICUBIC))


def decode_everything(data: bytes, num_frames: int) -> np.ndarray:
    """Decode every frame in order, keeping those on screen at the segment midpoints."""
    tiles = np.empty((num_frames, TILE_SIZE, TILE_SIZE, 3), dtype=np.uint8)
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None and stream.duration is not None
        duration = float(stream.duration * stream.time_base)
        targets = [(i + 0.5) * duration / num_frames for i in range(num_frames)]
        picked, previous = 0, None
        for frame in container.decode(stream):
            assert frame.pts is not None
            while picked < num_frames and frame.pts * stream.time_base > targets[picked]:
                assert previous is not None
                tiles[picked] = to_tile(previous)
                picked += 1
            previous = frame
        while picked < num_frames and previous is not None:
            tiles[picked] = to_tile(previous)
            picked += 1
    return tiles


def main() -> None:
    """Generate the video for each keyframe interval, time both samplers, print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--gop", type=int, nargs="+", default=[250, 60])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for gop in args.gop:
            path = Path(workdir) / f"video-{gop}.mp4"
            long_video(path, args.minutes, gop)
            data = path.read_bytes()
            print(f"{args.minutes:g} min {WIDTH}x{HEIGHT} H.264 at {FPS} fps, keyframe every "
                  f"{gop} frames ({gop / FPS:.1f} s), {len(data) / 1e6:.0f} MB; {NUM_FRAMES} "
                  f"frames; median of {args.repeat} runs (baseline: 1 run)")
            baseline = median_seconds(partial(decode_everything, data, NUM_FRAMES), repeat=1,
                                      warmup=0)
            ours = median_seconds(partial(sample_frames, data, num_frames=NUM_FRAMES),
                                  repeat=args.repeat)
            report("  decode every frame, pick the sampled ones", baseline)
            report("  ours: seek to each sampled frame", ours, baseline)
            same = np.array_equal(decode_everything(data, NUM_FRAMES),
                                  sample_frames(data, num_frames=NUM_FRAMES).frames)
            print(f"  same frames as the baseline: {same}")


if __name__ == "__main__":
    main()
