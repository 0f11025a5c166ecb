"""Fused GPU kernels of facelock_pl, importable as `facelock_pl.kernels`."""

# From a checkout, the repository root is on sys.path (`python -m ...`), so this folder is also importable
# as a top-level `kernels`, and libraries that probe for the unrelated PyPI `kernels` package import it
# (transformers' `is_kernels_available` does). Loading `pgd_step` a second time would re-register the
# `facelock_pl::pgd_step_` custom op and leave the first registration's handle dangling: later calls
# fail with "INTERNAL ASSERT ... Tried to access the schema" or "vector::reserve". Under any other name
# this package is therefore an empty shell.
if __name__ == "facelock_pl.kernels":
    from .pgd_step import pgd_step_, pgd_step_reference_, triton_available

    __all__ = ["pgd_step_", "pgd_step_reference_", "triton_available"]
