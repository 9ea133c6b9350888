"""Rewrites of an embedder's ONNX graph before and after int8 quantization, so that the int8
graph reads the raw uint8 pixels: no cast, no normalisation, no quantization of its input.

Every exported graph starts ``pixels (uint8) → [Transpose] → Cast → normalise``, the
normalisation a per-channel 1×1 convolution ``x·a + b``. Quantized as it stands, that front
costs about a fifth of the int8 model's time (a 3-channel grouped convolution at full
resolution, plus the cast and the quantization). Instead:

1. :func:`fold_normalisation` (float graph): the normalisation becomes ``x − Z`` (``Z`` the
   channels' mean pixel, rounded) and its scale and shift move into the weights and biases of
   the convolutions that read it, directly or through unpadded average pools (the Deep Ranking
   branches). A convolution's zero padding now stands for the pixel ``Z`` rather than the
   channel's mean: exact when the channels share an integer mean (efficientnet-lite: 127), a
   border difference of at most (|mean − Z| / std) on the padded rows otherwise.
2. The quantizer is told that ``x − Z`` has scale 1 and zero point ``Z``: its uint8 form is
   the pixel itself.
3. :func:`read_raw_pixels` (quantized graph): ``Cast → Sub(Z) → QuantizeLinear(1, Z)`` is then
   the identity on uint8 and is removed; the quantized convolutions read the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper as nh


@dataclass(frozen=True)
class Centred:
    """The folded graph's centred-pixel tensor (``pixels − zero``), for the quantizer."""

    tensor: str
    zero: int


def _readers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if name in n.input]


def _writer(graph: onnx.GraphProto, name: str) -> onnx.NodeProto | None:
    return next((n for n in graph.node if name in n.output), None)


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    a = next((a for a in node.attribute if a.name == name), None)
    return default if a is None else helper.get_attribute_value(a)


def _only_reader(graph: onnx.GraphProto, name: str) -> onnx.NodeProto | None:
    readers = _readers(graph, name)
    return readers[0] if len(readers) == 1 else None


def _normalisation(graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """The per-channel 1×1 convolution right after the uint8 input's [Transpose →] Cast."""
    node = _only_reader(graph, graph.input[0].name)
    if node is not None and node.op_type == "Transpose":
        node = _only_reader(graph, node.output[0])
    if node is None or node.op_type != "Cast":
        return None
    node = _only_reader(graph, node.output[0])
    inits = {i.name for i in graph.initializer}
    if (node is None or node.op_type != "Conv" or _attr(node, "group") != 3
            or len(node.input) < 3 or not {node.input[1], node.input[2]} <= inits):
        return None
    return node


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads any more (the replaced weights and constants)."""
    used = {x for n in graph.node for x in n.input}
    for i in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(i)


def _unpadded_pool(node: onnx.NodeProto) -> bool:
    return (node.op_type == "AveragePool" and not any(_attr(node, "pads", []) or [])
            and _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))


def fold_normalisation(model: onnx.ModelProto) -> Centred | None:
    """Fold the input normalisation into the convolutions reading it (in place). Returns the
    centred tensor, or ``None`` (model unchanged) when the graph does not have that shape:
    a reader other than a convolution or an unpadded average pool, grouped convolutions."""
    g = model.graph
    norm = _normalisation(g)
    if norm is None:
        return None
    init = {i.name: i for i in g.initializer}
    a = nh.to_array(init[norm.input[1]]).astype(np.float64).reshape(-1)
    b = nh.to_array(init[norm.input[2]]).astype(np.float64).reshape(-1)
    zero = int(np.clip(np.round(np.mean(-b / a)), 0, 255))  # the channels' mean pixel
    convs: list[onnx.NodeProto] = []
    todo = [norm.output[0]]
    while todo:
        for r in _readers(g, todo.pop()):
            if _unpadded_pool(r):
                todo.append(r.output[0])  # linear and per channel: the fold passes through
            elif r.op_type == "Conv" and _attr(r, "group", 1) == 1 and r.input[1] in init:
                convs.append(r)
            else:
                return None
    if not convs:
        return None
    shift = a * zero + b  # the normalised value of the pixel ``zero``, per channel
    for c in convs:
        w = nh.to_array(init[c.input[1]]).astype(np.float64)
        has_bias = len(c.input) > 2 and c.input[2] != ""
        bias = nh.to_array(init[c.input[2]]).astype(np.float64) if has_bias else 0.0
        names = (f"{c.name}_folded_weight", f"{c.name}_folded_bias")
        g.initializer.extend([
            nh.from_array((w * a[None, :, None, None]).astype(np.float32), names[0]),
            nh.from_array((bias + np.einsum("ocij,c->o", w, shift)).astype(np.float32),
                          names[1])])
        c.input[1] = names[0]
        if has_bias:
            c.input[2] = names[1]
        else:
            del c.input[2:]
            c.input.append(names[1])
    zero_name = f"{norm.name}_zero"
    g.initializer.append(nh.from_array(np.array(zero, np.float32), zero_name))
    sub = helper.make_node("Sub", [norm.input[0], zero_name], [norm.output[0]],
                           name=f"{norm.name}_centre")
    at = list(g.node).index(norm)
    g.node.remove(norm)
    g.node.insert(at, sub)
    _drop_unused_initializers(g)
    return Centred(norm.output[0], zero)


def read_raw_pixels(model: onnx.ModelProto, centred: Centred) -> bool:
    """In the quantized graph, remove ``Cast → Sub(zero) → QuantizeLinear(scale 1, zero)``
    (the identity on uint8) so its readers take the pixels directly (in place). Returns
    whether it was found."""
    g = model.graph
    init = {i.name: i for i in g.initializer}

    def scalar(name: str) -> np.ndarray | None:  # only the few constants looked at
        return nh.to_array(init[name]) if name in init else None

    sub = _writer(g, centred.tensor)
    cast = _writer(g, sub.input[0]) if sub is not None and sub.op_type == "Sub" else None
    q = _only_reader(g, centred.tensor)
    if cast is None or cast.op_type != "Cast" or q is None or q.op_type != "QuantizeLinear":
        return False
    scale, zp = scalar(q.input[1]), scalar(q.input[2]) if len(q.input) > 2 else None
    centre = scalar(sub.input[1])
    if (scale is None or zp is None or centre is None or zp.dtype != np.uint8
            or float(scale) != 1.0 or int(zp) != centred.zero or float(centre) != centred.zero
            or len(_readers(g, cast.output[0])) != 1):
        return False
    for r in _readers(g, q.output[0]):
        for i, x in enumerate(r.input):
            if x == q.output[0]:
                r.input[i] = cast.input[0]
    for n in (q, sub, cast):
        g.node.remove(n)
    _drop_unused_initializers(g)
    return True
