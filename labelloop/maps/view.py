"""What the map shows and what a selection on it does: colour codes, palettes, change sets.

Pure functions over arrays, shared by the Map page and the tests; no drawing here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from labelloop.data.changes import ChangeSet
from labelloop.data.lookup import as_strings, positions_in
from labelloop.data.schema import UNDEFINED
from labelloop.errors import UserError

# Class colours a person can tell apart on the map's dark background (#0e1117), also with a colour
# vision deficiency. No 20 colours stay apart for every reader, so there are two tiers. The first 10
# are 7 of Okabe & Ito's colour-blind-safe set ("Color Universal Design", 2002; its black is left out:
# invisible on the background) and 3 of Paul Tol's qualitative colours ("Colour Schemes",
# SRON/EPS/TN/09-002, 2021), picked so they stay at least CIEDE2000 10 apart under simulated
# protanopia, deuteranopia and tritanopia; the other 10 are more of Tol's, so that all 20 are at least
# 10 apart in normal vision, and none is darker than 3:1 contrast against the background
# (tests/test_mapping_review.py). A data set of up to 10 classes gets only first-tier colours.
# Beyond 20 classes colours repeat: the legend's names, Hide and the hover are what tell classes apart.
CLASS_COLOURS = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",  # Okabe-Ito
    "#99DDFF", "#AA3377", "#CCDDAA", "#CC3311", "#999933", "#997700", "#EE8866",  # Tol light, bright, pale, vibrant, muted, medium, light
    "#BB5566", "#FFCCCC", "#BBCCEE", "#117733", "#EE6677", "#EE99AA",  # Tol high-contrast, pale, pale, muted, bright, medium
)
FIRST_TIER = 10  # colours told apart under every simulated dichromacy
# Unlabelled samples are what a user labels next: a light neutral, the brightest thing on the map, at
# least CIEDE2000 15 from every class colour (8 under dichromacy). Excluded samples: a mid grey, as far
# from every class colour (22) and from the undefined white (30), at 5:1 contrast to the background.
UNDEFINED_COLOUR = "#f4f4f4"
EXCLUDED_COLOUR = "#7f7f7f"
# What carries no information (no score, no issue, no prediction): a dim grey that recedes.
NO_VALUE_COLOUR = "#5f6268"
# A perceptually ordered ramp from low (dark blue) to high (yellow), ten steps.
RAMP = ("#30123b", "#4145ab", "#4675ed", "#39a2fc", "#1bcfd4", "#24eca6", "#61fc6c", "#a4fc3b", "#d1e834", "#f3c63a")

COLOUR_BY = ("given label", "predicted label", "label-issue score", "confidence", "split", "health issue", "outlier score")


@dataclass(frozen=True)
class Colouring:
    codes: np.ndarray  # int16, one per point: an index into palette
    palette: list[dict]  # {"name", "color", "count"}
    categorical: bool


def _name_slot(name: str) -> int:
    # A stable hash (Python's hash() of a str changes with every process).
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big")


def class_colours(names: Sequence[str]) -> dict[str, str]:
    """A colour for each class name, the same for a name in every data set and version wherever it can be.

    A name hashes to one of the first-tier colours; when a name listed before it already holds that
    colour, it takes the next free one (the first tier, then the second, then colours repeat). Give
    ``names`` in the data set's class order, where a new class is appended: adding a class then never
    changes an existing class's colour. So "bag" is the same colour in two data sets unless a class
    listed before it there hashes to the same colour.
    """
    taken: dict[int, int] = {}  # palette index -> how many names hold it
    colours: dict[str, str] = {}
    for name in dict.fromkeys(names):
        preferred = _name_slot(name) % FIRST_TIER
        candidates = [(preferred + k) % FIRST_TIER for k in range(FIRST_TIER)]
        candidates += [FIRST_TIER + (preferred + k) % (len(CLASS_COLOURS) - FIRST_TIER) for k in range(len(CLASS_COLOURS) - FIRST_TIER)]
        # Every colour held: the least used, in the same preference order (colours repeat evenly).
        index = min(candidates, key=lambda i: (taken.get(i, 0), candidates.index(i)))
        taken[index] = taken.get(index, 0) + 1
        colours[name] = CLASS_COLOURS[index]
    return colours


def categorical_colours(values: Sequence[str], order: Sequence[str], excluded: np.ndarray | None = None, grey: str = UNDEFINED,
                        grey_colour: str = UNDEFINED_COLOUR) -> Colouring:
    """One colour per class in ``order`` (then any other value, sorted; colours by :func:`class_colours`); ``grey``
    (undefined) in ``grey_colour`` and last, then excluded (where ``excluded`` is given) in :data:`EXCLUDED_COLOUR`."""
    values = as_strings(values)
    names = [c for c in order if c != grey] + sorted(set(pc.unique(values).to_pylist()) - set(order) - {grey})
    colours = class_colours(names)
    names += [grey]
    colours[grey] = grey_colour
    if excluded is not None:
        names.append("excluded")
    codes = positions_in(values, names).astype(np.int16)
    if excluded is not None:
        codes[np.asarray(excluded, dtype=bool)] = len(names) - 1
    counts = np.bincount(codes, minlength=len(names))
    palette = []
    for i, name in enumerate(names):
        colour = EXCLUDED_COLOUR if excluded is not None and i == len(names) - 1 else colours[name]
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
    palette.append({"name": "no value", "color": NO_VALUE_COLOUR, "count": int(counts[-1])})
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


# An edit of more samples than this names its count on its button and asks once before it commits:
# one stray click on a big lasso should not relabel hundreds of samples.
CONFIRM_OVER = 100


def default_message(count: int, action: str, label: str | None = None, source: str = "lasso") -> str:
    """The prefilled commit message, e.g. "lasso: 412 samples -> sneaker"."""
    noun = "sample" if count == 1 else "samples"
    if action == "relabel":
        return f"{source}: {count:,} {noun} -> {label}"
    return f"{source}: {action} {count:,} {noun}"


# "The model confidently thinks this label is right": it predicts the sample's current label with at
# least this probability. Used to warn before an edit overwrites labels a model trusts.
CONFIDENT = 0.8


def thumbnail_sample(labels: Sequence[str], *, limit: int = 40, seed: int = 0) -> np.ndarray:
    """Row positions into ``labels`` of at most ``limit`` samples to show for a selection, so that every label in it is seen.

    Labels are visited in this order: ``undefined`` first, then by count, the
    rarest first (ties by name). Each round gives every label that still has
    unshown samples one more thumbnail, in that order, until ``limit`` are
    picked or none are left. So with at most ``limit`` labels each gets at
    least one, a label gets no more than an equal share unless the others run
    out, and the majority of a lasso never crowds out the few samples that
    differ (a 598-point lasso of 364 bags, 182 undefined and a few of five
    other classes shows 5 or 6 of each, not 40 bags). With more than ``limit``
    labels, the first ``limit`` in visiting order get one each.

    Which samples of a label are shown is random (``seed``), not the first
    rows, which follow the table's order. The result is grouped by label in
    visiting order, ascending positions within a label; the same inputs give
    the same result.
    """
    values = pd.Series(np.asarray(labels, dtype=object))
    if limit <= 0 or values.empty:
        return np.zeros(0, dtype=np.int64)
    counts = values.value_counts()
    order = sorted(counts.index, key=lambda label: (label != UNDEFINED, counts[label], str(label)))
    sizes = np.array([counts[label] for label in order], dtype=np.int64)
    quotas = np.zeros(len(order), dtype=np.int64)
    remaining = int(min(limit, sizes.sum()))
    while remaining:
        open_ = np.flatnonzero(quotas < sizes)[:remaining]  # one more each, in visiting order
        quotas[open_] += 1
        remaining -= len(open_)
    rng = np.random.default_rng(seed)
    members = values.groupby(values, sort=False).indices  # label -> positions, ascending
    picked = [np.sort(rng.choice(members[label], size=quota, replace=False)) for label, quota in zip(order, quotas) if quota]
    return np.concatenate(picked).astype(np.int64)


def edit_targets(
    sample_ids: Sequence[int],
    labels: Sequence[str],
    weights: Sequence[float],
    *,
    action: str,
    label: str | None = None,
    include: Sequence[str] | None = None,
    leave_out: Sequence[int] = (),
) -> np.ndarray:
    """The sample ids of a selection that an edit would change, in the selection's order.

    ``sample_ids``, ``labels`` and ``weights`` describe the selected samples
    (one entry each, the version's current values). A sample is kept when
    its label is in ``include`` (None: every label), its id is not in
    ``leave_out``, and the action changes it: ``relabel`` only samples whose
    label differs from ``label``; ``exclude`` only samples with weight > 0;
    ``include`` only samples with weight <= 0 (already excluded). So the
    count is what the commit changes, and a label left out of the edit is
    never touched.
    """
    ids = np.asarray(sample_ids, dtype=np.int64)
    values = np.asarray(labels, dtype=object)
    weight = np.asarray(weights, dtype=np.float64)
    keep = np.ones(len(ids), dtype=bool) if include is None else np.isin(values, np.asarray(list(include), dtype=object))
    keep &= ~np.isin(ids, np.asarray(list(leave_out), dtype=np.int64))
    if action == "relabel":
        keep &= values != label
    elif action == "exclude":
        keep &= weight > 0
    elif action == "include":
        keep &= weight <= 0
    else:
        raise ValueError(action)
    return ids[keep]


def confidently_right(
    labels: Sequence[str], predicted: Sequence[str | None], confidence: Sequence[float], new_label: str, *, threshold: float = CONFIDENT
) -> np.ndarray:
    """Mask of the samples a relabel to ``new_label`` would change although the model confidently agrees with their label.

    True where the current label differs from ``new_label``, the model's
    ``predicted`` label equals the current label, and its ``confidence`` is
    at least ``threshold``. A sample with no prediction (None/NaN, e.g. not
    scored by the run) is never flagged; neither is an undefined one (a model
    never predicts ``undefined``).
    """
    current = np.asarray(labels, dtype=object)
    guess = np.asarray(predicted, dtype=object)
    sure = np.nan_to_num(np.asarray(confidence, dtype=np.float64), nan=-1.0) >= threshold
    return (current != new_label) & (current == guess) & (current != UNDEFINED) & sure


def confidence_warning(predicted: Sequence[str], *, threshold: float = CONFIDENT) -> str:
    """The warning for the samples ``confidently_right`` flagged, given their predicted labels.

    E.g. "11 of these the model confidently thinks are already right
    (predicted shirt ×9, trouser ×2 with confidence ≥ 0.8)"; most common first.
    """
    counts = pd.Series(np.asarray(predicted, dtype=object)).value_counts()
    which = ", ".join(f"{label} ×{count:,}" for label, count in counts.items())
    total = int(counts.sum())
    return f"{total:,} of these the model confidently thinks {'is' if total == 1 else 'are'} already right (predicted {which} with confidence ≥ {threshold:g})"
