"""Every kind of embedder, by name: one module each, one registry.

A kind says which settings it accepts (``validate``), the input size it
wants (``resolution``) and how to build its model (``feature_model``: a
torch module from uint8 N x S x S x 3 images to features, with its
normalisation inside, so every runtime feeds it raw pixels). A kind that
needs no torch model (``pixels``) builds its :class:`labelloop.embed.Embedder`
itself. Adding a kind: write its module and add it to ``KINDS``.
"""

from __future__ import annotations

from labelloop.embed.kinds import (
    efficientnet_lite0,
    open_clip_models,
    pixels,
    timm_models,
    torchvision_models,
)
from labelloop.embed.kinds.base import EmbedderKind, first_line, normalised
from labelloop.errors import UserError

__all__ = ["KINDS", "EmbedderKind", "first_line", "get_kind", "normalised"]

KINDS: dict[str, EmbedderKind] = {kind.name: kind for kind in (efficientnet_lite0.KIND, torchvision_models.KIND, open_clip_models.KIND, timm_models.KIND, pixels.KIND)}


def get_kind(name: str) -> EmbedderKind:
    try:
        return KINDS[name]
    except KeyError:
        raise UserError(f"Unknown embedder '{name}': use one of {', '.join(KINDS)}.") from None
