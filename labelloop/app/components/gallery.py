"""Thumbnail grids: what a selection, a confusion-matrix cell or a label flow looks like."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from labelloop.data.workspace import thumbnail_path


def thumbnail_grid(thumbs_dir: Path, samples: pd.DataFrame, limit: int = 40, caption_column: str = "label", width: int = 72) -> None:
    """Up to ``limit`` thumbnails of ``samples`` (needs content_hash and ``caption_column``)."""
    shown = samples.head(limit)
    pictures = []
    for content_hash, caption in zip(shown["content_hash"], shown[caption_column]):
        path = thumbnail_path(thumbs_dir, content_hash)
        if path.exists():
            pictures.append((str(path), str(caption)[:16]))
    if pictures:
        st.image([p for p, _ in pictures], width=width, caption=[c for _, c in pictures])  # captions are text, never HTML
    if len(samples) > limit:
        st.caption(f"showing {limit} of {len(samples):,}")


def labelled_thumbnails(
    thumbs_dir: Path, samples: pd.DataFrame, *, limit: int = 40, seed: int = 0, width: int = 56, captions: pd.Series | None = None, key: str | None = None
) -> pd.Index:
    """Thumbnails of ``samples`` (needs content_hash and label) that show every label among them.

    ``labelloop.maps.view.thumbnail_sample`` picks which: a few per label, undefined
    and the rarest labels first, so a lasso that is mostly one class still
    shows the few samples that are not. Each is captioned with its label, or
    with ``captions`` (a Series on the same index) when given. Returns the index of the samples shown.
    """
    from labelloop.maps.view import (
        thumbnail_sample,  # core is the logic; this only draws
    )

    shown = samples.iloc[thumbnail_sample(samples["label"].to_numpy(), limit=limit, seed=seed)]
    texts = (captions.loc[shown.index] if captions is not None else shown["label"]).astype(str)
    pictures = []
    for content_hash, caption in zip(shown["content_hash"], texts):
        path = thumbnail_path(thumbs_dir, content_hash)
        if path.exists():
            pictures.append((str(path), caption[:24]))
    with st.container(key=key):
        if pictures:
            st.image([p for p, _ in pictures], width=width, caption=[c for _, c in pictures])  # captions are text, never HTML
        if len(samples) > len(shown):
            labels = samples["label"].nunique()
            st.caption(f"showing {len(shown)} of {len(samples):,}: " + ("every label, the rarest and undefined first" if labels <= len(shown) else f"{len(shown)} of its {labels:,} labels, the rarest first"))
    return shown.index


def plain(text) -> str:
    """``text`` safe inside st.markdown: every Markdown and HTML special character backslash-escaped."""
    return "".join("\\" + ch if ch in "\\`*_{}[]()<>#+-.!|~$&\"'" else ch for ch in str(text))
