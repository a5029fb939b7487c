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
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelloop.compute.measured import record as record_rate
from labelloop.compute.neighbours import NeighbourIndex, knn_accuracy
from labelloop.compute.reduction import PcaReduction
from labelloop.data.schema import UNDEFINED, image_set_digest
from labelloop.data.workspace import DatasetPaths, open_table
from labelloop.embed import embedding_cache, load_embeddings
from labelloop.errors import UserError

METHODS = ("pacmap", "tsne", "pca")
# Below this many points PaCMAP and t-SNE have too few neighbours to work
# with; the map falls back to PCA and says so.
MIN_POINTS_FOR_NEIGHBOUR_METHODS = 20
Progress = Callable[[int, int], None]
PLACEMENT_NEIGHBOURS = 10  # fitted points whose mean position places an image the fit did not see
_PCA_FIT_ROWS = 50_000  # rows the reduction before PaCMAP is fitted on
_PLACEMENT_TRIAL = 5_000  # images placed both ways when a fit leaves some out, to choose between the ways
_PLACEMENT_BLOCK = 100_000  # images placed at a time: bounded memory for their neighbours' positions
_SEARCH_BLOCK = 20_000  # images reduced and searched at a time: how soon the search takes the fit's core once it ends


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
    # The method is fitted on at most this many images (stratified by label); the rest are placed. PaCMAP's
    # optimiser runs on one core: at a million images on 2 cores a 200,000-image fit took 261 s of a 436 s
    # map, a 100,000-image one 81 s of 214 s, and placed the rest no worse (bench/bench_million.py).
    fit_points: int = 100_000

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
        if not 100 <= self.fit_points <= 5_000_000:
            raise UserError(f"fit_points {self.fit_points} is out of range: fit on 100 to 5,000,000 images.")

    def key(self) -> str:
        if self.method == "pca":
            return f"pca-{self.dims}d-fit{self.fit_points}"
        if self.method == "tsne":
            return f"tsne-{self.dims}d-p{self.perplexity:g}-pca{self.pca_dims}-s{self.seed}-fit{self.fit_points}"
        phases = "-".join(str(i) for i in self.iterations)
        return f"pacmap-{self.dims}d-n{self.n_neighbors}-it{phases}-pca{self.pca_dims}-s{self.seed}-fit{self.fit_points}"


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
        reduction = PcaReduction().fit(vectors, min(config.pca_dims, n - 1), config.seed, max_rows=_PCA_FIT_ROWS)
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
    seconds: float  # time the fit took (when it was made)
    computed_now: bool  # False when everything came from the cache
    missing: int  # rows of the version without an embedding (not on the map)
    n_fitted: int = 0  # distinct images the method was fitted on
    n_placed: int = 0  # distinct images placed on the fitted map (see quality["placement"])
    fitted_at: str = ""  # when the fit was made (UTC, ISO 8601)
    steps_seconds: dict = field(default_factory=dict)  # load / fit / place / quality: where the fit's time went

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
        if self.n_placed:
            text += f". {describe_placement(self.n_fitted, self.n_placed, self.quality.get('placement', {}))}"
        if self.note:
            text += f". {self.note}"
        return text


def describe_placement(n_fitted: int, n_placed: int, placement: dict) -> str:
    """E.g. 'Fitted on 100,000 images; 900,000 placed by their 10 nearest fitted images (10-NN accuracy of
    images placed each way: neighbours 0.810, PaCMAP's transform 0.780; measured on 5,000 images the fit left out)'."""
    text = f"Fitted on {n_fitted:,} images; {n_placed:,} placed"
    used = placement.get("used", "neighbours")
    text += " by PaCMAP's transform" if used == "transform" else f" by their {PLACEMENT_NEIGHBOURS} nearest fitted images"
    names = {"neighbours": "neighbours", "transform": "PaCMAP's transform"}
    measured = [f"{names[way]} {placement[way]:.3f}" for way in names if placement.get(way) is not None]
    if measured:
        text += f" (10-NN accuracy of images placed each way: {', '.join(measured)}; measured on {placement.get('measured_on', 'a trial set')})"
    if placement.get("transform_skipped"):
        text += f". PaCMAP's transform was not tried: {placement['transform_skipped']}"
    return text


