"""Inference backends behind one small interface: numpy in, numpy out, by tensor name (DESIGN §7).

    open_backend(folder, options) -> OrtBackend | TrtBackend   (options.engine picks)

`OrtBackend` runs the exported graphs with ONNX Runtime: the CPU execution provider with
every graph optimization, or the CUDA provider where onnxruntime-gpu can really use a GPU.
Each graph gets one session, created on first use (its file hashed against the manifest by the
ModelFolder) and checked against the manifest's graph contract before it runs anything. The
decoder step goes through `BoundDecoderStep` (IO binding), which keeps the self-attention caches
in preallocated buffers (on the GPU under CUDA) instead of new host arrays every step.
Torch-free; ONNX Runtime and TensorRT are imported lazily.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rsicrc.errors import DependencyError, DeviceError, ModelFolderError
from rsicrc.runtime.contract import (
    CROSS_ATTENTION,
    DECODER_STEP,
    INPUT_IDS,
    LOGITS,
    STEP,
    check_io,
    past_names,
    present_names,
)
from rsicrc.runtime.decoding import StepModel
from rsicrc.runtime.manifest import Manifest
from rsicrc.runtime.options import RuntimeOptions

if TYPE_CHECKING:
    from rsicrc.runtime.model_folder import ModelFolder

CPU_EP, CUDA_EP = "CPUExecutionProvider", "CUDAExecutionProvider"
# ONNX Runtime's type strings -> the contract's dtype names.
ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16"}
_QUIET = 3  # ORT log severity "error": no provider-fallback warnings on stderr
# Session config keys: save an optimized graph with its initializers in an external data file.
SAVE_INITIALIZERS = "session.optimized_model_external_initializers_file_name"
SAVE_INITIALIZERS_MIN_BYTES = "session.optimized_model_external_initializers_min_size_in_bytes"


class Backend(Protocol):
    """Runs the exported graphs of one precision on named numpy inputs, outputs by name."""

    device: str  # "cpu" | "cuda": where the graphs actually run
    precision: str  # the graphs' precision: fp32 | int8 | fp16

    def session(self, graph: str) -> Any:
        """Load (and check against the contract) the graph now; later calls reuse it."""
        ...

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def bound_decoder(self, cross: Mapping[str, np.ndarray]) -> StepModel:
        """The decoder step for rows already tiled by beam (cross K/V [R, H, N, dh]), its
        self-attention caches kept where the graphs run."""
        ...


def open_backend(folder: ModelFolder, options: RuntimeOptions) -> Backend:
    """The backend `options.engine` names, for `options.precision` (already resolved by
    ModelFolder.resolve); TensorRT is imported only when asked for."""
    if options.engine == "trt":
        from rsicrc.runtime.trt_backend import TrtBackend

        return TrtBackend(folder, options)
    return OrtBackend(folder, options)


def import_onnxruntime() -> Any:
    """onnxruntime, imported lazily so that `rsicrc --help` and the PyTorch side never need it."""
    try:
        import onnxruntime
    except ImportError:
        raise DependencyError(
            "ONNX Runtime is not installed: pip install 'rsicrc[cpu]' (or [gpu] for CUDA)"
        ) from None
    return onnxruntime


def io_signature(args: list[Any]) -> list[tuple[str, str, list[Any]]]:
    """(name, contract dtype, shape) of ORT NodeArgs; unknown types are kept verbatim."""
    return [(a.name, ORT_TYPES.get(a.type, a.type), list(a.shape)) for a in args]


def session_options(ort: Any, threads: int | None) -> Any:
    """The runtime's ORT session options (benchmarks profile sessions made with these too)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = _QUIET
    # Idle pool threads block instead of spinning: each session has its own pool, and the
    # image encoder's pool spinning on after its run slowed the next ~10 decoder steps up to 2x.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


