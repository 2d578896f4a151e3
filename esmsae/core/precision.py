"""Which reduced precisions a device runs natively, and the fallback when it does not.

bf16 is the demo's and the trainers' fast path on CPUs with AVX512-BF16 or AMX (bench/lm_amp.py,
bench/encode_precision.py: 2.3-4.6x fp32) and on GPUs. A CPU without those instructions (AVX2
only, e.g. AMD Zen 2) still accepts bf16 tensors, but PyTorch then emulates the matmul: on such a
2-core machine a 512 x 512 bf16 matmul ran at 1.0 GFLOP/s against 40 GFLOP/s in fp32, i.e. 40x
slower instead of faster. So a requested bf16 (or fp16) compute dtype on such a CPU becomes fp32,
with one warning saying so; the results only get more exact. ``ESMSAE_KEEP_DTYPE=1`` keeps the
requested dtype anyway (to measure the emulation, or to reproduce bf16 numbers bit for bit)."""
from __future__ import annotations

import functools
import os
import warnings

import torch

REDUCED = ("bfloat16", "float16")


@functools.cache
def cpu_native(dtype: str) -> bool:
    """Whether this CPU has native matmul support for ``dtype`` (oneDNN's own check)."""
    if dtype not in REDUCED:
        return True
    try:
        fn = torch.ops.mkldnn._is_mkldnn_bf16_supported if dtype == "bfloat16" else (
            torch.ops.mkldnn._is_mkldnn_fp16_supported)
        return bool(fn())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN: assume emulated
        return False


@functools.cache
def _warn_once(dtype: str, what: str) -> None:
    warnings.warn(
        f"{what}: {dtype} requested, but this CPU has no native {dtype} matmul (PyTorch would emulate it, "
        f"about 40x slower than float32 on an AVX2-only CPU); running in float32 instead. "
        "Set ESMSAE_KEEP_DTYPE=1 to keep it.",
        RuntimeWarning,
        stacklevel=3,
    )


def usable_dtype(dtype: str, device: str | torch.device = "cpu", what: str = "compute") -> str:
    """``dtype`` (a torch dtype name) unless it is a reduced precision that ``device`` would emulate:
    then "float32" (with one warning per dtype and purpose)."""
    dev = torch.device(device).type
    if dtype not in REDUCED or dev != "cpu" or cpu_native(dtype) or os.environ.get("ESMSAE_KEEP_DTYPE") == "1":
        return dtype
    _warn_once(dtype, what)
    return "float32"


def native_precision(device: str | torch.device = "cpu") -> str:
    """The fastest training precision ``device`` runs natively: "bfloat16" on a GPU with bf16 or a CPU
    with AVX512-BF16 / AMX, else "float32" (what ``precision="auto"`` becomes)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if dev.type == "cpu" and cpu_native("bfloat16") else "float32"
