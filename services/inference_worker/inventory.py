"""The node's GPUs: from NVML on a GPU host, or from a configured override (tests, CPU hosts)."""

from __future__ import annotations

import logging
import re

from services.inference_worker.placement import GIB, GPU

log = logging.getLogger(__name__)

_COUNT_FORM = re.compile(r"^(\d+)\s*[xX]\s*(\d+(?:\.\d+)?)$")
_ID_FORM = re.compile(r"^(\d+)\s*:\s*(\d+(?:\.\d+)?)$")


def parse_inventory(text: str) -> list[GPU]:
    """GPUs from `none`, `8x80` (count x GiB) or `0:80,1:24` (id:GiB), forms joinable by commas.

    Count forms number their GPUs after the ones listed before them.
    """
    if text.strip().lower() in ("", "none", "cpu"):
        return []
    gpus: list[GPU] = []
    for part in (piece.strip() for piece in text.split(",")):
        if match := _COUNT_FORM.match(part):
            start = max((gpu.id for gpu in gpus), default=-1) + 1
            gpus += [GPU(start + offset, float(match[2])) for offset in range(int(match[1]))]
        elif match := _ID_FORM.match(part):
            gpus.append(GPU(int(match[1]), float(match[2])))
        else:
            raise ValueError(f"GPU inventory part {part!r} is not 'COUNTxGB' or 'ID:GB' "
                             f"(in {text!r}; use 'none' for no GPU)")
    ids = [gpu.id for gpu in gpus]
    if len(set(ids)) != len(ids):
        raise ValueError(f"GPU inventory {text!r} names a GPU id twice")
    return gpus


def nvml_gpus() -> list[GPU]:
    """The GPUs NVML sees, by NVML index (PCI bus order), or [] when there is no driver."""
    try:
        import pynvml  # nvidia-ml-py, in the `gpu` extra
    except ImportError:
        log.info("nvidia-ml-py is not installed: no GPUs")
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        log.info("NVML unavailable (%s): no GPUs", error)
        return []
    try:
        return [GPU(index, pynvml.nvmlDeviceGetMemoryInfo(
                    pynvml.nvmlDeviceGetHandleByIndex(index)).total / GIB)
                for index in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def detect_gpus(override: str | None = None) -> list[GPU]:
    """The configured inventory when `override` is set, else what NVML reports."""
    return parse_inventory(override) if override is not None else nvml_gpus()
