"""The yardstick: a faithful re-implementation of the published FaceLock loop (taco-group/FaceLock,
`methods.py::facelock`), on the same networks as the pipeline.

What makes it the published loop, and slow:
- one image at a time (batch 1), autocast in half precision on GPU, fp32 on CPU;
- every iteration recomputes the clean image's work: face alignment of x, FR(x), E(x), and LPIPS of both
  images;
- every term is computed at every iteration, also while its weight is 0 (decoder, FR and LPIPS during
  the first 25-35% of iterations);
- the update is the unfused PyTorch sequence.
The final protected image is quantised and re-measured exactly like the pipeline's, so the two can be
compared image by image.
"""

from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F

from facelock_pl.pixels import levels_to_pm1, quantise_to_levels
from facelock_pl.engine.schedule import random_start
from facelock_pl.kernels import pgd_step_reference_
from facelock_pl.objectives import Networks


def reference_facelock(nets: Networks, detector, levels: torch.Tensor, uid: str, eps: float = 0.03,
                       step_size: float = 0.01, iterations: int = 100, seed: int = 0, lpips_weight: float = 1.0,
                       latent_weight: float = 0.2) -> dict:
    """Protect one image (uint8 [1, 3, H, W]); returns the final PNG levels, fr_cos_recon and seconds."""
    device = levels.device
    half = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()
    start = time.perf_counter()
    x = levels_to_pm1(levels)
    x_adv = random_start(x, [uid], seed, eps)
    for i in range(iterations):
        x_adv.requires_grad_(True)
        with half:
            geometry = detector(levels)  # the clean image's alignment, every iteration
            latent = nets.vae.encode(x_adv)
            image = nets.reconstruct(latent)
            clean_latent = nets.vae.encode(x)
            clean = nets.clean_features(x, geometry, need_latent=False, need_lpips=False)
            fr_cos = nets.fr_cos(image.float(), clean)
            latent_mse = F.mse_loss(latent.float(), clean_latent.float())
            lpips = nets.lpips.distance(nets.lpips.features(x), image) if nets.lpips is not None else torch.zeros(1, device=device)
            loss = (-fr_cos * (1.0 if i >= iterations * 0.35 else 0.0) + latent_weight * latent_mse
                    + lpips_weight * lpips * (1.0 if i > iterations * 0.25 else 0.0))
        grad, = torch.autograd.grad(loss.sum(), [x_adv])
        alpha = step_size - (step_size - step_size / 100) / iterations * i
        x_adv = pgd_step_reference_(x_adv.detach(), grad, x, alpha, eps)
    png = quantise_to_levels(x_adv, levels, eps)
    with torch.no_grad(), half:
        geometry = detector(levels)
        clean = nets.clean_features(x, geometry, need_latent=False, need_lpips=False)
        fr_cos_recon = float(nets.fr_cos(nets.reconstruct(nets.vae.encode(levels_to_pm1(png))).float(), clean))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"uid": uid, "fr_cos_recon": fr_cos_recon if bool(geometry.found[0]) else None,
            "seconds": time.perf_counter() - start}
