"""Versioned label tables.

A label table is a Delta Lake table (Parquet data files plus a transaction
log) with one row per sample. Any version can be read back exactly, by this
module or by any Delta reader (Polars ``read_delta``, Spark, DuckDB's delta
extension) or Parquet reader pointed at that version's files.

Layout: each data file holds the rows of one range of :data:`IDS_PER_FILE`
sample ids. A commit removes the files that hold a changed row and adds their
rewritten rows (Delta's own add/remove actions); every other file is shared
with the parent version. So a commit costs what it touches, not the size of
the table, and a diff reads only the files two versions do not share. Tables
written by earlier releases (one snapshot file per version) keep working:
the first commit that touches such a file rewrites it into this layout.

Rules the app keeps on top of Delta:

* Versions are numbered from 1 as users see them; the import is version 1
  (Delta's own numbering starts at 0: ``delta_version = version - 1``).
* A commit names the parent version it was made against. If another commit
  landed in between, it fails with :class:`ConflictError` instead of silently
  overwriting. The check and the write happen under an exclusive lock file
  beside the table, so of many processes committing on the same parent
  exactly one wins. A table in object storage (``s3://``) has no lock file:
  the commit is built on the parent, never retried onto a newer version, and
  its log entry is written with a conditional PUT, which only one writer of
  a version number can get.
* History only grows: restoring an old version is a new commit.
* The class list is part of every version (stored in the commit's metadata),
  so a class with no samples still exists.
* A process killed in the middle of a commit leaves orphan Parquet files at
  worst; the log entry that makes a version visible is written atomically,
  so readers see either the previous version or the new one.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from labelloop.data import storage
from labelloop.errors import ConflictError, StorageError, UserError

UNDEFINED = "undefined"
"""The label of a sample nobody has labelled yet. Reserved: never a class name."""

SPLITS = ("train", "val", "test", "none")

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        # 0 excludes a sample from training; undefined samples are never trained on
        # whatever their weight, so labelling one needs no second edit.
        pa.field("weight", pa.float64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("mode", pa.string()),
        pa.field("file_size", pa.int64()),
        # Hash of the file's bytes: finds exact duplicates, names thumbnails,
        # and keys embeddings by content rather than by label version.
        pa.field("content_hash", pa.string()),
    ]
)
COLUMNS = SCHEMA.names
EDITABLE_COLUMNS = ("label", "weight", "split")

_METADATA_KEY = "labelloop"
_TABLE_CONFIGURATION = {
    # Old log entries carry the messages and class lists of old versions:
    # never let Delta expire them.
    "delta.logRetentionDuration": "interval 36500 days",
    "delta.enableExpiredLogCleanup": "false",
    "delta.deletedFileRetentionDuration": "interval 36500 days",
    # Opening the table replays the log since the last checkpoint, so a
    # checkpoint now and then keeps that short however long the history grows.
    # Not often: a checkpoint lists every data file and (with the retention
    # above) every file ever removed, so at a million rows each is ~0.5 MB,
    # while replaying 100 small commits takes milliseconds.
    "delta.checkpointInterval": "100",
}
IDS_PER_FILE = 1024
"""Sample ids per data file. A commit rewrites every file that holds a changed
row, so this bounds what a small edit costs (about 35 KB per touched file)
against how many files a full read opens (about 1,000 at a million rows)."""
_MAX_CLASS_NAME = 100
_LOG_ENTRY = re.compile(r"^\d{20}\.json$")
_LOCK_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- classes


def trainable_mask(rows: pd.DataFrame) -> np.ndarray:
    """Which rows a model may learn from: a defined label and a weight above 0 (not excluded)."""
    return (rows["label"] != UNDEFINED).to_numpy() & (rows["weight"] > 0).to_numpy()


def check_class_name(name: object) -> str:
    """Return ``name`` stripped if it can be a class name, else raise :class:`UserError`."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{name!r} cannot be a class name: give a non-empty name.")
    stripped = name.strip()
    if stripped.lower() == UNDEFINED:
        raise UserError(
            f"'{UNDEFINED}' is reserved for samples with no label yet and cannot be a class name; "
            f"to unlabel samples, set their label to '{UNDEFINED}'."
        )
    if len(stripped) > _MAX_CLASS_NAME:
        raise UserError(f"Class name '{stripped[:40]}...' is longer than {_MAX_CLASS_NAME} characters: shorten it.")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in stripped):
        raise UserError(f"Class name {stripped!r} contains control characters: remove them.")
    return stripped


# --------------------------------------------------------------------------- change sets


@dataclass
class ChangeSet:
    """What one commit changes.

    ``updates`` has a ``sample_id`` column and any of ``label``, ``weight`` and
    ``split``; a missing value (None/NaN) leaves that field as it is. Labels
    must be classes of the parent version, ``undefined``, or listed in
    ``new_classes``: a commit never invents a class silently.
    """

    updates: pd.DataFrame | None = None
    added: pd.DataFrame | None = None
    removed_ids: Sequence[int] = ()
    new_classes: Sequence[str] = ()
    removed_classes: Sequence[str] = ()

    @classmethod
    def relabel(cls, sample_ids: Iterable[int], label: str, *, new_class: bool = False) -> ChangeSet:
        ids = np.asarray(list(sample_ids), dtype=np.int64)
        updates = pd.DataFrame({"sample_id": ids, "label": [label] * len(ids)})
        return cls(updates=updates, new_classes=[label] if new_class else [])

    @classmethod
    def set_weight(cls, sample_ids: Iterable[int], weight: float) -> ChangeSet:
        ids = np.asarray(list(sample_ids), dtype=np.int64)
        return cls(updates=pd.DataFrame({"sample_id": ids, "weight": np.full(len(ids), float(weight))}))


