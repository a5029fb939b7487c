"""Where data sets live: one folder per data set inside a workspace folder.

A data set folder holds the versioned label table (``labels/``, a Delta Lake
table), the thumbnail cache (``thumbs/``), the import report, and later the
embeddings, projections and runs. The workspace is what ``--workspace`` or the
``LABELLOOP_WORKSPACE`` environment variable says; without either it is
``tables/`` in a source checkout (where it has always been) and ``~/labelloop``
for an installed package.

A workspace may also be in object storage (``s3://bucket/prefix``). Then the
label table and the import reports, which every machine must share, live
there; the caches each machine rebuilds for itself (thumbnails, embeddings,
maps, training runs, exports, review notes) live on this machine, under
``$LABELLOOP_CACHE`` (default ``~/.cache/labelloop``) in a folder named after
the URI (:func:`local_workspace`).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from labelloop.data import storage
from labelloop.errors import UserError

PACKAGE_PARENT = Path(__file__).resolve().parent.parent.parent  # the folder holding the labelloop package
WORKSPACE_ENV = "LABELLOOP_WORKSPACE"
CACHE_ENV = "LABELLOOP_CACHE"

# Names become folder names and URL parts, so they are restricted to a safe set.
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def default_workspace() -> storage.Location:
    configured = os.environ.get(WORKSPACE_ENV)
    if configured:
        return storage.as_location(configured)
    if (PACKAGE_PARENT / "pyproject.toml").is_file():  # running from a source checkout
        return PACKAGE_PARENT / "tables"
    return Path.home() / "labelloop"


def resolve_workspace(workspace: str | os.PathLike | None) -> storage.Location:
    """The workspace as a local ``Path``, or as an ``s3://`` URI."""
    return storage.as_location(workspace) if workspace else default_workspace()


def local_workspace(workspace: str | os.PathLike | None) -> Path:
    """Where this machine keeps the workspace's caches: the workspace itself when it is on this
    machine; for one in object storage, ``$LABELLOOP_CACHE/s3/<bucket>/<prefix>``."""
    resolved = resolve_workspace(workspace)
    if not storage.is_remote(resolved):
        return resolved
    home = Path(os.environ.get(CACHE_ENV) or "~/.cache/labelloop").expanduser()
    return home.joinpath("s3", *[part for part in resolved[len(storage.REMOTE_PREFIX):].split("/") if part not in ("", ".", "..")])


def app_dir(workspace: str | os.PathLike | None) -> Path:
    """What an app server on this workspace runs and writes, in the workspace's local cache: its entry script,
    its Streamlit settings and ``static/`` (served at /app/static/: three.js, the map files, thumbnail links).
    `labelloop app` lays it out (:func:`labelloop.cli.data.write_launcher`); the name cannot be a data set's."""
    return local_workspace(workspace) / ".app"


def models_dir(workspace: str | os.PathLike | None) -> Path:
    """Exported models (ONNX, OpenVINO caches) every data set of the workspace shares."""
    return local_workspace(workspace) / ".models"


def check_dataset_name(name: str) -> str:
    if not _NAME_PATTERN.match(name or "") or name in (".", ".."):
        raise UserError(
            f"'{name}' cannot be a data set name: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (for example 'flowers-2024')."
        )
    return name


class DatasetPaths:
    """The files of one data set inside a workspace.

    ``root`` is the data set in the workspace (a URI in object storage); ``local`` is where
    this machine keeps its caches (the same folder when the workspace is local).
    """

    def __init__(self, workspace: str | os.PathLike | None, name: str):
        self.workspace = resolve_workspace(workspace)
        self.name = check_dataset_name(name)
        self.remote = storage.is_remote(self.workspace)
        self.root = storage.join(self.workspace, name)
        self.local = local_workspace(self.workspace) / name

    @property
    def labels(self) -> storage.Location:
        return storage.join(self.root, "labels")

    @property
    def commit_lock(self) -> Path:
        # Beside the Delta table, not inside it, so table readers never see it.
        return self.local / "labels.lock"

    @property
    def thumbs(self) -> Path:
        return self.local / "thumbs"

    def thumbnail(self, content_hash: str) -> Path:
        """The thumbnail of the image with this content hash (a UserError for anything that is not a hash)."""
        return thumbnail_path(self.thumbs, content_hash)

    def import_report(self, version: int) -> storage.Location:
        """The report of the import that created ``version`` (1 for the first import)."""
        return storage.join(self.root, "imports", f"v{version:05d}.json")

    @property
    def demo_truth(self) -> Path:
        return self.local / "demo_truth.parquet"

    @property
    def kept_labels(self) -> Path:
        """Review decisions that changed nothing ("keep the label"): one small Parquet file per decision."""
        return self.local / "review" / "kept"

    @property
    def exports(self) -> Path:
        return self.local / "exports"

    def export_file(self, version: int, suffix: str) -> Path:
        """Where an export of ``version`` goes unless the user says otherwise (suffix "" for a folder)."""
        return self.exports / f"{self.name}-v{version}{suffix}"

    def predictions(self, run_id: str) -> Path:
        """Where predicting a folder with run ``run_id`` writes its CSV unless the user says otherwise."""
        return self.exports / f"predictions-{run_id}.csv"

    @property
    def runs(self) -> Path:
        """Finished training runs, one folder each (``labelloop.data.runs``)."""
        return self.local / "runs"

    def run(self, run_id: str) -> Path:
        return self.runs / run_id

    @property
    def embeddings(self) -> Path:
        """Embedding caches, one folder per embedding key (``labelloop.embed``)."""
        return self.local / "embeddings"

    def embedding(self, key: str) -> Path:
        """The cache folder of embedding ``key``; a key that could leave the folder is refused."""
        if not key or "/" in key or "\\" in key or key.startswith("."):
            raise UserError(f"'{key}' is not an embedding key: keys are names like efficientnet-lite0 (see `labelloop embeddings {self.name}`).")
        return self.embeddings / key

    @property
    def projections(self) -> Path:
        """Cached 2D/3D maps, one folder per embedding key (``labelloop.maps.project``)."""
        return self.local / "projections"

    def exists(self) -> bool:
        try:
            return storage.kind(storage.join(self.labels, "_delta_log")) == "folder"
        except OSError as exc:
            raise storage.explain(exc, self.root, "open the data set at") from exc


