"""facelock_pl: FaceLock portrait protection against diffusion editing, as a PyTorch Lightning pipeline."""

__version__ = "0.1.0"
