"""What every kind of embedder is: the kind's interface, the ready-to-run :class:`Embedder` it builds,
and the helpers kinds share. Kind modules import this, never the registry that lists them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Embedder:
    """A ready-to-run embedder. ``embed_batch`` maps uint8 N x S x S x 3 to float32 N x dim."""

    key: str
    description: str
    resolution: int
    dim: int
    runtime: str
    embed_batch: Callable[[np.ndarray], np.ndarray]
    warnings: list[str] = field(default_factory=list)
    device: str = "cpu"  # where embed_batch runs: "cpu" or "cuda:N" (a GPU gets more decoding processes)



class EmbedderKind:
    name: str
    uses_torch: bool = True  # False: ``embedder`` builds it, no runtime or export is involved
    default_resolution: int = 224

    def validate(self, config) -> None:
        """Raise a UserError for settings this kind does not take (arch, weights)."""

    def resolution(self, config) -> int:
        """The side images are decoded to (shorter side resized, centre square); the model may crop it further."""
        return self.default_resolution

    def crop(self, config) -> int:
        """The side of the centre crop the network sees (the decoded side unless its transforms crop)."""
        return config.resolution or self.resolution(config)

    def weights_name(self, config) -> str | None:
        """The published weights' name as the embedding key records it (None: no published weights)."""
        return config.pretrained

    def published(self, config):
        """The :class:`labelloop.embed.hub.PublishedWeights` the model loads, or None (bundled, a local file, untrained)."""
        return None

    def architecture(self, config):
        """The feature network (float N x 3 x S x S -> features) with random weights, nothing downloaded: for its size and FLOPs."""
        raise NotImplementedError

    def feature_model(self, config):
        """(torch module uint8 NHWC -> features, description, notes for the user)."""
        raise NotImplementedError

    def embedder(self, config):
        raise NotImplementedError


def normalised(features, mean: Sequence[float], std: Sequence[float], *, crop: int | None = None):
    """``features`` behind its input normalisation, taking uint8 N x S x S x 3 images.

    ``crop``: the centre ``crop`` x ``crop`` of the decoded image is what the model sees (the
    published transforms' "resize to 256, crop 224"); None: all of it.
    """
    import torch

    class FeatureModel(torch.nn.Module):
        # Normalisation lives inside the model so every runtime gets raw uint8 pixels.
        def __init__(self):
            super().__init__()
            self.features = features
            std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
            mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
            self.register_buffer("scale", 1.0 / (255.0 * std_t))
            self.register_buffer("shift", -mean_t / std_t)
            self.crop = crop

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            if self.crop is not None and self.crop < images.shape[1]:
                top, left = (images.shape[1] - self.crop) // 2, (images.shape[2] - self.crop) // 2
                images = images[:, top : top + self.crop, left : left + self.crop]
            x = images.permute(0, 3, 1, 2).float() * self.scale + self.shift
            return self.features(x).flatten(1)

    return FeatureModel().eval()


def first_line(exc: BaseException) -> str:
    """The line of an error message that says what went wrong (skipping a bare "...:" heading)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # torch: "Error(s) in loading state_dict for ResNet:" then the keys
        lines = lines[1:]
    return lines[0][:300] if lines else type(exc).__name__
