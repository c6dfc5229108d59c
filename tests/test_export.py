"""`rsicrc export` on a tiny random-weight checkpoint: graphs vs PyTorch, the contract, dynamic
batch, ORT-driven decoding, the `step` rule and atomicity."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import LEVIRCC
from rsicrc.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from rsicrc.config import Config, load_config, model_config_from_dict
from rsicrc.decode import decoding_options, generate
from rsicrc.errors import ContractError, ExportError
from rsicrc.export.onnx_export import (
    DATA_INPUTS,
    ELEMENTWISE_OPS,
    check_graph_file,
    check_step_is_elementwise,
    dims_for,
    graph_modules,
    step_frontier,
)
from rsicrc.export.pipeline import ExportReport, _publish, export_model
from rsicrc.export.validate import check_within, load_validation_inputs, open_session, session_io
from rsicrc.levircc import ANNOTATION_FILE
from rsicrc.model import RSICRC
from rsicrc.runtime.compare import GraphInputs, compare_graphs
from rsicrc.runtime.contract import (
    CROSS_ATTENTION,
    DECODER_STEP,
    GRAPHS,
    IMAGE_ENCODER,
    TEXT_EMBEDDING,
    TEXT_ENCODER,
    Dims,
    GraphSpec,
    TensorSpec,
    check_io,
    contract,
)
from rsicrc.runtime.decoding import DecodingOptions, beam_search
from rsicrc.runtime.manifest import load_manifest
from rsicrc.runtime.preprocess import PreprocessSpec
from rsicrc.vocab import SPECIAL_TOKENS, Vocabulary

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def levircc_samples(root: Path) -> Path | None:
    """The three real LEVIR-CC pairs with their real captions, in the LEVIR-CC layout."""
    samples = LEVIRCC / "samples"
    if not (LEVIRCC / ANNOTATION_FILE).is_file() or not (samples / "A").is_dir():
        return None
    names = sorted(p.name for p in (samples / "A").glob("*.png"))
    entries = [e for e in json.loads((LEVIRCC / ANNOTATION_FILE).read_text())["images"]
               if e["filename"] in names]
    for side in "AB":
        folder = root / "images" / "train" / side
        folder.mkdir(parents=True)
        for name in names:
            shutil.copy(samples / side / name, folder / name)
    (root / ANNOTATION_FILE).write_text(json.dumps({"images": entries}))
    return root


@dataclasses.dataclass(frozen=True)
class Exported:
    ckpt: Checkpoint  # the PyTorch side (same weights as the graphs)
    data: Path | None  # LEVIR-CC folder used for validation (None: synthetic)
    report: ExportReport
    graphs: dict[str, GraphSpec]
    dims: Dims


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("export")
    data = levircc_samples(root / "data")
    words = ("a", "road", "houses", "built", "the", "are", "is", "trees", "bareland", "appear", "some")
    if data is not None:
        captions = json.loads((data / ANNOTATION_FILE).read_text())["images"]
        words = tuple(sorted({w for e in captions for s in e["sentences"] for w in s["tokens"]}))
    vocab = Vocabulary(SPECIAL_TOKENS + words)
    base = load_config("tiny").model
    cfg = dataclasses.replace(base, d_model=32, a_dim=32, h_dim=32, num_heads=2, encoder_layers=1,
                              image_size=64, max_len=12, backbone=dataclasses.replace(base.backbone, width=8))
    torch.manual_seed(0)
    model = RSICRC(cfg, len(vocab)).eval()
    save_checkpoint(root / "ckpt", model, Config(model=cfg), vocab, {"step": 7, "best_val_loss": 1.25})
    report = export_model(root / "ckpt", root / "model", progress=False, validation_data=data)
    dims = dims_for(cfg, len(vocab))
    return Exported(load_checkpoint(root / "ckpt"), data, report, contract(dims), dims)


def real_images(ex: Exported, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """`batch` preprocessed pairs (the validation pairs, repeated as needed)."""
    if ex.data is None:
        rng = np.random.default_rng(0)
        size = ex.dims.image_size
        return (rng.standard_normal((batch, 3, size, size), dtype=np.float32),
                rng.standard_normal((batch, 3, size, size), dtype=np.float32))
    inputs = load_validation_inputs(ex.data, ex.ckpt.vocab, PreprocessSpec(size=ex.dims.image_size),
                                    ex.dims.max_len)
    rows = np.arange(batch) % inputs.before.shape[0]
    return inputs.before[rows], inputs.after[rows]


def run(ex: Exported, graph: str, *arrays: np.ndarray) -> list[np.ndarray]:
    session = open_session(ex.report.out / ex.graphs[graph].file)
    return session.run(None, dict(zip(ex.graphs[graph].input_names(), arrays, strict=True)))


def test_export_matches_pytorch(exported: Exported) -> None:
    out = exported.report.out
    manifest = load_manifest(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", *(f"{g}.onnx" for g in GRAPHS)])
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no staging leftovers
    for g in exported.report.graphs:
        entry = manifest.graphs["fp32"][g.graph]
        assert 0 <= entry.max_abs_diff <= 1e-4 * max(1.0, entry.ref_max_abs)
        assert entry.ref_max_abs > 0.1  # real outputs were compared, not zeros
        assert g.size_bytes == (out / g.file).stat().st_size > 10_000
        assert (g.max_abs_diff, g.ref_max_abs) == (entry.max_abs_diff, entry.ref_max_abs)
    assert manifest.vocab == exported.ckpt.vocab.words
    assert manifest.dims == exported.dims and manifest.contract == exported.graphs
    assert manifest.preprocess == PreprocessSpec(size=64)
    assert model_config_from_dict(manifest.model_config) == exported.ckpt.config.model
    assert manifest.opset == 18 and manifest.default_precision == "fp32"
    assert manifest.source["step"] == 7 and manifest.source["best_val_loss"] == 1.25
    assert {"rsicrc", "torch", "onnx", "onnxruntime", "kind"} <= set(manifest.exporter)
    report = exported.report.to_dict()
    assert report["exporter"] == manifest.exporter["kind"] and len(exported.report.lines()) == 5


def test_graph_files_satisfy_the_contract(exported: Exported) -> None:
    assert exported.graphs[DECODER_STEP].outputs[-1] == TensorSpec(
        CROSS_ATTENTION, "float32", ("batch", exported.dims.visual_tokens))  # format 2
    for name in GRAPHS:
        file = exported.report.out / exported.graphs[name].file
        inputs, outputs = session_io(open_session(file))
        check_io(exported.graphs[name], file.name, inputs, outputs)
        assert all(isinstance(d, str) for d in inputs[0][2][:1])  # batch stayed symbolic
    # the same check refuses a graph of another model size
    other = contract(dataclasses.replace(exported.dims, vocab_size=exported.dims.vocab_size + 1))
    with pytest.raises(ContractError, match="logits"):
        check_io(other[DECODER_STEP], "decoder_step.onnx",
                 *session_io(open_session(exported.report.out / "decoder_step.onnx")))


@pytest.mark.parametrize("batch", [1, 5])
def test_batch_is_dynamic(exported: Exported, batch: int) -> None:
    ex, model = exported, exported.ckpt.model
    modules = graph_modules(model, ex.dims)
    before, after = real_images(ex, batch)
    rng = np.random.default_rng(batch)
    seq = 1 if batch == 1 else ex.dims.max_len  # the text encoder's seq is dynamic too
    ids = rng.integers(4, ex.dims.vocab_size, (batch, seq))
    mask = (np.arange(seq) < rng.integers(1, seq + 1, (batch, 1))).astype(np.int64)
    cache_shape = (batch, ex.dims.num_heads, ex.dims.max_len, ex.dims.head_dim)
    cache = [rng.standard_normal(cache_shape, dtype=np.float32) for _ in range(2 * ex.dims.cache_layers)]
    with torch.no_grad():
        image_out = run(ex, IMAGE_ENCODER, before, after)
        cross = image_out[1:]
        cases = {
            IMAGE_ENCODER: (image_out,
                            modules[IMAGE_ENCODER](torch.from_numpy(before), torch.from_numpy(after))),
            TEXT_ENCODER: (run(ex, TEXT_ENCODER, ids, mask),
                           (modules[TEXT_ENCODER](torch.from_numpy(ids), torch.from_numpy(mask)),)),
            DECODER_STEP: (run(ex, DECODER_STEP, ids[:, :1], np.array([seq - 1]), *cache, *cross),
                           modules[DECODER_STEP](torch.from_numpy(ids[:, :1]), torch.tensor([seq - 1]),
                                                 *map(torch.from_numpy, [*cache, *cross]))),
        }
    for name, (got, want) in cases.items():
        assert len(got) == len(ex.graphs[name].outputs)
        for g, w in zip(got, want, strict=True):
            assert g.shape[0] == batch
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0, err_msg=name)


class OrtStepModel:
    """The decoding seam over the exported decoder-step graph, caches kept in numpy."""

    def __init__(self, ex: Exported, cross: list[np.ndarray], beams: int) -> None:
        self.session = open_session(ex.report.out / ex.graphs[DECODER_STEP].file)
        self.names = ex.graphs[DECODER_STEP].input_names()
        self.cross = [np.repeat(c, beams, axis=0) for c in cross]  # [R, H, N, dh], never reordered
        rows = cross[0].shape[0] * beams
        shape = (rows, ex.dims.num_heads, ex.dims.max_len, ex.dims.head_dim)
        self.cache = [np.zeros(shape, dtype=np.float32) for _ in range(2 * ex.dims.cache_layers)]
        self._attention: np.ndarray | None = None

    def logits(self, tokens: np.ndarray, step: int) -> np.ndarray:
        feeds = [tokens.astype(np.int64)[:, None], np.array([step], dtype=np.int64), *self.cache, *self.cross]
        feed = dict(zip(self.names, feeds, strict=True))
        logits, *self.cache, self._attention = self.session.run(None, feed)  # attention: the last output
        return logits

    def attention(self) -> np.ndarray | None:
        return self._attention

    def reorder(self, source: np.ndarray) -> None:
        self.cache = [c[source] for c in self.cache]


@pytest.mark.parametrize("beams", [1, 3])
def test_ort_decoding_equals_pytorch(exported: Exported, beams: int) -> None:
    """Greedy (and beam) decoding driven by ORT sessions gives PyTorch's tokens, and the same
    attention history (the exported cross_attention output, reordered with the beams)."""
    model = exported.ckpt.model
    before, after = real_images(exported, 3)
    options = dataclasses.replace(decoding_options(model, beams), attention=True)
    want, _ = generate(model, torch.from_numpy(before), torch.from_numpy(after), options)
    cross = run(exported, IMAGE_ENCODER, before, after)[1:]
    got = beam_search(OrtStepModel(exported, cross, beams), 3, options)
    assert [r.best.tokens for r in got] == [r.best.tokens for r in want]
    assert [r.best.score for r in got] == pytest.approx([r.best.score for r in want], abs=1e-4)
    for g, w in zip(got, want, strict=True):
        assert g.best.attention.shape == (len(g.best.tokens), exported.dims.visual_tokens)
        np.testing.assert_allclose(g.best.attention, w.best.attention, atol=1e-5, rtol=0)
    assert max(len(r.best.tokens) for r in want) >= 2
    assert isinstance(options, DecodingOptions)


def test_graph_files_pass_the_export_checks(exported: Exported) -> None:
    import onnx

    for name in GRAPHS:
        path = exported.report.out / exported.graphs[name].file
        check_graph_file(path, exported.graphs[name], 18)  # checker, opset, contract, step rule
        with pytest.raises(ExportError, match="opset"):
            check_graph_file(path, exported.graphs[name], 19)
        assert not onnx.load(str(path), load_external_data=False).graph.initializer[0].external_data


def test_step_only_reaches_elementwise_ops(exported: Exported) -> None:
    import onnx

    proto = onnx.load(str(exported.report.out / "decoder_step.onnx"))
    step = exported.graphs[DECODER_STEP].input_names()[1]
    frontier = step_frontier(proto, step)
    assert frontier, "step must be used"
    for op, slot in frontier:
        assert slot in DATA_INPUTS.get(op, ()), (op, slot)
    direct = {n.op_type for n in proto.graph.node if step in n.input}
    assert direct and direct <= ELEMENTWISE_OPS  # e.g. Equal, LessOrEqual
    assert not {"Slice", "If", "Loop", "Range", "ConstantOfShape"} & {n.op_type for n in proto.graph.node}
    check_step_is_elementwise(proto, exported.graphs[DECODER_STEP], "decoder_step.onnx")


def test_step_check_refuses_a_step_slice() -> None:
    """A graph that slices the cache at `step` (the thing the rule forbids) is refused."""
    from onnx import TensorProto, helper

    spec = contract(Dims(64, 32, 2, 12, 4, 10, 1))[DECODER_STEP]
    step = spec.input_names()[1]
    nodes = [helper.make_node("Add", [step, "one"], ["end"]),
             helper.make_node("Slice", ["x", "zero", "end"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(step, TensorProto.INT64, [1]),
                     helper.make_tensor_value_info("x", TensorProto.FLOAT, [12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("one", TensorProto.INT64, [1], [1]),
         helper.make_tensor("zero", TensorProto.INT64, [1], [0])])
    proto = helper.make_model(graph)
    assert step_frontier(proto, step) == [("Slice", 2)]
    with pytest.raises(ExportError, match=r"Slice\[input 2\]"):
        check_step_is_elementwise(proto, spec, "bad.onnx")


def test_validation_failure_leaves_nothing(exported: Exported, tmp_path: Path) -> None:
    """Tolerance 0: the real validator refuses the first graph that is not bit-exact."""
    out = tmp_path / "model"
    with pytest.raises(ExportError, match=r"^(image_encoder|text_encoder|decoder_step): output \S+ differs"):
        export_model(exported.ckpt.path, out, progress=False, validation_data=exported.data, tolerance=0.0)
    assert list(tmp_path.iterdir()) == []  # no model folder, no staging folder


def test_tolerance_check_names_graph_and_output() -> None:
    dims = Dims(64, 32, 2, 12, 4, 10, 1)
    graphs = contract(dims)
    images = np.zeros((2, 3, 64, 64), np.float32)
    inputs = GraphInputs(images, images, np.ones((2, 5), np.int64), np.ones((2, 5), np.int64), "test")
    want = np.full((2, 32), 3.0, dtype=np.float32)

    def compare(got: np.ndarray, reference: np.ndarray = want):  # noqa: ANN202
        return compare_graphs(lambda g, f: {TEXT_EMBEDDING: reference}, lambda g, f: {TEXT_EMBEDDING: got},
                              graphs, dims, inputs, graphs=(TEXT_ENCODER,))

    within = compare(want + 2e-4)
    check_within(within, 1e-4)  # 2e-4 <= 1e-4 * 3
    assert within.max_abs_diff(TEXT_ENCODER) == pytest.approx(2e-4, rel=1e-3)
    with pytest.raises(ExportError, match="text_encoder: output text_embedding differs"):
        check_within(compare(want + 1e-6), 0.0)
    with pytest.raises(ExportError, match="differs"):
        check_within(compare(want * np.nan), 1e-4)
    with pytest.raises(ExportError, match="PyTorch output text_embedding is not finite"):
        check_within(compare(want, want * np.inf), 1e-4)
    with pytest.raises(ContractError, match=r"text_encoder: output text_embedding has shape \[1, 32\]"):
        compare(want[:1], want[:1])


def test_refusals_before_any_work(exported: Exported, tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty; pass --overwrite"):
        export_model(exported.ckpt.path, out, progress=False)
    with pytest.raises(ExportError, match="choose one of: 18, 19, 20"):
        export_model(exported.ckpt.path, tmp_path / "other", opset=17, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (out / "keep.txt").read_text() == "mine"


def test_publish_replaces_old_folder_only_when_new_one_is_complete(tmp_path: Path) -> None:
    out, staging = tmp_path / "model", tmp_path / ".model.export-x"
    out.mkdir()
    (out / "old.onnx").write_text("old")
    staging.mkdir()
    (staging / "new.onnx").write_text("new")
    _publish(staging, out)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert [p.name for p in out.iterdir()] == ["new.onnx"]


def test_validation_inputs_are_real_captions(exported: Exported) -> None:
    if exported.data is None:
        pytest.skip("real LEVIR-CC samples not available")
    vocab = exported.ckpt.vocab
    inputs: GraphInputs = load_validation_inputs(exported.data, vocab, PreprocessSpec(size=64), 12)
    assert inputs.before.shape == inputs.after.shape == (3, 3, 64, 64)
    assert inputs.input_ids.shape == inputs.attention_mask.shape and inputs.input_ids.shape[0] == 3
    lengths = inputs.attention_mask.sum(1)
    assert (inputs.input_ids[np.arange(3), lengths - 1] == 3).all()  # END at the last real position
    assert (inputs.input_ids[:, 0] == 1).all() and (inputs.input_ids > 3).sum() >= 3 * 5  # real words
    assert len(set(lengths.tolist())) > 1 or lengths.max() == 12  # padding exercised (or all truncated)


def test_default_validation_inputs_are_synthesized(exported: Exported) -> None:
    pytest.importorskip("rsicrc.synth")
    from rsicrc.export.validate import synthetic_validation_inputs

    inputs = synthetic_validation_inputs(exported.ckpt.vocab, PreprocessSpec(size=64), 12)
    assert inputs.before.shape == inputs.after.shape == (3, 3, 64, 64)
    assert inputs.input_ids.shape[0] == 3 and inputs.source.startswith("synthetic")
    assert not np.array_equal(inputs.before, inputs.after)