# What the functions that work on one data set take: the DatasetPaths of it (resolved once, by whoever
# made it: pass it on rather than a workspace and a name), or a workspace and the data set's name.
WorkspaceOrDataset = DatasetPaths | str | os.PathLike | None


def as_dataset(workspace: WorkspaceOrDataset, name: str | None = None) -> DatasetPaths:
    """The data set a function was asked to work on: a :class:`DatasetPaths` given in the workspace's place is
    used as it is (``name``, if given too, must be its name); else the data set ``name`` of ``workspace``."""
    if isinstance(workspace, DatasetPaths):
        if name is not None and name != workspace.name:
            raise ValueError(f"given the data set '{workspace.name}' and the name '{name}'")
        return workspace
    if name is None:
        raise TypeError("a workspace needs the data set's name beside it")
    return DatasetPaths(workspace, name)


def thumbnail_path(thumbs_dir: str | os.PathLike, content_hash: str) -> Path:
    """Where the thumbnail of an image with this content hash lives (hash-named: no path tricks)."""
    if not content_hash or any(ch not in "0123456789abcdef" for ch in content_hash):
        raise UserError(f"'{content_hash}' is not a content hash.")
    return Path(thumbs_dir) / content_hash[:2] / f"{content_hash}.jpg"


def list_datasets(workspace: str | os.PathLike | None) -> list[str]:
    """Names of the data sets in the workspace, sorted; folders that are not data sets are ignored."""
    root = resolve_workspace(workspace)
    if storage.is_remote(root):
        try:
            found = storage.list_names(root)
            if not found:
                storage.kind(root)  # raises for a bucket that does not exist, which lists as nothing
        except OSError as exc:
            raise storage.explain(exc, root, "list the data sets in") from exc
        return [name for name in found if _NAME_PATTERN.match(name) and DatasetPaths(root, name).exists()]
    if not root.is_dir():
        return []
    names = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and _NAME_PATTERN.match(child.name) and (child / "labels" / "_delta_log").is_dir():
            names.append(child.name)
    return names


def open_table(workspace: WorkspaceOrDataset, name: str | None = None):
    """The label table of data set ``name`` (or of the DatasetPaths given), with a helpful error if there is none."""
    from labelloop.data.tables import (
        LabelTable,  # local: tables imports nothing from here, keep it that way
    )

    paths = as_dataset(workspace, name)
    if not paths.exists():
        available = list_datasets(paths.workspace)
        raise UserError(
            f"No data set named '{paths.name}' in {paths.workspace}. "
            + (f"Data sets there: {', '.join(available)}. " if available else "The workspace has no data sets yet. ")
            + "Import one with `labelloop import PATH --name NAME` or build the demo with `labelloop demo`."
        )
    return LabelTable(paths.labels, lock_path=paths.commit_lock)


def staging_folder(parent: Path, label: str) -> Path:
    """A new hidden folder in ``parent`` to build ``label`` in before renaming it into place.

    The name carries this process's id, so :func:`remove_abandoned_staging`
    can tell a killed writer's leftovers from a live writer's work.
    """
    folder = parent / f".staging-{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return folder


def remove_abandoned_staging(parent: Path) -> None:
    """Remove staging folders in ``parent`` whose process is gone (it was killed mid-write)."""
    for folder in parent.glob(".staging-*"):
        try:
            pid = int(folder.name.split("-")[-2])
        except (ValueError, IndexError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass
