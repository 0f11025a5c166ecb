"""FLOPs of FaceLock per iteration and per image, counted with `torch.utils.flop_counter` (no timing).

    python benchmarks/flops.py --preset gpu-sd --json benchmarks/results/flops-sd-512.json   # runs on CPU too

One PGD iteration (forward and input gradient) is counted in each regime of the published schedule — only the
encoder term (the first 25% of iterations), + LPIPS (25-35%), every term (from 35%) — on the preset's networks
(gpu-sd: Stable Diffusion's VAE architecture, facenet and LPIPS-VGG at 512 px, random weights: FLOPs do not
depend on the weights), and summed over `--iterations`. Prints a table; writes JSON only with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import PRESETS, image_flops, iteration_flops, module_kwargs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu-sd")
    parser.add_argument("--assets", type=Path, default=None, help="../shared/assets (preset cpu-real)")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from facelock_pl.cli import configure_output
    from facelock_pl.engine import ProtectionModule

    configure_output(verbose=False)
    resolution = PRESETS[args.preset]["resolution"]
    module = ProtectionModule(**module_kwargs(args.preset, args.assets, args.iterations))
    levels = torch.randint(0, 256, (1, 3, resolution, resolution), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    per_iteration = iteration_flops(module, levels)
    per_image = image_flops(per_iteration, args.iterations, args.iterations)
    result = {"preset": args.preset, "resolution": resolution, "iterations": args.iterations,
              "tflop_per_iteration": {k: v / 1e12 for k, v in per_iteration.items()}, "pflop_per_image": per_image / 1e15}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(f"preset {args.preset}, {resolution} px, {args.iterations} iterations (forward + input gradient):")
    for regime, flops in per_iteration.items():
        print(f"  {regime:>13}: {flops / 1e12:8.3f} TFLOP per iteration")
    print(f"  {'per image':>13}: {per_image / 1e15:8.3f} PFLOP")


if __name__ == "__main__":
    main()
