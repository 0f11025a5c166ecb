"""CW-L2's update: the iterate is tanh(w), and Adam moves w (Carlini & Wagner 2017, as the published FaceLock code
runs it with `torch.optim.Adam`), per slot: each image has its own moments and step count, reset when it arrives."""

from __future__ import annotations

import torch


class TanhAdam:
    """Adam ascent of the objective in w, x_adv = tanh(w) in [-1, 1] (betas 0.9, 0.999 and eps 1e-8, Adam's defaults)."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.w = self.m = self.v = self.t = None

    def start(self, x_adv: torch.Tensor, index: torch.Tensor) -> None:
        """New images in slots `index` start at w = 0 (mid-grey, as published); sets their iterate."""
        if self.w is None or self.w.shape != x_adv.shape:
            self.w, self.m, self.v = (torch.zeros_like(x_adv) for _ in range(3))
            self.t = torch.zeros(len(x_adv), device=x_adv.device)
        for state in (self.w, self.m, self.v, self.t):
            state[index] = 0
        x_adv[index] = torch.tanh(self.w[index])

    @torch.no_grad()
    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, active: torch.Tensor) -> None:
        """One Adam step of the slots in `active` ([B] bool), from the objective's gradient in x_adv."""
        slots = active.nonzero().flatten()
        beta1, beta2 = self.betas
        g = grad[slots] * (1 - torch.tanh(self.w[slots]).pow(2))  # chain rule through x = tanh(w)
        self.t[slots] += 1
        self.m[slots] = beta1 * self.m[slots] + (1 - beta1) * g
        self.v[slots] = beta2 * self.v[slots] + (1 - beta2) * g * g
        shape = (-1, *[1] * (g.dim() - 1))
        m_hat = self.m[slots] / (1 - beta1 ** self.t[slots]).view(shape)
        v_hat = self.v[slots] / (1 - beta2 ** self.t[slots]).view(shape)
        self.w[slots] += self.lr * m_hat / (v_hat.sqrt() + self.eps)
        x_adv[slots] = torch.tanh(self.w[slots])
