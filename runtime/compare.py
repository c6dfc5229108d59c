"""Compare a backend with ONNX Runtime graph by graph on real inputs (`rsicrc check`).

The reference is ONNX Runtime on the CPU with the fp32 graphs. Both backends get the very same
inputs: preprocessed real image pairs, tokenized queries, and for the decoder step the cross
K/V and cache states of a few greedy reference steps (so errors never compound). An output
passes when max|candidate - reference| <= tolerance * max(1, max|reference|), with a tolerance
per precision (TOLERANCES). Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.errors import ConfigError, DataError
from rsicrc.runtime.backend import Backend, OrtBackend
from rsicrc.runtime.contract import (
    AFTER,
    ATTENTION_MASK,
    BEFORE,
    DECODER_STEP,
    IMAGE_ENCODER,
    INPUT_IDS,
    LOGITS,
    STEP,
    TEXT_ENCODER,
    cross_names,
    past_names,
)
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.manifest import Manifest, load_manifest
from rsicrc.runtime.preprocess import preprocess_batch
from rsicrc.runtime.trt_backend import make_backend
from rsicrc.vocab import PAD, START, tokenize

# Relative tolerances. fp32: TensorRT picks other kernels and summation orders than ONNX Runtime
# (TF32 is off unless asked for). fp16: 10-bit mantissas through the whole network.
TOLERANCES = {"fp32": 1e-3, "fp16": 5e-2, "int8": 1e-1}
QUERIES = ("a house is built at the top of the scene", "the scene is the same as before",
           "a road is built through the trees", "some trees are removed near the houses")


@dataclass(frozen=True)
class OutputCheck:
    graph: str  # graph name
    output: str  # output name
    max_abs_diff: float  # largest |candidate - reference| over every run of this output
    ref_max_abs: float  # largest |reference| over the same runs
    tolerance: float  # relative tolerance applied

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance * max(1.0, self.ref_max_abs))


@dataclass(frozen=True)
class CheckReport:
    candidate: str  # e.g. "trt fp16"
    pairs: int  # image pairs used
    steps: int  # decoder steps compared
    checks: tuple[OutputCheck, ...]  # every output of every graph
    argmax_agreement: float  # share of decoder rows x steps whose next token (argmax) agrees

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "checks": [{**asdict(c), "ok": c.ok} for c in self.checks]}

    def lines(self) -> list[str]:
        rows = [f"{self.candidate} vs ONNX Runtime fp32 (CPU) on {self.pairs} pairs, "
                f"{self.steps} decoder steps"]
        for c in self.checks:
            rows.append(f"  {'ok  ' if c.ok else 'FAIL'} {c.graph:14} {c.output:18} "
                        f"max|diff| {c.max_abs_diff:.2e} (ref max {c.ref_max_abs:.3g}, "
                        f"tolerance {c.tolerance:g} relative)")
        rows.append(f"  next-token agreement {self.argmax_agreement:.1%}; {'PASS' if self.ok else 'FAIL'}")
        return rows


def encode_queries(manifest: Manifest, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Text-encoder inputs (ids, mask), padded to the longest, as Captioner.encode_texts makes them."""
    vocab = manifest.vocabulary()
    ids = [vocab.encode(tokenize(t), manifest.max_len) for t in texts]
    longest = max(len(i) for i in ids)
    tokens = np.full((len(ids), longest), PAD, dtype=np.int64)  # [B, L]
    mask = np.zeros((len(ids), longest), dtype=np.int64)  # [B, L]
    for row, i in enumerate(ids):
        tokens[row, : len(i)], mask[row, : len(i)] = i, 1
    return tokens, mask


def compare_backends(reference: Backend, candidate: Backend, manifest: Manifest, before: np.ndarray,
                     after: np.ndarray, texts: Sequence[str], tolerance: float, steps: int = 4,
                     label: str = "candidate") -> CheckReport:
    """Run every graph on both backends with identical inputs and compare every output."""
    worst: dict[tuple[str, str], tuple[float, float]] = {}

    def run(graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ref, cand = reference.run(graph, feed), candidate.run(graph, feed)
        for name, value in ref.items():
            if cand[name].shape != value.shape:
                raise DataError(f"{label}: {graph}.{name} has shape {cand[name].shape}, ONNX Runtime "
                                f"{value.shape}")
            diff = float(np.max(np.abs(cand[name].astype(np.float64) - value))) if value.size else 0.0
            old = worst.get((graph, name), (0.0, 0.0))
            worst[(graph, name)] = (max(old[0], diff), max(old[1], float(np.max(np.abs(value), initial=0.0))))
        if graph == DECODER_STEP:
            agree.append(np.argmax(cand[LOGITS], axis=1) == np.argmax(ref[LOGITS], axis=1))
        return ref

    agree: list[np.ndarray] = []
    image = run(IMAGE_ENCODER, {BEFORE: before, AFTER: after})
    tokens, mask = encode_queries(manifest, texts)
    run(TEXT_ENCODER, {INPUT_IDS: tokens, ATTENTION_MASK: mask})
    dims, rows = manifest.dims, before.shape[0]
    shape = (rows, dims.num_heads, dims.max_len, dims.head_dim)
    past = {n: np.zeros(shape, np.float32) for kv in past_names(dims) for n in kv}
    cross = {n: image[n] for kv in cross_names(dims) for n in kv}
    current = np.full((rows, 1), START, dtype=np.int64)
    steps = max(1, min(steps, dims.max_len - 1))
    for step in range(steps):
        out = run(DECODER_STEP, {INPUT_IDS: current, STEP: np.array([step], np.int64), **past, **cross})
        current = np.argmax(out[LOGITS], axis=1).astype(np.int64).reshape(-1, 1)
        past = {n: out[n.replace("past_", "present_")] for n in past}
    checks = tuple(OutputCheck(g, o, d, r, tolerance) for (g, o), (d, r) in worst.items())
    agreement = float(np.mean(np.concatenate(agree))) if agree else 1.0
    return CheckReport(label, rows, steps, checks, agreement)


def check_model(model_dir: Path, source: Path, backend: str = "trt", precision: str = "fp32",
                pairs: int = 4, tolerance: float | None = None, device: str = "auto",
                steps: int = 4) -> CheckReport:
    """Compare `backend` at `precision` with ONNX Runtime fp32 on the first `pairs` pairs of
    `source` (a folder with A/ and B/, a LEVIR-CC folder or a CSV; see rsicrc.runtime.pairs)."""
    from rsicrc.runtime.pairs import list_pairs

    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ConfigError(f"pairs must be an integer >= 1, got {pairs!r}")
    if tolerance is None:
        tolerance = TOLERANCES.get(precision, TOLERANCES["fp16"])
    manifest = load_manifest(Path(model_dir))
    items = list_pairs(Path(source))[:pairs]
    arrays = [read_pair(i.before, i.after) for i in items]
    before = preprocess_batch([a[0] for a in arrays], manifest.preprocess)  # [B, 3, S, S]
    after = preprocess_batch([a[1] for a in arrays], manifest.preprocess)
    reference = OrtBackend(Path(model_dir), manifest, "fp32", device="cpu")
    candidate = make_backend(backend, Path(model_dir), manifest, precision, device)
    return compare_backends(reference, candidate, manifest, before, after, QUERIES, tolerance, steps,
                            label=f"{backend} {precision}")
