"""Graph rewrite: parallel projections of one input become one wider matrix product.

The exporter emits attention's query, key and value projections as separate MatMuls of the
same activation (three [C, C] weights). Decoding is memory-bound, and ONNX Runtime's CPU
kernels stream one [C, 3C] weight faster than three [C, C] ones (fewer, longer passes over
memory, one thread-pool dispatch instead of three); the int8 graphs then quantize the
activation once instead of three times. `fuse_parallel_matmuls` concatenates such weights
(and their bias Adds where every member has one) and splits the product back into the
original tensors, so everything downstream is unchanged and the arithmetic of each output
element is the same dot product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class _Member:
    matmul: Any  # the MatMul NodeProto
    weight: np.ndarray  # [K, N_i]
    bias_add: Any | None  # the Add NodeProto that adds a [N_i] initializer, if any
    bias: np.ndarray | None  # [N_i]


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _bias_of(node: Any, consumers: dict[str, list[Any]], arrays: dict[str, np.ndarray],
             width: int, graph_outputs: set[str]) -> tuple[Any, np.ndarray] | tuple[None, None]:
    """The Add that adds a [width] initializer to this MatMul's output (its only consumer)."""
    out = node.output[0]
    users = consumers.get(out, [])
    if out in graph_outputs or len(users) != 1 or users[0].op_type != "Add":
        return None, None
    add = users[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    bias = arrays.get(other)
    if bias is None or bias.shape != (width,) or bias.dtype != np.float32:
        return None, None
    return add, bias


def fuse_parallel_matmuls(proto: Any) -> int:
    """Rewrite `proto` (an onnx ModelProto) in place; returns how many groups were fused."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    if any(a.type in (a.GRAPH, a.GRAPHS) for node in graph.node for a in node.attribute):
        return 0  # control flow: its subgraphs may use the weights; our graphs have none
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    groups: dict[tuple[str, int], list[Any]] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        weight = arrays.get(node.input[1])
        if weight is None or weight.ndim != 2 or weight.dtype != np.float32:
            continue
        groups.setdefault((node.input[0], weight.shape[0]), []).append(node)

    fused = 0
    replaced: dict[int, list[Any]] = {}  # id(first member) -> the nodes standing in for the group
    removed: set[int] = set()
    new_inits = []
    for (source, _), nodes in groups.items():
        if len(nodes) < 2:
            continue
        members = []
        for node in nodes:
            w = arrays[node.input[1]]
            add, bias = _bias_of(node, consumers, arrays, w.shape[1], graph_outputs)
            members.append(_Member(node, w, add, bias))
        with_bias = all(m.bias is not None for m in members)
        tag = f"fused_{fused}_{nodes[0].name or nodes[0].output[0]}"
        weight = np.concatenate([m.weight for m in members], axis=1)  # [K, sum N_i]
        new_inits.append(numpy_helper.from_array(weight, f"{tag}_weight"))
        product = f"{tag}_product"
        stand_in = [helper.make_node("MatMul", [source, f"{tag}_weight"], [product], name=f"{tag}_matmul")]
        if with_bias:
            bias = np.concatenate([m.bias for m in members])  # type: ignore[misc]
            new_inits.append(numpy_helper.from_array(bias, f"{tag}_bias"))
            stand_in.append(helper.make_node("Add", [product, f"{tag}_bias"], [f"{tag}_biased"],
                                             name=f"{tag}_add"))
            product = f"{tag}_biased"
        widths = np.array([m.weight.shape[1] for m in members], dtype=np.int64)
        new_inits.append(numpy_helper.from_array(widths, f"{tag}_widths"))
        outputs = [m.bias_add.output[0] if with_bias else m.matmul.output[0] for m in members]
        stand_in.append(helper.make_node("Split", [product, f"{tag}_widths"], outputs, axis=-1,
                                         name=f"{tag}_split"))
        replaced[id(nodes[0])] = stand_in
        for m in members:
            removed.add(id(m.matmul))
            if with_bias:
                removed.add(id(m.bias_add))
        fused += 1
    if not fused:
        return 0

    order = []
    for node in graph.node:
        if id(node) in replaced:
            order.extend(replaced[id(node)])
        elif id(node) not in removed:
            order.append(node)
    del graph.node[:]
    graph.node.extend(order)
    graph.initializer.extend(new_inits)
    used = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.initializer if i.name in used or i.name in graph_outputs]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    produced = {name for node in graph.node for name in node.output}
    infos = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return fused
