"""TensorRT engines for an exported model folder (DESIGN §8): `rsicrc build-engines`, `export --trt`.

    build_engines(model_dir, BuildOptions(precision="fp16")) -> BuildReport

- Optimization profiles come from the graph contract: every symbolic dimension of every input
  gets (min, opt, max) from `ProfileOptions` ("batch" = pairs or texts; decoder rows = pairs x
  beams; "seq" = text tokens up to max_len); fixed dimensions are copied as declared.
- fp16: TensorRT 10 parses the fp32 ONNX, sets BuilderFlag.FP16 and pins LayerNorm, softmax and
  the logits MatMul to fp32 (OBEY_PRECISION_CONSTRAINTS). TensorRT 11 removed that flag (every
  network is strongly typed), so it parses an fp16 ONNX made by `convert_to_fp16`, which keeps
  the same ops in fp32 and the graph inputs/outputs in the contract's float32.
- One timing cache per machine lives in MODEL_DIR/engines/ and is reused by every build.
- Engines are written atomically under names that contain their key, then recorded in the
  manifest (atomically rewritten); a replaced engine file is removed only afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsicrc.checks import positive_int
from rsicrc.errors import ConfigError, ContractError, DependencyError, ExportError
from rsicrc.export.fp16 import convert_to_fp16, fp32_tensor_names
from rsicrc.files import write_atomic
from rsicrc.runtime.contract import BATCH, DECODER_STEP, GRAPHS, SEQ, TEXT_ENCODER, Dims, GraphSpec
from rsicrc.runtime.cuda import CudaRuntime
from rsicrc.runtime.manifest import (
    ENGINE_DIR,
    ENGINE_PRECISIONS,
    EngineRecord,
    Manifest,
    load_manifest,
    write_manifest,
)
from rsicrc.runtime.trt_backend import current_machine
from rsicrc.runtime.trt_records import (
    MachineInfo,
    engine_key,
    engine_problem,
    find_engine,
    import_tensorrt,
    require_supported,
)

Profile = dict[str, dict[str, list[int]]]  # input -> {"min", "opt", "max"}
FP16_MODES = ("none", "builder_flag", "strongly_typed")


@dataclass(frozen=True)
class ProfileOptions:
    """The shapes the engines accept and are tuned for."""

    max_batch: int = 16  # most pairs (image encoder), texts (text encoder) or pairs (decoder) per call
    opt_batch: int = 1  # the batch TensorRT tunes for: one pair, the interactive `caption` case
    max_beam: int = 5  # most beams per pair: decoder rows go up to max_batch * max_beam
    opt_beam: int = 3  # the beam tuned for (DecodingOptions' default)
    opt_seq: int = 16  # text tokens tuned for (START .. END), capped at max_len

    def __post_init__(self) -> None:
        for name in ("max_batch", "opt_batch", "max_beam", "opt_beam", "opt_seq"):
            positive_int(getattr(self, name), name)
        if self.opt_batch > self.max_batch or self.opt_beam > self.max_beam:
            raise ConfigError("opt_batch/opt_beam must not exceed max_batch/max_beam")


def dim_ranges(graph: str, dims: Dims, options: ProfileOptions) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of each symbolic dimension of `graph`."""
    if graph == DECODER_STEP:
        batch = (1, options.opt_batch * options.opt_beam, options.max_batch * options.max_beam)
    else:
        batch = (1, options.opt_batch, options.max_batch)
    ranges = {BATCH: batch}
    if graph == TEXT_ENCODER:
        ranges[SEQ] = (1, min(options.opt_seq, dims.max_len), dims.max_len)
    return ranges


def graph_profile(spec: GraphSpec, ranges: Mapping[str, tuple[int, int, int]]) -> Profile:
    """The optimization profile of one graph: every input with a symbolic dimension."""
    profile: Profile = {}
    for t in spec.inputs:
        if not any(isinstance(d, str) for d in t.shape):
            continue  # fully static input (decoder `step`): no profile entry
        unknown = [d for d in t.shape if isinstance(d, str) and d not in ranges]
        if unknown:
            raise ContractError(f"{spec.name}: input {t.name} has dimension(s) {unknown} with no range; "
                                f"known: {', '.join(ranges)}")
        profile[t.name] = {k: [ranges[d][i] if isinstance(d, str) else int(d) for d in t.shape]
                           for i, k in enumerate(("min", "opt", "max"))}
    return profile


def profiles_for(manifest: Manifest, options: ProfileOptions) -> dict[str, Profile]:
    return {g: graph_profile(manifest.contract[g], dim_ranges(g, manifest.dims, options)) for g in GRAPHS}


