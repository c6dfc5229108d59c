"""The int8 pre-scan (runtime/scan.py): its bounds hold for ONNX Runtime's kernel and its search
returns exact search's rows, and its scores within float32 rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_index import _unit, _vectors, _write

from rsicrc.runtime import scan as scan_module
from rsicrc.runtime.index import StoredIndex, open_index
from rsicrc.runtime.retriever import caster, exact_search
from rsicrc.runtime.scan import QuantizedScan, quantize_rows, scan_model


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Rows crowded around three directions (many near-equal scores at the top), with exact
    duplicates and an all-zero row."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, dim))
    rows = centres[rng.integers(0, 3, n)] + 0.05 * rng.standard_normal((n, dim))
    rows[[7, 400, 901]] = rows[3]
    rows[11] = 0.0
    return rows.astype(np.float32)


def _queries(index: StoredIndex, dim: int, seed: int) -> np.ndarray:
    """Random, near-copy, exact-copy, spiky (one-hot, one large value), constant and alternating
    queries, unit length. Constant queries quantize to one int8 value everywhere: the case in which
    a kernel's zero-point arithmetic loses most (ONNX Runtime's AVX2 path without VNNI)."""
    rng = np.random.default_rng(seed)
    stored = np.asarray(caster(index)(index.vectors(np.array([3, 50, 901]))), np.float32)
    spike = np.full(dim, 0.01)
    spike[dim // 2] = 1.0
    queries = [rng.standard_normal(dim), stored[1] + 0.2 * rng.standard_normal(dim) / np.sqrt(dim),
               stored[0], np.eye(dim)[dim - 1], spike, np.ones(dim), np.where(np.arange(dim) % 2, 1.0, -1.0)]
    return _unit(np.stack(queries)).astype(np.float32)


def _check_same_top_k(truth: np.ndarray, got: tuple[np.ndarray, np.ndarray],
                      want: tuple[np.ndarray, np.ndarray], tolerance: float = 1e-6) -> None:
    """Two top-k lists of one query agree: the same scores in order (within float32 rounding), each
    score the row's true (float64) score, and the same rows except where scores lie within
    `tolerance` of each other (there BLAS rounding may order near-ties either way)."""
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=tolerance)
    np.testing.assert_allclose(got[0], truth[got[1]], rtol=0, atol=tolerance)
    assert len(set(got[1].tolist())) == len(got[1])
    pairs = zip(zip(*got, strict=True), zip(*want, strict=True), strict=True)
    for (score, row), (other_score, other_row) in pairs:
        near = np.flatnonzero(np.abs(want[0] - score) <= 2 * tolerance)
        assert row == other_row or row in want[1][near] or abs(other_score - truth[row]) <= 2 * tolerance


@pytest.mark.parametrize(("dim", "dtype", "data"), [(100, "float16", "random"), (256, "float32", "clustered"),
                                                    (256, "float16", "clustered")])
def test_quantized_search_equals_exact_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dim: int,
                                              dtype: str, data: str) -> None:
    """Rows equal exact search's for every k, across shards, sessions, quantization passes and both
    rescoring rounds, scores within float32 rounding (BLAS may round the last bit of a product
    differently for another matrix shape); width 100 pads its one block."""
    vectors = _vectors(1500, dim, seed=5) if data == "random" else _clustered(1500, dim, seed=5)
    _write(tmp_path / "idx", vectors, dtype, commit_rows=400)
    index = open_index(tmp_path / "idx")
    monkeypatch.setattr(scan_module, "GROUP_BYTES", 600 * 128 * -(-dim // 128))  # 3 sessions
    monkeypatch.setattr(scan_module, "ROWS_PER_PASS", 256)
    monkeypatch.setattr(scan_module, "FIRST_ROUND", 2)
    scan = QuantizedScan(index, caster(index), threads=1)
    assert len(scan._sessions) == 3
    queries = _queries(index, dim, seed=6)
    stored = np.asarray(caster(index)(np.concatenate([a for _, a in index.blocks()])), np.float64)
    for k in (1, 4, 10, 64, 1500, 2000):
        got, want = scan.search(queries, k), exact_search(index, queries, k)
        for q, got_scores, got_rows, want_scores, want_rows in zip(queries, *got, *want, strict=True):
            _check_same_top_k(q @ stored.T, (got_scores, got_rows), (want_scores, want_rows))
    if data == "clustered":  # rows 7, 400 and 901 copy row 3: ties go to the lower row
        assert scan.search(queries[2:3], 4)[1][0].tolist() == [3, 7, 400, 901]


def test_margins_bound_the_kernel(tmp_path: Path) -> None:
    """|exact float32 score - the kernel's score| <= margin for every row and query, including
    queries whose int8 quantization is coarse (one-hot, one spike, constant) and an all-zero row,
    with the derived margins alone (the load-time check found nothing to widen on this CPU)."""
    dim = 384
    vectors = np.concatenate([_vectors(500, dim, seed=8), _clustered(1000, dim, seed=9)])
    _write(tmp_path / "idx", vectors, "float16", commit_rows=500)
    index = open_index(tmp_path / "idx")
    scan = QuantizedScan(index, caster(index), threads=1)
    assert scan.widened == 1.0 and 0 < scan.probe_ratio <= 1.0
    stored = np.asarray(caster(index)(np.concatenate([a for _, a in index.blocks()])), np.float32)
    queries = np.concatenate([_queries(index, dim, seed=10), _unit(np.ones((1, dim))).astype(np.float32),
                              _unit(_vectors(20, dim, seed=11)).astype(np.float32)])
    approx = scan.approximate(queries)
    for q, y in zip(queries, approx, strict=True):
        error = np.abs(q[None, :] @ stored.T - y)[0]
        margin = scan.margins(q)
        assert (error <= margin).all(), float((error - margin).max())
        assert margin.mean() < 0.1  # and not vacuous: scores lie in [-1, 1]


def test_a_kernel_beyond_the_bound_widens_the_margins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Should a kernel path exceed the derived bound (none known does: simulated here by adding
    errors to the real kernel's scores), the load-time check widens every margin enough, and
    search stays exact."""
    dim = 256
    _write(tmp_path / "idx", _clustered(1000, dim, seed=13), "float32", commit_rows=1000)
    index = open_index(tmp_path / "idx")
    plain = QuantizedScan(index, caster(index), threads=1)
    real = QuantizedScan.approximate
    noise = np.random.default_rng(14).uniform(-1, 1, len(index)).astype(np.float32)

    def off_by_three_margins(self: QuantizedScan, queries: np.ndarray) -> np.ndarray:
        y = real(self, queries)
        return y + 3 * noise[None, :] * np.stack([plain.margins(q) for q in queries])

    monkeypatch.setattr(QuantizedScan, "approximate", off_by_three_margins)
    with caplog.at_level("WARNING"):
        scan = QuantizedScan(index, caster(index), threads=1)
    assert scan.probe_ratio > 2.0 and scan.widened == 2.0 * scan.probe_ratio
    assert "margins widened" in caplog.text
    queries = _queries(index, dim, seed=15)
    stored = np.asarray(caster(index)(np.concatenate([a for _, a in index.blocks()])), np.float64)
    for k in (1, 10, 100):
        got, want = scan.search(queries, k), exact_search(index, queries, k)
        for q, got_scores, got_rows, want_scores, want_rows in zip(queries, *got, *want, strict=True):
            _check_same_top_k(q @ stored.T, (got_scores, got_rows), (want_scores, want_rows))


