"""Linear backpropagation (LinBP; Guo et al., "Backpropagating Linearly Improves Transferability of Adversarial
Examples", NeurIPS 2020): the forward pass is the network's own, but the backward pass treats the last activations
as the identity, so the input gradient is that of a partly linear network. The paper's argument is that the ReLU
masks of one network's backward pass are what ties an attack to it; a gradient without them transfers better.
"""

from __future__ import annotations

import torch
from torch import nn


def _straight_through(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
    """The activation's value, the identity's gradient."""
    return inputs[0] + (output - inputs[0]).detach()


def activations(net: nn.Module) -> list[nn.Module]:
    """The rectifier modules of `net` (ReLU, PReLU, LeakyReLU, and onnx2torch's PReLU), in registration order,
    which is the order of the forward pass for the sequential and residual recognisers used here."""
    return [m for m in net.modules() if not list(m.children()) and "ReLU" in type(m).__name__]


def linearise_backward(net: nn.Module, share: float) -> int:
    """Make the backward pass of the last `share` (0–1) of `net`'s activations the identity's; returns how many.

    The forward values are unchanged up to float rounding (x + (f(x) − x) instead of f(x)).
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must lie in (0, 1] (got {share})")
    found = activations(net)
    chosen = found[len(found) - round(share * len(found)):]
    for module in chosen:
        if getattr(module, "inplace", False):
            module.inplace = False  # the hook needs the activation's input as it was
        module.register_forward_hook(_straight_through)
    return len(chosen)
