"""Feature-map dropout in the recognisers of the loss (DFANet; Zhong & Deng, "Towards Transferable Adversarial
Attack Against Deep Face Recognition", IEEE TIFS 2021): every convolution's output is dropped out with a fresh mask
at each PGD iteration, so the attack meets a new member of an ensemble of thinned networks each time instead of
fitting the one network it sees. The paper reports better transfer to unseen face recognisers at no extra passes.

Masks are drawn per image from its own seed, so an image's perturbation does not depend on what it was batched with.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class FeatureDropout:
    """Forward hooks that drop out each `nn.Conv2d` output of `nets` with probability `p`, only inside `active`.

    Args:
        nets: the networks to thin (each hooked once, however many recogniser entries share it).
        p: dropout probability in (0, 1); kept activations are scaled by 1 / (1 - p), as `nn.Dropout` does.

    Example:
        >>> dropout = FeatureDropout([net], 0.1)
        >>> with dropout.active(seeds, net_device):   # seeds: one int per image of the batch
        ...     embeddings = net(faces)   # each conv output thinned by that image's mask
    """

    def __init__(self, nets: list[nn.Module], p: float):
        if not 0 < p < 1:
            raise ValueError(f"feature dropout p must lie in (0, 1) (got {p})")
        self.p = p
        self._generators: list[torch.Generator] | None = None
        self.hooked = 0
        for net in {id(n): n for n in nets}.values():
            for module in net.modules():
                if isinstance(module, nn.Conv2d):
                    module.register_forward_hook(self._drop)
                    self.hooked += 1
        if not self.hooked:
            raise ValueError("feature dropout: the recognisers have no Conv2d layer to drop out")

    @contextmanager
    def active(self, seeds: list[int], device: torch.device) -> Iterator[None]:
        """Thin the hooked networks (on `device`) while inside, image i's masks drawn from a generator seeded by
        seeds[i]."""
        self._generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        try:
            yield
        finally:
            self._generators = None

    def _drop(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if self._generators is None:
            return None  # measuring: the networks as they are
        if len(self._generators) != len(output):
            raise RuntimeError(f"feature dropout holds {len(self._generators)} seeds for a batch of {len(output)}")
        keep = torch.stack([torch.rand(output.shape[1:], generator=g, device=output.device) >= self.p
                            for g in self._generators])
        return output * keep.to(output.dtype) / (1 - self.p)
