"""PyTorch -> ONNX: one torch wrapper per graph of the contract, the export call, the file checks.

The wrappers take and return exactly the tensors the contract lists, in its order, so tensor
names and dynamic dimensions all come from `rsicrc.runtime.contract` (DESIGN §6).

Exporter: torch.export + onnxscript (`dynamo=True`). The legacy TorchScript tracer was measured
against it on the tiny config and rejected: it declares the static output dims as symbolic
(e.g. present_key_0 [batch, 'Add..dim_1', ...]), puts an `If` into the text encoder (squeeze of
a dynamic dim) and emits about 3x the nodes (Shape/Gather/Concat chains), for an equal or
slower ORT decoder step.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rsicrc.config import ModelConfig
from rsicrc.errors import ContractError, DependencyError, ExportError
from rsicrc.export.fuse import fuse_parallel_matmuls
from rsicrc.model import RSICRC
from rsicrc.runtime.contract import (
    BATCH,
    DECODER_STEP,
    IMAGE_ENCODER,
    SEQ,
    TEXT_ENCODER,
    Dims,
    GraphSpec,
    check_io,
)

EXPORTER = "torch.onnx.export(dynamo=True)"  # recorded in the manifest and the report
OPSETS: tuple[int, ...] = (18, 19, 20)
DEFAULT_OPSET = 18
EXAMPLE_BATCH, EXAMPLE_SEQ = 2, 3  # >= 2 so the exporters cannot specialise a dynamic dim to 0/1

# ONNX elem_type -> contract dtype name (onnx.TensorProto: FLOAT 1, INT64 7, FLOAT16 10).
ONNX_DTYPES = {1: "float32", 7: "int64", 10: "float16"}

# Ops through which a value stays "elementwise in step": each output element depends only on
# the same element of the inputs (with broadcasting). `step` may flow only through these;
# whatever consumes the result must take it as data, never as a shape, index or slice bound.
ELEMENTWISE_OPS = frozenset({
    "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
    "Cast", "CastLike", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Where", "Identity",
})
# Non-elementwise ops that may take a step-derived tensor, and the input slots it may fill.
DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "MatMul": (0, 1), "Gemm": (0, 1), "Reshape": (0,), "Unsqueeze": (0,), "Squeeze": (0,),
    "Transpose": (0,), "Expand": (0,), "Softmax": (0,),
}


def dims_for(cfg: ModelConfig, vocab_size: int) -> Dims:
    """The contract dimensions of a model config and vocabulary size."""
    return Dims(image_size=cfg.image_size, d_model=cfg.d_model, num_heads=cfg.num_heads,
                max_len=cfg.max_len, visual_tokens=cfg.num_visual_tokens, vocab_size=vocab_size,
                layers=cfg.decoder_layers)


class ImageEncoderGraph(nn.Module):
    """(before, after) -> visual_embedding, then cross K, V of each multimodal layer."""

    def __init__(self, model: RSICRC) -> None:
        super().__init__()
        self.model = model

    def forward(self, before: Tensor, after: Tensor) -> tuple[Tensor, ...]:
        _, visual, cross_kv = self.model.encode_images(before, after)  # [B, C], [B, H, N, dh] x 2L
        return (visual, *[t for kv in cross_kv for t in kv])


class TextEncoderGraph(nn.Module):
    """(input_ids, attention_mask) -> text_embedding at the END token (mask sum - 1)."""

    def __init__(self, model: RSICRC) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model.encode_text(input_ids, attention_mask.sum(1))  # [B, C]


class DecoderStepGraph(nn.Module):
    """(input_ids [B,1], step [1], past K/V per layer, cross K/V) -> logits, present K/V,
    cross_attention [B, N] (last multimodal layer, mean over heads).

    `step` is passed on as a 1-element tensor: the model compares it with arange(max_len) by
    broadcasting, so it never needs a Reshape or Gather of its own.
    """

    def __init__(self, model: RSICRC, dims: Dims) -> None:
        super().__init__()
        self.model = model
        self.cache_layers, self.cross_layers = dims.cache_layers, dims.layers

    def forward(self, input_ids: Tensor, step: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        n = self.cache_layers
        cache = [(tensors[2 * i], tensors[2 * i + 1]) for i in range(n)]
        cross = [(tensors[2 * n + 2 * i], tensors[2 * n + 2 * i + 1]) for i in range(self.cross_layers)]
        logits, present, attention = self.model.decode_step(input_ids[:, 0], step, cache, cross)  # [B, V]
        return (logits, *[t for kv in present for t in kv], attention)  # attention [B, N]


def graph_modules(model: RSICRC, dims: Dims) -> dict[str, nn.Module]:
    """The three export wrappers, in eval mode."""
    return {IMAGE_ENCODER: ImageEncoderGraph(model).eval(), TEXT_ENCODER: TextEncoderGraph(model).eval(),
            DECODER_STEP: DecoderStepGraph(model, dims).eval()}


def example_inputs(spec: GraphSpec, batch: int = EXAMPLE_BATCH, seq: int = EXAMPLE_SEQ,
                   seed: int = 0) -> tuple[Tensor, ...]:
    """Tracing inputs in contract order: random floats; every int64 input is 1 (START token,
    a full attention mask, step 1), which is valid for each of them."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in spec.inputs:
        shape = tuple(batch if d == BATCH else seq if d == SEQ else int(d) for d in t.shape)
        out.append(torch.ones(shape, dtype=torch.int64) if t.dtype == "int64"
                   else torch.randn(shape, generator=gen))
    return tuple(out)


