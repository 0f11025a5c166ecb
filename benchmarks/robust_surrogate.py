"""A slightly robust copy of a recogniser of the loss (facenet CASIA-WebFace or SFace) as a surrogate for the FR term
(a transfer aid; benchmarks/robustness.md, "A slightly robust surrogate").

    python benchmarks/robust_surrogate.py --assets BUNDLE                    # facenet, ~10 min on a 2-core CPU
    python benchmarks/robust_surrogate.py --assets BUNDLE --network sface
    python benchmarks/robustness.py --assets BUNDLE ... --variant "robust=...+robust_facenet"

Why: perturbations found on a surrogate that is a little robust to small perturbations transfer better to other
networks (Springer, Mitchell, Kenyon, "A Little Robustness Goes a Long Way", NeurIPS 2021): its gradients follow
features that networks share rather than its own brittle ones. Here there is no face dataset to train on, so the
copy is fine-tuned TRADES-style (Zhang et al., ICML 2019) on the bundle's 64 pair photos only (never a CelebA-HQ face,
so neither the tuning nor the held-out faces): it keeps the original's embedding of each crop (fidelity) and its
own embedding within an L∞ ball of `--eps` around the crop (robustness, the worst case found by a 3-step sign
attack), over box crops of random margin, the ArcFace alignment and small random similarities, of both the photo
and its TAESD round trip (the loss meets reconstructions). BatchNorm keeps the network's own statistics.

Writes, beside a JSON of the training curve and the adversarial drift (1 - cos under that attack) before and after on
the pairs' crops: facenet, BUNDLE/fr/facenet-casia-robust/facenet_casia_robust.safetensors (a state dict for `kind:
facenet`; every parameter trained); SFace, BUNDLE/fr/sface-robust/sface_robust.onnx (SFace's graph with its
convolutions' weights replaced, for `kind: onnx`; only those are trained).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save
from torch import nn

from facelock_pl.models.faces import (ARCFACE_TEMPLATE_112, FaceDetector, FaceGeometry, box_transform, jitter_theta,
                                      sampling_theta, similarity_transform, warp)
from facelock_pl.models.recognizers import RecognizerSpec, load_recognizer
from facelock_pl.models.vae import VAESpec, load_vae
from facelock_pl.outputs.atomic import write_bytes_atomic

PORTRAIT = 256  # the pair photos reframed like the loss's CelebA-HQ inputs


@dataclass(frozen=True)
class Network:
    """A recogniser to make robust: how it is loaded, how its crops are drawn, where the copy goes."""

    spec: dict  # RecognizerSpec's fields, `weights` relative to the bundle
    crop: int  # its input size
    arcface_share: float  # of the crops; the rest are box crops
    max_margin: int  # its 40% box in its crop pixels (as OTHER_CROPS in robustness.py)
    out: str  # relative to the bundle


NETWORKS = {
    "facenet": Network({"kind": "facenet", "weights": "fr/facenet-casia/facenet_casia_webface_20180408_fp16.safetensors"},
                       160, 0.3, 46, "fr/facenet-casia-robust/facenet_casia_robust.safetensors"),
    "sface": Network({"kind": "onnx", "weights": "fr/sface/sface_fp32.onnx", "input_scale": 127.5, "input_offset": 127.5},
                     112, 0.4, 32, "fr/sface-robust/sface_robust.onnx"),
}


# Every network here is a FaceRecognizer (or acts as one): [B, 3, S, S] crops in [-1, 1] -> [B, D] unit embeddings.
def worst_perturbation(net: nn.Module, crops_pm1: torch.Tensor, eps: float, steps: int = 3,
                       generator: torch.Generator | None = None, clean: torch.Tensor | None = None) -> torch.Tensor:
    """The perturbation (L∞ <= eps, crop pixels in [-1, 1]) that moves `net`'s embeddings most, by sign steps of
    eps/2 from a random start; `clean`: the crops' embeddings, where the caller has them."""
    clean = net(crops_pm1).detach() if clean is None else clean.detach()
    delta = (torch.rand(crops_pm1.shape, generator=generator) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        drift = (1 - (net((crops_pm1 + delta).clamp(-1, 1)) * clean).sum(1)).mean()
        (grad,) = torch.autograd.grad(drift, delta)
        delta = (delta.detach() + eps / 2 * grad.sign()).clamp(-eps, eps)
    return delta.detach()


def adversarial_drift(net: nn.Module, crops_pm1: torch.Tensor, eps: float, seed: int = 0) -> float:
    """Mean 1 - cos(embedding, embedding under the worst perturbation found): how brittle `net` is at `eps`."""
    delta = worst_perturbation(net, crops_pm1, eps, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        moved = net((crops_pm1 + delta).clamp(-1, 1))
        return (1 - (moved * net(crops_pm1)).sum(1)).mean().item()


def robustify(teacher: nn.Module, sample_crops, steps: int, eps: float, beta: float, lr: float,
              batch: int = 8, seed: int = 0, trainable=None) -> tuple[nn.Module, list[dict]]:
    """A copy of `teacher` fine-tuned to keep the teacher's embeddings (1 - cos) and its own under the worst
    perturbation (beta x 1 - cos): TRADES with embeddings for logits. `sample_crops(n)` draws [n, 3, H, W] crops;
    `trainable(student)` names the parameters to train (default: all)."""
    student = copy.deepcopy(teacher).float().eval()  # eval: BatchNorm keeps its statistics
    parameters = list(trainable(student) if trainable else student.parameters())
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimiser = torch.optim.Adam(parameters, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    curve = []
    for step in range(steps):
        crops = sample_crops(batch)
        with torch.no_grad():
            target = teacher(crops)
        own = student(crops)
        delta = worst_perturbation(student, crops, eps, generator=generator, clean=own)
        fidelity = (1 - (own * target).sum(1)).mean()
        robustness = (1 - (student((crops + delta).clamp(-1, 1)) * own).sum(1)).mean()
        optimiser.zero_grad()
        (fidelity + beta * robustness).backward()
        optimiser.step()
        curve.append({"step": step, "fidelity": fidelity.item(), "robustness": robustness.item()})
    return student.requires_grad_(False), curve


def pair_portraits(assets: Path, detector: FaceDetector) -> tuple[torch.Tensor, FaceGeometry]:
    """The pair photos reframed around their face (a square of 2.2x the face box), PORTRAIT px, [-1, 1], with their
    faces detected anew."""
    portraits = []
    for path in sorted((assets / "faces/pairs").glob("*.jpg")):
        photo = Image.open(path).convert("RGB")
        found = detector(torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None])
        if not found.found[0]:
            continue
        x1, y1, x2, y2 = found.boxes[0].tolist()
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, 1.1 * max(x2 - x1, y2 - y1)
        square = photo.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
        portraits.append(torch.from_numpy(np.array(square.resize((PORTRAIT, PORTRAIT), Image.BICUBIC))).permute(2, 0, 1))
    uint8 = torch.stack(portraits)
    geometry = detector(uint8)
    return uint8[geometry.found].float() / 127.5 - 1, geometry.select(geometry.found)


def crop_sampler(images_pm1: torch.Tensor, geometry: FaceGeometry, network: Network, seed: int = 0):
    """Draws `network`'s crops of random images: a box crop of random margin (0 to the 40% box) or the ArcFace
    alignment, moved by a small random similarity (jitter_theta at 0.1)."""
    rng = np.random.default_rng(seed)
    hw, size = tuple(images_pm1.shape[-2:]), network.crop

    def sample(n: int) -> torch.Tensor:
        index = torch.as_tensor(rng.integers(0, len(images_pm1), n))
        faces = geometry.select(index)
        to_face = [similarity_transform(faces.landmarks[i:i + 1], ARCFACE_TEMPLATE_112 * (size / 112))
                   if rng.random() < network.arcface_share
                   else box_transform(faces.boxes[i:i + 1], size, rng.uniform(0, network.max_margin)) for i in range(n)]
        theta = torch.cat([sampling_theta(t, hw, (size, size)) for t in to_face])
        theta = jitter_theta(theta, torch.as_tensor(rng.random((n, 4)), dtype=torch.float32), 0.1)
        return warp(images_pm1[index], theta, (size, size))

    return sample


def convolutions(recognizer: nn.Module) -> list[nn.Parameter]:
    """What is trained of an ONNX recogniser: its convolutions' weights (and biases), the tensors written back."""
    return [p for m in recognizer.modules() if isinstance(m, nn.Conv2d) for p in m.parameters()]


def onnx_with_convolutions_of(recognizer: nn.Module, onnx_path: Path) -> bytes:
    """The ONNX graph at `onnx_path` with each Conv node's weight and bias initializers taken from the same-named
    module of `recognizer.net` (onnx2torch names modules after nodes)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    initializers = {init.name: init for init in model.graph.initializer}
    modules = dict(recognizer.net.named_modules())
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        conv = modules[node.name]
        for name, tensor in zip(node.input[1:], (conv.weight, conv.bias)):
            if tensor is not None:
                initializers[name].CopyFrom(numpy_helper.from_array(tensor.detach().cpu().numpy(), name))
    buffer = io.BytesIO()
    onnx.save(model, buffer)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, required=True, help="the offline bundle, e.g. ../shared/assets")
    parser.add_argument("--network", choices=sorted(NETWORKS), default="facenet")
    parser.add_argument("--out", type=Path, default=None, help="default: the network's path in ASSETS (above)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eps", type=float, default=0.015, help="L∞ radius in crop pixels in [-1, 1] (~1.9/255)")
    parser.add_argument("--beta", type=float, default=1.0, help="weight of the robustness term")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    network = NETWORKS[args.network]
    out = args.out or args.assets / network.out
    weights = args.assets / network.spec["weights"]
    teacher = load_recognizer(RecognizerSpec(**{**network.spec, "weights": str(weights)}))
    images, geometry = pair_portraits(args.assets, FaceDetector())
    vae = load_vae(VAESpec(kind="taesd", path=str(args.assets / "vae/taesd"), subfolder=None, name="taesd"))
    with torch.no_grad():  # the round trip keeps the face where it was: the same geometry serves both
        round_trips = torch.cat([vae.decode(vae.encode(chunk)).clamp(-1, 1) for chunk in images.split(8)])
    sample = crop_sampler(torch.cat([images, round_trips]), FaceGeometry.stack([geometry, geometry]), network, args.seed)
    probe = crop_sampler(images, geometry, network, seed=args.seed + 1)(32)  # a fixed set of crops to measure drift on
    before = adversarial_drift(teacher, probe, args.eps)
    onnx = network.spec["kind"] == "onnx"
    student, curve = robustify(teacher, sample, args.steps, args.eps, args.beta, args.lr, seed=args.seed,
                               trainable=convolutions if onnx else None)
    with torch.no_grad():
        fidelity = (student(probe) * teacher(probe)).sum(1).mean().item()
    summary = {"settings": {k: str(v) for k, v in vars(args).items()}, "images": len(images),
               "drift_before": before, "drift_after": adversarial_drift(student, probe, args.eps),
               "cos_student_teacher": fidelity, "curve": curve}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, onnx_with_convolutions_of(student, weights) if onnx
                       else save({k: v.contiguous() for k, v in student.net.state_dict().items()}))
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(summary, indent=1).encode())
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}, indent=1))
    print(f"| drift before | drift after | cos(student, teacher) |\n|---|---|---|\n"
          f"| {before:.3f} | {summary['drift_after']:.3f} | {fidelity:.3f} |")


if __name__ == "__main__":
    main()
