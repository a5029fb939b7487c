"""Projections of embeddings to 2D/3D maps (PaCMAP by default), cached, with a quality score.

A projection is computed on the distinct images (content hashes) of a
version that have vectors, and cached under
``<data set>/projections/<embedding key>/`` by the settings and that set of
images, never by labels: after a relabel the same map opens with no work.
Its quality is the k-NN (k=10) accuracy of the labelled points in the map
next to the same measure in the full embedding, so a user can tell whether
the map keeps the neighbourhoods the model sees.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.embed import load_embeddings
from core.errors import UserError
from core.measured import record as record_rate
from core.tables import UNDEFINED
from core.workspace import DatasetPaths

METHODS = ("pacmap", "tsne", "pca")
# Below this many points PaCMAP and t-SNE have too few neighbours to work
# with; the map falls back to PCA and says so.
MIN_POINTS_FOR_NEIGHBOUR_METHODS = 20
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ProjectionConfig:
    """Every setting of a projection.

    ``iterations`` are PaCMAP's three phases (near-pair attraction, mid-near
    pairs, local refinement); pacmap reads a single integer as the last phase
    only, so they are always passed as a triple. ``pca_dims`` reduces the
    embedding with PCA first (0 = no reduction), which is most of the speed
    at 70k points. The defaults were chosen by bench/bench_project.py.
    """

    method: str = "pacmap"
    dims: int = 3
    n_neighbors: int = 10
    iterations: tuple[int, int, int] = (100, 100, 100)
    pca_dims: int = 100
    perplexity: float = 30.0  # t-SNE only
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"Unknown projection method '{self.method}': use one of {', '.join(METHODS)}.")
        if self.dims not in (2, 3):
            raise UserError(f"A map has 2 or 3 dimensions, not {self.dims}.")
        if not 2 <= self.n_neighbors <= 200:
            raise UserError(f"n_neighbors {self.n_neighbors} is out of range: use 2 to 200.")
        if len(self.iterations) != 3 or any((not isinstance(i, (int, np.integer))) or i < 0 for i in self.iterations) or sum(self.iterations) == 0:
            raise UserError(f"iterations must be three whole numbers of 0 or more (PaCMAP's three phases), not {self.iterations}.")
        if self.pca_dims < 0 or self.pca_dims == 1:
            raise UserError(f"pca_dims must be 0 (no reduction) or at least 2, not {self.pca_dims}.")
        if not 1 <= self.perplexity <= 500:
            raise UserError(f"perplexity {self.perplexity} is out of range: use 1 to 500.")

    def key(self) -> str:
        if self.method == "pca":
            return f"pca-{self.dims}d"
        if self.method == "tsne":
            return f"tsne-{self.dims}d-p{self.perplexity:g}-pca{self.pca_dims}-s{self.seed}"
        phases = "-".join(str(i) for i in self.iterations)
        return f"pacmap-{self.dims}d-n{self.n_neighbors}-it{phases}-pca{self.pca_dims}-s{self.seed}"


# --------------------------------------------------------------------------- pure functions


def _pca(vectors: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """PCA to ``dims`` columns; zero columns pad what too few points cannot give."""
    n, d = vectors.shape
    out = np.zeros((n, dims), dtype=np.float32)
    keep = min(dims, n - 1, d)
    if keep >= 1:
        from sklearn.decomposition import PCA

        out[:, :keep] = PCA(n_components=keep, random_state=seed, svd_solver="auto").fit_transform(vectors)
    return out


def project_vectors(vectors: np.ndarray, config: ProjectionConfig) -> tuple[np.ndarray, str, str]:
    """(coordinates float32 n x dims, method used, note). Pure: same input, same output."""
    config.validate()
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise UserError("There are no embedded images to project: embed the data set first.")
    if not np.isfinite(vectors).all():
        bad = int((~np.isfinite(vectors).all(axis=1)).sum())
        raise UserError(f"{bad} embedding(s) contain NaN or infinite values; re-embed the data set (the cache may be damaged).")
    n = len(vectors)
    if config.method == "pca":
        return _pca(vectors, config.dims, config.seed), "pca", ""
    if n < MIN_POINTS_FOR_NEIGHBOUR_METHODS:
        note = f"{config.method} needs at least {MIN_POINTS_FOR_NEIGHBOUR_METHODS} images; with {n} this map uses PCA."
        return _pca(vectors, config.dims, config.seed), "pca", note
    reduced = vectors
    if config.pca_dims and vectors.shape[1] > config.pca_dims:
        reduced = _pca(vectors, min(config.pca_dims, n - 1), config.seed)
    if config.method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(config.perplexity, (n - 1) / 3)
        coords = TSNE(n_components=config.dims, perplexity=perplexity, init="pca", random_state=config.seed).fit_transform(reduced)
        note = f"perplexity lowered to {perplexity:.1f} for {n} images" if perplexity < config.perplexity else ""
        return coords.astype(np.float32), "tsne", note
    import pacmap

    logging.getLogger("pacmap").setLevel(logging.ERROR)  # it warns on every seeded or 3D run
    neighbours = min(config.n_neighbors, n - 2)
    reducer = pacmap.PaCMAP(
        n_components=config.dims,
        n_neighbors=neighbours,
        num_iters=tuple(int(i) for i in config.iterations),
        apply_pca=False,  # done above, where the setting is visible
        random_state=config.seed,
    )
    coords = reducer.fit_transform(reduced, init="pca").astype(np.float32)
    if not np.isfinite(coords).all():
        raise UserError("PaCMAP produced non-finite coordinates; try more neighbours, another seed, or method pca.")
    return coords, "pacmap", (f"n_neighbors lowered to {neighbours} for {n} images" if neighbours < config.n_neighbors else "")


def knn_accuracy(points: np.ndarray, labels: np.ndarray, k: int = 10, max_queries: int = 5000, seed: int = 0) -> float:
    """Leave-one-out k-NN accuracy of labelled points: how often the majority of a
    point's k nearest other points shares its label. Evaluated on at most
    ``max_queries`` random points (against all of them) to stay fast at 100k.
    """
    from sklearn.neighbors import NearestNeighbors

    n = len(points)
    if n < 2:
        return float("nan")
    codes, names = pd.factorize(labels)
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    queries = rng.choice(n, size=min(max_queries, n), replace=False)
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points[queries], return_distance=False)
    correct = 0
    for query, row in zip(queries, neighbours):
        others = row[row != query][:k]  # the point itself is not its own neighbour
        votes = np.bincount(codes[others], minlength=len(names))
        correct += int(votes.argmax() == codes[query])
    return correct / len(queries)


def projection_quality(vectors: np.ndarray, coords: np.ndarray, labels: np.ndarray, k: int = 10, max_queries: int = 5000, seed: int = 0) -> dict:
    """k-NN accuracy of the labelled points in the embedding and in the map."""
    labelled = labels != UNDEFINED
    n = int(labelled.sum())
    if n < 2 or len(set(labels[labelled])) < 2:
        return {"k": k, "n_labelled": n, "knn_embedding": None, "knn_map": None, "note": "needs labelled images of at least 2 classes"}
    return {
        "k": k,
        "n_labelled": n,
        "n_queries": min(max_queries, n),
        "knn_embedding": round(knn_accuracy(vectors[labelled], labels[labelled], k, max_queries, seed), 4),
        "knn_map": round(knn_accuracy(coords[labelled], labels[labelled], k, max_queries, seed), 4),
    }


# --------------------------------------------------------------------------- data sets


@dataclass
class Projection:
    embedding_key: str
    config: ProjectionConfig
    sample_ids: np.ndarray
    coords: np.ndarray  # float32, one row per sample id
    method_used: str
    note: str
    quality: dict
    seconds: float  # time it took to compute (when it was computed)
    computed_now: bool  # False when it came from the cache
    missing: int  # rows of the version without an embedding (not on the map)

    def frame(self) -> pd.DataFrame:
        columns = {"sample_id": self.sample_ids, "x": self.coords[:, 0], "y": self.coords[:, 1]}
        if self.coords.shape[1] == 3:
            columns["z"] = self.coords[:, 2]
        return pd.DataFrame(columns)

    def describe(self) -> str:
        text = f"{self.method_used} {self.coords.shape[1]}D map of {len(self.sample_ids)} images"
        text += f" (computed in {self.seconds:.1f} s)" if self.computed_now else " (from the cache)"
        if self.quality.get("knn_map") is not None:
            text += f"; {self.quality['k']}-NN accuracy {self.quality['knn_map']:.3f} on the map vs {self.quality['knn_embedding']:.3f} in the embedding"
        if self.note:
            text += f". {self.note}"
        return text


def _set_digest(content_hashes: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for value in np.sort(content_hashes.astype(str)):
        digest.update(value.encode())
    return digest.hexdigest()


def _cache_path(workspace, name: str, embedding_key: str, config: ProjectionConfig, distinct: np.ndarray) -> Path:
    return DatasetPaths(workspace, name).projections / embedding_key / f"{config.key()}-{_set_digest(distinct)}.parquet"


def project_dataset(
    workspace: str | os.PathLike | None,
    name: str,
    embedding_key: str,
    config: ProjectionConfig = ProjectionConfig(),
    *,
    version: int | None = None,
    progress: Progress | None = None,
    compute: bool = True,
    rows: pd.DataFrame | None = None,
) -> Projection | None:
    """The map of ``version``: from the cache if this set of images was projected
    with these settings before, else computed (unless ``compute`` is False, then None).
    ``rows``: the version's rows if the caller has them (the table is then not read again).
    """
    config.validate()
    # Which rows have a vector decides the cache file; the vectors themselves are read only to compute.
    embeddings = load_embeddings(workspace, name, embedding_key, version, with_vectors=False, rows=rows)
    distinct_hashes, first = np.unique(embeddings.content_hashes.astype(str), return_index=True)
    path = _cache_path(workspace, name, embedding_key, config, distinct_hashes)

    if path.exists():
        try:
            table = pq.read_table(path)
            meta = json.loads(table.schema.metadata[b"labelloop"])
            stored = table.to_pandas().set_index("content_hash")
            coords = stored.loc[embeddings.content_hashes.astype(str), [c for c in ("x", "y", "z") if c in stored.columns]].to_numpy(np.float32)
            return Projection(embedding_key, config, embeddings.sample_ids, coords, meta["method_used"], meta["note"], meta["quality"], meta["seconds"], False, embeddings.missing)
        except (OSError, KeyError, ValueError, pa.ArrowException):
            path.unlink(missing_ok=True)  # a damaged cache file is recomputed, never trusted
    if not compute:
        return None

    started = time.perf_counter()
    steps = 3
    if progress:
        progress(0, steps)
    embeddings = load_embeddings(workspace, name, embedding_key, version)
    distinct_hashes, first = np.unique(embeddings.content_hashes.astype(str), return_index=True)
    vectors = embeddings.vectors[first]
    labels = embeddings.labels[first]
    coords, method_used, note = project_vectors(vectors, config)
    if progress:
        progress(2, steps)
    quality = projection_quality(vectors, coords, labels, seed=config.seed)
    quality["version"] = version
    seconds = round(time.perf_counter() - started, 3)
    record_rate(workspace, f"project {config.method} {config.dims}d", len(distinct_hashes), seconds)
    columns = {"content_hash": distinct_hashes, "x": coords[:, 0], "y": coords[:, 1]}
    if config.dims == 3:
        columns["z"] = coords[:, 2]
    meta = {"config": asdict(config), "method_used": method_used, "note": note, "quality": quality, "seconds": seconds, "embedding_key": embedding_key}
    table = pa.table(columns).replace_schema_metadata({"labelloop": json.dumps(meta)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    if progress:
        progress(steps, steps)
    lookup = pd.Series(np.arange(len(distinct_hashes)), index=distinct_hashes)
    per_row = coords[lookup.loc[embeddings.content_hashes.astype(str)].to_numpy()]
    return Projection(embedding_key, config, embeddings.sample_ids, per_row, method_used, note, quality, seconds, True, embeddings.missing)
