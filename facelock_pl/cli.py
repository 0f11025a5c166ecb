"""The command line.

- `python -m facelock_pl fit --config configs/X.yaml`: protect images (a LightningCLI around the engine).
- `python -m facelock_pl edit --config configs/edit-X.yaml`: edit clean and protected sets.
- `python -m facelock_pl evaluate --config configs/evaluate-X.yaml`: score the edits, write the report.

Every config value can be overridden on the command line (`--model.eps 0.02`, `--data.batch_size 4`,
`--trainer.devices 2`); `--print_config` prints the resolved configuration.
"""

from __future__ import annotations

import sys
import warnings

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from .data import FaceDataModule
from .engine import ProtectionModule
from .models import WeightsUnavailableError
from .progress import ImagesProgressBar

TRAINER_DEFAULTS = {
    "max_epochs": 1,  # one pass over the images; each batch is repeated `iterations` times
    "enable_checkpointing": False,  # resuming works per image from the manifest, not from checkpoints
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
}


class FaceLockCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--output_dir", type=str, default="outputs", help="folder for images/, manifest/ and logs")
        parser.link_arguments("output_dir", "model.output_dir")
        parser.link_arguments("output_dir", "data.output_dir")
        parser.link_arguments("output_dir", "trainer.default_root_dir")

    def instantiate_trainer(self, **kwargs):
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config["trainer"]
        callbacks = list(trainer.get("callbacks") or [])
        # The images-counting bar, unless the user turned bars off or brought their own.
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, ImagesProgressBar()]
        return super().instantiate_trainer(**kwargs)


EVALUATION_COMMANDS = ("edit", "evaluate")

# The module's arguments were grouped (attack, objective, stopping, speed); the flat command-line spellings
# users already have keep working: `--model.eps 0.02` is read as `--model.attack.eps 0.02`.
_GROUPED = {
    "attack": ("eps", "step_size", "iterations", "seed", "quantise_forward", "eot", "eot_samples", "grad_smoothing",
               "momentum"),
    "objective": ("fr_weight", "latent_weight", "lpips_weight", "fr_start", "lpips_start", "fr_reduction"),
    "speed": ("amp_dtype", "channels_last", "compile", "checkpoint_decoder"),
}
RENAMED_KEYS = {f"model.{key}": f"model.{group}.{key}" for group, keys in _GROUPED.items() for key in keys}
RENAMED_KEYS.update({"model.stop_below": "model.stopping.below", "model.stop_patience": "model.stopping.patience",
                     "model.stop_check_every": "model.stopping.check_every",
                     "model.min_iterations": "model.stopping.min_iterations"})


def upgrade_keys(args: list[str]) -> list[str]:
    """`--model.<old key>[=value]` -> `--model.<group>.<key>[=value]` (see `RENAMED_KEYS`)."""
    upgraded = []
    for arg in args:
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        upgraded.append(f"--{RENAMED_KEYS[key]}{sep}{value}" if key in RENAMED_KEYS else arg)
    return upgraded

# The frozen networks are in eval mode by design; Lightning's warning about it is noise here.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def _evaluation_cli(args: list[str]) -> None:
    import logging

    from jsonargparse import CLI

    from .evaluation import run_edit, run_evaluate

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    commands = {"edit": run_edit, "evaluate": run_evaluate}
    CLI(commands[args[0]], args=args[1:], as_positional=False)


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    try:
        if args and args[0] in EVALUATION_COMMANDS:
            _evaluation_cli(args)
            return
        FaceLockCLI(
            ProtectionModule,
            FaceDataModule,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=upgrade_keys(args),
        )
    except WeightsUnavailableError as error:
        # Models load before any image is touched: say once, plainly, what is missing and how to fix it.
        print(f"facelock_pl: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main(sys.argv[1:])
