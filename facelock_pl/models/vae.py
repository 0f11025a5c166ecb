"""The frozen image autoencoder E/D that diffusion editors work in.

Backends:
- `kl`: diffusers `AutoencoderKL` (Stable Diffusion's VAE), from a hub id or a local folder; the latent is
  the posterior mean (FaceLock's choice).
- `taesd`: diffusers `AutoencoderTiny`, from a hub id (e.g. `madebyollin/taesd`), a local diffusers folder,
  or a local folder holding the original TAESD files `*_encoder.safetensors` / `*_decoder.safetensors`.
- `tiny-random-kl`: a randomly initialised miniature `AutoencoderKL`, for tests and benchmarks only.
- `random-sd-kl`: Stable Diffusion's VAE architecture, randomly initialised: for timing benchmarks only.

Pixels in and out are in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .weights import frozen, load_pretrained, load_state_dict_file


@dataclass
class VAESpec:
    """Which autoencoder to load.

    Args:
        kind: `kl`, `taesd`, `tiny-random-kl` or `random-sd-kl`.
        path: hub id or local folder (unused by the random kinds).
        subfolder: subfolder inside `path` holding the VAE (`vae` for a full pipeline repo).
        name: label used in logs and manifests.
        weight: weight of this autoencoder in a VAE ensemble.
    """

    kind: Literal["kl", "taesd", "tiny-random-kl", "random-sd-kl"] = "kl"
    path: str = "timbrooks/instruct-pix2pix"
    subfolder: str | None = "vae"
    name: str = "vae"
    weight: float = 1.0


class FrozenVAE(nn.Module):
    """Encoder/decoder pair with a uniform interface: `encode(x) -> z`, `decode(z) -> x`."""

    def __init__(self, model: nn.Module, posterior_mean: bool):
        super().__init__()
        self.model = model
        self.posterior_mean = posterior_mean

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.encode(x)
        # AutoencoderTiny.forward() rounds latents to 8 bits without gradient: use encode/decode.
        return out.latent_dist.mean if self.posterior_mean else out.latents

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z).sample


def _taesd_from_original_files(folder: Path) -> nn.Module:
    """AutoencoderTiny from the original TAESD key layout (see ../shared/README.md)."""
    from diffusers import AutoencoderTiny

    encoders = sorted(folder.glob("*_encoder.safetensors"))
    decoders = sorted(folder.glob("*_decoder.safetensors"))
    if len(encoders) != 1 or len(decoders) != 1:
        raise FileNotFoundError(f"expected one *_encoder.safetensors and one *_decoder.safetensors in {folder}")
    state = {f"encoder.layers.{k}": v for k, v in load_state_dict_file(encoders[0]).items()}
    for key, value in load_state_dict_file(decoders[0]).items():
        index, rest = key.split(".", 1)
        # Index 0 of the original decoder is a parameter-free clamp that diffusers does not count.
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    model = AutoencoderTiny()
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model


def tiny_random_kl(seed: int = 0) -> nn.Module:
    """A randomly initialised 2-level AutoencoderKL (latent stride 2). For tests and benchmarks only."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
        )


def random_sd_kl(seed: int = 0) -> nn.Module:
    """Stable Diffusion 1.x's AutoencoderKL architecture (83M parameters), random weights. For timing only."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
        )


def load_vae(spec: VAESpec) -> FrozenVAE:
    """Load the autoencoder named by `spec`, frozen, in eval mode, float32."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    if spec.kind in ("tiny-random-kl", "random-sd-kl"):
        model = tiny_random_kl() if spec.kind == "tiny-random-kl" else random_sd_kl()
        return frozen(FrozenVAE(model, posterior_mean=True))
    if spec.kind not in ("kl", "taesd"):
        raise ValueError(f"unknown VAE kind {spec.kind!r}")
    cls = AutoencoderKL if spec.kind == "kl" else AutoencoderTiny
    kwargs = {"subfolder": spec.subfolder} if spec.subfolder else {}

    def load(source: str, local_files_only: bool) -> nn.Module:
        folder = Path(source)
        if spec.kind == "taesd" and folder.is_dir() and any(folder.glob("*_encoder.safetensors")):
            return _taesd_from_original_files(folder)
        return cls.from_pretrained(source, local_files_only=local_files_only, **kwargs)

    model = load_pretrained(
        load, spec.path, f"the {spec.kind} VAE {spec.path!r}" + (f" (subfolder {spec.subfolder!r})" if spec.subfolder else ""),
        "Give a local folder as the VAE's path (fit's --model.vae.path, edit's --editor.vae.path): a diffusers "
        "VAE folder, or for taesd the original taesd_encoder/decoder.safetensors files.",
    )
    return frozen(FrozenVAE(model.float(), posterior_mean=spec.kind == "kl"))
