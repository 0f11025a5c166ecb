"""Identity targets: other people's faces whose identity FaceLock's FR term may pull the reconstruction towards.

Untargeted FaceLock pushes FR(D(E(x+δ))) away from FR(x) in the loss's recognisers only, and an embedding can move
away from x in directions another recogniser ignores. Pulling it towards a *specific other person* as well (an
impersonation target, as TIP-IM does for identity protection: Yang et al., "Towards Face Encryption by Generating
Adversarial Identity Masks", ICCV 2021) asks for identity features that recognisers share.

`TargetPool` embeds a folder of faces once, with every recogniser of the loss behind its own crop; each protected
image then gets the pool face least like it (the lowest mean cosine over the loss's identity embeddings): the
face least likely to be the same person, chosen by the image alone (not by the batch or the process).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .. import logs
from ..config_files import ConfigError
from ..data.folder import image_files
from ..data.images import BadImageError, load_rgb
from ..models import FaceDetector, FaceRecognizer, embed_all
from ..pixels import levels_to_pm1, resize, working_size

POOL_RESOLUTION = 256  # the longest side the pool faces are embedded at (the working size of the offline configs)


class TargetPool(nn.Module):
    """The embeddings of a folder of target faces, [P, D] per recogniser (non-persistent buffers: they follow the
    module's device and stay out of checkpoints).

    Args:
        embeddings: per recogniser, the pool's embeddings [P, D] (L2-normalised, as `FaceRecognizer` returns them).
        identity: indices of the recognisers whose embeddings decide which face is least alike (not feature layers).
        names: the pool faces' file names, in pool order.
    """

    def __init__(self, embeddings: list[torch.Tensor], identity: list[int], names: list[str]):
        super().__init__()
        for i, e in enumerate(embeddings):
            self.register_buffer(f"embeddings_{i}", e, persistent=False)
        self.count, self.identity, self.names = len(embeddings), identity, names

    @property
    def embeddings(self) -> list[torch.Tensor]:
        return [getattr(self, f"embeddings_{i}") for i in range(self.count)]

    @classmethod
    @torch.no_grad()
    def from_folder(cls, folder: str | Path, recognizers: list[FaceRecognizer], identity: list[int],
                    detector: FaceDetector | None = None) -> "TargetPool":
        """Embed every face of `folder` (recursively; images without a detected face are skipped, and said so)."""
        folder = Path(folder).expanduser()
        detector = detector or FaceDetector()
        names, embeddings, skipped = [], [[] for _ in recognizers], []
        for name in image_files(folder)[0]:
            try:
                image = load_rgb(folder / name)
            except BadImageError as error:
                skipped.append(f"{name} ({error})")
                continue
            levels = resize(image, working_size(*image.size, POOL_RESOLUTION))[None]
            geometry = detector(levels)
            if not bool(geometry.found[0]):
                skipped.append(f"{name} (no face detected)")
                continue
            x = levels_to_pm1(levels)
            thetas = [recognizer.theta(geometry, tuple(x.shape[-2:])) for recognizer in recognizers]
            for store, embedding in zip(embeddings, embed_all(recognizers, x, thetas)):
                store.append(embedding)
            names.append(name)
        if skipped:
            logs.warning(f"facelock_pl: objective.target_faces: skipped {len(skipped)} image(s): {'; '.join(skipped)}")
        if not names:
            raise ConfigError(f"objective.target_faces: no face found in any image of {folder}")
        return cls([torch.cat(store) for store in embeddings], identity, names)

    def choose(self, clean_embeddings: list[torch.Tensor]) -> torch.Tensor:
        """Per image ([B] long), the pool face least like it: the lowest mean cosine over the identity embeddings."""
        similarity = torch.stack([clean_embeddings[i].float() @ self.embeddings[i].float().T for i in self.identity])
        return similarity.mean(0).argmin(1)

    def targets(self, clean_embeddings: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per recogniser, the chosen target's embedding for each image ([B, D])."""
        choice = self.choose(clean_embeddings)
        return [e[choice].to(c.dtype) for e, c in zip(self.embeddings, clean_embeddings)]
