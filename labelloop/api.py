"""LabelLoop from Python: the data set object a notebook scripts, over the same functions the CLI and the app call.

    import labelloop

    ds = labelloop.open("flowers", workspace="~/labels")   # or labelloop.import_folder("~/photos/flowers", "flowers")
    ds.versions                                            # one row per version: message, time, what changed
    rows = ds.read()                                       # the latest version as a DataFrame (sample_id, path, label, ...)
    ds.embed()                                             # EfficientNet-Lite0; or model="timm:vit_small_patch14_dinov2.lvd142m"
    run = ds.train("heads")                                # cross-validated heads on the embedding
    suspects = ds.issues(run).head(50)                     # most suspicious labels first (label_issue: open ones)
    ds.relabel(suspects.sample_id[:10], "tulip", message="tulips the model flagged", parent=ds.version)

Every edit names the version it was made against (``parent``) and fails with a
:class:`~labelloop.errors.ConflictError` if the data set moved on since, as in
the app. Errors a user can cause are :class:`~labelloop.errors.UserError`
whose message says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.data.changes import ChangeSet
from labelloop.data.exchange import EXPORT_SUFFIXES, export_version
from labelloop.data.import_report import ImportReport
from labelloop.data.ingest import import_dataset
from labelloop.data.runs import RunInfo, find_run, load_samples
from labelloop.data.tables import Commit, LabelTable
from labelloop.data.workspace import (
    DatasetPaths,
    list_datasets,
    open_table,
    resolve_workspace,
)
from labelloop.embed import (
    EmbedderConfig,
    EmbedReport,
    embed_dataset,
    list_embeddings,
    preferred_embedding,
)
from labelloop.embed.models import parse_model_name
from labelloop.embed.similar import more_like_this
from labelloop.errors import UserError
from labelloop.maps.cache import Projection
from labelloop.maps.config import ProjectionConfig
from labelloop.maps.project import project_dataset
from labelloop.scores.checks import HealthReport
from labelloop.scores.health import compute_health
from labelloop.scores.review import load_kept, ranked_label_issues
from labelloop.train.pipeline import train as train_run
from labelloop.train.registry import default_settings, get_family

Progress = Callable[[int, int], None]


class Dataset:
    """One data set of a workspace: its versioned label table and what was computed from it.

    Opened by :func:`open` or :func:`import_folder`; the workspace is resolved once, here.
    """

    def __init__(self, name: str, workspace: str | os.PathLike | None = None):
        self.workspace = resolve_workspace(workspace)
        self.name = name
        self.paths = DatasetPaths(self.workspace, name)  # what the layers below are handed: resolved once, here
        self.table: LabelTable = open_table(self.paths)  # a UserError naming the data sets there are

    def __repr__(self) -> str:
        info = self.table.version_info()
        return f"<labelloop.Dataset '{self.name}' v{info.version}: {info.n_samples:,} samples, {len(info.classes)} classes, in {self.workspace}>"

    # ------------------------------------------------------------------ reading

    @property
    def version(self) -> int:
        """The latest version's number (what an edit's ``parent`` usually is)."""
        return self.table.head_version()

    @property
    def classes(self) -> list[str]:
        """The class list of the latest version (a class may have no samples)."""
        return list(self.table.version_info().classes)

    @property
    def versions(self) -> pd.DataFrame:
        """One row per version, oldest first: version, time (UTC), samples, classes, message, changes."""
        return pd.DataFrame(
            [{"version": i.version, "time": i.timestamp, "samples": i.n_samples, "classes": len(i.classes), "message": i.message, "changes": i.describe()} for i in self.table.history()],
            columns=["version", "time", "samples", "classes", "message", "changes"],
        )

    def read(self, version: int | None = None) -> pd.DataFrame:
        """Every row of ``version`` (default: the latest): sample_id, path, label ("undefined" = not labelled),
        weight (0 = excluded), split, width, height, mode, file_size, content_hash."""
        return self.table.read(version)

    def import_report(self, version: int = 1) -> ImportReport | None:
        """What the import that made ``version`` read, skipped (with reasons) and found duplicated."""
        from labelloop.data.import_report import load_import_report

        return load_import_report(self.workspace, self.name, version)

    def diff(self, a: int, b: int) -> pd.DataFrame:
        """Per changed sample between versions ``a`` and ``b``: its old and new label, weight and split."""
        return self.table.diff(a, b).samples

    # ------------------------------------------------------------------ editing

    def relabel(self, sample_ids: Iterable[int], label: str, *, message: str, parent: int, new_class: bool = False) -> Commit:
        """Give ``sample_ids`` the class ``label`` as one new version made against version ``parent``.

        ``new_class``: allow a label that is not a class yet (it is added to the class list).
        Returns the :class:`~labelloop.data.tables.Commit`: the new version's number, what changed and what was
        written. A ConflictError if ``parent`` is no longer the latest.
        """
        ids = _ids(sample_ids)
        changes = ChangeSet(updates=pd.DataFrame({"sample_id": ids, "label": label}), new_classes=[label] if new_class else [])
        return self._commit(changes, parent, message)

    def exclude(self, sample_ids: Iterable[int], *, message: str, parent: int, include: bool = False) -> Commit:
        """Set the weight of ``sample_ids`` to 0 (left out of training; still in the table), or back to 1 with ``include``."""
        return self._commit(ChangeSet.set_weight(_ids(sample_ids), 1.0 if include else 0.0), parent, message)

    def apply(self, changes: pd.DataFrame, *, message: str, parent: int, new_classes: Iterable[str] = ()) -> Commit:
        """Commit a frame of ``sample_id`` plus any of ``label``, ``weight``, ``split`` (None = unchanged) as one version."""
        if "sample_id" not in changes.columns:
            raise UserError(f"The changes need a sample_id column (columns given: {', '.join(map(str, changes.columns)) or 'none'}).")
        return self._commit(ChangeSet(updates=changes.reset_index(drop=True), new_classes=list(new_classes)), parent, message)

    def restore(self, version: int, *, parent: int, message: str | None = None) -> Commit:
        """A new version equal to ``version`` (nothing is overwritten; its files are reused)."""
        return self.table.restore(version, parent=parent, message=message)

    def _commit(self, changes: ChangeSet, parent: int, message: str) -> Commit:
        return self.table.commit(changes, parent=parent, message=message)

    # ------------------------------------------------------------------ computing

    def embed(self, model: str | None = None, *, version: int | None = None, progress: Progress | None = None, ray: str | None = None, **options) -> EmbedReport:
        """Embed the images the cache lacks; returns the report (its ``key`` names the embedding).

        ``model``: a published name ("timm:vit_small_patch14_dinov2.lvd142m", "open_clip:ViT-B-32:laion2b_s34b_b79k",
        "torchvision:resnet50:IMAGENET1K_V2"; default the bundled EfficientNet-Lite0). ``options``: other
        :class:`~labelloop.embed.EmbedderConfig` fields (runtime, precision, batch_size, device, weights, resolution).
        """
        config = EmbedderConfig(**(parse_model_name(model) if model else {}), **options)
        config.validate()
        return embed_dataset(self.workspace, self.name, config, version=version, progress=progress, ray=ray)

    @property
    def embeddings(self) -> list[str]:
        """The keys of the embeddings cached for this data set."""
        return [meta["key"] for meta in list_embeddings(self.paths)]

    def vectors(self, embedding: str | None = None, version: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sample ids, float32 vectors N x D) of ``version``'s embedded samples in ``embedding`` (default: the preferred one)."""
        from labelloop.embed import load_embeddings

        loaded = load_embeddings(self.paths, None, self._embedding(embedding), version=version)
        return loaded.sample_ids, loaded.vectors

    def map(self, embedding: str | None = None, *, version: int | None = None, progress: Progress | None = None, **settings) -> Projection:
        """The 3D (or ``dims=2``) PaCMAP map of ``version``, from the cache when it holds. ``settings``: fields of
        :class:`~labelloop.maps.project.ProjectionConfig` (method, dims, n_neighbors, fit_points, seed, ...).
        ``.frame()`` of the result: sample_id, x, y (and z)."""
        return project_dataset(self.workspace, self.name, self._embedding(embedding), ProjectionConfig(**settings), version=version, progress=progress)

    def train(self, family: str = "heads", *, version: int | None = None, progress: Callable[[str, float], None] | None = None, **settings) -> RunInfo:
        """Train ``family`` ("heads", "frozen-backbone", "resnet18-scratch", "triplet") on ``version`` with ``settings``
        (the family's own, as its CLI flags name them without dashes: ``heads=("knn", "logreg")``, ``epochs=10``).
        Families that train on an embedding use ``embedding=`` (default: the preferred cached one).
        Returns the finished run: ``run.summary.held_out_accuracy``, ``run.path``."""
        if "embedding" not in settings and "embedding" in {info.name for info in get_family(family).settings_class.settings()}:
            settings["embedding"] = self._embedding(None)
        chosen = default_settings(family, **settings)
        chosen.validate()
        return train_run(self.paths, None, chosen, version=version, progress=progress)

    def runs(self, version: int | None = None) -> list[RunInfo]:
        """Finished training runs (of ``version`` if given), newest first."""
        from labelloop.data.runs import list_runs

        return list_runs(self.paths, version=version)

    # ------------------------------------------------------------------ scores

    def issues(self, run: RunInfo | str | None = None) -> pd.DataFrame:
        """Per sample a run (default: the newest with per-sample scores) trained on, most suspicious label first:
        sample_id, label (the newest version's), predicted_label, confidence, margin, loss, issue_score (0..1),
        path, and label_issue: an open label issue, as the Review and Health pages count them."""
        chosen = run if isinstance(run, RunInfo) else find_run(self.paths, run_id=run, with_samples=True)
        rows = self.table.read(self.table.head_version(), columns=["sample_id", "path", "label", "weight"])
        return ranked_label_issues(load_samples(chosen), rows, load_kept(self.paths.kept_labels))

    def health(self, *, version: int | None = None, embedding: str | None = None, run: str | None = None, progress: Callable[[str, float], None] | None = None) -> HealthReport:
        """Every data-health check (image, embedding and label checks), cached by what each reads.
        ``.summary()`` one row per check; ``.samples`` every sample's scores (low = more severe)."""
        return compute_health(self.workspace, self.name, version=version, embedding=embedding, run_id=run, progress=progress)

    def similar(self, sample_ids: int | Iterable[int], *, k: int = 50, embedding: str | None = None, version: int | None = None) -> pd.DataFrame:
        """The query samples, then the ``k`` samples nearest to them (cosine; several ids are one query, their mean):
        sample_id, label, similarity, is_query."""
        ids = [int(sample_ids)] if isinstance(sample_ids, (int, np.integer)) else _ids(sample_ids).tolist()
        return more_like_this(self.workspace, self.name, self._embedding(embedding), ids, k=k, version=version)

    # ------------------------------------------------------------------ exporting

    def export(self, format: str = "csv", out: str | os.PathLike | None = None, *, version: int | None = None) -> Path:
        """Write ``version``'s labels as ``csv``, ``parquet`` or an ``imagefolder`` tree to ``out``
        (default: the data set's exports folder); never overwrites. Returns where it went."""
        if format not in EXPORT_SUFFIXES:
            raise UserError(f"Export format '{format}' is not one of {', '.join(EXPORT_SUFFIXES)}.")
        version = version or self.version
        path, _ = export_version(self.table, version, format, out or self.paths.export_file(version, EXPORT_SUFFIXES[format]))
        return path

    def _embedding(self, key: str | None) -> str:
        if key:
            return key
        preferred = preferred_embedding(self.paths)
        if preferred is None:
            raise UserError(f"'{self.name}' has no embedding yet: call .embed() first (or `labelloop embed {self.name}`).")
        return preferred


