"""Did the fix help? Accuracy per version, measured like with like.

A version's own cross-validated accuracy is scored against that version's own
labels, so fixing a wrong label can lower it by itself (the model was right,
the label it was scored against was wrong). To compare versions fairly this
module keeps three things fixed:

- **the recipe**: only runs with identical settings (``config.json``) form one
  line; the quick heads the app retrains after every commit are the default
  line, and every other recipe gets a line of its own, never mixed in;
- **the reference labels**: every version's held-out predictions (out of fold,
  or the validation split) are scored against one labelling, by default the
  latest version's (the best labels the user has), or a pinned version's, or
  its locked test split, or (on the demo) the true labels;
- **the samples**: on the main line (the quick heads), the same samples in
  every point: those every version's run predicted held out *and* the
  reference labels (not undefined, not excluded). A sample labelled only in a
  later version would otherwise lift that version's point by itself, and the
  line would disagree with the paired first-to-last difference it is read
  with. Other recipes' lines score each run on what it predicted held out.
  Each point says how many samples that is and carries a 95% Wilson interval.

Pure functions over Series and DataFrames, plus :func:`accuracy_per_version`
that reads a data set's runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from labelloop.data.runs import RunInfo, held_out, list_runs
from labelloop.data.schema import trainable_mask
from labelloop.train.registry import run_recipe

LINE_COLUMNS = ("version", "recipe", "recipe_name", "automatic", "run", "reference", "n", "correct", "accuracy", "low", "high")


def reference_labels(rows: pd.DataFrame, *, test_split_only: bool = False) -> pd.Series:
    """sample_id -> label for the samples a reference labelling counts: labelled, not excluded
    (and in the ``test`` split, if ``test_split_only``)."""
    usable = trainable_mask(rows)
    if test_split_only:
        usable &= (rows["split"].astype(str) == "test").to_numpy()
    return pd.Series(rows["label"].to_numpy()[usable], index=rows["sample_id"].to_numpy()[usable], name="reference")


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z=1.96); (nan, nan) when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and is honest near 0 and 1.
    """
    if n <= 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def score_against(predicted: pd.Series, reference: pd.Series) -> tuple[int, int]:
    """(n, correct): predictions (sample_id -> label) scored on the samples the reference also labels."""
    common = predicted.index.intersection(reference.index)
    hits = predicted.loc[common].to_numpy() == reference.loc[common].to_numpy()
    return int(len(common)), int(hits.sum())


