"""`facelock_ddp`: Lightning's DDP process launch and setup, without wrapping the module.

The protection module has no trainable parameters (the perturbation is per-batch state), so stock DDP
refuses to wrap it ("DistributedDataParallel is not needed when a module doesn't have any parameter
that requires a gradient"), and there are no gradients to all-reduce anyway: every rank protects its
own images. Launchers (Lightning's own, torchrun, SLURM), process groups, barriers and broadcasts are
DDP's.

    trainer:
      strategy: facelock_ddp      # then --trainer.devices 8 --trainer.num_nodes 2
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

STRATEGY_NAME = "facelock_ddp"


class ProtectionDDPStrategy(DDPStrategy):
    """DDP without `DistributedDataParallel`: each rank runs its own PGD on its own images."""

    strategy_name = STRATEGY_NAME

    def configure_ddp(self) -> None:
        # Leave the LightningModule unwrapped: nothing to synchronise, no reducer, no DDP hooks.
        pass


if STRATEGY_NAME not in StrategyRegistry:
    StrategyRegistry.register(
        STRATEGY_NAME,
        ProtectionDDPStrategy,
        description="DDP process launch without wrapping the parameter-free protection module",
        start_method="popen",
    )
