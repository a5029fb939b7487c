"""Cached reads every page shares. A version never changes, so (table, version, commit time) is a safe key."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from labelloop.data.schema import image_set_digest
from labelloop.data.tables import LabelTable


@st.cache_resource(max_entries=16, show_spinner=False)
def _rows(table_path: str, version: int, committed_at: float) -> pd.DataFrame:
    return LabelTable(table_path).read(version)


def version_rows(table: LabelTable, version: int) -> pd.DataFrame:
    """The rows of ``version``, shared by every session without copying (at 100k rows a copy per
    call costs more than the page): treat them as read-only."""
    return _rows(str(table.path), version, table.version_info(version).timestamp.timestamp())


@st.cache_resource(max_entries=4, show_spinner=False)
def _projection(workspace: str, name: str, embedding_key: str, config_key: str, images: str, _config, _version: int, _rows_of_version: pd.DataFrame):
    from labelloop.maps.project import project_dataset

    # The settings go in by their key (what names the map on disk); _version is not part of the key
    # (leading underscore): any version with these images gives this map.
    return project_dataset(workspace, name, embedding_key, _config, version=_version, compute=False, rows=_rows_of_version)


def cached_projection(workspace, table: LabelTable, name: str, embedding_key: str, config, version: int):
    """The cached map of ``version`` with ``config`` (labelloop.maps.config.ProjectionConfig) or None; never computes one
    (opening a page starts no heavy work).

    Keyed by which samples and images the version holds, not by the version:
    a relabel keeps the same map, so a commit reloads nothing.
    """
    return _projection(str(workspace), name, embedding_key, config.key(), cached_image_set_digest(table, version), config, version, version_rows(table, version))


def forget_projection() -> None:
    _projection.clear()


@st.cache_data(max_entries=64, show_spinner=False)
def _digest(table_path: str, version: int, committed_at: float) -> str:
    return image_set_digest(_rows(table_path, version, committed_at))


def cached_image_set_digest(table: LabelTable, version: int) -> str:
    """:func:`labelloop.data.schema.image_set_digest` of a version, computed once per image set
    (:meth:`LabelTable.image_set_version`): a relabel reuses its parent's."""
    info = table.version_info(table.image_set_version(version))
    return _digest(str(table.path), info.version, info.timestamp.timestamp())


@st.cache_resource(max_entries=16, show_spinner=False)
def _mirrored(thumbs_dir: str, images: str, _hashes) -> int:
    from pathlib import Path

    from labelloop.app.components.scatter3d import mirror_thumbnails

    return mirror_thumbnails(Path(thumbs_dir), _hashes)


def servable_thumbnails(table: LabelTable, thumbs_dir, version: int) -> None:
    """Make sure the browser can load every thumbnail of ``version`` by URL (once per image set)."""
    _mirrored(str(thumbs_dir), cached_image_set_digest(table, version), version_rows(table, version)["content_hash"])  # read only once per image set


@st.cache_resource(max_entries=8, show_spinner=False)
def _health(workspace: str, name: str, version: int, embedding: str | None, files: tuple):  # files: the cache key, never read
    from labelloop.scores.health import compute_health

    return compute_health(workspace, name, version=version, embedding=embedding, compute=False)


def cached_health(workspace, name: str, version: int, embedding: str | None = None):
    """The data-health report of ``version`` from the Health page's caches (partial, or None if never
    computed); never computes anything. Read again only when a health cache file changes."""
    from labelloop.data.workspace import DatasetPaths

    folder = DatasetPaths(workspace, name).local / "health"
    files = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.parquet"))) if folder.is_dir() else ()
    return _health(str(workspace), name, version, embedding, files)
