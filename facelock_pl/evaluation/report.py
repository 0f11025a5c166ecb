"""The evaluation report: `report/table.md` (the paper's Table 1 layout), per-image parquet, aggregates,
PNG plots and one self-contained `index.html`."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..outputs import write_bytes_atomic
from ..pixels import png_bytes, read_levels
from .edit import edit_path
from .sets import CLEAN, ImageSet


def metric_columns(fr_names: list[str], frame: pd.DataFrame | None = None) -> list[tuple[str, str, str]]:
    """(column, label, direction that is better for the defence); match rates where thresholds exist."""
    primary, *others = fr_names
    columns = [("psnr", "PSNR", "↓"), ("ssim", "SSIM", "↓"), ("lpips", "LPIPS", "↑"), ("clip_s", "CLIP-S", "↓"),
               ("clip_i", "CLIP-I", "↓"), (f"fr:{primary}", f"FR ({primary})", "↓"), ("fdfr", "FDFR", "↑"),
               *[(f"fr:{name}", f"FR ({name}, transfer)", "↓") for name in others]]
    if frame is not None:
        columns += [(f"match:{n}", f"match ({n})", "↓") for n in fr_names if f"match:{n}" in frame.columns]
    return columns


def aggregate(frame: pd.DataFrame, by: list[str], fr_names: list[str]) -> pd.DataFrame:
    """Mean and std of every metric per group; FDFR is the share of edits without a detected face, a match
    rate the share of edits still recognised as the source person (cosine above the threshold)."""
    frame = frame.assign(fdfr=1.0 - frame["face_found"].astype(float), scope="all")
    columns = [c for c, _, _ in metric_columns(fr_names, frame)]
    grouped = frame.groupby(by or ["scope"], sort=False)
    stats = grouped[columns].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    return stats.assign(n=grouped.size())


def markdown_table(by_set: pd.DataFrame, fr_names: list[str]) -> str:
    columns = [c for c in metric_columns(fr_names) if f"{c[0]}_mean" in by_set.columns]
    columns += [(f"match:{n}", f"match ({n})", "↓") for n in fr_names if f"match:{n}_mean" in by_set.columns]
    header = "| set | " + " | ".join(f"{label} {arrow}" for _, label, arrow in columns) + " | n |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for name, row in by_set.iterrows():
        cells = []
        for column, _, _ in columns:
            mean, std = row[f"{column}_mean"], row[f"{column}_std"]
            cells.append("–" if pd.isna(mean) else f"{mean:.3f} ± {0.0 if pd.isna(std) else std:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {int(row['n'])} |")
    note = ("\nArrows: the direction that is better for the defence. PSNR, SSIM and LPIPS compare edit(set) with "
            "edit(clean); FR is cos(FR(source), FR(edit)) over edits with a detected face; FDFR is the share of edits "
            "where no face was found; a match rate is the share of edits whose face is still recognised as the "
            "source person (a detected face with cosine at or above the recogniser's threshold).\n")
    return "\n".join(lines) + "\n" + note


def _bars(by_set: pd.DataFrame, fr_names: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    columns = [c for c in metric_columns(fr_names) if f"{c[0]}_mean" in by_set.columns]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.0 * len(columns), 3.2))
    for ax, (column, label, arrow) in zip(np.atleast_1d(axes), columns):
        means, stds = by_set[f"{column}_mean"], by_set[f"{column}_std"].fillna(0)
        shown = means.notna().to_numpy()  # a metric without data (e.g. FR when no edit has a face) gets no bar
        ax.bar(np.arange(len(by_set))[shown], means[shown], yerr=stds[shown], capsize=3, color="#4c72b0")
        if not shown.any():
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks(range(len(by_set)), by_set.index, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{label} {arrow}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fr_histogram(frame: pd.DataFrame, column: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, group in frame.groupby("set", sort=False):
        values = group[column].dropna()
        if len(values):
            ax.hist(values, bins=20, range=(-1, 1), histtype="step", linewidth=1.5, label=name)
    ax.set_xlabel(f"{column.replace('fr:', 'FR ')}: cos(source, edit)")
    ax.set_ylabel("edits")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fr_heatmap(frame: pd.DataFrame, column: str, prompts: dict[int, str], path: Path) -> None:
    import matplotlib.pyplot as plt

    table = frame.groupby(["prompt_id", "set"], sort=False)[column].mean().unstack("set")
    fig, ax = plt.subplots(figsize=(3.5 + 1.1 * table.shape[1], 1.5 + 0.3 * table.shape[0]))
    image = ax.imshow(table.to_numpy(dtype=float), vmin=-1, vmax=1, cmap="coolwarm", aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(table.shape[0]), [f"{p}: {prompts[p][:32]}" for p in table.index], fontsize=7)
    fig.colorbar(image, ax=ax, label=f"mean {column}")
    if table.isna().all().all():
        ax.text(0.5, 0.5, "no edit with a detected face", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(rows: list[list[torch.Tensor]]) -> bytes:
    """A PNG of uint8 [3, H, W] tiles, row by row."""
    return png_bytes(torch.cat([torch.cat(row, dim=2) for row in rows], dim=1))


def _sample_grids(out: Path, sets: list[ImageSet], sources: dict, prompts: dict[int, str], samples: int) -> dict[str, bytes]:
    """Per protected set and prompt: rows of source | protected | edit(clean) | edit(protected)."""
    def load(path: Path):
        return read_levels(path) if path.exists() else None

    grids = {}
    for image_set in sets:
        if image_set.name == CLEAN:
            continue
        for pid in list(prompts)[:3]:
            rows = []
            for uid in sorted(sources)[:samples]:
                protected = image_set.load(uid, sources[uid])
                clean_edit = load(edit_path(out.parent, CLEAN, pid, uid))
                set_edit = load(edit_path(out.parent, image_set.name, pid, uid))
                if protected is not None and clean_edit is not None and set_edit is not None:
                    rows.append([sources[uid], protected, clean_edit, set_edit])
            if rows:
                grids[f"{image_set.name} — prompt {pid}: {prompts[pid]}"] = _grid(rows)
    return grids


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def write_report(frame: pd.DataFrame, out: Path, fr_names: list[str], prompts: dict[int, str], sources: dict,
                 sets: list[ImageSet], samples: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(out / "per_image.parquet", buffer.getvalue())
    by_set = aggregate(frame, ["set"], fr_names)
    by_prompt = aggregate(frame, ["set", "prompt_id"], fr_names)
    overall = aggregate(frame, [], fr_names)
    for name, table in (("by_set", by_set), ("by_prompt", by_prompt), ("overall", overall)):
        write_bytes_atomic(out / f"{name}.csv", table.to_csv().encode())
    table_md = markdown_table(by_set, fr_names)
    write_bytes_atomic(out / "table.md", table_md.encode())

    primary = f"fr:{fr_names[0]}"
    _bars(by_set, fr_names, out / "metrics.png")
    _fr_histogram(frame, primary, out / "fr_histogram.png")
    _fr_heatmap(frame, primary, prompts, out / "fr_heatmap.png")
    grids = _sample_grids(out, sets, sources, prompts, samples)

    plots = "".join(f'<h3>{html.escape(title)}</h3><img src="{_data_uri((out / name).read_bytes())}">'
                    for title, name in (("Metrics per set (mean ± std)", "metrics.png"),
                                        ("FR distribution per set", "fr_histogram.png"),
                                        ("Mean FR per prompt and set", "fr_heatmap.png")))
    samples_html = "".join(f'<h3>{html.escape(title)}</h3><p>source | protected | edit of clean | edit of protected</p>'
                           f'<img src="{_data_uri(data)}">' for title, data in grids.items())
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>facelock_pl evaluation</title><style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%}</style></head><body>"
        f"<h1>facelock_pl evaluation</h1><p>{len(frame)} scored edits, {frame['uid'].nunique()} images, "
        f"{frame['prompt_id'].nunique()} prompts, sets: {html.escape(', '.join(frame['set'].unique()))}.</p>"
        f"<h2>Table</h2>{_markdown_to_html(table_md)}<h2>Plots</h2>{plots}<h2>Samples</h2>{samples_html}"
        f"<h2>Prompts</h2><pre>{html.escape(json.dumps(prompts, indent=1, ensure_ascii=False))}</pre></body></html>"
    )
    write_bytes_atomic(out / "index.html", page.encode())


def _markdown_to_html(table_md: str) -> str:
    lines = [line for line in table_md.splitlines() if line.startswith("|") and not line.startswith("|---")]
    cells = [[html.escape(c.strip()) for c in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{c}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
    return f"<table><tr>{head}</tr>{body}</table>"
