"""torchvision architectures with a local state dict (or untrained, with a note saying so)."""

from __future__ import annotations

import pickle
from pathlib import Path

from core.embed.kinds import EmbedderKind, first_line, normalised
from core.errors import UserError

# Architectures and the attribute holding their classifier, which is replaced
# by an identity so the model returns its pooled features.
TORCHVISION_HEADS = {
    "resnet18": "fc",
    "resnet34": "fc",
    "resnet50": "fc",
    "resnet101": "fc",
    "convnext_tiny": "classifier.2",
    "convnext_small": "classifier.2",
    "vit_b_16": "heads",
    "efficientnet_b0": "classifier",
    "mobilenet_v3_large": "classifier",
    "regnet_y_800mf": "fc",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TorchvisionModel(EmbedderKind):
    name = "torchvision"

    def validate(self, config) -> None:
        if config.arch not in TORCHVISION_HEADS:
            raise UserError(f"Unknown torchvision architecture '{config.arch}': use one of {', '.join(TORCHVISION_HEADS)}.")
        if config.arch == "vit_b_16" and config.resolution not in (None, 224):
            raise UserError("vit_b_16 takes 224-pixel inputs only; leave the resolution unset or use 224.")

    def feature_model(self, config):
        import torch
        import torchvision

        notes: list[str] = []
        net = torchvision.models.get_model(config.arch, weights=None)
        if config.weights:
            state = load_state_dict(config.weights)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise UserError(
                    f"{config.weights} is not a checkpoint for torchvision {config.arch}: {first_line(exc)}. "
                    "Give a state dict saved from this architecture."
                ) from None
            description = f"torchvision {config.arch} ({Path(config.weights).name})"
        else:
            description = f"torchvision {config.arch} (untrained)"
            notes.append(
                f"No weights file given: {config.arch} has random weights, so its features are untrained and "
                "say little about the images. Give --weights with a local checkpoint for meaningful features."
            )
        parent, _, attr = TORCHVISION_HEADS[config.arch].rpartition(".")
        holder = net.get_submodule(parent) if parent else net
        if isinstance(holder, torch.nn.Sequential):
            holder[int(attr)] = torch.nn.Identity()
        else:
            setattr(holder, attr, torch.nn.Identity())
        return normalised(net, IMAGENET_MEAN, IMAGENET_STD), description, notes


def load_state_dict(path: str) -> dict:
    """The weights in a torch.save file, never unpickling code; a UserError saying what is wrong otherwise."""
    import torch

    try:
        state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)  # never unpickles code
    except pickle.UnpicklingError:
        raise UserError(
            f"Cannot read {path} as a PyTorch checkpoint of plain weights: it is not a torch.save file, or it holds Python "
            "objects the app will not unpickle (unpickling can run code). Re-save it with torch.save(model.state_dict(), path)."
        ) from None
    except Exception as exc:
        raise UserError(
            f"Cannot read {path} as a PyTorch checkpoint: the file is empty, truncated or not a torch.save file "
            f"({type(exc).__name__}: {first_line(exc)}). Copy it again or point to the right file."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state dict of weights.")
    return state


KIND = TorchvisionModel()