def _fit_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
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


class _MapCache:
    """The fits of one (embedding, settings) pair: ``<fit id>.parquet`` holds every image the fit placed
    (``fitted`` says which it was fitted on), ``<fit id>.reduction.npz`` the PCA it searched in, and
    ``<fit id>.added.parquet`` the images placed on it later. The newest fit is the current one."""

    def __init__(self, workspace, name: str, embedding_key: str, config: ProjectionConfig, *, reuse: bool = True):
        self.folder = DatasetPaths(workspace, name).projections / embedding_key / config.key()
        if reuse and self.current() is None:
            self.folder = self._same_map_with_another_limit(config) or self.folder

    def current(self) -> str | None:
        return _newest_fit(self.folder)

    def _same_map_with_another_limit(self, config: ProjectionConfig):
        """A map made with the same settings but another ``fit_points`` (an older default) is this map if it
        fitted every image it has and no more than ``config.fit_points``: the fit sample was then all of them."""
        base = config.key().rsplit("-fit", 1)[0]
        for folder in sorted(self.folder.parent.glob(f"{base}-fit*")) if self.folder.parent.is_dir() else []:
            if folder == self.folder or folder.name.rsplit("-fit", 1)[0] != base:
                continue
            fit_id = _newest_fit(folder)
            if fit_id is None:
                continue
            try:
                fitted = pq.read_table(folder / f"{fit_id}.parquet", columns=["fitted"]).column("fitted").to_numpy()
            except (OSError, KeyError, pa.ArrowException):
                continue
            if fitted.all() and len(fitted) <= config.fit_points:
                return folder
        return None

    def read(self, fit_id: str) -> tuple[pd.DataFrame, dict]:
        """(positions indexed by content hash, with a ``fitted`` column; the fit's metadata)."""
        table = pq.read_table(self.folder / f"{fit_id}.parquet")
        meta = json.loads(table.schema.metadata[b"labelloop"])
        frame = table.to_pandas().set_index("content_hash")
        added = self.folder / f"{fit_id}.added.parquet"
        if added.exists():
            frame = pd.concat([frame, pq.read_table(added).to_pandas().set_index("content_hash").assign(fitted=False)])
        return frame, meta

    def write(self, fit_id: str, suffix: str, table: pa.Table) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{fit_id}{suffix}"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)

    def drop(self, fit_id: str) -> None:
        for path in self.folder.glob(f"{fit_id}*"):
            path.unlink(missing_ok=True)


class _SavedViews:
    """One image set's points on a fit, saved beside the fit: opening the map in a new server process
    then reads 20 MB instead of matching a million content hashes against the cache and the fit (2.4 s -> 0.2 s).

    Keyed by everything the points depend on: the fit and the images placed on it since, the embedding
    cache's chunk files (which rows have a vector), and the rows' sample ids and content hashes. Points
    on a fit never move, so a view is never stale under its key; the newest few per fit are kept.
    """

    KEEP = 4

    def __init__(self, vectors, rows: pd.DataFrame) -> None:
        self.images = "|".join([*(chunk.name for chunk in vectors.chunks()), image_set_digest(rows)])

    def _path(self, cache: _MapCache, fit_id: str):
        added = cache.folder / f"{fit_id}.added.parquet"
        added_state = f"{added.stat().st_size}:{added.stat().st_mtime_ns}" if added.exists() else "none"
        key = hashlib.blake2b(f"{fit_id}|{added_state}|{self.images}".encode(), digest_size=12).hexdigest()
        return cache.folder / f"{fit_id}.view-{key}.npz"

    def load(self, cache: _MapCache, fit_id: str, embedding_key: str, config: ProjectionConfig) -> Projection | None:
        path = self._path(cache, fit_id)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:
                sample_ids, coords, (missing, n_fitted, n_placed) = saved["sample_ids"], saved["coords"], saved["counts"].tolist()
            meta = json.loads(pq.read_schema(cache.folder / f"{fit_id}.parquet").metadata[b"labelloop"])
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            path.unlink(missing_ok=True)  # damaged (or its fit is): made again from the fit
            return None
        return Projection(
            embedding_key, config, sample_ids, coords, meta["method_used"], meta["note"], meta["quality"], meta["seconds"], False, int(missing),
            n_fitted=int(n_fitted), n_placed=int(n_placed), fitted_at=meta.get("fitted_at", ""), steps_seconds=meta.get("steps_seconds", {}),
        )

    def save(self, cache: _MapCache, fit_id: str, projection: Projection) -> Projection:
        """Save ``projection`` as the view of these images on ``fit_id``; returns it."""
        path = self._path(cache, fit_id)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as out:
                np.savez(out, sample_ids=projection.sample_ids, coords=projection.coords, counts=np.array([projection.missing, projection.n_fitted, projection.n_placed]))
            os.replace(tmp, path)
        except OSError:  # a read-only or full disk: the map still opens, only not faster next time
            tmp.unlink(missing_ok=True)
            return projection
        for old in sorted(cache.folder.glob(f"{fit_id}.view-*.npz"), key=lambda view: view.stat().st_mtime_ns)[: -self.KEEP]:
            old.unlink(missing_ok=True)
        return projection


