"""More like this: the samples nearest to one sample (or to a set of them) in an embedding.

Nearest by cosine similarity of the cached vectors, exactly (one matrix-vector
product per query, no index to build). The query samples come first, so the
result is ready to become a selection to relabel or exclude as a whole.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from labelloop.compute.neighbours import closest_to, unit_rows
from labelloop.embed.cache import load_embeddings
from labelloop.errors import UserError


def more_like_this(
    workspace: str | os.PathLike | None, name: str, key: str, sample_ids: Sequence[int], *, k: int = 50, version: int | None = None,
) -> pd.DataFrame:
    """``sample_ids`` and the ``k`` other samples of ``version`` nearest to them in embedding ``key``.

    Several query samples are one query: the mean of their unit vectors. Returns sample_id, label,
    similarity (cosine to the query; 1 for a single query sample itself) and is_query, queries first
    and then nearest first. Raises a UserError for a sample not in the version or not embedded.
    """
    if k < 1:
        raise UserError(f"Ask for at least 1 similar sample, not {k}.")
    wanted = np.unique(np.asarray(sample_ids, dtype=np.int64))
    if not len(wanted):
        raise UserError("Pick a sample to find more like it.")
    embeddings = load_embeddings(workspace, name, key, version)
    is_query = np.isin(embeddings.sample_ids, wanted)
    missing = np.setdiff1d(wanted, embeddings.sample_ids[is_query])
    if len(missing):
        shown = ", ".join(f"#{i}" for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(f"{shown} {'is' if len(missing) == 1 else 'are'} not among the embedded samples of this version "
                        f"(a wrong id, or an image that could not be embedded). Pick another sample, or embed the images first.")
    query = unit_rows(embeddings.vectors[is_query]).mean(axis=0)
    rows, similarity = closest_to(embeddings.vectors, query, k, skip=is_query)
    own = np.flatnonzero(is_query)
    own_similarity = unit_rows(embeddings.vectors[own]) @ unit_rows(query[None])[0]
    return pd.DataFrame({
        "sample_id": np.concatenate([embeddings.sample_ids[own], embeddings.sample_ids[rows]]),
        "label": np.concatenate([embeddings.labels[own], embeddings.labels[rows]]),
        "similarity": np.concatenate([own_similarity, similarity]).astype(np.float32),
        "is_query": np.concatenate([np.ones(len(own), bool), np.zeros(len(rows), bool)]),
    })


def parse_sample_ids(text: str) -> list[int]:
    """Sample ids as a user types them: "#12, 40 #7" -> [12, 40, 7]; a UserError naming what is not an id."""
    parts = [part for part in re.split(r"[\s,;]+", text.replace("#", " ")) if part]
    bad = [part for part in parts if not part.isdigit()]
    if bad:
        raise UserError(f"'{bad[0]}' is not a sample id: give whole numbers such as #12, 40.")
    return [int(part) for part in parts]
