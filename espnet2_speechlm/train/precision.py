"""Which floating-point precision a run computes in.

``bf16`` autocast is 1.6x faster than fp32 on a CPU with native bf16
arithmetic (AVX512-BF16 or AMX) but an order of magnitude slower on one
without it (AVX2 only), where torch emulates every bf16 product.  ``auto``
therefore means bf16 where the hardware computes it natively (a CUDA device
that supports it, or such a CPU) and fp32 elsewhere, so that one recipe
config is fast on every machine.
"""

from __future__ import annotations

import functools

import torch

PRECISIONS = ("fp32", "bf16", "auto")


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(name: str, device: torch.device | str = "cpu") -> str:
    """``fp32`` | ``bf16`` | ``auto`` -> ``fp32`` or ``bf16`` for ``device``."""
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r} is not one of {list(PRECISIONS)}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name