def _newest_fit(folder) -> str | None:
    """The id of the newest fit in a map folder (its positions file, not the files beside it), or None."""
    fits = sorted(p.name[: -len(".parquet")] for p in folder.glob("fit-*.parquet") if p.name.count(".") == 1) if folder.is_dir() else []
    return fits[-1] if fits else None


def _positions_table(hashes: np.ndarray, coords: np.ndarray, fitted: np.ndarray | None = None, meta: dict | None = None) -> pa.Table:
    columns = {"content_hash": hashes.astype(str), "x": coords[:, 0], "y": coords[:, 1]}
    if coords.shape[1] == 3:
        columns["z"] = coords[:, 2]
    if fitted is not None:
        columns["fitted"] = fitted
    table = pa.table(columns)
    return table.replace_schema_metadata({"labelloop": json.dumps(meta)}) if meta is not None else table


def has_map(workspace, name: str, embedding_key: str, config: ProjectionConfig = ProjectionConfig()) -> bool:
    """Whether these settings have a fitted map (new images are then placed on it, not refitted)."""
    return _MapCache(workspace, name, embedding_key, config).current() is not None


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
    refit: bool = False,
) -> Projection | None:
    """The map of ``version``.

    The first map of an embedding with these settings is fitted on at most
    ``config.fit_points`` of the version's distinct images (stratified by
    label); the others are placed on it by PaCMAP's transform or by their
    nearest fitted images, whichever placed a trial set better. Later images
    (added since) are placed by their nearest fitted images: adding images
    never refits. ``refit`` fits a new map on the version as it is now.
    With ``compute`` False nothing is computed: None unless every image of
    the version is on the current map. ``rows``: the version's rows if the
    caller has them (the table is then not read again).
    """
    config.validate()
    rows = open_table(workspace, name).read(version) if rows is None else rows
    views = _SavedViews(embedding_cache(workspace, name, embedding_key), rows)
    cache = _MapCache(workspace, name, embedding_key, config, reuse=not refit)
    fit_id = None if refit else cache.current()
    if fit_id is not None:
        saved = views.load(cache, fit_id, embedding_key, config)
        if saved is not None:
            return saved
    # Which rows have a vector decides what is on the map; the vectors themselves are read only to compute.
    embeddings = load_embeddings(workspace, name, embedding_key, version, with_vectors=False, rows=rows)
    hashes = embeddings.content_hashes
    known, meta = None, None
    if fit_id is not None:
        try:
            known, meta = cache.read(fit_id)
        except (OSError, KeyError, ValueError, pa.ArrowException):
            cache.drop(fit_id)  # a damaged cache file is refitted, never trusted
            fit_id = None
            cache = _MapCache(workspace, name, embedding_key, config, reuse=False)
    if known is not None:
        # Hash lookups, not sorts: np.unique over a million 32-character hashes takes seconds each time.
        positions = known.index.get_indexer(hashes)
        unplaced = pd.unique(hashes[positions < 0])
        if len(unplaced) == 0:
            return views.save(cache, fit_id, _projection(embedding_key, config, embeddings, known, meta, computed_now=False, positions=positions))
        if not compute:
            return None
        _place_added(workspace, name, embedding_key, cache, fit_id, meta, known, unplaced)
        known, meta = cache.read(fit_id)
        return views.save(cache, fit_id, _projection(embedding_key, config, embeddings, known, meta, computed_now=True))
    if not compute:
        return None
    fit_id, known, meta = _fit(workspace, name, embedding_key, config, cache, version, rows, progress)
    return views.save(cache, fit_id, _projection(embedding_key, config, embeddings, known, meta, computed_now=True))


