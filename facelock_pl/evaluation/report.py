"""The evaluation report: `report/table.md` (the paper's Table 1 layout), per-image parquet, aggregates,
PNG plots and one self-contained `index.html`.

Each protected set is shown with the settings it was made with (its `protection.json`), and every
recogniser's columns say, per set, whether that recogniser was in the set's loss ("in loss") or never seen
by it: protection against an unseen recogniser is the claim that matters. Metrics without data (CLIP or
LPIPS switched off) and prompt-only views of prompt-free edits (the autoencoder round trip) are left out.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..models import RecognizerSpec
from ..outputs import write_bytes_atomic
from ..pixels import png_bytes, read_levels
from .edit import edit_path
from .rates import by_worst, judges, wilson_95
from .sets import CLEAN, ImageSet

LEGEND = ("Arrows: the direction that is better for the defence. PSNR, SSIM and LPIPS compare edit(set) with edit(clean); "
          "CLIP-S is the directional CLIP similarity of the edit to its prompt, CLIP-I the CLIP similarity of edit and "
          "source; FR is cos(FR(source), FR(edit)) over edits with a detected face; FDFR is the share of edits where no "
          "face was found; FR-all, as the published evaluation aggregates it, is over every edit (an edit without a detected "
          "face is scored on the crop where the source's face was); a match rate is the share of edits whose face is still "
          "recognised as the source person (a detected face with cosine at or above the recogniser's threshold). Scores "
          "are the mean ± standard deviation over the edits; FDFR and match rates are in %, with their 95% Wilson interval "
          "over the edits in brackets (16 edits: one edit is about 6 points). \"in loss\": the set was optimised against "
          "that recogniser; every other recogniser is unseen by it.")
NETWORKS_LEGEND = ("By network: a network scored behind several crop conventions recognises a face when any of its crops "
                   "does (its worst crop, as a real pipeline of any of those conventions might be): match rate in % [95% "
                   "Wilson interval] and the mean of its highest cosine over the crops.")


@dataclass
class ReportContext:
    """What the report says besides the numbers: how each set was made, which recognisers scored it, prompts."""

    recognizers: list[RecognizerSpec]
    settings: dict[str, dict | None] = field(default_factory=dict)  # protected set name -> its protection.json
    prompts: dict[int, str] = field(default_factory=dict)
    prompt_free: bool = False  # the edit ignores prompts (autoencoder round trip)
    resolution: int | str = 512  # the editor's working resolution

    def in_loss(self, set_name: str, recognizer: RecognizerSpec) -> bool:
        settings = self.settings.get(set_name.split("+")[0])
        if not settings or settings["method"] != "facelock" or settings["objective"]["fr_weight"] == 0:
            return False
        return any(r["kind"] == recognizer.kind and _same_weights(r["weights"], recognizer.weights)
                   for r in settings["recognizers"])


def _same_weights(a: str, b: str) -> bool:
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def metric_columns(fr_names: list[str], frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(column, label, direction that is better for the defence) of every metric that has data."""
    columns = [("psnr", "PSNR", "↓"), ("ssim", "SSIM", "↓"), ("lpips", "LPIPS", "↑"), ("clip_s", "CLIP-S", "↓"),
               ("clip_i", "CLIP-I", "↓"), ("fdfr", "FDFR", "↑"),
               *[(f"fr:{name}", f"FR ({name})", "↓") for name in fr_names],
               *[(f"fr_all:{name}", f"FR-all ({name})", "↓") for name in fr_names],
               *[(f"match:{name}", f"match ({name})", "↓") for name in fr_names]]
    present = frame.assign(fdfr=0.0)
    return [c for c in columns if c[0] in present.columns and present[c[0]].notna().any()]


def is_rate(column: str) -> bool:
    """A column of 0/1 outcomes whose mean is a share of edits: FDFR and the match rates."""
    return column == "fdfr" or column.startswith("match:")


def worst_columns(frame: pd.DataFrame) -> list[str]:
    """`fr:NAME@worst` and `match:NAME@worst` of each network scored behind several crop conventions."""
    return [c for c in frame.columns if c.endswith("@worst") and c.split(":")[0] in ("fr", "match")]


