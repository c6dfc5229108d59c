"""Exact top-k search with an int8 pre-scan: the Retriever's "quantized" backend. Torch-free.

At load every stored row x (float32, as exact search reads it) is quantized to 8 bits in blocks
of BLOCK values along C (one float32 scale per block, codes centred on 128) and handed to ONNX
Runtime's MatMulNBits operator, the kernel that LLM decoders use for 8-bit weights: with
accuracy_level 4 it quantizes the query to int8 as well and reads the codes at close to memory
speed (100,000 x 2048 rows: 10-13 ms for their 195 MiB on the 2-core machine, where exact search
over float16 rows takes 75-130 ms). Its scores y = q.x^ bound the true scores s = q.x:

    |s - y| <= |q.(x - x^)| + |x^.(q - q^)| + fp  <=  e_x |q|_2 + |x^|_1 max|q| / 254 + fp

e_x = |x - x^|_2 and |x^|_1 are measured per row at load. q^, the query as the kernel quantizes
it, differs from q by at most half an int8 step per value (the kernel rounds to nearest; a test
checks the bound on the kernel itself), and a step is at most max|q| / 127 whatever blocks or
zero point the kernel uses. fp bounds float32 rounding in the kernel and in exact search's own
products; it includes the zero-point form some kernel paths use (ONNX Runtime's AVX2 path without
VNNI computes each block as s_x s_q sum(code * q_int) - s_x 128 s_q sum(q_int) in float32, two
terms of up to s_x 255 |q^|_1 that cancel), so a row's largest block scale enters the bound too.
An all-zero block gets scale 0, never an arbitrary one that such a form would multiply by 128.

The derivation covers the kernel paths we know of. At load the bound is also checked against
exact scores on a sample of rows and a few probe queries chosen to stress it (constant,
alternating, one-hot, spiky, random, stored rows); should a kernel exceed it there, every margin
is widened by twice the worst ratio seen (logged), so an unknown kernel path costs speed, never
a missed row. Every row whose upper bound reaches the k-th best lower bound is rescored exactly
(float32 products of the stored rows, as `exact_search` does), so the result is exact search's:
the same rows, the same scores up to the last bit of a float32 product (BLAS may round it
differently for another matrix shape, so two rows whose scores differ by ~1e-7 may swap). On
random unit vectors of width 2048 about 1-3% of the rows can reach the top k and the second
round rescores few of them; where many scores crowd near the top, more (slower, never wrong).

Memory: about two bytes per stored value (the int8 codes and ONNX Runtime's packed copy of them)
plus 8 bytes per row; building costs one pass over the index (~2.5 s per 100,000 x 2048 rows).
Measured on the 2-core machine, 1,000,000 x 2048 float16 rows: built in 25 s, 113 ms a query
(exact search: 820 ms), peak RSS 8.4 GB with the 4 GB of mapped index pages. It pays off for a
process that answers many queries, not for one `rsicrc search`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from rsicrc.runtime import onnx_proto
from rsicrc.runtime.backend import import_onnxruntime, session_options
from rsicrc.runtime.index import StoredIndex

BLOCK = 128  # values per quantization block along C (measured fastest of 32/128 for 8 bits)
GROUP_BYTES = 128 << 20  # codes per ONNX Runtime session (bounds the copies made to build one)
ROWS_PER_PASS = 1024  # rows quantized at once (temporaries stay in cache: 2x faster than 8192)
FIRST_ROUND = 64  # rows rescored before the exact k-th score prunes the rest
SCORE_ELEMENTS = 1 << 24  # float32 [queries, rows] bound matrices per pass (64 MB each)
PROBE_ROWS = 4096  # rows whose exact scores check the bound at load
_U = 2.0**-24  # float32 unit roundoff
_ZP = 128  # the codes' zero point
log = logging.getLogger(__name__)


def scan_model(rows: int, dim: int) -> bytes:
    """y float32 [m, rows] = MatMulNBits(q float32 [m, dim]; codes uint8 [rows, blocks, BLOCK],
    scales float32 [rows * blocks]); both initializers are supplied at session creation."""
    p = onnx_proto
    blocks = -(-dim // BLOCK)
    attributes = [p.int_attribute("K", dim), p.int_attribute("N", rows), p.int_attribute("bits", 8),
                  p.int_attribute("block_size", BLOCK), p.int_attribute("accuracy_level", 4)]
    node = p.node("MatMulNBits", ["q", "codes", "scales"], ["y"], attributes, domain="com.microsoft")
    initializers = [p.external_tensor("codes", p.UINT8, (rows, blocks, BLOCK)),
                    p.external_tensor("scales", p.FLOAT, (rows * blocks,))]
    inputs, outputs = [p.value_info("q", p.FLOAT, ["m", dim])], [p.value_info("y", p.FLOAT, ["m", rows])]
    return p.model([node], inputs, outputs, {"": 17, "com.microsoft": 1}, initializers, name="int8-scan")


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x float32 [r, C] -> codes uint8 [r, blocks, BLOCK] (zero point 128), scales float32
    [r, blocks] (0 for an all-zero block), and upper bounds of e = |x - x^|_2 and of |x^|_1,
    float32 [r]. C is zero-padded to whole blocks. float32 throughout; the bounds absorb its
    rounding (relative 1e-5)."""
    r, dim = x.shape
    blocks = -(-dim // BLOCK)
    if dim == blocks * BLOCK:
        xb = x.reshape(r, blocks, BLOCK)  # [r, blocks, BLOCK]
    else:
        xb = np.zeros((r, blocks, BLOCK), np.float32)
        xb.reshape(r, -1)[:, :dim] = x
    scales = np.abs(xb).max(axis=2) * np.float32(1 / 127)  # [r, blocks]; 0 for an all-zero block
    divisor = np.where(scales == 0, np.float32(1), scales)  # codes 128 there, dequantized exactly
    steps = xb * (np.float32(1) / divisor)[..., None]  # [r, blocks, BLOCK]
    np.rint(steps, out=steps)
    np.clip(steps, -127, 127, out=steps)
    dequantized = steps * scales[..., None]  # x^ [r, blocks, BLOCK]
    diff = xb - dequantized
    e = np.sqrt(np.einsum("rbk,rbk->r", diff, diff))  # [r]
    np.abs(dequantized, out=dequantized)
    l1 = dequantized.sum(axis=(1, 2), dtype=np.float32)  # [r]
    norm = np.sqrt(np.einsum("rc,rc->r", x, x))  # [r] |x|_2: bounds x^'s own float32 rounding
    codes = (steps + _ZP).astype(np.uint8)
    return codes, scales, e * np.float32(1 + 1e-5) + norm * np.float32(1e-6), l1 * np.float32(1 + 1e-5)


class QuantizedScan:
    """The int8 pre-scan of a loaded index (module docstring); `search` returns exact top-k."""

    def __init__(self, index: StoredIndex, cast: Callable[[np.ndarray], np.ndarray],
                 threads: int | None = None) -> None:
        """`cast`: stored rows -> float32, exactly (retriever.caster)."""
        self.index, self.cast, self.dim = index, cast, index.dim
        blocks = -(-self.dim // BLOCK)
        group_rows = max(1, GROUP_BYTES // (blocks * BLOCK))
        self._sessions: list[Any] = []
        self._buffers: list[Any] = []  # the initializers' OrtValues: ORT reads them, we keep them alive
        errors, l1s, peaks = [], [], []
        for first in range(0, len(index), group_rows):
            codes, scales = [], []
            for part in self._pieces(first, min(first + group_rows, len(index))):
                c, s, e, l1 = quantize_rows(part)
                codes.append(c)
                scales.append(s.ravel())
                errors.append(e)
                l1s.append(l1)
                peaks.append(s.max(axis=1))
            self._add_session(np.concatenate(codes), np.concatenate(scales), threads)
        empty = np.zeros(0, np.float32)
        self.errors = np.concatenate(errors) if errors else empty  # [n] >= e_x
        self.l1 = np.concatenate(l1s) if l1s else empty  # [n] >= |x^|_1
        self.peak_scale = np.concatenate(peaks) if peaks else empty  # [n] the row's largest block scale
        # float32 rounding in the kernel's block sums, in exact search's C products and in the
        # bound arithmetic here: at most (C + blocks + 8) u (1 + |q|_2 + |x^|_1 max|q|), doubled;
        # the zero-point form: (blocks + 8) u times its terms, (255 + 128) s_x |q^|_1, doubled.
        self._fp = np.float32((self.dim + blocks + 8) * _U * 2.0)
        self._fp_zero_point = np.float32((blocks + 8) * _U * 2.0 * (255 + _ZP))
        self.widened = 1.0  # margins' factor set by the load-time check (1: the bound held)
        self.probe_ratio = self._check_bound()  # worst |error| / margin seen at load

    def _pieces(self, a: int, b: int) -> Iterator[np.ndarray]:
        """float32 [<= ROWS_PER_PASS, C] pieces of global rows a..b-1, in order."""
        for first, array in self.index.blocks():
            lo, hi = max(a, first), min(b, first + len(array))
            for start in range(lo, hi, ROWS_PER_PASS):
                yield self.cast(array[start - first: min(hi, start + ROWS_PER_PASS) - first])

    def _add_session(self, codes: np.ndarray, scales: np.ndarray, threads: int | None) -> None:
        ort = import_onnxruntime()
        options = session_options(ort, threads)
        values = [ort.OrtValue.ortvalue_from_numpy(codes), ort.OrtValue.ortvalue_from_numpy(scales)]
        options.add_external_initializers(["codes", "scales"], values)
        self._sessions.append(ort.InferenceSession(scan_model(len(codes), self.dim), sess_options=options,
                                                   providers=["CPUExecutionProvider"]))
        self._buffers.append(values)

    def approximate(self, queries: np.ndarray) -> np.ndarray:
        """The kernel's scores float32 [q, n] (q.x^ with q quantized)."""
        parts = [s.run(None, {"q": queries})[0] for s in self._sessions]
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(queries), 0), np.float32)

    def margins(self, query: np.ndarray) -> np.ndarray:
        """float32 [n] bounds of |exact score - approximate score| for one query (docstring)."""
        norm = np.float32(np.linalg.norm(query))
        peak = np.float32(np.abs(query).max())
        per_l1 = peak * (np.float32(1.001 / 254.0) + self._fp)
        q_hat_l1 = np.float32(np.abs(query).sum()) + peak * np.float32(self.dim / 254.0)  # >= |q^|_1
        margin = (self.errors * norm + self.l1 * per_l1 + self._fp * (1 + norm)
                  + self.peak_scale * (self._fp_zero_point * q_hat_l1))
        return margin * np.float32(self.widened) if self.widened != 1.0 else margin

    def _check_bound(self) -> float:
        """Check the margins against exact scores on up to PROBE_ROWS rows and a few probe queries
        that stress them; widen every margin if the kernel exceeds them (module docstring)."""
        n = len(self.index)
        if n == 0:
            return 0.0
        rows = np.unique(np.linspace(0, n - 1, min(n, PROBE_ROWS)).astype(np.int64))  # [p]
        vectors = self.cast(self.index.vectors(rows))  # [p, C] float32
        rng = np.random.default_rng(0)
        spike = np.full(self.dim, 0.01, np.float32)
        spike[self.dim // 2] = 1.0
        alternating = np.where(np.arange(self.dim) % 2, 1, -1)
        probes = np.stack([np.ones(self.dim), alternating, np.eye(self.dim)[self.dim - 1], spike,
                           *rng.standard_normal((2, self.dim)), *vectors[[0, len(rows) // 2]]])
        probes = probes.astype(np.float32)  # [8, C]
        probes /= np.maximum(np.linalg.norm(probes, axis=1, keepdims=True), np.float32(1e-30))
        approx = self.approximate(probes)[:, rows]  # [8, p]
        exact = probes @ vectors.T  # [8, p]
        ratio = max(float((np.abs(exact[i] - approx[i]) / self.margins(q)[rows]).max())
                    for i, q in enumerate(probes))
        if ratio > 1.0:
            self.widened = 2.0 * ratio
            log.warning("the int8 scan kernel of this CPU exceeded its error bound by %.2fx on probe "
                        "queries; margins widened %.1fx (search stays exact, rescoring does more work)",
                        ratio, self.widened)
        return ratio

    def search(self, queries: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by dot product: scores float32 [q, k'] and rows int64 [q, k'], best first,
        ties by lower row; k' = min(top_k, len(index)). Queries float32 [q, C], used as given."""
        n, k = len(self.index), min(top_k, len(self.index))
        scores = np.zeros((len(queries), k), np.float32)
        rows = np.zeros((len(queries), k), np.int64)
        if k == 0:
            return scores, rows
        per_pass = max(1, SCORE_ELEMENTS // n)
        for a in range(0, len(queries), per_pass):
            approx = self.approximate(queries[a: a + per_pass])  # [p, n]
            for i, y in enumerate(approx):
                scores[a + i], rows[a + i] = self._search_one(queries[a + i], y, k)
        return scores, rows

    def _search_one(self, query: np.ndarray, approx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rescore the rows that can reach the top k, most promising first, in two rounds: the
        first FIRST_ROUND rows by upper bound give an exact k-th score, and only rows whose upper
        bound reaches it are left (any other row scores strictly below k exact scores)."""
        n = len(approx)
        margin = self.margins(query)  # [n]
        upper = approx + margin  # [n]
        floor = np.partition(approx - margin, n - k)[n - k]  # the k-th best lower bound
        candidates = np.flatnonzero(upper >= floor)  # [c] every row that can be in the top k
        candidates = candidates[np.argsort(-upper[candidates], kind="stable")]
        first = max(FIRST_ROUND, 4 * k)
        best = self._rescore(query, candidates[:first], k)
        rest = candidates[first:]
        rest = rest[upper[rest] >= best[0][-1]]  # rows that can still beat the k-th exact score
        if len(rest):
            more = self._rescore(query, rest, k)
            merged = (np.concatenate([best[0], more[0]]), np.concatenate([best[1], more[1]]))
            order = np.lexsort((merged[1], -merged[0]))[:k]
            best = (merged[0][order], merged[1][order])
        return best

    def _rescore(self, query: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best candidates by exact float32 score (computed as exact search computes it)."""
        vectors = self.cast(self.index.vectors(candidates))  # [c, C] float32
        exact = (query[None, :] @ vectors.T)[0]  # [c]
        order = np.lexsort((candidates, -exact))[:k]
        return exact[order], candidates[order]
