"""The protection engine: one Lightning training step is one PGD iteration."""

from .module import ProtectionModule
from .optimizer import SignPGD

__all__ = ["ProtectionModule", "SignPGD"]
