"""The embedding and label checks: cleanlab's ``Datalab`` on a k-nearest-neighbour graph built with :mod:`labelloop.compute.neighbours`
(outlier, near duplicate, non-IID; label, class imbalance, underperforming group), and near-duplicate groups."""

from __future__ import annotations

import numpy as np
import pandas as pd

from labelloop.data.schema import trainable_mask
from labelloop.scores.checks import CHECKS_OF, MIN_IMAGES, NEIGHBOURS


def embedding_checks(vectors: np.ndarray, sample_ids: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Datalab's outlier, near-duplicate and non-IID checks on embedding ``vectors`` (rows: ``sample_ids``).

    Returns (sample_id, is_<check>, <check>_score per check; meta: per-check results, the
    near-duplicate groups as sample-id lists, the non-IID p-value).
    """
    n = len(vectors)
    frame = pd.DataFrame({"sample_id": np.asarray(sample_ids, dtype=np.int64)})
    if n < MIN_IMAGES["embedding"]:
        note = f"needs at least {MIN_IMAGES['embedding']} embedded images to compare each with its {NEIGHBOURS} nearest, this version has {n}"
        return frame, {"results": {c: {"status": "not run", "note": note} for c in CHECKS_OF["embedding"]}}
    from cleanlab import Datalab

    graph = knn_graph(vectors, NEIGHBOURS)
    lab = Datalab(data={"sample_id": frame["sample_id"].to_numpy()}, verbosity=0)
    lab.find_issues(knn_graph=graph, issue_types={check: {} for check in CHECKS_OF["embedding"]})
    frame, results = _datalab_columns(lab, frame, CHECKS_OF["embedding"])
    meta: dict = {"results": results}
    if results["near_duplicate"]["status"] == "ran":
        sets = lab.get_info("near_duplicate")["near_duplicate_sets"]
        ids = frame["sample_id"].to_numpy()
        meta["near_duplicate_groups"] = [ids[g].tolist() for g in _components([np.append(members, i) for i, members in enumerate(sets) if len(members)], n)]
    if results["non_iid"]["status"] == "ran":
        # A finding about the order of the whole set: Datalab marks its one most atypical sample, which
        # would send a user to look at one image for a problem no image has.
        p_value = meta["non_iid_p_value"] = float(lab.get_info("non_iid")["p-value"])
        frame["is_non_iid"] = False
        results["non_iid"]["count"] = 0
        if p_value < 0.05:
            results["non_iid"]["status"] = "set property"
            results["non_iid"]["note"] = (f"p-value {_p(p_value)} that neighbouring sample ids are as alike as random pairs: the order follows the content "
                                          "(sorted by class or source?). Shuffle before any split by position; LabelLoop's own splits already do.")
        else:
            results["non_iid"]["note"] = f"p-value {_p(p_value)}: no sign that the order follows the content"
    return frame, meta


def _p(value: float) -> str:
    return "below 0.001" if value < 1e-3 else f"{value:.2g}"


def label_checks(rows: pd.DataFrame, run_samples: pd.DataFrame, class_names: list[str], vectors: np.ndarray, vector_ids: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Datalab's class-imbalance and underperforming-group checks on the labelled samples of ``rows``.

    Datalab's own label check is not among them: a label issue is what the run's ranking flags
    (:func:`labelloop.scores.review.open_label_issues`), one definition and one count on every page.

    Reads the labels of ``rows`` (this version's, not the run's) and the run's probabilities
    (columns: ``class_names``). A sample counts if it is labelled, not excluded, embedded, scored
    by the run and its label is one of the run's classes. Classes no such sample has are dropped
    from the probabilities (rows renormalised): Datalab needs every column to be a class that occurs.
    """
    usable = rows[trainable_mask(rows)][["sample_id", "label"]]
    usable = usable[usable["label"].isin(class_names) & usable["sample_id"].isin(vector_ids)]
    usable = usable.merge(run_samples[["sample_id", "probabilities"]], on="sample_id", how="inner")
    frame = pd.DataFrame({"sample_id": usable["sample_id"].to_numpy(dtype=np.int64)})
    present = sorted({class_names.index(label) for label in usable["label"]})
    outside = int(trainable_mask(rows).sum()) - len(usable)
    if len(usable) < MIN_IMAGES["labels"] or len(present) < 2:
        note = f"needs at least {MIN_IMAGES['labels']} labelled samples in 2 classes that the run scored; there are {len(usable)} in {len(present)}"
        return frame, {"results": {c: {"status": "not run", "note": note} for c in CHECKS_OF["labels"]}}
    from cleanlab import Datalab

    probabilities = np.stack(usable["probabilities"].to_numpy())[:, present]
    probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-12)
    code = {class_index: position for position, class_index in enumerate(present)}
    given = np.array([code[class_names.index(label)] for label in usable["label"]])
    where = pd.Index(vector_ids).get_indexer(usable["sample_id"])
    lab = Datalab(data={"label": given}, label_name="label", verbosity=0)
    lab.find_issues(pred_probs=probabilities, knn_graph=knn_graph(vectors[where], NEIGHBOURS), issue_types={check: {} for check in CHECKS_OF["labels"]})
    frame, results = _datalab_columns(lab, frame, CHECKS_OF["labels"])
    if outside:
        for result in results.values():
            result["note"] = (result["note"] + "; " if result["note"] else "") + f"{outside:,} labelled samples not checked (not embedded, not scored by the run, or a class the run did not know)"
    return frame, {"results": results}


