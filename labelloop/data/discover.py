"""Finding the images of a source: a folder of class sub-folders (optionally under split folders), a flat folder,
or a CSV / Parquet manifest of ``path,label[,split]``; local or in object storage."""

from __future__ import annotations

import io
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.data import storage
from labelloop.data.schema import SPLITS, UNDEFINED, check_class_name
from labelloop.errors import UserError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)


MANIFEST_EXTENSIONS = frozenset({".csv", ".parquet", ".pq"})


SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "testing": "test", "none": "none", "": "none"}


LAYOUTS = ("auto", "class-folders", "flat")


@dataclass
class SkippedFile:
    path: str
    reason: str


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
        visible = lambda parts: not any(part.startswith(".") for part in parts[:-1])
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
