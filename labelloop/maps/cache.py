"""A map on disk: the fits of an (embedding, settings) pair, the images placed on them later, and saved views of an image set on a fit."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from labelloop.data.schema import image_set_digest
from labelloop.data.workspace import DatasetPaths
from labelloop.maps.config import ProjectionConfig
from labelloop.maps.fit import PLACEMENT_NEIGHBOURS


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
        changed = self.config.changed_from(ProjectionConfig(dims=self.config.dims))
        if changed:
            text += f" ({', '.join(changed)})"
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


class MapCache:
    """The fits of one (embedding, settings) pair: ``<fit id>.parquet`` holds every image the fit placed
    (``fitted`` says which it was fitted on), ``<fit id>.reduction.npz`` the PCA it searched in, and
    ``<fit id>.added.parquet`` the images placed on it later. The newest fit is the current one."""

    def __init__(self, workspace, name: str, embedding_key: str, config: ProjectionConfig, *, reuse: bool = True):
        self.folder = DatasetPaths(workspace, name).projections / embedding_key / config.key()
        if reuse and self.current() is None:
            self.folder = self._same_map_with_another_limit(config) or self.folder

    def current(self) -> str | None:
        return newest_fit(self.folder)

    def _same_map_with_another_limit(self, config: ProjectionConfig):
        """A map made with the same settings but another ``fit_points`` (an older default) is this map if it
        fitted every image it has and no more than ``config.fit_points``: the fit sample was then all of them."""
        base = config.key().rsplit("-fit", 1)[0]
        for folder in sorted(self.folder.parent.glob(f"{base}-fit*")) if self.folder.parent.is_dir() else []:
            if folder == self.folder or folder.name.rsplit("-fit", 1)[0] != base:
                continue
            fit_id = newest_fit(folder)
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


class SavedViews:
    """One image set's points on a fit, saved beside the fit: opening the map in a new server process
    then reads 20 MB instead of matching a million content hashes against the cache and the fit (2.4 s -> 0.2 s).

    Keyed by everything the points depend on: the fit and the images placed on it since, the embedding
    cache's chunk files (which rows have a vector), and the rows' sample ids and content hashes. Points
    on a fit never move, so a view is never stale under its key; the newest few per fit are kept.
    """

    KEEP = 4

    def __init__(self, vectors, rows: pd.DataFrame) -> None:
        self.images = "|".join([*(chunk.name for chunk in vectors.chunks()), image_set_digest(rows)])

    def _path(self, cache: MapCache, fit_id: str):
        added = cache.folder / f"{fit_id}.added.parquet"
        added_state = f"{added.stat().st_size}:{added.stat().st_mtime_ns}" if added.exists() else "none"
        key = hashlib.blake2b(f"{fit_id}|{added_state}|{self.images}".encode(), digest_size=12).hexdigest()
        return cache.folder / f"{fit_id}.view-{key}.npz"

    def load(self, cache: MapCache, fit_id: str, embedding_key: str, config: ProjectionConfig) -> Projection | None:
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

    def save(self, cache: MapCache, fit_id: str, projection: Projection) -> Projection:
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


def newest_fit(folder) -> str | None:
    """The id of the newest fit in a map folder (its positions file, not the files beside it), or None."""
    fits = sorted(p.name[: -len(".parquet")] for p in folder.glob("fit-*.parquet") if p.name.count(".") == 1) if folder.is_dir() else []
    return fits[-1] if fits else None


def positions_table(hashes: np.ndarray, coords: np.ndarray, fitted: np.ndarray | None = None, meta: dict | None = None) -> pa.Table:
    columns = {"content_hash": hashes.astype(str), "x": coords[:, 0], "y": coords[:, 1]}
    if coords.shape[1] == 3:
        columns["z"] = coords[:, 2]
    if fitted is not None:
        columns["fitted"] = fitted
    table = pa.table(columns)
    return table.replace_schema_metadata({"labelloop": json.dumps(meta)}) if meta is not None else table
