"""Raw pixels, resized and flattened: a baseline every model should beat, and a fast stand-in in tests."""

from __future__ import annotations

import numpy as np

from labelloop.embed.kinds.base import Embedder, EmbedderKind
from labelloop.errors import UserError


class Pixels(EmbedderKind):
    name = "pixels"
    uses_torch = False
    default_resolution = 32

    def validate(self, config) -> None:
        if config.weights:
            raise UserError("The pixels embedder takes no weights file.")

    def embedder(self, config):
        resolution = config.resolution or self.resolution(config)

        def embed_batch(images: np.ndarray) -> np.ndarray:
            return images.reshape(len(images), -1).astype(np.float32) / 255.0

        return Embedder(f"pixels-{resolution}px", f"raw pixels at {resolution}x{resolution}", resolution, resolution * resolution * 3, "numpy", embed_batch)


KIND = Pixels()
