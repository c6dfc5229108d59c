"""This CPU's model name and the SIMD features ONNX Runtime's kernels are chosen by (Linux).

ONNX Runtime's MLAS picks its int8 and float kernels from CPUID: with VNNI (avx512_vnni, avx_vnni)
u8 x s8 products accumulate in int32; AVX2 and AVX-512 without VNNI add pairs of them in int16 with
saturation, and blocked int8 GEMV kernels apply zero points in float32. Numerics (and so the int8
check of an export, or a benchmark figure) depend on where they ran: the int8 check records this,
and CI prints it first; the load cache keys optimized graphs by it (their layout depends on it).
Standalone on purpose: `python3 runtime/cpu.py` prints one line before any environment exists
(CI); nothing here imports the rest of the package, and numpy only when it is there.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Feature flags worth naming (Linux /proc/cpuinfo spelling): x86-64 and AArch64.
SIMD_FLAGS: tuple[str, ...] = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "asimd", "asimddp", "i8mm", "sve",
)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "asimddp"})  # int8 dot products into int32
# numpy's names for the flags it detects itself (CPUID and OS support: what this process can use)
NUMPY_NAMES = {"sse4_2": "SSE42", "avx": "AVX", "avx2": "AVX2", "fma": "FMA3", "f16c": "F16C",
               "avx512f": "AVX512F", "avx512bw": "AVX512BW", "avx512vl": "AVX512VL",
               "avx512_vnni": "AVX512VNNI", "avx512_bf16": "AVX512BF16", "avx512_fp16": "AVX512FP16",
               "asimd": "ASIMD", "asimddp": "ASIMDDP", "sve": "SVE"}


@dataclass(frozen=True)
class CpuInfo:
    model: str  # e.g. "AMD EPYC" (as the kernel reports it)
    machine: str  # platform.machine(): "x86_64", "aarch64"
    features: tuple[str, ...]  # the SIMD_FLAGS present, in SIMD_FLAGS order

    @property
    def int8_dot(self) -> bool:
        """Has int8 dot-product instructions (VNNI or ARM's dot product)."""
        return bool(VNNI_FLAGS & set(self.features))

    def describe(self) -> str:
        return f"{self.model} ({self.machine}; {' '.join(self.features) or 'no SIMD flags read'})"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "machine": self.machine, "features": list(self.features)}


def _numpy_features() -> dict[str, bool] | None:
    """numpy's own CPUID-based detection (None without numpy). Unlike /proc/cpuinfo it reports what
    this process's CPU really offers, also under an emulator such as QEMU, as ONNX Runtime sees it."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # type: ignore[attr-defined]
    except ImportError:
        return None
    return {ours: bool(__cpu_features__.get(theirs)) for ours, theirs in NUMPY_NAMES.items()}


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """The first processor's model (/proc/cpuinfo; elsewhere platform's names) and its SIMD features:
    numpy's detection where numpy knows the flag, /proc/cpuinfo for the rest (e.g. avx_vnni)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())  # the first processor's
    model = fields.get("model name") or fields.get("cpu model") or platform.processor() or "unknown CPU"
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    detected = _numpy_features()
    if detected is not None:
        flags = (flags - set(detected)) | {f for f, present in detected.items() if present}
    return CpuInfo(model, platform.machine(), tuple(f for f in SIMD_FLAGS if f in flags))


if __name__ == "__main__":
    print(f"CPU: {cpu_info().describe()}")
