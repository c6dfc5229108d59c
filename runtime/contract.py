"""The graph contract: every exported graph's inputs and outputs, declared once, as data.

Export uses it for dummy inputs, dynamic axes and validation; it is written into the
manifest; the runtime checks loaded graphs against it. No tensor name is typed anywhere
else. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rsicrc.errors import ContractError

IMAGE_ENCODER, TEXT_ENCODER, DECODER_STEP = "image_encoder", "text_encoder", "decoder_step"
GRAPHS: tuple[str, ...] = (IMAGE_ENCODER, TEXT_ENCODER, DECODER_STEP)
BATCH, SEQ = "batch", "seq"  # the only dynamic dimensions
# Tensor names with a fixed spelling; the per-layer cache names come from the *_names functions.
BEFORE, AFTER, VISUAL_EMBEDDING = "before", "after", "visual_embedding"
INPUT_IDS, ATTENTION_MASK, TEXT_EMBEDDING = "input_ids", "attention_mask", "text_embedding"
STEP, LOGITS = "step", "logits"
CROSS_ATTENTION = "cross_attention"  # decoder step: last multimodal layer, mean over heads (format 2 on)
DTYPES = {"float32": np.float32, "int64": np.int64, "float16": np.float16}


@dataclass(frozen=True)
class TensorSpec:
    name: str  # graph input/output name
    dtype: str  # "float32" | "int64" (| "float16" for fp16 engines)
    shape: tuple[int | str, ...]  # ints are fixed; strings name a dynamic dimension


@dataclass(frozen=True)
class GraphSpec:
    name: str  # one of GRAPHS
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor: {axis: dim name}} for every symbolic dimension (torch.onnx.export form)."""
        return {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
                for t in (*self.inputs, *self.outputs)
                if any(isinstance(d, str) for d in t.shape)}


@dataclass(frozen=True)
class Dims:
    """The model sizes the contract depends on (from the model config and vocabulary)."""

    image_size: int  # input side
    d_model: int  # C
    num_heads: int  # H
    max_len: int  # S, self-attention cache slots
    visual_tokens: int  # N = (image_size / 32) ** 2
    vocab_size: int  # V
    layers: int  # decoder_layers: unimodal and multimodal stacks each have this many

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def cache_layers(self) -> int:
        """Self-attention caches: unimodal layers then multimodal layers."""
        return 2 * self.layers

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Dims:
        try:
            return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__})
        except (KeyError, TypeError, ValueError) as e:
            raise ContractError(f"manifest graph dims are malformed ({e})") from None


def cross_names(dims: Dims) -> list[tuple[str, str]]:
    return [(f"cross_key_{i}", f"cross_value_{i}") for i in range(dims.layers)]


def past_names(dims: Dims) -> list[tuple[str, str]]:
    return [(f"past_key_{i}", f"past_value_{i}") for i in range(dims.cache_layers)]


def present_names(dims: Dims) -> list[tuple[str, str]]:
    return [(f"present_key_{i}", f"present_value_{i}") for i in range(dims.cache_layers)]


