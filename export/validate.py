"""Export refuses a bad model: every graph runs in ONNX Runtime (CPU) against PyTorch on real inputs.

Real inputs: image pairs and captions of a LEVIR-CC layout folder, preprocessed exactly as the
runtime does; the decoder step is checked on the cache states of a few PyTorch greedy steps and
at the last cache slot. Per graph, in this order: names and dtypes (the contract), then shapes,
then values (`rsicrc.runtime.compare.compare_graphs`, the comparison `rsicrc check` and the int8
check use too); a graph fails when max|ORT - PyTorch| > tolerance * max(1, max|PyTorch|) for any
output.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsicrc.errors import ContractError, DataError, DependencyError, ExportError
from rsicrc.export.onnx_export import graph_modules, to_numpy
from rsicrc.levircc import LevirCC, PairRecord
from rsicrc.model import RSICRC
from rsicrc.runtime.backend import import_onnxruntime, io_signature, session_options
from rsicrc.runtime.compare import Comparison, GraphInputs, compare_graphs, graph_inputs
from rsicrc.runtime.contract import Dims, GraphSpec
from rsicrc.runtime.contract import check_io as contract_check_io
from rsicrc.runtime.images import read_pair
from rsicrc.runtime.preprocess import PreprocessSpec
from rsicrc.vocab import Vocabulary

DEFAULT_TOLERANCE = 1e-4  # relative to max(1, largest |reference value|)
VALIDATION_PAIRS = 3  # batch of the validation run (2 or 3 pairs)
DECODE_STEPS = 4  # greedy steps (real cache states) fed to the decoder step, then one at the last slot
SYNTH_PAIRS = 4  # pairs synthesized when no validation data is given


def _pick(records: Sequence[PairRecord], pairs: int) -> list[PairRecord]:
    """Changed pairs first (long captions, padding exercised), plus one unchanged if any."""
    changed = [r for r in records if r.changed]
    unchanged = [r for r in records if not r.changed]
    picked = changed[: pairs - 1] + unchanged[:1]
    rest = [r for r in records if r not in picked]
    return (picked + rest)[:pairs]


def load_validation_inputs(data_dir: Path, vocab: Vocabulary, spec: PreprocessSpec, max_len: int,
                           pairs: int = VALIDATION_PAIRS) -> GraphInputs:
    """2..`pairs` image pairs of a LEVIR-CC layout folder with their first caption each."""
    dataset = LevirCC.open(data_dir)
    records = [r for r in dataset.records if r.captions]
    if len(records) < 2:
        raise DataError(f"{data_dir}: validation needs at least 2 pairs with captions, found {len(records)}")
    chosen = _pick(records, pairs)
    images = [read_pair(*r.image_paths(dataset.root)) for r in chosen]
    source = f"{dataset.root}: {', '.join(f'{r.split}/{r.filename}' for r in chosen)}"
    return graph_inputs(images, [r.captions[0] for r in chosen], vocab, spec, max_len, source)


def synthetic_validation_inputs(vocab: Vocabulary, spec: PreprocessSpec, max_len: int,
                                seed: int = 0) -> GraphInputs:
    """Inputs from a few pairs written by the project's synthetic generator (a temp folder)."""
    try:
        from rsicrc.synth import synthesize
    except ImportError as e:
        raise ExportError(f"no validation data given and the synthetic generator is unavailable ({e}); "
                          "pass a LEVIR-CC layout folder as validation data") from None
    with tempfile.TemporaryDirectory(prefix="rsicrc-validation-") as tmp:
        root = synthesize(Path(tmp) / "data", pairs=SYNTH_PAIRS, seed=seed, progress=False)  # 256 px
        inputs = load_validation_inputs(Path(root), vocab, spec, max_len)
    return GraphInputs(inputs.before, inputs.after, inputs.input_ids, inputs.attention_mask,
                       f"synthetic (seed {seed}, {SYNTH_PAIRS} pairs)")


