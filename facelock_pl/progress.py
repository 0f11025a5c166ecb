"""A progress bar that counts images, not just PGD steps."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class ImagesProgressBar(TQDMProgressBar):
    """Lightning's bar (one tick per PGD iteration) with `images: done/total` beside it."""

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        total = getattr(trainer.datamodule, "num_pending", None) if trainer.datamodule is not None else None
        done = getattr(pl_module, "images_done", 0)
        metrics["images"] = f"{done}/{total}" if total is not None else str(done)
        return metrics
