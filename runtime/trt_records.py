"""TensorRT engine records, checked without TensorRT (DESIGN §8): the engine cache key, whether a
record fits this machine and graph, the profile limits of a call, the copy runs of a cache
gather, version parsing. Pure functions, tested everywhere; `rsicrc.runtime.trt_backend` runs
the engines and `rsicrc.export.trt` builds them. tensorrt is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import ConfigError, DependencyError, ModelFolderError
from rsicrc.runtime.manifest import EngineRecord, Manifest

MIN_TRT_MAJOR = 10  # name-based tensors + execute_async_v3 + int64 I/O
BUILD_HINT = "rsicrc build-engines {model_dir} --precision {precision}"


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise DependencyError(
            "TensorRT is not installed: install TensorRT 10 or 11 for your CUDA version (NVIDIA's "
            "tensorrt wheels or container), or use --engine onnxruntime"
        ) from None
    return tensorrt


def parse_trt_version(text: str) -> tuple[int, int, int]:
    """'10.3.0.26' -> (10, 3, 0); a version this code cannot read raises DependencyError."""
    parts = str(text).strip().split(".")
    try:
        numbers = [int(p) for p in parts[:3]]
    except ValueError:
        numbers = []
    if len(numbers) < 2 or any(n < 0 for n in numbers):
        raise DependencyError(f"cannot read the TensorRT version {text!r}")
    return (numbers[0], numbers[1], numbers[2] if len(numbers) > 2 else 0)


def require_supported(text: str) -> tuple[int, int, int]:
    version = parse_trt_version(text)
    if version[0] < MIN_TRT_MAJOR:
        raise DependencyError(f"TensorRT {text} is too old: rsicrc needs TensorRT 10 or 11")
    return version


@dataclass(frozen=True)
class MachineInfo:
    """What an engine is specific to."""

    tensorrt: str  # tensorrt.__version__
    gpu: str  # CUDA device name
    compute_capability: str  # "major.minor"


def engine_key(*, tensorrt: str, gpu: str, compute_capability: str, onnx_sha256: str, precision: str,
               fp16_mode: str, profile: Mapping[str, Mapping[str, Sequence[int]]]) -> str:
    """sha256 over everything an engine depends on, in a canonical JSON form."""
    fields = {"tensorrt": tensorrt, "gpu": gpu, "compute_capability": compute_capability,
              "onnx_sha256": onnx_sha256, "precision": precision, "fp16_mode": fp16_mode,
              "profile": {n: {k: [int(x) for x in s[k]] for k in ("min", "opt", "max")}
                          for n, s in profile.items()}}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def record_key(record: EngineRecord) -> str:
    return engine_key(tensorrt=record.tensorrt, gpu=record.gpu, compute_capability=record.compute_capability,
                      onnx_sha256=record.onnx_sha256, precision=record.precision,
                      fp16_mode=record.fp16_mode, profile=record.profile)


def find_engine(manifest: Manifest, graph: str, precision: str) -> EngineRecord | None:
    return next((e for e in manifest.engines if e.graph == graph and e.precision == precision), None)


def engine_problem(record: EngineRecord, manifest: Manifest, machine: MachineInfo) -> str | None:
    """Why `record` cannot be used here (None: it can). One clause, for an error message."""
    if record.key != record_key(record):
        return "its record does not match its key (tampered manifest)"
    source = manifest.graphs.get("fp32", {}).get(record.graph)
    if source is None or source.sha256 != record.onnx_sha256:
        return "it was built from a different ONNX graph than this folder's"
    differences = [f"{what} {old} (this machine: {new})" for what, old, new in (
        ("TensorRT", record.tensorrt, machine.tensorrt), ("GPU", record.gpu, machine.gpu),
        ("compute capability", record.compute_capability, machine.compute_capability)) if old != new]
    return "it was built for " + ", ".join(differences) if differences else None


def require_engine(model_dir: Path, manifest: Manifest, graph: str, precision: str,
                   machine: MachineInfo) -> EngineRecord:
    """The usable engine record for graph/precision on this machine, or a ModelFolderError saying
    how to build one."""
    hint = BUILD_HINT.format(model_dir=model_dir, precision=precision)
    record = find_engine(manifest, graph, precision)
    if record is None:
        raise ModelFolderError(f"{model_dir} has no {precision} TensorRT engine for {graph}; build the "
                               f"engines on this machine: {hint}")
    problem = engine_problem(record, manifest, machine)
    if problem is not None:
        raise ModelFolderError(f"{model_dir}: the {precision} {graph} engine cannot be used: {problem}; "
                               f"rebuild it: {hint} --rebuild")
    return record


def check_profile(graph: str, profile: Mapping[str, Mapping[str, Sequence[int]]],
                  inputs: Mapping[str, np.ndarray]) -> None:
    """Every profiled input's shape must lie within the engine's min..max (ConfigError otherwise)."""
    for name, shapes in profile.items():
        if name not in inputs:
            continue
        shape = tuple(inputs[name].shape)
        lo, hi = tuple(shapes["min"]), tuple(shapes["max"])
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            raise ConfigError(f"{graph}: input {name} has shape {list(shape)} but the engine was built for "
                              f"{list(lo)}..{list(hi)}; use fewer pairs or beams, or rebuild the engines "
                              "with larger --max-batch / --max-beam")


def copy_runs(source: np.ndarray) -> list[tuple[int, int, int]]:
    """(destination row, source row, count) runs that gather rows: new[r] = old[source[r]], with
    consecutive rows merged so that one copy moves each run."""
    runs: list[tuple[int, int, int]] = []
    for dst, src in enumerate(int(s) for s in np.asarray(source).reshape(-1)):
        if runs and runs[-1][1] + runs[-1][2] == src and runs[-1][0] + runs[-1][2] == dst:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((dst, src, 1))
    return runs
