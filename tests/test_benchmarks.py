"""Smoke tests of the benchmark scripts: cheap imports, and the record format of a tiny run.

No timing assertions: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ("name", "config", "backend", "precision", "batch", "beam", "median_ms", "min_ms", "max_ms",
            "pairs_per_s", "peak_rss_mb")


def test_scripts_import_without_heavy_libraries() -> None:
    code = ("import sys\n"
            "import benchmarks.captioning, benchmarks.contenders, benchmarks.load, benchmarks.machine, "
            "benchmarks.profile, benchmarks.quality, benchmarks.run, benchmarks.attention_cost\n"
            "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'open_clip') if m in sys.modules]\n"
            "print(','.join(heavy))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at import time: {proc.stdout.strip()}"
    for module in ("captioning", "machine", "quality", "run", "attention_cost"):
        assert callable(importlib.import_module(f"benchmarks.{module}").main)


@pytest.fixture(scope="module")
def int8_tiny(tiny_model: Path, small_synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny model folder copied, with int8 graphs added (few calibration pairs)."""
    from rsicrc.export.quantize import quantize_model

    folder = tmp_path_factory.mktemp("bench_int8") / "model"
    shutil.copytree(tiny_model, folder)
    quantize_model(folder, small_synth_dir, pairs=8)
    return folder


def _spec(contender: str, tiny_model: Path, model_dir: Path):
    from benchmarks.captioning import BenchSpec

    return BenchSpec("tiny", contender, str(tiny_model.parent / "ckpt"), str(model_dir), batches=(1, 2),
                     beams=(1, 2), tokens=2, threads=1, max_repeats=1, case_budget_s=0.0)


def test_tiny_captioning_records(tiny_model: Path, int8_tiny: Path) -> None:
    """Every contender yields one record per (batch, beam) with the required keys and sane values."""
    from benchmarks.captioning import CONTENDERS, run_contender

    for contender in CONTENDERS:
        result = run_contender(_spec(contender, tiny_model, int8_tiny))
        records = result["records"]
        cases = {(r["batch"], r["beam"]) for r in records}
        want = {(1, 1), (1, 2), (2, 1)} | (set() if contender == "reference" else {(2, 2)})
        assert cases == want, contender
        for r in records:
            assert set(REQUIRED) <= set(r), contender
            assert r["config"] == "tiny" and r["contender"] == contender and r["tokens"] == 2
            assert r["precision"] == ("int8" if contender == "ort-int8" else "fp32")
            assert r["backend"] == ("pytorch" if contender in ("reference", "torch-kv") else "onnxruntime")
            assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
            assert r["pairs_per_s"] > 0 and r["peak_rss_mb"] > 0
            assert r["encoder_ms"] > 0 and r["step_ms"] > 0
        assert result["meta"]["decoder_weight_bytes"] > 0
        if contender in ("reference", "torch-kv"):
            assert result["meta"]["encoder_gflop"] > 0


def test_subprocess_run_and_report(tiny_model: Path, int8_tiny: Path) -> None:
    """A contender in its own process returns the same record format; the report renders it."""
    from benchmarks.captioning import run_in_subprocess
    from benchmarks.run import analysis, targets, write_markdown

    result = run_in_subprocess(_spec("ort-fp32", tiny_model, int8_tiny), timeout_s=120)
    assert "error" not in result, result.get("error")
    assert len(result["records"]) == 4
    state = {"records": result["records"], "meta": {"tiny": {"ort-fp32": result["meta"]}},
             "limits": {"gemm_gflops": 100.0, "read_gbs": 10.0}, "retrieval": [], "quality": []}
    state["analysis"] = analysis(state)
    assert state["analysis"] and state["analysis"][0]["decoder_gbs"] > 0
    rows = targets(state)
    assert all(t["met"] is None for t in rows if "paper" in t["target"])  # no paper records: not measured
    text = write_markdown({"mode": "quick", "generated": "now", "wall_s": 1.0, "threads": 1, "tokens": 2,
                           "machine": {}, "limits": state["limits"], "load_average_end": [0, 0, 0],
                           "artefacts": {}, "records": state["records"], "analysis": state["analysis"],
                           "retrieval": [], "quality": [], "targets": rows, "skipped": [], "errors": []})
    assert "tiny/ort-fp32" not in text and "(c) ONNX Runtime fp32" in text
    json.dumps(result)  # records are plain JSON