def contract(dims: Dims, attention: bool = True) -> dict[str, GraphSpec]:
    """The three graphs of DESIGN §6. `attention`: the decoder step also outputs
    `cross_attention` f32 [B, N] (model folders of format 2 on; False gives format 1's contract)."""
    s, c, h, dh = dims.image_size, dims.d_model, dims.num_heads, dims.head_dim
    image = (BATCH, 3, s, s)
    cross = (BATCH, h, dims.visual_tokens, dh)
    cache = (BATCH, h, dims.max_len, dh)
    attention_out = [TensorSpec(CROSS_ATTENTION, "float32", (BATCH, dims.visual_tokens))] if attention else []

    def pairs(names: list[tuple[str, str]], shape: tuple[int | str, ...]) -> list[TensorSpec]:
        return [TensorSpec(n, "float32", shape) for kv in names for n in kv]

    return {
        IMAGE_ENCODER: GraphSpec(
            IMAGE_ENCODER,
            inputs=(TensorSpec(BEFORE, "float32", image), TensorSpec(AFTER, "float32", image)),
            outputs=(TensorSpec(VISUAL_EMBEDDING, "float32", (BATCH, c)), *pairs(cross_names(dims), cross)),
        ),
        TEXT_ENCODER: GraphSpec(
            TEXT_ENCODER,
            inputs=(TensorSpec(INPUT_IDS, "int64", (BATCH, SEQ)),
                    TensorSpec(ATTENTION_MASK, "int64", (BATCH, SEQ))),
            outputs=(TensorSpec(TEXT_EMBEDDING, "float32", (BATCH, c)),),
        ),
        DECODER_STEP: GraphSpec(
            DECODER_STEP,
            inputs=(TensorSpec(INPUT_IDS, "int64", (BATCH, 1)), TensorSpec(STEP, "int64", (1,)),
                    *pairs(past_names(dims), cache), *pairs(cross_names(dims), cross)),
            outputs=(TensorSpec(LOGITS, "float32", (BATCH, dims.vocab_size)),
                     *pairs(present_names(dims), cache),
                     *attention_out),
        ),
    }


def contract_to_dict(graphs: Mapping[str, GraphSpec]) -> dict[str, Any]:
    return {name: asdict(g) for name, g in graphs.items()}


def contract_from_dict(d: Mapping[str, Any]) -> dict[str, GraphSpec]:
    """Strictly parse the manifest form back (unknown or missing fields fail)."""
    try:
        def tensors(items: Sequence[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)

        return {name: GraphSpec(g["name"], tensors(g["inputs"]), tensors(g["outputs"]))
                for name, g in d.items()}
    except (KeyError, TypeError) as e:
        raise ContractError(f"manifest graph contract is malformed ({e})") from None


def dummy_inputs(spec: GraphSpec, batch: int, seq: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs that satisfy the spec (shapes only; meaningful values are the caller's job)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = tuple(batch if d == BATCH else seq if d == SEQ else int(d) for d in t.shape)
        if t.dtype == "int64":
            out[t.name] = rng.integers(0, 4, size=shape, dtype=np.int64)
        else:
            out[t.name] = rng.standard_normal(shape).astype(DTYPES[t.dtype])
    return out


def _shape_matches(declared: Sequence[int | str], actual: Sequence[Any]) -> bool:
    """A graph's shape (ints, or str/None for symbolic dims) against the declared one."""
    if len(declared) != len(actual):
        return False
    for d, a in zip(declared, actual, strict=True):
        if isinstance(d, int) and not (isinstance(a, int) and a == d):
            return False
        if isinstance(d, str) and isinstance(a, int):
            return False  # a dynamic dimension was frozen at export
    return True


def check_io(spec: GraphSpec, where: str, inputs: Sequence[tuple[str, str, Sequence[Any]]],
             outputs: Sequence[tuple[str, str, Sequence[Any]]]) -> None:
    """Compare a loaded graph's (name, dtype, shape) lists with the contract: names, then
    dtypes, then shapes. Raises ContractError naming `where` (the file) and the tensor."""
    for kind, declared, actual in (("inputs", spec.inputs, inputs), ("outputs", spec.outputs, outputs)):
        names = [a[0] for a in actual]
        if names != [t.name for t in declared]:
            raise ContractError(f"{where}: {kind} are {names}, the contract says "
                                f"{[t.name for t in declared]}")
        for t, (name, dtype, shape) in zip(declared, actual, strict=True):
            if dtype != t.dtype:
                raise ContractError(f"{where}: {name} is {dtype}, the contract says {t.dtype}")
            if not _shape_matches(t.shape, list(shape)):
                raise ContractError(f"{where}: {name} has shape {list(shape)}, the contract says "
                                    f"{list(t.shape)}")
