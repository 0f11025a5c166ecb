"""The projected sign-gradient update of every PGD iteration, fused.

    x_adv <- clamp( clamp( x_adv + alpha_b * sign(g), x - eps_b, x + eps_b ), lo, hi )

`pgd_step_` is the one entry point the engine calls. On CUDA tensors it runs one Triton kernel
that reads `x_adv`, `g` and `x` once and writes `x_adv` once; elsewhere it runs the same
arithmetic as a PyTorch sequence. `FACELOCK_FORCE_TRITON=1` (with `TRITON_INTERPRET=1` set before
triton is imported) runs the Triton kernel on CPU tensors, which is how the kernel is tested
without a GPU.

Semantics shared by both paths (all arithmetic in fp32):
- `alpha` and `eps` are per sample (shape [B]); `active` ([B] bool) leaves inactive samples
  bit-for-bit unchanged.
- The clamps ignore NaN (fmax/fmin): a NaN in `x_adv` becomes a value inside the ball, never NaN.
"""

from __future__ import annotations

import os

import torch

__all__ = ["pgd_step_", "pgd_step_reference_", "triton_available"]

_OP_NAME = "facelock_pl::pgd_step_"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _force_triton() -> bool:
    return os.environ.get("FACELOCK_FORCE_TRITON", "0") == "1"


try:  # Triton ships with CUDA builds of torch; CPU-only installs may lack it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed torch build
    triton = None


def triton_available() -> bool:
    return triton is not None


if triton is not None:

    def _configs() -> list:
        # The interpreter cannot benchmark several configs ("0 active drivers").
        if _interpreting():
            return [triton.Config({"BLOCK": 1024}, num_warps=4)]
        return [
            triton.Config({"BLOCK": block}, num_warps=warps)
            for block, warps in ((1024, 4), (2048, 4), (4096, 8), (8192, 8))
        ]

    @triton.autotune(
        configs=_configs(),
        key=["n_per_sample"],
        # In place: without restoring x_adv, each tuning trial would apply the update again.
        restore_value=["x_adv_ptr"],
    )
    @triton.jit
    def _pgd_step_kernel(
        x_adv_ptr,
        grad_ptr,
        x_ptr,
        alpha_ptr,
        eps_ptr,
        active_ptr,
        lo,
        hi,
        n_per_sample,
        HAS_ACTIVE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # Axis 0 walks blocks inside a sample (up to 2^31 - 1 of them), axis 1 the samples, so
        # per-sample scalars are loaded once per program instead of divided out per element.
        block = tl.program_id(0).to(tl.int64)
        sample = tl.program_id(1).to(tl.int64)
        inner = block * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        mask = inner < n_per_sample
        if HAS_ACTIVE:
            mask = mask & (tl.load(active_ptr + sample) != 0)
        offsets = sample * n_per_sample + inner

        alpha = tl.load(alpha_ptr + sample)
        eps = tl.load(eps_ptr + sample)
        x_adv = tl.load(x_adv_ptr + offsets, mask=mask)
        g = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
        x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)

        direction = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
        stepped = x_adv + alpha * direction
        # tl.maximum/tl.minimum ignore NaN by default (fmax/fmin), like the PyTorch path.
        projected = tl.minimum(tl.maximum(stepped, x - eps), x + eps)
        clamped = tl.minimum(tl.maximum(projected, lo), hi)
        tl.store(x_adv_ptr + offsets, clamped, mask=mask)


def _per_sample(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0],) + (1,) * (len(shape) - 1)


def _torch_update_(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor,
    eps: torch.Tensor,
    lo: float,
    hi: float,
    active: torch.Tensor | None,
) -> None:
    view = _per_sample(x_adv.shape)
    alpha, eps = alpha.view(view), eps.view(view)
    x32 = x.float()
    stepped = x_adv + alpha * grad.float().sign()
    projected = torch.fmin(torch.fmax(stepped, x32 - eps), x32 + eps)
    clamped = projected.clamp_(lo, hi)  # projected is NaN-free here unless x is
    if active is not None:
        clamped = torch.where(active.view(view), clamped, x_adv)
    x_adv.copy_(clamped)