def open(name: str, workspace: str | os.PathLike | None = None) -> Dataset:  # noqa: A001 (labelloop.open, as a notebook says it)
    """The data set ``name`` of ``workspace`` (default: $LABELLOOP_WORKSPACE, a checkout's tables/, or ~/labelloop)."""
    return Dataset(name, workspace)


def datasets(workspace: str | os.PathLike | None = None) -> list[str]:
    """The names of the data sets in ``workspace``."""
    return list_datasets(workspace)


def import_folder(
    source: str | os.PathLike, name: str, workspace: str | os.PathLike | None = None, *, layout: str = "auto", message: str | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Import a folder of class sub-folders, a flat folder (all undefined) or a CSV/Parquet manifest as version 1
    of a new data set; every file is checked. What it skipped and why: ``.import_report()`` of the result."""
    import_dataset(source, name, workspace, layout=layout, message=message, progress=progress)
    return Dataset(name, workspace)


def _ids(sample_ids: Iterable[int]) -> np.ndarray:
    ids = np.asarray(list(sample_ids) if not isinstance(sample_ids, (np.ndarray, pd.Series, pd.Index)) else sample_ids, dtype=np.int64)
    if ids.ndim != 1 or not len(ids):
        raise UserError("Give at least one sample id.")
    return ids


__all__ = ["Dataset", "datasets", "import_folder", "open"]