# --- TensorRT versions -------------------------------------------------------------------------

@dataclass(frozen=True)
class TrtFeatures:
    """How this TensorRT builds fp16."""

    version: tuple[int, int, int]  # parsed tensorrt.__version__
    fp16_mode: str  # "builder_flag" (10.x default) or "strongly_typed" (11.x; 10.x on request)
    strongly_typed_flag: bool  # pass NetworkDefinitionCreationFlag.STRONGLY_TYPED (10.x only)


def features_for(version: str, strongly_typed: bool = False) -> TrtFeatures:
    """TensorRT 10 has BuilderFlag.FP16 (and STRONGLY_TYPED as an opt-in); TensorRT 11 removed the
    flag and makes every network strongly typed (the flag there is deprecated and ignored)."""
    parsed = require_supported(version)
    if parsed[0] >= 11:
        return TrtFeatures(parsed, "strongly_typed", False)
    return TrtFeatures(parsed, "strongly_typed" if strongly_typed else "builder_flag", strongly_typed)


# --- files -------------------------------------------------------------------------------------

def timing_cache_name(machine: MachineInfo) -> str:
    """One timing cache per TensorRT version and GPU (a cache is only valid there)."""
    text = f"{machine.tensorrt}|{machine.gpu}|{machine.compute_capability}"
    return f"timing-{hashlib.sha256(text.encode()).hexdigest()[:16]}.cache"


def engine_file_name(graph: str, precision: str, key: str) -> str:
    return f"{graph}.{precision}.{key[:16]}.plan"


def with_engines(manifest: Manifest, records: list[EngineRecord]) -> Manifest:
    """The manifest with `records` replacing any engine of the same graph and precision."""
    replaced = {(r.graph, r.precision) for r in records}
    kept = [e for e in manifest.engines if (e.graph, e.precision) not in replaced]
    order = {g: i for i, g in enumerate(GRAPHS)}
    merged = sorted([*kept, *records], key=lambda e: (order[e.graph], ENGINE_PRECISIONS.index(e.precision)))
    return dataclasses.replace(manifest, engines=tuple(merged))


# --- building ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"  # "fp32" or "fp16"
    profile: ProfileOptions = ProfileOptions()  # shapes the engines accept
    workspace_gb: float = 4.0  # builder workspace memory pool limit
    rebuild: bool = False  # build even when a matching engine is already recorded
    strongly_typed: bool = False  # TensorRT 10: fp16 from an fp16 ONNX instead of the builder flag
    tf32: bool = False  # let fp32 engines use TF32 (faster; about 1e-3 relative error)
    graphs: tuple[str, ...] = GRAPHS  # which graphs to build

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise ConfigError(f"unknown engine precision {self.precision!r}; choose one of: "
                              f"{', '.join(ENGINE_PRECISIONS)}")
        if isinstance(self.workspace_gb, bool) or not (
                isinstance(self.workspace_gb, (int, float)) and 0 < self.workspace_gb <= 1024):
            raise ConfigError(f"workspace must be a number of GB in (0, 1024], got {self.workspace_gb!r}")
        unknown = [g for g in self.graphs if g not in GRAPHS]
        if unknown or not self.graphs:
            raise ConfigError(f"unknown graph(s) {unknown}; choose from: {', '.join(GRAPHS)}")


@dataclass(frozen=True)
class EngineReport:
    graph: str  # graph name
    file: str  # engine file in MODEL_DIR/engines/
    built: bool  # False: a matching engine was already there
    seconds: float  # build time (0 when kept)
    size_bytes: int  # engine file size


@dataclass(frozen=True)
class BuildReport:
    model_dir: Path  # the model folder
    precision: str  # engine precision
    machine: MachineInfo  # what the engines are for
    fp16_mode: str  # one of FP16_MODES
    engines: tuple[EngineReport, ...]  # one per graph built or kept

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model_dir": str(self.model_dir)}

    def lines(self) -> list[str]:
        m = self.machine
        rows = [f"TensorRT {m.tensorrt} engines ({self.precision}, fp16 mode {self.fp16_mode}) for {m.gpu} "
                f"(compute capability {m.compute_capability}) in {self.model_dir / ENGINE_DIR}"]
        for e in self.engines:
            state = f"built in {e.seconds:.1f} s" if e.built else "up to date"
            rows.append(f"  {e.file:48} {e.size_bytes / 1e6:9.1f} MB   {state}")
        return rows


