"""Did the fix help: held-out accuracy per version, scored against one reference labelling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import import_dataset
from labelloop.data.schema import UNDEFINED
from labelloop.embed import EmbedderConfig, embed_dataset
from labelloop.scores.fair_accuracy import (
    accuracy_per_version,
    held_out_predictions,
    paired_difference,
    reference_labels,
    score_against,
    wilson_interval,
)
from labelloop.train.heads import HeadsSettings
from labelloop.train.pipeline import QUICK_HEADS, train
from labelloop.train.registry import recipe_identity
from tests.conftest import write_fashion_folders


def test_wilson_interval_is_the_textbook_one_and_stays_inside_0_1():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and 0.69 < low < 0.73
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_scores_count_only_samples_the_reference_labels():
    rows = pd.DataFrame({"sample_id": [1, 2, 3, 4, 5], "label": ["a", "b", UNDEFINED, "a", "b"], "weight": [1.0, 1.0, 1.0, 0.0, 1.0], "split": ["train", "test", "test", "test", "none"]})
    reference = reference_labels(rows)
    assert reference.to_dict() == {1: "a", 2: "b", 5: "b"}  # undefined (3) and excluded (4) do not count
    assert reference_labels(rows, test_split_only=True).to_dict() == {2: "b"}
    predicted = pd.Series(["a", "a", "a", "b"], index=[1, 2, 3, 4])
    assert score_against(predicted, reference) == (2, 1)  # samples 1 and 2; 5 was not predicted
    d = paired_difference(predicted, pd.Series(["a", "b"], index=[1, 2]), reference)
    assert d["n"] == 2 and d["before"] == 0.5 and d["after"] == 1.0 and d["difference"] == 0.5


@pytest.mark.slow
def test_fixing_flipped_labels_raises_the_line_against_the_reference_and_the_truth(tmp_path: Path, workspace: Path):
    """Real Fashion-MNIST photos, 35% of the labels flipped, then half and then 90% of the flips fixed:
    the same recipe on every version, scored against the latest labels and against the truth, rises."""
    table, _ = import_dataset(write_fashion_folders(tmp_path / "fashion", 40), "f", workspace)
    truth_rows = table.read(1)
    truth = truth_rows[["sample_id", "label"]].rename(columns={"label": "true_label"})
    classes = table.classes(1)
    rng = np.random.default_rng(0)
    flipped = rng.choice(truth_rows["sample_id"].to_numpy(), size=int(0.35 * len(truth_rows)), replace=False)
    true_of = truth.set_index("sample_id")["true_label"]
    wrong = [rng.choice([c for c in classes if c != true_of[i]]) for i in flipped]
    table.commit(ChangeSet(updates=pd.DataFrame({"sample_id": flipped, "label": wrong})), parent=1, message="35% flipped")
    half = flipped[: len(flipped) // 2]
    table.commit(ChangeSet(updates=pd.DataFrame({"sample_id": half, "label": true_of[half].to_numpy()})), parent=2, message="fix half")
    most = flipped[: int(0.9 * len(flipped))]
    table.commit(ChangeSet(updates=pd.DataFrame({"sample_id": most, "label": true_of[most].to_numpy()})), parent=3, message="fix 90%")

    embed_dataset(workspace, "f", EmbedderConfig(kind="pixels", resolution=16))
    quick = HeadsSettings(heads=QUICK_HEADS, embedding="pixels-16px")
    for version in (2, 3, 4):
        train(workspace, "f", quick, version=version, trigger="after commit")
    train(workspace, "f", HeadsSettings(heads=("knn",), embedding="pixels-16px"), version=4)  # another recipe

    fair = accuracy_per_version(workspace, "f", main_recipe=recipe_identity(quick), truth=truth)
    assert fair.reference == "labels of v4" and fair.missing == [1]
    against_reference = fair.main()
    against_truth = fair.main("true labels")
    assert against_reference["version"].tolist() == [2, 3, 4] == against_truth["version"].tolist()
    for line in (against_reference, against_truth):
        accuracy = line["accuracy"].to_numpy()
        assert accuracy[0] < accuracy[1] < accuracy[2], line
        assert (line["low"] <= line["accuracy"]).all() and (line["accuracy"] <= line["high"]).all()
    assert (against_reference["n"] == len(truth_rows)).all()  # every sample labelled in both
    assert fair.first_to_last["from"] == 2 and fair.first_to_last["to"] == 4 and fair.first_to_last["low"] > 0
    # The line says what the sentence under it says: the same samples in every point, and the paired
    # difference is exactly the last point minus the first.
    d = fair.first_to_last
    assert d["n"] == against_reference["n"].iloc[0] == against_reference["n"].iloc[-1]
    assert d["before"] == pytest.approx(against_reference["accuracy"].iloc[0]) and d["after"] == pytest.approx(against_reference["accuracy"].iloc[-1])

    # Each version's own cross-validated accuracy would not compare like with like; the other recipe is its own line.
    others = fair.line[fair.line["recipe"] != fair.main_recipe]
    assert others["version"].tolist() == [4, 4] and set(others["recipe_name"]) == {"heads k-NN"}

    # A pinned reference: the labels of v2 (the flipped ones) make every version look worse, equally measured.
    pinned = accuracy_per_version(workspace, "f", reference_version=2, main_recipe=fair.main_recipe)
    assert pinned.reference == "labels of v2" and (pinned.main()["accuracy"].to_numpy() < against_reference["accuracy"].to_numpy()).all()


def test_samples_labelled_later_do_not_lift_the_later_points(tmp_path: Path, workspace: Path):
    """Issue 27 item 4: a labelling sprint adds labelled samples to the later versions; the line scores every
    version on the samples every one of its runs predicted held out, so a point moves only when predictions do."""
    table, _ = import_dataset(write_fashion_folders(tmp_path / "fashion", 24), "f", workspace)
    rows = table.read(1)
    unlabelled = rows["sample_id"].to_numpy()[::3]  # a third of the set starts unlabelled
    table.commit(ChangeSet(updates=pd.DataFrame({"sample_id": unlabelled, "label": UNDEFINED})), parent=1, message="a third unlabelled")
    labels = rows.set_index("sample_id")["label"]
    table.commit(ChangeSet(updates=pd.DataFrame({"sample_id": unlabelled, "label": labels.loc[unlabelled].to_numpy()})), parent=2, message="labelled them")
    embed_dataset(workspace, "f", EmbedderConfig(kind="pixels", resolution=16))
    quick = HeadsSettings(heads=QUICK_HEADS, embedding="pixels-16px")
    runs = {version: train(workspace, "f", quick, version=version, trigger="after commit") for version in (2, 3)}

    fair = accuracy_per_version(workspace, "f", main_recipe=recipe_identity(quick))
    line = fair.main()
    assert line["version"].tolist() == [2, 3] and line["n"].nunique() == 1  # the same samples in both points
    shared = held_out_predictions(runs[2]).index.intersection(held_out_predictions(runs[3]).index)
    assert line["n"].iloc[0] == len(shared.intersection(reference_labels(table.read(3)).index)) < len(held_out_predictions(runs[3]))
    assert fair.first_to_last["n"] == line["n"].iloc[0]
    assert fair.first_to_last["difference"] == pytest.approx(line["accuracy"].iloc[1] - line["accuracy"].iloc[0])