def _projection(embedding_key: str, config: ProjectionConfig, embeddings, known: pd.DataFrame, meta: dict, *, computed_now: bool, positions: np.ndarray | None = None) -> Projection:
    """``positions``: where each of the embeddings' hashes is in ``known``, when the caller has looked them up already."""
    if positions is None:
        positions = known.index.get_indexer(embeddings.content_hashes)  # every hash is on the map here
    coords = known[[c for c in ("x", "y", "z") if c in known.columns]].to_numpy(np.float32)[positions]
    on_map = known["fitted"].to_numpy(dtype=bool)[pd.unique(positions)]
    return Projection(
        embedding_key, config, embeddings.sample_ids, coords, meta["method_used"], meta["note"], meta["quality"], meta["seconds"], computed_now,
        embeddings.missing, n_fitted=int(on_map.sum()), n_placed=int((~on_map).sum()), fitted_at=meta.get("fitted_at", ""),
        steps_seconds=meta.get("steps_seconds", {}),
    )


def _fit(workspace, name: str, embedding_key: str, config: ProjectionConfig, cache: _MapCache, version: int | None, rows: pd.DataFrame, progress: Progress | None):
    started = time.perf_counter()
    steps = 4
    if progress:
        progress(0, steps)
    embeddings = load_embeddings(workspace, name, embedding_key, version, rows=rows)  # the rows project_dataset read: not read again
    hashes = embeddings.content_hashes.astype(str)
    first = np.flatnonzero(~pd.Index(hashes).duplicated())  # a hash table, not a sort of a million strings
    if len(first) == len(hashes):  # every row a distinct image: no 5 GB copy of the vectors at a million
        distinct_hashes, vectors, labels = hashes, embeddings.vectors, embeddings.labels
    else:
        distinct_hashes, vectors, labels = hashes[first], embeddings.vectors[first], embeddings.labels[first]
    del embeddings
    steps_took = {"load": time.perf_counter() - started}  # seconds per step: the map page and the benchmark say where time went
    sample = _fit_sample(labels, config.fit_points, config.seed)
    in_sample = np.zeros(len(distinct_hashes), dtype=bool)
    in_sample[sample] = True
    search = PlacementSearch(vectors, np.flatnonzero(~in_sample))
    try:
        fitted = fit_map(vectors[sample], config, on_reduced=search.start)
    except BaseException:
        search.stop()
        raise
    steps_took["fit"] = time.perf_counter() - started - sum(steps_took.values())
    if progress:
        progress(2, steps)
    coords = np.zeros((len(distinct_hashes), config.dims), dtype=np.float32)
    coords[sample] = fitted.coords
    if not search.started:  # a fit that reduced nothing before it started (PCA maps, too few images)
        search.start(fitted.reduction, fitted.reduced)
    placement = _place_rest(fitted, search, labels, in_sample, coords, config.seed)
    steps_took["place"] = time.perf_counter() - started - sum(steps_took.values())
    if progress:
        progress(3, steps)
    quality = projection_quality(vectors[sample], fitted.coords, labels[sample], seed=config.seed)
    steps_took["quality"] = time.perf_counter() - started - sum(steps_took.values())
    quality["version"] = version
    quality["placement"] = placement
    seconds = round(time.perf_counter() - started, 3)
    record_rate(workspace, f"project {config.method} {config.dims}d", len(distinct_hashes), seconds)
    meta = {
        "config": asdict(config), "method_used": fitted.method_used, "note": fitted.note, "quality": quality, "seconds": seconds,
        "steps_seconds": {step: round(value, 1) for step, value in steps_took.items()},
        "embedding_key": embedding_key, "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    fit_id = f"fit-{time.time_ns():020d}-{uuid.uuid4().hex[:6]}"
    if fitted.reduction is not None:
        cache.folder.mkdir(parents=True, exist_ok=True)
        np.savez(cache.folder / f"{fit_id}.reduction.npz", **fitted.reduction.arrays())
    # Written last: the positions file is what makes a fit exist.
    cache.write(fit_id, ".parquet", _positions_table(distinct_hashes, coords, in_sample, meta))
    if progress:
        progress(steps, steps)
    known, meta = cache.read(fit_id)
    return fit_id, known, meta


class PlacementSearch:
    """The nearest fitted images of every image a map's fit leaves out, searched on a thread of its own.

    Started as soon as the fit's vectors are reduced, it runs beside PaCMAP's optimisation, which uses
    one core: on a 2-core machine the other core finds the neighbours of about half of the rest
    of a million images before the fit ends (with one core to spare while the fit runs, all of them after).
    """

    def __init__(self, vectors: np.ndarray, rows: np.ndarray, k: int = PLACEMENT_NEIGHBOURS):
        self.vectors, self.rows, self.k = vectors, rows, k
        self.index: NeighbourIndex | None = None
        self._found = np.zeros((len(rows), 0), dtype=np.int64)
        self._fitting = threading.Event()  # set while the fit runs: leave it a core
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, reduction: PcaReduction | None, reduced: np.ndarray) -> None:
        self._fitting.set()
        self._thread = threading.Thread(target=self._run, args=(reduction, reduced), name="map placement search", daemon=True)
        self._thread.start()

    def _run(self, reduction: PcaReduction | None, reduced: np.ndarray) -> None:
        try:
            threads = _search_threads()

            def leave_the_fit_a_core() -> None:
                if threads:  # OpenMP thread counts are per calling thread: this sets only this thread's
                    import faiss

                    faiss.omp_set_num_threads(max(1, threads - 1) if self._fitting.is_set() else threads)

            leave_the_fit_a_core()
            self.index = NeighbourIndex(reduced)
            if not len(self.rows):
                return
            k = max(1, min(self.k, len(self.index)))
            self._found = np.empty((len(self.rows), k), dtype=np.int64)
            for start in range(0, len(self.rows), _SEARCH_BLOCK):
                if self._stopping.is_set():
                    return
                leave_the_fit_a_core()
                block = self.vectors[self.rows[start : start + _SEARCH_BLOCK]]
                self._found[start : start + _SEARCH_BLOCK] = self.index.search(reduction.transform(block) if reduction is not None else block, k)
        except BaseException as error:  # handed to whoever waits for the result
            self._error = error

    def result(self) -> np.ndarray:
        """Indices into the fitted points of each left-out image's ``k`` nearest, nearest first (waits for the search)."""
        self._fitting.clear()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._found

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()


