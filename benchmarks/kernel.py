"""Benchmark of the PGD update: fused Triton kernel vs the eager PyTorch sequence vs torch.compile of it.

    python benchmarks/kernel.py [--device cuda|cpu] [--json results/kernel.json] [--sizes 1x3x256x256 ...]

Reports the median time of each implementation, its effective bandwidth (the bytes the fused pass must
move: read x_adv, g, x once, write x_adv once, divided by the time) and that bandwidth as a percentage of
a same-device copy of the same number of bytes, measured in the same run for each size (so caches favour
both alike). On GPU, times come from `triton.testing.do_bench`; on CPU the fused Triton kernel is not run
(it needs a CUDA GPU; the tests run it under TRITON_INTERPRET=1, which says nothing about speed) and the
table says so. Times on CPU are medians of repeated calls. Prints a table; writes JSON only with --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from facelock_pl.kernels import pgd_step_, pgd_step_reference_

DEFAULT_SIZES = ["1x3x256x256", "8x3x512x512", "16x3x512x512", "16x3x1024x1024"]
DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


def median_ms(fn, device: str, repeats: int) -> float:
    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def shape(text: str) -> tuple[int, ...]:
    """`1x3x256x256` -> (1, 3, 256, 256)."""
    try:
        dims = tuple(int(v) for v in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape like 1x3x256x256") from None
    if len(dims) != 4 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want 4 positive sizes, BxCxHxW")
    return dims


def copy_bandwidth_gbs(device: str, nbytes: int, repeats: int) -> float:
    """A same-device copy of `nbytes` bytes (read and write counted), in GB/s."""
    src = torch.rand(max(1, nbytes // 8), device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def bench_size(shape: tuple[int, ...], dtype: torch.dtype, device: str, repeats: int) -> list[dict]:
    gen = torch.Generator(device=device).manual_seed(0)
    x = (torch.rand(shape, device=device, generator=gen) * 2 - 1).to(dtype)
    x_adv = (x.float() + 0.01).clamp(-1, 1)
    g = torch.randn(shape, device=device, generator=gen).to(dtype)
    alpha = torch.full((shape[0],), 0.005, device=device)
    nbytes = x_adv.numel() * (4 + 4 + 2 * DTYPE_BYTES[dtype])
    copy_gbs = copy_bandwidth_gbs(device, nbytes, repeats)
    compiled = torch.compile(pgd_step_reference_)
    candidates = {
        "eager": lambda: pgd_step_reference_(x_adv, g, x, alpha, 0.03),
        "compile": lambda: compiled(x_adv, g, x, alpha, 0.03),
    }
    if device == "cuda":
        candidates = {"fused": lambda: pgd_step_(x_adv, g, x, alpha, 0.03), **candidates}
    rows = []
    for name, fn in candidates.items():
        row = {"impl": name, "shape": "x".join(map(str, shape)), "dtype": str(dtype).replace("torch.", ""), "device": device,
               "copy_gbs": copy_gbs}
        try:
            ms = median_ms(fn, device, repeats)
            gbs = nbytes / (ms * 1e-3) / 1e9
            row.update(ms=ms, gbs=gbs, pct_of_copy=100 * gbs / copy_gbs)
        except Exception as error:  # a backend that cannot run here is reported, not fatal
            row.update(ms=None, gbs=None, pct_of_copy=None, error=f"{type(error).__name__}: {error}"[:200])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", type=shape, default=[shape(s) for s in DEFAULT_SIZES])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5, help="CPU timing repeats")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = parser.parse_args()

    rows = []
    for size in args.sizes:
        for dtype in args.dtypes:
            rows.extend(bench_size(size, getattr(torch, dtype), args.device, args.repeats))

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    triton = "run" if args.device == "cuda" else "not run: the fused Triton kernel needs a CUDA GPU"
    result = {"device": device_name, "torch": torch.__version__, "triton": triton, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))

    print(f"device: {device_name}; fused Triton kernel: {triton}   (x_adv fp32; x, g in the dtype shown; "
          "% copy: of a copy of the same bytes)")
    print(f"{'shape':>16} {'dtype':>9} {'impl':>8} {'median ms':>10} {'GB/s':>8} {'% copy':>7}")
    for r in rows:
        if r["ms"] is None:
            print(f"{r['shape']:>16} {r['dtype']:>9} {r['impl']:>8}   failed: {r['error']}")
        else:
            print(f"{r['shape']:>16} {r['dtype']:>9} {r['impl']:>8} {r['ms']:>10.3f} {r['gbs']:>8.1f} {r['pct_of_copy']:>6.1f}%")
    if args.json:
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
