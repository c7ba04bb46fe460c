"""Numeric precision: which autocast a run uses, resolved once and logged.

`auto` picks bf16 where the hardware computes it natively (AVX-512 BF16 or AMX on a CPU,
Ampere or newer GPUs) and fp32 elsewhere: emulated bf16 is slower than fp32. fp16 needs a
gradient scaler (its range is too small for raw gradients); bf16 has fp32's range and does not.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    found = [getattr(torch.cpu, name, None) for name in checks]
    if any(check is not None for check in found):
        return any(check() for check in found if check is not None)
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return False
    flags = cpuinfo.read_text(errors="replace")
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    """The context the forward pass runs in (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
