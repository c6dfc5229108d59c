"""Export refuses a bad model: every graph runs in ONNX Runtime (CPU) against PyTorch on real inputs.

Real inputs: image pairs and captions of a LEVIR-CC layout folder, preprocessed exactly as the
runtime does; the decoder step is checked on the cache states of a few PyTorch greedy steps.
Per graph, in this order: names and dtypes (the contract), then shapes, then values; a value
check fails when max|ORT - PyTorch| > tolerance * max(1, max|PyTorch|) for any output.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsicrc.errors import ContractError, DataError, DependencyError, ExportError
from rsicrc.export.onnx_export import graph_modules, to_numpy
from rsicrc.levircc import LevirCC, PairRecord
from rsicrc.model import RSICRC
from rsicrc.runtime.contract import BATCH, DECODER_STEP, IMAGE_ENCODER, SEQ, TEXT_ENCODER, Dims, GraphSpec
from rsicrc.runtime.contract import check_io as contract_check_io
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.preprocess import PreprocessSpec, preprocess_batch
from rsicrc.vocab import PAD, START, Vocabulary

DEFAULT_TOLERANCE = 1e-4  # relative to max(1, largest |reference value|)
VALIDATION_PAIRS = 3  # batch of the validation run (2 or 3 pairs)
DECODE_STEPS = 4  # greedy steps (real cache states) fed to the decoder step, then one at the last slot
SYNTH_PAIRS = 4  # pairs synthesized when no validation data is given
ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16"}


@dataclass(frozen=True)
class ValidationInputs:
    """Real, preprocessed inputs for all three graphs."""

    before: np.ndarray  # float32 [B, 3, S, S]
    after: np.ndarray  # float32 [B, 3, S, S]
    input_ids: np.ndarray  # int64 [B, L]: START, words, END, then PAD
    attention_mask: np.ndarray  # int64 [B, L]: 1 up to and including END
    source: str  # where the pairs came from (folder, file names)


@dataclass(frozen=True)
class OutputDiff:
    name: str  # graph output name
    max_abs_diff: float  # largest |ORT - PyTorch| over all runs of this output
    ref_max_abs: float  # largest |PyTorch| over the same runs


@dataclass(frozen=True)
class GraphDiff:
    graph: str  # graph name (contract)
    outputs: tuple[OutputDiff, ...]  # one per graph output, contract order

    @property
    def max_abs_diff(self) -> float:
        return max(o.max_abs_diff for o in self.outputs)

    @property
    def ref_max_abs(self) -> float:
        return max(o.ref_max_abs for o in self.outputs)


def _pick(records: Sequence[PairRecord], pairs: int) -> list[PairRecord]:
    """Changed pairs first (long captions, padding exercised), plus one unchanged if any."""
    changed = [r for r in records if r.changed]
    unchanged = [r for r in records if not r.changed]
    picked = changed[: pairs - 1] + unchanged[:1]
    rest = [r for r in records if r not in picked]
    return (picked + rest)[:pairs]


def load_validation_inputs(data_dir: Path, vocab: Vocabulary, spec: PreprocessSpec, max_len: int,
                           pairs: int = VALIDATION_PAIRS) -> ValidationInputs:
    """2..`pairs` image pairs of a LEVIR-CC layout folder with their first caption each."""
    dataset = LevirCC.open(data_dir)
    records = [r for r in dataset.records if r.captions]
    if len(records) < 2:
        raise DataError(f"{data_dir}: validation needs at least 2 pairs with captions, found {len(records)}")
    chosen = _pick(records, pairs)
    images = [read_pair(*r.image_paths(dataset.root)) for r in chosen]
    ids = [vocab.encode(list(r.captions[0]), max_len) for r in chosen]
    width = max(len(i) for i in ids)
    input_ids = np.full((len(ids), width), PAD, dtype=np.int64)  # [B, L]
    mask = np.zeros((len(ids), width), dtype=np.int64)  # [B, L]
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ValidationInputs(
        before=preprocess_batch([a for a, _ in images], spec),
        after=preprocess_batch([b for _, b in images], spec),
        input_ids=input_ids, attention_mask=mask,
        source=f"{dataset.root}: {', '.join(f'{r.split}/{r.filename}' for r in chosen)}")


def synthetic_validation_inputs(vocab: Vocabulary, spec: PreprocessSpec, max_len: int,
                                seed: int = 0) -> ValidationInputs:
    """Inputs from a few pairs written by the project's synthetic generator (a temp folder)."""
    try:
        from rsicrc.synth import synthesize
    except ImportError as e:
        raise ExportError(f"no validation data given and the synthetic generator is unavailable ({e}); "
                          "pass a LEVIR-CC layout folder as validation data") from None
    with tempfile.TemporaryDirectory(prefix="rsicrc-validation-") as tmp:
        root = synthesize(Path(tmp) / "data", pairs=SYNTH_PAIRS, seed=seed, progress=False)  # 256 px
        inputs = load_validation_inputs(Path(root), vocab, spec, max_len)
    return ValidationInputs(inputs.before, inputs.after, inputs.input_ids, inputs.attention_mask,
                            f"synthetic (seed {seed}, {SYNTH_PAIRS} pairs)")


def open_session(path: Path) -> Any:
    """An ONNX Runtime CPU session (the deployed default) for one graph file."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DependencyError("validation needs ONNX Runtime; "
                              "install with: pip install 'rsicrc[cpu]'") from None
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def session_io(session: Any) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    """(name, dtype, shape) of an ORT session's inputs and outputs, in check_io form."""
    def rows(items: Sequence[Any]) -> list[tuple[str, str, list[Any]]]:
        return [(v.name, ORT_DTYPES.get(v.type, v.type), list(v.shape)) for v in items]

    return rows(session.get_inputs()), rows(session.get_outputs())


