"""Import images into a label table: find them, check every file, make thumbnails.

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

import io
import json
import os
import posixpath
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from labelloop.data import storage
from labelloop.data.changes import ChangeSet
from labelloop.data.images import (
    ImageProblem,
    content_hash,
    decode,
    read_bytes,
    to_rgb,
    worker_pool,
)
from labelloop.data.schema import SPLITS, UNDEFINED, check_class_name
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import (
    DatasetPaths,
    check_dataset_name,
    remove_abandoned_staging,
    staging_folder,
    thumbnail_path,
)
from labelloop.errors import StorageError, UserError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
MANIFEST_EXTENSIONS = frozenset({".csv", ".parquet", ".pq"})
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "testing": "test", "none": "none", "": "none"}
LAYOUTS = ("auto", "class-folders", "flat")

THUMBNAIL_SIZE = 128
_INLINE_LIMIT = 256  # below this many files a process pool costs more than it saves

Progress = Callable[[int, int], None]
"""progress(done, total): called as files are checked."""


# --------------------------------------------------------------------------- report


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class ImportReport:
    source: str
    layout: str
    n_found: int = 0
    n_imported: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def start(cls, source: storage.Location, found: Discovery) -> ImportReport:
        """A report holding what discovery found, before any file is checked."""
        return cls(
            source=str(source),
            layout=found.layout,
            n_found=len(found.candidates) + len(found.skipped),
            skipped=list(found.skipped),
            warnings=list(found.warnings),
        )

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.skipped:
            key = item.reason.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts

    def describe(self) -> str:
        text = f"imported {self.n_imported} of {self.n_found} files from {self.source}"
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped_by_reason().items()))
            text += f"; skipped {len(self.skipped)} ({reasons})"
        if self.duplicate_groups:
            extra = sum(len(g) - 1 for g in self.duplicate_groups)
            text += f"; {extra} exact duplicate file(s) in {len(self.duplicate_groups)} group(s)"
        if self.empty_classes:
            text += f"; classes with no images: {', '.join(self.empty_classes)}"
        return text

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ImportReport:
        data = json.loads(text)
        data["skipped"] = [SkippedFile(**item) for item in data.get("skipped", [])]
        return cls(**data)

    def save(self, location: storage.Location) -> None:
        storage.write_bytes(location, self.to_json().encode("utf-8"))


def load_import_report(workspace: str | os.PathLike | None, name: str, version: int = 1) -> ImportReport | None:
    location = DatasetPaths(workspace, name).import_report(version)
    try:
        return ImportReport.from_json(storage.read_bytes(location).decode("utf-8"))
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- finding files


@dataclass
class Candidate:
    path: str
    label: str
    split: str


@dataclass
class Discovery:
    candidates: list[Candidate]
    skipped: list[SkippedFile]
    classes: list[str]
    layout: str
    warnings: list[str]


def discover(source: str | os.PathLike, layout: str = "auto") -> Discovery:
    """List the images a source names, with their labels and splits, without opening them.

    ``source`` is a local path or an ``s3://`` URI: a folder, or a manifest file.
    """
    if layout not in LAYOUTS:
        raise UserError(f"Unknown layout '{layout}': use one of {', '.join(LAYOUTS)}.")
    source = storage.as_location(source)
    remote = storage.is_remote(source)
    try:
        what = storage.kind(source)
    except OSError as exc:
        raise storage.explain(exc, source, "read") from exc
    if what == "missing":
        hint = "Check the URI (s3://bucket/folder, or s3://bucket/manifest.csv)" if remote else f"Check the path (relative paths start from {Path.cwd()})"
        raise UserError(f"{source} does not exist. {hint}.")
    if what == "file":
        if Path(storage.name_of(source)).suffix.lower() in MANIFEST_EXTENSIONS:
            return _discover_manifest(source)
        raise UserError(
            f"{source} is a file, not a folder of images or a manifest. "
            "Give a folder, or a .csv / .parquet manifest with columns path,label[,split]."
        )
    if remote:
        try:
            files, folders = storage.list_files(source)
        except OSError as exc:
            raise storage.explain(exc, source, "list the images in") from exc
        visible = lambda parts: not any(part.startswith(".") for part in parts[:-1])  # noqa: E731 - as a local walk skips hidden folders
        return _discover_folder(
            source, [tuple(f.split("/")) for f in files if visible(f.split("/"))], [tuple(d.split("/")) for d in folders if visible(d.split("/") + [""])], layout
        )
    if not os.access(source, os.R_OK | os.X_OK):
        raise UserError(f"Cannot read the folder {source}: permission denied. Fix its permissions and try again.")
    files, folders = _walk(source)
    return _discover_folder(source, files, folders, layout)


def _walk(root: Path) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(files, folders) under ``root`` as relative path parts, following symlinked folders but never
    twice (no symlink loops) and skipping hidden folders."""
    seen: set[tuple[int, int]] = set()
    files: list[tuple[str, ...]] = []
    folders: list[tuple[str, ...]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        stat = os.stat(dirpath)
        if (stat.st_dev, stat.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath).relative_to(root).parts
        folders.extend(here + (d,) for d in dirnames)
        files.extend(here + (name,) for name in sorted(filenames))
    return files, folders


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _discover_folder(root: storage.Location, files: list[tuple[str, ...]], folders: list[tuple[str, ...]], layout: str) -> Discovery:
    """What a folder holds, from its ``files`` and ``folders`` (path parts relative to ``root``)."""
    if not files:
        raise UserError(f"The folder {root} is empty: put images in it (or in one sub-folder per class) and import again.")
    skipped: list[SkippedFile] = []
    images: list[tuple[str, ...]] = []
    for parts in files:
        if _is_image_name(parts[-1]):
            images.append(parts)
        else:
            suffix = Path(parts[-1]).suffix
            skipped.append(SkippedFile(str(storage.join(root, *parts)), f"not an image: extension '{suffix or '(none)'}' is not an image format"))
    if not images:
        examples = ", ".join(parts[-1] for parts in files[:3])
        raise UserError(
            f"No images in {root}: found {len(files)} file(s) ({examples}...) but none with an image extension "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))})."
        )

    subfolders = sorted(parts[0] for parts in folders if len(parts) == 1 and not parts[0].startswith("."))
    split_folders = [name for name in subfolders if name.lower() in SPLIT_ALIASES and SPLIT_ALIASES[name.lower()] != "none"]
    has_nested_images = any(len(parts) > 1 for parts in images)
    if layout == "auto":
        layout = "class-folders" if has_nested_images else "flat"

    warn: list[str] = []
    candidates: list[Candidate] = []
    classes: set[str] = set()
    split_layout = layout == "class-folders" and subfolders and len(split_folders) == len(subfolders)
    for image in images:
        parts = image
        split, label = "none", UNDEFINED
        if layout == "class-folders":
            if split_layout:
                split = SPLIT_ALIASES[parts[0].lower()]
                parts = parts[1:]
            if len(parts) > 1:
                label = _folder_label(parts[0], root)
        candidates.append(Candidate(str(storage.join(root, *image)), label, split))
        if label != UNDEFINED:
            classes.add(label)

    # Class folders that hold no image still define a class.
    class_dirs = [parts[1] for parts in folders if len(parts) == 2 and parts[0] in split_folders] if split_layout else subfolders
    if layout == "class-folders":
        for folder in class_dirs:
            if not folder.startswith("."):
                label = _folder_label(folder, root)
                if label != UNDEFINED:
                    classes.add(label)
        loose = sum(1 for image in images if len(image) == (2 if split_layout else 1))
        if loose:
            warn.append(f"{loose} image(s) sit directly in {root} rather than in a class folder; they are imported as '{UNDEFINED}'.")
    return Discovery(candidates, skipped, sorted(classes), "split/class-folders" if split_layout else layout, warn)


