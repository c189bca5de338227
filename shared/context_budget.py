"""How much of a model's context a job's media takes, and the refusal when it cannot fit.

Checked twice with the served model's card: at submission from what is already known (video
frames, page ranges, probed uploads, at least one tile an image), so a job that cannot fit is
refused with the numbers before anything is stored; and once preprocessing has planned every
tile, so a job that does not fit fails before it takes a GPU.
"""

from dataclasses import dataclass

from shared.errors import ErrorCode, TesseraError
from shared.model_cards import ModelCard
from shared.schemas import ImageTiling, MediaKind, MediaOptions

# `<img>` and `</img>` around every image's context tokens.
DELIMITERS_PER_IMAGE = 2


@dataclass(frozen=True)
class InputShape:
    """What is known of one input before it is prepared."""

    kind: MediaKind | None  # None until a URL is fetched
    pages: int | None = None  # a PDF's page count, when a probe read it


def minimum_visual_tokens(inputs: list[InputShape], options: MediaOptions,
                          tokens_per_tile: int) -> tuple[int, str]:
    """The fewest tokens the inputs can become under `options`, and how that is made up."""
    least_tiles = options.min_tiles + int(options.min_tiles > 1)
    images = frames = pages = 0
    for item in inputs:
        if item.kind == "video":
            frames += options.num_frames
        elif item.kind == "pdf":
            pages += _known_pages(item.pages, options)
        else:
            images += 1
    tokens = (frames * (tokens_per_tile + DELIMITERS_PER_IMAGE)
              + (images + pages) * (least_tiles * tokens_per_tile + DELIMITERS_PER_IMAGE))
    parts = [f"{count} {name}{'s' if count != 1 else ''}"
             for count, name in ((frames, "video frame"), (pages, "page"), (images, "image"))
             if count]
    return tokens, " and ".join(parts)


def planned_visual_tokens(images: list[ImageTiling]) -> int:
    """The tokens planned tilings become, delimiters included."""
    return sum(image.visual_tokens + DELIMITERS_PER_IMAGE for image in images)


def check_fits(tokens: int, what: str, card: ModelCard) -> None:
    """Refuse media that leaves no room in the model's context (context_overflow)."""
    if tokens < card.context_length:
        return
    raise TesseraError(
        ErrorCode.context_overflow,
        f"The media needs {tokens:,} visual tokens ({what}, {card.tokens_per_tile} tokens a "
        f"tile) but {card.name} reads at most {card.context_length:,} tokens in all: send "
        "fewer frames (num_frames), pages (first_page, last_page) or tiles (max_tiles).",
        visual_tokens=tokens, context_length=card.context_length)


def _known_pages(pages: int | None, options: MediaOptions) -> int:
    """Pages of a PDF the range surely takes: all of them in range when the count is known,
    else one (a range may run past the end, and an unprobed PDF's length is unknown)."""
    if pages is None:
        return 1
    last = pages if options.last_page is None else min(options.last_page, pages)
    return max(0, last - options.first_page + 1)
