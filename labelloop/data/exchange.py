"""Labels in and out of the app: change files that come back in, exports that go out."""

from __future__ import annotations

import io
import os
import re
import shutil
import uuid
from pathlib import Path

import pandas as pd

from labelloop.data.changes import ChangeSet
from labelloop.data.schema import EDITABLE_COLUMNS, trainable_mask
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import DatasetPaths
from labelloop.errors import UserError

EXPORT_FORMATS = ("csv", "parquet", "imagefolder")


def read_change_file(path: str | os.PathLike, new_classes: list[str] | tuple[str, ...] = ()) -> ChangeSet:
    """A CSV of ``sample_id`` plus any of ``label``, ``weight``, ``split`` as a :class:`ChangeSet`.

    An empty cell leaves that field unchanged. Labels that are not classes yet
    are refused unless named in ``new_classes``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"The change file {path} does not exist. Give a CSV with columns sample_id and label and/or weight.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read the change file {path}: {str(exc).strip()[:200]}.") from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if "sample_id" not in frame.columns or not set(EDITABLE_COLUMNS) & set(frame.columns):
        raise UserError(
            f"The change file {path} needs a sample_id column and at least one of {', '.join(EDITABLE_COLUMNS)} "
            f"(columns found: {', '.join(frame.columns) or 'none'})."
        )
    extra = set(frame.columns) - {"sample_id", *EDITABLE_COLUMNS}
    if extra:
        raise UserError(f"The change file {path} has columns that cannot be applied: {', '.join(sorted(extra))}. Remove them.")
    if frame.empty:
        raise UserError(f"The change file {path} has no rows: nothing to apply.")
    updates = frame.replace({"": None})
    return ChangeSet(updates=updates, new_classes=list(new_classes))


def _class_folder_name(label: str) -> str:
    name = re.sub(r'[/\\:*?"<>|\x00-\x1f]', "_", label).strip()
    return "_" + name if name.startswith(".") or not name else name


EXPORT_SUFFIXES = {"csv": ".csv", "parquet": ".parquet", "imagefolder": ""}


def default_export_path(paths: DatasetPaths, version: int, fmt: str) -> Path:
    return paths.export_file(version, EXPORT_SUFFIXES[fmt])


def table_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """Every row and column of ``frame`` as a CSV or Parquet file's bytes (what a download hands over)."""
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    raise UserError(f"Unknown table format '{fmt}': use csv or parquet.")


def export_version(table: LabelTable, version: int, fmt: str, out: str | os.PathLike) -> tuple[Path, str]:
    """Write the labels of ``version`` to ``out``; return (path, a one-line description).

    ``csv`` / ``parquet``: every row and column of the version. ``imagefolder``:
    a copy of each trainable image (labelled, weight > 0) in ``out/<class>/``
    (``out/<split>/<class>/`` when splits are set), plus ``labels.csv``.
    Never overwrites: an existing ``out`` is an error.
    """
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"Unknown export format '{fmt}': use one of {', '.join(EXPORT_FORMATS)}.")
    out = Path(out).expanduser()
    if out.exists():
        raise UserError(f"{out} already exists; choose another output path (exports never overwrite).")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = table.read(version)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if fmt in ("csv", "parquet"):
            tmp.write_bytes(table_bytes(frame, fmt))
            description = f"{len(frame)} rows"
        else:
            description = _export_imagefolder(frame, tmp)
        os.rename(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return out, description


def _export_imagefolder(frame: pd.DataFrame, folder: Path) -> str:
    trainable = frame[trainable_mask(frame)]
    folder_names = {label: _class_folder_name(label) for label in trainable["label"].unique()}
    if len(set(folder_names.values())) < len(folder_names):
        raise UserError("Two class names map to the same folder name once unsafe characters are replaced; rename one of them first.")
    use_splits = (trainable["split"] != "none").any()
    missing = []
    written = []
    for row in trainable.itertuples(index=False):
        parts = ([row.split] if use_splits else []) + [folder_names[row.label]]
        target_dir = folder.joinpath(*parts)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{row.sample_id}-{Path(row.path).name}"
        try:
            try:
                os.link(row.path, target)  # same file system: no copy needed
            except OSError:
                shutil.copy2(row.path, target)
        except FileNotFoundError:
            missing.append(row.path)
            continue
        written.append((row.sample_id, str(target.relative_to(folder)), row.label, row.split))
    if missing:
        raise UserError(
            f"{len(missing)} image(s) of this version no longer exist (e.g. {missing[0]}); "
            "nothing was exported. Restore the files, or exclude those samples and export again."
        )
    pd.DataFrame(written, columns=["sample_id", "path", "label", "split"]).to_csv(folder / "labels.csv", index=False)
    skipped = len(frame) - len(trainable)
    return f"{len(written)} images in {len(folder_names)} class folders" + (
        f" ({skipped} undefined or excluded samples left out)" if skipped else ""
    )
