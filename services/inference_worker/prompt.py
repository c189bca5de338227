"""The conversation InternVL is prompted with, in one layout for every engine.

A turn is `label: <image>\\n` per image (no label for a lone image) followed by the question;
earlier turns come first with their answers, and a system message opens the conversation (the
request's own, else the model family's default). Text from users and earlier answers cannot
pass as InternVL's image markers or chat control tokens: each such marker is broken by a
zero-width space, so it reaches the model as the words it looks like and never moves images,
changes LMDeploy's message layout or opens a new role.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from services.inference_worker.engine import EngineImage, EngineRequest

# Replaces an image by what the engine puts in the prompt for it (its tokens, a placeholder).
RenderImage = Callable[[EngineImage], str]
# A turn's content in order: text pieces and images (each image is followed by a newline).
TurnPart = str | EngineImage
Content = TypeVar("Content")

IMAGE_PLACEHOLDER = "<image>"
ZERO_WIDTH_SPACE = "\u200b"
# InternVL's image markers, LMDeploy's legacy image placeholder, and chat control tokens of
# the tokenizers InternVL ships (ChatML `<|...|>`, Llama/InternLM2 `<s>`, `</s>`).
_RESERVED = re.compile(r"</?img>|<IMG_CONTEXT>|<IMAGE_TOKEN>|<image>|<video>|</?s>"
                       r"|<\|[^|<>\s]{1,40}\|>")


def neutralize(text: str) -> str:
    """`text` with every reserved marker broken after its `<` by a zero-width space."""
    return _RESERVED.sub(lambda match: f"<{ZERO_WIDTH_SPACE}{match[0][1:]}", text)


def turn_parts(question: str, images: list[EngineImage]) -> list[TurnPart]:
    """One user turn as parts: `label: ` before each labelled image, then the question."""
    parts: list[TurnPart] = []
    for image in images:
        if image.label:
            parts.append(f"{image.label}: ")
        parts.append(image)
    parts.append(neutralize(question))
    return parts


def render_turn(parts: list[TurnPart], render_image: RenderImage) -> str:
    """A turn's parts as prompt text, each image rendered and followed by a newline."""
    return "".join(part if isinstance(part, str) else f"{render_image(part)}\n"
                   for part in parts)


def system_message(request: EngineRequest, default: str | None) -> str | None:
    """The system message the conversation opens with: the request's own, else the default."""
    chosen = request.system if request.system is not None else default
    return neutralize(chosen) if chosen else None


def conversation(request: EngineRequest, default_system: str | None,
                 render_image: RenderImage = lambda image: IMAGE_PLACEHOLDER,
                 ) -> list[dict[str, str]]:
    """The whole conversation as chat messages with text content, images rendered inline."""
    return conversation_parts(request, default_system, lambda parts: render_turn(
        parts, render_image))


def conversation_parts(request: EngineRequest, default_system: str | None,
                                user_content: Callable[[list[TurnPart]], Content],
                                ) -> list[dict[str, str | Content]]:
    """The conversation as chat messages, each user turn's parts turned into content by
    `user_content` (text for most engines, a list of parts for LMDeploy)."""
    messages: list[dict[str, str | Content]] = []
    if (system := system_message(request, default_system)) is not None:
        messages.append({"role": "system", "content": system})
    for turn in request.history:
        messages.append({"role": "user", "content": user_content(turn_parts(turn.question,
                                                                             turn.images))})
        messages.append({"role": "assistant", "content": neutralize(turn.answer)})
    messages.append({"role": "user",
                     "content": user_content(turn_parts(request.question, request.images))})
    return messages