def _pin_fp32(trt: Any, network: Any, fp32_tensors: set[str]) -> int:
    """TensorRT 10 + FP16 flag: keep normalization, softmax and the layers that produce the ONNX
    tensors of fp32-kept nodes (LayerNorm, softmax, the logits MatMul) in fp32."""
    pinned = 0
    floats = (trt.DataType.FLOAT, trt.DataType.HALF)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if layer.type in (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX) or any(
                o.name in fp32_tensors for o in outputs):
            if not all(o.dtype in floats for o in outputs):
                continue
            layer.precision = trt.DataType.FLOAT
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.DataType.FLOAT)
            pinned += 1
    return pinned


def _serialize(trt: Any, onnx_path: Path, profile: Profile, fp16_mode: str, options: BuildOptions,
               features: TrtFeatures, cache: bytes, fp32_tensors: set[str]) -> tuple[bytes, bytes]:
    """Parse, configure and build one engine; returns (plan, updated timing cache)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if fp16_mode == "strongly_typed" and features.strongly_typed_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {' '.join(errors.split())[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    if fp16_mode == "builder_flag":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        _pin_fp32(trt, network, fp32_tensors)
    if fp16_mode == "none" and not options.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # "fp32" means fp32: match ONNX Runtime closely
    shapes = builder.create_optimization_profile()
    for name, s in profile.items():
        shapes.set_shape(name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(shapes)
    timing = config.create_timing_cache(cache)
    if not config.set_timing_cache(timing, False):  # a cache from elsewhere: start afresh
        config.set_timing_cache(config.create_timing_cache(b""), False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise DependencyError("fp16 engines need the onnx package: pip install onnx") from None
    return onnx


def build_engines(model_dir: Path, options: BuildOptions = BuildOptions()) -> BuildReport:
    """Build (or keep, when already matching) the engines of one precision on this machine."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    trt = import_tensorrt()
    features = features_for(str(trt.__version__), options.strongly_typed)
    fp16_mode = "none" if options.precision == "fp32" else features.fp16_mode
    machine = current_machine(trt, CudaRuntime())
    engine_dir = model_dir / ENGINE_DIR
    engine_dir.mkdir(exist_ok=True)
    cache_path = engine_dir / timing_cache_name(machine)
    profiles = profiles_for(manifest, options.profile)
    reports = []
    for graph in options.graphs:
        source = manifest.graphs["fp32"][graph]
        key = engine_key(tensorrt=machine.tensorrt, gpu=machine.gpu,
                         compute_capability=machine.compute_capability, onnx_sha256=source.sha256,
                         precision=options.precision, fp16_mode=fp16_mode, profile=profiles[graph])
        old = find_engine(manifest, graph, options.precision)
        if (old is not None and old.key == key and not options.rebuild and (engine_dir / old.file).is_file()
                and engine_problem(old, manifest, machine) is None):
            reports.append(EngineReport(graph, old.file, False, 0.0, (engine_dir / old.file).stat().st_size))
            continue
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=engine_dir, prefix=".build-") as tmp:
            onnx_path, fp32_tensors = model_dir / source.file, set()
            if fp16_mode == "strongly_typed":
                onnx = _import_onnx()
                onnx_path = Path(tmp) / f"{graph}.fp16.onnx"
                onnx.save(convert_to_fp16(onnx.load(str(model_dir / source.file))), str(onnx_path))
            elif fp16_mode == "builder_flag":
                fp32_tensors = fp32_tensor_names(_import_onnx().load(str(onnx_path)))
            cache = cache_path.read_bytes() if cache_path.is_file() else b""
            plan, cache = _serialize(trt, onnx_path, profiles[graph], fp16_mode, options, features, cache,
                                     fp32_tensors)
        file = engine_file_name(graph, options.precision, key)
        write_atomic(engine_dir / file, plan)
        write_atomic(cache_path, cache)
        record = EngineRecord(graph=graph, precision=options.precision, file=file,
                              sha256=hashlib.sha256(plan).hexdigest(), key=key, tensorrt=machine.tensorrt,
                              gpu=machine.gpu, compute_capability=machine.compute_capability,
                              onnx_sha256=source.sha256, fp16_mode=fp16_mode, profile=profiles[graph])
        manifest = with_engines(manifest, [record])
        write_manifest(model_dir, manifest)  # each finished engine is recorded at once
        if old is not None and old.file != file:
            (engine_dir / old.file).unlink(missing_ok=True)
        reports.append(EngineReport(graph, file, True, time.monotonic() - started, len(plan)))
    return BuildReport(model_dir, options.precision, machine, fp16_mode, tuple(reports))


def check_tensorrt() -> str:
    """Fail early (DependencyError) when TensorRT is missing or too old; returns its version."""
    trt = import_tensorrt()
    require_supported(str(trt.__version__))
    return str(trt.__version__)
