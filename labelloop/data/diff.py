"""Diffs: what differs between two versions, per sample (old and new label, weight, split) and in words."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

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


DIFF_COLUMNS = ("sample_id", "path", "label", "weight", "split")


def compare_snapshots(old: pd.DataFrame, new: pd.DataFrame, a: int = 0, b: int = 0, old_classes: Sequence[str] = (), new_classes: Sequence[str] = ()) -> Diff:
    """The :class:`Diff` between two snapshots (DataFrames in :data:`SCHEMA`)."""
    keep = list(DIFF_COLUMNS)
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