# --------------------------------------------------------------------------- diffs

_CHANGE_KINDS = ("relabelled", "excluded", "included", "reweighted", "split_changed", "added", "removed")


@dataclass
class Diff:
    """Per-sample differences between version ``a`` and version ``b``.

    ``samples`` has one row per sample that differs, with its old and new
    label, weight and split and one boolean column per kind of change:
    relabelled, excluded (weight went to 0), included (weight left 0),
    reweighted (any other weight change), split_changed, added, removed.
    """

    a: int
    b: int
    samples: pd.DataFrame
    classes_added: list[str] = field(default_factory=list)
    classes_removed: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {kind: int(self.samples[kind].sum()) for kind in _CHANGE_KINDS}

    def label_flow(self) -> pd.DataFrame:
        """Old label x new label counts of the relabelled samples."""
        moved = self.samples[self.samples["relabelled"]]
        if moved.empty:
            return pd.DataFrame(dtype=np.int64)
        return pd.crosstab(moved["old_label"], moved["new_label"]).rename_axis(index="old label", columns="new label")

    def is_empty(self) -> bool:
        return self.samples.empty and not self.classes_added and not self.classes_removed

    def summary(self) -> dict:
        """A JSON-able summary, stored with each commit."""
        moved = self.samples[self.samples["relabelled"]]
        transitions = (
            moved.groupby(["old_label", "new_label"]).size().sort_values(ascending=False)
            if not moved.empty
            else pd.Series(dtype=np.int64)
        )
        return {
            "counts": self.counts(),
            "transitions": [[old, new, int(n)] for (old, new), n in transitions.items()],
            "classes_added": list(self.classes_added),
            "classes_removed": list(self.classes_removed),
        }


_DIFF_COLUMNS = ("sample_id", "path", "label", "weight", "split")


def compare_snapshots(old: pd.DataFrame, new: pd.DataFrame, a: int = 0, b: int = 0, old_classes: Sequence[str] = (), new_classes: Sequence[str] = ()) -> Diff:
    """The :class:`Diff` between two snapshots (DataFrames in :data:`SCHEMA`)."""
    keep = list(_DIFF_COLUMNS)
    if len(old) == len(new) and np.array_equal(old["sample_id"].to_numpy(), new["sample_id"].to_numpy()):
        # The same samples in the same order (any edit but an add or a remove): no join needed.
        merged = pd.concat([old[keep].add_suffix("_old").reset_index(drop=True), new[keep[1:]].add_suffix("_new").reset_index(drop=True)], axis=1)
        merged = merged.rename(columns={"sample_id_old": "sample_id"}).assign(_merge="both")
    else:
        merged = old[keep].merge(new[keep], on="sample_id", how="outer", suffixes=("_old", "_new"), indicator=True)
    added = (merged["_merge"] == "right_only").to_numpy()
    removed = (merged["_merge"] == "left_only").to_numpy()
    both = ~(added | removed)
    old_w = merged["weight_old"].to_numpy(dtype=float)
    new_w = merged["weight_new"].to_numpy(dtype=float)
    relabelled = both & (merged["label_old"] != merged["label_new"]).to_numpy()
    excluded = both & (old_w > 0) & (new_w == 0)
    included = both & (old_w == 0) & (new_w > 0)
    reweighted = both & (old_w != new_w) & ~excluded & ~included
    split_changed = both & (merged["split_old"] != merged["split_new"]).to_numpy()
    changed = added | removed | relabelled | excluded | included | reweighted | split_changed
    rows = merged[changed]
    samples = pd.DataFrame(
        {
            "sample_id": rows["sample_id"].to_numpy(dtype=np.int64),
            "path": rows["path_new"].fillna(rows["path_old"]).to_numpy(dtype=object),
            "old_label": rows["label_old"].to_numpy(dtype=object),
            "new_label": rows["label_new"].to_numpy(dtype=object),
            "old_weight": rows["weight_old"].to_numpy(dtype=float),
            "new_weight": rows["weight_new"].to_numpy(dtype=float),
            "old_split": rows["split_old"].to_numpy(dtype=object),
            "new_split": rows["split_new"].to_numpy(dtype=object),
            "relabelled": relabelled[changed],
            "excluded": excluded[changed],
            "included": included[changed],
            "reweighted": reweighted[changed],
            "split_changed": split_changed[changed],
            "added": added[changed],
            "removed": removed[changed],
        }
    ).sort_values("sample_id", ignore_index=True)
    return Diff(
        a=a,
        b=b,
        samples=samples,
        classes_added=[c for c in new_classes if c not in set(old_classes)],
        classes_removed=[c for c in old_classes if c not in set(new_classes)],
    )


def describe_summary(summary: dict) -> str:
    """One line for people: '412 relabelled (shirt -> t-shirt 300, ...), 3 excluded'."""
    counts = summary.get("counts", {})
    parts = []
    for kind in _CHANGE_KINDS:
        n = counts.get(kind, 0)
        if not n:
            continue
        text = f"{n} {kind.replace('_', ' ')}"
        if kind == "relabelled" and summary.get("transitions"):
            top = summary["transitions"][:3]
            more = len(summary["transitions"]) - len(top)
            text += " (" + ", ".join(f"{o} -> {n_} {c}" for o, n_, c in top) + (f", +{more} more" if more else "") + ")"
        parts.append(text)
    if summary.get("classes_added"):
        parts.append("new classes: " + ", ".join(summary["classes_added"]))
    if summary.get("classes_removed"):
        parts.append("removed classes: " + ", ".join(summary["classes_removed"]))
    return "; ".join(parts) if parts else "no changes"


