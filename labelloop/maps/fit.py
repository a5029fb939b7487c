"""Fitting a map and placing images on it: pure functions over arrays (vectors in, coordinates out), and the map's quality."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from labelloop.compute.neighbours import NeighbourIndex, knn_accuracy
from labelloop.compute.reduction import PcaReduction
from labelloop.data.schema import UNDEFINED
from labelloop.errors import UserError
from labelloop.maps.config import MIN_POINTS_FOR_NEIGHBOUR_METHODS, ProjectionConfig

PLACEMENT_NEIGHBOURS = 10  # fitted points whose mean position places an image the fit did not see


PCA_FIT_ROWS = 50_000  # rows the reduction before PaCMAP is fitted on


def _pca(vectors: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """PCA to ``dims`` columns; zero columns pad what too few points cannot give."""
    n, d = vectors.shape
    out = np.zeros((n, dims), dtype=np.float32)
    keep = min(dims, n - 1, d)
    if keep >= 1:
        from sklearn.decomposition import PCA

        out[:, :keep] = PCA(n_components=keep, random_state=seed, svd_solver="auto").fit_transform(vectors)
    return out


@dataclass
class FittedMap:
    """A map fitted on some points, with what it takes to place more points on it."""

    coords: np.ndarray  # float32, one row per fitted point
    method_used: str
    note: str
    reduction: PcaReduction | None  # applied to the vectors before fitting (None: the vectors as they are)
    reduced: np.ndarray  # the fitted points' (reduced) vectors: neighbour placement searches them
    reducer: object | None = None  # the fitted PaCMAP instance while it is in memory (its transform)
    _index: NeighbourIndex | None = field(default=None, repr=False)

    def neighbour_index(self) -> NeighbourIndex:
        """The fitted points' reduced vectors, indexed once however many blocks are placed."""
        if self._index is None:
            self._index = NeighbourIndex(self.reduced)
        return self._index

    def adopt_index(self, index: NeighbourIndex | None) -> None:
        """Use ``index`` (built on this map's reduced vectors elsewhere) instead of building it again."""
        if index is not None:
            self._index = index

    def reduce(self, vectors: np.ndarray) -> np.ndarray:
        return self.reduction.transform(vectors) if self.reduction is not None else np.asarray(vectors, np.float32)


def fit_map(vectors: np.ndarray, config: ProjectionConfig, *, on_reduced: Callable[[PcaReduction | None, np.ndarray], None] | None = None) -> FittedMap:
    """Fit ``config``'s method on ``vectors``. Pure: same input, same output.

    ``on_reduced(reduction, reduced)`` is called once the vectors are reduced, before a PaCMAP or t-SNE
    optimisation starts: work that needs only those (searching where other images go) can run beside it.
    """
    config.validate()
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise UserError("There are no embedded images to project: embed the data set first.")
    if not np.isfinite(vectors).all():
        bad = int((~np.isfinite(vectors).all(axis=1)).sum())
        raise UserError(f"{bad} embedding(s) contain NaN or infinite values; re-embed the data set (the cache may be damaged).")
    n = len(vectors)
    if config.method == "pca":
        return FittedMap(_pca(vectors, config.dims, config.seed), "pca", "", None, vectors)
    if n < MIN_POINTS_FOR_NEIGHBOUR_METHODS:
        note = f"{config.method} needs at least {MIN_POINTS_FOR_NEIGHBOUR_METHODS} images; with {n} this map uses PCA."
        return FittedMap(_pca(vectors, config.dims, config.seed), "pca", note, None, vectors)
    reduction, reduced = None, vectors
    if config.pca_dims and vectors.shape[1] > config.pca_dims:
        reduction = PcaReduction().fit(vectors, min(config.pca_dims, n - 1), config.seed, max_rows=PCA_FIT_ROWS)
        reduced = reduction.transform(vectors)
    if on_reduced is not None:
        on_reduced(reduction, reduced)
    if config.method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(config.perplexity, (n - 1) / 3)
        coords = TSNE(n_components=config.dims, perplexity=perplexity, init="pca", random_state=config.seed).fit_transform(reduced)
        note = f"perplexity lowered to {perplexity:.1f} for {n} images" if perplexity < config.perplexity else ""
        return FittedMap(coords.astype(np.float32), "tsne", note, reduction, reduced)
    import pacmap

    logging.getLogger("pacmap").setLevel(logging.ERROR)  # it warns on every seeded or 3D run
    neighbours = min(config.n_neighbors, n - 2)
    reducer = pacmap.PaCMAP(
        n_components=config.dims,
        n_neighbors=neighbours,
        num_iters=tuple(int(i) for i in config.iterations),
        apply_pca=False,  # done above, where the setting is visible
        save_tree=True,  # its neighbour graph, kept for transform (which otherwise rebuilds it on every call)
        random_state=config.seed,
    )
    import faiss

    threads = faiss.omp_get_max_threads()
    try:
        coords = reducer.fit_transform(reduced, init="pca").astype(np.float32)
    finally:
        faiss.omp_set_num_threads(threads)  # a seeded PaCMAP fit drops FAISS to one thread for good, for its own determinism
    if not np.isfinite(coords).all():
        raise UserError("PaCMAP produced non-finite coordinates; try more neighbours, another seed, or method pca.")
    note = f"n_neighbors lowered to {neighbours} for {n} images" if neighbours < config.n_neighbors else ""
    return FittedMap(coords, "pacmap", note, reduction, reduced, reducer)


