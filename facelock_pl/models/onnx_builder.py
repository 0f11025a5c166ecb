"""Writing an ONNX graph from a TensorFlow one (TFLite or TF.js), operator by operator.

TensorFlow lays activations out as NHWC, ONNX (and onnx2torch) as NCHW; the translators that use this builder keep
every activation NCHW and move the constants instead: filters to OIHW, per-channel constants to C11, and
TensorFlow's SAME padding to ONNX's explicit, possibly asymmetric pads. The result has one input `input`
[N, C, H, W] and one output `embedding` [N, D], so `kind: onnx` loads it like any ONNX recogniser.
"""

from __future__ import annotations

import math

import numpy as np


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one axis: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class OnnxGraphBuilder:
    """Nodes and initialisers of an ONNX graph under construction; `serialised` checks and writes the model."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []

    def constant(self, array: np.ndarray, name: str, dtype: type = np.float32) -> str:
        self.initializers.append(self._numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(self._helper.make_node(op, inputs, [output], **attributes))
        return output

    def conv(self, x: str, weight_oihw: np.ndarray, bias: np.ndarray | None, output: str, *, stride: tuple[int, int],
             padding: str, input_hw: tuple[int, int], depthwise: bool) -> str:
        """A (depthwise) convolution with TensorFlow's `padding` ("SAME" / "VALID") on an input of `input_hw`."""
        (stride_h, stride_w), (kernel_h, kernel_w) = stride, weight_oihw.shape[2:]
        (top, bottom), (left, right) = ((same_padding(input_hw[0], kernel_h, stride_h),
                                         same_padding(input_hw[1], kernel_w, stride_w))
                                        if padding == "SAME" else ((0, 0), (0, 0)))
        inputs = [x, self.constant(weight_oihw, f"{output}.weight")]
        if bias is not None:
            inputs.append(self.constant(bias, f"{output}.bias"))
        return self.node("Conv", inputs, output, group=weight_oihw.shape[0] if depthwise else 1,
                         kernel_shape=[kernel_h, kernel_w], strides=[stride_h, stride_w], pads=[top, left, bottom, right])

    def serialised(self, name: str, output: str, input_chw: tuple[int, int, int], embedding_size: int | str) -> bytes:
        """The model (opset 13) whose input `input` is [N, *input_chw] and whose output `embedding` is `output`."""
        import onnx
        from onnx import TensorProto

        helper = self._helper
        self.node("Identity", [output], "embedding")
        model = helper.make_model(
            helper.make_graph(self.nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_chw])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", embedding_size])],
                              self.initializers),
            opset_imports=[helper.make_opsetid("", 13)])
        onnx.checker.check_model(model)
        return model.SerializeToString()