def aggregate(frame: pd.DataFrame, by: list[str], fr_names: list[str]) -> pd.DataFrame:
    """Mean and std of every metric per group (and of each network's worst crop), and for a rate its 95% Wilson
    interval over the edits it counts (`_low`, `_high`); FDFR is the share of edits without a detected face, a match
    rate the share of edits still recognised as the source person (cosine above the threshold)."""
    frame = frame.assign(fdfr=1.0 - frame["face_found"].astype(float), scope="all")
    columns = [c for c, _, _ in metric_columns(fr_names, frame)] + worst_columns(frame)
    grouped = frame.groupby(by or ["scope"], sort=False)
    stats = grouped[columns].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    counts = grouped[columns].count()
    for column in filter(is_rate, columns):
        bounds = [wilson_95(rate, n) if n else (math.nan, math.nan)
                  for rate, n in zip(stats[f"{column}_mean"], counts[column])]
        stats[f"{column}_low"], stats[f"{column}_high"] = [list(b) for b in zip(*bounds)] or ([], [])
    return stats.assign(n=grouped.size())


def _cell(row: pd.Series, column: str) -> str:
    """`0.420 ± 0.031` for a score, `25% [10–49]` for a rate (its Wilson interval), `–` without data."""
    mean = row[f"{column}_mean"]
    if pd.isna(mean):
        return "–"
    if is_rate(column):
        return f"{100 * mean:.0f}% [{100 * row[f'{column}_low']:.0f}–{100 * row[f'{column}_high']:.0f}]"
    std = row[f"{column}_std"]
    return f"{mean:.3f} ± {0.0 if pd.isna(std) else std:.3f}"


def _marked(cell: str, set_name: str, name: str, specs: dict[str, RecognizerSpec], context: ReportContext) -> str:
    """The cell, marked "(in loss)" where the set was optimised against recogniser `name` (`NAME@worst`: any of its
    crops, all of one network)."""
    recognizer = specs.get(name) or next((s for n, s in specs.items() if n.split("@")[0] == name.split("@")[0]), None)
    return cell + (" (in loss)" if recognizer and context.in_loss(set_name, recognizer) else "")


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"


def markdown_table(by_set: pd.DataFrame, frame: pd.DataFrame, fr_names: list[str], context: ReportContext) -> str:
    columns = metric_columns(fr_names, frame)
    specs = dict(zip(fr_names, context.recognizers))
    rows = []
    for name, row in by_set.iterrows():
        cells = []
        for column, _, _ in columns:
            recognizer = column.split(":", 1)[1] if ":" in column else ""  # PSNR, SSIM, ...: no recogniser
            cells.append(_marked(_cell(row, column), str(name), recognizer, specs, context))
        rows.append([str(name), *cells, str(int(row["n"]))])
    return _markdown(["set", *(f"{label} {arrow}" for _, label, arrow in columns), "n"], rows)


def networks_table(by_set: pd.DataFrame, frame: pd.DataFrame, fr_names: list[str], context: ReportContext) -> str:
    """Each network behind several crop conventions once, by its worst crop: match rate [Wilson] (mean cosine) per
    set; empty when no network is scored behind more than one crop."""
    networks = [name for name in by_worst(judges(frame)) if name.endswith("@worst")]
    if not networks:
        return ""
    specs = dict(zip(fr_names, context.recognizers))
    rows = []
    for set_name, row in by_set.iterrows():
        cells = []
        for name in networks:
            cosine = row[f"fr:{name}_mean"]
            cell = _cell(row, f"match:{name}") + ("" if pd.isna(cosine) else f" (cos {cosine:.2f})")
            cells.append(_marked(cell, str(set_name), name, specs, context))
        rows.append([str(set_name), *cells, str(int(row["n"]))])
    return _markdown(["set", *(f"{n.removesuffix('@worst')}, worst of its crops ↓" for n in networks), "n"], rows)


def match_summary(by_set: pd.DataFrame, frame: pd.DataFrame, fr_names: list[str], context: ReportContext) -> list[str]:
    """The verdict in a few lines for the terminal: per set, each judge's match rate [95% Wilson interval] (a network
    behind several crops by its worst), marked where the set was optimised against it; none without thresholds."""
    names = by_worst(judges(frame))
    if not names:
        return []
    specs = dict(zip(fr_names, context.recognizers))
    header = ["set", *(n.replace("@worst", " (worst crop)") for n in names)]
    rows = [[str(set_name), *(_marked(_cell(row, f"match:{n}"), str(set_name), n, specs, context) for n in names)]
            for set_name, row in by_set.iterrows()]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    return ["match rate of the face detected anew in the edit [95% Wilson interval]:"] + [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *rows]]