def project_vectors(vectors: np.ndarray, config: ProjectionConfig) -> tuple[np.ndarray, str, str]:
    """(coordinates float32 n x dims, method used, note) of a map fitted on every vector."""
    fitted = fit_map(vectors, config)
    return fitted.coords, fitted.method_used, fitted.note


def place_by_neighbours(fitted: FittedMap, vectors: np.ndarray, k: int = PLACEMENT_NEIGHBOURS) -> np.ndarray:
    """Map positions for new ``vectors``: the mean position of their ``k`` most similar fitted points."""
    found = fitted.neighbour_index().search(fitted.reduce(vectors), max(1, min(k, len(fitted.reduced))))
    return fitted.coords[found].mean(axis=1).astype(np.float32)


def place_left_out(fitted: FittedMap, rows: np.ndarray, k: int = PLACEMENT_NEIGHBOURS) -> np.ndarray:
    """Where ``place_by_neighbours`` would put fitted points ``rows`` had they not been fitted: each is left
    out of its own placement (how well images added later will be placed)."""
    k = max(1, min(k, len(fitted.reduced) - 1))
    found = fitted.neighbour_index().search(fitted.reduced[rows], k + 1)
    is_self = found == rows[:, None]
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False  # the search missed the point itself: drop the farthest instead
    return fitted.coords[found[keep].reshape(len(rows), k)].mean(axis=1).astype(np.float32)


def place_by_transform(fitted: FittedMap, vectors: np.ndarray) -> np.ndarray | None:
    """PaCMAP's own ``transform`` of new ``vectors`` onto the fitted map (None when the fit has none)."""
    if fitted.reducer is None:
        return None
    coords = np.asarray(fitted.reducer.transform(fitted.reduce(vectors), basis=fitted.reduced), dtype=np.float32)
    return coords if np.isfinite(coords).all() else None


def placement_accuracy(fitted: FittedMap, placed: np.ndarray, placed_labels: np.ndarray, fitted_labels: np.ndarray, k: int = 10) -> float | None:
    """How often the majority label of a placed point's ``k`` nearest fitted points (on the map) is its own label."""
    from sklearn.neighbors import NearestNeighbors

    use = (placed_labels != UNDEFINED)
    base = fitted_labels != UNDEFINED
    if use.sum() == 0 or base.sum() < k:
        return None
    codes, names = pd.factorize(np.concatenate([fitted_labels[base], placed_labels[use]]))
    base_codes, query_codes = codes[: base.sum()], codes[base.sum():]
    found = NearestNeighbors(n_neighbors=k).fit(fitted.coords[base]).kneighbors(placed[use], return_distance=False)
    votes = np.stack([np.bincount(row, minlength=len(names)) for row in base_codes[found]])
    return round(float((votes.argmax(axis=1) == query_codes).mean()), 4)


def projection_quality(vectors: np.ndarray, coords: np.ndarray, labels: np.ndarray, k: int = 10, max_queries: int = 5000, seed: int = 0, max_points: int = 20_000) -> dict:
    """k-NN accuracy of the labelled points in the embedding and in the map, on the same points.

    Above ``max_points`` labelled points both are measured on the same seeded
    sample of that many: a neighbour search over 200,000 1280-d vectors would
    take longer than the map itself, and a sample answers the question (does
    the map keep the neighbourhoods?) like with like.
    """
    labelled = np.flatnonzero(labels != UNDEFINED)
    n = len(labelled)
    if n < 2 or len(set(labels[labelled])) < 2:
        return {"k": k, "n_labelled": n, "knn_embedding": None, "knn_map": None, "note": "needs labelled images of at least 2 classes"}
    if n > max_points:
        labelled = np.sort(np.random.default_rng(seed).choice(labelled, size=max_points, replace=False))
    return {
        "k": k,
        "n_labelled": n,
        "n_measured": len(labelled),
        "n_queries": min(max_queries, len(labelled)),
        "knn_embedding": round(knn_accuracy(vectors[labelled], labels[labelled], k, max_queries, seed), 4),
        "knn_map": round(knn_accuracy(coords[labelled], labels[labelled], k, max_queries, seed), 4),
    }


def fit_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` points, each label (undefined included) in proportion to its count."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    codes, names = pd.factorize(labels)
    chosen = []
    for code in range(len(names)):
        members = np.flatnonzero(codes == code)
        take = max(1, int(round(limit * len(members) / len(labels))))
        chosen.append(rng.choice(members, size=min(take, len(members)), replace=False))
    picked = np.sort(np.concatenate(chosen))
    return picked[np.sort(rng.choice(len(picked), size=min(limit, len(picked)), replace=False))]