def _folder_label(folder_name: str, root: Path) -> str:
    if folder_name.strip().lower() in (UNDEFINED, "_undefined", "unlabeled", "unlabelled"):
        return UNDEFINED
    try:
        return check_class_name(folder_name)
    except UserError as exc:
        raise UserError(f"Folder '{folder_name}' in {root} cannot be a class: {exc}") from None


def _discover_manifest(manifest: storage.Location) -> Discovery:
    try:
        data = io.BytesIO(storage.read_bytes(manifest))
    except OSError as exc:
        raise storage.explain(exc, manifest, "read the manifest") from exc
    try:
        if Path(storage.name_of(manifest)).suffix.lower() == ".csv":
            table = pd.read_csv(data, dtype=str, keep_default_na=False, skipinitialspace=True)
            first_row = 2  # line 1 is the header
        else:
            table = pd.read_parquet(data)
            first_row = 1
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise UserError(f"Cannot read the manifest {manifest}: {str(exc).strip()[:200]}. It must be a CSV or Parquet file with columns path,label[,split].") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise UserError(
            f"The manifest {manifest} has no {' or '.join(repr(m) for m in missing)} column "
            f"(columns found: {', '.join(table.columns) or 'none'}). It needs path,label[,split]; leave label empty for unlabelled images."
        )
    if table.empty:
        raise UserError(f"The manifest {manifest} has no rows: list one image per row as path,label[,split].")

    base = storage.parent_of(manifest)
    candidates: list[Candidate] = []
    skipped: list[SkippedFile] = []
    classes: set[str] = set()
    bad_splits: list[str] = []
    first_seen: dict[str, int] = {}
    for offset, (raw_path, raw_label, raw_split) in enumerate(
        zip(table["path"], table["label"], table["split"] if "split" in table.columns else [""] * len(table))
    ):
        row = offset + first_row
        raw_path = "" if raw_path is None or (isinstance(raw_path, float) and np.isnan(raw_path)) else str(raw_path).strip()
        if not raw_path:
            skipped.append(SkippedFile(f"(row {row})", "empty path in manifest"))
            continue
        resolved = _manifest_path(raw_path, base)
        if resolved in first_seen:
            skipped.append(SkippedFile(resolved, f"duplicate manifest row: row {row} names the same file as row {first_seen[resolved]}"))
            continue
        first_seen[resolved] = row
        label_text = "" if raw_label is None or (isinstance(raw_label, float) and np.isnan(raw_label)) else str(raw_label).strip()
        if not label_text or label_text.lower() == UNDEFINED:
            label = UNDEFINED
        else:
            try:
                label = check_class_name(label_text)
            except UserError as exc:
                raise UserError(f"Manifest {manifest}, row {row}: {exc}") from None
            classes.add(label)
        split_text = "" if raw_split is None or (isinstance(raw_split, float) and np.isnan(raw_split)) else str(raw_split).strip().lower()
        if split_text not in SPLIT_ALIASES:
            bad_splits.append(f"row {row}: '{raw_split}'")
            continue
        candidates.append(Candidate(resolved, label, SPLIT_ALIASES[split_text]))
    if bad_splits:
        raise UserError(
            f"The manifest {manifest} has unknown split values ({'; '.join(bad_splits[:5])}"
            f"{'; ...' if len(bad_splits) > 5 else ''}). Use {', '.join(SPLITS)} or leave it empty."
        )
    return Discovery(candidates, skipped, sorted(classes), "manifest", [])


