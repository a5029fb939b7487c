"""Text against images, for embeddings made by a CLIP model: search by description, and zero-shot labels.

A CLIP model maps images and texts into one space where a matching pair has
a high cosine. With the image vectors already cached (unit length), a text
costs one pass of the text tower: :func:`closest_to_text` ranks the images by
cosine to a description ("a blurry photo"), and :func:`zero_shot` scores each
image against a prompt per class ("a photo of a {class}"), turned into
probabilities the way CLIP does (softmax of the cosines times the model's
learned logit scale). Zero-shot is a suggestion from the class names alone:
it knows nothing of the labels given here.
"""

from __future__ import annotations

import os
from dataclasses import fields

import numpy as np
import pandas as pd

from labelloop.compute.neighbours import closest_to
from labelloop.embed.cache import embedding_cache, load_embeddings
from labelloop.embed.config import EmbedderConfig
from labelloop.errors import UserError

PROMPT = "a photo of a {}"


def text_config(workspace: str | os.PathLike | None, name: str, key: str) -> EmbedderConfig | None:
    """The config of the CLIP model that made embedding ``key`` (None if a model without a text tower made it)."""
    meta = embedding_cache(workspace, name, key).meta() or {}
    stored = meta.get("config") or {}
    if stored.get("kind") != "open_clip":
        return None
    known = {f.name for f in fields(EmbedderConfig)}
    return EmbedderConfig(**{k: v for k, v in stored.items() if k in known})


def text_embeddings(workspace: str | os.PathLike | None, name: str) -> list[str]:
    """Keys of the data set's embeddings that a CLIP model made (those text can be compared with)."""
    from labelloop.embed.cache import list_embeddings

    return [meta["key"] for meta in list_embeddings(workspace, name) if (meta.get("config") or {}).get("kind") == "open_clip"]


def _encoder(workspace, name: str, key: str):
    config = text_config(workspace, name, key)
    if config is None:
        raise UserError(f"The embedding '{key}' was not made by a CLIP model, so it cannot be compared with text. Embed with an open_clip model first.")
    from labelloop.embed.kinds import get_kind

    return get_kind("open_clip").text_encoder(config)


def closest_to_text(workspace: str | os.PathLike | None, name: str, key: str, text: str, *, version: int | None = None, top: int = 50) -> pd.DataFrame:
    """The ``top`` samples of ``version`` whose images are closest to ``text``: sample_id, label, similarity (cosine), best first."""
    if not text.strip():
        raise UserError("Type a description of the images to find, e.g. 'a blurry photo'.")
    encode = _encoder(workspace, name, key)
    embeddings = load_embeddings(workspace, name, key, version)
    rows, similarity = closest_to(embeddings.vectors, encode([text.strip()])[0], top)
    return pd.DataFrame({"sample_id": embeddings.sample_ids[rows], "label": embeddings.labels[rows], "similarity": similarity})


def zero_shot(
    workspace: str | os.PathLike | None, name: str, key: str, classes: list[str], *, version: int | None = None, prompt: str = PROMPT, sample_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """Each sample's most likely class from the class names alone: sample_id, zero_shot_label, zero_shot_confidence.

    ``sample_ids``: only these samples (default: every sample with a vector).
    """
    if "{}" not in prompt:
        raise UserError(f"The prompt '{prompt}' has no {{}} for the class name, e.g. 'a photo of a {{}}'.")
    if not classes:
        raise UserError("This data set has no classes yet: zero-shot labels need class names.")
    config = text_config(workspace, name, key)
    encode = _encoder(workspace, name, key)
    embeddings = load_embeddings(workspace, name, key, version)
    keep = np.isin(embeddings.sample_ids, sample_ids) if sample_ids is not None else np.ones(len(embeddings.sample_ids), bool)
    class_vectors = encode([prompt.format(c.replace("_", " ")) for c in classes])
    logits = (embeddings.vectors[keep] @ class_vectors.T) * _logit_scale(config)
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    best = probabilities.argmax(axis=1)
    return pd.DataFrame({
        "sample_id": embeddings.sample_ids[keep],
        "zero_shot_label": np.asarray(classes, dtype=object)[best],
        "zero_shot_confidence": probabilities[np.arange(len(best)), best].astype(np.float32),
    })


def _logit_scale(config: EmbedderConfig) -> float:
    from labelloop.embed.kinds.open_clip_models import shared_clip

    model, _ = shared_clip(config)
    return float(model.logit_scale.exp().item())