def _dynamic_shapes(spec: GraphSpec, dims: Dims) -> tuple[Any, ...]:
    """torch.export dynamic shapes mirroring the contract's symbolic dims (varargs grouped)."""
    from torch.export import Dim

    named = {BATCH: Dim(BATCH, min=1, max=4096), SEQ: Dim(SEQ, min=1, max=dims.max_len)}
    per_input = [{i: named[d] for i, d in enumerate(t.shape) if isinstance(d, str)} or None
                 for t in spec.inputs]
    if spec.name == DECODER_STEP:  # forward(input_ids, step, *tensors)
        return (per_input[0], per_input[1], tuple(per_input[2:]))
    return tuple(per_input)


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported; choose one of: {', '.join(map(str, OPSETS))}")


_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo")


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings and its libraries' INFO/WARNING chatter (initializer
    deduplication, constant folding) for one call; the CLI logs at INFO."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_graph(module: nn.Module, spec: GraphSpec, dims: Dims, path: Path, opset: int) -> None:
    """Write one graph to `path` (single file, weights inside), its parallel projections fused
    (`rsicrc.export.fuse`). Raises ExportError."""
    check_opset(opset)
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it; fail early and clearly
    except ImportError:
        raise DependencyError("ONNX export needs onnx and onnxscript; "
                              "install with: pip install 'rsicrc[train]'") from None
    args = example_inputs(spec)
    module.eval()
    try:
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(module, args, str(path), input_names=spec.input_names(),
                              output_names=spec.output_names(), opset_version=opset, dynamo=True,
                              external_data=False, dynamic_shapes=_dynamic_shapes(spec, dims),
                              optimize=True, verbose=False)
    except Exception as e:  # noqa: BLE001 - torch.export raises many types; report one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{spec.name}: ONNX export failed: {first}") from e
    import onnx

    proto = onnx.load(str(path))
    if fuse_parallel_matmuls(proto):  # q/k/v (and cross K/V) as one product each
        onnx.save(proto, str(path))


def _shape(value_info: Any) -> list[int | str | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def onnx_io(proto: Any) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    """(name, dtype, shape) of a ModelProto's graph inputs and outputs (initializers excluded)."""
    inits = {i.name for i in proto.graph.initializer}

    def rows(items: Sequence[Any]) -> list[tuple[str, str, list[Any]]]:
        return [(v.name, ONNX_DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
                 _shape(v)) for v in items if v.name not in inits]

    return rows(proto.graph.input), rows(proto.graph.output)


def step_frontier(proto: Any, source: str) -> list[tuple[str, int]]:
    """(op type, input slot) of every non-elementwise use of `source` and of the values
    derived from it through ELEMENTWISE_OPS only."""
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in proto.graph.node:
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, slot))
    seen, todo, frontier = {source}, [source], []
    while todo:
        for node, slot in consumers.get(todo.pop(), []):
            if node.op_type in ELEMENTWISE_OPS:
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        todo.append(out)
            else:
                frontier.append((node.op_type, slot))
    return frontier


def check_step_is_elementwise(proto: Any, spec: GraphSpec, where: str) -> None:
    """`step` (the decoder's second input) must only reach elementwise ops before it is used
    as data: never as a Slice bound, Reshape shape, Gather index, ... (DESIGN §6)."""
    step = spec.input_names()[1]
    bad = [(op, slot) for op, slot in step_frontier(proto, step) if slot not in DATA_INPUTS.get(op, ())]
    if bad:
        raise ExportError(f"{where}: {step} reaches non-elementwise op(s) "
                          f"{', '.join(f'{op}[input {slot}]' for op, slot in bad)}")


def check_graph_file(path: Path, spec: GraphSpec, opset: int) -> None:
    """onnx.checker, the opset, the contract (names, dtypes, shapes with dynamic dims still
    symbolic) and, for the decoder step, the `step` rule. Raises ExportError naming the file."""
    import onnx

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=False)
    except (onnx.checker.ValidationError, OSError) as e:
        raise ExportError(f"{path.name}: onnx.checker failed: {str(e).splitlines()[0]}") from None
    found = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if found != [opset]:
        raise ExportError(f"{path.name}: has ONNX opset {found}, {opset} was requested")
    inputs, outputs = onnx_io(proto)
    try:
        check_io(spec, path.name, inputs, outputs)
    except ContractError as e:
        raise ExportError(str(e)) from None
    if spec.name == DECODER_STEP:
        check_step_is_elementwise(proto, spec, path.name)


def to_numpy(tensors: Sequence[Tensor]) -> list[np.ndarray]:
    return [t.detach().cpu().numpy() for t in tensors]


def drop_output(proto: Any, name: str) -> int:
    """Remove the graph output `name` and then every node and initializer nothing uses any more, in
    place; returns the number of nodes removed. Gives the graph an older contract declared
    (format 1 had no `cross_attention`): for compatibility tests and the with/without cost check."""
    graph = proto.graph
    kept = [o for o in graph.output if o.name != name]
    if len(kept) == len(graph.output):
        raise ExportError(f"the graph has no output {name!r}")
    del graph.output[:]
    graph.output.extend(kept)
    removed = 0
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    produced = {o for n in graph.node for o in n.output}
    for info in [v for v in graph.value_info if v.name not in produced]:
        graph.value_info.remove(info)
    return removed
