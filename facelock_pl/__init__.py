"""facelock_pl: FaceLock portrait protection against diffusion editing, as a PyTorch Lightning pipeline."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facelock_pl")  # pyproject.toml's, the one place it is written
except PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
    __version__ = "unknown (not installed)"