def _search_threads() -> int:
    """The FAISS threads this process may use (0 when FAISS is not installed: exact search only)."""
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.omp_get_max_threads()


def _place_rest(fitted: FittedMap, search: PlacementSearch, labels: np.ndarray, in_sample: np.ndarray, coords: np.ndarray, seed: int) -> dict:
    """Place the points the fit left out (filling ``coords``); return how each way placed a trial set.

    Neighbour placement costs one search per image (``search`` has run them, mostly while the fit ran).
    PaCMAP's ``transform`` re-optimises every fitted point together with the new ones, so one call costs
    about as much as the fit's own optimisation: it is tried only when all the rest fit in one call no
    larger than the fit (at 1,000,000 images and a 100,000-image fit it would cost several fits).
    """
    rest = search.rows
    vectors = search.vectors
    fitted_labels = labels[in_sample]
    found = search.result()
    fitted.adopt_index(search.index)
    if len(rest) == 0 and len(fitted.coords) < 2:
        return {"used": "neighbours", "neighbours": None, "transform": None, "measured_on": "nothing: too few images"}
    if len(rest) == 0:
        # Nothing to place now; how images added later will be placed, measured on the fitted ones themselves.
        trial = np.random.default_rng(seed).choice(len(fitted.coords), size=min(_PLACEMENT_TRIAL, len(fitted.coords)), replace=False)
        left_out = place_left_out(fitted, trial)
        return {"used": "neighbours", "neighbours": placement_accuracy(fitted, left_out, fitted_labels[trial], fitted_labels), "transform": None, "measured_on": "fitted images, each left out of its own placement"}
    by_neighbours = np.empty((len(rest), coords.shape[1]), dtype=np.float32)
    for start in range(0, len(rest), _PLACEMENT_BLOCK):  # bounded memory: one block of (images x neighbours x dims)
        by_neighbours[start : start + _PLACEMENT_BLOCK] = fitted.coords[found[start : start + _PLACEMENT_BLOCK]].mean(axis=1)
    transform_tried = fitted.reducer is not None and len(rest) <= len(fitted.coords)
    by_transform = place_by_transform(fitted, vectors[rest]) if transform_tried else None
    trial = np.sort(np.random.default_rng(seed).choice(len(rest), size=min(_PLACEMENT_TRIAL, len(rest)), replace=False))
    scores = {
        "neighbours": placement_accuracy(fitted, by_neighbours[trial], labels[rest[trial]], fitted_labels),
        "transform": None if by_transform is None else placement_accuracy(fitted, by_transform[trial], labels[rest[trial]], fitted_labels),
    }
    used = "transform" if scores["transform"] is not None and (scores["neighbours"] is None or scores["transform"] > scores["neighbours"]) else "neighbours"
    coords[rest] = by_transform if used == "transform" else by_neighbours
    placement = {"used": used, **scores, "measured_on": f"{len(trial):,} images the fit left out"}
    if fitted.reducer is not None and not transform_tried:
        placement["transform_skipped"] = f"{len(rest):,} images to place is more than the {len(fitted.coords):,} fitted: transform re-optimises every fitted point with them, several fits' time"
    return placement


