"""What the map shows and what a selection on it does: colour codes, palettes, change sets.

Pure functions over arrays, shared by the Map page and the tests; no drawing here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import UserError
from core.tables import UNDEFINED, ChangeSet

# 20 distinguishable colours on a dark background (hand-picked; class i gets colour i mod 20).
CLASS_COLOURS = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
    "#1f77b4", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
)
UNDEFINED_COLOUR = "#5c5f66"
EXCLUDED_COLOUR = "#2b2d33"
# A perceptually ordered ramp from low (dark blue) to high (yellow), ten steps.
RAMP = ("#30123b", "#4145ab", "#4675ed", "#39a2fc", "#1bcfd4", "#24eca6", "#61fc6c", "#a4fc3b", "#d1e834", "#f3c63a")

COLOUR_BY = ("given label", "predicted label", "label-issue score", "confidence", "split")


@dataclass(frozen=True)
class Colouring:
    codes: np.ndarray  # int16, one per point: an index into palette
    palette: list[dict]  # {"name", "color", "count"}
    categorical: bool


def categorical_colours(values: Sequence[str], order: Sequence[str], excluded: np.ndarray | None = None) -> Colouring:
    """One colour per class in ``order`` (then any other value, sorted); undefined grey, excluded darker."""
    values = np.asarray(values, dtype=object)
    names = [c for c in order if c != UNDEFINED] + sorted(set(values) - set(order) - {UNDEFINED})
    names += [UNDEFINED]
    if excluded is not None:
        names.append("excluded")
    code_of = {name: i for i, name in enumerate(names)}
    codes = np.array([code_of[v] for v in values], dtype=np.int16)
    if excluded is not None:
        codes[np.asarray(excluded, dtype=bool)] = code_of["excluded"]
    counts = np.bincount(codes, minlength=len(names))
    palette = []
    for i, name in enumerate(names):
        colour = UNDEFINED_COLOUR if name == UNDEFINED else EXCLUDED_COLOUR if excluded is not None and name == "excluded" else CLASS_COLOURS[i % len(CLASS_COLOURS)]
        palette.append({"name": name, "color": colour, "count": int(counts[i])})
    return Colouring(codes, palette, True)


def continuous_colours(values: np.ndarray, low: float = 0.0, high: float = 1.0) -> Colouring:
    """Ten equal-width bins between ``low`` and ``high``; NaN (no value) in grey."""
    values = np.asarray(values, dtype=np.float64)
    missing = ~np.isfinite(values)
    scaled = np.where(missing, 0.0, (values - low) / max(high - low, 1e-12) * len(RAMP))
    bins = np.clip(scaled.astype(np.int64), 0, len(RAMP) - 1)
    codes = np.where(missing, len(RAMP), bins).astype(np.int16)
    counts = np.bincount(codes, minlength=len(RAMP) + 1)
    step = (high - low) / len(RAMP)
    palette = [{"name": f"{low + i * step:.2f}–{low + (i + 1) * step:.2f}", "color": c, "count": int(counts[i])} for i, c in enumerate(RAMP)]
    palette.append({"name": "no value", "color": UNDEFINED_COLOUR, "count": int(counts[-1])})
    return Colouring(codes, palette, False)


def label_mix(labels: Sequence[str]) -> pd.DataFrame:
    """label, count, share of a selection, most common first."""
    counts = pd.Series(labels, dtype=object).value_counts()
    return pd.DataFrame({"label": counts.index, "count": counts.to_numpy(), "share": (counts / max(counts.sum(), 1)).round(3).to_numpy()})


def resolve_label(typed: str, classes: Sequence[str], *, create: bool) -> tuple[str, bool]:
    """(label, is new) for what the user typed: an exact class name, or a new class only when asked.

    Never picks a different class that merely looks similar ("Shirt" stays
    "Shirt" even if "T-shirt/top" exists); a near miss gets a clear error
    naming the classes that differ only in case or spaces.
    """
    text = typed.strip()
    if not text:
        raise UserError("Type a label, or pick one from the list.")
    if text in classes or text == UNDEFINED:
        return text, False
    if create:
        return text, True
    near = [c for c in classes if c.casefold().replace(" ", "") == text.casefold().replace(" ", "")]
    hint = f" Did you mean {', '.join(repr(c) for c in near)}?" if near else ""
    raise UserError(f"'{text}' is not a class of this version.{hint} Tick 'new class' to create it.")


def selection_changes(sample_ids: Sequence[int], action: str, label: str | None = None, *, new_class: bool = False) -> ChangeSet:
    """The commit for an action on a selection: ``relabel`` (to ``label``), ``exclude`` or ``include``."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    if len(ids) == 0:
        raise UserError("Nothing is selected: draw a lasso around some points first.")
    if action == "relabel":
        return ChangeSet.relabel(ids, label, new_class=new_class)
    if action == "exclude":
        return ChangeSet.set_weight(ids, 0.0)
    if action == "include":
        return ChangeSet.set_weight(ids, 1.0)
    raise ValueError(action)


def default_message(count: int, action: str, label: str | None = None, source: str = "lasso") -> str:
    """The prefilled commit message, e.g. "lasso: 412 samples -> sneaker"."""
    noun = "sample" if count == 1 else "samples"
    if action == "relabel":
        return f"{source}: {count:,} {noun} -> {label}"
    return f"{source}: {action} {count:,} {noun}"