def image_set_digest(rows: pd.DataFrame) -> str:
    """Which samples and images ``rows`` hold (their sample ids and content hashes, in order), as 24 hex digits.

    Equal for two versions that differ only in labels, weights or splits. Hashed from the columns'
    Arrow buffers: joining a million hashes as Python strings takes 2.4 s, this 0.07 s.
    """
    import hashlib

    digest = hashlib.blake2b(np.ascontiguousarray(rows["sample_id"].to_numpy(), dtype=np.int64).tobytes(), digest_size=12)
    hashes = pa.chunked_array(pa.Table.from_pandas(rows[["content_hash"]], preserve_index=False).column(0)).combine_chunks()
    if not pa.types.is_large_string(hashes.type):
        hashes = hashes.cast(pa.large_string())  # one offset width for every input
    offsets = np.frombuffer(hashes.buffers()[1], dtype=np.int64)[hashes.offset : hashes.offset + len(hashes) + 1]
    digest.update((offsets - offsets[0]).tobytes())  # where each string ends: "ab", "c" differs from "a", "bc"
    if hashes.buffers()[2] is not None:
        digest.update(memoryview(hashes.buffers()[2])[offsets[0] : offsets[-1]])
    return digest.hexdigest()


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class VersionInfo:
    version: int
    timestamp: datetime
    message: str
    kind: str  # "import", "commit" or "restore"
    parent: int | None
    classes: tuple[str, ...]
    n_samples: int
    summary: dict
    next_id: int | None = None
    """The id the next added sample gets; ids of removed samples are never given again (None: written by an earlier release)."""

    def describe(self) -> str:
        if self.kind == "import":
            return f"import of {self.n_samples} samples, {len(self.classes)} classes"
        return describe_summary(self.summary)


# --------------------------------------------------------------------------- the table


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame[COLUMNS], schema=SCHEMA, preserve_index=False)


_DELTA_SCHEMA = DeltaSchema.from_arrow(SCHEMA)
_WRITE_THREADS = min(8, os.cpu_count() or 1)


def _empty_rows(columns: Sequence[str] = COLUMNS) -> pd.DataFrame:
    return pa.Table.from_pylist([], schema=pa.schema([SCHEMA.field(c) for c in columns])).to_pandas()


@dataclass(frozen=True)
class DataFiles:
    """The data files of one version, ordered by sample id.

    ``files`` has one row per file: ``path`` (relative to the table folder),
    ``size`` (bytes), ``rows``, and ``first_id`` / ``last_id``, the range of
    sample ids it holds. Ranges never overlap: a file's rewritten rows go to
    files within its own range, and added samples get ids above every other.
    """

    files: pd.DataFrame

    @classmethod
    def of(cls, delta: DeltaTable, table_path: storage.Location) -> DataFiles:
        actions = pa.table(delta.get_add_actions(flatten=True))
        names = actions.column_names

        def column(name: str) -> np.ndarray:
            if name not in names:
                return np.full(actions.num_rows, np.nan)
            return actions[name].to_numpy(zero_copy_only=False).astype(float)

        files = pd.DataFrame(
            {
                "path": actions["path"].to_pylist(),
                "size": actions["size_bytes"].to_numpy(zero_copy_only=False).astype(np.int64),
                "rows": column("num_records"),
                "first_id": column("min.sample_id"),
                "last_id": column("max.sample_id"),
            }
        )
        for i in np.flatnonzero(files[["rows", "first_id", "last_id"]].isna().any(axis=1).to_numpy()):
            # A writer that kept no statistics: read them from the file itself.
            fs, file_path = storage.filesystem(storage.join(table_path, files.at[i, "path"]))
            ids = pq.read_table(file_path, columns=["sample_id"], filesystem=fs)["sample_id"].to_numpy()
            files.loc[i, ["rows", "first_id", "last_id"]] = [len(ids), ids.min() if len(ids) else 0, ids.max() if len(ids) else -1]
        files = files.astype({"rows": np.int64, "first_id": np.int64, "last_id": np.int64})
        return cls(files.sort_values("first_id", ignore_index=True))

    def next_id(self) -> int:
        """One above every sample id in these files."""
        return int(self.files["last_id"].max()) + 1 if len(self.files) else 1

    def holding(self, sample_ids: np.ndarray) -> DataFiles:
        """The files that hold (or would hold) any of ``sample_ids``."""
        first = self.files["first_id"].to_numpy()
        last = self.files["last_id"].to_numpy()
        if len(first) == 0 or len(sample_ids) == 0:
            return DataFiles(self.files.iloc[:0])
        if np.any(first[1:] <= last[:-1]):  # overlapping ranges (not written by this module): read them all
            return self
        index = np.searchsorted(first, sample_ids, side="right") - 1
        inside = (index >= 0) & (sample_ids <= last[np.clip(index, 0, None)])
        return DataFiles(self.files.iloc[np.unique(index[inside])].reset_index(drop=True))

    def without(self, other: DataFiles) -> DataFiles:
        """These files minus the ones ``other`` shares."""
        return DataFiles(self.files[~self.files["path"].isin(other.files["path"])].reset_index(drop=True))

    def add_actions(self) -> list[AddAction]:
        now = int(time.time() * 1000)
        return [
            AddAction(row.path, int(row.size), {}, now, True, _file_stats(int(row.rows), int(row.first_id), int(row.last_id)))
            for row in self.files.itertuples()
        ]

    def remove_actions(self) -> list[RemoveAction]:
        now = int(time.time() * 1000)
        return [RemoveAction(path, True, now, int(size), {}) for path, size in zip(self.files["path"], self.files["size"])]


