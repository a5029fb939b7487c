"""open_clip image towers from a local checkpoint (nothing is downloaded); features are unit length."""

from __future__ import annotations

from pathlib import Path

from core.embed.kinds import EmbedderKind, first_line, normalised
from core.errors import UserError


def _unknown(arch: str) -> UserError:
    import open_clip

    return UserError(f"open_clip does not know the architecture '{arch}'. Known ones include: {', '.join(open_clip.list_models()[:12])}, ...")


class OpenClipModel(EmbedderKind):
    name = "open_clip"

    def validate(self, config) -> None:
        if not config.arch:
            raise UserError("open_clip needs an architecture name (--arch), e.g. ViT-B-32.")
        if not config.weights:
            raise UserError("open_clip needs a local checkpoint file (--weights): no CLIP weights ship with the app.")

    def resolution(self, config) -> int:
        import open_clip

        model_config = open_clip.get_model_config(config.arch)
        if model_config is None:
            raise _unknown(config.arch)
        size = model_config.get("vision_cfg", {}).get("image_size", 224)
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    def feature_model(self, config):
        import open_clip
        import torch

        try:
            model, _, _ = open_clip.create_model_and_transforms(config.arch, pretrained=str(Path(config.weights).expanduser()))
        except RuntimeError as exc:
            if "Unknown model" in str(exc) or "not found" in str(exc).lower():
                raise _unknown(config.arch) from None
            raise UserError(f"{config.weights} is not a checkpoint for open_clip {config.arch}: {first_line(exc)}.") from None
        except Exception as exc:  # unpickling errors, zip errors, ...
            raise UserError(f"Cannot load {config.weights} as an open_clip checkpoint ({type(exc).__name__}: {first_line(exc)}).") from None
        preprocess = open_clip.get_model_preprocess_cfg(model)

        class ClipFeatures(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x):
                # Unit length, as CLIP features are compared by cosine.
                return torch.nn.functional.normalize(self.model.encode_image(x), dim=-1)

        mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
        return normalised(ClipFeatures(), mean, std), f"open_clip {config.arch} ({Path(config.weights).name})", []


KIND = OpenClipModel()
