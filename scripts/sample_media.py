"""Generated sample media for the demo, tests and benchmarks (nothing is downloaded)."""

import io

import av
import numpy as np
from PIL import Image, ImageDraw


def sample_image(width: int = 1024, height: int = 768, *, seed: int = 0) -> Image.Image:
    """A photo-like picture: sky gradient, sun, hills and a little sensor noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (np.array([90, 150, 230]) * (1 - y) + np.array([200, 220, 255]) * y)
    pixels = np.broadcast_to(sky, (height, width, 3)).copy()
    pixels += rng.normal(0, 6, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.7, height * 0.1, width * 0.85, height * 0.3), fill=(255, 210, 60))
    draw.polygon([(0, height), (width * 0.3, height * 0.5), (width * 0.65, height)],
                 fill=(60, 140, 70))
    draw.polygon([(width * 0.4, height), (width * 0.75, height * 0.6), (width, height)],
                 fill=(40, 110, 60))
    return image


def encode_image(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    """Image bytes in a given format."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sample_jpeg(width: int = 1024, height: int = 768) -> bytes:
    """The sample picture as a JPEG."""
    return encode_image(sample_image(width, height), "JPEG", quality=90)


def sample_mp4(seconds: float = 4.0, fps: int = 10, width: int = 320, height: int = 240) -> bytes:
    """An H.264 MP4 whose frames fade through colours with a moving square."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(int(seconds * fps)):
            frame = np.full((height, width, 3), (index * 7 % 256, 80, 255 - index * 7 % 256),
                            dtype=np.uint8)
            x = index * 5 % (width - 40)
            frame[100:140, x:x + 40] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def sample_pdf(pages: int = 2) -> bytes:
    """A PDF whose pages are pictures with a page number drawn on them."""
    images = []
    for number in range(1, pages + 1):
        page = Image.new("RGB", (595, 842), "white")
        draw = ImageDraw.Draw(page)
        draw.text((60, 60), f"Page {number}: quarterly figures", fill="black")
        draw.rectangle((60, 120, 60 + 80 * number, 400), fill=(30, 90, 200))
        images.append(page)
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:])
    return buffer.getvalue()
