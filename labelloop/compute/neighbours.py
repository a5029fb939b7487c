"""k nearest neighbours by cosine similarity, exact for small sets and approximate (HNSW) for large ones;
and how well labels agree with their neighbours (k-NN accuracy), which maps and metric learning both report.

Exact search compares every query with every point: fine up to a few tens of
thousands of points, quadratic beyond. Above :data:`EXACT_LIMIT` points a
FAISS HNSW graph answers in roughly logarithmic time per query, so k-NN heads
and neighbour disagreement stay near-linear at 100,000 images. Building that
graph is sequential work that grows past minutes at a million points on a
small machine, so above :data:`INVERTED_FILE_ABOVE` an inverted-file index
(k-means cells, a few probed per query) takes its place: it builds in seconds,
searches about as fast and finds about as many of the true neighbours
(measured at 200,000 x 128-d: recall@60 0.78 against HNSW's 0.74).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EXACT_LIMIT = 20_000  # points; below it the exact answer is also the fast one
_BLOCK = 2048  # queries per block of exact search: bounded memory (block x points similarities)
_HNSW_LINKS = 16  # graph degree: recall above 0.9 for k <= 10 on image embeddings (tests/test_neighbours.py)
_HNSW_SEARCH_DEPTH = 48
INVERTED_FILE_ABOVE = 500_000  # points
_POINTS_PER_CELL = 256  # inverted file: cells = points / 256, trained on 64 points per cell
_PROBES = 32  # cells searched per query


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32), so inner product = cosine similarity."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(points: np.ndarray, queries: np.ndarray | None, k: int) -> np.ndarray:
    """Indices into ``points`` of the ``k`` most cosine-similar points of each query.

    ``queries=None`` asks for the neighbours of every point among the others
    (a point is never its own neighbour). Returns an int64 array of shape
    (n_queries, k), nearest first; ``k`` must be below the number of points
    when ``queries`` is None and at most it otherwise.
    """
    index = NeighbourIndex(points)
    if queries is not None:
        return index.search(queries, k)
    if k + 1 > len(index):
        raise ValueError(f"asked for {k} neighbours among {len(index)} points")
    if index.exact:
        return _exact(index.base, index.base, k + 1, True)[:, :k]
    return _drop_self(index.search_unit(index.base, k + 1), k)


def closest_to(vectors: np.ndarray, query: np.ndarray, top: int, *, skip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, cosine similarities) of the ``top`` rows of ``vectors`` closest to one ``query`` vector, best first.

    Exact: one matrix-vector product (a few tens of milliseconds at 100,000 x 1280). ``skip``: a
    boolean mask of rows never returned (the query's own rows).
    """
    similarity = unit_rows(vectors) @ unit_rows(query[None])[0]
    if skip is not None:
        similarity = np.where(skip, -np.inf, similarity)
    top = min(top, int(np.isfinite(similarity).sum()))
    if top <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    best = np.argpartition(-similarity, top - 1)[:top]
    best = best[np.argsort(-similarity[best], kind="stable")]
    return best.astype(np.int64), similarity[best].astype(np.float32)


class NeighbourIndex:
    """``points`` indexed once for many searches (a map's fitted points placing a million others in blocks).

    Exact at or below :data:`EXACT_LIMIT` points, an HNSW graph above it, an inverted file above
    :data:`INVERTED_FILE_ABOVE`.
    """

    def __init__(self, points: np.ndarray):
        self.base = unit_rows(points)
        self.exact = len(self.base) <= EXACT_LIMIT
        self._graph = None
        if self.exact:
            return
        import faiss

        n, dim = self.base.shape
        if n > INVERTED_FILE_ABOVE:
            cells = n // _POINTS_PER_CELL
            self._graph = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
            self._graph.cp.seed = 0  # seeded k-means: the same cells every time
            training = np.random.default_rng(0).choice(n, size=min(n, 64 * cells), replace=False)
            self._graph.train(self.base[np.sort(training)])
            self._graph.nprobe = _PROBES
        else:
            self._graph = faiss.IndexHNSWFlat(dim, _HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
        self._graph.add(self.base)

    def __len__(self) -> int:
        return len(self.base)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Indices of the ``k`` points most cosine-similar to each query, nearest first (int64, n_queries x k)."""
        return self.search_unit(unit_rows(queries), k)

    def search_unit(self, query: np.ndarray, k: int) -> np.ndarray:
        if k > len(self.base):
            raise ValueError(f"asked for {k} neighbours among {len(self.base)} points")
        if self.exact:
            return _exact(self.base, query, k, False)
        if hasattr(self._graph, "hnsw"):
            self._graph.hnsw.efSearch = max(_HNSW_SEARCH_DEPTH, 2 * k)
        _, found = self._graph.search(query, k)
        # A slot with no point comes back as -1 (an unreachable graph node, or probed cells holding fewer than k
        # points: never seen with these settings): use the best hit instead.
        missing = found < 0
        if missing.any():
            found[missing] = np.broadcast_to(found[:, :1], found.shape)[missing]
        return found.astype(np.int64)


def _exact(base: np.ndarray, query: np.ndarray, want: int, self_query: bool) -> np.ndarray:
    out = np.empty((len(query), want), dtype=np.int64)
    for start in range(0, len(query), _BLOCK):
        similarity = query[start : start + _BLOCK] @ base.T
        if self_query:
            rows = np.arange(len(similarity))
            similarity[rows, start + rows] = np.inf  # itself first, then removed by the caller's slice
        top = np.argpartition(-similarity, want - 1, axis=1)[:, :want]
        order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
        out[start : start + _BLOCK] = np.take_along_axis(top, order, axis=1)
    if self_query:
        return out[:, 1:] if want > 1 else out[:, :0]
    return out


def _drop_self(found: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's own index (approximate search may miss it: then drop the farthest)."""
    own = np.arange(len(found))[:, None]
    is_self = found == own
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False
    return found[keep].reshape(len(found), -1)[:, :k]


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int = 10, max_queries: int = 5000, seed: int = 0) -> float:
    """Leave-one-out k-NN accuracy of labelled points: how often the majority of a
    point's k nearest other points shares its label. Evaluated on at most
    ``max_queries`` random points (against all of them) to stay fast at 100k.
    """
    n = len(points)
    if n < 2:
        return float("nan")
    codes, names = pd.factorize(labels)
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    queries = rng.choice(n, size=min(max_queries, n), replace=False)
    neighbours = _nearest_euclidean(np.asarray(points, dtype=np.float32), queries, k + 1)
    correct = 0
    for query, row in zip(queries, neighbours):
        others = row[row != query][:k]  # the point itself is not its own neighbour
        votes = np.bincount(codes[others], minlength=len(names))
        correct += int(votes.argmax() == codes[query])
    return correct / len(queries)


def _nearest_euclidean(points: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` points nearest (Euclidean) to each of the points ``queries``, nearest first.

    A k-d tree for map coordinates; for embeddings, blocks of one matrix product (|p|^2 - 2 q.p ranks
    points as |q - p|^2 does): at 5,000 queries among 20,000 1280-d vectors 1 s against scikit-learn's 7 s.
    """
    if points.shape[1] <= 16:
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points[queries], return_distance=False)
    squared = np.einsum("ij,ij->i", points, points)
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 1024):
        distance = squared[None, :] - 2 * (points[queries[start : start + 1024]] @ points.T)
        top = np.argpartition(distance, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(distance, top, axis=1), axis=1, kind="stable")
        out[start : start + 1024] = np.take_along_axis(top, order, axis=1)
    return out
