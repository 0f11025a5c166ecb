"""The recognisers of a protection config, one pass per entry against one pass per shared network.

    python benchmarks/recognizer_passes.py --assets /path/to/bundle --config configs/protect-offline.yaml \
        --rounds 8 --json benchmarks/results/recognizer-passes-cpu.json

A config may list one network behind several crops (`protect-offline.yaml`: facenet CASIA and SFace, three crops
each). `per entry` embeds each entry's crop with its own pass of the network (`FaceRecognizer.embed`); `stacked`
runs each network once on the crops of all its entries (`models.embed_all`, what the loss and evaluation do). Both
on the same image (`--face`, by default a bundle face, at the config's resolution, repeated `--batch` times, MTCNN's geometry), forward
and backward to the image, as one PGD iteration needs. Rounds alternate the order (ABBA); reported: the median time
of each, the median of the per-round speedups, the network passes per iteration, and the largest difference
between the two ways' embeddings. Prints a Markdown table; writes JSON with --json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from facelock_pl.config_files import read_config
from facelock_pl.data.images import load_rgb
from facelock_pl.models import FaceDetector, RecognizerSpec, embed_all, load_recognizers
from facelock_pl.models.recognizers import group_by_network
from facelock_pl.pixels import editor_input, levels_to_pm1, pil_to_levels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import print_table, write_json  # noqa: E402


def per_entry(recognizers, x, thetas) -> list[torch.Tensor]:
    return [r.embed(x, t) for r, t in zip(recognizers, thetas)]


def seconds(way, recognizers, x, thetas) -> float:
    """One forward and backward pass of every entry, timed."""
    image = x.clone().requires_grad_()
    start = time.perf_counter()
    sum(e.sum() for e in way(recognizers, image, thetas)).backward()
    if image.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, required=True, help="the offline bundle")
    parser.add_argument("--config", type=Path, default=Path("configs/protect-offline.yaml"))
    parser.add_argument("--face", type=Path, default=None, help="a face photo (default: the bundle's first face)")
    parser.add_argument("--batch", type=int, default=1, help="images per pass (the config's batch size on a GPU)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds: at least 2, so that each way runs first once")

    config = yaml.safe_load(read_config(args.config, args.assets.resolve()))
    device = torch.device(args.device)
    recognizers = [r.to(device) for r in load_recognizers([RecognizerSpec(**e) for e in config["model"]["recognizers"]])]
    face = args.face or args.assets / "faces/celebahq/036367.jpg"
    levels = editor_input(pil_to_levels(load_rgb(face)), config["data"]["resolution"])[None].to(device)
    geometry = FaceDetector().to(device)(levels)
    if not bool(geometry.found[0]):
        sys.exit(f"no face detected in {face}")
    x = levels_to_pm1(levels).repeat(args.batch, 1, 1, 1)
    geometry = geometry.select([0] * args.batch)
    thetas = [r.theta(geometry, tuple(x.shape[-2:])) for r in recognizers]

    ways = {"per entry": per_entry, "stacked": embed_all}
    with torch.no_grad():
        difference = max(float((a - b).abs().max()) for a, b in zip(*(w(recognizers, x, thetas) for w in ways.values())))
    for way in ways.values():  # warm-up
        seconds(way, recognizers, x, thetas)
    times: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(args.rounds):
        for name in (list(ways) if round_ % 2 == 0 else list(ways)[::-1]):
            times[name].append(seconds(ways[name], recognizers, x, thetas))
    speedups = [a / b for a, b in zip(times["per entry"], times["stacked"])]
    result = {
        "config": str(args.config), "face": face.name, "batch": args.batch, "rounds": args.rounds,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "entries": len(recognizers),
        "passes": {"per entry": len(recognizers), "stacked": len(group_by_network(recognizers))},
        "seconds": times, "median_s": {name: statistics.median(t) for name, t in times.items()},
        "speedup_per_round": speedups, "median_speedup": statistics.median(speedups),
        "max_abs_embedding_difference": difference,
    }
    write_json(args.json, result)
    print_table(f"{args.config}: {len(recognizers)} recogniser entries, forward + backward, batch {args.batch}, "
                f"{args.device}, {args.rounds} rounds (ABBA)",
                ["way", "network passes", "median ms", "median speedup", "max |embedding difference|"],
                [[name, str(result["passes"][name]), f"{result['median_s'][name] * 1e3:.1f}",
                  f"{result['median_speedup']:.2f}x" if name == "stacked" else "1.00x",
                  f"{difference:.1e}" if name == "stacked" else "-"] for name in ways])


if __name__ == "__main__":
    main()
