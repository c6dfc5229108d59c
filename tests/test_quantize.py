"""int8 graphs (`rsicrc.export.quantize`) on the tiny exported model: written beside fp32 and recorded
with their sha256, true to the graph contract, quantized the way DESIGN §9 says (static QDQ
convolutions, never ConvInteger; dynamic MatMul in the transformer parts), close to fp32 at run
time; the 2 % gate of the default precision; manifests with and without int8."""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import open_captioner, open_text_encoder, random_pairs
from rsicrc.errors import DataError, ExportError, ModelFolderError
from rsicrc.metrics import CAPTION_METRICS
from rsicrc.runtime.contract import DECODER_STEP, GRAPHS, IMAGE_ENCODER, TEXT_ENCODER
from rsicrc.runtime.load_cache import CACHE_NAME
from rsicrc.runtime.manifest import MANIFEST_FILE, load_manifest, sha256_file


@pytest.fixture(scope="module")
def int8_model(tiny_model: Path, small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the tiny model folder with int8 graphs (calibrated on the small synthetic set)."""
    from rsicrc.export.quantize import quantize_model

    folder = tmp_path_factory.mktemp("int8") / "model"
    shutil.copytree(tiny_model, folder)
    report = quantize_model(folder, small_synth_dir, pairs=12)
    return folder, report


def _ops(path: Path) -> tuple[Any, Counter]:
    import onnx

    proto = onnx.load(str(path))
    return proto, Counter(n.op_type for n in proto.graph.node)


def test_int8_graphs_written_and_recorded(int8_model, tiny_model: Path) -> None:
    folder, report = int8_model
    manifest = load_manifest(folder, verify=True)
    original = load_manifest(tiny_model)
    assert manifest.default_precision == "fp32" and set(manifest.graphs) == {"fp32", "int8"}
    assert manifest.graphs["fp32"] == original.graphs["fp32"]
    for graph in GRAPHS:
        entry = manifest.graphs["int8"][graph]
        assert entry.file == f"{graph}_int8.onnx" and entry.sha256 == sha256_file(folder / entry.file)
        assert 0 < entry.max_abs_diff < 0.25 * max(1.0, entry.ref_max_abs)  # quantized, yet close
    sizes = {name: (folder / f"image_encoder{name}.onnx").stat().st_size for name in ("", "_int8")}
    assert sizes["_int8"] < sizes[""]
    record = manifest.int8
    assert record["calibration"]["pairs"] == 12 and "train" in record["calibration"]["source"]
    assert record["check"]["pairs"] == 3 and 0.0 <= record["check"]["caption_agreement"] <= 1.0
    cpu = record["check"]["cpu"]  # where the check ran: int8 kernels differ between CPUs
    assert cpu["model"] and isinstance(cpu["features"], list) and cpu["machine"]
    assert record["check"]["max_abs_diff"] == {g: manifest.graphs["int8"][g].max_abs_diff for g in GRAPHS}
    assert record["default_choice"] is None and set(record["methods"]) == set(GRAPHS)
    assert [g.graph for g in report.graphs] == list(GRAPHS)
    assert report.caption_agreement == record["check"]["caption_agreement"]
    staging = [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != CACHE_NAME]
    assert not staging  # no staging left behind (the load cache of earlier tests may be there)
    with pytest.raises(ExportError, match="already has int8 graphs"):
        from rsicrc.export.quantize import quantize_model

        quantize_model(folder, None)


def test_int8_graphs_pass_the_contract(int8_model) -> None:
    from rsicrc.export.onnx_export import onnx_io
    from rsicrc.runtime.backend import OrtBackend
    from rsicrc.runtime.contract import check_io
    from rsicrc.runtime.model_folder import ModelFolder
    from rsicrc.runtime.options import RuntimeOptions

    folder, _ = int8_model
    manifest = load_manifest(folder)
    backend = OrtBackend(ModelFolder(folder, manifest), RuntimeOptions(precision="int8", device="cpu"))
    for graph in GRAPHS:
        backend.session(graph)  # loads and checks names, dtypes, shapes against the contract
        proto, _ = _ops(folder / manifest.graphs["int8"][graph].file)
        check_io(manifest.contract[graph], graph, *onnx_io(proto))


def test_image_encoder_is_static_qdq(int8_model, tiny_model: Path) -> None:
    folder, _ = int8_model
    proto, ops = _ops(folder / "image_encoder_int8.onnx")
    _, fp32_ops = _ops(tiny_model / "image_encoder.onnx")
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == fp32_ops["Conv"] > 0
    for conv in convs:  # DequantizeLinear -> Conv -> QuantizeLinear: ORT runs it as QLinearConv
        assert [producer.get(i) for i in conv.input] == ["DequantizeLinear"] * len(conv.input), conv.name
        assert consumers[conv.output[0]] == ["QuantizeLinear"], conv.name
    assert ops["BatchNormalization"] == 0  # folded into the convolutions before calibration
    for graph in GRAPHS:
        _, graph_ops = _ops(folder / f"{graph}_int8.onnx")
        assert graph_ops["ConvInteger"] == 0, graph
    # its transformer's constant-weight MatMuls are dynamic, as in the other graphs
    assert ops["MatMulInteger"] >= 4 and ops["DynamicQuantizeLinear"] >= 1


def test_int8_formats_cannot_saturate(int8_model) -> None:
    """No u8 x s8 product pair can overflow int16 (what AVX2 and AVX-512 without VNNI add them in):
    convolution weights lie in -64..64 (reduce_range; 2 x 255 x 64 < 2**15) and every MatMul's
    constant weight is uint8 (U8U8, no pair-saturating kernel). Holds on any CPU, by construction."""
    import onnx
    from onnx import numpy_helper

    folder, _ = int8_model
    for graph in GRAPHS:
        proto, _ = _ops(folder / f"{graph}_int8.onnx")
        weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        producer = {o: n for n in proto.graph.node for o in n.output}
        for node in proto.graph.node:
            if node.op_type == "Conv":
                source = producer[node.input[1]]  # DequantizeLinear of the int8 weight
                w = weights[source.input[0]]
                assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 64, (graph, node.name)
            if node.op_type == "MatMulInteger":
                b = weights.get(node.input[1])
                assert b is not None and b.dtype == np.uint8, (graph, node.name)
        assert onnx.TensorProto.INT8 not in {i.data_type for i in proto.graph.initializer
                                             if i.name in {n.input[1] for n in proto.graph.node
                                                           if n.op_type == "MatMulInteger"}}


def test_transformer_graphs_are_dynamic_matmul(int8_model) -> None:
    folder, _ = int8_model
    for graph in (TEXT_ENCODER, DECODER_STEP):
        proto, ops = _ops(folder / f"{graph}_int8.onnx")
        assert ops["MatMulInteger"] >= 4 and ops["DynamicQuantizeLinear"] >= 1, (graph, ops)
        assert not {"Conv", "ConvInteger", "QLinearConv", "QuantizeLinear"} & set(ops), (graph, ops)
        weights = {i.name for i in proto.graph.initializer}
        float_matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]
        assert all(n.input[1] not in weights for n in float_matmuls), graph  # only activation x activation


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_int8_runtime_stays_close_to_fp32(int8_model) -> None:
    from rsicrc.runtime.decoding import DecodingOptions

    folder, _ = int8_model
    fp32 = open_captioner(folder, device="cpu", precision="fp32", threads=1)
    int8 = open_captioner(folder, device="cpu", precision="int8", threads=1)
    assert int8.precision == "int8"
    assert int8.backend.graph_path(IMAGE_ENCODER).name == "image_encoder_int8.onnx"
    before, after = random_pairs(6, seed=4)
    results = int8.caption_arrays(before, after, DecodingOptions(beam_size=2))
    assert len(results) == 6 and all(r.tokens for r in results)
    assert _cosines(int8.embed_images(before, after), fp32.embed_images(before, after)).min() > 0.95
    texts = ["two houses are built at the top", "the scene is the same as before", "a road is built"]
    text = {p: open_text_encoder(folder, device="cpu", precision=p, threads=1).embed(texts)
            for p in ("fp32", "int8")}
    assert _cosines(text["int8"], text["fp32"]).min() > 0.95
    # the int8 decoder step keeps the float32 cross_attention output: heatmaps work at int8 too
    with_attention = int8.caption_arrays(before, after, DecodingOptions(beam_size=2, attention=True))
    assert [r.tokens for r in with_attention] == [r.tokens for r in results]
    n = int8.dims.visual_tokens
    for r in with_attention:
        assert r.attention.dtype == np.float32 and r.attention.shape == (len(r.tokens), n)
        np.testing.assert_allclose(r.attention.sum(axis=1), 1.0, atol=1e-5)


def _metrics(value: float = 0.5, **changes: float) -> dict[str, Any]:
    """A report with every gated metric at `value`; changes: {"captioning.all.CIDEr": x, ...}."""
    m: dict[str, Any] = {"captioning": {s: dict.fromkeys(CAPTION_METRICS, value) for s in ("all", "changed")},
                         "retrieval": {s: {k: value for k in ("P@1", "R@1", "R@5", "R@10", "MRR@10")}
                                       for s in ("all", "changed")}}
    for path, v in changes.items():
        section, subset, key = path.split(".")
        m[section][subset][key] = v
    return m


def test_compare_metrics_gate() -> None:
    from rsicrc.export.default_precision import compare_metrics

    fp32 = _metrics(0.5)
    same = compare_metrics(fp32, copy.deepcopy(fp32))
    assert same["passed"] and len(same["metrics"]) == 2 * (len(CAPTION_METRICS) + 3)
    edge = compare_metrics(fp32, _metrics(0.5, **{"captioning.changed.METEOR": 0.49}))  # exactly -2 %
    assert edge["passed"] and edge["metrics"]["captioning.changed.METEOR"]["relative"] == pytest.approx(-0.02)
    worse = compare_metrics(fp32, _metrics(0.5, **{"retrieval.changed.R@10": 0.4899}))
    assert not worse["passed"] and not worse["metrics"]["retrieval.changed.R@10"]["ok"]
    assert sum(not r["ok"] for r in worse["metrics"].values()) == 1
    assert compare_metrics(fp32, _metrics(0.9))["passed"]  # int8 better than fp32 is no reason to refuse
    assert not compare_metrics(fp32, _metrics(0.5, **{"captioning.all.Bleu_4": 0.48}))["passed"]
    assert compare_metrics(fp32, _metrics(0.5, **{"retrieval.all.P@1": 0.0}))["passed"]  # P@1 is not gated
    zero = _metrics(0.5, **{"captioning.all.CIDEr": 0.0})
    assert compare_metrics(zero, zero)["passed"]
    assert not compare_metrics(fp32, _metrics(0.5, **{"captioning.all.CIDEr": 0.4}), margin=0.1)["passed"]
    assert compare_metrics(fp32, _metrics(0.5, **{"captioning.all.CIDEr": 0.46}), margin=0.1)["passed"]
    broken = _metrics(0.5)
    del broken["retrieval"]["all"]["R@5"]
    with pytest.raises(DataError, match="int8 metrics lack retrieval.all.R@5"):
        compare_metrics(fp32, broken)


def test_choose_default_records_its_comparison(int8_model, small_synth_dir: Path, tmp_path: Path) -> None:
    from rsicrc.export.default_precision import choose_default
    folder = tmp_path / "model"
    shutil.copytree(int8_model[0], folder)
    choice = choose_default(folder, small_synth_dir, split="test", beam=1)
    manifest = load_manifest(folder)
    recorded = manifest.int8["default_choice"]
    assert choice.precision == manifest.default_precision == recorded["chosen"]
    assert choice.precision == ("int8" if recorded["passed"] else "fp32")
    assert recorded["pairs"] == 4 and 0.0 <= recorded["caption_agreement"] <= 1.0
    row = recorded["metrics"]["captioning.all.CIDEr"]
    assert row["fp32"] == choice.metrics["fp32"]["captioning"]["all"]["CIDEr"]
    assert row["int8"] == choice.metrics["int8"]["captioning"]["all"]["CIDEr"]
    assert choice.metrics["int8"]["config"]["precision"] == "int8"
    assert open_captioner(folder, device="cpu").precision == choice.precision
    assert manifest.int8["check"] and manifest.graphs["int8"]  # the rest of the record is kept


def test_manifest_with_and_without_int8(int8_model, tiny_model: Path, tmp_path: Path) -> None:
    plain = load_manifest(tiny_model)
    assert plain.int8 is None and "int8" not in plain.to_dict()
    assert "int8" not in json.loads((tiny_model / MANIFEST_FILE).read_text())
    folder, _ = int8_model
    copy_dir = tmp_path / "model"
    shutil.copytree(folder, copy_dir)
    data = json.loads((copy_dir / MANIFEST_FILE).read_text())
    record = data.pop("int8")
    (copy_dir / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="int8 graphs and the int8 record must come together"):
        load_manifest(copy_dir)
    data["int8"], data["fp8"] = record, {}
    (copy_dir / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="unknown key"):
        load_manifest(copy_dir)


def test_export_cli_choose_default_needs_int8_and_data(tiny_model: Path, tmp_path: Path) -> None:
    from rsicrc.cli.main import app

    result = CliRunner().invoke(app, ["export", str(tiny_model.parent / "ckpt"), "--out", str(tmp_path / "m"),
                                      "--choose-default", "--int8"])
    assert result.exit_code == 2 and "--choose-default needs --int8 and --data" in result.output
    assert not (tmp_path / "m").exists()
