"""Switches that change how fast the attack runs, never what it computes (up to floating-point rounding)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.utils.checkpoint

from ..objectives import Networks


@dataclass(frozen=True)
class SpeedConfig:
    """Args:
        amp_dtype: autocast dtype on CUDA (`bfloat16`, `float16` or None for fp32); the iterate stays fp32.
        channels_last: run the networks on channels-last tensors.
        compile: `torch.compile` the frozen networks.
        checkpoint_decoder: recompute the VAE decoder's activations in the backward pass (less memory, larger
            batches, about one more decoder forward per iteration).
    """

    amp_dtype: Literal["bfloat16", "float16"] | None = "bfloat16"
    channels_last: bool = False
    compile: bool = False
    checkpoint_decoder: bool = False

    def autocast(self, device: torch.device):
        """Mixed precision on CUDA; a no-op elsewhere or with `amp_dtype: null`."""
        if device.type != "cuda" or self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=getattr(torch, self.amp_dtype))

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def apply(self, nets: Networks) -> None:
        """Configure the frozen networks once, after loading."""
        for vae in nets.vaes:
            if self.checkpoint_decoder:
                decode = vae.decode
                vae.decode = lambda z, decode=decode: torch.utils.checkpoint.checkpoint(decode, z, use_reentrant=False)
            if self.compile:
                vae.model.encoder = torch.compile(vae.model.encoder)
                vae.model.decoder = torch.compile(vae.model.decoder)
        if self.channels_last:
            nets.to(memory_format=torch.channels_last)
        if self.compile:
            compiled: dict[int, torch.nn.Module] = {}  # one network behind several crops stays one (compiled once)
            for recognizer in nets.recognizers:
                if id(recognizer.net) not in compiled:
                    compiled[id(recognizer.net)] = torch.compile(recognizer.net)
                recognizer.net = compiled[id(recognizer.net)]
