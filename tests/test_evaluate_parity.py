"""The evaluation of an exported model folder (ONNX Runtime, torch-free) against the PyTorch
evaluation of the checkpoint it came from: on the tiny random-weight model (captions vary) and a
small synthetic dataset, fp32 must give identical captions (greedy and beam 3), retrieval metrics
equal within 1e-6 and the same JSON keys. Also: how `rsicrc evaluate` tells the folders apart."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import open_captioner, open_text_encoder
from rsicrc.errors import ConfigError, ModelFolderError
from rsicrc.levircc import LevirCC
from rsicrc.report import EvalOptions
from rsicrc.runtime.model_folder import folder_kind
from rsicrc.runtime.options import RuntimeOptions


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one torch thread is fastest (and ORT runs with one too)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _options(data: Path, beam: int, out: Path | None = None, **extra: Any) -> EvalOptions:
    # batch 4 over 14 pairs: several batches and a short last one, as in real runs
    return EvalOptions(data=data, split="train", beam=beam, batch_size=4, out=out, progress=False, **extra)


def _keys(d: Any, prefix: str = "") -> set[str]:
    """Every key path of a nested dict (the `config` section's contents excluded)."""
    if not isinstance(d, dict):
        return set()
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if k != "config":
            out |= _keys(v, f"{prefix}{k}.")
    return out


def test_greedy_predictions_are_identical(tiny_model: Path, small_synth_dir: Path, one_thread: None) -> None:
    from rsicrc.evaluate import predict_checkpoint
    from rsicrc.runtime.evaluate import predict_model_folder

    dataset = LevirCC.open(small_synth_dir)
    reference = predict_checkpoint(tiny_model.parent / "ckpt", dataset, _options(small_synth_dir, 1), "cpu")
    ours = predict_model_folder(open_captioner(tiny_model, device="cpu", threads=1),
                                open_text_encoder(tiny_model, device="cpu", threads=1), dataset,
                                _options(small_synth_dir, 1))
    assert [r.imgid for r in ours.records] == [r.imgid for r in reference.records] and len(ours.records) == 14
    assert ours.captions == reference.captions
    assert len(set(ours.captions.values())) > 3  # the model really says different things
    np.testing.assert_allclose(ours.visual, reference.visual, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.text, reference.text, atol=1e-4, rtol=0)


def test_beam3_reports_agree(tiny_model: Path, small_synth_dir: Path, tmp_path: Path,
                             one_thread: None) -> None:
    from rsicrc.evaluate import evaluate_checkpoint
    from rsicrc.metrics import CaptionScorer
    from rsicrc.runtime.evaluate import evaluate_model_folder

    with CaptionScorer() as scorer:  # one METEOR JVM for both reports
        ref = evaluate_checkpoint(tiny_model.parent / "ckpt",
                                  _options(small_synth_dir, 3, tmp_path / "pt.json"), "cpu", scorer)
        ours = evaluate_model_folder(tiny_model, _options(small_synth_dir, 3, tmp_path / "ort.json"),
                                     RuntimeOptions(device="cpu", threads=1), scorer)
    assert _keys(ours) == _keys(ref)
    assert json.loads((tmp_path / "ort.json").read_text()) == ours  # the file is what was returned
    lines = {name: (tmp_path / f"{name}.predictions.jsonl").read_text().splitlines()
             for name in ("pt", "ort")}
    assert lines["ort"] == lines["pt"] and len(lines["pt"]) == 14  # identical captions, same order
    assert ours["predictions"] == str(tmp_path / "ort.predictions.jsonl")
    assert ours["captioning"] == ref["captioning"] and ours["baseline"] == ref["baseline"]
    assert ours["no_change_accuracy"] == ref["no_change_accuracy"]
    for subset in ("all", "changed"):
        assert ref["retrieval"][subset].keys() == ours["retrieval"][subset].keys()
        for k, v in ref["retrieval"][subset].items():
            assert ours["retrieval"][subset][k] == pytest.approx(v, abs=1e-6), (subset, k)
    assert ref["config"]["backend"] == "pytorch" and ours["config"]["backend"] == "onnxruntime-cpu"
    assert ref["config"]["precision"] == ours["config"]["precision"] == "fp32"
    assert ours["config"]["beam"] == ref["config"]["beam"] == 3


def test_folder_kind(tiny_model: Path, tmp_path: Path) -> None:
    assert folder_kind(tiny_model) == "model"
    assert folder_kind(tiny_model.parent / "ckpt") == "checkpoint"
    (tmp_path / "config.json").write_text("{}")  # a config alone is not a checkpoint
    with pytest.raises(ModelFolderError, match=r"neither an exported model folder \(manifest.json.*"
                                               r"nor a checkpoint folder \(model.safetensors \+ config.json"):
        folder_kind(tmp_path)


def test_cli_errors(tiny_model: Path, small_synth_dir: Path, tmp_path: Path) -> None:
    from rsicrc.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--data", str(small_synth_dir)])
    assert result.exit_code == 2 and "neither an exported model folder" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["evaluate", str(tiny_model.parent / "ckpt"), "--data", str(small_synth_dir),
                                 "--precision", "int8"])
    assert result.exit_code == 2 and "apply to exported model folders only" in result.output
    result = runner.invoke(app, ["evaluate", str(tiny_model), "--data", str(small_synth_dir),
                                 "--precision", "int8", "--quiet"])
    assert result.exit_code == 2 and "no 'int8' graphs; available precisions: fp32" in result.output
    with pytest.raises(ConfigError, match="split"):
        EvalOptions(data=small_synth_dir, split="dev")


def test_model_folder_evaluation_needs_no_torch(tiny_model: Path, tmp_path: Path) -> None:
    """With torch unimportable, `rsicrc evaluate MODEL_DIR` gets as far as reading the dataset
    (the model-folder path and the folder detection import nothing torch-side)."""
    script = textwrap.dedent('''
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError(f"torch is blocked in this test: {name}")
        sys.meta_path.insert(0, NoTorch())
        from rsicrc.cli.main import main
        sys.argv = ["rsicrc", "evaluate", sys.argv[1], "--data", sys.argv[2], "--quiet"]
        try:
            main()
        except SystemExit as e:
            print("exit", e.code, [m for m in sys.modules if m.split(".")[0] == "torch"])
    ''')
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_model), str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "exit 2 []", proc.stderr
    assert "dataset folder not found" in proc.stderr and "torch is blocked" not in proc.stderr
