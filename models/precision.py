"""Precision choice: maps `--precision auto|fp32|fp16|bf16` and a device to a torch dtype.

`auto` picks fp16 on NVIDIA compute capability 7.0+ (tensor cores), fp32 on older GPUs
(Pascal sm_61 — P40, P4, GTX 10xx — runs fp16 arithmetic at 1/64 of the fp32 rate) and
fp32 on the CPU. An explicit request is honoured where the device can run it; otherwise
`InvalidOption` says why and what to use instead. The reason string is for the console.
"""

from __future__ import annotations

import logging

import torch

from core.choices import PRECISIONS, Precision
from core.errors import InvalidOption

__all__ = ["Precision", "PRECISIONS", "choose_precision"]

logger = logging.getLogger(__name__)


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_FAST_FP16_CAPABILITY = (7, 0)  # Volta: full-rate fp16 and tensor cores
_BF16_CAPABILITY = (8, 0)  # Ampere: native bf16


def choose_precision(requested: str, device: torch.device) -> tuple[torch.dtype, str]:
    """Return `(dtype, reason)` for `--precision requested` on `device`.

    Raises `InvalidOption` for an unknown value, fp16 on the CPU, or bf16 on a GPU older
    than compute capability 8.0.
    """
    if requested not in PRECISIONS:
        raise InvalidOption(
            f"Invalid --precision ({requested!r}): allowed are {', '.join(PRECISIONS)}. "
            "Use e.g. --precision auto."
        )
    device = torch.device(device)
    if device.type == "cuda":
        return _choose_cuda(requested, device)
    where = "CPU" if device.type == "cpu" else device.type
    if requested == "auto":
        return torch.float32, f"fp32: {where} (auto uses fp32 off NVIDIA GPUs)"
    if requested == "fp16" and device.type == "cpu":
        raise InvalidOption(
            "Invalid --precision (fp16) on the CPU: half-precision convolutions there are "
            "slow or unsupported. Use --precision fp32 (or bf16)."
        )
    return _DTYPES[requested], f"{requested}: requested ({where})"


def _choose_cuda(requested: str, device: torch.device) -> tuple[torch.dtype, str]:
    capability = tuple(torch.cuda.get_device_capability(device))
    gpu = f"{torch.cuda.get_device_name(device)} (sm_{capability[0]}{capability[1]})"
    slow_fp16 = capability < _FAST_FP16_CAPABILITY
    if requested == "auto":
        if slow_fp16:
            return torch.float32, f"fp32: {gpu} runs fp16 arithmetic at 1/64 of the fp32 rate"
        return torch.float16, f"fp16: {gpu} has fast fp16"
    if requested == "fp32":
        return torch.float32, f"fp32: requested ({gpu})"
    if requested == "fp16":
        if slow_fp16:
            logger.warning(
                "--precision fp16 on %s: fp16 arithmetic runs at 1/64 of the fp32 rate "
                "there; --precision fp32 (or auto) is much faster.",
                gpu,
            )
            return torch.float16, f"fp16: requested ({gpu}; slow there, auto would use fp32)"
        return torch.float16, f"fp16: requested ({gpu})"
    # bf16
    if capability < _BF16_CAPABILITY:
        raise InvalidOption(
            f"Invalid --precision (bf16) on {gpu}: bf16 needs compute capability 8.0+ "
            "(Ampere or newer). Use --precision auto (fp16/fp32) instead."
        )
    return torch.bfloat16, f"bf16: requested ({gpu} supports bf16)"