def open_session(path: Path) -> Any:
    """An ONNX Runtime CPU session (the deployed default options) for one graph file."""
    try:
        ort = import_onnxruntime()
    except DependencyError:
        raise DependencyError("validation needs ONNX Runtime; install with: pip install 'rsicrc[cpu]'"
                              ) from None
    return ort.InferenceSession(str(path), sess_options=session_options(ort, None),
                                providers=["CPUExecutionProvider"])


def session_io(session: Any) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    """(name, dtype, shape) of an ORT session's inputs and outputs, in check_io form."""
    return io_signature(session.get_inputs()), io_signature(session.get_outputs())


def check_session(session: Any, spec: GraphSpec, where: str) -> None:
    """Names, then dtypes, then declared shapes of a loaded graph against the contract."""
    try:
        contract_check_io(spec, where, *session_io(session))
    except ContractError as e:
        raise ExportError(str(e)) from None


def session_runner(session: Any) -> Any:
    """A compare_graphs runner over one graph's session."""
    names = [o.name for o in session.get_outputs()]
    return lambda graph, feed: dict(zip(names, session.run(names, dict(feed)), strict=True))


class TorchGraphs:
    """The PyTorch graph modules as a compare_graphs runner: inputs and outputs by contract name.
    The last run of each graph is kept, so the image encoder's reference (whose cross K/V feed the
    decoder check) is computed once for all graphs."""

    def __init__(self, model: RSICRC, dims: Dims, contract: Mapping[str, GraphSpec]) -> None:
        self.modules, self.contract = graph_modules(model, dims), contract
        self._last: dict[str, tuple[tuple[int, ...], dict[str, np.ndarray]]] = {}

    @torch.no_grad()
    def __call__(self, graph: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.contract[graph]
        key = tuple(id(feed[n]) for n in spec.input_names())
        if graph in self._last and self._last[graph][0] == key:
            return self._last[graph][1]
        tensors = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in spec.input_names()]
        out = self.modules[graph](*tensors)
        arrays = to_numpy(out if isinstance(out, tuple) else (out,))
        result = dict(zip(spec.output_names(), arrays, strict=True))
        self._last[graph] = (key, result)
        return result


class GraphValidator:
    """Checks each graph file as soon as it is written (so a bad export fails fast): ORT session
    against the contract, then ORT outputs against PyTorch on the real `inputs`."""

    def __init__(self, model: RSICRC, dims: Dims, graphs: dict[str, GraphSpec], inputs: GraphInputs,
                 tolerance: float = DEFAULT_TOLERANCE, decode_steps: int = DECODE_STEPS) -> None:
        self.dims, self.graphs, self.inputs, self.tolerance = dims, graphs, inputs, tolerance
        self.reference = TorchGraphs(model.eval(), dims, graphs)
        self.steps = [*range(min(decode_steps, dims.max_len - 1)), dims.max_len - 1]  # and the last slot

    def validate(self, graph: str, file: Path) -> Comparison:
        """Names -> dtypes -> shapes -> values for one graph file; raises ExportError."""
        session = open_session(file)
        check_session(session, self.graphs[graph], file.name)
        try:
            comparison = compare_graphs(self.reference, session_runner(session), self.graphs, self.dims,
                                        self.inputs, graphs=(graph,), steps=self.steps,
                                        labels=("PyTorch", "ONNX Runtime"))
        except ContractError as e:
            raise ExportError(str(e)) from None
        check_within(comparison, self.tolerance)
        return comparison


def check_within(comparison: Comparison, tolerance: float) -> None:
    """ExportError naming the first output whose PyTorch reference is not finite, or that differs by
    more than tolerance * max(1, max|PyTorch|) (NaN differences included)."""
    for o in comparison.outputs:
        if not o.reference_finite:
            raise ExportError(f"{o.graph}: PyTorch output {o.output} is not finite; the model is broken")
        if not o.within(tolerance):
            bound = tolerance * max(1.0, o.ref_max_abs)
            raise ExportError(f"{o.graph}: output {o.output} differs from PyTorch by {o.max_abs_diff:.3g} "
                              f"(allowed {bound:.3g} = {tolerance:g} x max(1, {o.ref_max_abs:.3g}))")
