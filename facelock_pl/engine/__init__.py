"""The protection engine: one Lightning training step is one PGD iteration."""

from .attack import AttackConfig, PGDAttack
from .module import ProtectionModule
from .optimizer import SignPGD
from .speed import SpeedConfig
from .stopping import AdaptiveStopping
from .strategy import STRATEGY_NAME, ProtectionDDPStrategy

__all__ = ["STRATEGY_NAME", "AdaptiveStopping", "AttackConfig", "PGDAttack", "ProtectionDDPStrategy", "ProtectionModule",
           "SignPGD", "SpeedConfig"]
