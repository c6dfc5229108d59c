"""The TensorRT backend: engines from MODEL_DIR/engines/ behind the `Backend` interface (DESIGN §8).

    make_backend("trt", model_dir, manifest, precision="fp16")  -> TrtBackend
    TrtBackend.run(graph, {name: array}) -> {name: array}        numpy in, numpy out, by name
    TrtBackend.bound_decoder(tiled_cross) -> TrtDecoderStep       the StepModel seam, KV on the GPU

Tensors are bound by name (`set_input_shape`, `set_tensor_address`) and run with
`execute_async_v3` on one CUDA stream; device memory comes from cuda-python (no torch). The
decoder step keeps two fixed sets of self-attention cache buffers and swaps them every step
(the step reads one set and writes the other; input and output never alias). `reorder` gathers
rows on the device with device-to-device copies into the idle set, then swaps.

An engine is used only when its manifest record matches this machine (TensorRT version, GPU,
compute capability), the ONNX graph it came from, and its own key; otherwise the error says
how to rebuild. The pure parts (key, matching, profile checks, copy runs, CUDA error tuples)
run without TensorRT and are tested everywhere. tensorrt and cuda-python are imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import ConfigError, DependencyError, DeviceError, ModelFolderError
from rsicrc.runtime.backend import Backend, OrtBackend
from rsicrc.runtime.contract import (
    DECODER_STEP,
    DTYPES,
    GRAPHS,
    INPUT_IDS,
    LOGITS,
    STEP,
    GraphSpec,
    check_io,
    past_names,
    present_names,
)
from rsicrc.runtime.manifest import ENGINE_DIR, ENGINE_PRECISIONS, EngineRecord, Manifest

BACKENDS: tuple[str, ...] = ("onnxruntime", "trt")
MIN_TRT_MAJOR = 10  # name-based tensors + execute_async_v3 + int64 I/O
BUILD_HINT = "rsicrc build-engines {model_dir} --precision {precision}"


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise DependencyError(
            "TensorRT is not installed: install TensorRT 10 or 11 for your CUDA version (NVIDIA's "
            "tensorrt wheels or container), or use --backend onnxruntime"
        ) from None
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime bindings: `cuda.bindings.runtime` (12.6+) or the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise DependencyError("cuda-python is not installed: pip install cuda-python") from None
    return runtime


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


# --- engine records: key, matching, profiles (no TensorRT needed) ----------------------------------

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


# --- CUDA through cuda-python ------------------------------------------------------------------

def cuda_check(rt: Any, result: Any, what: str) -> Any:
    """cuda-python returns (error, *values): raise DeviceError unless error is cudaSuccess; return
    the single value (or the tuple of values, or None)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        status, message = rt.cudaGetErrorString(err)
        detail = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
        raise DeviceError(f"CUDA {what} failed: {getattr(err, 'name', err)} ({detail})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class DeviceBuffer:
    """cudaMalloc'ed memory, freed with cudaFree when the buffer is collected."""

    def __init__(self, cuda: CudaRuntime, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(cuda.call(cuda.rt.cudaMalloc(self.nbytes), "cudaMalloc"))
        self._free = weakref.finalize(self, cuda.rt.cudaFree, self.ptr)


class CudaRuntime:
    """One device and one stream; every call checked."""

    def __init__(self, device_id: int = 0) -> None:
        self.rt = import_cudart()
        self.call(self.rt.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        self.device_id = device_id
        self.stream = self.call(self.rt.cudaStreamCreate(), "cudaStreamCreate")
        weakref.finalize(self, self.rt.cudaStreamDestroy, self.stream)

    def call(self, result: Any, what: str) -> Any:
        return cuda_check(self.rt, result, what)

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def properties(self) -> tuple[str, str]:
        """(GPU name, "major.minor")."""
        prop = self.call(self.rt.cudaGetDeviceProperties(self.device_id), "cudaGetDeviceProperties")
        name = prop.name.split(b"\0")[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        return name.strip(), f"{prop.major}.{prop.minor}"

    def to_device(self, buffer: DeviceBuffer, array: np.ndarray, offset: int = 0) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.rt.cudaMemcpyAsync(buffer.ptr + offset, array.ctypes.data, array.nbytes, kind,
                                          self.stream), "cudaMemcpyAsync (host to device)")

    def to_host(self, array: np.ndarray, buffer: DeviceBuffer) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self.rt.cudaMemcpyAsync(array.ctypes.data, buffer.ptr, array.nbytes, kind, self.stream),
                  "cudaMemcpyAsync (device to host)")

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self.call(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, self.stream), "cudaMemcpyAsync (device)")

    def zero(self, buffer: DeviceBuffer) -> None:
        self.call(self.rt.cudaMemsetAsync(buffer.ptr, 0, buffer.nbytes, self.stream), "cudaMemsetAsync")

    def synchronize(self) -> None:
        self.call(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


def current_machine(trt: Any, cuda: CudaRuntime) -> MachineInfo:
    gpu, capability = cuda.properties()
    return MachineInfo(str(trt.__version__), gpu, capability)


# --- engines -----------------------------------------------------------------------------------

class TrtEngine:
    """One deserialized engine and its execution context, checked against the graph contract."""

    def __init__(self, trt: Any, cuda: CudaRuntime, path: Path, record: EngineRecord,
                 spec: GraphSpec) -> None:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelFolderError(f"{path}: cannot read the engine ({e.strerror}); rebuild the "
                                   "engines with --rebuild") from None
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise ModelFolderError(f"{path}: sha256 differs from the manifest (file changed after the "
                                   "build); rebuild the engines with --rebuild")
        self.trt, self.cuda, self.spec, self.record = trt, cuda, spec, record
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ModelFolderError(f"{path}: TensorRT {trt.__version__} cannot deserialize this engine; "
                                   "rebuild the engines with --rebuild")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        dtypes = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16", trt.DataType.INT64: "int64",
                  trt.DataType.INT32: "int32", trt.DataType.BOOL: "bool"}

        def signature(wanted: bool, declared: Sequence[str]) -> list[tuple[str, str, list[Any]]]:
            order = {n: i for i, n in enumerate(declared)}
            chosen = sorted((n for n in names if is_input[n] == wanted),
                            key=lambda n: order.get(n, len(order)))
            return [(n, dtypes.get(self.engine.get_tensor_dtype(n), str(self.engine.get_tensor_dtype(n))),
                     [d if d >= 0 else None for d in self.engine.get_tensor_shape(n)]) for n in chosen]

        check_io(spec, str(path), signature(True, spec.input_names()), signature(False, spec.output_names()))
        self.context = self.engine.create_execution_context()
        self._buffers: dict[str, DeviceBuffer] = {}

    def buffer(self, name: str, nbytes: int) -> DeviceBuffer:
        """The tensor's device buffer, grown (never shrunk) to hold `nbytes`."""
        current = self._buffers.get(name)
        if current is None or current.nbytes < nbytes:
            current = self._buffers[name] = DeviceBuffer(self.cuda, nbytes)
        return current

    def set_input(self, context: Any, name: str, shape: Sequence[int], address: int) -> None:
        if not context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise ConfigError(f"{self.spec.name}: TensorRT refused shape {list(shape)} for input {name}")
        context.set_tensor_address(name, address)

    def execute(self, context: Any) -> None:
        if not context.execute_async_v3(self.cuda.stream_handle):
            raise DeviceError(f"TensorRT execution of {self.spec.name} failed (see the TensorRT log above)")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.spec.input_names() if n not in inputs]
        if missing:
            raise ConfigError(f"{self.spec.name}: missing input(s) {', '.join(missing)}")
        check_profile(self.spec.name, self.record.profile, inputs)
        feed = []  # host arrays must live until the stream is synchronized
        for t in self.spec.inputs:
            array = np.ascontiguousarray(inputs[t.name], dtype=DTYPES[t.dtype])
            buffer = self.buffer(t.name, array.nbytes)
            self.cuda.to_device(buffer, array)
            self.set_input(self.context, t.name, array.shape, buffer.ptr)
            feed.append(array)
        outputs: dict[str, np.ndarray] = {}
        for t in self.spec.outputs:
            out = np.empty(tuple(self.context.get_tensor_shape(t.name)), dtype=DTYPES[t.dtype])
            self.context.set_tensor_address(t.name, self.buffer(t.name, out.nbytes).ptr)
            outputs[t.name] = out
        self.execute(self.context)
        for name, out in outputs.items():
            self.cuda.to_host(out, self._buffers[name])
        self.cuda.synchronize()
        return outputs


