"""Maps of a data set: projections of its embeddings to 2D/3D (PaCMAP by default), cached, with a quality score.

This module puts them together for a version; the settings are in config.py, fitting and placing in
fit.py and placement.py, the files on disk in cache.py.

A projection is computed on the distinct images (content hashes) of a
version that have vectors, and cached under
``<data set>/projections/<embedding key>/`` by the settings and that set of
images, never by labels: after a relabel the same map opens with no work.
Its quality is the k-NN (k=10) accuracy of the labelled points in the map
next to the same measure in the full embedding, so a user can tell whether
the map keeps the neighbourhoods the model sees.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelloop.compute.measured import record as record_rate
from labelloop.compute.reduction import PcaReduction
from labelloop.data.workspace import open_table
from labelloop.embed import embedding_cache, load_embeddings
from labelloop.errors import UserError
from labelloop.maps.cache import MapCache, Projection, SavedViews, positions_table
from labelloop.maps.config import ProjectionConfig
from labelloop.maps.fit import (
    FittedMap,
    fit_map,
    fit_sample,
    place_by_neighbours,
    projection_quality,
)
from labelloop.maps.placement import PlacementSearch, place_rest

Progress = Callable[[int, int], None]


def has_map(workspace, name: str, embedding_key: str, config: ProjectionConfig = ProjectionConfig()) -> bool:
    """Whether these settings have a fitted map (new images are then placed on it, not refitted)."""
    return MapCache(workspace, name, embedding_key, config).current() is not None


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
    views = SavedViews(embedding_cache(workspace, name, embedding_key), rows)
    cache = MapCache(workspace, name, embedding_key, config, reuse=not refit)
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
            cache = MapCache(workspace, name, embedding_key, config, reuse=False)
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


def _fit(workspace, name: str, embedding_key: str, config: ProjectionConfig, cache: MapCache, version: int | None, rows: pd.DataFrame, progress: Progress | None):
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
    sample = fit_sample(labels, config.fit_points, config.seed)
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
    placement = place_rest(fitted, search, labels, in_sample, coords, config.seed)
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
    cache.write(fit_id, ".parquet", positions_table(distinct_hashes, coords, in_sample, meta))
    if progress:
        progress(steps, steps)
    known, meta = cache.read(fit_id)
    return fit_id, known, meta


def _place_added(workspace, name: str, embedding_key: str, cache: MapCache, fit_id: str, meta: dict, known: pd.DataFrame, unplaced: np.ndarray) -> None:
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
    table = positions_table(unplaced, coords)
    if added_path.exists():
        table = pa.concat_tables([pq.read_table(added_path), table])
    cache.write(fit_id, ".added.parquet", table)
