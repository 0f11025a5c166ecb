"""Throughput: the project's pipeline (the same code path as `fit`) vs the published per-image loop.

    python benchmarks/throughput.py --preset cpu-real --assets ../shared/assets --images 4 --iterations 30 \
        --json benchmarks/results/throughput-cpu-real.json
    python benchmarks/throughput.py --preset cpu-tiny
    python benchmarks/throughput.py --preset gpu-sd            # SD-VAE architecture at 512 px, random weights

Each measurement runs in its own process (clean memory, clean thread pools), on the same models, images,
resolution and iteration count; wall time excludes loading the models (the reference: its per-image loop;
the others: `trainer.fit`, i.e. decoding, clean-image features, PGD, writing PNGs and the manifest, and the
final re-measurement); peak memory is what the timed work needed above what the process already held:
  reference   `benchmarks/reference_loop.py`: batch 1, clean features and every term recomputed each
              iteration, unfused update (the published loop);
  pipeline    `ProtectionModule` + `FaceDataModule` + `lightning.Trainer.fit`, as `fit` runs them, on the
              published algorithm (speed switches only: at equal settings its protection is the reference's);
  quantised   the pipeline with `quantise_forward` (the objective sees the 8-bit image that is saved);
  adaptive    quantised + adaptive stopping with continuous batching (`--stop-below`; its checks read
              `fr_cos_recon` from the forward pass, so they cost nothing).
`--rounds R` repeats the whole comparison R times, reversing the order of the variants every other round
(ABBA), so slow drifts of the machine's speed fall alike on every variant; images/s is then the total over
all rounds and the speedup the median of the per-round ratios (each round's ratios are in the JSON).
Reported: images/s, speedup over the reference, peak memory, achieved TFLOP/s of the pipeline (FLOPs
counted with `torch.utils.flop_counter` per iteration regime) and its share of a matmul peak measured in
the same run (bf16 on GPU, fp32 on CPU), and the per-image final `fr_cos_recon` of every variant, so
speed is never bought with weaker protection unknowingly. JSON plus a printed table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("reference", "pipeline", "quantised", "adaptive")
PRESETS = {
    "cpu-tiny": dict(resolution=64, images=4, iterations=20, batch_size=4, device="cpu"),
    # On 2 CPU cores one image per step is fastest (batched convolutions gain nothing, caches suffer).
    "cpu-real": dict(resolution=256, images=4, iterations=30, batch_size=1, device="cpu"),
    "gpu-sd": dict(resolution=512, images=16, iterations=20, batch_size="auto", device="cuda"),
}


def module_kwargs(preset: str, assets: Path | None, iterations: int) -> dict:
    from facelock_pl.engine import AttackConfig, SpeedConfig
    from facelock_pl.models import LPIPSSpec, RecognizerSpec, VAESpec
    from facelock_pl.objectives import FaceLockObjective

    attack = AttackConfig(iterations=iterations)
    if preset == "cpu-tiny":
        return dict(vae=VAESpec(kind="tiny-random-kl"), recognizers=[RecognizerSpec(kind="tiny-random")],
                    lpips=LPIPSSpec(net="tiny-random"), speed=SpeedConfig(amp_dtype=None), attack=attack)
    if preset == "cpu-real":
        if assets is None:
            raise SystemExit("--preset cpu-real needs --assets DIR (e.g. ../shared/assets)")
        facenet = assets / "fr" / "facenet-casia" / "facenet_casia_webface_20180408_fp16.safetensors"
        return dict(vae=VAESpec(kind="taesd", path=str(assets / "vae" / "taesd"), subfolder=None),
                    recognizers=[RecognizerSpec(kind="facenet", weights=str(facenet), name="facenet-casia")],
                    objective=FaceLockObjective(lpips_weight=0.0), speed=SpeedConfig(amp_dtype=None), attack=attack)
    return dict(vae=VAESpec(kind="random-sd-kl"), recognizers=[RecognizerSpec(kind="random-facenet")],
                lpips=LPIPSSpec(net="random-vgg"), speed=SpeedConfig(amp_dtype="bfloat16"), attack=attack)


def prepare_images(folder: Path, count: int, assets: Path | None) -> None:
    """The first `count` shared CelebA-HQ faces, or rotated face crops of the portraits that scikit-image and
    matplotlib ship (crops, so that MTCNN finds the face even at cpu-tiny's 64 px)."""
    import matplotlib
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    faces = sorted((assets / "faces" / "celebahq").glob("*.jpg")) if assets else []
    portraits = [Image.fromarray(data.astronaut()).crop((120, 0, 380, 260)),
                 Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").crop((60, 60, 460, 460))]
    for i in range(count):
        target = folder / f"face{i:03d}.png"
        if faces:
            Image.open(faces[i % len(faces)]).convert("RGB").save(target)
        else:
            portraits[i % 2].convert("RGB").rotate(3 * (i // 2)).save(target)


class PeakMemory:
    """Memory the work inside the block needed, in MB: on CUDA the peak allocated; on CPU the peak resident
    memory above what the process held when the block began (sampled every 5 ms), so imports and loaded
    models, the same for every variant, do not hide the differences between them."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    @staticmethod
    def _resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._start, self._stop = self._resident_mb(), threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, self._resident_mb() - self._start)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._sampler.join()


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Peak of a large matmul measured here in the dtype the networks run in: 8192^2 on GPU, 2048^2 on CPU."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    repeats = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def iteration_flops(module, levels: torch.Tensor) -> dict[str, float]:
    """FLOPs of one PGD iteration of one image in each regime of FaceLock's schedule."""
    from torch.utils.flop_counter import FlopCounterMode

    from facelock_pl.pixels import levels_to_pm1

    clean = module.attack.clean_features(levels)
    flops = {}
    for name, progress in (("encoder_only", 0.0), ("with_lpips", 0.3), ("all_terms", 0.5)):
        x_in = levels_to_pm1(levels).requires_grad_(True)
        with FlopCounterMode(display=False) as counter, torch.enable_grad(), module.attack.speed.autocast(levels.device):
            objective, _ = module.attack.method.objective(module.nets, x_in, clean, torch.tensor([progress], device=levels.device))
            objective.sum().backward()  # autograd.grad() trips FlopCounterMode's module hooks
        flops[name] = float(counter.get_total_flops())
    return flops


def image_flops(flops: dict[str, float], iterations_run: int, iterations: int) -> float:
    total = 0.0
    for i in range(iterations_run):
        progress = i / iterations
        total += flops["all_terms"] if progress >= 0.35 else flops["with_lpips"] if progress > 0.25 else flops["encoder_only"]
    return total


# ---- phases (each in its own process) -------------------------------------------------------------
def run_reference(args, kwargs: dict, device: torch.device) -> dict:
    from reference_loop import reference_facelock

    from facelock_pl.data import Decoding, FolderImages
    from facelock_pl.engine import ProtectionModule

    module = ProtectionModule(**kwargs).to(device)
    images = FolderImages(args.folder, Decoding(args.resolution))
    rows = []
    lpips_weight = kwargs["objective"].lpips_weight if kwargs.get("objective") else 1.0
    start = time.perf_counter()
    with PeakMemory(device) as memory:
        for i in range(len(images)):
            item = images[i]
            rows.append(reference_facelock(module.nets, module.detector, item.image[None].to(device), item.uid,
                                           iterations=args.iterations, lpips_weight=lpips_weight))
    wall = time.perf_counter() - start
    return {"images": len(rows), "wall_s": wall, "images_per_s": len(rows) / wall, "peak_memory_mb": memory.peak_mb,
            "fr_cos_recon": {r["uid"]: r["fr_cos_recon"] for r in rows},
            "iterations": {r["uid"]: args.iterations for r in rows}}


def run_pipeline(args, kwargs: dict, device: torch.device) -> dict:
    import lightning as L

    from facelock_pl.data import FaceDataModule
    from facelock_pl.engine import ProtectionModule
    from facelock_pl.outputs import read_manifest

    out = Path(args.folder).parent / f"out-{args.phase}"
    module = ProtectionModule(**kwargs, output_dir=str(out))
    data = FaceDataModule(source=args.folder, resolution=args.resolution, batch_size=args.batch_size,
                          num_workers=args.num_workers, output_dir=str(out))
    trainer = L.Trainer(accelerator=device.type, devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    with PeakMemory(device) as memory:
        trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - start
    manifest = read_manifest(out)
    shutil.rmtree(out)
    result = {"images": len(manifest), "wall_s": wall, "images_per_s": len(manifest) / wall,
              "peak_memory_mb": memory.peak_mb, "batch_size": data.batch_size,
              "fr_cos_recon": dict(zip(manifest["uid"], manifest["fr_cos_recon"].astype(float))),
              "iterations": dict(zip(manifest["uid"], manifest["iterations"].astype(int)))}
    # Lightning hands the module back on the CPU after fit: count its FLOPs and the peak where it ran.
    module.to(device)
    levels = data.dataset[0].image[None].to(device)
    flops = iteration_flops(module, levels)
    total = sum(image_flops(flops, n, args.iterations) for n in result["iterations"].values())
    amp_dtype = module.attack.speed.amp_dtype if device.type == "cuda" else None
    result.update(flops_per_iteration=flops, total_tflop=total / 1e12, achieved_tflops=total / wall / 1e12,
                  matmul_peak_tflops=matmul_peak_tflops(device, getattr(torch, amp_dtype or "float32")))
    result["share_of_peak"] = result["achieved_tflops"] / result["matmul_peak_tflops"]
    return result


def phase_main(args) -> None:
    from facelock_pl.cli import configure_output
    from facelock_pl.engine import AdaptiveStopping

    configure_output(verbose=False)
    device = torch.device(args.device)
    kwargs = module_kwargs(args.preset, Path(args.assets) if args.assets else None, args.iterations)
    if args.phase in ("quantised", "adaptive"):
        kwargs["attack"] = dataclasses.replace(kwargs["attack"], quantise_forward=True)
    if args.phase == "adaptive":
        kwargs["stopping"] = AdaptiveStopping(below=args.stop_below, min_iterations=args.min_iterations,
                                              patience=args.stop_patience, check_every=args.stop_check_every)
    result = run_reference(args, kwargs, device) if args.phase == "reference" else run_pipeline(args, kwargs, device)
    groups = [dataclasses.asdict(kwargs[name]) for name in ("attack", "objective", "stopping", "speed") if kwargs.get(name)]
    result["settings"] = {k: v for group in groups for k, v in group.items() if isinstance(v, (int, float, str, bool)) or v is None}
    Path(args.phase_json).write_text(json.dumps(result))


# ---- orchestration ----------------------------------------------------------------------------------
def median(values) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def run_phase(args, name: str, folder: Path, round_index: int) -> dict:
    """One variant in its own process; returns its phase JSON."""
    phase_json = folder.parent / f"{name}-{round_index}.json"
    command = [sys.executable, __file__, "--preset", args.preset, "--phase", name, "--phase-json", str(phase_json),
               "--folder", str(folder), "--resolution", str(args.resolution), "--device", args.device,
               "--images", str(args.images), "--iterations", str(args.iterations), "--batch-size", str(args.batch_size),
               "--num-workers", str(args.num_workers), "--min-iterations", str(args.min_iterations),
               "--stop-patience", str(args.stop_patience), "--stop-check-every", str(args.stop_check_every),
               "--stop-below", str(args.stop_below)]
    command += ["--assets", args.assets] if args.assets else []
    print(f"round {round_index + 1}/{args.rounds}: running {name} ...", flush=True)
    subprocess.run(command, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(phase_json.read_text())


def round_order(variants: list[str], round_index: int) -> list[str]:
    """Every other round reversed, so that a drift of the machine's speed falls alike on every variant."""
    return variants if round_index % 2 == 0 else variants[::-1]


def combine_rounds(rounds: list[dict], variants: list[str]) -> dict:
    """Per variant: the first round's result (per-image values, memory, FLOPs) with images/s over all rounds."""
    results = {}
    for name in variants:
        runs = [r[name] for r in rounds]
        result = dict(runs[0])
        result["wall_s"] = sum(r["wall_s"] for r in runs)
        result["images_per_s"] = sum(r["images"] for r in runs) / result["wall_s"]
        result["images_per_s_per_round"] = [r["images_per_s"] for r in runs]
        result["peak_memory_mb"] = max(r["peak_memory_mb"] for r in runs)
        if "achieved_tflops" in result:
            result["achieved_tflops"] = sum(r["total_tflop"] for r in runs) / result["wall_s"]
            result["share_of_peak"] = result["achieved_tflops"] / result["matmul_peak_tflops"]
        results[name] = result
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-tiny")
    parser.add_argument("--assets", default=None, help="../shared/assets (real weights and faces)")
    parser.add_argument("--images", type=int)
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--batch-size", default=None, help="int or 'auto'")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--variants", default="reference,pipeline,quantised,adaptive",
                        help="comma-separated, run in this order: " + ",".join(VARIANTS))
    parser.add_argument("--stop-below", type=float, default=-0.5, help="adaptive: target fr_cos_recon")
    parser.add_argument("--min-iterations", type=int, default=None, help="adaptive: default 40%% of --iterations")
    parser.add_argument("--stop-patience", type=int, default=2)
    parser.add_argument("--stop-check-every", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the comparison, order reversed every other round")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--phase", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--phase-json", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    preset = PRESETS[args.preset]
    args.images = args.images or preset["images"]
    args.iterations = args.iterations or preset["iterations"]
    args.resolution = args.resolution or preset["resolution"]
    args.device = args.device or preset["device"]
    batch = args.batch_size or preset["batch_size"]
    args.batch_size = batch if batch == "auto" else int(batch)
    args.min_iterations = args.min_iterations or max(1, int(0.4 * args.iterations))
    if args.phase:
        phase_main(args)
        return

    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {VARIANTS}")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="facelock-bench-") as work:  # images and outputs, removed at the end
        folder = Path(work) / "images"
        prepare_images(folder, args.images, Path(args.assets) if args.assets else None)
        for round_index in range(args.rounds):
            rounds.append({name: run_phase(args, name, folder, round_index) for name in round_order(variants, round_index)})
    results = combine_rounds(rounds, variants)
    reference = results.get("reference")
    for name, result in results.items():
        result["median_fr_cos_recon"] = median(result["fr_cos_recon"].values())
        result["mean_iterations"] = statistics.mean(result["iterations"].values())
        if reference and name != "reference":
            result["speedup_per_round"] = [r[name]["images_per_s"] / r["reference"]["images_per_s"] for r in rounds]
            result["speedup"] = statistics.median(result["speedup_per_round"])
            common = [u for u in result["fr_cos_recon"] if reference["fr_cos_recon"].get(u) is not None]
            result["fr_cos_recon_diff_vs_reference"] = {
                u: result["fr_cos_recon"][u] - reference["fr_cos_recon"][u] for u in common}
    summary = {"preset": args.preset, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               "cpu_threads": torch.get_num_threads(), "images": args.images, "iterations": args.iterations,
               "rounds": args.rounds,
               "resolution": args.resolution, **results}
    if "pipeline" in results:
        summary["speedup"] = results["pipeline"].get("speedup")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))

    print(f"\npreset {args.preset} on {summary['device']}: {args.images} images, {args.resolution} px, "
          f"{args.iterations} iterations, {args.rounds} round(s)")
    print(f"{'variant':>10} {'images/s':>9} {'speedup':>8} {'peak MB':>8} {'mean it':>8} {'median fr_cos_recon':>20} "
          f"{'TFLOP/s':>8} {'% peak':>7}")
    for name, r in results.items():
        speed = f"{r['speedup']:.2f}x" if "speedup" in r else "1.00x" if name == "reference" else "-"
        tflops = f"{r['achieved_tflops']:.3f}" if "achieved_tflops" in r else "-"
        share = f"{100 * r['share_of_peak']:.1f}%" if "share_of_peak" in r else "-"
        fr = f"{r['median_fr_cos_recon']:.3f}" if r["median_fr_cos_recon"] is not None else "-"
        print(f"{name:>10} {r['images_per_s']:>9.4f} {speed:>8} {r['peak_memory_mb']:>8.0f} {r['mean_iterations']:>8.1f} "
              f"{fr:>20} {tflops:>8} {share:>7}")
    print("wall time: reference = its per-image loop; the others = `trainer.fit` (decoding, clean-image features, PGD, "
          "writing PNGs and the manifest, the final re-measurement); neither includes loading the models. peak MB: "
          "memory the timed work needed above what the process held before it (CPU: resident memory, sampled).")
    adaptive, pipeline = results.get("adaptive"), results.get("pipeline")
    if adaptive and pipeline and adaptive["images_per_s"] < pipeline["images_per_s"]:
        print(f"adaptive is slower than pipeline here: its images stopped after {adaptive['mean_iterations']:.1f} of "
              f"{args.iterations} iterations on average, too few saved iterations to pay for the quantised forward and "
              "the stopping checks (random or small models rarely reach the target early)")
    if args.json:
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
