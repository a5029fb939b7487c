"""Import images into a label table: find them (discover.py), check every file and make its thumbnail
(file_checks.py), write version 1 or add a version; what was read and skipped goes into the report (import_report.py).

Three kinds of source:

* a folder of class sub-folders (``root/cat/1.jpg``), optionally under split
  folders (``root/train/cat/1.jpg``); a folder named ``undefined`` holds
  unlabelled images, and loose images at the top are unlabelled too;
* a flat folder (``layout="flat"``, or no sub-folders): every image is
  *undefined*;
* a CSV or Parquet manifest with columns ``path,label[,split]``; relative
  paths resolve against the manifest's folder, an empty label is *undefined*.

Every file is opened and fully decoded. Files that cannot be used are
skipped with a reason and listed in the :class:`ImportReport`; the import
never stops for one bad file, and writes nothing at all if it fails.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pandas as pd

from labelloop.data import storage
from labelloop.data.changes import ChangeSet
from labelloop.data.discover import Candidate, Discovery, SkippedFile, discover
from labelloop.data.file_checks import Progress, check_images
from labelloop.data.import_report import ImportReport
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import (
    DatasetPaths,
    check_dataset_name,
    remove_abandoned_staging,
    staging_folder,
    thumbnail_path,
)
from labelloop.errors import StorageError, UserError


def _rows_from_checks(candidates: list[Candidate], checks: list[dict], report: ImportReport) -> pd.DataFrame:
    rows = []
    for candidate, result in zip(candidates, checks):
        if "reason" in result:
            report.skipped.append(SkippedFile(result["path"], result["reason"]))
            continue
        rows.append({**result, "label": candidate.label, "split": candidate.split, "weight": 1.0})
    frame = pd.DataFrame(rows, columns=["path", "label", "weight", "split", "width", "height", "mode", "file_size", "content_hash"])
    if not frame.empty:
        groups = frame[frame["content_hash"].duplicated(keep=False)].groupby("content_hash")["path"].apply(list)
        report.duplicate_groups = [sorted(g) for g in groups]
    return frame


def _no_readable_images(source: storage.Location, report: ImportReport) -> UserError:
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(report.skipped_by_reason().items()))
    return UserError(f"None of the {report.n_found} file(s) in {source} could be imported ({reasons}). Nothing was written.")


def import_dataset(
    source: str | os.PathLike,
    name: str,
    workspace: str | os.PathLike | None = None,
    *,
    layout: str = "auto",
    message: str | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> tuple[LabelTable, ImportReport]:
    """Import ``source`` as a new data set ``name``: version 1 of its label table.

    The data set appears all at once (it is built in a staging folder and
    renamed into place), so an interrupted import leaves nothing half-made.
    """
    started = time.perf_counter()
    check_dataset_name(name)
    paths = DatasetPaths(workspace, name)
    if paths.exists() if paths.remote else paths.root.exists():
        raise UserError(
            f"A data set named '{name}' already exists in {paths.workspace}. Choose another name, "
            f"or add the new images to it with `labelloop import PATH --name {name} --add`."
        )
    source = storage.as_location(source)
    found = discover(source, layout)
    report = ImportReport.start(source, found)
    if paths.remote:
        return _import_to_object_storage(source, found, report, paths, message, progress, workers, started)

    try:
        paths.workspace.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(paths.workspace)
        staging = staging_folder(paths.workspace, name)
    except OSError as exc:
        raise UserError(f"Cannot write to the workspace {paths.workspace} ({exc.strerror}). Choose a writable --workspace.") from exc
    try:
        rows = _checked_rows(source, found, report, staging / "thumbs", progress, workers, started)
        LabelTable.create(
            staging / "labels",
            rows,
            found.classes,
            message=message or f"import {len(rows)} images from {source}",
            lock_path=staging / "labels.lock",
        )
        report.save(staging / "imports" / "v00001.json")
        try:
            os.rename(staging, paths.root)
        except OSError as exc:
            raise UserError(f"A data set named '{name}' appeared in {paths.workspace} during the import; choose another name.") from exc
    except (OSError, StorageError) as exc:
        reason = exc.reason if isinstance(exc, StorageError) else (exc.strerror or str(exc))
        raise UserError(
            f"The import could not write to {paths.workspace} ({reason}). Nothing was imported and no data set was made. "
            "Free some disk space (or choose another --workspace), then import again."
        ) from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return LabelTable(paths.labels, lock_path=paths.commit_lock), report


def _checked_rows(
    source: storage.Location, found: Discovery, report: ImportReport, thumbs: Path, progress: Progress | None, workers: int | None, started: float
) -> pd.DataFrame:
    """The rows of a new data set: every found file checked (thumbnails into ``thumbs``), the report filled in."""
    checks = check_images([c.path for c in found.candidates], thumbs, progress, workers)
    rows = _rows_from_checks(found.candidates, checks, report)
    if rows.empty:
        raise _no_readable_images(source, report)
    rows = rows.sort_values(["split", "label", "path"], kind="stable", ignore_index=True)
    report.n_imported = len(rows)
    report.classes = list(found.classes)
    report.empty_classes = [c for c in found.classes if c not in set(rows["label"])]
    report.seconds = round(time.perf_counter() - started, 3)
    return rows


def _import_to_object_storage(
    source: storage.Location, found: Discovery, report: ImportReport, paths: DatasetPaths, message: str | None, progress: Progress | None, workers: int | None, started: float
) -> tuple[LabelTable, ImportReport]:
    """Import into a workspace in object storage, where nothing can be renamed into place.

    The data set exists once the first entry of its table's log does, and that entry is
    written last, with a conditional PUT: an import that fails before it leaves only data
    files no table refers to, and of two imports racing for one name exactly one wins.
    Thumbnails go to this machine's cache.
    """
    rows = _checked_rows(source, found, report, paths.thumbs, progress, workers, started)
    try:
        table = LabelTable.create(paths.labels, rows, found.classes, message=message or f"import {len(rows)} images from {source}")
    except StorageError as exc:
        if paths.exists():
            raise UserError(f"A data set named '{paths.name}' appeared in {paths.workspace} during the import; choose another name.") from exc
        raise UserError(f"The import could not write to {paths.workspace} ({exc.reason}). Nothing was imported and no data set was made. Check the network and the credentials, then import again.") from exc
    try:
        report.save(paths.import_report(1))
    except OSError as exc:  # the data set is made; only its report is missing
        report.warnings.append(f"the import report could not be saved ({storage.explain(exc, paths.import_report(1), 'write').args[0]})")
    return table, report


def add_images(
    source: str | os.PathLike,
    name: str,
    workspace: str | os.PathLike | None = None,
    *,
    parent: int | None = None,
    layout: str = "auto",
    message: str | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> tuple[int, ImportReport]:
    """Add the images of ``source`` that the data set does not have yet, as one new version.

    New class folders or manifest labels become new classes (the user asked
    for them by importing them). Returns (new version, report).
    """
    from labelloop.data.workspace import open_table

    started = time.perf_counter()
    table = open_table(workspace, name)
    paths = DatasetPaths(workspace, name)
    parent = parent or table.head_version()
    current = table.read(parent)
    source = storage.as_location(source)
    found = discover(source, layout)
    report = ImportReport.start(source, found)
    known = set(current["path"])
    fresh = []
    for candidate in found.candidates:
        if candidate.path in known:
            report.skipped.append(SkippedFile(candidate.path, "already in the data set"))
        else:
            fresh.append(candidate)
    if not fresh:
        raise UserError(f"Every image in {source} is already in '{name}'; nothing to add.")
    checks = check_images([c.path for c in fresh], paths.thumbs, progress, workers)
    rows = _rows_from_checks(fresh, checks, report)
    if rows.empty:
        raise _no_readable_images(source, report)
    old_classes = table.classes(parent)
    report.n_imported = len(rows)
    report.classes = list(found.classes)
    report.empty_classes = [c for c in found.classes if c not in set(rows["label"]) and c not in set(current["label"])]
    new_classes = [c for c in found.classes if c not in old_classes]
    if new_classes:
        report.warnings.append(f"new classes added: {', '.join(new_classes)}")
    report.seconds = round(time.perf_counter() - started, 3)
    version = table.commit(
        ChangeSet(added=rows, new_classes=new_classes),
        parent=parent,
        message=message or f"add {len(rows)} images from {source}",
    )
    report.save(paths.import_report(version))
    return version, report


def make_missing_thumbnails(
    workspace: str | os.PathLike | None, name: str, version: int | None = None, *, progress: Progress | None = None, workers: int | None = None
) -> tuple[int, list[SkippedFile]]:
    """Write the thumbnails this machine lacks for the images of ``version`` (default: the head).

    Thumbnails are a cache each machine keeps for itself: a workspace in object storage
    opened on a second machine has none until this runs. Returns (made, files that could
    not be read, with why).
    """
    from labelloop.data.workspace import open_table

    paths = DatasetPaths(workspace, name)
    rows = open_table(workspace, name).read(version, columns=["path", "content_hash"]).drop_duplicates("content_hash")
    missing = [path for path, digest in zip(rows["path"], rows["content_hash"]) if not thumbnail_path(paths.thumbs, digest).exists()]
    checks = check_images(missing, paths.thumbs, progress, workers)
    problems = [SkippedFile(check["path"], check["reason"]) for check in checks if "reason" in check]
    return len(missing) - len(problems), problems
