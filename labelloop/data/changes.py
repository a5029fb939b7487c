"""Change sets: what one commit changes (labels, weights, splits, added and removed samples, classes), and applying them.

:func:`apply_changes` is pure: rows and a class list in, new rows and class list out, or a
:class:`~labelloop.errors.UserError` naming the first bad input. :mod:`labelloop.data.tables` writes the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from labelloop.data.schema import (
    COLUMNS,
    EDITABLE_COLUMNS,
    SPLITS,
    UNDEFINED,
    check_class_name,
    fill_defaults,
    validate_rows,
)
from labelloop.errors import UserError


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


def touched_ids(changes: ChangeSet) -> np.ndarray:
    """The sample ids a change set edits or removes (ids that are not whole numbers are left to validation)."""
    parts = [np.asarray(list(changes.removed_ids or ()), dtype=np.int64)]
    if changes.updates is not None and "sample_id" in changes.updates.columns:
        ids = pd.to_numeric(changes.updates["sample_id"], errors="coerce").dropna()
        parts.append(ids[ids % 1 == 0].to_numpy(dtype=np.int64))
    return np.unique(np.concatenate(parts))


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
        added = fill_defaults(changes.added.drop(columns=["sample_id"], errors="ignore").copy())
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
    validate_rows(new, classes)
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