def _place_added(workspace, name: str, embedding_key: str, cache: _MapCache, fit_id: str, meta: dict, known: pd.DataFrame, unplaced: np.ndarray) -> None:
    """Place images added since the fit by their nearest fitted images, and remember them."""
    fitted_hashes = known.index[known["fitted"].to_numpy(dtype=bool)].to_numpy(dtype=str)
    # The fitted images' vectors as they were fitted: an image removed from this version is still in the cache.
    cached_index, matrix = embedding_cache(workspace, name, embedding_key).load()
    positions = cached_index.get_indexer(fitted_hashes)
    if (positions < 0).any():
        raise UserError("Some images this map was fitted on are no longer in the embedding cache; refit the map.")
    reduction_file = cache.folder / f"{fit_id}.reduction.npz"
    reduction = PcaReduction.from_arrays(dict(np.load(reduction_file, allow_pickle=False))) if reduction_file.exists() else None
    base = matrix[positions]
    fitted = FittedMap(known.loc[fitted_hashes, [c for c in ("x", "y", "z") if c in known.columns]].to_numpy(np.float32), meta["method_used"], "", reduction, reduction.transform(base) if reduction else base)
    new_vectors = matrix[cached_index.get_indexer(unplaced)]
    coords = place_by_neighbours(fitted, new_vectors)
    added_path = cache.folder / f"{fit_id}.added.parquet"
    table = _positions_table(unplaced, coords)
    if added_path.exists():
        table = pa.concat_tables([pq.read_table(added_path), table])
    cache.write(fit_id, ".added.parquet", table)
