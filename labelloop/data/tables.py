"""Versioned label tables: the Delta Lake table, its versions and commits.

What a row is lives in :mod:`labelloop.data.schema`, what a commit changes in
:mod:`labelloop.data.changes`, what differs between versions in :mod:`labelloop.data.diff`.

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
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import deltalake
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
    DeltaProtocolError,
    TableNotFoundError,
)
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions

from labelloop.data import storage
from labelloop.data.changes import ChangeSet, apply_changes, touched_ids
from labelloop.data.diff import DIFF_COLUMNS, Diff, compare_snapshots, describe_summary
from labelloop.data.schema import (
    COLUMNS,
    SCHEMA,
    UNDEFINED,
    empty_rows,
    fill_defaults,
    normalise_class_list,
    to_arrow,
    validate_rows,
)
from labelloop.data.write_steps import reached
from labelloop.errors import ConflictError, StorageError, UserError

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
_LOG_ENTRY = re.compile(r"^\d{20}\.json$")
_LOCK_TIMEOUT_S = 60.0



# --------------------------------------------------------------------------- history


class Commit(int):
    """What a commit or a restore did. It is the new version's number (so ``table.commit(...) == 3`` and
    ``parent=table.commit(...)`` read as before), and says what was written: ``files_written`` new data
    files of ``bytes_written`` bytes (a restore writes none: it reuses the old version's files),
    ``files_replaced`` files the new version no longer uses, and ``counts`` per kind of change."""

    parent: int
    kind: str
    files_written: int
    bytes_written: int
    files_replaced: int
    counts: dict[str, int]

    def __new__(cls, version: int, *, parent: int, kind: str, files_written: int, bytes_written: int, files_replaced: int, counts: dict[str, int]) -> Commit:
        made = super().__new__(cls, version)
        made.parent, made.kind, made.files_written, made.bytes_written, made.files_replaced, made.counts = (
            parent, kind, files_written, bytes_written, files_replaced, counts)
        return made

    @property
    def version(self) -> int:
        return int(self)

    def describe(self) -> str:
        changes = ", ".join(f"{n:,} {kind.replace('_', ' ')}" for kind, n in self.counts.items() if n) or "no sample changed"
        written = f"{self.files_written} data file(s), {self.bytes_written / 1024:,.0f} KB" if self.files_written else "no data (the files were reused)"
        return f"v{self.version} ({self.kind} on v{self.parent}): {changes}; wrote {written}; {self.files_replaced} file(s) left for the earlier versions"


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


_DELTA_SCHEMA = DeltaSchema.from_arrow(SCHEMA)
_WRITE_THREADS = min(8, os.cpu_count() or 1)


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
        class_list = normalise_class_list(classes)
        frame = rows.copy()
        if "sample_id" not in frame.columns:
            frame.insert(0, "sample_id", np.arange(1, len(frame) + 1, dtype=np.int64))
        frame = fill_defaults(frame)
        validate_rows(frame, class_list)
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
        except TableNotFoundError:
            raise UserError(
                f"There is no label table at {self.path} any more (its _delta_log is gone): was the data set folder moved or deleted? "
                "Restore it from a backup, or re-import the images."
            ) from None
        except DeltaProtocolError as exc:
            raise UserError(
                f"The label table at {self.path} needs Delta features this deltalake {deltalake.__version__} cannot read ({str(exc)[:200]}): "
                "it was written by a newer tool. Read it with that tool, or upgrade deltalake in this environment."
            ) from exc
        except OSError as exc:  # the disk or the object store, not the table
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            hint = "check the network and the credentials" if storage.is_remote(self.path) else "check that the folder is readable and the disk is healthy"
            raise StorageError(f"Could not read the label table at {self.path}: {reason}. Nothing was changed; {hint}, then try again.", reason=reason) from exc
        except Exception as exc:  # DeltaError and whatever else deltalake raises for a log it cannot parse
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
            return empty_rows(columns)
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

    def image_set_version(self, version: int | None = None) -> int:
        """The oldest version holding the same samples and images as ``version`` (see
        :func:`labelloop.data.schema.image_set_digest`): a version that added and removed no sample holds
        its parent's images (a content hash never changes and an id is never given again), so a cache of
        the image set made for that version holds after any number of relabels, without hashing a million rows again."""
        info = self.version_info(version)
        while info.kind != "import" and info.parent is not None and _adds_or_removes_nothing(info):
            info = self.version_info(info.parent)
        return info.version

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
            timestamp=datetime.fromtimestamp(commit.get("timestamp", 0) / 1000, tz=UTC),
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
        old = self._read_files(files_a.without(files_b), f"version {a} of {self.path}", DIFF_COLUMNS)
        new = self._read_files(files_b.without(files_a), f"version {b} of {self.path}", DIFF_COLUMNS)
        return compare_snapshots(old, new, a, b, self.classes(a), self.classes(b))

    def parquet_files(self, version: int | None = None) -> list[str]:
        """The Parquet files that make up ``version``, for plain Parquet readers."""
        return self._delta(self._check_version(version)).file_uris()

    # ----- writing

    def commit(self, changes: ChangeSet, *, parent: int, message: str) -> Commit:
        """Apply ``changes`` to version ``parent`` and write them as a new version.

        Reads and rewrites only the data files that hold a changed or removed
        sample; added samples go to new files. Raises :class:`ConflictError`
        if ``parent`` is no longer the head, and :class:`UserError` if the
        change set is invalid or changes nothing. Returns the :class:`Commit`: the new version's number, and what was written.
        """
        message = _check_message(message)
        with self._lock():
            self._check_parent(parent)
            reached("locked")
            head = self._delta(parent)  # loaded once: read from it and write through it
            files = self._files_of(head, parent)
            touched = files.holding(touched_ids(changes))
            old = self._read_files(touched, f"version {parent} of {self.path}")
            old_classes = self.classes(parent)
            labels_elsewhere = None
            if changes.removed_classes:  # whether a class is still in use depends on every row
                labels_elsewhere = self._read_files(files.without(touched), f"version {parent} of {self.path}", ["label"])["label"]
            next_id = self._next_id(parent, files)
            new, new_classes = apply_changes(old, old_classes, changes, next_id=next_id, labels_elsewhere=labels_elsewhere)
            next_id = max(next_id, int(new["sample_id"].max()) + 1 if len(new) else 1)
            return self._write(head, touched, old, old_classes, new, new_classes, parent=parent, message=message, kind="commit", next_id=next_id)

    def restore(self, version: int, *, parent: int, message: str | None = None) -> Commit:
        """Write a new version equal to ``version``. History is never rewritten.

        Writes no data: the new version is made of ``version``'s own files.
        """
        version = self._check_version(version)
        message = _check_message(message or f"restore version {version}")
        with self._lock():
            self._check_parent(parent)
            reached("locked")
            if version == parent:
                raise UserError(f"Version {version} is already the latest; pick an older version to restore.")
            head = self._delta(parent)
            files_now, files_then = self._files_of(head, parent), self.data_files(version)
            leaving, returning = files_now.without(files_then), files_then.without(files_now)
            return self._write(
                head,
                leaving,
                self._read_files(leaving, f"version {parent} of {self.path}", DIFF_COLUMNS),
                self.classes(parent),
                self._read_files(returning, f"version {version} of {self.path}", DIFF_COLUMNS),
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
    ) -> Commit:
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
                reached("data files written")
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
                reached("log entry written")
        except StorageError:
            # The log entry went in and only the checkpoint after it failed: the version is
            # committed (a checkpoint only speeds up reading; a later commit writes one).
            if self.head_version() != parent + 1:
                raise
        new_version = self.head_version()
        if new_version != parent + 1:  # only possible if something bypassed the lock
            raise self._conflict(parent)
        written = 0 if reuse is not None else len(added.files)
        return Commit(new_version, parent=parent, kind=kind, files_written=written, bytes_written=int(added.files["size"].sum()) if written else 0,
                      files_replaced=len(replaced.files), counts=diff.counts())

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
        reached("data file written")
        return {"path": name, "size": size, "rows": end - start, "first_id": int(ids[start]), "last_id": int(ids[end - 1])}

    spans = list(zip(starts.tolist(), ends.tolist()))
    if len(spans) < 8:  # starting threads costs more than a few small files take
        return DataFiles(pd.DataFrame([write(span) for span in spans]))
    with ThreadPoolExecutor(_WRITE_THREADS) as pool:  # Parquet encoding releases the GIL
        return DataFiles(pd.DataFrame(list(pool.map(write, spans))))


def _check_message(message: str | None) -> str:
    message = (message or "").strip()
    if not message:
        raise UserError("Every commit needs a message saying what changed and why.")
    return message


def _adds_or_removes_nothing(info: VersionInfo) -> bool:
    counts = info.summary.get("counts")
    return isinstance(counts, dict) and counts.get("added", 0) == 0 and counts.get("removed", 0) == 0
