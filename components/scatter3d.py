"""The 3D map component: a three.js point cloud with orbit controls, a lasso, and hover thumbnails.

The browser gets each map's positions, sample ids and thumbnail names once,
as static binary files under ``static/maps/<map key>/`` (Streamlit serves
``static/`` at ``/app/static/``), and caches them by URL. A rerun sends only a
colour code and a label code per point (2 bytes each), so recolouring after
a relabel stays small at 100,000 points.

Thumbnails are served from ``static/thumbs/``: hard links (copies across
file systems) of the workspace's thumbnail cache, named by the first 16 hex
digits of the content hash. Nothing else of the workspace is ever exposed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import UserError
from core.workspace import thumbnail_path

STATIC = Path(__file__).resolve().parent.parent / "static"
MAPS = STATIC / "maps"
THUMBS = STATIC / "thumbs"

_component = st.components.v2.component(
    "labelloop.scatter3d",
    js=(Path(__file__).with_name("scatter3d.js")).read_text(encoding="utf-8"),
    css=(Path(__file__).with_name("scatter3d.css")).read_text(encoding="utf-8"),
)


@dataclass(frozen=True)
class PublishedMap:
    key: str
    url: str  # relative to the app root
    sample_ids: np.ndarray  # point i is sample_ids[i]


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def publish_map(sample_ids: np.ndarray, coords: np.ndarray, content_hashes: np.ndarray, identity: str) -> PublishedMap:
    """Write the static files of one map (once: the key covers everything in them)."""
    digest = hashlib.blake2b(digest_size=10)
    digest.update(identity.encode())
    digest.update(np.ascontiguousarray(sample_ids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(coords, dtype=np.float32).tobytes())
    key = digest.hexdigest()
    folder = MAPS / key
    if not (folder / "thumbs.bin").exists():
        folder.mkdir(parents=True, exist_ok=True)
        points = np.zeros((len(coords), 3), dtype=np.float32)
        points[:, : coords.shape[1]] = coords
        if len(points):  # centred, unit radius: the camera setup is the same for every map
            # Scaled by the 99th percentile, not the extremes: PaCMAP leaves a few far outliers.
            points -= np.median(points, axis=0)
            points /= max(float(np.percentile(np.abs(points[:, : coords.shape[1]]), 99)), 1e-9)
        if np.any(np.asarray(sample_ids) > np.iinfo(np.int32).max):
            raise ValueError("sample ids beyond 2^31 cannot be drawn on the map")
        _atomic_write(folder / "points.bin", points.tobytes())
        _atomic_write(folder / "ids.bin", np.asarray(sample_ids, dtype=np.int32).tobytes())
        names = np.array([bytes.fromhex(h[:16]) for h in content_hashes.astype(str)], dtype="S8")
        _atomic_write(folder / "thumbs.bin", names.tobytes())  # written last: its presence means complete
    return PublishedMap(key, f"app/static/maps/{key}/", np.asarray(sample_ids))


def mirror_thumbnails(thumbs_dir: Path, content_hashes: np.ndarray) -> int:
    """Make the thumbnails of these images servable; returns how many were added."""
    THUMBS.mkdir(parents=True, exist_ok=True)
    present = {name[:16] for name in os.listdir(THUMBS)}
    added = 0
    for content_hash in pd.unique(content_hashes.astype(str)):
        if content_hash[:16] in present:
            continue
        try:  # the hash names the files: a table edited by hand must not make it name others
            source = thumbnail_path(thumbs_dir, content_hash)
        except UserError:
            continue
        target = THUMBS / f"{content_hash[:16]}.jpg"
        try:
            os.link(source, target)
        except FileExistsError:
            pass
        except OSError:
            try:
                _atomic_write(target, source.read_bytes())
            except OSError:
                continue  # no thumbnail (an unreadable image): the tooltip shows text only
        added += 1
    return added


def thumbnail_url(content_hash: str) -> str:
    return f"app/static/thumbs/{content_hash[:16]}.jpg"


def scatter3d(
    published: PublishedMap,
    *,
    dims: int,
    colour_codes: np.ndarray,
    palette: list[dict],
    label_codes: np.ndarray,
    label_names: list[str],
    hidden: list[int],
    selection: dict | None,
    key: str,
    height: int = 560,
) -> dict | None:
    """Mount the map. Returns the browser's selection state {token, indices, released_at} or None."""
    result = _component(
        key=key,
        data={
            "map_url": published.url,
            "dims": dims,
            "codes": pd.DataFrame({"code": np.asarray(colour_codes, dtype=np.int16)}),
            "palette": palette,
            "labels": pd.DataFrame({"label": np.asarray(label_codes, dtype=np.int16)}),
            "label_names": label_names,
            "hidden": hidden,
            "selection": selection,
            "height": height,
        },
        on_selection_change=lambda: None,
        height=height + 48,
    )
    return result.get("selection") if hasattr(result, "get") else getattr(result, "selection", None)