def _same_layout(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` with the strides of `like` (the kernel indexes all three tensors with one offset)."""
    if t.stride() == like.stride():
        return t
    fmt = torch.channels_last if like.is_contiguous(memory_format=torch.channels_last) and like.dim() == 4 else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


def _triton_update_(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor,
    eps: torch.Tensor,
    lo: float,
    hi: float,
    active: torch.Tensor | None,
) -> None:
    if triton is None:
        raise RuntimeError("Triton is not installed: the fused pgd_step_ kernel cannot run")
    if not x_adv.is_cuda and not _interpreting():
        raise ValueError(f"pgd_step_ (Triton): the kernel runs on CUDA tensors, got {x_adv.device}; on other "
                         "devices unset FACELOCK_FORCE_TRITON, or set TRITON_INTERPRET=1 before triton is imported")
    dense = x_adv.is_contiguous() or (x_adv.dim() == 4 and x_adv.is_contiguous(memory_format=torch.channels_last))
    if not dense:
        raise ValueError("pgd_step_ (Triton): x_adv must be contiguous or channels-last")
    grad, x = _same_layout(grad, x_adv), _same_layout(x, x_adv)
    batch = x_adv.shape[0]
    n_per_sample = x_adv.numel() // max(batch, 1)
    if batch == 0 or n_per_sample == 0:
        return
    active_u8 = active.to(torch.uint8) if active is not None else alpha  # dummy pointer when unused

    def grid(meta):
        return (triton.cdiv(n_per_sample, meta["BLOCK"]), batch)

    _pgd_step_kernel[grid](
        x_adv, grad, x, alpha, eps, active_u8, float(lo), float(hi), n_per_sample,
        HAS_ACTIVE=active is not None,
    )


@torch.library.custom_op(_OP_NAME, mutates_args=("x_adv",))
def _pgd_step_op(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor,
    eps: torch.Tensor,
    lo: float,
    hi: float,
    active: torch.Tensor | None,
) -> None:
    if x_adv.is_cuda or _force_triton():
        _triton_update_(x_adv, grad, x, alpha, eps, lo, hi, active)
    else:
        _torch_update_(x_adv, grad, x, alpha, eps, lo, hi, active)


@_pgd_step_op.register_fake
def _(x_adv, grad, x, alpha, eps, lo, hi, active) -> None:
    return None


def _as_per_sample(value: float | torch.Tensor, batch: int, device: torch.device, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        # Filled on the device: `torch.as_tensor(number, device="cuda")` is a blocking host-to-device copy that
        # drains the GPU's queue on every call (on an H200 the fused update timed ~55 us slower than
        # torch.compile's at every size, which compiles the number into its graph; benchmarks/kernel.py).
        return torch.full((batch,), float(value), dtype=torch.float32, device=device)
    t = value.to(device=device, dtype=torch.float32)
    if t.dim() == 0:
        return t.expand(batch).contiguous()
    if t.shape != (batch,):
        raise ValueError(f"pgd_step_: {name} must be a scalar or have shape [{batch}], got {tuple(t.shape)}")
    return t.contiguous()


def _check(x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> None:
    if x_adv.dtype != torch.float32:
        raise TypeError(f"pgd_step_: x_adv must be float32 (the fp32 master copy), got {x_adv.dtype}")
    for name, t in (("grad", grad), ("x", x)):
        if t.shape != x_adv.shape:
            raise ValueError(f"pgd_step_: {name} has shape {tuple(t.shape)}, x_adv has {tuple(x_adv.shape)}")
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"pgd_step_: {name} must be float32, bfloat16 or float16, got {t.dtype}")
        if t.device != x_adv.device:
            raise ValueError(f"pgd_step_: {name} is on {t.device}, x_adv on {x_adv.device}")


def _prepare(x_adv, grad, x, step_size, eps, active):
    _check(x_adv, grad, x)
    batch = x_adv.shape[0]
    alpha = _as_per_sample(step_size, batch, x_adv.device, "step_size")
    eps_t = _as_per_sample(eps, batch, x_adv.device, "eps")
    if active is not None:
        if active.shape != (batch,):
            raise ValueError(f"pgd_step_: active must have shape [{batch}], got {tuple(active.shape)}")
        active = active.to(device=x_adv.device, dtype=torch.bool)
    return alpha, eps_t, active


def pgd_step_(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    step_size: float | torch.Tensor,
    eps: float | torch.Tensor,
    lo: float = -1.0,
    hi: float = 1.0,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """One projected sign-gradient ascent step, in place on `x_adv`.

    Args:
        x_adv: (B, ...) float32 iterate, updated in place.
        grad: gradient of the objective to *ascend*, same shape (fp32, bf16 or fp16).
        x: the clean images the ε-ball is centred on, same shape (fp32, bf16 or fp16).
        step_size: α, a scalar or a [B] tensor (samples may be at different iterations).
        eps: ε, a scalar or a [B] tensor, in the same units as the pixels.
        lo, hi: the valid pixel range.
        active: optional [B] bool mask; inactive samples are left untouched.

    Returns:
        `x_adv`.

    Example:
        >>> x = torch.rand(2, 3, 8, 8) * 2 - 1
        >>> x_adv = x.clone()
        >>> _ = pgd_step_(x_adv, torch.randn_like(x), x, torch.tensor([0.01, 0.005]), 0.03)
        >>> bool((x_adv - x).abs().max() <= 0.03)
        True
    """
    alpha, eps_t, active = _prepare(x_adv, grad, x, step_size, eps, active)
    _pgd_step_op(x_adv, grad, x, alpha, eps_t, float(lo), float(hi), active)  # one opaque op for torch.compile
    return x_adv


def pgd_step_reference_(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x: torch.Tensor,
    step_size: float | torch.Tensor,
    eps: float | torch.Tensor,
    lo: float = -1.0,
    hi: float = 1.0,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """The unfused PyTorch sequence on any device: the yardstick of tests and benchmarks."""
    alpha, eps_t, active = _prepare(x_adv, grad, x, step_size, eps, active)
    _torch_update_(x_adv, grad, x, alpha, eps_t, float(lo), float(hi), active)
    return x_adv
