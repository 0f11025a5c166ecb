"""Frozen networks the protection attacks: VAEs, face detector and recognisers, LPIPS."""

from .faces import FaceDetector, FaceGeometry
from .perceptual import LPIPSDistance, LPIPSSpec, load_lpips
from .recognizers import FaceRecognizer, RecognizerSpec, embed_all, load_recognizer, load_recognizers
from .scorer import FaceScorer
from .vae import FrozenVAE, VAESpec, load_vae
from .weights import WeightsUnavailableError

__all__ = [
    "FaceDetector", "FaceGeometry", "FaceRecognizer", "FaceScorer", "FrozenVAE", "LPIPSDistance", "LPIPSSpec",
    "RecognizerSpec", "VAESpec", "WeightsUnavailableError", "embed_all", "load_lpips", "load_recognizer",
    "load_recognizers", "load_vae",
]
