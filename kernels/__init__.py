"""Fused GPU kernels of facelock_pl, importable as `facelock_pl.kernels`."""

from .pgd_step import pgd_step_, pgd_step_reference_, triton_available

__all__ = ["pgd_step_", "pgd_step_reference_", "triton_available"]