class OrtBackend:
    """ONNX Runtime sessions for one precision of an exported model folder."""

    def __init__(self, folder: ModelFolder, options: RuntimeOptions) -> None:
        self.folder = folder
        self.precision = folder.precision(options.precision)
        self.threads = options.threads
        self._ort = import_onnxruntime()
        self._sessions: dict[str, Any] = {}
        self.device = "cpu"
        if options.device in ("auto", "cuda"):
            self._probe_cuda(required=options.device == "cuda")

    @property
    def manifest(self) -> Manifest:
        return self.folder.manifest

    def _probe_cuda(self, required: bool) -> None:
        """Use CUDA only if a real session gets the CUDA provider; `cuda` fails loudly otherwise.

        get_available_providers() lists CUDA even without a GPU, so the test is a session. A
        session that fails on CUDA is retried on the CPU: if that fails too, the file is at
        fault and its error is raised instead.
        """
        reason = f"providers: {', '.join(self._ort.get_available_providers())}"
        if CUDA_EP in self._ort.get_available_providers():
            self.device = "cuda"
            try:
                session = self._create(DECODER_STEP)
            except ModelFolderError as e:
                self.device = "cpu"
                self._sessions[DECODER_STEP] = self._create(DECODER_STEP)
                reason += f"; the CUDA session failed: {e}"
            else:
                self._sessions[DECODER_STEP] = session  # usable either way (CPU is in its list)
                if CUDA_EP in session.get_providers():
                    return
                self.device = "cpu"
                reason = f"providers: {', '.join(session.get_providers())}"
        if required:
            raise DeviceError(f"CUDA requested but ONNX Runtime could not use it ({reason}); "
                              "install onnxruntime-gpu and check the GPU, or use --device cpu")

    def graph_path(self, graph: str) -> Path:
        """The graph's file (hashed against the manifest on first use)."""
        return self.folder.graph_file(self.precision, graph)

    def _create(self, graph: str) -> Any:
        """A new session for `graph`, its IO checked against the manifest contract. On the CPU the
        graph is optimized once and kept in the folder's cache; later loads read that optimized
        form without optimizing again (bit-identical outputs; rsicrc.runtime.load_cache)."""
        ort = self._ort
        path = self.graph_path(graph)
        source, options, staging = str(path), session_options(ort, self.threads), None
        stem = self.folder.cache.optimized_name(self.manifest.graphs[self.precision][graph].sha256,
                                                ort.__version__)
        if self.device == "cpu":
            optimized = self.folder.cache.optimized(stem)
            if optimized is not None:
                source = str(optimized)
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            else:
                staging = self.folder.cache.staging()
                if staging is not None:
                    options.optimized_model_filepath = str(staging / f"{stem}.onnx")
                    options.add_session_config_entry(SAVE_INITIALIZERS, f"{stem}.data")
                    options.add_session_config_entry(SAVE_INITIALIZERS_MIN_BYTES, "1024")
        try:
            session = self._session(source, options)
        except ModelFolderError:
            if staging is None:
                raise
            shutil.rmtree(staging, ignore_errors=True)  # could not save: load as usual
            staging = None
            session = self._session(source, session_options(ort, self.threads))
        if staging is not None:
            self.folder.cache.publish(staging, stem)
        spec = self.manifest.contract.get(graph)
        if spec is None:
            raise ModelFolderError(f"{self.folder.path}: the manifest's graph contract has no {graph}")
        check_io(spec, str(path), io_signature(session.get_inputs()), io_signature(session.get_outputs()))
        return session

    def _session(self, source: str, options: Any) -> Any:
        providers = [CUDA_EP, CPU_EP] if self.device == "cuda" else [CPU_EP]
        try:
            # enable_fallback=0: ORT's own CPU fallback would print to stdout; we decide instead.
            return self._ort.InferenceSession(source, sess_options=options, providers=providers,
                                              enable_fallback=0)
        except Exception as e:  # noqa: BLE001 - ORT raises its own pybind exception types
            reason = " ".join(str(e).split())[:200]
            raise ModelFolderError(f"{source}: ONNX Runtime cannot load this graph ({reason})") from None

    def session(self, graph: str) -> Any:
        """The graph's session, created (and checked) on first use."""
        if graph not in self._sessions:
            self._sessions[graph] = self._create(graph)
        return self._sessions[graph]

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session(graph)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))

    def bound_decoder(self, cross: Mapping[str, np.ndarray], device_type: str | None = None
                      ) -> BoundDecoderStep:
        """A decoder-step runner whose caches live on `device_type` (default: this backend's)."""
        return BoundDecoderStep(self._ort, self.session(DECODER_STEP), self.manifest, cross,
                                device_type or self.device)


