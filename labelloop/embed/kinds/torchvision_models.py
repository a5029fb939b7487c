"""torchvision classification models by name: published weights by their enum name, a local state dict, or untrained.

``arch`` is any name ``torchvision.models.list_models(module=torchvision.models)``
gives (resnet50, vit_l_16, convnext_tiny, ...). ``pretrained`` is the name of
one of its weights enum's members (``IMAGENET1K_V2``, ``IMAGENET1K_SWAG_E2E_V1``
or ``DEFAULT``, which is resolved to the member it stands for, so the
embedding key does not change meaning when torchvision moves ``DEFAULT``).
With published weights the images go through the weights' own transforms:
shorter side resized to ``resize_size``, centre ``crop_size`` crop, their
mean and std (decoding resamples bicubically whatever the enum's
interpolation). torchvision downloads the file into
``$TORCH_HOME/hub/checkpoints`` (labelloop.embed.hub says so first when it cannot).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from labelloop.embed.hub import PublishedWeights, torch_checkpoints
from labelloop.embed.kinds.base import EmbedderKind, first_line, normalised
from labelloop.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def architectures() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)  # classification models only


def weights_enum(arch: str, name: str):
    """The weights enum member ``name`` of ``arch`` (``DEFAULT`` resolved); a UserError listing the names otherwise."""
    import torchvision

    members = torchvision.models.get_model_weights(arch)
    try:
        return members[name] if name != "DEFAULT" else members.DEFAULT
    except KeyError:
        known = [m for m in members.__members__ if m != "DEFAULT"]
        raise UserError(f"torchvision {arch} has no weights named '{name}': use one of {', '.join(known)} (or DEFAULT).") from None


def remove_classifier(net):
    """``net`` with its last Linear layer (the classifier) replaced by an identity: it returns the penultimate features."""
    import torch

    linears = [name for name, module in net.named_modules() if isinstance(module, torch.nn.Linear)]
    if not linears:
        raise UserError(f"{type(net).__name__} has no linear classifier to remove; pick another architecture.")
    parent, _, attr = linears[-1].rpartition(".")
    holder = net.get_submodule(parent) if parent else net
    setattr(holder, attr, torch.nn.Identity())  # in a Sequential too: its children are named "0", "1", ... or "head"
    return net


class TorchvisionModel(EmbedderKind):
    name = "torchvision"

    def validate(self, config) -> None:
        if config.arch not in architectures():
            raise UserError(f"Unknown torchvision architecture '{config.arch}': use a classification model torchvision lists, "
                            f"e.g. {', '.join(['resnet50', 'vit_l_16', 'convnext_tiny', 'efficientnet_b0', 'regnet_y_800mf'])}.")
        if config.pretrained and config.weights:
            raise UserError("Give published weights by name or a weights file, not both.")
        if config.pretrained:
            weights_enum(config.arch, config.pretrained)
        if config.arch.startswith("vit_") and config.resolution is not None and config.resolution != self._published_crop(config):
            size = self._published_crop(config)
            raise UserError(f"{config.arch} takes {size}-pixel inputs only; leave the resolution unset or use {size}.")

    def weights_name(self, config) -> str | None:
        return weights_enum(config.arch, config.pretrained).name if config.pretrained else None

    def published(self, config) -> PublishedWeights | None:
        if not config.pretrained:
            return None
        member = weights_enum(config.arch, config.pretrained)
        return PublishedWeights(f"torchvision {config.arch} {member.name}", url=member.url, url_cache=torch_checkpoints())

    def _transforms(self, config):
        return weights_enum(config.arch, config.pretrained).transforms() if config.pretrained else None

    def _published_crop(self, config) -> int:
        transforms = self._transforms(config)
        return int(transforms.crop_size[0]) if transforms is not None else 224

    def crop(self, config) -> int:
        return config.resolution or self._published_crop(config)

    def resolution(self, config) -> int:
        if config.resolution:
            return config.resolution
        transforms = self._transforms(config)
        return int(transforms.resize_size[0]) if transforms is not None else 224

    def architecture(self, config):
        """The model with random weights, built as the weights would build it (for sizes and FLOPs)."""
        import torchvision

        extra = {"image_size": self._published_crop(config)} if config.arch.startswith("vit_") else {}
        return remove_classifier(torchvision.models.get_model(config.arch, weights=None, **extra))

    def feature_model(self, config):
        import torchvision

        notes: list[str] = []
        mean, std, crop = IMAGENET_MEAN, IMAGENET_STD, None
        if config.pretrained:
            member = weights_enum(config.arch, config.pretrained)
            self.published(config).require()
            net = torchvision.models.get_model(config.arch, weights=member)  # torch.hub: download once, then the cached file
            transforms = member.transforms()
            mean, std = tuple(transforms.mean), tuple(transforms.std)
            crop = None if config.resolution else int(transforms.crop_size[0])
            description = f"torchvision {config.arch} {member.name}"
        elif config.weights:
            net = torchvision.models.get_model(config.arch, weights=None)
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
            net = torchvision.models.get_model(config.arch, weights=None)
            description = f"torchvision {config.arch} (untrained)"
            known = [m for m in torchvision.models.get_model_weights(config.arch).__members__ if m != "DEFAULT"]
            notes.append(
                f"No weights given: {config.arch} has random weights, so its features are untrained and say little about the "
                f"images. Name published weights ({', '.join(known)}) or give a local checkpoint for meaningful features."
            )
        return normalised(remove_classifier(net), mean, std, crop=crop), description, notes


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
