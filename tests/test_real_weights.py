"""Real, trained networks from ../shared/assets (skipped with a reason when absent).

Correctness checks from ../shared/README.md: TAESD reconstructs faces at ~27 dB; facenet CASIA-WebFace
(box crop) and SFace (ArcFace alignment) verify the labelled pairs at AUC 1.0; and FaceLock with them
destroys the identity that survives the VAE round trip.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, needs_shared
from facelock_pl.data import load_rgb, square_resize
from facelock_pl.models import FaceDetector, RecognizerSpec, VAESpec, load_recognizer, load_vae

pytestmark = needs_shared


def auc(scores: list[float], same: list[bool]) -> float:
    """Probability that a random same-person pair outscores a random different-person pair."""
    pos = [s for s, y in zip(scores, same) if y]
    neg = [s for s, y in zip(scores, same) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def pairs():
    from conftest import SHARED_ASSETS

    folder = SHARED_ASSETS / "faces" / "pairs"
    rows = list(csv.DictReader(open(folder / "master.csv")))
    files = sorted({r["file_x"] for r in rows} | {r["file_y"] for r in rows})
    detector = FaceDetector()
    faces = {}
    for name in files:
        image = torch.from_numpy(np.asarray(load_rgb(folder / name))).permute(2, 0, 1)[None]
        faces[name] = (image.float() / 127.5 - 1, detector(image))
    return rows, faces


@pytest.mark.parametrize(
    "spec",
    [
        dict(kind="facenet", weights="fr/facenet-casia/facenet_casia_webface_20180408_fp16.safetensors"),
        dict(kind="onnx", weights="fr/sface/sface_fp32.onnx", input_scale=127.5, input_offset=127.5),
    ],
    ids=["facenet-casia", "sface"],
)
def test_recogniser_chain_verifies_pairs(pairs, shared_assets, spec):
    rows, faces = pairs
    recognizer = load_recognizer(RecognizerSpec(**{**spec, "weights": str(shared_assets / spec["weights"])}))
    assert all(g.found.item() for _, g in faces.values())
    with torch.no_grad():
        emb = {name: recognizer.embed(x, recognizer.theta(g, tuple(x.shape[-2:])))[0] for name, (x, g) in faces.items()}
    scores = [float(emb[r["file_x"]] @ emb[r["file_y"]]) for r in rows]
    same = [r["Decision"] == "Yes" for r in rows]
    value = auc(scores, same)
    print(f"{spec['kind']} verification AUC on {len(rows)} pairs: {value:.4f}")
    assert value >= 0.99


def test_taesd_reconstructs_a_shared_face(shared_assets):
    vae = load_vae(VAESpec(kind="taesd", path=str(shared_assets / "vae" / "taesd"), subfolder=None))
    faces = sorted((shared_assets / "faces" / "celebahq").glob("*.jpg"))[:2]
    for path in faces:
        levels = square_resize(load_rgb(path), 512)[None]
        x = levels.float() / 127.5 - 1
        with torch.no_grad():
            recon = vae.decode(vae.encode(x)).clamp(-1, 1)
        levels_recon = torch.round((recon + 1) * 127.5)
        psnr = 10 * math.log10(255**2 / (levels_recon - levels.float()).pow(2).mean().item())
        print(f"TAESD 512 px round trip of {path.name}: PSNR {psnr:.2f} dB")
        assert psnr > 22


@pytest.mark.slow
def test_facelock_destroys_identity_with_real_weights(shared_assets, tmp_path):
    from facelock_pl.cli import main
    from facelock_pl.outputs import read_manifest

    out = tmp_path / "out"
    main(["fit", "--config", str(ROOT / "configs" / "offline.yaml"),
          "--data.source", str(shared_assets / "faces" / "celebahq"), "--data.limit", "1", "--data.batch_size", "1",
          "--data.num_workers", "0", "--model.iterations", "60", "--output_dir", str(out),
          "--model.vae.path", str(shared_assets / "vae" / "taesd"),
          "--model.recognizers", f'[{{"kind": "facenet", "name": "facenet-casia", "weights": "{shared_assets}/fr/facenet-casia/facenet_casia_webface_20180408_fp16.safetensors"}}]',
          "--trainer.enable_progress_bar", "false"])
    row = read_manifest(out).iloc[0]
    print(f"FaceLock 60 it, 256 px, {row.uid}: fr_cos_recon {row.fr_cos_recon:.3f}, linf_255 {row.linf_255}, "
          f"psnr {row.psnr_db:.2f} dB, {row.seconds:.1f} s")
    assert row.status == "ok"
    assert row.fr_cos_recon < 0.3
    assert row.linf_255 <= 3
    png = np.asarray(Image.open(out / "images" / f"{row.uid}.png"))
    assert png.shape == (256, 256, 3)
