"""Inference worker settings: which model this process serves, with which engine, on which GPUs."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from services.inference_worker.checkpoint import family_system_message, read_checkpoint
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
    # Opens every conversation without a system message of its own. Unset: the model family's
    # default (InternVL2.5 and 3 have one, 3.5 has none); empty: no system message.
    SYSTEM_MESSAGE: str | None = None
    # transformers engine
    DEVICE: str = "cpu"
    # LMDeploy engine (DESIGN.md §4): placement, KV cache, batching and quantisation.
    LMDEPLOY_BACKEND: Literal["auto", "turbomind", "pytorch"] = "auto"
    TP: int = Field(default=1, ge=1)
    # The replica's GPUs (NVML ids); the process is made to see only these before CUDA starts.
    GPU_IDS: str = ""
    SESSION_LEN: int | None = Field(default=None, ge=256)
    KV_CACHE_SHARE: float = Field(default=0.8, gt=0, lt=1)
    # 0 (16-bit), 8 or 4 bits; env values are strings, which a Literal of ints would refuse.
    KV_QUANT_POLICY: Annotated[Literal[0, 4, 8], BeforeValidator(int)] = 0
    MODEL_FORMAT: Literal["hf", "awq"] | None = None
    # Sequences the engine batches at most; unset: LMDeploy's default for the GPU.
    MAX_BATCH_SIZE: int | None = Field(default=None, ge=1)
    # Images the vision encoder takes in one forward pass (LMDeploy's VisionConfig).
    VISION_BATCH_SIZE: int = Field(default=1, ge=1, le=256)

    @property
    def gpu_ids(self) -> list[int]:
        """The replica's GPUs as NVML numbers them."""
        return [int(gpu) for gpu in self.GPU_IDS.split(",") if gpu.strip()]

    def system_message(self) -> str | None:
        """The default system message: the configured one, else the model family's."""
        if self.SYSTEM_MESSAGE is not None:
            return self.SYSTEM_MESSAGE or None
        config = self.MODEL_PATH / "config.json"
        if config.is_file():
            return read_checkpoint(self.MODEL_PATH, self.MODEL_NAME).system_message
        return family_system_message(self.MODEL_NAME)

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments for the configured engine's constructor."""
        if self.ENGINE == "transformers":
            return {"device": self.DEVICE, "max_batch_size": self.MAX_IN_FLIGHT,
                    "system_message": self.system_message()}
        return {
            "backend": self.LMDEPLOY_BACKEND, "tp": self.TP, "session_len": self.SESSION_LEN,
            "cache_max_entry_count": self.KV_CACHE_SHARE, "quant_policy": self.KV_QUANT_POLICY,
            "model_format": self.MODEL_FORMAT, "max_batch_size": self.MAX_BATCH_SIZE,
            "vision_batch_size": self.VISION_BATCH_SIZE, "system_message": self.system_message(),
        }

    def pin_gpus(self, environ: dict[str, str] | None = None) -> None:
        """Make the process see only its replica's GPUs, numbered 0..TP-1 from then on.

        Must run before CUDA starts in the process (the engines take devices 0..TP-1). The
        supervisor already starts each replica with CUDA_VISIBLE_DEVICES equal to its GPU_IDS;
        a worker started another way gets it here.
        """
        env = os.environ if environ is None else environ
        ids = self.gpu_ids
        if not ids:
            return
        if len(ids) != self.TP:
            raise ValueError(f"GPU_IDS={self.GPU_IDS} must name exactly TP={self.TP} GPUs")
        wanted = ",".join(map(str, ids))
        current = env.get("CUDA_VISIBLE_DEVICES")
        if current not in (None, "", wanted):
            raise ValueError(f"CUDA_VISIBLE_DEVICES={current} but this replica's GPUs are "
                             f"GPU_IDS={wanted}; set one of them, or both alike")
        env["CUDA_VISIBLE_DEVICES"] = wanted
        # CUDA numbers GPUs fastest-first by default; NVML (GPU_IDS) by PCI bus.
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


@lru_cache
def get_settings() -> InferenceSettings:
    """The worker's settings, read once from the environment."""
    return InferenceSettings()
