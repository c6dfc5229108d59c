"""Small ONNX models encoded by hand (protobuf wire format), so that the runtime can build the
one-node helper graphs it runs in ONNX Runtime without the `onnx` package.

Only what those graphs need: tensors with raw data, int attributes, named or fixed dims, one
opset per domain. Field numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

FLOAT, UINT8, INT64, FLOAT16 = 1, 2, 7, 10  # TensorProto.DataType
_ELEM_TYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.uint8): UINT8, np.dtype(np.int64): INT64,
               np.dtype(np.float16): FLOAT16}
IR_VERSION = 8


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def field(number: int, value: int | str | bytes) -> bytes:
    """One protobuf field: a non-negative int as a varint, a str or bytes length-delimited."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def value_info(name: str, elem_type: int, dims: Sequence[int | str]) -> bytes:
    """ValueInfoProto of a tensor; a dim is a fixed size (int) or a symbolic name (str)."""
    shape = b"".join(field(1, field(1, d) if isinstance(d, int) else field(2, d)) for d in dims)
    return field(1, name) + field(2, field(1, field(1, elem_type) + field(2, shape)))


def int_attribute(name: str, value: int) -> bytes:
    """AttributeProto of type INT (2)."""
    return field(1, name) + field(3, value) + field(20, 2)


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto with raw little-endian data (an initializer)."""
    data = np.ascontiguousarray(array)
    dims = b"".join(field(1, int(d)) for d in data.shape)
    return dims + field(2, _ELEM_TYPES[data.dtype]) + field(8, name) + field(9, data.tobytes())


def external_tensor(name: str, elem_type: int, dims: Sequence[int]) -> bytes:
    """TensorProto whose data the session gets from SessionOptions.add_external_initializers."""
    location = field(13, field(1, "location") + field(2, name))  # StringStringEntryProto
    return b"".join(field(1, int(d)) for d in dims) + field(2, elem_type) + field(8, name) + location \
        + field(14, 1)  # data_location EXTERNAL


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str],
         attributes: Sequence[bytes] = (), domain: str = "") -> bytes:
    """NodeProto; `attributes` are encoded AttributeProtos (int_attribute)."""
    parts = [field(1, i) for i in inputs] + [field(2, o) for o in outputs] + [field(4, op_type)]
    parts += [field(5, a) for a in attributes]
    if domain:
        parts.append(field(7, domain))
    return b"".join(parts)


def model(nodes: Sequence[bytes], inputs: Sequence[bytes], outputs: Sequence[bytes],
          opsets: Mapping[str, int], initializers: Sequence[bytes] = (), name: str = "graph") -> bytes:
    """A serialized ModelProto of one graph."""
    graph = b"".join(field(1, n) for n in nodes) + field(2, name)
    graph += b"".join(field(5, t) for t in initializers)
    graph += b"".join(field(11, i) for i in inputs) + b"".join(field(12, o) for o in outputs)
    imports = b"".join(field(8, field(1, domain) + field(2, version)) for domain, version in opsets.items())
    return field(1, IR_VERSION) + field(7, graph) + imports