def _datalab_columns(lab, frame: pd.DataFrame, checks: list[str]) -> tuple[pd.DataFrame, dict]:
    """Datalab's per-sample columns renamed is_<check> / <check>_score, and each check's result as a dict."""
    issues = lab.get_issues()
    summary = lab.get_issue_summary().set_index("issue_type")
    results = {}
    for check in checks:
        if f"is_{check}_issue" in issues:
            frame[f"is_{check}"] = issues[f"is_{check}_issue"].to_numpy(dtype=bool)
            frame[f"{check}_score"] = issues[f"{check}_score"].to_numpy(dtype=np.float64)
            results[check] = {"status": "ran", "count": int(summary.at[check, "num_issues"]), "scored": len(frame), "note": ""}
        else:
            results[check] = {"status": "failed", "note": "cleanlab could not compute it on this data (see the log)"}
    return frame, results


def knn_graph(vectors: np.ndarray, k: int):
    """The k-nearest-neighbour graph Datalab reads: a CSR matrix, row i holding its k nearest (cosine distance)."""
    from scipy.sparse import csr_matrix

    from labelloop.compute.neighbours import nearest_neighbours, unit_rows

    k = min(k, len(vectors) - 1)
    nearest = nearest_neighbours(vectors, None, k)
    unit = unit_rows(vectors)
    distance = np.clip(1.0 - np.einsum("id,ikd->ik", unit, unit[nearest]), 0.0, 2.0)
    order = np.argsort(distance, axis=1, kind="stable")  # approximate search may return them slightly out of order
    nearest, distance = np.take_along_axis(nearest, order, 1), np.take_along_axis(distance, order, 1)
    n = len(vectors)
    return csr_matrix((distance.ravel(), nearest.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def duplicate_groups(samples: pd.DataFrame, near: list[np.ndarray]) -> list[np.ndarray]:
    """Sample-id groups of near duplicates (``near``) joined with exact duplicates (equal content hash), largest first."""
    ids = samples["sample_id"].to_numpy()
    position = pd.Index(ids)
    members = [position.get_indexer(group) for group in near]
    hashes = samples["content_hash"]
    exact = hashes[hashes.duplicated(keep=False)]
    members += [group.to_numpy() for _, group in pd.Series(exact.index).groupby(exact.to_numpy())]
    groups = [np.sort(ids[g]) for g in _components([m[m >= 0] for m in members], len(ids))]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def _components(groups: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Connected components (of two or more) of the graph whose edges join each group's members."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = [(g[0], other) for g in groups if len(g) > 1 for other in g[1:]]
    if not edges:
        return []
    a, b = np.array(edges).T
    _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    sizes = np.bincount(component)
    return [np.flatnonzero(component == c) for c in np.flatnonzero(sizes > 1)]
