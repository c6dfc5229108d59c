"""The parallel-projection fusion pass: same outputs bit for bit, fewer MatMuls, graph stays valid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from rsicrc.export.fuse import fuse_parallel_matmuls  # noqa: E402

K = 16


def _graph(with_bias: tuple[bool, ...], widths: tuple[int, ...], extra_use: bool = False) -> onnx.ModelProto:
    """x [B, 3, K] -> one MatMul (+ bias Add) per width, each followed by Relu to an output.
    With `extra_use`, the first MatMul's raw product is a graph output too."""
    rng = np.random.default_rng(0)
    nodes, inits, outputs = [], [], []
    for i, (bias, n) in enumerate(zip(with_bias, widths, strict=True)):
        inits.append(numpy_helper.from_array(rng.standard_normal((K, n)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"p{i}"]))
        last = f"p{i}"
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), f"b{i}"))
            nodes.append(helper.make_node("Add", [last, f"b{i}"], [f"a{i}"]))
            last = f"a{i}"
        nodes.append(helper.make_node("Relu", [last], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["b", 3, n]))
    if extra_use:
        outputs.append(helper.make_tensor_value_info("p0", TensorProto.FLOAT, ["b", 3, widths[0]]))
    # a MatMul of another input with a same-K weight must stay alone
    inits.append(numpy_helper.from_array(np.ones((K, 4), np.float32), "w_other"))
    nodes.append(helper.make_node("MatMul", ["z", "w_other"], ["y_other"]))
    outputs.append(helper.make_tensor_value_info("y_other", TensorProto.FLOAT, ["b", 3, 4]))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, K]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", 3, K])],
        outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@pytest.mark.parametrize("with_bias,extra_use", [((True, True, True), False), ((False, False), False),
                                                 ((True, False, True), False), ((True, True), True)])
def test_fusion_keeps_every_output_exactly(with_bias: tuple[bool, ...], extra_use: bool) -> None:
    widths = (8, 12, 8)[: len(with_bias)]
    model = _graph(with_bias, widths, extra_use)
    rng = np.random.default_rng(1)
    feed = {"x": rng.standard_normal((2, 3, K)).astype(np.float32),
            "z": rng.standard_normal((2, 3, K)).astype(np.float32)}
    before = _run(model, feed)
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    assert fuse_parallel_matmuls(fused) == 1
    onnx.checker.check_model(fused, full_check=True)
    after = _run(fused, feed)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    matmuls = [n for n in fused.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2  # the fused one and the one of `z`
    names = {i.name for i in fused.graph.initializer}
    assert not {f"w{i}" for i in range(len(widths))} & names  # the separate weights are gone
    adds = [n for n in fused.graph.node if n.op_type == "Add"]
    # biases fold into the fused product only when every member has one
    assert len(adds) == (1 if all(with_bias) and not extra_use else sum(with_bias))


def test_nothing_to_fuse_leaves_the_graph_alone() -> None:
    model = _graph((True,), (8,))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    assert fuse_parallel_matmuls(copy) == 0
    assert copy == model


def test_exported_graphs_have_no_parallel_projections(tiny_model: Path) -> None:
    """Every exported graph was fused: no two MatMuls of one activation with weight initializers."""
    for path in sorted(tiny_model.glob("*.onnx")):
        proto = onnx.load(str(path))
        weights = {i.name for i in proto.graph.initializer if len(i.dims) == 2}
        sources: dict[str, int] = {}
        for node in proto.graph.node:
            if node.op_type == "MatMul" and node.input[1] in weights:
                sources[node.input[0]] = sources.get(node.input[0], 0) + 1
        assert all(count == 1 for count in sources.values()), (path.name, sources)


def test_graphs_with_subgraphs_are_left_alone() -> None:
    """An If's branches could use the weights the pass would drop: such graphs are not touched."""
    model = _graph((True, True), (8, 8))
    branch = helper.make_graph([helper.make_node("Identity", ["w0"], ["o"])], "branch", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [K, 8])])
    model.graph.node.append(helper.make_node("If", ["cond"], ["if_out"], then_branch=branch,
                                             else_branch=branch))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    assert fuse_parallel_matmuls(copy) == 0
    assert copy == model