def _manifest_path(raw_path: str, base: storage.Location) -> str:
    """A manifest's path entry as a location: URIs as they are, relative paths from the manifest's folder."""
    if raw_path.lower().startswith(storage.REMOTE_PREFIX):
        return str(storage.as_location(raw_path))
    if storage.is_remote(base):
        if raw_path.startswith("/"):
            raise UserError(f"The manifest in {base} names the local path {raw_path}; a manifest in object storage lists s3:// URIs or paths relative to itself.")
        return storage.REMOTE_PREFIX + posixpath.normpath(posixpath.join(base[len(storage.REMOTE_PREFIX):], raw_path))
    path = Path(raw_path).expanduser()
    return os.path.normpath(path if path.is_absolute() else base / path)


# --------------------------------------------------------------------------- checking files


def check_image(path: str, thumbs_dir: str | None, thumbnail_size: int = THUMBNAIL_SIZE) -> dict:
    """Open and fully decode one file; write its thumbnail if missing.

    Returns a row (path, width, height, mode, file_size, content_hash) or
    ``{"path": ..., "reason": ...}`` if the file cannot be used. Never raises
    for a bad file.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return {"path": path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), "reason": "unreadable: the file name is not valid UTF-8; rename the file"}
    try:
        data = read_bytes(path)
        image = decode(data, draft_size=thumbnail_size * 2 if thumbnail_size else None)
        width, height = Image.open(io.BytesIO(data)).size  # the real size, not the draft's
        digest = content_hash(data)
        if thumbs_dir:
            _write_thumbnail(image, thumbnail_path(thumbs_dir, digest), thumbnail_size)
    except ImageProblem as problem:
        return {"path": path, "reason": str(problem)}
    return {"path": path, "width": width, "height": height, "mode": image.mode, "file_size": len(data), "content_hash": digest}


def _write_thumbnail(image: Image.Image, target: Path, size: int) -> None:
    if target.exists():
        return
    try:
        thumb = to_rgb(image)
        thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    except (OSError, ValueError) as exc:
        raise ImageProblem(f"truncated or corrupt: decoding for the thumbnail failed ({str(exc)[:100]})") from None
    # A failed write (disk full) is not the image's fault: it propagates and stops the import.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        thumb.save(tmp, "JPEG", quality=90)
        os.replace(tmp, target)  # never a half-written thumbnail, even if killed
    finally:
        tmp.unlink(missing_ok=True)


def _check_one(args: tuple[str, str | None]) -> dict:
    return check_image(*args)


def check_images(paths: list[str], thumbs_dir: str | os.PathLike | None, progress: Progress | None = None, workers: int | None = None) -> list[dict]:
    """:func:`check_image` for every path, in order, using a process pool for many files."""
    tasks = [(p, str(thumbs_dir) if thumbs_dir else None) for p in paths]
    total = len(tasks)
    results: list[dict] = []
    workers = workers or os.cpu_count() or 1
    if total <= _INLINE_LIMIT or workers == 1:
        for i, task in enumerate(tasks, 1):
            results.append(_check_one(task))
            if progress and (i % 64 == 0 or i == total):
                progress(i, total)
        return results
    with worker_pool(workers) as pool:
        for i, result in enumerate(pool.map(_check_one, tasks, chunksize=64), 1):
            results.append(result)
            if progress and (i % 256 == 0 or i == total):
                progress(i, total)
    return results


# --------------------------------------------------------------------------- importing


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
