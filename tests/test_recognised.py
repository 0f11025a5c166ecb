"""The manifest's verdict per image: which recognisers of the loss still recognise the face an evaluation would find."""

from __future__ import annotations

import json

import pytest
import torch

from PIL import Image

from conftest import astronaut, grace_hopper, tiny_module_kwargs
from facelock_pl.engine import AdaptiveStopping, ProtectionModule
from facelock_pl.engine.summary import describe
from facelock_pl.models import RecognizerSpec
from facelock_pl.models.recognizers import FaceRecognizer, TinyRandomRecognizerNet
from facelock_pl.models.vae import FrozenVAE, tiny_random_kl
from facelock_pl.objectives import Networks
from facelock_pl.outputs import read_manifest
from facelock_pl.pixels import levels_to_pm1
from test_engine import fit


def networks(*thresholds: float | None) -> Networks:
    entries = [FaceRecognizer(TinyRandomRecognizerNet(i), RecognizerSpec(kind="tiny-random", name=f"r{i}", threshold=t),
                              32, "box") for i, t in enumerate(thresholds)]
    return Networks([FrozenVAE(tiny_random_kl(0), posterior_mean=True)], entries, None)


def test_recognised_by_names_each_entry_at_or_above_its_own_threshold():
    nets = networks(0.3, 0.9)
    cosines = torch.tensor([[0.5, 0.2, 0.3],   # r0 against 0.3
                            [0.1, 0.9, 0.95]])  # r1 against 0.9
    assert nets.calibrated
    assert nets.recognised_by(cosines) == [["r0"], ["r1"], ["r0", "r1"]]
    assert networks(0.3, 0.9).recognised_by(torch.full((2, 1), -1.0)) == [[]]


def test_no_verdict_unless_every_recogniser_has_a_threshold():
    """A verdict from some entries only would read as protection from all of them."""
    nets = networks(0.3, None)
    assert not nets.calibrated
    with pytest.raises(ValueError, match="threshold"):
        nets.recognised_by(torch.zeros(2, 1))


def tiny_pair(first: float | None, second: float | None) -> list[RecognizerSpec]:
    return [RecognizerSpec(kind="tiny-random", name="always", threshold=first),
            RecognizerSpec(kind="tiny-random", name="never", threshold=second)]


def faithful_editor(module: ProtectionModule) -> ProtectionModule:
    """The tiny random VAE's reconstruction holds no face to detect; an editor that returns its input keeps the
    protected face, so the verdict has something to judge."""
    module.attack.meter.reconstruct = lambda png_levels: levels_to_pm1(png_levels).float()
    return module


