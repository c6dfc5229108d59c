"""fp32 ONNX -> mixed-precision fp16 ONNX for strongly typed TensorRT (DESIGN §8), with onnx only.

What stays fp32 (`fp32_nodes`):
- LayerNormalization, Softmax, LogSoftmax, and the statistics of a LayerNorm that older
  exporters decompose (ReduceMean, Pow, Sqrt);
- squared-norm reductions (ReduceL2, ReduceSumSquare, LpNormalization): a sum of squares
  overflows fp16's 65504 long before a 2048-wide embedding is large;
- the logits path: the MatMul/Gemm that produces the graph output `logits`, the layout ops
  (bias Add, Reshape, ...) after it and the pure data-movement ops (Gather, Reshape, ...) feeding it;
- every op whose ONNX schema does not allow float16 for one of its float tensors (Range, the
  scales of Resize, ...), and ops whose float output type is an attribute (Random*, EyeLike,
  ConstantOfShape).
Everything else computes in fp16. Graph inputs and outputs keep the contract's float32: inputs
are cast once where an fp16 node first needs them, fp16-produced outputs get a final Cast. Float
constants used in fp16 get an fp16 copy, clipped to +-65504 so that "lowest float32" masks stay
finite. Casts between the two regions are inserted once per tensor and shared.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from rsicrc.errors import DependencyError, ExportError
from rsicrc.runtime.contract import LOGITS

FP32_OPS = frozenset({
    "LayerNormalization", "Softmax", "LogSoftmax",
    "ReduceMean", "Pow", "Sqrt",  # LayerNorm decomposed by older exporters: its statistics
    "ReduceL2", "ReduceSumSquare", "LpNormalization",  # squares overflow fp16
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
    "ConstantOfShape",  # output type set by an attribute
})
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})  # subgraphs read outer tensors: not converted
LOGITS_TAIL_OPS = frozenset({"Add", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity",
                             "Cast"})  # may sit between the logits MatMul and the output
MOVEMENT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Gather",
                          "Slice", "Expand"})  # move values without arithmetic
FP16_MAX = float(np.finfo(np.float16).max)


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise DependencyError("the fp16 conversion needs the onnx package: pip install onnx") from None
    return onnx


def _types(model: Any) -> dict[str, int]:
    """Element type of every tensor name (inputs, outputs, initializers, inferred intermediates)."""
    onnx = _onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several private error types
        raise ExportError(f"ONNX shape inference failed before the fp16 conversion ({e})") from None
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({i.name: i.data_type for i in g.initializer})
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def _schema_allows_fp16(node: Any, opset: int, types: dict[str, int]) -> bool:
    """False when some float32 input/output of `node` may not be float16 by the op's schema."""
    onnx = _onnx()
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except Exception:  # noqa: BLE001 - SchemaError: unknown op; leave it in fp32
        return False
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def ok(formals: Any, actuals: Any) -> bool:
        for i, name in enumerate(actuals):
            if not name or types.get(name) != onnx.TensorProto.FLOAT:
                continue
            formal = formals[min(i, len(formals) - 1)] if formals else None
            if formal is None or "tensor(float16)" not in allowed.get(formal.type_str, {formal.type_str}):
                return False
        return True

    return ok(schema.inputs, node.input) and ok(schema.outputs, node.output)


