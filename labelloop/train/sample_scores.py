"""Per-sample outputs and label-issue scores: pure functions on arrays.

``given`` is an integer label code per sample, ``-1`` where there is no
usable given label (undefined or excluded samples: they get predictions,
not issue scores). ``probabilities`` are out-of-fold for labelled samples,
so a sample's score never comes from a model that was trained on it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from labelloop.compute.neighbours import nearest_neighbours


def sample_metrics(probabilities: np.ndarray, given: np.ndarray) -> pd.DataFrame:
    """predicted, confidence (of the prediction), given_confidence, margin, loss, entropy.

    margin: p(given) - max p(other class) for labelled samples (negative when
    the model prefers another class), top-1 minus top-2 for the rest.
    loss: -log p(given); entropy of the predicted distribution in nats.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    n, n_classes = p.shape
    has_label = given >= 0
    rows = np.arange(n)
    predicted = p.argmax(axis=1)
    top2 = np.sort(p, axis=1)[:, -2:] if n_classes > 1 else np.concatenate([np.zeros((n, 1)), p], axis=1)
    safe_given = np.where(has_label, given, 0)
    p_given = p[rows, safe_given]
    others = p.copy()
    others[rows, safe_given] = -np.inf
    best_other = others.max(axis=1) if n_classes > 1 else np.zeros(n)
    margin = np.where(has_label, p_given - best_other, top2[:, 1] - top2[:, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(p > 0, p * np.log(p), 0.0)).sum(axis=1)
        loss = np.where(has_label, -np.log(np.maximum(p_given, 1e-12)), np.nan)
    return pd.DataFrame(
        {
            "predicted": predicted,
            "confidence": p.max(axis=1),
            "given_confidence": np.where(has_label, p_given, np.nan),
            "margin": margin,
            "loss": loss,
            "entropy": entropy,
        }
    )


def knn_disagreement(vectors: np.ndarray, given: np.ndarray, k: int = 10, neighbours: np.ndarray | None = None) -> np.ndarray:
    """Share of a labelled sample's k nearest labelled neighbours (cosine, itself excluded)
    whose label differs from its own; NaN for samples without a label.

    ``neighbours``: the labelled samples' nearest labelled neighbours if the
    caller searched them already (row i: positions among the labelled samples,
    nearest first, at least ``k`` columns), so they are not searched twice.
    """
    out = np.full(len(given), np.nan)
    labelled = np.flatnonzero(given >= 0)
    if len(labelled) < 2:
        return out
    k = min(k, len(labelled) - 1)
    labels = given[labelled]
    nearest = nearest_neighbours(vectors[labelled], None, k) if neighbours is None else neighbours[:, :k]
    out[labelled] = (labels[nearest] != labels[:, None]).mean(axis=1)
    return out


def label_issue_scores(probabilities: np.ndarray, given: np.ndarray, vectors: np.ndarray, k: int = 10, neighbours: np.ndarray | None = None) -> pd.DataFrame:
    """Label-issue scores for every sample (NaN / False where there is no given label).

    quality: cleanlab's ``get_label_quality_scores`` (self-confidence; low = suspicious).
    cleanlab_issue: cleanlab's ``find_label_issues`` with its defaults.
    knn_disagreement: see :func:`knn_disagreement` (``neighbours`` as there).
    issue_score: the fused ranking, in [0, 1], high = suspicious: the mean of
    the percentile ranks of (1 - quality) and of the neighbour disagreement.
    The model's view and the neighbours' view miss different samples, so the
    fusion finds more flipped labels than either (bench/bench_train.py).
    flagged: the top ``n`` by issue_score, where ``n`` is how many cleanlab flags.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    n = len(given)
    labelled = np.flatnonzero(given >= 0)
    result = pd.DataFrame(
        {
            "quality": np.full(n, np.nan),
            "cleanlab_issue": np.zeros(n, dtype=bool),
            "knn_disagreement": knn_disagreement(vectors, given, k, neighbours),
            "issue_score": np.full(n, np.nan),
            "flagged": np.zeros(n, dtype=bool),
        }
    )
    if len(labelled) < 2:
        return result
    probs = np.asarray(probabilities, dtype=np.float64)[labelled]
    probs = probs / probs.sum(axis=1, keepdims=True)
    labels = given[labelled]
    quality = get_label_quality_scores(labels, probs)
    present = np.unique(labels)
    if len(present) >= 2 and probs.shape[1] >= 2:
        # One process: cleanlab's default forks the caller, which deadlocks a threaded server (the app's background retrain).
        cleanlab_mask = find_label_issues(labels, probs, n_jobs=1)
    else:
        cleanlab_mask = np.zeros(len(labelled), dtype=bool)
    disagreement = result["knn_disagreement"].to_numpy()[labelled]
    fused = (rankdata(1 - quality) + rankdata(disagreement)) / (2 * len(labelled))
    n_flag = int(cleanlab_mask.sum())
    flagged = np.zeros(len(labelled), dtype=bool)
    if n_flag:
        flagged[np.argsort(-fused, kind="stable")[:n_flag]] = True
    result.loc[labelled, "quality"] = quality
    result.loc[labelled, "cleanlab_issue"] = cleanlab_mask
    result.loc[labelled, "issue_score"] = fused
    result.loc[labelled, "flagged"] = flagged
    return result


def precision_recall_f1(flagged: np.ndarray, truly_wrong: np.ndarray) -> tuple[float, float, float]:
    """Of the flagged samples, how many are truly mislabelled (precision), of those, how many were flagged (recall)."""
    hits = int((flagged & truly_wrong).sum())
    precision = hits / max(int(flagged.sum()), 1)
    recall = hits / max(int(truly_wrong.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