def test_fit_writes_the_verdict_and_the_summary_counts_it(face_folder, tmp_path):
    """Thresholds of -1 and 1.5 on two entries: every face found anew is recognised by the first entry alone."""
    module = faithful_editor(ProtectionModule(**tiny_module_kwargs(recognizers=tiny_pair(-1.0, 1.5))))
    fit(module, face_folder, tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    found = manifest["fr_cos_recon_detected"].notna()  # MTCNN may miss a face at the tests' 64 px
    judged = int(found.sum())
    assert judged >= 1 and (manifest["status"] == "ok").all()
    assert (manifest.loc[found, "recognised_by"] == "always").all()
    assert manifest.loc[~found, "recognised_by"].isna().all()
    folder = json.loads((tmp_path / "out" / "summary.json").read_text())["folder"]
    assert folder["judged"] == judged and folder["still_recognised"] == judged
    report = describe(module.summary, tmp_path / "out", module.vae_specs[0].name)
    assert f"{judged} of {judged} judged image(s)" in report
    assert f"round trip through the loss's autoencoder ({module.vae_specs[0].name})" in report


def test_no_face_in_the_reconstruction_is_not_judged(face_folder, tmp_path):
    module = ProtectionModule(**tiny_module_kwargs(recognizers=tiny_pair(-1.0, 1.5)))  # tiny VAE: no face survives
    fit(module, face_folder, tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert (manifest["status"] == "ok").all() and manifest["fr_cos_recon_detected"].isna().all()
    assert manifest["recognised_by"].isna().all() and module.summary["folder"]["judged"] == 0


def test_without_every_threshold_nothing_is_judged(face_folder, tmp_path):
    module = faithful_editor(ProtectionModule(**tiny_module_kwargs(recognizers=tiny_pair(-1.0, None))))
    fit(module, face_folder, tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert manifest["fr_cos_recon_detected"].notna().any() and manifest["recognised_by"].isna().all()
    folder = module.summary["folder"]
    assert folder["judged"] == 0 and folder["still_recognised"] == 0
    assert "judged image(s)" not in describe(module.summary, tmp_path / "out")


def test_a_threshold_changes_the_recorded_settings_only_where_the_loss_reads_it(tmp_path):
    """Thresholds added to a config for the verdict resume folders protected without them; under `fr_reduction:
    worst_crop` they shape the loss, so they are recorded and a change is refused."""
    from facelock_pl.config_files import ConfigError
    from facelock_pl.outputs.settings import keep_settings

    def settings(thresholds, **objective):
        return ProtectionModule(**tiny_module_kwargs(recognizers=tiny_pair(*thresholds), **objective)).protection_settings()

    assert settings((None, None)) == settings((0.3, 0.4))
    keep_settings(tmp_path / "mean", settings((None, None)), write=True)
    keep_settings(tmp_path / "mean", settings((0.3, 0.4)), write=True)  # resumes: no error

    worst = settings((0.3, 0.4), fr_reduction="worst_crop")
    assert [r["threshold"] for r in worst["recognizers"]] == [0.3, 0.4]
    keep_settings(tmp_path / "worst", worst, write=True)
    with pytest.raises(ConfigError, match="recognizers differs;"):
        keep_settings(tmp_path / "worst", settings((0.3, 0.5), fr_reduction="worst_crop"), write=True)


def test_judges_outside_the_loss_join_the_verdict_and_never_change_the_protection(face_folder, tmp_path):
    """A judge that always matches is named after the loss's entries; one that never matches is not. The protected
    images are the same bytes with and without judges: they only read the result."""
    judges = [RecognizerSpec(kind="tiny-random", name="judge-yes", threshold=-1.0),
              RecognizerSpec(kind="tiny-random", name="judge-no", threshold=1.5)]
    judged = faithful_editor(ProtectionModule(**tiny_module_kwargs(recognizers=tiny_pair(-1.0, 1.5), judges=judges)))
    fit(judged, face_folder, tmp_path / "judged")
    manifest = read_manifest(tmp_path / "judged")
    found = manifest["fr_cos_recon_detected"].notna()
    assert found.sum() >= 1 and (manifest.loc[found, "recognised_by"] == "always,judge-yes").all()
    assert judged.protection_settings() == ProtectionModule(**tiny_module_kwargs(recognizers=tiny_pair(-1.0, 1.5))).protection_settings()

    plain = faithful_editor(ProtectionModule(**tiny_module_kwargs(recognizers=tiny_pair(-1.0, 1.5))))
    fit(plain, face_folder, tmp_path / "plain")
    for uid in manifest["uid"]:
        png = f"images/{uid}.png"
        assert (tmp_path / "judged" / png).read_bytes() == (tmp_path / "plain" / png).read_bytes()
    assert (read_manifest(tmp_path / "plain").loc[found, "recognised_by"] == "always").all()


def test_a_judge_scores_as_the_evaluation_scores():
    """`FaceScorer.recognised_by` names an entry exactly where the cosine `embed` gives reaches its threshold."""
    from conftest import astronaut
    from facelock_pl.models import FaceScorer
    from facelock_pl.pixels import pil_to_levels

    face = pil_to_levels(astronaut().resize((128, 128)))[None]
    shifted = torch.roll(face, shifts=(3, 2), dims=(2, 3))
    scorer = FaceScorer([RecognizerSpec(kind="tiny-random", name="t", threshold=0.0)])
    _, [a] = scorer.embed(face)
    _, [b] = scorer.embed(shifted)
    cosine = float((a * b).sum())
    for threshold, named in ((cosine - 1e-4, ["t"]), (cosine + 1e-4, [])):
        scorer.thresholds = [threshold]
        assert scorer.recognised_by(face, shifted) == named
    noise = torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert scorer.recognised_by(face, noise) is None and scorer.recognised_by(noise, face) is None  # no face: no verdict


@pytest.mark.parametrize(("judge", "loss_thresholds", "message"), [
    (RecognizerSpec(kind="tiny-random", name="j"), (-1.0, 1.5), "judge 'j' needs a calibrated `threshold`"),
    (RecognizerSpec(kind="tiny-random", name="j", threshold=0.3, feature_layer="conv"), (-1.0, 1.5), "no feature_layer"),
    (RecognizerSpec(kind="dlib", name="j", threshold=0.9), (-1.0, 1.5), "reserved to judge transfer in `evaluate`"),
    (RecognizerSpec(kind="tiny-random", name="j", threshold=0.3), (-1.0, None), "every recogniser of the loss"),
])
def test_judges_that_cannot_give_a_verdict_are_refused(judge, loss_thresholds, message, monkeypatch):
    from facelock_pl.engine import module

    monkeypatch.setattr(module, "load_networks", lambda *args: pytest.fail("networks loaded before the judges were checked"))
    with pytest.raises(ValueError, match=message):
        ProtectionModule(**tiny_module_kwargs(recognizers=tiny_pair(*loss_thresholds), judges=[judge]))


def test_protect_offline_judges_as_the_evaluation_judges():
    """The recipe's verdict is the evaluation's: each entry of its loss and each judge carries the threshold and crop of
    the `evaluate-crops.yaml` entry of the same name, and no judge is a network of the loss."""
    import yaml

    from conftest import ROOT

    def by_name(entries):
        return {r["name"]: {k: r.get(k) for k in ("weights", "threshold", "alignment", "margin")} for r in entries}

    evaluation = by_name(yaml.safe_load((ROOT / "configs/evaluate-crops.yaml").read_text())["recognizers"])
    model = yaml.safe_load((ROOT / "configs/protect-offline.yaml").read_text())["model"]
    loss, judges = by_name(model["recognizers"]), by_name(model["judges"])
    assert sorted(judges) == ["w600k-mbf", "w600k-mbf@box0", "w600k-mbf@box40"]
    for name, entry in {**loss, **judges}.items():
        expected = evaluation[name]
        assert entry["threshold"] == expected["threshold"], name
        assert (entry["alignment"] or "native", entry["margin"] or 0) == (expected["alignment"] or "native",
                                                                         expected["margin"] or 0), name
    assert not {j["weights"] for j in judges.values()} & {r["weights"] for r in loss.values()}


def two_people() -> Image.Image:
    pair = Image.new("RGB", (512, 256))
    pair.paste(astronaut().resize((256, 256)), (0, 0))
    pair.paste(grace_hopper().resize((200, 234)), (284, 22))  # her face is the larger of the two
    return pair


def test_a_photo_of_several_people_says_how_many_of_its_faces_are_protected(tmp_path, monkeypatch):
    """The FR term sees one face (the largest) unless `objective.faces` says more: a group photo's other people keep
    their identity, and the manifest, the summary and the terminal say so instead of calling the photo protected."""
    folder = tmp_path / "faces"
    folder.mkdir()
    two_people().save(folder / "pair.png")
    astronaut().resize((256, 256)).save(folder / "single.png")
    module = ProtectionModule(**tiny_module_kwargs(iterations=2))
    fit(module, folder, tmp_path / "out", resolution=256)
    rows = read_manifest(tmp_path / "out").set_index("uid")
    assert rows.loc["pair", "faces_in_photo"] == 2 and rows.loc["single", "faces_in_photo"] == 1
    assert rows.loc["pair", "faces_protected"] == 1 and rows.loc["single", "faces_protected"] == 1
    assert "2 faces in the photo: only the largest is protected against recognition" in rows.loc["pair", "message"]
    assert "faces in the photo" not in rows.loc["single", "message"]
    assert module.summary["folder"]["more_than_one_face"] == 1
    assert module.summary["folder"]["more_faces_than_protected"] == 1
    assert "1 photo(s) show more faces than the FR term protected" in describe(module.summary, tmp_path / "out")

    # Both faces in the term, under adaptive stopping: the term is their mean, so one face can be far below the
    # target while the other is still recognised; each check measures the face that keeps the most identity (an
    # extra pass even under the quantised forward, whose term is the check's value for a single face).
    (folder / "single.png").unlink()  # a single portrait under `faces`: test_faces_n_puts_every_face_...
    both = ProtectionModule(**tiny_module_kwargs(
        iterations=4, faces=2, quantise_forward=True,
        stopping=AdaptiveStopping(below=2.0, patience=1, min_iterations=2, check_every=2)))  # stops at the first check
    measured = []
    worst_face = both.attack.meter.fr_cos_worst_face
    monkeypatch.setattr(both.attack.meter, "fr_cos_worst_face",
                        lambda images, clean: measured.append(clean.other_found.tolist()) or worst_face(images, clean))
    fit(both, folder, tmp_path / "both", resolution=256)
    rows = read_manifest(tmp_path / "both").set_index("uid")
    assert rows.loc["pair", "faces_protected"] == 2 and rows.loc["pair", "iterations"] == 2
    assert measured == [[[True]], [[True]]]  # the check, then the delivered file: both with the second face
    assert "faces in the photo" not in rows.loc["pair", "message"]
    assert both.summary["folder"]["more_faces_than_protected"] == 0
    assert "more faces than" not in describe(both.summary, tmp_path / "both")


def test_faces_n_puts_every_face_of_a_group_photo_in_the_fr_term():
    """`objective.faces 2`: the FR term is the mean of the two faces' cosines, each face cropped where it is, so the
    gradient reaches the second person's face (with one face it never did); a photo of one person is protected
    exactly as with the largest face alone."""
    import dataclasses

    from facelock_pl.pixels import pil_to_levels

    one = ProtectionModule(**tiny_module_kwargs())
    two = ProtectionModule(**tiny_module_kwargs(faces=2))
    levels = pil_to_levels(two_people())[None]
    clean_one, clean_two = one.attack.clean_features(levels), two.attack.clean_features(levels)
    assert clean_one.other_found is None and clean_two.other_found.tolist() == [[True]]
    x = levels_to_pm1(levels).requires_grad_(True)
    fr_one, fr_two = one.nets.fr_terms(x, clean_one)["fr_cos"], two.nets.fr_terms(x, clean_two)["fr_cos"]
    second = dataclasses.replace(clean_two.other_face(0), other_found=None)  # the second face as if it were the only
    assert torch.allclose(fr_two, (fr_one + one.nets.fr_terms(x, second)["fr_cos"]) / 2, atol=1e-6)
    grad_one, = torch.autograd.grad(fr_one.sum(), x)
    grad_two, = torch.autograd.grad(fr_two.sum(), x)
    other_half = (slice(None), slice(None), slice(None), slice(None, 256))  # the astronaut's: the smaller face
    assert grad_one[other_half].abs().sum() == 0 and grad_two[other_half].abs().sum() > 0

    single = pil_to_levels(astronaut().resize((256, 256)))[None]
    clean = two.attack.clean_features(single)
    assert clean.other_found.tolist() == [[False]]
    image = levels_to_pm1(single)
    assert torch.equal(two.nets.fr_terms(image, clean)["fr_cos"],
                       one.nets.fr_terms(image, one.attack.clean_features(single))["fr_cos"])


def test_a_group_photo_is_measured_by_the_face_that_keeps_the_most_identity():
    """With several faces in the term, the manifest's numbers are of the person recognised most, each face detected
    anew in a window around it: a photo whose largest face lost its identity while the other person kept theirs reads
    recognised (measured on the largest face alone it read protected), and protected only when neither is recognised."""
    from facelock_pl.pixels import pil_to_levels

    judge = [RecognizerSpec(kind="tiny-random", name="r", threshold=0.999)]  # same pixels: 1.0; another face: 0.96
    group = faithful_editor(ProtectionModule(**tiny_module_kwargs(faces=2, recognizers=judge)))
    largest = faithful_editor(ProtectionModule(**tiny_module_kwargs(recognizers=judge)))
    photo = two_people()
    source = pil_to_levels(photo)[None]
    hopper_gone = photo.copy()
    hopper_gone.paste(astronaut().resize((200, 234)), (284, 22))  # the largest face now shows another person
    both_gone = hopper_gone.copy()
    both_gone.paste(grace_hopper().resize((256, 256)), (0, 0))

    def measured(module, image, faces):
        clean = module.attack.clean_features(source)
        return module.attack.meter.delivered(pil_to_levels(image), (256, 512), clean, source, faces)

    one_kept = measured(group, hopper_gone, 2)
    assert one_kept.recognised_by == "r" and one_kept.faces_in_photo == 2
    assert one_kept.fr_cos_recon == pytest.approx(1.0, abs=1e-5)  # the astronaut's face, untouched
    assert one_kept.fr_cos_recon_detected == pytest.approx(1.0, abs=1e-5)
    blind = measured(largest, hopper_gone, 1)
    assert blind.recognised_by == "" and blind.fr_cos_recon_detected < 0.99
    neither = measured(group, both_gone, 2)
    assert neither.recognised_by == "" and neither.fr_cos_recon_detected < 0.99 and neither.fr_cos_recon < 0.99


def test_a_photo_that_lies_in_its_file_is_measured_as_it_lies_too_and_the_worse_position_counts():
    """An editor may take a lying photo's file as it is: the manifest reads the round trip of the photo upright and
    as it lies (turned upright to be read) and reports the position that keeps more identity. Here an editor that
    swaps the face for another person's when it gets the photo upright (wider than high) and keeps it when it gets
    the photo as it lies: protected upright, recognised as it lies."""
    from facelock_pl.pixels import pil_to_levels

    judge = [RecognizerSpec(kind="tiny-random", name="r", threshold=0.999)]  # same pixels: 1.0; another face: 0.96
    module = ProtectionModule(**tiny_module_kwargs(recognizers=judge))
    photo = Image.new("RGB", (256, 192), "white")
    photo.paste(grace_hopper().crop((0, 0, 512, 512)).resize((192, 192)), (32, 0))
    other = photo.copy()
    other.paste(astronaut().resize((192, 192)), (32, 0))
    source, swapped = pil_to_levels(photo)[None], levels_to_pm1(pil_to_levels(other)[None]).float()

    def editor(png_levels):
        return swapped if png_levels.shape[-1] > png_levels.shape[-2] else levels_to_pm1(png_levels).float()

    module.attack.meter.reconstruct = editor
    clean = module.attack.clean_features(source)
    upright_only = module.attack.meter.delivered(source[0], (192, 256), clean, source)
    assert upright_only.recognised_by == "" and upright_only.fr_cos_recon_detected < 0.99
    both = module.attack.meter.delivered(source[0], (192, 256), clean, source, stored_turn=3)
    assert both.recognised_by == "r" and both.fr_cos_recon_detected == pytest.approx(1.0, abs=1e-5)
    assert both.fr_cos_recon == upright_only.fr_cos_recon  # the objective's own view: upright


@pytest.mark.parametrize("settings", [dict(realign=True), dict(crop_jitter=0.2)])
def test_faces_n_refuses_what_it_does_not_build_on(settings):
    from facelock_pl.objectives import FaceLockObjective

    with pytest.raises(ValueError, match="objective.faces > 1 protects every face with its clean alignment"):
        FaceLockObjective(faces=3, **settings)
    with pytest.raises(ValueError, match=r"objective.faces is how many faces .* 1 or more \(got 0\)"):
        FaceLockObjective(faces=0)
