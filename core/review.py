"""The per-sample review table: a run's scores next to the labels of a version, filtered and
sorted by suspicion, and the change set a review produces. Pure functions on DataFrames."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.errors import UserError
from core.tables import UNDEFINED, ChangeSet

REVIEW_COLUMNS = ("sample_id", "content_hash", "label", "weight", "predicted_label", "confidence", "given_confidence", "margin", "loss", "issue_score", "flagged")


def review_frame(samples: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """A run's per-sample scores joined to the current labels of a version (its rows win for label and weight).

    Samples the run never saw (added later, or not embedded) are left out; the
    run's own ``label`` column is dropped so an edit made after the run shows.
    """
    scores = samples.drop(columns=[c for c in ("label", "probabilities") if c in samples.columns])
    frame = rows[["sample_id", "content_hash", "label", "weight"]].merge(scores, on="sample_id", how="inner")
    if "flagged" not in frame:
        frame["flagged"] = False
    frame["flagged"] = frame["flagged"].fillna(False).astype(bool)
    return frame[list(REVIEW_COLUMNS)]


def filter_review(
    frame: pd.DataFrame,
    *,
    given: Sequence[str] = (),
    predicted: Sequence[str] = (),
    flagged_only: bool = False,
    undefined_only: bool = False,
) -> pd.DataFrame:
    """Rows matching the filters, most suspicious first.

    Labelled samples sort by label-issue score (highest first); undefined ones
    by confidence (lowest first: labelling the least certain teaches a model most).
    """
    keep = np.ones(len(frame), dtype=bool)
    if given:
        keep &= frame["label"].isin(given).to_numpy()
    if predicted:
        keep &= frame["predicted_label"].isin(predicted).to_numpy()
    if flagged_only:
        keep &= frame["flagged"].to_numpy()
    if undefined_only:
        keep &= (frame["label"] == UNDEFINED).to_numpy()
    chosen = frame[keep]
    undefined = chosen["label"] == UNDEFINED
    labelled = chosen[~undefined].sort_values(["issue_score", "loss"], ascending=False, na_position="last", kind="stable")
    unlabelled = chosen[undefined].sort_values("confidence", ascending=True, kind="stable")
    return pd.concat([labelled, unlabelled]) if not undefined_only else unlabelled


def review_changes(original: pd.DataFrame, edited_labels: pd.Series, accept: pd.Series, classes: Sequence[str]) -> tuple[ChangeSet, str]:
    """The commit for a reviewed page: labels typed in place, and predictions accepted where ticked.

    ``original`` has sample_id, label and predicted_label (indexed like the
    two Series). An accepted prediction wins over a typed label. Labels must be
    classes of the version (or undefined): review never invents a class.
    """
    new_labels = edited_labels.astype(object).copy()
    new_labels[accept.astype(bool)] = original.loc[accept.astype(bool), "predicted_label"]
    changed = new_labels != original["label"]
    unknown = sorted(set(new_labels[changed]) - set(classes) - {UNDEFINED})
    if unknown:
        raise UserError(f"{', '.join(repr(u) for u in unknown)} is not a class of this version. Add the class first (Map page: new class), then review.")
    if not changed.any():
        raise UserError("Nothing to commit: no label was changed and no prediction accepted.")
    updates = pd.DataFrame({"sample_id": original.loc[changed, "sample_id"].to_numpy(), "label": new_labels[changed].to_numpy()})
    n_accepted = int((accept.astype(bool) & changed).sum())
    n_edited = int(changed.sum()) - n_accepted
    parts = [f"{n_accepted} predictions accepted"] if n_accepted else []
    parts += [f"{n_edited} labels edited"] if n_edited else []
    return ChangeSet(updates=updates), "review: " + ", ".join(parts)


def queue_precision(decisions: dict[int, str]) -> float | None:
    """Share of decided flags where the label was changed (accepted or excluded): the flags' measured precision."""
    if not decisions:
        return None
    return sum(d in ("accept", "exclude") for d in decisions.values()) / len(decisions)