def check_session(session: Any, spec: GraphSpec, where: str) -> None:
    """Names, then dtypes, then declared shapes of a loaded graph against the contract."""
    try:
        contract_check_io(spec, where, *session_io(session))
    except ContractError as e:
        raise ExportError(str(e)) from None


class _Tracker:
    """Running per-output maxima of |ORT - PyTorch| and |PyTorch| for one graph."""

    def __init__(self, spec: GraphSpec, tolerance: float) -> None:
        self.spec, self.tolerance = spec, tolerance
        self.diff = dict.fromkeys(spec.output_names(), 0.0)
        self.ref = dict.fromkeys(spec.output_names(), 0.0)

    def compare(self, got: Sequence[np.ndarray], want: Sequence[np.ndarray], batch: int, seq: int) -> None:
        graph = self.spec.name
        for t, g, w in zip(self.spec.outputs, got, want, strict=True):
            shape = tuple(batch if d == BATCH else seq if d == SEQ else d for d in t.shape)
            if tuple(g.shape) != shape or tuple(w.shape) != shape:
                raise ExportError(f"{graph}: output {t.name} has shape {list(g.shape)} in ONNX Runtime and "
                                  f"{list(w.shape)} in PyTorch; the contract says {list(shape)}")
        for name, g, w in zip(self.spec.output_names(), got, want, strict=True):
            ref = np.abs(w.astype(np.float64))
            if not np.isfinite(ref).all():
                raise ExportError(f"{graph}: PyTorch output {name} is not finite; the model is broken")
            ref_max = float(ref.max(initial=0.0))
            diff = float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max(initial=0.0))
            bound = self.tolerance * max(1.0, ref_max)
            if not diff <= bound:  # also catches NaN
                raise ExportError(f"{graph}: output {name} differs from PyTorch by {diff:.3g} "
                                  f"(allowed {bound:.3g} = {self.tolerance:g} x max(1, {ref_max:.3g}))")
            self.diff[name] = max(self.diff[name], diff)
            self.ref[name] = max(self.ref[name], ref_max)

    def result(self) -> GraphDiff:
        return GraphDiff(self.spec.name, tuple(OutputDiff(n, self.diff[n], self.ref[n])
                                                for n in self.spec.output_names()))


def _feeds(spec: GraphSpec, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(a) for name, a in zip(spec.input_names(), arrays, strict=True)}


class GraphValidator:
    """Checks each graph file as soon as it is written (so a bad export fails fast): ORT session
    against the contract, then ORT outputs against PyTorch on the real `inputs`."""

    def __init__(self, model: RSICRC, dims: Dims, graphs: dict[str, GraphSpec], inputs: ValidationInputs,
                 tolerance: float = DEFAULT_TOLERANCE, decode_steps: int = DECODE_STEPS) -> None:
        self.model, self.dims, self.graphs, self.inputs = model.eval(), dims, graphs, inputs
        self.tolerance, self.decode_steps = tolerance, decode_steps
        self.modules = graph_modules(model, dims)
        self.batch = inputs.before.shape[0]
        self._image_ref: list[np.ndarray] | None = None

    @torch.no_grad()
    def _reference(self, graph: str, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = self.modules[graph](*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        return to_numpy(out if isinstance(out, tuple) else (out,))

    def _image_inputs(self) -> list[np.ndarray]:
        return [self.inputs.before.astype(np.float32), self.inputs.after.astype(np.float32)]

    def image_reference(self) -> list[np.ndarray]:
        """PyTorch image-encoder outputs (computed once; their cross K/V feed the decoder check)."""
        if self._image_ref is None:
            self._image_ref = self._reference(IMAGE_ENCODER, self._image_inputs())
        return self._image_ref

    def validate(self, graph: str, file: Path) -> GraphDiff:
        """Names -> dtypes -> shapes -> values for one graph file; raises ExportError."""
        spec = self.graphs[graph]
        session = open_session(file)
        check_session(session, spec, file.name)
        tracker = _Tracker(spec, self.tolerance)

        def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
            return session.run(None, _feeds(spec, arrays))

        if graph == IMAGE_ENCODER:
            tracker.compare(run(self._image_inputs()), self.image_reference(), self.batch, 0)
        elif graph == TEXT_ENCODER:
            text_in = [self.inputs.input_ids.astype(np.int64), self.inputs.attention_mask.astype(np.int64)]
            tracker.compare(run(text_in), self._reference(graph, text_in), self.batch, text_in[0].shape[1])
        else:
            self._validate_steps(run, tracker)
        return tracker.result()

    def _validate_steps(self, run: Any, tracker: _Tracker) -> None:
        """A few PyTorch greedy steps from the real pairs; ORT gets the same (real) cache states."""
        d = self.dims
        cross = self.image_reference()[1:]
        shape = (self.batch, d.num_heads, d.max_len, d.head_dim)
        cache = [np.zeros(shape, dtype=np.float32) for _ in range(2 * d.cache_layers)]
        tokens = np.full((self.batch, 1), START, dtype=np.int64)
        steps = [*range(min(self.decode_steps, d.max_len - 1)), d.max_len - 1]  # and the last slot
        for step in steps:
            step_in = [tokens, np.array([step], dtype=np.int64), *cache, *cross]
            ref = self._reference(DECODER_STEP, step_in)
            tracker.compare(run(step_in), ref, self.batch, 0)
            tokens = ref[0].argmax(axis=1).astype(np.int64)[:, None]  # greedy, PyTorch's choice
            cache = ref[1:]

