"""The 3D map component: a three.js point cloud with orbit controls, a lasso, and hover thumbnails.

The browser gets each map's positions, sample ids and thumbnail names once,
as static binary files under ``static/maps/<map key>/`` (Streamlit serves
``static/`` beside the main script at ``/app/static/``: for `labelloop app`,
the workspace's ``.app/static/``, see :func:`served_static`), and caches them by URL. A rerun sends only a
colour code and a label code per point (2 bytes each), so recolouring after
a relabel stays small at 100,000 points.

A map of more than :data:`POINT_BUDGET` points is drawn as a seeded random
subset of that many; a lasso still selects among all of them: the browser
sends its polygon and camera with every lasso, and the server projects every
point with the same arithmetic (``labelloop/maps/lasso.py``).

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

from labelloop.data.workspace import thumbnail_path
from labelloop.errors import UserError

POINT_BUDGET = int(os.environ.get("LABELLOOP_POINT_BUDGET", "300000"))
"""Points the browser draws at most (every point below it). More would slow a laptop's browser
without showing more: at 300,000 points the cloud is already solid where the data is dense."""


def served_static() -> Path:
    """The folder the running server serves at /app/static/: ``static/`` beside its main script (Streamlit's rule).

    `labelloop app` runs the workspace's entry script (:func:`labelloop.data.workspace.app_dir`), so that is
    ``<workspace>/.app/static/``: per workspace, never the installed package's folder."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is None:
        raise RuntimeError("no app is running here: give the static folder to write to")
    return Path(ctx.main_script_path).resolve().parent / "static"

_component = st.components.v2.component(
    "labelloop.scatter3d",
    js=(Path(__file__).with_name("scatter3d.js")).read_text(encoding="utf-8"),
    css=(Path(__file__).with_name("scatter3d.css")).read_text(encoding="utf-8"),
)


@dataclass(frozen=True)
class PublishedMap:
    key: str
    url: str  # relative to the app root
    sample_ids: np.ndarray  # every point of the map
    coords: np.ndarray  # every point's map coordinates (what the server lassoes over)
    drawn: np.ndarray  # indices (into sample_ids) of the points the browser draws, in its order

    @property
    def drawn_ids(self) -> np.ndarray:
        """Point i in the browser is sample ``drawn_ids[i]``."""
        return self.sample_ids[self.drawn]

    @property
    def budgeted(self) -> bool:
        return len(self.drawn) < len(self.sample_ids)

    def select(self, lasso: dict, selectable: np.ndarray | None = None) -> np.ndarray:
        """The sample ids a lasso drawn in the browser encloses among all points (not only the drawn ones)."""
        from labelloop.maps.lasso import lasso_select

        chosen = lasso_select(_normalised(self.coords), lasso["matrix"], float(lasso["width"]), float(lasso["height"]), lasso["polygon"], selectable)
        return self.sample_ids[chosen]


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def _normalised(coords: np.ndarray) -> np.ndarray:
    """The positions the browser draws: 3 columns, centred on the median, the 99th percentile at radius 1
    (not the extremes: PaCMAP leaves a few far outliers), so the camera setup is the same for every map."""
    points = np.zeros((len(coords), 3), dtype=np.float32)
    points[:, : coords.shape[1]] = coords
    if len(points):
        points -= np.median(points, axis=0)
        points /= max(float(np.percentile(np.abs(points[:, : coords.shape[1]]), 99)), 1e-9)
    return points


def publish_map(sample_ids: np.ndarray, coords: np.ndarray, content_hashes: np.ndarray | pd.Series, identity: str, budget: int | None = None,
                static: Path | None = None) -> PublishedMap:
    """Write the static files of one map (once: the key covers everything in them) under ``static`` (default: where
    the running server serves, :func:`served_static`); ``content_hashes`` (one per point) are read only when the files are written."""
    budget = POINT_BUDGET if budget is None else budget
    digest = hashlib.blake2b(digest_size=10)
    digest.update(f"{identity}|budget={budget}".encode())
    digest.update(np.ascontiguousarray(sample_ids, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(coords, dtype=np.float32).tobytes())
    key = digest.hexdigest()
    n = len(sample_ids)
    drawn = np.arange(n)
    if n > budget:  # seeded by the map: the same points are drawn on every rerun and in every tab
        drawn = np.sort(np.random.default_rng(int(key[:12], 16)).choice(n, size=budget, replace=False))
    folder = (served_static() if static is None else static) / "maps" / key
    if not (folder / "thumbs.bin").exists():
        folder.mkdir(parents=True, exist_ok=True)
        if np.any(np.asarray(sample_ids) > np.iinfo(np.int32).max):
            raise ValueError("sample ids beyond 2^31 cannot be drawn on the map")
        _atomic_write(folder / "points.bin", _normalised(coords)[drawn].tobytes())
        _atomic_write(folder / "ids.bin", np.asarray(sample_ids, dtype=np.int32)[drawn].tobytes())
        _atomic_write(folder / "thumbs.bin", _hash_prefixes(np.asarray(content_hashes, dtype=object)[drawn]).tobytes())  # written last: its presence means complete
    return PublishedMap(key, f"app/static/maps/{key}/", np.asarray(sample_ids), np.asarray(coords), drawn)


_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


def _hash_prefixes(content_hashes: np.ndarray) -> np.ndarray:
    """The first 8 bytes (16 hex digits) of each content hash, as the browser names thumbnails (n x 8 uint8)."""
    digits = np.frombuffer(np.asarray(content_hashes, dtype="S16").tobytes(), dtype=np.uint8).reshape(-1, 16)
    nibbles = _HEX_VALUE[digits]
    if (nibbles == 255).any():
        raise ValueError("a content hash that is not lowercase hex cannot name a thumbnail")
    return (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]


def mirror_thumbnails(thumbs_dir: Path, content_hashes: np.ndarray, static: Path | None = None) -> int:
    """Make the thumbnails of these images servable, under ``static`` (default: where the running server serves,
    :func:`served_static`); returns how many were added."""
    served = (served_static() if static is None else static) / "thumbs"
    served.mkdir(parents=True, exist_ok=True)
    present = {name[:16] for name in os.listdir(served)}
    # One listing of what exists (instead of a failed link per image without a thumbnail), and a loop over
    # only what is not served yet: a million images are a million Python iterations otherwise, on every start.
    unserved = {entry.name[:-4] for folder in _subfolders(thumbs_dir) for entry in os.scandir(folder) if entry.name.endswith(".jpg") and entry.name[:16] not in present}
    if not unserved:
        return 0
    wanted = pd.unique(pd.Series(content_hashes, dtype=str))
    added = 0
    for content_hash in wanted[pd.Index(wanted).isin(unserved)]:
        if content_hash[:16] in present:  # two images that share a prefix: the first keeps the name
            continue
        try:  # the hash names the files: a table edited by hand must not make it name others
            source = thumbnail_path(thumbs_dir, content_hash)
        except UserError:
            continue
        target = served / f"{content_hash[:16]}.jpg"
        try:
            os.link(source, target)
        except FileExistsError:
            pass
        except OSError:
            try:
                _atomic_write(target, source.read_bytes())
            except OSError:
                continue  # no thumbnail (an unreadable image): the tooltip shows text only
        present.add(content_hash[:16])
        added += 1
    return added


def _subfolders(folder: Path) -> list[str]:
    try:
        return [entry.path for entry in os.scandir(folder) if entry.is_dir()]
    except OSError:
        return []


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
    """Mount the map. ``colour_codes`` and ``label_codes`` have one entry per point of the map, drawn or not;
    ``selection`` indexes the drawn points. Returns the browser's selection state {token, indices (of drawn
    points), released_at, lasso (polygon, camera matrix, canvas size, operation)} or None."""
    result = _component(
        key=key,
        data={
            "map_url": published.url,
            "dims": dims,
            "total": len(published.sample_ids),
            "codes": pd.DataFrame({"code": np.asarray(colour_codes, dtype=np.int16)[published.drawn]}),
            "palette": palette,
            "labels": pd.DataFrame({"label": np.asarray(label_codes, dtype=np.int16)[published.drawn]}),
            "label_names": label_names,
            "hidden": hidden,
            "selection": selection,
            "height": height,
        },
        on_selection_change=lambda: None,
        height=height + 48,
    )
    return result.get("selection") if hasattr(result, "get") else getattr(result, "selection", None)
