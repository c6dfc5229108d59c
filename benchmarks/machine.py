"""The machine's own limits, measured in the same run as the model benchmarks (DESIGN §9).

    python benchmarks/machine.py [--threads N] [--json PATH]

- fp32 GEMM GFLOP/s: torch (oneDNN/MKL) square matmul, n = 2048, best of several runs (the
  limit the encoder's convolutions and matmuls can reach);
- memory read bandwidth GB/s: fp32 matrix-vector product over a 256 MiB matrix (GEMV reads
  every weight once, like a decoder step at batch 1), best of several runs;
- copy bandwidth GB/s (read + write counted) for reference;
- the machine itself: CPU model, cores, load average, library versions.

Best-of rather than median: this is a ceiling, and on a shared machine the slow runs measure
the neighbours. Nothing heavy happens at import.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from rsicrc.runtime.cpu import cpu_info

GEMM_N = 2048  # square GEMM side: 17 GFLOP per product
GEMV_BYTES = 256 << 20  # GEMV matrix size: far beyond the caches


def _best_seconds(fn: Any, repeats: int) -> float:
    fn()  # warmup: page faults, thread pool start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_gflops(n: int = GEMM_N, repeats: int = 5) -> float:
    """Best fp32 matmul rate in GFLOP/s (2 n^3 flops per product)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    seconds = _best_seconds(lambda: torch.matmul(a, b, out=out), repeats)
    return 2.0 * n**3 / seconds / 1e9


def read_bandwidth_gbs(nbytes: int = GEMV_BYTES, repeats: int = 7) -> float:
    """Best memory read rate in GB/s of a fp32 matrix-vector product (matrix bytes / time)."""
    import torch

    cols = 4096
    rows = nbytes // (4 * cols)
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1))
    x = torch.randn(cols)
    out = torch.empty(rows)
    seconds = _best_seconds(lambda: torch.mv(w, x, out=out), repeats)
    return w.numel() * 4 / seconds / 1e9


def copy_bandwidth_gbs(nbytes: int = GEMV_BYTES, repeats: int = 5) -> float:
    """Best copy rate in GB/s, bytes read plus bytes written."""
    import torch

    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), repeats)
    return 2 * nbytes / seconds / 1e9


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def versions() -> dict[str, str]:
    """Versions of the libraries the benchmarks measure."""
    out = {"python": platform.python_version()}
    for dist in ("rsicrc", "torch", "onnxruntime", "onnx", "numpy", "open_clip_torch", "faiss-cpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine_info() -> dict[str, Any]:
    """Who ran the benchmarks: CPU and its SIMD features (int8 kernels differ by them), cores, memory,
    OS, load now, library versions."""
    mem_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = int(line.split()[1]) / 2**20
    except OSError:
        pass
    cpu = cpu_info()
    return {"cpu": cpu.model, "cpu_features": list(cpu.features), "cores": cores(),
            "memory_gb": round(mem_gb, 1), "os": platform.platform(),
            "load_average": [round(x, 2) for x in load_average()], "versions": versions()}


def measure_limits(threads: int | None = None) -> dict[str, Any]:
    """GEMM GFLOP/s, read and copy bandwidth, with the threads used and the load around it."""
    import torch

    threads = threads or cores()
    torch.set_num_threads(threads)
    load_before = load_average()[0]
    result = {"threads": threads, "gemm_n": GEMM_N, "gemm_gflops": gemm_gflops(),
              "read_gbs": read_bandwidth_gbs(), "copy_gbs": copy_bandwidth_gbs()}
    result["load_average_1m"] = [round(load_before, 2), round(load_average()[0], 2)]  # before, after
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Measure the machine's fp32 GEMM rate and memory bandwidth.")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = {"machine": machine_info(), "limits": measure_limits(args.threads)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
