"""The per-sample review table: a run's scores next to the labels of a version, filtered and
sorted by suspicion, and the change set a review produces. Pure functions on DataFrames."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.data.changes import ChangeSet
from labelloop.data.schema import UNDEFINED, trainable_mask
from labelloop.errors import UserError

REVIEW_COLUMNS = ("sample_id", "content_hash", "label", "weight", "predicted_label", "confidence", "given_confidence", "margin", "loss", "issue_score", "flagged")


def open_label_issues(frame: pd.DataFrame, kept: pd.DataFrame | None = None) -> np.ndarray:
    """The label issues still open among ``frame``'s samples (a run's scores beside a version's labels): a mask.

    This is what "label issue" means on every page, in the CLI and in the API, and what each of their
    counts counts: a sample the run's label-issue ranking flags (``flagged``), labelled and not excluded
    in the version, whose label still differs from the run's out-of-fold prediction (else it was fixed
    since the run), and that no reviewer kept with this very label (``kept``: sample_id, label; see
    :func:`load_kept`). A kept sample whose label changes since is open again.
    """
    flagged = frame["flagged"].fillna(False).astype(bool).to_numpy(copy=True) if "flagged" in frame else np.zeros(len(frame), dtype=bool)
    flagged &= trainable_mask(frame)
    flagged &= (frame["label"] != frame["predicted_label"]).to_numpy()
    if kept is not None and len(kept):
        pairs = pd.MultiIndex.from_frame(kept[["sample_id", "label"]])
        flagged &= ~pd.MultiIndex.from_arrays([frame["sample_id"], frame["label"]]).isin(pairs)
    return flagged


def review_frame(samples: pd.DataFrame, rows: pd.DataFrame, kept: pd.DataFrame | None = None) -> pd.DataFrame:
    """A run's per-sample scores joined to the current labels of a version (its rows win for label and weight).

    Samples the run never saw (added later, or not embedded) are left out; the
    run's own ``label`` column is dropped so an edit made after the run shows.
    ``flagged`` is True for the open label issues (:func:`open_label_issues`).
    """
    scores = samples.drop(columns=[c for c in ("label", "probabilities") if c in samples.columns])
    frame = rows[["sample_id", "content_hash", "label", "weight"]].merge(scores, on="sample_id", how="inner")
    frame["flagged"] = open_label_issues(frame, kept)
    return frame[list(REVIEW_COLUMNS)]


def ranked_label_issues(samples: pd.DataFrame, rows: pd.DataFrame, kept: pd.DataFrame | None = None) -> pd.DataFrame:
    """The samples a run trained on that version ``rows`` still has, most suspicious (highest issue_score) first.

    The run's scores (without its probabilities) with the version's ``label``, ``weight`` and ``path``
    (where ``rows`` has one), and ``label_issue``: :func:`open_label_issues`, instead of the run's raw
    ``flagged``, so a listing counts what every page counts.
    """
    trained = samples[samples["trained_on"]] if "trained_on" in samples else samples
    ranked = trained.drop(columns=[c for c in ("probabilities", "label", "weight", "path") if c in trained.columns])
    ranked = ranked.sort_values("issue_score", ascending=False, kind="stable")
    current = rows.set_index("sample_id")[[c for c in ("label", "weight", "path") if c in rows.columns]]
    ranked = ranked.join(current, on="sample_id", how="inner")  # samples removed since the run are gone
    ranked["label_issue"] = open_label_issues(ranked, kept)
    return ranked.drop(columns=["flagged"]).reset_index(drop=True)


def record_kept(folder: Path, sample_id: int, label: str, version: int) -> None:
    """Remember that a reviewer looked at ``sample_id`` labelled ``label`` on ``version`` and kept the label.

    Nothing in the label table changes, so this is no commit; it is written
    at once (one small file, renamed into place: a crash leaves it whole or
    absent, and two tabs never overwrite each other).
    """
    folder.mkdir(parents=True, exist_ok=True)
    record = pd.DataFrame({"sample_id": [int(sample_id)], "label": [str(label)], "version": [int(version)], "time": [time.time()]})
    name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"
    record.to_parquet(tmp, index=False)
    os.replace(tmp, folder / name)


def load_kept(folder: Path) -> pd.DataFrame:
    """Every kept decision (sample_id, label, version, time); empty if none."""
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return pd.DataFrame({"sample_id": pd.Series(dtype=np.int64), "label": pd.Series(dtype=object), "version": pd.Series(dtype=np.int64), "time": pd.Series(dtype=float)})
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


@dataclass(frozen=True)
class Decision:
    """A reviewer's decision on one sample, with what the reviewer was shown when they made it."""

    sample_id: int
    action: str  # "accept" (take the prediction) or "exclude"
    version: int  # the version on screen
    shown_label: str  # the label on screen
    predicted: str  # the prediction on screen (what "accept" sets)


def still_valid(decisions: Sequence[Decision], rows: pd.DataFrame) -> tuple[list[Decision], list[Decision]]:
    """(valid, stale): a decision stays valid on ``rows`` (another version) only if its sample still
    has the label the reviewer saw and is not excluded; otherwise it was about something else."""
    current = rows.set_index("sample_id")
    valid, stale = [], []
    for decision in decisions:
        ok = decision.sample_id in current.index and current.at[decision.sample_id, "label"] == decision.shown_label and current.at[decision.sample_id, "weight"] > 0
        (valid if ok else stale).append(decision)
    return valid, stale


def queue_changes(decisions: Sequence[Decision]) -> tuple[ChangeSet, str]:
    """The commit for the review queue's accepted and excluded samples, and its message."""
    accepted = [d for d in decisions if d.action == "accept"]
    excluded = [d for d in decisions if d.action == "exclude"]
    if not accepted and not excluded:
        raise UserError("Nothing to commit: no prediction accepted and no sample excluded.")
    updates = pd.DataFrame({
        "sample_id": np.array([d.sample_id for d in accepted + excluded], dtype=np.int64),
        "label": [d.predicted for d in accepted] + [None] * len(excluded),
        "weight": [np.nan] * len(accepted) + [0.0] * len(excluded),
    })
    return ChangeSet(updates=updates), f"review queue: {len(accepted)} accepted, {len(excluded)} excluded"


def filter_review(
    frame: pd.DataFrame,
    *,
    given: Sequence[str] = (),
    predicted: Sequence[str] = (),
    flagged_only: bool = False,
    undefined_only: bool = False,
    sample_ids: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Rows matching the filters, most suspicious first (``sample_ids``: only these, e.g. those a health check flags).

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
    if sample_ids is not None:
        keep &= frame["sample_id"].isin(sample_ids).to_numpy()
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


def queue_precision(changed: int, kept: int) -> float | None:
    """Share of decided flags where the label was changed (accepted or excluded): the flags' measured precision."""
    if changed + kept == 0:
        return None
    return changed / (changed + kept)
