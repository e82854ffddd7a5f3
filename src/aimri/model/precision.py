"""The precision a model is read at when only its activations are wanted.

bf16 where the hardware computes it natively (a CUDA GPU that supports it, a CPU with AVX-512
BF16 or AMX), else float32. On the 2-core AVX-512 BF16 CPU of benchmarks/RESULTS.md, SmolLM2's
body runs about 3.6x faster in bf16 with activations within FVU 0.001 of float32's.
Not here: anything that needs exact gradients or logits (attribution, steering, the causal
checks run at the model's own dtype).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import torch

ReadDType = Literal["auto", "float32", "bfloat16"]


def read_dtype(setting: ReadDType, device: torch.device) -> torch.dtype:
    """The dtype to read activations at: `setting`, or for `auto` the fastest exact-enough one."""
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (x86 AVX-512 BF16 or AMX; Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))
