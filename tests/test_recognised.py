"""The manifest's verdict per image: which recognisers of the loss still recognise the face an evaluation would find."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_module_kwargs
from facelock_pl.engine import ProtectionModule
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
    assert nets.judges
    assert nets.recognised_by(cosines) == [["r0"], ["r1"], ["r0", "r1"]]
    assert networks(0.3, 0.9).recognised_by(torch.full((2, 1), -1.0)) == [[]]


def test_no_verdict_unless_every_recogniser_has_a_threshold():
    """A verdict from some entries only would read as protection from all of them."""
    nets = networks(0.3, None)
    assert not nets.judges
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
    assert f"{judged} of {judged} judged image(s)" in describe(module.summary, tmp_path / "out")


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
    with pytest.raises(ConfigError, match="recognizers differ"):
        keep_settings(tmp_path / "worst", settings((0.3, 0.5), fr_reduction="worst_crop"), write=True)
