"""facelock_pl: FaceLock portrait protection against diffusion editing, as a PyTorch Lightning pipeline."""

from importlib.metadata import version

__version__ = version("facelock_pl")  # pyproject.toml's, the one place it is written