class TrtBackend:
    """TensorRT engines of one precision for an exported model folder; runs on CUDA only."""

    def __init__(self, model_dir: Path, manifest: Manifest, precision: str = "fp32", device: str = "auto",
                 device_id: int = 0) -> None:
        if device == "cpu":
            raise ConfigError("the TensorRT backend runs on CUDA only; use --backend onnxruntime with "
                              "--device cpu")
        if device not in ("auto", "cuda"):
            raise ConfigError(f"unknown device {device!r}; choose one of: auto, cpu, cuda")
        if precision not in ENGINE_PRECISIONS:
            raise ConfigError(f"TensorRT engines are built in {' or '.join(ENGINE_PRECISIONS)}, not "
                              f"{precision!r}; choose one of: {', '.join(ENGINE_PRECISIONS)}")
        self.trt = import_tensorrt()
        require_supported(self.trt.__version__)
        self.cuda = CudaRuntime(device_id)
        self.machine = current_machine(self.trt, self.cuda)
        self.model_dir, self.manifest, self.precision = Path(model_dir), manifest, precision
        self.device = "cuda"
        self._engines: dict[str, TrtEngine] = {}

    def session(self, graph: str) -> TrtEngine:
        """The graph's engine, loaded and checked on first use (named like OrtBackend.session)."""
        if graph not in GRAPHS:
            raise ConfigError(f"unknown graph {graph!r}; choose one of: {', '.join(GRAPHS)}")
        if graph not in self._engines:
            record = require_engine(self.model_dir, self.manifest, graph, self.precision, self.machine)
            path = self.model_dir / ENGINE_DIR / record.file
            self._engines[graph] = TrtEngine(self.trt, self.cuda, path, record, self.manifest.contract[graph])
        return self._engines[graph]

    def run(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.session(graph).run(inputs)

    def bound_decoder(self, cross: Mapping[str, np.ndarray]) -> TrtDecoderStep:
        """A decoder-step runner for rows already tiled by beam (cross K/V [R, H, N, dh])."""
        return TrtDecoderStep(self.session(DECODER_STEP), self.manifest, cross)


class TrtDecoderStep:
    """The decoder-step engine as a StepModel; the self-attention caches never leave the GPU.

    It has an execution context of its own: shapes and the constant addresses (ids, step, cross
    K/V, logits) are bound once; each step only points past_*/present_* at the two cache sets.
    """

    def __init__(self, engine: TrtEngine, manifest: Manifest, cross: Mapping[str, np.ndarray]) -> None:
        dims, cuda = manifest.dims, engine.cuda
        self._engine, self._cuda = engine, cuda
        self.rows = int(next(iter(cross.values())).shape[0])
        shape = (self.rows, dims.num_heads, dims.max_len, dims.head_dim)  # [R, H, S, dh]
        self._row_bytes = int(np.prod(shape[1:])) * 4
        self._past = [n for kv in past_names(dims) for n in kv]
        self._present = [n for kv in present_names(dims) for n in kv]
        empty = np.zeros((), np.float32)  # broadcast views: shapes without memory
        check_profile(DECODER_STEP, engine.record.profile, {
            INPUT_IDS: np.broadcast_to(empty, (self.rows, 1)),
            **{n: np.broadcast_to(empty, shape) for n in self._past}, **cross})
        self._context = context = engine.engine.create_execution_context()
        self._sets = [[DeviceBuffer(cuda, self.rows * self._row_bytes) for _ in self._past] for _ in range(2)]
        for buffer in (b for s in self._sets for b in s):
            cuda.zero(buffer)  # unwritten slots are masked, but 0 * NaN garbage would not be
        self._current = 0  # index of the set holding the caches the next step reads
        self._ids = DeviceBuffer(cuda, self.rows * 8)
        self._step = DeviceBuffer(cuda, 8)
        engine.set_input(context, INPUT_IDS, (self.rows, 1), self._ids.ptr)
        engine.set_input(context, STEP, (1,), self._step.ptr)
        self._cross: list[DeviceBuffer] = []
        for name, array in cross.items():
            host = np.ascontiguousarray(array, dtype=np.float32)
            buffer = DeviceBuffer(cuda, host.nbytes)
            cuda.to_device(buffer, host)
            engine.set_input(context, name, host.shape, buffer.ptr)
            self._cross.append(buffer)
        for name, buffer in zip(self._past, self._sets[0], strict=True):
            engine.set_input(context, name, shape, buffer.ptr)
        self._logits = np.zeros((self.rows, dims.vocab_size), np.float32)  # [R, V]
        self._logits_buffer = DeviceBuffer(cuda, self._logits.nbytes)
        context.set_tensor_address(LOGITS, self._logits_buffer.ptr)
        cuda.synchronize()

    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        ids = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1, 1)  # [R, 1]
        position = np.array([step], dtype=np.int64)  # [1]
        self._cuda.to_device(self._ids, ids)
        self._cuda.to_device(self._step, position)
        context = self._context
        for name, buffer in zip(self._past, self._sets[self._current], strict=True):
            context.set_tensor_address(name, buffer.ptr)
        for name, buffer in zip(self._present, self._sets[1 - self._current], strict=True):
            context.set_tensor_address(name, buffer.ptr)
        self._engine.execute(context)
        self._cuda.to_host(self._logits, self._logits_buffer)
        self._cuda.synchronize()
        self._current = 1 - self._current
        return self._logits.copy()  # [R, V]

    def reorder(self, source: np.ndarray) -> None:
        """Gather rows into the idle set with device copies, then make it the current one."""
        runs = copy_runs(source)
        size = self._row_bytes
        for src, dst in zip(self._sets[self._current], self._sets[1 - self._current], strict=True):
            for to, start, count in runs:
                self._cuda.copy(dst.ptr + to * size, src.ptr + start * size, count * size)
        self._current = 1 - self._current  # stream order puts the copies before the next step


def make_backend(kind: str, model_dir: Path, manifest: Manifest, precision: str = "fp32",
                 device: str = "auto", threads: int | None = None) -> Backend:
    """"onnxruntime" -> OrtBackend, "trt" -> TrtBackend (threads apply to ONNX Runtime only)."""
    if kind == "onnxruntime":
        return OrtBackend(model_dir, manifest, precision, device, threads)
    if kind == "trt":
        return TrtBackend(model_dir, manifest, precision, device)
    raise ConfigError(f"unknown backend {kind!r}; choose one of: {', '.join(BACKENDS)}")