def test_rounds_pool_their_repeats(tiny_model: Path, int8_tiny: Path) -> None:
    """Two rounds of one case become one record over both rounds' repeats (medians of the pool)."""
    from benchmarks.captioning import _record, merge_rounds

    spec = _spec("ort-fp32", tiny_model, int8_tiny)
    first = _record(spec, 1, 1, [(1.0, 0.4, 0.6, 0.5), (1.2, 0.5, 0.7, 0.6)])
    second = {**_record(spec, 1, 1, [(0.8, 0.3, 0.5, 0.4)]), "peak_rss_mb": 50.0}
    other = _record(spec, 2, 1, [(2.0, 1.0, 1.0, 0.9)])
    merged = merge_rounds([{**first, "peak_rss_mb": 40.0}, other, second])
    assert [r["name"] for r in merged] == [first["name"], other["name"]]
    pooled = merged[0]
    assert (pooled["repeats"], pooled["rounds"], pooled["peak_rss_mb"]) == (3, 2, 50.0)
    assert (pooled["median_ms"], pooled["min_ms"], pooled["max_ms"]) == (1000.0, 800.0, 1200.0)
    assert pooled["encoder_ms"] == 400.0 and pooled["step_ms"] == 500.0 / spec.tokens
    assert merged[1]["rounds"] == 1 and merged[1]["median_ms"] == 2000.0


def test_retrieval_rows_and_targets() -> None:
    """A retrieval_scale result becomes whole-query times per backend and text encoder, the targets
    name each path, and the report renders them."""
    from benchmarks.run import _retrieval_row, targets, write_markdown

    scale = {"n": 100_000, "dim": 2048, "dtype": "float16", "query_ms": 30.0, "build_s": 5.0, "load_s": 0.4,
             "index_mb": 400.0, "search_rss_mb": 480.0, "quantized_query_ms": 9.0, "quantized_build_s": 2.0,
             "quantized_equal_ids": 1.0, "quantized_rss_mb": 700.0}
    row = _retrieval_row("paper", scale, {"fp32": {"median_ms": 15.0}, "int8": {"median_ms": 6.0}})
    assert (row["query_ms"], row["quantized_query_ms"], row["quantized_int8_query_ms"]) == (45.0, 24.0, 15.0)
    state = {"records": [], "analysis": [], "retrieval": [row]}
    met = {t["target"]: t["met"] for t in targets(state) if t["target"].startswith("paper: text query")}
    assert list(met.values()) == [False, False, True]
    text = write_markdown({"mode": "full", "generated": "now", "wall_s": 1.0, "threads": 1, "tokens": 2,
                           "machine": {}, "limits": {}, "load_average_end": [0, 0, 0], "artefacts": {},
                           "records": [], "analysis": [], "retrieval": [row], "quality": [],
                           "targets": targets(state), "skipped": [], "errors": []})
    assert "| paper | 100000 | 2048 | 15.00 / 6.00 | 30.00 | 9.00 | 45.00 | 24.00 | 15.00 |" in text


def test_original_encoder_equals_the_batched_encoder() -> None:
    """The reference contender's encoder (trunk and T1 once per image, as the research code runs
    them) computes what rsicrc's batched ImageEncoder does, in eval mode."""
    import torch

    from benchmarks.contenders import original_encoder
    from rsicrc.config import load_config
    from rsicrc.model import RSICRC

    torch.manual_seed(0)
    model = RSICRC(load_config("tiny").model, 40).eval()
    size = model.cfg.image_size
    before, after = torch.randn(3, 3, size, size), torch.randn(3, 3, size, size)
    with torch.no_grad():
        tokens, _ = model.encoder(before, after)
        want = original_encoder(model.encoder, before, after)
    torch.testing.assert_close(tokens, want, rtol=1e-5, atol=1e-5)


def test_load_records(tiny_model: Path, tmp_path: Path) -> None:
    """benchmarks.load: a cold record (cache removed first, then built) and a warm one, from real
    `rsicrc caption` processes."""
    from benchmarks.load import measure
    from rsicrc.runtime.load_cache import CACHE_NAME

    model = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    cold, warm = measure(model, "fp32", threads=1, repeats=2, config="tiny")
    assert (cold["name"], warm["name"]) == ("load/tiny/fp32/cold", "load/tiny/fp32/warm")
    assert cold["runs"] == 1 and warm["runs"] == 2 and len(warm["runs_load_ms"]) == 2
    for r in (cold, warm):
        assert r["load_ms"] > 0 and r["encode_ms"] > 0 and r["decode_ms"] > 0 and r["load_over_compute"] > 0
    assert warm["cache_mb"] > 0 and len(list((model / CACHE_NAME).glob("*.onnx"))) == 2


def test_attention_cost_runs_both_variants(tiny_model: Path) -> None:
    """The with/without cross_attention measurement on the tiny model: both graphs run through the
    runtime's bound step (the pruned one as a format-1 graph), per-step medians recorded."""
    from benchmarks.attention_cost import measure

    (record,) = measure(tiny_model, [2], rounds=2, threads=1)
    assert record["rows"] == 2 and record["steps_each"] == 2 * 20
    assert record["median_ms_with"] > 0 and record["median_ms_without"] > 0
    assert record["ratio"] == record["median_ms_with"] / record["median_ms_without"]
