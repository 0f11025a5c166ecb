"""What PGD ascends: objective terms and the protection methods built from them."""

from .methods import (METHODS, CarliniWagnerL2, CWSettings, EncoderAttack, FaceLock, FaceLockObjective, PhotoGuard,
                      ProtectionMethod, VAEAttack, build_method)
from .terms import TERM_NAMES, CleanFeatures, Networks

__all__ = [
    "METHODS", "TERM_NAMES", "CWSettings", "CarliniWagnerL2", "CleanFeatures", "EncoderAttack", "FaceLock",
    "FaceLockObjective", "Networks", "PhotoGuard", "ProtectionMethod", "VAEAttack", "build_method",
]