def _file_stats(rows: int, first_id: int, last_id: int) -> str:
    """Delta's per-file statistics: readers skip files by the sample_id range."""
    return json.dumps({"numRecords": rows, "minValues": {"sample_id": first_id}, "maxValues": {"sample_id": last_id}, "nullCount": {"sample_id": 0}})


class LabelTable:
    """One data set's versioned label table, stored at ``path`` (a Delta table folder)."""

    def __init__(self, path: str | os.PathLike, lock_path: str | os.PathLike | None = None):
        self.path = storage.as_location(path)
        self.remote = storage.is_remote(self.path)
        # In object storage the lock file has nothing to protect: the log entry is written with a
        # conditional PUT, so of many writers on one parent exactly one gets it (see _write).
        self.lock_path = None if self.remote else Path(lock_path) if lock_path else self.path.with_name(self.path.name + ".lock")
        try:
            is_table = storage.kind(storage.join(self.path, "_delta_log")) == "folder"
        except OSError as exc:
            raise storage.explain(exc, self.path, "open the label table at") from exc
        if not is_table:
            raise UserError(
                f"{self.path} is not a label table (it has no _delta_log folder). "
                "Point to a data set made by `labelloop import` or `labelloop demo`."
            )
        self._info_cache: dict[int, VersionInfo] = {}

    # ----- creating

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        rows: pd.DataFrame,
        classes: Sequence[str],
        message: str = "import",
        lock_path: str | os.PathLike | None = None,
    ) -> LabelTable:
        """Write version 1 from ``rows`` (columns of :data:`SCHEMA`; ``sample_id`` optional)."""
        path = storage.as_location(path)
        try:
            exists = storage.exists(storage.join(path, "_delta_log"))
        except OSError as exc:
            raise storage.explain(exc, path, "create a label table at") from exc
        if exists:
            raise UserError(f"{path} already holds a label table; open it instead of creating it again.")
        class_list = _normalise_class_list(classes)
        frame = rows.copy()
        if "sample_id" not in frame.columns:
            frame.insert(0, "sample_id", np.arange(1, len(frame) + 1, dtype=np.int64))
        frame = _fill_defaults(frame)
        _validate_snapshot(frame, class_list)
        meta = {"message": message, "kind": "import", "parent": None, "classes": class_list, "summary": {}, "n_samples": len(frame), "next_id": int(frame["sample_id"].max()) + 1 if len(frame) else 1}
        with _write_errors_explained(path, "version 1"):
            if not storage.is_remote(path):
                path.mkdir(parents=True, exist_ok=True)
            written = _write_data_files(path, frame)
            create_table_with_add_actions(
                str(path),
                _DELTA_SCHEMA,
                written.add_actions(),
                mode="error",
                name=storage.name_of(storage.parent_of(path)) or None,
                configuration=_TABLE_CONFIGURATION,
                commit_properties=CommitProperties(custom_metadata={_METADATA_KEY: meta}, max_commit_retries=0),
            )
        return cls(path, lock_path)

    # ----- reading

    def _delta(self, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(str(self.path), version=None if version is None else version - 1)
        except Exception as exc:  # deltalake raises several types for a damaged log
            raise UserError(
                f"The label table at {self.path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}). "
                "Its log may be damaged: restore the folder from a backup, or re-import the images."
            ) from exc

    def data_files(self, version: int | None = None) -> DataFiles:
        """The data files that make up ``version`` (default: the head)."""
        version = self._check_version(version)
        return self._files_of(self._delta(version), version)

    def _files_of(self, delta: DeltaTable, version: int) -> DataFiles:
        try:
            return DataFiles.of(delta, self.path)
        except (OSError, pa.ArrowException) as exc:
            raise _damaged(f"version {version} of {self.path}", exc) from exc

    def _read_files(self, files: DataFiles, what: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows of ``files``, sorted by sample_id."""
        columns = list(columns or COLUMNS)
        if "sample_id" not in columns:
            columns.insert(0, "sample_id")
        if files.files.empty:
            return _empty_rows(columns)
        try:
            # Polars opens many small files in parallel, several times faster than a pyarrow dataset.
            frame = pl.read_parquet([str(storage.join(self.path, name)) for name in files.files["path"]], columns=columns).to_pandas()
        except Exception as exc:  # a data file deleted or damaged behind the app's back
            raise _damaged(what, exc) from exc
        if not frame["sample_id"].is_monotonic_increasing:
            frame = frame.sort_values("sample_id", ignore_index=True)
        return frame

    def head_version(self) -> int:
        # A version exists once its log entry does: a directory listing is
        # enough, and far cheaper than loading the table state.
        try:
            names = storage.list_names(storage.join(self.path, "_delta_log"))
        except OSError as exc:
            raise storage.explain(exc, self.path, "read the label table at") from exc
        numbers = [int(name[:20]) for name in names if _LOG_ENTRY.match(name)]
        if not numbers:
            raise UserError(f"The label table at {self.path} has no versions: its log is empty. Re-import the images.")
        return max(numbers) + 1

    def _check_version(self, version: int | None) -> int:
        head = self.head_version()
        if version is None:
            return head
        if not isinstance(version, (int, np.integer)) or not 1 <= version <= head:
            raise UserError(f"Version {version} does not exist: this table has versions 1 to {head}.")
        return int(version)

    def read(self, version: int | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows of ``version`` (default: the head), sorted by sample_id; all columns unless ``columns`` are named (sample_id always comes)."""
        version = self._check_version(version)
        what = f"version {version} of {self.path}"
        return self._read_files(self.data_files(version), what, columns)

    def history(self) -> list[VersionInfo]:
        """Every version, oldest first."""
        return [self.version_info(v) for v in range(1, self.head_version() + 1)]

    def version_info(self, version: int | None = None) -> VersionInfo:
        """Message, time, class list and change summary of ``version`` (default: the head)."""
        version = self._check_version(version)
        if version not in self._info_cache:  # versions never change, so caching is safe
            self._info_cache[version] = self._read_commit_info(version)
        return self._info_cache[version]

    def _read_commit_info(self, version: int) -> VersionInfo:
        log_entry = storage.join(self.path, "_delta_log", f"{version - 1:020d}.json")
        try:
            # Only the commitInfo action is parsed: a commit that rewrote a million rows lists a thousand file
            # actions beside it (half a megabyte of JSON, 0.3 s to parse on every page after it).
            # A torn write still shows: every action is one JSON object on its own line, so a truncated entry
            # ends in a line that does not close its object (deltalake reports any other damage on reading).
            lines = [line for line in storage.read_bytes(log_entry).decode("utf-8").splitlines() if line.strip()]
            if not lines or not all(line.rstrip().endswith("}") for line in lines):
                raise ValueError("a truncated log entry")
            commit = next(json.loads(line)["commitInfo"] for line in lines if line.lstrip().lstrip("{").lstrip().startswith('"commitInfo"'))
        except (OSError, ValueError, StopIteration) as exc:
            raise UserError(
                f"The label table at {self.path} cannot be read: the log entry of version {version} is damaged "
                f"({type(exc).__name__}). Restore the folder from a backup, or re-import the images."
            ) from exc
        meta = commit.get(_METADATA_KEY)
        if not isinstance(meta, dict):
            raise UserError(
                f"Version {version} of {self.path} was not written by this app "
                "(its commit has no labelloop metadata). Restore the folder from a backup."
            )
        return VersionInfo(
            version=version,
            timestamp=datetime.fromtimestamp(commit.get("timestamp", 0) / 1000, tz=timezone.utc),
            message=meta.get("message", ""),
            kind=meta.get("kind", "commit"),
            parent=meta.get("parent"),
            classes=tuple(meta.get("classes", ())),
            # Earlier releases wrote a full snapshot per version, so its row count is the version's size.
            n_samples=int(meta.get("n_samples", commit.get("operationMetrics", {}).get("num_added_rows", 0))),
            summary=meta.get("summary", {}),
            next_id=meta.get("next_id"),
        )

    def classes(self, version: int | None = None) -> list[str]:
        return list(self.version_info(version).classes)

    def class_counts(self, version: int | None = None) -> pd.DataFrame:
        """Per class (every class of the version, then ``undefined``): samples, excluded, trainable."""
        frame = self.read(version, columns=["label", "weight"])
        classes = self.classes(version) + [UNDEFINED]
        excluded = frame["weight"] == 0
        total = frame["label"].value_counts().reindex(classes, fill_value=0)
        n_excluded = frame.loc[excluded, "label"].value_counts().reindex(classes, fill_value=0)
        counts = pd.DataFrame({"samples": total, "excluded": n_excluded})
        counts["trainable"] = counts["samples"] - counts["excluded"]
        counts.loc[UNDEFINED, "trainable"] = 0
        return counts.rename_axis("class").astype(np.int64)

    def class_counts_by_version(self, versions: Sequence[int]) -> pd.DataFrame:
        """Samples per class (rows, undefined last) in each of ``versions`` (columns ``v1``, ``v2``...)."""
        columns = {f"v{v}": self.class_counts(v)["samples"] for v in versions}
        matrix = pd.DataFrame(columns).fillna(0).astype(np.int64)
        order = [c for c in matrix.index if c != UNDEFINED] + ([UNDEFINED] if UNDEFINED in matrix.index else [])
        return matrix.loc[order]

    def diff(self, a: int, b: int) -> Diff:
        a, b = self._check_version(a), self._check_version(b)
        files_a, files_b = self.data_files(a), self.data_files(b)
        # A file both versions share holds the same rows in both: only the others can differ.
        old = self._read_files(files_a.without(files_b), f"version {a} of {self.path}", _DIFF_COLUMNS)
        new = self._read_files(files_b.without(files_a), f"version {b} of {self.path}", _DIFF_COLUMNS)
        return compare_snapshots(old, new, a, b, self.classes(a), self.classes(b))

    def parquet_files(self, version: int | None = None) -> list[str]:
        """The Parquet files that make up ``version``, for plain Parquet readers."""
        return self._delta(self._check_version(version)).file_uris()

    # ----- writing

    def commit(self, changes: ChangeSet, *, parent: int, message: str) -> int:
        """Apply ``changes`` to version ``parent`` and write them as a new version.

        Reads and rewrites only the data files that hold a changed or removed
        sample; added samples go to new files. Raises :class:`ConflictError`
        if ``parent`` is no longer the head, and :class:`UserError` if the
        change set is invalid or changes nothing. Returns the new version number.
        """
        message = _check_message(message)
        with self._lock():
            self._check_parent(parent)
            head = self._delta(parent)  # loaded once: read from it and write through it
            files = self._files_of(head, parent)
            touched = files.holding(_touched_ids(changes))
            old = self._read_files(touched, f"version {parent} of {self.path}")
            old_classes = self.classes(parent)
            labels_elsewhere = None
            if changes.removed_classes:  # whether a class is still in use depends on every row
                labels_elsewhere = self._read_files(files.without(touched), f"version {parent} of {self.path}", ["label"])["label"]
            next_id = self._next_id(parent, files)
            new, new_classes = apply_changes(old, old_classes, changes, next_id=next_id, labels_elsewhere=labels_elsewhere)
            next_id = max(next_id, int(new["sample_id"].max()) + 1 if len(new) else 1)
            return self._write(head, touched, old, old_classes, new, new_classes, parent=parent, message=message, kind="commit", next_id=next_id)

    def restore(self, version: int, *, parent: int, message: str | None = None) -> int:
        """Write a new version equal to ``version``. History is never rewritten.

        Writes no data: the new version is made of ``version``'s own files.
        """
        version = self._check_version(version)
        message = _check_message(message or f"restore version {version}")
        with self._lock():
            self._check_parent(parent)
            if version == parent:
                raise UserError(f"Version {version} is already the latest; pick an older version to restore.")
            head = self._delta(parent)
            files_now, files_then = self._files_of(head, parent), self.data_files(version)
            leaving, returning = files_now.without(files_then), files_then.without(files_now)
            return self._write(
                head,
                leaving,
                self._read_files(leaving, f"version {parent} of {self.path}", _DIFF_COLUMNS),
                self.classes(parent),
                self._read_files(returning, f"version {version} of {self.path}", _DIFF_COLUMNS),
                self.classes(version),
                parent=parent,
                message=message,
                kind="restore",
                next_id=self._next_id(parent, files_now),
                reuse=returning,
            )

    def _next_id(self, version: int, files: DataFiles) -> int:
        """The id the next sample added on top of ``version`` gets."""
        return max(self.version_info(version).next_id or 1, files.next_id())

    def _check_parent(self, parent: int) -> None:
        head = self.head_version()
        if parent != head:
            latest = self.version_info(head)
            raise ConflictError(
                f"Version {parent} is no longer the latest: version {head} ('{latest.message}') was committed "
                f"meanwhile. Nothing was written. Reload version {head}, redo your change on it, and commit again.",
                parent=parent,
                head=head,
            )

    def _write(
        self,
        head: DeltaTable,
        replaced: DataFiles,
        old: pd.DataFrame,
        old_classes: list[str],
        new: pd.DataFrame,
        new_classes: list[str],
        *,
        parent: int,
        message: str,
        kind: str,
        next_id: int,
        reuse: DataFiles | None = None,
    ) -> int:
        """Commit version ``parent + 1``: the files ``replaced`` (holding ``old``) give way to ``new``.

        ``new`` is written to new data files unless ``reuse`` names existing
        files that already hold exactly those rows (a restore).
        """
        diff = compare_snapshots(old, new, parent, parent + 1, old_classes, new_classes)
        if diff.is_empty():
            raise UserError(f"Nothing to commit: the change leaves version {parent} as it is.")
        n_samples = self.version_info(parent).n_samples - len(old) + len(new)
        meta = {"message": message, "kind": kind, "parent": parent, "classes": new_classes, "summary": diff.summary(), "n_samples": n_samples, "next_id": next_id}
        try:
            with _write_errors_explained(self.path, f"version {parent + 1}"):
                # Data files first, the log entry last: a crash in between leaves
                # only files no version refers to.
                added = reuse if reuse is not None else _write_data_files(self.path, new)
                try:
                    head.create_write_transaction(
                        [*replaced.remove_actions(), *added.add_actions()],
                        mode="append",
                        schema=_DELTA_SCHEMA,
                        commit_properties=CommitProperties(custom_metadata={_METADATA_KEY: meta}, max_commit_retries=0),
                        post_commithook_properties=PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False),
                    )
                except CommitFailedError as exc:  # version parent + 1 exists already
                    raise self._conflict(parent) from exc
        except StorageError:
            # The log entry went in and only the checkpoint after it failed: the version is
            # committed (a checkpoint only speeds up reading; a later commit writes one).
            if self.head_version() != parent + 1:
                raise
        new_version = self.head_version()
        if new_version != parent + 1:  # only possible if something bypassed the lock
            raise self._conflict(parent)
        return new_version

    def _conflict(self, parent: int) -> ConflictError:
        head = self.head_version()
        return ConflictError(
            f"Another writer committed version {parent + 1} while this commit was being written (head is now {head}). "
            "Nothing of this commit was written. Check the history before committing again.",
            parent=parent,
            head=head,
        )

    @contextmanager
    def _lock(self) -> Iterator[None]:
        if self.lock_path is None:
            yield
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(
                f"Cannot write to {self.lock_path.parent} ({exc.strerror}). "
                "Commits need write access to the data set folder: fix its permissions or copy it somewhere writable."
            ) from exc
        try:
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise UserError(
                            f"The label table {self.path} stayed locked by another commit for {_LOCK_TIMEOUT_S:.0f} s. "
                            "Wait for the other app or command to finish, then try again."
                        ) from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock, also when the process dies


@contextmanager
def _write_errors_explained(path: storage.Location, what: str) -> Iterator[None]:
    """Turn a failed write (disk full, read-only folder, I/O error) into a :class:`UserError`.

    Delta makes a version visible only by writing its log entry last, so a
    write that fails part-way leaves at most an unreferenced data file: the
    table and every existing version are as they were.
    """
    try:
        yield
    except (DeltaError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if storage.is_remote(path):
            hint = "Check the network, the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and that the bucket exists"
        else:
            hint = "Free some disk space" if "space" in reason.lower() else "Check that the folder is writable and the disk is healthy"
        raise StorageError(f"Could not write {what} of the label table at {path}: {reason}. Nothing was committed; the existing versions are unchanged. {hint}, then try again.", reason=reason) from exc


def _damaged(what: str, exc: BaseException) -> UserError:
    return UserError(
        f"The data files of {what} are missing or damaged ({type(exc).__name__}: {str(exc)[:200]}). "
        "Restore the data set folder from a backup; other versions may still be readable."
    )


def _write_data_files(table_path: storage.Location, rows: pd.DataFrame) -> DataFiles:
    """Write ``rows`` as new data files, one per range of :data:`IDS_PER_FILE` sample ids."""
    table = to_arrow(rows.sort_values("sample_id"))
    ids = table["sample_id"].to_numpy()
    if len(ids) == 0:
        return DataFiles(pd.DataFrame({"path": [], "size": [], "rows": [], "first_id": [], "last_id": []}))
    bucket = (ids - 1) // IDS_PER_FILE
    starts = np.r_[0, np.flatnonzero(np.diff(bucket)) + 1]
    ends = np.r_[starts[1:], len(ids)]

    def write(span: tuple[int, int]) -> dict:
        start, end = span
        name = f"part-{uuid.uuid4()}.zstd.parquet"
        rows_of_file = table.slice(start, end - start)
        if storage.is_remote(table_path):  # encoded in memory, then one PUT
            buffer = pa.BufferOutputStream()
            pq.write_table(rows_of_file, buffer, compression="zstd", write_statistics=["sample_id"])
            data = buffer.getvalue().to_pybytes()
            storage.write_bytes(storage.join(table_path, name), data)
            size = len(data)
        else:
            pq.write_table(rows_of_file, table_path / name, compression="zstd", write_statistics=["sample_id"])
            size = (table_path / name).stat().st_size
        return {"path": name, "size": size, "rows": end - start, "first_id": int(ids[start]), "last_id": int(ids[end - 1])}

    spans = list(zip(starts.tolist(), ends.tolist()))
    if len(spans) < 8:  # starting threads costs more than a few small files take
        return DataFiles(pd.DataFrame([write(span) for span in spans]))
    with ThreadPoolExecutor(_WRITE_THREADS) as pool:  # Parquet encoding releases the GIL
        return DataFiles(pd.DataFrame(list(pool.map(write, spans))))


def _touched_ids(changes: ChangeSet) -> np.ndarray:
    """The sample ids a change set edits or removes (ids that are not whole numbers are left to validation)."""
    parts = [np.asarray(list(changes.removed_ids or ()), dtype=np.int64)]
    if changes.updates is not None and "sample_id" in changes.updates.columns:
        ids = pd.to_numeric(changes.updates["sample_id"], errors="coerce").dropna()
        parts.append(ids[ids % 1 == 0].to_numpy(dtype=np.int64))
    return np.unique(np.concatenate(parts))


# --------------------------------------------------------------------------- applying changes


def apply_changes(
    old: pd.DataFrame,
    old_classes: Sequence[str],
    changes: ChangeSet,
    *,
    next_id: int | None = None,
    labels_elsewhere: pd.Series | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Return (new rows, new class list) after ``changes``; raise :class:`UserError` on bad input.

    ``old`` may be part of a version: the rows that hold every sample the
    changes edit or remove. Then ``next_id`` is the id the first added sample
    gets (default: one above ``old``'s largest), and ``labels_elsewhere`` the
    labels of the version's other rows, needed only to refuse removing a
    class still in use.
    """
    classes = list(old_classes)
    for name in changes.new_classes:
        name = check_class_name(name)
        if name not in classes:
            classes.append(name)
    frame = old.set_index("sample_id", drop=False)

    if changes.removed_ids is not None and len(changes.removed_ids):
        removed = np.asarray(list(changes.removed_ids), dtype=np.int64)
        _check_known_ids(removed, frame.index, "remove")
        frame = frame.drop(index=removed)

    if changes.updates is not None and len(changes.updates):
        frame = _apply_updates(frame, changes.updates, set(classes))

    if changes.added is not None and len(changes.added):
        added = _fill_defaults(changes.added.drop(columns=["sample_id"], errors="ignore").copy())
        if next_id is None:
            next_id = int(old["sample_id"].max()) + 1 if len(old) else 1
        added.insert(0, "sample_id", np.arange(next_id, next_id + len(added), dtype=np.int64))
        frame = pd.concat([frame.reset_index(drop=True), added[COLUMNS]], ignore_index=True)

    for name in changes.removed_classes:
        if name not in classes:
            raise UserError(f"Cannot remove class '{name}': it is not a class of this table.")
        in_use = int((frame["label"] == name).sum())
        if labels_elsewhere is not None:
            in_use += int((labels_elsewhere == name).sum())
        if in_use:
            raise UserError(f"Cannot remove class '{name}': {in_use} samples still have it. Relabel them first.")
        classes.remove(name)

    new = frame.reset_index(drop=True).sort_values("sample_id", ignore_index=True)[COLUMNS]
    _validate_snapshot(new, classes)
    return new, classes


def _apply_updates(frame: pd.DataFrame, updates: pd.DataFrame, classes: set[str]) -> pd.DataFrame:
    if "sample_id" not in updates.columns:
        raise UserError("The changes have no 'sample_id' column: say which samples to change.")
    unknown_columns = set(updates.columns) - {"sample_id", *EDITABLE_COLUMNS}
    if unknown_columns:
        raise UserError(
            f"Cannot change column(s) {', '.join(sorted(unknown_columns))}: only {', '.join(EDITABLE_COLUMNS)} can be edited."
        )
    ids = pd.to_numeric(updates["sample_id"], errors="coerce")
    if ids.isna().any() or (ids % 1 != 0).any():
        bad = updates.loc[ids.isna() | (ids % 1 != 0), "sample_id"].head(5).tolist()
        raise UserError(f"sample_id must be whole numbers; found {bad}.")
    ids = ids.to_numpy(dtype=np.int64)
    duplicated = pd.Series(ids)[pd.Series(ids).duplicated()].unique()
    if len(duplicated):
        raise UserError(
            f"{len(duplicated)} sample_id(s) appear more than once in the changes (e.g. {duplicated[:5].tolist()}); "
            "give each sample one row."
        )
    _check_known_ids(ids, frame.index, "change")
    frame = frame.copy()

    if "label" in updates.columns:
        labels = updates["label"]
        given = labels.notna().to_numpy() & (labels.astype(str).str.strip() != "").to_numpy()
        new_labels = labels[given].astype(str).str.strip()
        unknown = sorted(set(new_labels) - classes - {UNDEFINED})
        if unknown:
            raise UserError(
                f"Label(s) {', '.join(repr(u) for u in unknown[:10])} are not classes of this table "
                f"(classes: {', '.join(sorted(classes)) or 'none yet'}). "
                "Add them as new classes explicitly (the 'new label' action, --new-class, or new_class=True in Python), or fix the spelling."
            )
        frame.loc[ids[given], "label"] = new_labels.to_numpy()

    if "weight" in updates.columns:
        weights = pd.to_numeric(updates["weight"], errors="coerce")
        raw_given = updates["weight"].notna().to_numpy() & (updates["weight"].astype(str).str.strip() != "").to_numpy()
        if (raw_given & weights.isna().to_numpy()).any():
            bad = updates.loc[raw_given & weights.isna().to_numpy(), "weight"].head(5).tolist()
            raise UserError(f"Weights must be numbers (0 excludes a sample); found {bad}.")
        values = weights[raw_given].to_numpy(dtype=float)
        if not np.all(np.isfinite(values)) or (values < 0).any():
            raise UserError("Weights must be finite numbers of 0 or more (0 excludes a sample from training).")
        frame.loc[ids[raw_given], "weight"] = values

    if "split" in updates.columns:
        splits = updates["split"]
        given = splits.notna().to_numpy() & (splits.astype(str).str.strip() != "").to_numpy()
        values = splits[given].astype(str).str.strip().str.lower()
        bad = sorted(set(values) - set(SPLITS))
        if bad:
            raise UserError(f"Unknown split(s) {bad}: use one of {', '.join(SPLITS)}.")
        frame.loc[ids[given], "split"] = values.to_numpy()
    return frame


def _check_known_ids(ids: np.ndarray, known: pd.Index, verb: str) -> None:
    missing = ~np.isin(ids, known.to_numpy())
    if missing.any():
        raise UserError(
            f"Cannot {verb} {int(missing.sum())} sample(s) that are not in this version "
            f"(e.g. sample_id {ids[missing][:5].tolist()}). Check the ids against the version you named as parent."
        )


def _fill_defaults(frame: pd.DataFrame) -> pd.DataFrame:
    if "path" not in frame.columns:
        raise UserError("New rows need a 'path' column.")
    defaults = {"label": UNDEFINED, "weight": 1.0, "split": "none", "width": None, "height": None, "mode": None, "file_size": None, "content_hash": None}
    for column, default in defaults.items():
        if column not in frame.columns:
            frame[column] = default
    frame["label"] = frame["label"].fillna(UNDEFINED).astype(str)
    frame["weight"] = frame["weight"].fillna(1.0).astype(float)
    frame["split"] = frame["split"].fillna("none").astype(str)
    return frame


def _normalise_class_list(classes: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for name in classes:
        name = check_class_name(name)
        if name not in seen:
            seen.append(name)
    return seen


def _validate_snapshot(frame: pd.DataFrame, classes: Sequence[str]) -> None:
    if frame["sample_id"].duplicated().any():
        raise UserError("Two rows share a sample_id; every sample needs its own id.")
    unknown = sorted(set(frame["label"].unique()) - set(classes) - {UNDEFINED})
    if unknown:
        raise UserError(
            f"Label(s) {', '.join(repr(u) for u in unknown[:10])} are not in the class list; add them as classes explicitly."
        )
    bad_splits = sorted(set(frame["split"].unique()) - set(SPLITS))
    if bad_splits:
        raise UserError(f"Unknown split(s) {bad_splits}: use one of {', '.join(SPLITS)}.")
    weights = frame["weight"].to_numpy(dtype=float)
    if not np.all(np.isfinite(weights)) or (weights < 0).any():
        raise UserError("Weights must be finite numbers of 0 or more (0 excludes a sample from training).")


def _check_message(message: str | None) -> str:
    message = (message or "").strip()
    if not message:
        raise UserError("Every commit needs a message saying what changed and why.")
    return message


def revert_changes(samples: pd.DataFrame, current: pd.DataFrame | None = None) -> tuple[ChangeSet, int]:
    """Put these relabelled samples (rows of :attr:`Diff.samples`) back to their old labels.

    With ``current`` (the rows of the version the revert is committed on), only
    samples that still carry the label the diff moved them to are reverted: a
    sample changed again since was not what the user was shown. Returns the
    change set and how many samples were left alone for that reason.
    """
    chosen = samples
    if current is not None:
        now = current.set_index("sample_id")["label"].reindex(samples["sample_id"]).to_numpy()
        chosen = samples[now == samples["new_label"].to_numpy()]
    updates = pd.DataFrame({"sample_id": chosen["sample_id"].to_numpy(dtype=np.int64), "label": chosen["old_label"].to_numpy(dtype=object)})
    return ChangeSet(updates=updates), len(samples) - len(chosen)