def still_recognised(frame: pd.DataFrame) -> pd.DataFrame:
    """The edits of protected sets whose face a judge still recognises (a network behind several crops by its worst):
    `set`, `prompt_id`, `uid`, `recognised_by` (the judges, comma-separated) — the photos a user may protect again,
    e.g. at a larger budget. Empty without thresholds."""
    names = by_worst(judges(frame))
    protected = frame[frame["set"] != CLEAN]
    matched = protected[[f"match:{n}" for n in names]].eq(1.0).to_numpy()
    hits = matched.any(axis=1) if names else np.zeros(len(protected), dtype=bool)
    recognised_by = [",".join(n.removesuffix("@worst") for n, hit in zip(names, row) if hit) for row in matched[hits]]
    return protected.loc[hits, ["set", "prompt_id", "uid"]].assign(recognised_by=recognised_by).reset_index(drop=True)


def _bars(by_set: pd.DataFrame, frame: pd.DataFrame, fr_names: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    columns = metric_columns(fr_names, frame)
    per_row = 4
    rows = -(-len(columns) // per_row)
    crowded = len(by_set) > 6  # long set lists (methods, budgets, purifications): upright labels, a taller figure
    fig, axes = plt.subplots(rows, per_row, figsize=(4.2 * per_row, (4.6 if crowded else 3.6) * rows), squeeze=False)
    for ax in axes.flat[len(columns):]:
        ax.axis("off")
    for ax, (column, label, arrow) in zip(axes.flat, columns):
        means = by_set[f"{column}_mean"]
        shown = means.notna().to_numpy()
        if is_rate(column):  # the Wilson interval: asymmetric, inside [0, 1], not empty at 0 or 1
            errors = np.stack([means - by_set[f"{column}_low"], by_set[f"{column}_high"] - means])[:, shown]
            ax.set_ylim(0, 1.05)
        else:
            errors = by_set[f"{column}_std"].fillna(0)[shown]
        ax.bar(np.arange(len(by_set))[shown], means[shown], yerr=errors, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(by_set)), by_set.index, rotation=90 if crowded else 30,
                      ha="center" if crowded else "right", fontsize=8 if crowded else 10)
        ax.set_title(f"{label} {arrow}", fontsize=12)
        ax.tick_params(axis="y", labelsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fr_histograms(frame: pd.DataFrame, fr_names: list[str], specs: dict[str, RecognizerSpec], path: Path) -> list[str]:
    """FR per set, one panel per network (behind several crops: its worst), the sets side by side in each bin so that
    equal distributions stay visible, and a recogniser's same-person threshold as a dashed line; the first 12 networks
    with data. Returns the names drawn (none: no file)."""
    import matplotlib.pyplot as plt

    worst = [c.removeprefix("fr:") for c in worst_columns(frame) if c.startswith("fr:")]
    names = [n for n in by_worst(fr_names + worst) if frame[f"fr:{n}"].notna().any()][:12]
    if not names:
        return []
    per_row = min(2, len(names))
    rows = -(-len(names) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(7.5 * per_row, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    sets = list(frame["set"].unique())
    for ax, name in zip(axes.flat, names):
        values = [frame.loc[frame["set"] == s, f"fr:{name}"].dropna().to_numpy() for s in sets]
        ax.hist(values, bins=20, range=(-1, 1), histtype="bar", label=sets)
        threshold = specs[name].threshold if name in specs else None
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        title = f"{name.removesuffix('@worst')}, worst of its crops" if name.endswith("@worst") else name
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("FR: cos(source, edit)", fontsize=10)
        ax.set_ylabel("edits", fontsize=10)
    axes.flat[0].legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return names


def _fr_heatmap(frame: pd.DataFrame, column: str, prompts: dict[int, str], path: Path) -> None:
    import matplotlib.pyplot as plt

    table = frame.groupby(["prompt_id", "set"], sort=False)[column].mean().unstack("set")
    fig, ax = plt.subplots(figsize=(5 + 1.4 * table.shape[1], 2 + 0.4 * table.shape[0]))
    image = ax.imshow(table.to_numpy(dtype=float), vmin=-1, vmax=1, cmap="coolwarm", aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right", fontsize=10)
    ax.set_yticks(range(table.shape[0]), [f"{p}: {prompts[p][:40]}" for p in table.index], fontsize=10)
    fig.colorbar(image, ax=ax, label=f"mean {column}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


BUDGET_SET = re.compile(r"^(?P<name>.+)@eps(?P<eps>[0-9.e-]+)$")  # a set of a budget sweep (purification-free)


def _budget_plot(by_set: pd.DataFrame, fr_names: list[str], path: Path) -> bool:
    """Mean FR of every recogniser against ε for each swept set (`<name>@eps<ε>`); False if there is none."""
    import matplotlib.pyplot as plt

    points = [(m["name"], float(m["eps"]), name) for name in by_set.index if (m := BUDGET_SET.match(str(name)))]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for base in sorted({p[0] for p in points}):
        budgets = sorted((eps, name) for b, eps, name in points if b == base)
        for recognizer in fr_names:
            column = f"fr:{recognizer}_mean"
            means = by_set.loc[[name for _, name in budgets], column] if column in by_set else None
            if means is not None and means.notna().any():
                ax.plot([eps for eps, _ in budgets], means.to_numpy(), marker="o", label=f"{base}: {recognizer}")
    ax.set_xlabel("ε ([-1, 1] units; 0.03 ≈ 3.8/255)", fontsize=12)
    ax.set_ylabel("mean FR: cos(source, edit)", fontsize=12)
    ax.legend(fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _grid(rows: list[list[torch.Tensor]]) -> bytes:
    """A PNG of uint8 [3, H, W] tiles, row by row (rows of narrower images padded with white)."""
    lines = [torch.cat(row, dim=2) for row in rows]
    width = max(line.shape[-1] for line in lines)
    return png_bytes(torch.cat([torch.nn.functional.pad(line, (0, width - line.shape[-1]), value=255) for line in lines], dim=1))


def _sample_grids(out: Path, sets: list[ImageSet], sources: dict, context: ReportContext, samples: int) -> dict[str, bytes]:
    """Per protected set and prompt: rows of source | protected | edit(clean) | edit(protected)."""
    def load(path: Path):
        return read_levels(path) if path.exists() else None

    grids = {}
    for image_set in sets:
        if image_set.name == CLEAN:
            continue
        for pid in list(context.prompts)[: 1 if context.prompt_free else 3]:
            rows = []
            for uid in sorted(sources)[:samples]:
                protected = image_set.load(uid, sources[uid], context.resolution)
                clean_edit = load(edit_path(out.parent, CLEAN, pid, uid))
                set_edit = load(edit_path(out.parent, image_set.name, pid, uid))
                if protected is not None and clean_edit is not None and set_edit is not None:
                    rows.append([sources[uid], protected, clean_edit, set_edit])
            if rows:
                title = image_set.name if context.prompt_free else f"{image_set.name} — prompt {pid}: {context.prompts[pid]}"
                grids[title] = _grid(rows)
    return grids


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _settings_rows(context: ReportContext) -> list[list[str]]:
    rows = []
    for name, settings in context.settings.items():
        if settings is None:
            rows.append([name, "unknown (no protection.json next to the images)", "", "", "", "", ""])
            continue
        attack, objective = settings["attack"], settings["objective"]
        fr_term = settings["method"] == "facelock" and objective["fr_weight"] != 0
        in_loss = [r.get("name") or r["kind"] for r in settings["recognizers"]] if fr_term else []
        extras = [k for k in ("quantise_forward", "fill_budget", "eot") if attack.get(k)]
        rows.append([name, settings["method"] + (f" (+ {', '.join(extras)})" if extras else ""),
                     f"{attack['eps']} ({attack['eps'] * 127.5:.1f}/255)", str(attack["iterations"]),
                     _working_image(settings.get("data")), ", ".join(in_loss) or "none",
                     ", ".join(v.get("name") or v["kind"] for v in settings["vae"])])
    return rows


def _working_image(data: dict | None) -> str:
    """`256 px`, `native`, `256 px, faces (margin 0.5)`; `not recorded` for folders of earlier versions."""
    if data is None:
        return "not recorded"
    size = "native" if data["resolution"] == "native" else f"{data['resolution']} px"
    return size + (f", faces (margin {data['face_margin']})" if data["region"] == "faces" else "")


def write_report(frame: pd.DataFrame, out: Path, fr_names: list[str], sources: dict, sets: list[ImageSet], samples: int,
                 context: ReportContext) -> list[str]:
    """Write the report's files into `out`; returns the match rates in a few lines for the terminal."""
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(out / "per_image.parquet", buffer.getvalue())
    by_set = aggregate(frame, ["set"], fr_names)
    tables = {"by_set": by_set, "overall": aggregate(frame, [], fr_names)}
    if not context.prompt_free:
        tables["by_prompt"] = aggregate(frame, ["set", "prompt_id"], fr_names)
    for name, table in tables.items():
        write_bytes_atomic(out / f"{name}.csv", table.to_csv().encode())
    results = markdown_table(by_set, frame, fr_names, context)
    networks = networks_table(by_set, frame, fr_names, context)
    shown = {"Results": results, **({"By network, each by its worst crop": networks} if networks else {})}
    legend = LEGEND + (" " + NETWORKS_LEGEND if networks else "")
    table_md = "\n".join(table if title == "Results" else f"{title}:\n\n{table}" for title, table in shown.items())
    write_bytes_atomic(out / "table.md", f"{table_md}\n{legend}\n".encode())

    plots = {"Metrics per set (mean ± std; rates with their 95% Wilson interval)": "metrics.png"}
    _bars(by_set, frame, fr_names, out / "metrics.png")
    if _budget_plot(by_set, fr_names, out / "fr_vs_eps.png"):
        plots["FR against the budget ε"] = "fr_vs_eps.png"
    if _fr_histograms(frame, fr_names, dict(zip(fr_names, context.recognizers)), out / "fr_histogram.png"):
        plots["FR per set, each network, with its same-person threshold"] = "fr_histogram.png"
    primary = next((f"fr:{n}" for n in fr_names if frame[f"fr:{n}"].notna().any()), None)
    if primary is not None and not context.prompt_free and frame["prompt_id"].nunique() > 1:
        plots[f"{primary[3:]}: mean FR per prompt and set"] = "fr_heatmap.png"
        _fr_heatmap(frame, primary, context.prompts, out / "fr_heatmap.png")
    recognised = still_recognised(frame)
    write_bytes_atomic(out / "still_recognised.csv", recognised.to_csv(index=False).encode())
    page = _page(frame, shown, legend, recognised, plots, out, sets, sources, samples, context)
    write_bytes_atomic(out / "index.html", page.encode())
    protected_edits = int((frame["set"] != CLEAN).sum())
    return match_summary(by_set, frame, fr_names, context) + (
        [f"{len(recognised)} of {protected_edits} edits of protected sets still recognised by a judge; "
         f"{out / 'still_recognised.csv'} names them"] if judges(frame) and protected_edits else [])


def _page(frame, tables, legend, recognised, plots, out, sets, sources, samples, context) -> str:
    results = ""
    for title, table in tables.items():
        lines = [line for line in table.splitlines() if line.startswith("|") and not line.startswith("|---")]
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        results += f"<h2>{html.escape(title)}</h2>{_html_table(cells[0], cells[1:])}"
    results += f"<p class='legend'>{html.escape(legend)}</p>"
    if judges(frame):
        columns = ["set", "uid", "recognised_by"] if context.prompt_free else ["set", "prompt_id", "uid", "recognised_by"]
        shown = recognised[columns].head(100)
        results += (f"<h2>Still recognised</h2><p>{len(recognised)} edit(s) of protected sets whose face a judge still "
                    f"recognises (a network behind several crops by its worst){'; the first 100' if len(recognised) > 100 else ''}; "
                    "all in <code>still_recognised.csv</code>.</p>" + _html_table(columns, shown.values.tolist()))
    images = "".join(f'<h3>{html.escape(title)}</h3><img src="{_data_uri((out / name).read_bytes())}">'
                     for title, name in plots.items())
    grids = "".join(f'<h3>{html.escape(title)}</h3><p>source | protected | edit of clean | edit of protected</p>'
                    f'<img src="{_data_uri(data)}">' for title, data in _sample_grids(out, sets, sources, context, samples).items())
    edit = "the editor's autoencoder round trip (no prompt)" if context.prompt_free else f"{len(context.prompts)} prompt(s)"
    prompts = "" if context.prompt_free else "<h2>Prompts</h2><ol>" + "".join(
        f"<li value='{pid}'>{html.escape(text)}</li>" for pid, text in context.prompts.items()) + "</ol>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>facelock_pl evaluation</title><style>"
        "body{font-family:sans-serif;max-width:1400px;margin:2em auto;font-size:15px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}img{max-width:100%}p.legend{color:#444}</style>"
        f"</head><body><h1>facelock_pl evaluation</h1><p>{len(frame)} scored edits of {frame['uid'].nunique()} images; "
        f"edit: {html.escape(edit)}; sets: {html.escape(', '.join(frame['set'].unique()))}.</p>"
        "<h2>Protected sets</h2>" + _html_table(["set", "method", "ε", "iterations", "working image",
                                                 "recognisers in the loss", "autoencoders"],
                                                _settings_rows(context)) + results +
        f"<h2>Plots</h2>{images}<h2>Samples</h2>{grids}{prompts}</body></html>"
    )
