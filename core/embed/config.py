"""An embedder's settings and what a ready embedder is: :class:`EmbedderConfig`, :class:`Embedder`, keys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.embed.kinds import KINDS, get_kind
from core.errors import UserError

RUNTIMES = ("auto", "openvino", "onnxruntime", "torch")
PRECISIONS = ("auto", "fp32", "bf16")

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class EmbedderConfig:
    """Every setting of an embedder, in one place.

    kind: one of ``core.embed.kinds.KINDS``: ``efficientnet-lite0``
    (ImageNet-pretrained, ships offline; the default), ``open_clip`` (``arch`` =
    an open_clip model name, ``weights`` = a local checkpoint), ``torchvision``
    (``arch`` = a supported architecture, ``weights`` = an optional local state
    dict; without it the features are untrained), ``pixels`` (the image
    itself, resized and flattened: a baseline).
    """

    kind: str = "efficientnet-lite0"
    arch: str | None = None
    weights: str | None = None
    resolution: int | None = None  # None: the model's own input size
    runtime: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    device: str = "auto"  # core.compute: auto = a CUDA GPU when torch sees one (the torch runtime there), else the CPU

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"Unknown embedder '{self.kind}': use one of {', '.join(KINDS)}.")
        from core.compute import validate_device

        validate_device(self.device)
        if self.runtime not in RUNTIMES:
            raise UserError(f"Unknown runtime '{self.runtime}': use one of {', '.join(RUNTIMES)}.")
        if self.precision not in PRECISIONS:
            raise UserError(f"Unknown precision '{self.precision}': use one of {', '.join(PRECISIONS)}.")
        if self.resolution is not None and not 8 <= self.resolution <= 1024:
            raise UserError(f"Resolution {self.resolution} is out of range: use 8 to 1024 pixels.")
        if not 1 <= self.batch_size <= 1024:
            raise UserError(f"Batch size {self.batch_size} is out of range: use 1 to 1024.")
        if self.weights and not Path(self.weights).expanduser().is_file():
            raise UserError(f"The weights file {self.weights} does not exist. Give the path of a checkpoint on this machine.")
        get_kind(self.kind).validate(self)


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
    """The key of an embedder's output before the runtime's precision: kind, architecture, size, weights."""
    weights_tag = f"-w{file_digest(str(Path(config.weights).expanduser()))}" if config.weights else ""
    return safe_key(f"{config.kind}{'-' + config.arch if config.arch else ''}-{resolution}px{weights_tag}")
