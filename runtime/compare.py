"""Two runs of the exported graphs compared output by output on identical inputs. Torch-free.

Used three ways: export validation (ONNX Runtime vs PyTorch, `rsicrc.export.validate`), the int8
check (int8 vs fp32, `rsicrc.export.quantize`) and `rsicrc check` (any engine and precision vs
ONNX Runtime fp32 on the CPU, `check_model` below). Both runs get the very same inputs: image
pairs, tokenized captions, and for the decoder step the cross K/V and cache states of the
reference's own greedy steps (teacher forcing, so errors never compound). Shapes are checked
against the graph contract first; then max |candidate - reference| and max |reference| per
output, and how often the next token (argmax of the logits) agrees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsicrc.checks import positive_int
from rsicrc.errors import ContractError
from rsicrc.runtime.contract import (
    AFTER,
    ATTENTION_MASK,
    BATCH,
    BEFORE,
    DECODER_STEP,
    GRAPHS,
    IMAGE_ENCODER,
    INPUT_IDS,
    LOGITS,
    SEQ,
    STEP,
    TEXT_ENCODER,
    Dims,
    GraphSpec,
    cross_names,
    past_names,
    present_names,
)
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.model_folder import ModelFolder
from rsicrc.runtime.options import RuntimeOptions
from rsicrc.runtime.preprocess import PreprocessSpec, preprocess_batch
from rsicrc.vocab import START, Vocabulary, text_batch, tokenize

Runner = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]  # (graph, feed) -> outputs
# Relative tolerances of `rsicrc check`. fp32: TensorRT picks other kernels and summation orders
# than ONNX Runtime (TF32 is off unless asked for). fp16: 10-bit mantissas through the network.
TOLERANCES = {"fp32": 1e-3, "fp16": 5e-2, "int8": 1e-1}
QUERIES = ("a house is built at the top of the scene", "the scene is the same as before",
           "a road is built through the trees", "some trees are removed near the houses")


@dataclass(frozen=True)
class GraphInputs:
    """Real, preprocessed inputs for all three graphs."""

    before: np.ndarray  # float32 [B, 3, S, S]
    after: np.ndarray  # float32 [B, 3, S, S]
    input_ids: np.ndarray  # int64 [B, L]: START, words, END, then PAD
    attention_mask: np.ndarray  # int64 [B, L]: 1 up to and including END
    source: str  # where the pairs came from (folder, file names)


def graph_inputs(pairs: Sequence[tuple[np.ndarray, np.ndarray]], captions: Sequence[Sequence[str]],
                 vocab: Vocabulary, spec: PreprocessSpec, max_len: int, source: str) -> GraphInputs:
    """uint8 pairs and token lists -> the graphs' inputs, preprocessed as the runtime does."""
    ids, mask = text_batch(vocab, captions, max_len)
    before = preprocess_batch([b for b, _ in pairs], spec)  # [B, 3, S, S]
    after = preprocess_batch([a for _, a in pairs], spec)
    return GraphInputs(before, after, ids, mask, source)


@dataclass(frozen=True)
class OutputDiff:
    graph: str  # graph name (contract)
    output: str  # output name (contract)
    max_abs_diff: float  # largest |candidate - reference| over every run of this output (NaN if any is)
    ref_max_abs: float  # largest |reference| over the same runs
    reference_finite: bool  # every reference value was finite

    def within(self, tolerance: float) -> bool:
        """max|diff| <= tolerance * max(1, max|reference|); False for NaN."""
        return bool(self.max_abs_diff <= tolerance * max(1.0, self.ref_max_abs))


@dataclass(frozen=True)
class Comparison:
    outputs: tuple[OutputDiff, ...]  # every output of every compared graph, contract order
    steps: int  # decoder steps compared
    argmax_agreement: float  # share of decoder rows x steps whose next token agrees (1.0 without steps)

    def of(self, graph: str) -> tuple[OutputDiff, ...]:
        return tuple(o for o in self.outputs if o.graph == graph)

    def max_abs_diff(self, graph: str) -> float:
        return max(o.max_abs_diff for o in self.of(graph))

    def ref_max_abs(self, graph: str) -> float:
        return max(o.ref_max_abs for o in self.of(graph))


class _Tracker:
    """Running per-output maxima, with the contract's shapes checked on every run."""

    def __init__(self, contract: Mapping[str, GraphSpec], labels: tuple[str, str]) -> None:
        self.contract, self.labels = contract, labels
        self.worst: dict[tuple[str, str], list[Any]] = {}
        self.agree: list[np.ndarray] = []

    def add(self, graph: str, ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray], batch: int,
            seq: int) -> None:
        for t in self.contract[graph].outputs:
            want = tuple(batch if d == BATCH else seq if d == SEQ else d for d in t.shape)
            r, c = np.asarray(ref[t.name]), np.asarray(cand[t.name])
            if c.shape != want or r.shape != want:
                raise ContractError(f"{graph}: output {t.name} has shape {list(c.shape)} in "
                                    f"{self.labels[1]} and {list(r.shape)} in {self.labels[0]}; "
                                    f"the contract says {list(want)}")
            r64 = r.astype(np.float64)
            finite = bool(np.isfinite(r64).all())
            diff = float(np.abs(c.astype(np.float64) - r64).max(initial=0.0))
            ref_max = float(np.abs(r64).max(initial=0.0))
            old = self.worst.setdefault((graph, t.name), [0.0, 0.0, True])
            old[0] = diff if np.isnan(diff) or np.isnan(old[0]) else max(old[0], diff)
            old[1], old[2] = max(old[1], ref_max), old[2] and finite
        if graph == DECODER_STEP:
            self.agree.append(np.argmax(cand[LOGITS], axis=1) == np.argmax(ref[LOGITS], axis=1))

    def result(self, steps: int) -> Comparison:
        outputs = tuple(OutputDiff(g, o, d, r, f) for (g, o), (d, r, f) in self.worst.items())
        agreement = float(np.mean(np.concatenate(self.agree))) if self.agree else 1.0
        return Comparison(outputs, steps, agreement)


