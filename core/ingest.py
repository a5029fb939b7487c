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
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.errors import StorageError, UserError
from core.images import (
    ImageProblem,
    content_hash,
    decode,
    read_bytes,
    to_rgb,
    worker_pool,
)
from core.tables import SPLITS, UNDEFINED, ChangeSet, LabelTable, check_class_name
from core.workspace import (
    DatasetPaths,
    check_dataset_name,
    remove_abandoned_staging,
    staging_folder,
    thumbnail_path,
)

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
    def start(cls, source: Path, found: Discovery) -> ImportReport:
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

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)


def load_import_report(workspace: str | os.PathLike | None, name: str, version: int = 1) -> ImportReport | None:
    path = DatasetPaths(workspace, name).import_report(version)
    return ImportReport.from_json(path.read_text(encoding="utf-8")) if path.exists() else None


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
    """List the images a source names, with their labels and splits, without opening them."""
    if layout not in LAYOUTS:
        raise UserError(f"Unknown layout '{layout}': use one of {', '.join(LAYOUTS)}.")
    source = Path(source).expanduser()
    if not source.exists():
        raise UserError(f"{source} does not exist. Check the path (relative paths start from {Path.cwd()}).")
    if source.is_file():
        if source.suffix.lower() in MANIFEST_EXTENSIONS:
            return _discover_manifest(source)
        raise UserError(
            f"{source} is a file, not a folder of images or a manifest. "
            "Give a folder, or a .csv / .parquet manifest with columns path,label[,split]."
        )
    if not os.access(source, os.R_OK | os.X_OK):
        raise UserError(f"Cannot read the folder {source}: permission denied. Fix its permissions and try again.")
    return _discover_folder(source, layout)


def _walk_files(root: Path) -> Iterable[Path]:
    """Every file under ``root``, following symlinked folders but never twice (no symlink loops)."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        stat = os.stat(dirpath)
        if (stat.st_dev, stat.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _discover_folder(root: Path, layout: str) -> Discovery:
    files = list(_walk_files(root))
    if not files:
        raise UserError(f"The folder {root} is empty: put images in it (or in one sub-folder per class) and import again.")
    skipped: list[SkippedFile] = []
    images: list[Path] = []
    for path in files:
        if _is_image_name(path):
            images.append(path)
        else:
            skipped.append(SkippedFile(str(path), f"not an image: extension '{path.suffix or '(none)'}' is not an image format"))
    if not images:
        examples = ", ".join(p.name for p in files[:3])
        raise UserError(
            f"No images in {root}: found {len(files)} file(s) ({examples}...) but none with an image extension "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))})."
        )

    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_folders = [p for p in subfolders if p.name.lower() in SPLIT_ALIASES and SPLIT_ALIASES[p.name.lower()] != "none"]
    has_nested_images = any(len(img.relative_to(root).parts) > 1 for img in images)
    if layout == "auto":
        layout = "class-folders" if has_nested_images else "flat"

    warn: list[str] = []
    candidates: list[Candidate] = []
    classes: set[str] = set()
    split_layout = layout == "class-folders" and subfolders and len(split_folders) == len(subfolders)
    for image in images:
        parts = image.relative_to(root).parts
        split, label = "none", UNDEFINED
        if layout == "class-folders":
            if split_layout:
                split = SPLIT_ALIASES[parts[0].lower()]
                parts = parts[1:]
            if len(parts) > 1:
                label = _folder_label(parts[0], root)
        candidates.append(Candidate(str(image), label, split))
        if label != UNDEFINED:
            classes.add(label)

    # Class folders that hold no image still define a class.
    class_dirs = [d for s in split_folders for d in s.iterdir() if d.is_dir()] if split_layout else subfolders
    if layout == "class-folders":
        for folder in class_dirs:
            if not folder.name.startswith("."):
                label = _folder_label(folder.name, root)
                if label != UNDEFINED:
                    classes.add(label)
        loose = sum(1 for c in candidates if c.label == UNDEFINED and len(Path(c.path).relative_to(root).parts) == (2 if split_layout else 1))
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


def _discover_manifest(manifest: Path) -> Discovery:
    try:
        if manifest.suffix.lower() == ".csv":
            table = pd.read_csv(manifest, dtype=str, keep_default_na=False, skipinitialspace=True)
            first_row = 2  # line 1 is the header
        else:
            table = pd.read_parquet(manifest)
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

    base = manifest.parent
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
        path = Path(raw_path).expanduser()
        resolved = os.path.normpath(path if path.is_absolute() else base / path)
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


def _no_readable_images(source: Path, report: ImportReport) -> UserError:
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
    if paths.root.exists():
        raise UserError(
            f"A data set named '{name}' already exists in {paths.workspace}. Choose another name, "
            f"or add the new images to it with `python -m core import PATH --name {name} --add`."
        )
    source = Path(source).expanduser()
    found = discover(source, layout)
    report = ImportReport.start(source, found)

    try:
        paths.workspace.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(paths.workspace)
        staging = staging_folder(paths.workspace, name)
    except OSError as exc:
        raise UserError(f"Cannot write to the workspace {paths.workspace} ({exc.strerror}). Choose a writable --workspace.") from exc
    try:
        checks = check_images([c.path for c in found.candidates], staging / "thumbs", progress, workers)
        rows = _rows_from_checks(found.candidates, checks, report)
        if rows.empty:
            raise _no_readable_images(source, report)
        rows = rows.sort_values(["split", "label", "path"], kind="stable", ignore_index=True)
        report.n_imported = len(rows)
        report.classes = list(found.classes)
        report.empty_classes = [c for c in found.classes if c not in set(rows["label"])]
        report.seconds = round(time.perf_counter() - started, 3)
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
    from core.workspace import open_table

    started = time.perf_counter()
    table = open_table(workspace, name)
    paths = DatasetPaths(workspace, name)
    parent = parent or table.head_version()
    current = table.read(parent)
    source = Path(source).expanduser()
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