def paired_difference(before: pd.Series, after: pd.Series, reference: pd.Series, *, resamples: int = 2000, seed: int = 0) -> dict:
    """Accuracy of ``after`` minus ``before`` on the samples both predicted and the reference labels,
    with a 95% bootstrap interval over those samples (paired: one resample serves both).

    Returns {n, before, after, difference, low, high}; NaNs when no sample is shared.
    """
    common = before.index.intersection(after.index).intersection(reference.index)
    truth = reference.loc[common].to_numpy()
    a = (before.loc[common].to_numpy() == truth).astype(np.float64)
    b = (after.loc[common].to_numpy() == truth).astype(np.float64)
    n = len(common)
    if n == 0:
        return {"n": 0, "before": math.nan, "after": math.nan, "difference": math.nan, "low": math.nan, "high": math.nan}
    rng = np.random.default_rng(seed)
    delta = b - a
    draws = rng.integers(0, n, size=(resamples, n)) if n * resamples <= 50_000_000 else None
    if draws is not None:
        boot = delta[draws].mean(axis=1)
    else:  # large n: resample in chunks to bound memory
        boot = np.concatenate([delta[rng.integers(0, n, size=(100, n))].mean(axis=1) for _ in range(resamples // 100)])
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"n": n, "before": float(a.mean()), "after": float(b.mean()), "difference": float(delta.mean()), "low": float(low), "high": float(high)}


def held_out_predictions(run: RunInfo) -> pd.Series:
    """sample_id -> predicted label for the samples ``run`` predicted without training on them."""
    path = run.path / "samples.parquet"
    present = set(pq.read_schema(path).names)
    wanted = [c for c in ("sample_id", "predicted_label", "role", "trained_on", "fold") if c in present]
    samples = pd.read_parquet(path, columns=wanted)
    mask = held_out(samples)
    return pd.Series(samples["predicted_label"].to_numpy()[mask], index=samples["sample_id"].to_numpy()[mask], name=run.run_id)


def comparable_runs(runs: Sequence[RunInfo]) -> list[RunInfo]:
    """The newest run of each (version, recipe) that has per-sample predictions: same settings on the
    same version give the same numbers (seeded), so one run per pair is the whole story."""
    chosen: dict[tuple[int, str], RunInfo] = {}
    for run in runs:  # newest first, as list_runs returns them
        if not (run.path / "samples.parquet").exists():
            continue
        chosen.setdefault((run.version, run_recipe(run)[0]), run)
    return sorted(chosen.values(), key=lambda r: r.version)


def accuracy_line(runs: Sequence[RunInfo], references: Mapping[str, pd.Series], predictions: Mapping[str, pd.Series] | None = None) -> pd.DataFrame:
    """One row per (run, reference): held-out accuracy against that reference, its n and Wilson interval.

    ``runs`` should already be one per (version, recipe) (see :func:`comparable_runs`); ``predictions``
    (run id -> its held-out predictions) saves reading them again.
    """
    records = []
    for run in runs:
        predicted = predictions[run.run_id] if predictions is not None else held_out_predictions(run)
        identity, recipe_name = run_recipe(run)
        for reference_name, reference in references.items():
            n, correct = score_against(predicted, reference)
            low, high = wilson_interval(correct, n)
            records.append({
                "version": run.version, "recipe": identity, "recipe_name": recipe_name, "automatic": run.automatic, "run": run.run_id,
                "reference": reference_name, "n": n, "correct": correct, "accuracy": correct / n if n else math.nan, "low": low, "high": high,
            })
    return pd.DataFrame(records, columns=list(LINE_COLUMNS))


@dataclass(frozen=True)
class FairAccuracy:
    """What the Compare page and ``labelloop progress`` show."""

    line: pd.DataFrame  # LINE_COLUMNS, every recipe and reference
    reference: str  # the name of the main reference, e.g. "labels of v5"
    main_recipe: str | None  # the identity of the quick heads' recipe (the default line), if any ran
    versions: list[int]  # every version of the data set
    missing: list[int]  # versions with no point on the main recipe
    first_to_last: dict | None  # paired_difference between the first and the last version on the main recipe

    def main(self, reference: str | None = None) -> pd.DataFrame:
        """The main recipe's points against ``reference`` (default: the main reference)."""
        line = self.line
        return line[(line["recipe"] == self.main_recipe) & (line["reference"] == (reference or self.reference))].reset_index(drop=True)


def accuracy_per_version(
    workspace,
    name: str,
    *,
    reference_version: int | None = None,
    test_split_only: bool = False,
    main_recipe: str | None = None,
    truth: pd.DataFrame | None = None,
) -> FairAccuracy:
    """Held-out accuracy of every version's runs against one reference labelling.

    ``reference_version``: whose labels are the reference (default the latest).
    ``main_recipe``: the recipe identity of the default line (the quick heads);
    ``truth``: a frame with ``sample_id`` and ``true_label`` (the demo's), scored as a second reference.
    """
    from labelloop.data.workspace import open_table

    table = open_table(workspace, name)
    versions = [info.version for info in table.history()]
    reference_version = reference_version or versions[-1]
    rows = table.read(reference_version)
    reference = reference_labels(rows, test_split_only=test_split_only)
    reference_name = f"labels of v{reference_version}" + (" (test split)" if test_split_only else "")
    references = {reference_name: reference}
    if truth is not None:
        true = truth.set_index("sample_id")["true_label"]
        references["true labels"] = true.loc[true.index.intersection(reference.index)] if test_split_only else true
    runs = comparable_runs(list_runs(workspace, name))
    predictions = {run.run_id: held_out_predictions(run) for run in runs}
    main_runs = [run for run in runs if main_recipe is not None and run_recipe(run)[0] == main_recipe]
    # The main line is paired: every point on the samples every one of its runs predicted held out.
    shared = paired_samples([predictions[run.run_id] for run in main_runs])
    line = pd.concat([
        accuracy_line(main_runs, {key: labels.loc[labels.index.intersection(shared)] for key, labels in references.items()}, predictions),
        accuracy_line([run for run in runs if run not in main_runs], references, predictions),
    ], ignore_index=True).sort_values(["version", "recipe"], kind="stable").reset_index(drop=True)
    on_main = [run.version for run in main_runs]
    missing = [v for v in versions if v not in on_main]
    first_to_last = None
    if len(main_runs) >= 2:
        first, last = main_runs[0], main_runs[-1]
        first_to_last = {
            "from": int(first.version), "to": int(last.version),
            **paired_difference(predictions[first.run_id], predictions[last.run_id], reference.loc[reference.index.intersection(shared)]),
        }
    return FairAccuracy(line, reference_name, main_recipe, versions, missing, first_to_last)


def paired_samples(predictions: Sequence[pd.Series]) -> pd.Index:
    """The sample ids every one of ``predictions`` (sample_id -> label) has: the samples a paired line scores."""
    if not predictions:
        return pd.Index([])
    shared = predictions[0].index
    for predicted in predictions[1:]:
        shared = shared.intersection(predicted.index)
    return shared
