"""Inference worker settings: which model this process serves and with which engine."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from shared.settings import BaseServiceSettings


class InferenceSettings(BaseServiceSettings):
    """Settings of one inference worker (one model replica)."""

    OTEL_SERVICE_NAME: str = "inference-worker"
    MODEL_NAME: str = "tiny-internvl"
    # A local checkpoint directory; hub names are never resolved at run time.
    MODEL_PATH: Path = Path(".models/tiny-internvl")
    ENGINE: Literal["transformers", "lmdeploy"] = "transformers"
    # Jobs one replica runs at once (worker threads); the engine batches them.
    MAX_IN_FLIGHT: int = Field(default=8, ge=1, le=512)
    # transformers engine
    DEVICE: str = "cpu"
    # LMDeploy engine (DESIGN.md §4): placement, KV cache and quantisation.
    LMDEPLOY_BACKEND: Literal["auto", "turbomind", "pytorch"] = "auto"
    TP: int = Field(default=1, ge=1)
    GPU_IDS: str = ""
    SESSION_LEN: int | None = Field(default=None, ge=256)
    KV_CACHE_SHARE: float = Field(default=0.8, gt=0, le=1)
    KV_QUANT_POLICY: Literal[0, 4, 8] = 0
    MODEL_FORMAT: Literal["hf", "awq"] | None = None
    MAX_BATCH_SIZE: int | None = Field(default=None, ge=1)

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments for the configured engine's constructor."""
        if self.ENGINE == "transformers":
            return {"device": self.DEVICE, "max_batch_size": self.MAX_IN_FLIGHT}
        gpu_ids = [int(gpu) for gpu in self.GPU_IDS.split(",") if gpu.strip()]
        if gpu_ids and os.environ.get("CUDA_VISIBLE_DEVICES"):
            # The process already sees only its GPUs, renumbered from 0 (the supervisor pins it).
            gpu_ids = list(range(len(gpu_ids)))
        return {
            "backend": self.LMDEPLOY_BACKEND, "tp": self.TP, "devices": gpu_ids or None,
            "session_len": self.SESSION_LEN, "cache_max_entry_count": self.KV_CACHE_SHARE,
            "quant_policy": self.KV_QUANT_POLICY, "model_format": self.MODEL_FORMAT,
            "max_batch_size": self.MAX_BATCH_SIZE,
        }


@lru_cache
def get_settings() -> InferenceSettings:
    """The worker's settings, read once from the environment."""
    return InferenceSettings()
