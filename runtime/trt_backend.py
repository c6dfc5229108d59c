"""The TensorRT backend: engines from MODEL_DIR/engines/ behind the `Backend` interface (DESIGN §8).

    TrtBackend(folder, RuntimeOptions(engine="trt", precision="fp16"))   (via ModelFolder.backend)
    TrtBackend.run(graph, {name: array}) -> {name: array}        numpy in, numpy out, by name
    TrtBackend.bound_decoder(tiled_cross) -> TrtDecoderStep       the StepModel seam, KV on the GPU

Tensors are bound by name (`set_input_shape`, `set_tensor_address`) and run with
`execute_async_v3` on one CUDA stream; device memory comes from cuda-python (no torch). The
decoder step keeps two fixed sets of self-attention cache buffers and swaps them every step
(the step reads one set and writes the other; input and output never alias). `reorder` gathers
rows on the device with device-to-device copies into the idle set, then swaps.

An engine is used only when its manifest record matches this machine (TensorRT version, GPU,
compute capability), the ONNX graph it came from, and its own key; otherwise the error says
how to rebuild. The pure parts (key, matching, profile checks, copy runs: `trt_records`; CUDA
error tuples: `cuda`) run without TensorRT and are tested everywhere. tensorrt and cuda-python
are imported lazily.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rsicrc.errors import ConfigError, DeviceError, ModelFolderError
from rsicrc.runtime.contract import (
    CROSS_ATTENTION,
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
from rsicrc.runtime.cuda import CudaRuntime, DeviceBuffer
from rsicrc.runtime.manifest import ENGINE_DIR, ENGINE_PRECISIONS, EngineRecord, Manifest
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.trt_records import (
    MachineInfo,
    check_profile,
    copy_runs,
    import_tensorrt,
    require_engine,
    require_supported,
)

if TYPE_CHECKING:
    from rsicrc.runtime.model_folder import ModelFolder


def current_machine(trt: Any, cuda: CudaRuntime) -> MachineInfo:
    gpu, capability = cuda.properties()
    return MachineInfo(str(trt.__version__), gpu, capability)


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

    def __init__(self, folder: ModelFolder, options: RuntimeOptions, device_id: int = 0) -> None:
        if options.device == "cpu":
            raise ConfigError("the TensorRT engine runs on CUDA only; use --engine onnxruntime with "
                              "--device cpu")
        precision = options.precision or "fp32"
        if precision not in ENGINE_PRECISIONS:
            raise ConfigError(f"TensorRT engines are built in {' or '.join(ENGINE_PRECISIONS)}, not "
                              f"{precision!r}; choose one of: {', '.join(ENGINE_PRECISIONS)}")
        self.trt = import_tensorrt()
        require_supported(self.trt.__version__)
        self.cuda = CudaRuntime(device_id)
        self.machine = current_machine(self.trt, self.cuda)
        self.folder, self.precision = folder, precision
        self.device = "cuda"
        self._engines: dict[str, TrtEngine] = {}

    @property
    def manifest(self) -> Manifest:
        return self.folder.manifest

    def session(self, graph: str) -> TrtEngine:
        """The graph's engine, loaded and checked on first use (named like OrtBackend.session)."""
        if graph not in GRAPHS:
            raise ConfigError(f"unknown graph {graph!r}; choose one of: {', '.join(GRAPHS)}")
        if graph not in self._engines:
            record = require_engine(self.folder.path, self.manifest, graph, self.precision, self.machine)
            path = self.folder.path / ENGINE_DIR / record.file
            self._engines[graph] = TrtEngine(self.trt, self.cuda, path, record, self.manifest.contract[graph])
        return self._engines[graph]

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.session(graph).run(inputs)

    def bound_decoder(self, cross: Mapping[str, np.ndarray]) -> TrtDecoderStep:
        """A decoder-step runner for rows already tiled by beam (cross K/V [R, H, N, dh])."""
        return TrtDecoderStep(self.session(DECODER_STEP), self.manifest, cross)


class TrtDecoderStep:
    """The decoder-step engine as a StepModel; the self-attention caches never leave the GPU.

    It has an execution context of its own: shapes and the constant addresses (ids, step, cross
    K/V, logits, cross_attention where the engine has it) are bound once; each step only points
    past_*/present_* at the two cache sets. The attention is copied to the host only when read.
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
        self._attention: np.ndarray | None = None  # [R, N] host copy, where the engine has the output
        if CROSS_ATTENTION in engine.spec.output_names():
            self._attention = np.zeros((self.rows, dims.visual_tokens), np.float32)
            self._attention_buffer = DeviceBuffer(cuda, self._attention.nbytes)
            context.set_tensor_address(CROSS_ATTENTION, self._attention_buffer.ptr)
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

    def attention(self) -> np.ndarray | None:
        """The last step's cross-attention [R, N] (copied from the GPU now); None for an engine
        built from a graph without it (format 1)."""
        if self._attention is None:
            return None
        self._cuda.to_host(self._attention, self._attention_buffer)
        self._cuda.synchronize()
        return self._attention.copy()

    def reorder(self, source: np.ndarray) -> None:
        """Gather rows into the idle set with device copies, then make it the current one."""
        runs = copy_runs(source)
        size = self._row_bytes
        for src, dst in zip(self._sets[self._current], self._sets[1 - self._current], strict=True):
            for to, start, count in runs:
                self._cuda.copy(dst.ptr + to * size, src.ptr + start * size, count * size)
        self._current = 1 - self._current  # stream order puts the copies before the next step
