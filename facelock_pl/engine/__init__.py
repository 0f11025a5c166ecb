"""The protection engine: one Lightning training step is one PGD iteration."""

from .module import ProtectionModule
from .optimizer import SignPGD
from .strategy import STRATEGY_NAME, ProtectionDDPStrategy

__all__ = ["STRATEGY_NAME", "ProtectionDDPStrategy", "ProtectionModule", "SignPGD"]