def _logits_path(graph: Any) -> set[int]:
    """Indices of the nodes from the logits MatMul/Gemm to the `logits` output, plus the pure
    data-movement nodes feeding that MatMul (e.g. the Gather of the last position after the
    final LayerNorm), so that no fp16 round trip sits between them."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    constants = {i.name for i in graph.initializer}
    path: set[int] = set()
    name = LOGITS if any(o.name == LOGITS for o in graph.output) else None
    matmul = None
    while name is not None and name in producer:
        index = producer[name]
        node = graph.node[index]
        path.add(index)
        if node.op_type in ("MatMul", "Gemm"):
            matmul = node
            break
        if node.op_type not in LOGITS_TAIL_OPS:
            break
        name = next((i for i in node.input if i and i not in constants and i in producer), None)
    stack = [i for i in matmul.input if i in producer] if matmul is not None else []
    while stack:
        index = producer[stack.pop()]
        node = graph.node[index]
        if node.op_type in MOVEMENT_OPS and index not in path:
            path.add(index)
            stack.extend(i for i in node.input if i in producer)
    return path


def fp32_nodes(model: Any, types: dict[str, int] | None = None) -> set[int]:
    """Indices of the nodes that stay fp32 (see the module docstring)."""
    types = _types(model) if types is None else types
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    keep = {i for i, n in enumerate(model.graph.node)
            if n.op_type in FP32_OPS or (n.op_type not in ("Cast", "Constant")
                                         and not _schema_allows_fp16(n, opset, types))}
    return keep | _logits_path(model.graph)


def fp32_tensor_names(model: Any) -> set[str]:
    """Output tensor names of the fp32-kept nodes (TensorRT 10 pins the layers producing them)."""
    return {o for i in fp32_nodes(model) for o in model.graph.node[i].output}


def convert_to_fp16(model: Any) -> Any:
    """A new ModelProto computing in fp16 except `fp32_nodes`; graph I/O types unchanged."""
    onnx = _onnx()
    helper, numpy_helper, tp = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    flow = sorted({n.op_type for n in model.graph.node} & CONTROL_FLOW)
    if flow:
        raise ExportError(f"the fp16 conversion does not handle control flow ({', '.join(flow)}); the graph "
                          "contract rules it out, so re-export the model")
    src = onnx.ModelProto()
    src.CopyFrom(model)
    del src.graph.value_info[:]  # intermediate types change; inferred again at the end
    types = _types(src)
    keep = fp32_nodes(src, types)
    g = src.graph
    float_consts = {i.name: numpy_helper.to_array(i) for i in g.initializer if i.data_type == tp.FLOAT}
    for n in g.node:
        if n.op_type == "Constant" and types.get(n.output[0]) == tp.FLOAT:
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                float_consts[n.output[0]] = numpy_helper.to_array(value)

    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in g.output}

    def is_half(i: int) -> bool:
        """Does node i compute in fp16 (so its float inputs must be fp16)?"""
        n = g.node[i]
        if i in keep or n.op_type == "Constant":
            return False
        if n.op_type == "Cast":  # a Cast to float feeding only fp16 nodes casts to fp16 instead
            users = consumers.get(n.output[0], [])
            return n.output[0] not in graph_outputs and all(is_half(c) for c in users)
        return True

    half = {i for i in range(len(g.node)) if is_half(i)}
    current = {name: t for name, t in types.items() if t == tp.FLOAT}  # float tensors: their type now
    nodes, inits, cache = [], [], {}

    def as_type(name: str, to: int) -> str:
        """A name holding `name` converted to `to`: the tensor itself, a clipped constant copy or a
        shared Cast."""
        if current.get(name, to) == to:
            return name
        if (name, to) not in cache:
            new = f"{name}__{'fp16' if to == tp.FLOAT16 else 'fp32'}"
            if name in float_consts and to == tp.FLOAT16:
                array = np.clip(float_consts[name], -FP16_MAX, FP16_MAX).astype(np.float16)
                inits.append(numpy_helper.from_array(array, new))
            else:
                nodes.append(helper.make_node("Cast", [name], [new], to=to, name=f"{new}__cast"))
            cache[(name, to)] = new
            current[new] = to
        return cache[(name, to)]

    for i, node in enumerate(g.node):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        if node.op_type == "Cast":  # takes any input type; only its target may change
            for a in n.attribute:
                if i in half and a.name == "to" and a.i == tp.FLOAT:
                    a.i = tp.FLOAT16
                    current[n.output[0]] = tp.FLOAT16
        elif node.op_type != "Constant":
            to = tp.FLOAT16 if i in half else tp.FLOAT
            for j, name in enumerate(node.input):
                if name and name in current:
                    n.input[j] = as_type(name, to)
            for j, name in enumerate(node.output):
                if i in half and types.get(name) == tp.FLOAT:
                    if name in graph_outputs:  # produce fp16 under another name, cast back below
                        n.output[j] = f"{name}__fp16"
                        current[n.output[j]] = tp.FLOAT16
                        cache[(name, tp.FLOAT16)] = n.output[j]
                    else:
                        current[name] = tp.FLOAT16
        nodes.append(n)
        for j, name in enumerate(node.output):
            if name in graph_outputs and n.output[j] != name:
                nodes.append(helper.make_node("Cast", [n.output[j]], [name], to=tp.FLOAT,
                                              name=f"{name}__output_cast"))
                current[name] = tp.FLOAT

    used = {name for n in nodes for name in n.input}
    g.ClearField("node")
    g.node.extend(n for n in nodes if not (n.op_type == "Constant" and n.output[0] not in used
                                           and n.output[0] not in graph_outputs))
    kept_inits = [i for i in g.initializer if i.name in used or i.name in graph_outputs]
    g.ClearField("initializer")
    g.initializer.extend([*kept_inits, *inits])
    try:
        onnx.checker.check_model(src, full_check=True)
    except Exception as e:  # noqa: BLE001 - checker and inference raise their own types
        raise ExportError(f"the fp16 graph does not check ({' '.join(str(e).split())[:300]})") from None
    return src


def precision_counts(model: Any) -> dict[str, Counter[str]]:
    """{op_type: Counter({"float32": n, "float16": m})}: the type each node computes in, taken from
    its first float input (Cast: its output). For tests and reports."""
    onnx = _onnx()
    tp = onnx.TensorProto
    types = _types(model)
    names = {tp.FLOAT: "float32", tp.FLOAT16: "float16"}
    out: dict[str, Counter[str]] = {}
    for n in model.graph.node:
        tensors = n.output if n.op_type in ("Cast", "Constant") else n.input
        kind = next((names[types[t]] for t in tensors if types.get(t) in names), None)
        if kind is not None:
            out.setdefault(n.op_type, Counter())[kind] += 1
    return out
