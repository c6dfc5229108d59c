"""TensorRT: everything that does not need TensorRT runs here for real (profiles from the contract,
engine key, version detection, the fp16 ONNX conversion on the exported tiny model, engine records
in the manifest, atomic writes, backend comparison, CUDA error tuples, one-line dependency errors).
The engine build/run tests at the end are marked requires_trt + requires_cuda and skip without them."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from conftest import LEVIRCC, random_pairs
from rsicrc.errors import ConfigError, ContractError, DependencyError, DeviceError, ModelFolderError
from rsicrc.export.fp16 import convert_to_fp16, fp32_tensor_names, precision_counts
from rsicrc.export.trt import (
    ProfileOptions,
    dim_ranges,
    engine_file_name,
    features_for,
    graph_profile,
    profiles_for,
    timing_cache_name,
    with_engines,
)
from rsicrc.files import write_atomic
from rsicrc.runtime.backend import OrtBackend
from rsicrc.runtime.compare import QUERIES, TOLERANCES, CheckReport, GraphInputs, compare_graphs
from rsicrc.runtime.contract import (
    BATCH,
    DECODER_STEP,
    GRAPHS,
    IMAGE_ENCODER,
    SEQ,
    TEXT_ENCODER,
    GraphSpec,
    TensorSpec,
)
from rsicrc.runtime.cuda import cuda_check
from rsicrc.runtime.manifest import (
    EngineRecord,
    GraphFile,
    Manifest,
    load_manifest,
    sha256_file,
    write_manifest,
)
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.preprocess import preprocess_batch
from rsicrc.runtime.trt_records import (
    MachineInfo,
    check_profile,
    copy_runs,
    engine_key,
    engine_problem,
    parse_trt_version,
    record_key,
    require_engine,
    require_supported,
)
from rsicrc.vocab import text_batch, tokenize

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
runner = CliRunner()
MACHINE = MachineInfo("10.3.0", "NVIDIA A100-SXM4-80GB", "8.0")


# --- profiles from the graph contract --------------------------------------------------------

def test_profiles_follow_the_contract(tiny_model: Path) -> None:
    manifest = load_manifest(tiny_model)
    options = ProfileOptions(max_batch=8, opt_batch=2, max_beam=4, opt_beam=3, opt_seq=10)
    profiles = profiles_for(manifest, options)
    expected_batch = {IMAGE_ENCODER: (1, 2, 8), TEXT_ENCODER: (1, 2, 8), DECODER_STEP: (1, 6, 32)}
    for graph in GRAPHS:
        spec = manifest.contract[graph]
        dynamic = {t.name for t in spec.inputs if any(isinstance(d, str) for d in t.shape)}
        assert set(profiles[graph]) == dynamic, graph
        for t in spec.inputs:
            if t.name not in dynamic:
                continue
            for k, slot in (("min", 0), ("opt", 1), ("max", 2)):
                want = [expected_batch[graph][slot] if d == BATCH
                        else (1, 10, manifest.max_len)[slot] if d == SEQ else d for d in t.shape]
                assert profiles[graph][t.name][k] == want, (graph, t.name, k)
    assert "step" not in profiles[DECODER_STEP]  # fully static: no profile entry
    dims = manifest.dims
    cache = [dims.num_heads, dims.max_len, dims.head_dim]  # fixed dims copied as declared
    assert profiles[DECODER_STEP]["past_key_0"]["max"] == [32, *cache]
    assert profiles[IMAGE_ENCODER]["before"]["opt"] == [2, 3, dims.image_size, dims.image_size]


def test_profile_options_are_checked_and_seq_is_capped(tiny_model: Path) -> None:
    dims = load_manifest(tiny_model).dims
    assert dim_ranges(TEXT_ENCODER, dims, ProfileOptions(opt_seq=500))[SEQ] == (1, dims.max_len, dims.max_len)
    for bad in ({"max_batch": 0}, {"opt_batch": 4, "max_batch": 2}, {"opt_beam": 6}, {"max_beam": True}):
        with pytest.raises(ConfigError):
            ProfileOptions(**bad)
    spec = GraphSpec("g", (TensorSpec("x", "float32", (BATCH, "time")),), ())
    with pytest.raises(ContractError, match="time"):
        graph_profile(spec, {BATCH: (1, 1, 2)})


# --- engine cache key and version detection ---------------------------------------------------

KEY_FIELDS = {"tensorrt": "10.3.0", "gpu": "NVIDIA A100", "compute_capability": "8.0",
              "onnx_sha256": "a" * 64, "precision": "fp16", "fp16_mode": "builder_flag",
              "profile": {"x": {"min": [1, 3], "opt": [2, 3], "max": [8, 3]},
                          "y": {"min": [1], "opt": [1], "max": [4]}}}


def test_engine_key_is_stable_and_sensitive_to_every_field() -> None:
    key = engine_key(**KEY_FIELDS)
    assert len(key) == 64 and key == engine_key(**KEY_FIELDS)
    reordered = dict(reversed(list(KEY_FIELDS["profile"].items())))
    assert engine_key(**{**KEY_FIELDS, "profile": reordered}) == key  # dict order does not matter
    changed = {"tensorrt": "10.4.0", "gpu": "NVIDIA H100", "compute_capability": "9.0",
               "onnx_sha256": "b" * 64, "precision": "fp32", "fp16_mode": "strongly_typed"}
    keys = {engine_key(**{**KEY_FIELDS, field: value}) for field, value in changed.items()}
    for k in ("min", "opt", "max"):
        profile = json.loads(json.dumps(KEY_FIELDS["profile"]))
        profile["x"][k][0] += 1
        keys.add(engine_key(**{**KEY_FIELDS, "profile": profile}))
    assert len(keys) == len(changed) + 3 and key not in keys


def test_version_detection_selects_the_fp16_mode() -> None:
    assert parse_trt_version("10.3.0.26") == (10, 3, 0)
    assert parse_trt_version("11.0") == (11, 0, 0)
    for bad in ("", "ten", "10"):
        with pytest.raises(DependencyError):
            parse_trt_version(bad)
    with pytest.raises(DependencyError, match="10 or 11"):
        require_supported("8.6.1")
    ten, ten_typed, eleven = features_for("10.8.0.43"), features_for("10.8.0", True), features_for("11.1.0")
    assert (ten.fp16_mode, ten.strongly_typed_flag) == ("builder_flag", False)  # BuilderFlag.FP16
    assert (ten_typed.fp16_mode, ten_typed.strongly_typed_flag) == ("strongly_typed", True)
    assert (eleven.fp16_mode, eleven.strongly_typed_flag) == ("strongly_typed", False)  # flag removed
    assert features_for("11.1.0", True).strongly_typed_flag is False  # deprecated and ignored in 11


# --- fp16 ONNX conversion ----------------------------------------------------------------------

def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    return {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)} | {
        i.name: i.data_type for i in g.initializer}


@pytest.fixture(scope="module")
def fp16_models(tiny_model: Path) -> dict[str, tuple[onnx.ModelProto, onnx.ModelProto]]:
    manifest = load_manifest(tiny_model)
    out = {}
    for graph in GRAPHS:
        fp32 = onnx.load(str(tiny_model / manifest.graphs["fp32"][graph].file))
        out[graph] = (fp32, convert_to_fp16(fp32))
    return out


def test_fp16_conversion_keeps_the_sensitive_ops_fp32(fp16_models) -> None:
    for graph, (fp32, fp16) in fp16_models.items():
        onnx.checker.check_model(fp16, full_check=True)
        counts = precision_counts(fp16)
        for op in ("LayerNormalization", "Softmax", "ReduceL2"):
            assert counts.get(op, {}).get("float16", 0) == 0, (graph, op, counts.get(op))
        assert counts["LayerNormalization"]["float32"] > 0
        assert counts["MatMul"]["float16"] > counts["MatMul"].get("float32", 0), graph  # the bulk is fp16
        # graph inputs and outputs keep the contract's dtypes (Casts at the boundary)
        for a, b in ((fp32.graph.input, fp16.graph.input), (fp32.graph.output, fp16.graph.output)):
            assert [(v.name, v.type.tensor_type.elem_type) for v in a] == [
                (v.name, v.type.tensor_type.elem_type) for v in b]
        for init in fp16.graph.initializer:  # "lowest float32" masks were clipped, never -inf
            assert np.isfinite(numpy_helper.to_array(init).astype(np.float32)).all(), init.name
    _, decoder = fp16_models[DECODER_STEP]
    types = _types(decoder)
    logits = next(n for n in decoder.graph.node if "logits" in n.output)
    assert logits.op_type == "MatMul" and all(types[i] == TensorProto.FLOAT for i in logits.input)
    # the attention output is the fp32 ReduceMean of an fp32 softmax: no fp16 round trip (a layout
    # op between them, e.g. a Squeeze, would run in fp16 and round the weights)
    producer = {o: n for n in decoder.graph.node for o in n.output}
    mean = producer["cross_attention"]
    assert mean.op_type == "ReduceMean" and producer[mean.input[0]].op_type == "Softmax"
    assert types[mean.input[0]] == TensorProto.FLOAT
    assert "Conv" in precision_counts(fp16_models[IMAGE_ENCODER][1]) and precision_counts(
        fp16_models[IMAGE_ENCODER][1])["Conv"].get("float32", 0) == 0
    pinned = fp32_tensor_names(fp16_models[DECODER_STEP][0])  # what TensorRT 10 pins to fp32
    fp32_decoder = fp16_models[DECODER_STEP][0]
    assert "logits" in pinned and "cross_attention" in pinned
    assert all(n.output[0] in pinned for n in fp32_decoder.graph.node
               if n.op_type in ("LayerNormalization", "Softmax"))


def test_fp16_conversion_of_a_decomposed_layernorm_and_a_range() -> None:
    """Older exporters decompose LayerNorm: its statistics (ReduceMean, Pow, Sqrt) stay fp32; Range
    has no float16 kernel in the ONNX schema, so it stays fp32 too; the logits MatMul + bias too."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("two", np.array(2.0, np.float32)), ("eps", np.array(1e-5, np.float32)),
        ("w1", rng.standard_normal((8, 8)).astype(np.float32)),
        ("w2", rng.standard_normal((8, 5)).astype(np.float32)),
        ("b2", rng.standard_normal(5).astype(np.float32)), ("r0", np.array(0.0, np.float32)),
        ("r1", np.array(8.0, np.float32)), ("r2", np.array(1.0, np.float32)))]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["n"]),
        helper.make_node("MatMul", ["n", "w1"], ["h"]),
        helper.make_node("Range", ["r0", "r1", "r2"], ["ramp"]),
        helper.make_node("Add", ["h", "ramp"], ["hr"]),
        helper.make_node("Relu", ["hr"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["mm"]),
        helper.make_node("Add", ["mm", "b2"], ["logits"]),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y_info = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])
    graph = helper.make_graph(nodes, "g", [x_info], [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    half = convert_to_fp16(model)
    types = _types(half)
    kind = {n.output[0]: types[next(i for i in n.input if types.get(i) in (1, 10))] for n in half.graph.node
            if any(types.get(i) in (1, 10) for i in n.input)}
    assert {kind[t] for t in ("mean", "sq", "var", "sd", "ramp", "mm", "logits")} == {TensorProto.FLOAT}
    assert {kind[t] for t in ("h", "hr", "r")} == {TensorProto.FLOAT16}
    import onnxruntime as ort

    x = rng.standard_normal((3, 8)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
           .run(None, {"x": x})[0] for m in (model, half)]
    assert run[1].dtype == np.float32
    np.testing.assert_allclose(run[1], run[0], atol=5e-2 * max(1.0, np.abs(run[0]).max()))


def _real_pairs(count: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Real LEVIR-CC sample pairs when the shared data is there, else varied synthetic ones."""
    from rsicrc.runtime.images import read_pair
    from rsicrc.runtime.preprocess import PreprocessSpec

    samples = LEVIRCC / "samples"
    names = sorted(p.name for p in (samples / "A").glob("*.png")) if (samples / "A").is_dir() else []
    if names:
        arrays = [read_pair(samples / "A" / n, samples / "B" / n) for n in names[:count]]
        before, after, source = [a[0] for a in arrays], [a[1] for a in arrays], "levircc samples"
    else:
        before, after = random_pairs(count, seed=5)
        source = "synthetic"
    spec = PreprocessSpec(size=size)
    return preprocess_batch(before, spec), preprocess_batch(after, spec), source


@pytest.fixture(scope="module")
def fp16_folder(tiny_model: Path, fp16_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model folder whose manifest also lists the converted graphs as "fp16"."""
    folder = tmp_path_factory.mktemp("fp16") / "model"
    shutil.copytree(tiny_model, folder)
    manifest = load_manifest(folder)
    files = {}
    for graph, (_, half) in fp16_models.items():
        path = folder / f"{graph}_fp16.onnx"
        onnx.save(half, str(path))
        files[graph] = GraphFile(path.name, sha256_file(path), 0.0, 0.0)
    write_manifest(folder, dataclasses.replace(manifest, graphs={**manifest.graphs, "fp16": files}))
    return folder


def _check(reference, candidate, folder: ModelFolder, before: np.ndarray, after: np.ndarray,
           tolerance: float, steps: int, label: str = "candidate") -> CheckReport:
    """`rsicrc check`'s comparison of two backends on these pairs and one query per pair."""
    ids, mask = text_batch(folder.vocab, [tokenize(QUERIES[i % len(QUERIES)]) for i in range(len(before))],
                           folder.max_len)
    comparison = compare_graphs(reference.run, candidate.run, folder.manifest.contract, folder.dims,
                                GraphInputs(before, after, ids, mask, "test pairs"), steps=range(steps))
    return CheckReport(label, len(before), comparison, tolerance)


def test_ort_cpu_runs_the_fp16_graphs_close_to_fp32(fp16_folder: Path) -> None:
    """ONNX Runtime's CPU provider can run the converted graphs; the comparison of `rsicrc check` finds
    them within the fp16 tolerance of fp32 on real pairs, and out of a tolerance fp16 cannot meet."""
    folder = ModelFolder.open(fp16_folder)
    manifest = folder.manifest
    before, after, _ = _real_pairs(3, manifest.dims.image_size)
    reference = OrtBackend(folder, RuntimeOptions(precision="fp32", device="cpu", threads=1))
    half = OrtBackend(folder, RuntimeOptions(precision="fp16", device="cpu", threads=1))
    report = _check(reference, half, folder, before, after, TOLERANCES["fp16"], steps=3,
                    label="onnxruntime fp16")
    assert report.ok, "\n".join(report.lines())
    checks = report.comparison.outputs
    want = {(g, t.name) for g in GRAPHS for t in manifest.contract[g].outputs}
    assert {(c.graph, c.output) for c in checks} == want
    assert all(c.max_abs_diff > 0 for c in checks)  # it really ran in fp16
    assert report.comparison.argmax_agreement >= 0.75 and report.comparison.steps == 3
    strict = _check(reference, half, folder, before, after, 1e-7, steps=1)
    assert not strict.ok


def test_check_command_compares_with_onnxruntime(fp16_folder: Path, tmp_path: Path) -> None:
    from rsicrc.cli.main import app

    samples = LEVIRCC / "samples"
    if not (samples / "A").is_dir():
        samples = tmp_path / "pairs"
        for side, arrays in zip("AB", random_pairs(2, seed=3), strict=True):
            (samples / side).mkdir(parents=True)
            for i, a in enumerate(arrays):
                Image.fromarray(a).save(samples / side / f"p{i}.png")
    base = ["check", str(fp16_folder), "--data", str(samples), "--engine", "onnxruntime",
            "--precision", "fp16"]
    result = runner.invoke(app, [*base, "--count", "2", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["pairs"] == 2 and report["candidate"] == "onnxruntime fp16"
    failing = runner.invoke(app, [*base, "--tolerance", "1e-9", "--count", "1"])
    assert failing.exit_code == 1 and "FAIL" in failing.stdout
    # the spellings of the last release still work, with a warning
    old = runner.invoke(app, ["check", str(fp16_folder), "--data", str(samples), "--backend", "onnxruntime",
                              "--precision", "fp16", "--pairs", "1", "--device", "cpu", "--json"])
    assert old.exit_code == 0 and json.loads(old.stdout)["pairs"] == 1
    assert "--backend is deprecated" in old.stderr and "use --engine" in old.stderr
    assert "--pairs is deprecated" in old.stderr and "use --count" in old.stderr


# --- engine records in the manifest ------------------------------------------------------------

def _record(manifest: Manifest, graph: str = DECODER_STEP, precision: str = "fp16",
            machine: MachineInfo = MACHINE, **changes: object) -> EngineRecord:
    """A consistent record for `machine`: `changes` apply first, then its key is computed."""
    profile = profiles_for(manifest, ProfileOptions())[graph]
    fields = {"tensorrt": machine.tensorrt, "gpu": machine.gpu,
              "compute_capability": machine.compute_capability,
              "onnx_sha256": manifest.graphs["fp32"][graph].sha256, "precision": precision,
              "fp16_mode": "builder_flag" if precision == "fp16" else "none", "profile": profile}
    rest = {"file": f"{graph}.{precision}.plan", "sha256": "c" * 64}
    for name, value in changes.items():
        (fields if name in fields else rest)[name] = value
    return EngineRecord(graph=graph, key=engine_key(**fields), **fields, **rest)


def test_engine_records_round_trip_strictly(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    manifest = load_manifest(folder)
    assert "engines" not in manifest.to_dict()  # folders without engines stay readable by older rsicrc
    records = [_record(manifest, g, p) for g in GRAPHS for p in ("fp32", "fp16")]
    write_manifest(folder, with_engines(manifest, records))
    loaded = load_manifest(folder)
    assert loaded.engines == with_engines(manifest, records).engines and len(loaded.engines) == 6
    assert all(record_key(r) == r.key for r in loaded.engines)
    good = json.loads((folder / "manifest.json").read_text())
    for edit, pattern in (
            (lambda e: e.update(extra=1), "unknown key"),
            (lambda e: e.update(precision="int8"), "precision"),
            (lambda e: e.update(file="../x.plan"), "plain file name"),
            (lambda e: e.update(key="XYZ"), "hex"),
            (lambda e: e["profile"]["input_ids"].update(min=[99, 1]), "min <= opt <= max"),
            (lambda e: e.pop("gpu"), "missing key")):
        data = json.loads(json.dumps(good))
        edit(data["engines"][-1])
        (folder / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(ModelFolderError, match=pattern):
            load_manifest(folder, verify=False)
    data = json.loads(json.dumps(good))
    data["engines"].append(data["engines"][0])
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="twice"):
        load_manifest(folder, verify=False)


def test_engine_matching_explains_what_to_rebuild(tiny_model: Path) -> None:
    manifest = load_manifest(tiny_model)
    record = _record(manifest)
    assert engine_problem(record, manifest, MACHINE) is None
    newer = dataclasses.replace(MACHINE, tensorrt="10.8.0")
    assert "TensorRT 10.3.0 (this machine: 10.8.0)" in engine_problem(record, manifest, newer)
    other = MachineInfo("10.3.0", "NVIDIA H100 80GB HBM3", "9.0")
    problem = engine_problem(record, manifest, other)
    assert "GPU NVIDIA A100-SXM4-80GB (this machine: NVIDIA H100 80GB HBM3)" in problem
    assert "compute capability 8.0 (this machine: 9.0)" in problem and "TensorRT" not in problem
    stale = _record(manifest, onnx_sha256="d" * 64)
    assert "different ONNX graph" in engine_problem(stale, manifest, MACHINE)
    assert "tampered" in engine_problem(dataclasses.replace(record, gpu="other"), manifest, MACHINE)
    with_record = dataclasses.replace(manifest, engines=(record,))
    assert require_engine(Path("m"), with_record, DECODER_STEP, "fp16", MACHINE) == record
    with pytest.raises(ModelFolderError, match=r"no fp32 TensorRT engine .* m --precision fp32"):
        require_engine(Path("m"), with_record, DECODER_STEP, "fp32", MACHINE)
    with pytest.raises(ModelFolderError, match=r"cannot be used: it was built for .* --rebuild"):
        require_engine(Path("m"), with_record, DECODER_STEP, "fp16", other)


def test_with_engines_replaces_the_same_graph_and_precision(tiny_model: Path) -> None:
    manifest = load_manifest(tiny_model)
    first = with_engines(manifest, [_record(manifest, DECODER_STEP),
                                    _record(manifest, IMAGE_ENCODER, "fp32")])
    newer = _record(manifest, DECODER_STEP, file="new.plan")
    second = with_engines(first, [newer])
    assert [(e.graph, e.precision, e.file) for e in second.engines] == [
        (IMAGE_ENCODER, "fp32", "image_encoder.fp32.plan"), (DECODER_STEP, "fp16", "new.plan")]


def test_profile_check_and_copy_runs(tiny_model: Path) -> None:
    manifest = load_manifest(tiny_model)
    profile = profiles_for(manifest, ProfileOptions(max_batch=2, max_beam=2, opt_beam=2))[DECODER_STEP]
    dims = manifest.dims
    ok = {"past_key_0": np.zeros((4, dims.num_heads, dims.max_len, dims.head_dim), np.float32)}
    check_profile(DECODER_STEP, profile, ok)
    too_many = {"input_ids": np.zeros((5, 1), np.int64)}
    with pytest.raises(ConfigError, match="--max-batch"):
        check_profile(DECODER_STEP, profile, too_many)
    with pytest.raises(ConfigError, match="input_ids"):
        check_profile(DECODER_STEP, profile, {"input_ids": np.zeros((2, 1, 1), np.int64)})
    assert copy_runs(np.arange(6)) == [(0, 0, 6)]
    assert copy_runs(np.array([0, 0, 1, 2])) == [(0, 0, 1), (1, 0, 3)]
    rng = np.random.default_rng(1)
    old = rng.standard_normal((7, 3))
    for source in (np.array([2, 1, 0, 0, 5, 6, 6]), rng.integers(0, 7, 7)):
        new = np.empty_like(old)
        for dst, src, count in copy_runs(source):
            new[dst: dst + count] = old[src: src + count]
        np.testing.assert_array_equal(new, np.take(old, source, axis=0))


def test_atomic_writes_and_file_names(tmp_path: Path) -> None:
    path = tmp_path / "engine.plan"
    write_atomic(path, b"first")
    write_atomic(path, b"second")
    assert path.read_bytes() == b"second"

    def fails_mid_write(f) -> None:  # noqa: ANN001
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fails_mid_write)
    assert path.read_bytes() == b"second" and [p.name for p in tmp_path.iterdir()] == ["engine.plan"]
    key = "0123456789abcdef" * 4
    assert engine_file_name(DECODER_STEP, "fp16", key) == "decoder_step.fp16.0123456789abcdef.plan"
    assert timing_cache_name(MACHINE) != timing_cache_name(dataclasses.replace(MACHINE, gpu="other"))


# --- the build orchestration against a recording stand-in for the TensorRT API ------------------
# TensorRT cannot run here, so a small stand-in implements exactly the documented calls the
# builder makes (TensorRT 10: with BuilderFlag.FP16; TensorRT 11: without it, so any use of the
# removed flag fails) and records them; the ONNX "parser" reads the real file with onnx.

class _Recorder:
    def __init__(self, major: int) -> None:
        self.calls: list[tuple] = []
        flags = ["TF32"] + (["FP16", "OBEY_PRECISION_CONSTRAINTS"] if major == 10 else [])
        self.module = self._module(major, flags)

    def _module(self, major: int, flags: list[str]):  # noqa: ANN202 - a namespace standing in for tensorrt
        import types

        rec = self
        enum = types.SimpleNamespace
        trt = enum(__version__=f"{major}.4.0.1", Logger=type("Logger", (), {"WARNING": 2, "__init__":
                                                                               lambda self, level: None}),
                   BuilderFlag=enum(**{f: f for f in flags}), MemoryPoolType=enum(WORKSPACE="WORKSPACE"),
                   NetworkDefinitionCreationFlag=enum(STRONGLY_TYPED=1),
                   LayerType=enum(NORMALIZATION="NORMALIZATION", SOFTMAX="SOFTMAX", OTHER="OTHER"),
                   DataType=enum(FLOAT="FLOAT", HALF="HALF", INT64="INT64"))

        class Layer:
            def __init__(self, node: onnx.NodeProto, types: dict[str, int]) -> None:
                self.type = {"LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX"}.get(node.op_type,
                                                                                                "OTHER")
                self.outputs = [enum(name=o, dtype="FLOAT" if types.get(o) == TensorProto.FLOAT else "INT64")
                                for o in node.output]
                self.num_outputs = len(self.outputs)

            def get_output(self, i: int):  # noqa: ANN202
                return self.outputs[i]

            def __setattr__(self, name: str, value: object) -> None:
                if name == "precision":
                    rec.calls.append(("pin", self.outputs[0].name))
                object.__setattr__(self, name, value)

            def set_output_type(self, i: int, dtype: str) -> None:
                assert dtype == "FLOAT"

        class Network:
            layers: list[Layer] = []

            @property
            def num_layers(self) -> int:
                return len(self.layers)

            def get_layer(self, i: int) -> Layer:
                return self.layers[i]

        class Parser:
            def __init__(self, network: Network, logger: object) -> None:
                self.network, self.num_errors = network, 0

            def parse_from_file(self, path: str) -> bool:
                model = onnx.load(path)
                types = _types(model)
                self.network.layers = [Layer(n, types) for n in model.graph.node]
                rec.calls.append(("parse", Path(path).name, precision_counts(model)))
                return True

        class Config:
            def __getattr__(self, name: str):  # noqa: ANN204 - records every other config call
                return lambda *args: rec.calls.append((name, *args))

            def create_timing_cache(self, data: bytes) -> bytes:
                rec.calls.append(("timing_cache_in", bytes(data)))
                return bytes(data)

            def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
                self.cache = cache
                return True

            def get_timing_cache(self):  # noqa: ANN202
                return enum(serialize=lambda: self.cache + b"+")

        class Builder:
            def __init__(self, logger: object) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                rec.calls.append(("network_flags", flags))
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self):  # noqa: ANN202
                return enum(set_shape=lambda *shape: rec.calls.append(("shape", *shape)))

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                return f"plan of {len(network.layers)} layers".encode()

        trt.Builder, trt.OnnxParser = Builder, Parser
        return trt

    def named(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


class _FakeGpu:
    def properties(self) -> tuple[str, str]:
        return "Stand-in GPU", "9.0"


def _build(folder: Path, major: int, monkeypatch: pytest.MonkeyPatch, **options: object):  # noqa: ANN202
    import rsicrc.export.trt as trt_module

    rec = _Recorder(major)
    monkeypatch.setattr(trt_module, "import_tensorrt", lambda: rec.module)
    monkeypatch.setattr(trt_module, "CudaRuntime", _FakeGpu)
    return trt_module.build_engines(folder, trt_module.BuildOptions(**options)), rec


def test_build_orchestration_tensorrt_10(tiny_model: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    report, rec = _build(folder, 10, monkeypatch)
    manifest = load_manifest(folder)
    assert [e.built for e in report.engines] == [True] * 3 and len(manifest.engines) == 3
    profiles = profiles_for(manifest, ProfileOptions())
    for record in manifest.engines:
        assert (folder / "engines" / record.file).is_file() and record_key(record) == record.key
        assert (record.fp16_mode, record.gpu, record.tensorrt) == ("none", "Stand-in GPU", "10.4.0.1")
        assert record.profile == profiles[record.graph]
    assert rec.named("clear_flag") == [("clear_flag", "TF32")] * 3 and not rec.named("set_flag")
    assert ("shape", "past_key_0", *profiles[DECODER_STEP]["past_key_0"].values()) in rec.calls
    assert [c[1] for c in rec.named("parse")] == [f"{g}.onnx" for g in GRAPHS]  # the fp32 graphs
    assert [c[1] for c in rec.named("timing_cache_in")] == [b"", b"+", b"++"]  # one cache, reused
    again, rec = _build(folder, 10, monkeypatch)
    assert not any(e.built for e in again.engines) and not rec.named("parse")
    old = {e.graph: e.file for e in load_manifest(folder).engines}
    bigger, rec = _build(folder, 10, monkeypatch, profile=ProfileOptions(max_batch=32))
    assert all(e.built for e in bigger.engines) and rec.named("timing_cache_in")[0][1] == b"+++"
    files = sorted(p.name for p in (folder / "engines").iterdir())
    assert not set(old.values()) & set(files) and len(files) == 4  # 3 new engines + the timing cache
    fp16, rec = _build(folder, 10, monkeypatch, precision="fp16")
    assert fp16.fp16_mode == "builder_flag" and rec.named("network_flags") == [("network_flags", 0)] * 3
    assert ("set_flag", "FP16") in rec.calls and ("set_flag", "OBEY_PRECISION_CONSTRAINTS") in rec.calls
    pinned = {c[1] for c in rec.named("pin")}
    decoder = onnx.load(str(folder / "decoder_step.onnx"))
    assert "logits" in pinned and all(n.output[0] in pinned for n in decoder.graph.node
                                      if n.op_type in ("LayerNormalization", "Softmax"))
    assert not pinned & {n.output[0] for n in decoder.graph.node if n.op_type in ("Conv", "Erf")}
    assert len(load_manifest(folder).engines) == 6  # fp32 and fp16 side by side


def test_build_orchestration_tensorrt_11(tiny_model: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    report, rec = _build(folder, 11, monkeypatch, precision="fp16", graphs=(DECODER_STEP,))
    assert report.fp16_mode == "strongly_typed" and rec.named("network_flags") == [("network_flags", 0)]
    assert not rec.named("set_flag")  # BuilderFlag.FP16 no longer exists
    (_, name, counts), = rec.named("parse")
    assert name == "decoder_step.fp16.onnx" and counts["MatMul"]["float16"] > 0
    assert counts["LayerNormalization"].get("float16", 0) == 0
    assert not [p for p in (folder / "engines").iterdir() if p.name.startswith(".")]  # temp dir gone
    _, rec = _build(folder, 10, monkeypatch, precision="fp16", strongly_typed=True, graphs=(DECODER_STEP,))
    assert rec.named("network_flags") == [("network_flags", 1 << 1)] and not rec.named("set_flag")


# --- no TensorRT / no GPU here: clear one-line errors -----------------------------------------

def test_cuda_error_tuples() -> None:
    rt = pytest.importorskip("cuda.bindings.runtime")
    assert cuda_check(rt, (rt.cudaError_t.cudaSuccess, 5), "x") == 5
    assert cuda_check(rt, (rt.cudaError_t.cudaSuccess,), "x") is None
    with pytest.raises(DeviceError, match=r"CUDA cudaMalloc failed: cudaErrorMemoryAllocation \(.+\)"):
        cuda_check(rt, (rt.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc")
    err, count = rt.cudaGetDeviceCount()
    if err == rt.cudaError_t.cudaSuccess and count > 0:
        pytest.skip("a CUDA device is usable here")
    from rsicrc.runtime.cuda import CudaRuntime

    with pytest.raises(DeviceError, match="cudaSetDevice"):
        CudaRuntime()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_every_entry_point_says_so_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    from rsicrc.cli.main import app
    from rsicrc.runtime.captioner import Captioner

    folder = ModelFolder.open(tiny_model)
    with pytest.raises(DependencyError, match="TensorRT is not installed"):
        folder.backend(RuntimeOptions(engine="trt", precision="fp16"))
    with pytest.raises(DependencyError, match="TensorRT is not installed"):
        Captioner(folder, RuntimeOptions(engine="trt"))
    with pytest.raises(ConfigError, match="onnxruntime, trt"):
        RuntimeOptions(engine="tensorflow")
    with pytest.raises(ConfigError, match="CUDA only"):
        folder.backend(RuntimeOptions(engine="trt", device="cpu"))
    out, pairs = tmp_path / "model", tmp_path / "pairs"
    for side, arrays in zip("AB", random_pairs(1, seed=4), strict=True):
        (pairs / side).mkdir(parents=True)
        Image.fromarray(arrays[0]).save(pairs / side / "p.png")
    for args in (["build-engines", str(tiny_model), "--precision", "fp16"],
                 ["export", str(tiny_model.parent / "ckpt"), "--out", str(out), "--trt", "--fp16"],
                 ["check", str(tiny_model), "--data", str(pairs), "--engine", "trt", "--count", "1"]):
        result = runner.invoke(app, args)
        err = result.stderr.strip()
        assert result.exit_code == 2 and len(err.splitlines()) == 1, (args, result.output)
        assert err.startswith("error: TensorRT is not installed"), err
    assert not out.exists()  # export refused before doing anything
    result = runner.invoke(app, ["export", str(tiny_model.parent / "ckpt"), "--out", str(out), "--fp16"])
    assert result.exit_code == 2 and "add --trt" in result.stderr and not out.exists()


# --- on a machine with TensorRT and a GPU --------------------------------------------------------

def _gpu() -> bool:
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        return False
    err, count = rt.cudaGetDeviceCount()
    return err == rt.cudaError_t.cudaSuccess and count > 0


@pytest.fixture(scope="module")
def engine_folder(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("engines") / "model"
    shutil.copytree(tiny_model, folder)
    return folder


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.requires_trt
@pytest.mark.requires_cuda
@pytest.mark.skipif(not (HAVE_TRT and _gpu()), reason="needs TensorRT and a CUDA GPU")
def test_build_check_and_caption_with_tensorrt(engine_folder: Path, precision: str) -> None:
    from rsicrc.export.trt import BuildOptions, build_engines
    from rsicrc.runtime.captioner import Captioner
    from rsicrc.runtime.decoding import DecodingOptions

    report = build_engines(engine_folder, BuildOptions(precision=precision, workspace_gb=1.0))
    assert all(e.built for e in report.engines)
    again = build_engines(engine_folder, BuildOptions(precision=precision, workspace_gb=1.0))
    assert not any(e.built for e in again.engines)  # matching engines are kept
    manifest = load_manifest(engine_folder)
    before, after, _ = _real_pairs(3, manifest.dims.image_size)
    folder = ModelFolder.open(engine_folder)
    reference = folder.backend(RuntimeOptions(precision="fp32", device="cpu"))
    candidate = folder.backend(RuntimeOptions(engine="trt", precision=precision))
    check = _check(reference, candidate, folder, before, after, TOLERANCES[precision], steps=4)
    assert check.ok, "\n".join(check.lines())
    if precision == "fp32":  # the same beam search on the same logits: the same tokens
        options = DecodingOptions(beam_size=3)
        ort = Captioner(folder, RuntimeOptions(device="cpu")).caption_preprocessed(before, after, options)
        trt = Captioner(folder, RuntimeOptions(engine="trt", precision="fp32")).caption_preprocessed(
            before, after, options)
        assert [r.tokens for r in trt] == [r.tokens for r in ort]
