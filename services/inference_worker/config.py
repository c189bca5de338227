"""Inference worker settings: which model this process serves and with which engine."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from shared.settings import BaseServiceSettings


class InferenceSettings(BaseServiceSettings):
    """Settings of one inference worker (one model replica)."""

    OTEL_SERVICE_NAME: str = "inference-worker"
    MODEL_NAME: str = "tiny-internvl"
    # A local checkpoint directory; hub names are never resolved at run time.
    MODEL_PATH: Path = Path(".models/tiny-internvl")
    ENGINE: Literal["transformers", "lmdeploy"] = "transformers"
    DEVICE: str = "cpu"


@lru_cache
def get_settings() -> InferenceSettings:
    """The worker's settings, read once from the environment."""
    return InferenceSettings()
