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

import os
import traceback

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

STRATEGY_NAME = "facelock_ddp"


class ProtectionDDPStrategy(DDPStrategy):
    """DDP without `DistributedDataParallel`: each rank runs its own PGD on its own images."""

    strategy_name = STRATEGY_NAME

    def configure_ddp(self) -> None:
        # Leave the LightningModule unwrapped: nothing to synchronise, no reducer, no DDP hooks.
        pass


def peer_stopped(error: BaseException, world_size: int) -> bool:
    """Whether `error` is a collective that failed in a run of several processes. A process that stops on an error
    it reports (its output folder gone, a full disk) or crashes leaves the others in the next collective (the stop
    vote, the summary's gather), which fails with gloo's "Connection closed by peer" (a RuntimeError) or NCCL's
    `DistBackendError`: their tracebacks would bury the message that says why the run stopped."""
    if world_size < 2:
        return False
    if isinstance(error, dist.DistError):
        return True
    inside = f"torch{os.sep}distributed{os.sep}"
    return any(inside in frame.filename for frame in traceback.extract_tb(error.__traceback__))


def close_process_group() -> None:
    """Shut the process group down once every rank is done, while Python still runs.

    Lightning destroys the group at exit for NCCL only; a gloo group left to the interpreter's exit is torn
    down with its transport threads still running, and now and then that aborts the process (SIGABRT, "Fatal
    Python error: Aborted" with no Python frame) after every image was written.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank closes its connections while another still uses them
        dist.destroy_process_group()


if STRATEGY_NAME not in StrategyRegistry:
    StrategyRegistry.register(
        STRATEGY_NAME,
        ProtectionDDPStrategy,
        description="DDP process launch without wrapping the parameter-free protection module",
        start_method="popen",
    )