class BoundDecoderStep:
    """The decoder step through ONNX Runtime IO binding; implements the StepModel seam.

    Cross K/V are uploaded once. The self-attention caches are two fixed sets of device
    buffers used in turn (the step reads one set and writes the other, never aliasing input
    and output). `reorder` gathers on the host (one np.take per tensor) and writes back in
    place, since ORT offers no device-side gather outside a graph (on the CPU the gather
    writes straight into the numpy arrays the OrtValues share). Logits are written into a
    host buffer, and so is the cross-attention where the graph has it (format 2 on). The
    captioner uses it on every device.
    """

    def __init__(self, ort: Any, session: Any, manifest: Manifest, cross: Mapping[str, np.ndarray],
                 device_type: str, device_id: int = 0) -> None:
        dims = manifest.dims
        rows = next(iter(cross.values())).shape[0]
        shape = (rows, dims.num_heads, dims.max_len, dims.head_dim)  # [R, H, S, dh]

        def upload(array: np.ndarray) -> Any:
            return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device_type, device_id)

        self._session = session
        self._io = session.io_binding()
        self._past = [n for kv in past_names(dims) for n in kv]
        self._present = [n for kv in present_names(dims) for n in kv]
        host = [[np.zeros(shape, np.float32) for _ in self._past] for _ in range(2)]
        # On the CPU an OrtValue made from numpy shares (and keeps alive) that array, so reorder
        # gathers straight into it; on a GPU the upload is a copy and the host arrays go away.
        self._host = host if device_type == "cpu" else None
        self._sets = [[upload(a) for a in arrays] for arrays in host]
        self._current = 0  # index of the set holding the caches to read at the next step
        self._cross = {name: upload(array) for name, array in cross.items()}
        for name, value in self._cross.items():
            self._io.bind_ortvalue_input(name, value)
        self._logits = np.zeros((rows, dims.vocab_size), np.float32)  # [R, V]
        self._logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits, "cpu", 0)
        self._io.bind_ortvalue_output(LOGITS, self._logits_value)
        self._attention: np.ndarray | None = None  # [R, N], where the graph outputs it
        if CROSS_ATTENTION in manifest.contract[DECODER_STEP].output_names():
            self._attention = np.zeros((rows, dims.visual_tokens), np.float32)  # [R, N]
            self._attention_value = ort.OrtValue.ortvalue_from_numpy(self._attention, "cpu", 0)
            self._io.bind_ortvalue_output(CROSS_ATTENTION, self._attention_value)
        self._feed: list[np.ndarray] = []  # host inputs of the current step, kept alive

    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        ids = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1, 1)  # [R, 1]
        position = np.array([step], dtype=np.int64)  # [1]
        self._feed = [ids, position]
        self._io.bind_cpu_input(INPUT_IDS, ids)
        self._io.bind_cpu_input(STEP, position)
        read, write = self._sets[self._current], self._sets[1 - self._current]
        for name, value in zip(self._past, read, strict=True):
            self._io.bind_ortvalue_input(name, value)
        for name, value in zip(self._present, write, strict=True):
            self._io.bind_ortvalue_output(name, value)
        self._session.run_with_iobinding(self._io)
        self._io.synchronize_outputs()
        self._current = 1 - self._current
        return self._logits.copy()  # [R, V]

    def attention(self) -> np.ndarray | None:
        """The last step's cross-attention [R, N]; None for a graph without it (format 1)."""
        return None if self._attention is None else self._attention.copy()

    def reorder(self, source: np.ndarray) -> None:
        index = np.ascontiguousarray(source, dtype=np.int64)  # [R]
        if self._host is not None:
            for array in self._host[self._current]:  # [R, H, S, dh], shared with its OrtValue
                array[...] = np.take(array, index, axis=0)
            return
        for value in self._sets[self._current]:
            value.update_inplace(np.ascontiguousarray(np.take(value.numpy(), index, axis=0)))
