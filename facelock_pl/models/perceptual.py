"""LPIPS (Zhang et al. 2018) split in two, so the clean image's features are computed once per image.

`features(x)` returns the unit-normalised feature maps of the `lpips` package's network;
`distance(features_x, y)` is LPIPS(x, y) for the same network and learned linear layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .weights import WeightsUnavailableError, frozen, torch_checkpoint_dir

_BACKBONE_WEIGHTS = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}


@dataclass
class LPIPSSpec:
    """Args:
        net: `vgg` (FaceLock's choice), `alex`, `squeeze`; `tiny-random` (random AlexNet trunk and
            random linear layers; for tests) or `random-vgg` (LPIPS-VGG's architecture, random; for timing).
    """

    net: Literal["vgg", "alex", "squeeze", "tiny-random", "random-vgg"] = "vgg"


class LPIPSDistance(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        import lpips

        return [lpips.normalize_tensor(f) for f in self.model.net(self.model.scaling_layer(x))]

    def distance(self, features_x: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """LPIPS per sample, shape [B]."""
        total = 0.0
        for lin, fx, fy in zip(self.model.lins, features_x, self.features(y)):
            total = total + lin((fx - fy) ** 2).mean((2, 3))
        return total.flatten()


def load_lpips(spec: LPIPSSpec) -> LPIPSDistance:
    import lpips

    if spec.net in ("tiny-random", "random-vgg"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            trunk = "alex" if spec.net == "tiny-random" else "vgg"
            model = lpips.LPIPS(net=trunk, pretrained=False, pnet_rand=True, verbose=False)
            for lin in model.lins:  # non-negative channel weights, as trained LPIPS has: distances >= 0
                lin.model[-1].weight.data.abs_()
        return frozen(LPIPSDistance(model))
    try:
        # The learned linear layers ship in the lpips wheel; the trunk comes from torchvision's cache.
        model = lpips.LPIPS(net=spec.net, pretrained=True, pnet_rand=False, verbose=False)
    except Exception as error:
        raise WeightsUnavailableError(
            f"LPIPS-{spec.net} (torchvision ImageNet trunk)",
            [str(torch_checkpoint_dir() / _BACKBONE_WEIGHTS.get(spec.net, "?")), "https://download.pytorch.org/models"],
            "Place the torchvision checkpoint in $TORCH_HOME/hub/checkpoints, or set the LPIPS weight to 0.",
            error,
        ) from error
    return frozen(LPIPSDistance(model))