def compare_graphs(reference: Runner, candidate: Runner, contract: Mapping[str, GraphSpec], dims: Dims,
                   inputs: GraphInputs, graphs: Sequence[str] = GRAPHS, steps: Sequence[int] = range(4),
                   labels: tuple[str, str] = ("reference", "candidate")) -> Comparison:
    """Run `graphs` on both runners with identical inputs; the decoder step at `steps` (cache slots),
    fed the reference's greedy tokens and caches, on the reference's cross K/V. Raises
    ContractError when an output's shape is not the contract's."""
    tracker = _Tracker(contract, labels)
    batch = inputs.before.shape[0]

    def both(graph: str, feed: Mapping[str, np.ndarray], seq: int = 0) -> Mapping[str, np.ndarray]:
        ref = reference(graph, feed)
        tracker.add(graph, ref, candidate(graph, feed), batch, seq)
        return ref

    images = {BEFORE: inputs.before, AFTER: inputs.after}
    if IMAGE_ENCODER in graphs:
        image = both(IMAGE_ENCODER, images)
    elif DECODER_STEP in graphs:
        image = reference(IMAGE_ENCODER, images)
    if TEXT_ENCODER in graphs:
        both(TEXT_ENCODER, {INPUT_IDS: inputs.input_ids, ATTENTION_MASK: inputs.attention_mask},
             inputs.input_ids.shape[1])
    compared = list(steps) if DECODER_STEP in graphs else []
    if compared:
        cross = {n: image[n] for kv in cross_names(dims) for n in kv}
        shape = (batch, dims.num_heads, dims.max_len, dims.head_dim)  # [B, H, S, dh]
        past = {n: np.zeros(shape, np.float32) for kv in past_names(dims) for n in kv}
        renamed = {present: past_name for pkv, qkv in zip(past_names(dims), present_names(dims), strict=True)
                   for past_name, present in zip(pkv, qkv, strict=True)}
        tokens = np.full((batch, 1), START, dtype=np.int64)  # [B, 1]
        for step in compared:
            out = both(DECODER_STEP, {INPUT_IDS: tokens, STEP: np.array([step], np.int64), **past, **cross})
            tokens = np.argmax(out[LOGITS], axis=1).astype(np.int64).reshape(-1, 1)  # the reference's choice
            past = {renamed[name]: np.asarray(out[name]) for name in renamed}
    return tracker.result(len(compared))


@dataclass(frozen=True)
class CheckReport:
    """`rsicrc check`: every output of an engine/precision against ONNX Runtime fp32."""

    candidate: str  # e.g. "trt fp16"
    pairs: int  # image pairs used
    comparison: Comparison
    tolerance: float  # relative tolerance applied to every output

    @property
    def ok(self) -> bool:
        return all(o.within(self.tolerance) for o in self.comparison.outputs)

    def to_dict(self) -> dict[str, Any]:
        c = self.comparison
        checks = [{**{k: v for k, v in asdict(o).items() if k != "reference_finite"},
                   "tolerance": self.tolerance, "ok": o.within(self.tolerance)} for o in c.outputs]
        return {"candidate": self.candidate, "pairs": self.pairs, "steps": c.steps, "checks": checks,
                "argmax_agreement": c.argmax_agreement, "ok": self.ok}

    def lines(self) -> list[str]:
        c = self.comparison
        rows = [f"{self.candidate} vs ONNX Runtime fp32 (CPU) on {self.pairs} pairs, {c.steps} decoder steps"]
        for o in c.outputs:
            rows.append(f"  {'ok  ' if o.within(self.tolerance) else 'FAIL'} {o.graph:14} {o.output:18} "
                        f"max|diff| {o.max_abs_diff:.2e} (ref max {o.ref_max_abs:.3g}, "
                        f"tolerance {self.tolerance:g} relative)")
        rows.append(f"  next-token agreement {c.argmax_agreement:.1%}; {'PASS' if self.ok else 'FAIL'}")
        return rows


def check_model(model_dir: Path, source: Path, runtime: RuntimeOptions, count: int = 4,
                tolerance: float | None = None, steps: int = 4) -> CheckReport:
    """Compare the engine/precision of `runtime` with ONNX Runtime fp32 on the CPU, on the first
    `count` pairs of `source` (a folder with A/ and B/, a LEVIR-CC folder or a CSV) and QUERIES."""
    from rsicrc.runtime.pairs import list_pairs

    count = positive_int(count, "count")
    folder = ModelFolder.open(model_dir)
    runtime = folder.resolve(runtime)
    precision = runtime.precision or "fp32"
    if tolerance is None:
        tolerance = TOLERANCES.get(precision, TOLERANCES["fp16"])
    items = list_pairs(Path(source))[:count]
    pairs = [read_pair(i.before, i.after) for i in items]
    queries = [tokenize(QUERIES[i % len(QUERIES)]) for i in range(len(pairs))]  # one per pair
    inputs = graph_inputs(pairs, queries, folder.vocab, folder.preprocess, folder.max_len, str(source))
    reference = folder.backend(RuntimeOptions(precision="fp32", device="cpu"))
    candidate = folder.backend(runtime)
    label = f"{runtime.engine} {precision}"
    comparison = compare_graphs(reference.run, candidate.run, folder.manifest.contract, folder.dims, inputs,
                                steps=range(max(1, min(steps, folder.max_len - 1))),
                                labels=("ONNX Runtime fp32", label))
    return CheckReport(label, len(pairs), comparison, tolerance)
