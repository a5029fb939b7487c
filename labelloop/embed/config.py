"""An embedder's settings and what a ready embedder is: :class:`EmbedderConfig`, :class:`Embedder`, keys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from labelloop.compute.device import DEVICE_HELP, validate_device
from labelloop.embed.kinds import KINDS, get_kind
from labelloop.embed.kinds.base import Embedder  # noqa: F401  (where callers have always imported it from)
from labelloop.errors import UserError
from labelloop.settings import Settings, setting

RUNTIMES = ("auto", "openvino", "onnxruntime", "torch")
PRECISIONS = ("auto", "fp32", "bf16")

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class EmbedderConfig(Settings):
    """Every setting of an embedder, in one place.

    kind: one of ``labelloop.embed.kinds.KINDS``: ``efficientnet-lite0``
    (ImageNet-pretrained, ships offline; the default), ``torchvision`` (``arch``
    = a torchvision classification model, ``pretrained`` = the name of one of
    its weights enum's members), ``open_clip`` (``arch`` = an open_clip model
    name, ``pretrained`` = one of its pretrained tags; or ``arch`` =
    ``hf-hub:<org>/<repo>``), ``timm`` (``arch`` = a timm model name with its
    pretrained tag, or ``hf-hub:<org>/<repo>``), ``pixels`` (the image itself,
    resized and flattened: a baseline). ``weights``: a checkpoint file on this
    machine instead of published weights. Published weights are downloaded
    once into the library's own cache (see labelloop.embed.hub).
    :func:`parse_model_name` reads all of this from one string.
    """

    subject: ClassVar[str] = "embedder"

    kind: str = setting("efficientnet-lite0", "Embedder", "The library the model comes from: efficientnet-lite0 is bundled and works offline; pixels is "
                        "the image itself, a baseline. Given an architecture alone, the library that knows it.", choices=tuple(KINDS), flag="--embedder")
    arch: str | None = setting(None, "Architecture", "torchvision architecture (resnet50), open_clip model (ViT-B-32) or timm model "
                               "(vit_small_patch14_dinov2.lvd142m); hf-hub:ORG/REPO for a Hugging Face model.", none="the embedder's only one")
    pretrained: str | None = setting(None, "Published weights", "A torchvision weights name (IMAGENET1K_V2, DEFAULT) or an open_clip tag "
                                     "(laion2b_s34b_b79k).", none="the library's default")
    weights: str | None = setting(None, "Weights file", "A checkpoint file on this machine instead of published weights (for torchvision, "
                                  "a weights name works here too).", none="published weights")
    resolution: int | None = setting(None, "Resolution", "Input size in pixels images are resized to (pixels: 32).", minimum=8, maximum=1024, none="the model's own")
    runtime: str = setting("auto", "Runtime", "auto = the fastest measured here (openvino bf16 where the CPU has it, else onnxruntime; "
                           "torch on a GPU); torch = the reference.", choices=RUNTIMES)
    precision: str = setting("auto", "Precision", "auto = bf16 where the hardware has it natively, else fp32.", choices=PRECISIONS)
    batch_size: int = setting(32, "Batch size", "Images per forward pass.", minimum=1, maximum=1024)
    device: str = setting("auto", "Device", DEVICE_HELP)

    def check(self) -> None:
        validate_device(self.device)
        if self.weights and not Path(self.weights).expanduser().is_file():
            raise UserError(f"The weights file {self.weights} does not exist. Give the path of a checkpoint on this machine.")
        if self.pretrained is not None and self.kind in ("efficientnet-lite0", "pixels"):
            raise UserError(f"The {self.kind} embedder takes no published weights name.")
        get_kind(self.kind).validate(self)

    @property
    def model_name(self) -> str:
        """The model as one string :func:`parse_model_name` reads back: ``kind[:arch[:pretrained]]``."""
        return ":".join(part for part in (self.kind, self.arch, self.pretrained) if part)

    def published(self):
        """The published weights this config loads (labelloop.embed.hub.PublishedWeights), or None."""
        self.validate()
        return get_kind(self.kind).published(self)


def parse_model_name(text: str) -> dict:
    """``kind``, ``arch`` and ``pretrained`` from a model name as users write it.

    ``efficientnet-lite0``; ``torchvision:resnet50:IMAGENET1K_V2`` (the weights enum member;
    ``torchvision:resnet50`` alone is untrained); ``open_clip:ViT-B-32:laion2b_s34b_b79k``;
    ``timm:vit_small_patch14_dinov2.lvd142m``; ``open_clip:hf-hub:<org>/<repo>`` and
    ``timm:hf-hub:<org>/<repo>``; ``pixels``.
    """
    kind, _, rest = text.strip().partition(":")
    if kind not in KINDS:
        raise UserError(f"'{text}' does not name a model: start with one of {', '.join(KINDS)} (e.g. open_clip:ViT-B-32:laion2b_s34b_b79k).")
    if not rest:
        return {"kind": kind, "arch": None, "pretrained": None}
    if rest.startswith("hf-hub:") or kind == "timm":
        return {"kind": kind, "arch": rest, "pretrained": None}  # timm names carry their tag after a dot
    arch, _, pretrained = rest.partition(":")
    return {"kind": kind, "arch": arch or None, "pretrained": pretrained or None}


def input_resolution(config: EmbedderConfig) -> int:
    """The side in pixels images are resized to for this embedder."""
    return config.resolution or get_kind(config.kind).resolution(config)


def file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_key(text: str) -> str:
    """``text`` as a cache folder name: letters, digits, '.', '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def base_key(config: EmbedderConfig, resolution: int) -> str:
    """The key of an embedder's output before the runtime's precision: kind, architecture, published weights, size, file.

    Published weights go in by the name they resolve to (torchvision's DEFAULT by the member it
    stands for), so two weights of one architecture never share a cache.
    """
    weights_tag = f"-w{file_digest(str(Path(config.weights).expanduser()))}" if config.weights else ""
    published = get_kind(config.kind).weights_name(config)
    parts = [config.kind, config.arch, published]
    return safe_key("-".join(p for p in parts if p) + f"-{resolution}px{weights_tag}")
