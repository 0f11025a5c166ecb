"""Fused GPU kernels of facelock_pl, importable as `facelock_pl.kernels`."""

# From a checkout, the repository root is first on sys.path (`python -m ...`), so this folder is also importable
# as a top-level `kernels` — a name that belongs to Hugging Face's `kernels` distribution on PyPI, which
# transformers imports (a dependency of transformers since 5.25). Under that name this file therefore runs nothing
# of ours: loading `pgd_step` a second time would re-register the `facelock_pl::pgd_step_` custom op and leave the
# first registration's handle dangling (later calls fail with "INTERNAL ASSERT ... Tried to access the schema"),
# and where the PyPI package is installed the name is handed over to it, or every `from kernels import ...` in
# transformers fails from the checkout's root (and with it diffusers' AutoencoderKL).
if __name__ == "facelock_pl.kernels":
    from .pgd_step import pgd_step_, pgd_step_reference_, triton_available

    __all__ = ["pgd_step_", "pgd_step_reference_", "triton_available"]
else:
    import sys
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec
    from pathlib import Path

    _checkout = Path(__file__).resolve().parents[1]
    _elsewhere = [entry for entry in sys.path if Path(entry or ".").resolve() != _checkout]
    _spec = PathFinder.find_spec(__name__, _elsewhere)
    if _spec is not None and _spec.loader is not None:
        _module = module_from_spec(_spec)
        sys.modules[__name__] = _module  # the import statement returns what sys.modules holds once this file ran
        _spec.loader.exec_module(_module)