def test_quantize_rows_bounds_and_codes() -> None:
    x = np.concatenate([_vectors(50, 200, seed=12), np.zeros((1, 200), np.float32)])
    codes, scales, e, l1 = quantize_rows(x)
    assert codes.shape == (51, 2, 128) and scales.shape == (51, 2)
    assert (codes[-1] == 128).all() and codes[:, 1, 72:].tolist() == np.full((51, 56), 128).tolist()
    dequantized = ((codes.astype(np.float64) - 128) * scales[..., None]).reshape(51, -1)[:, :200]
    assert (np.linalg.norm(x - dequantized, axis=1) <= e).all()
    assert (np.abs(dequantized).sum(axis=1) <= l1).all()
    assert e[-1] == 0 and np.abs(codes.astype(int) - 128).max() == 127
    assert (scales[-1] == 0).all()  # an all-zero row: scale 0, so no kernel multiplies codes 128 by 1


def test_scan_model_is_valid_onnx() -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(scan_model(1000, 200))
    node = model.graph.node[0]
    assert (node.op_type, node.domain) == ("MatMulNBits", "com.microsoft")
    assert {a.name: a.i for a in node.attribute} == {"K": 200, "N": 1000, "bits": 8, "block_size": 128,
                                                     "accuracy_level": 4}
    assert [list(t.dims) for t in model.graph.initializer] == [[1000, 2, 128], [2000]]
    for tensor, size in zip(model.graph.initializer, (1, 4), strict=True):  # the data ORT gets separately
        assert tensor.data_location == onnx.TensorProto.EXTERNAL
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
        tensor.raw_data = bytes(size * int(np.prod(tensor.dims)))
    onnx.checker.check_model(model, full_check=True)
