"""Logic behind the Map, Review and Compare pages: colours, exact label choice, review commits, reverts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import UserError
from core.ingest import import_dataset
from core.mapping import RAMP, categorical_colours, continuous_colours, default_message, label_mix, resolve_label, selection_changes
from core.review import Decision, filter_review, load_kept, queue_changes, queue_precision, record_kept, review_changes, review_frame, still_valid
from core.runs import list_runs
from core.tables import UNDEFINED, ChangeSet, revert_changes
from core.train.config import TrainConfig
from core.train.pipeline import quick_heads_config, quick_heads_recipe, train_heads
from tests.conftest import write_fashion_folders

CLASSES = ["T-shirt/top", "Trouser", "Shirt"]


def test_categorical_colours_follow_the_class_list_with_undefined_and_excluded_last():
    labels = np.array(["Shirt", "Trouser", UNDEFINED, "Shirt", "new-thing"], dtype=object)
    excluded = np.array([False, False, False, True, False])
    colouring = categorical_colours(labels, CLASSES, excluded)
    names = [p["name"] for p in colouring.palette]
    assert names == ["T-shirt/top", "Trouser", "Shirt", "new-thing", UNDEFINED, "excluded"]
    assert colouring.codes.tolist() == [2, 1, 4, 5, 3]
    assert [p["count"] for p in colouring.palette] == [0, 1, 1, 1, 1, 1]
    assert colouring.palette[4]["color"] != colouring.palette[0]["color"]


def test_continuous_colours_bin_values_and_grey_out_missing_ones():
    colouring = continuous_colours(np.array([0.0, 0.05, 0.5, 0.99, 1.0, np.nan]))
    assert colouring.codes.tolist() == [0, 0, 5, 9, 9, len(RAMP)]
    assert colouring.palette[-1]["name"] == "no value" and colouring.palette[-1]["count"] == 1


def test_a_typed_label_is_never_silently_swapped_for_another():
    assert resolve_label("Shirt", CLASSES, create=False) == ("Shirt", False)
    assert resolve_label("  Shirt ", CLASSES, create=False) == ("Shirt", False)
    with pytest.raises(UserError, match="Did you mean 'Shirt'"):
        resolve_label("shirt", CLASSES, create=False)  # case differs: ask, do not guess
    with pytest.raises(UserError, match="Tick 'new class'"):
        resolve_label("Sweater", CLASSES, create=False)
    assert resolve_label("Sweater", CLASSES, create=True) == ("Sweater", True)
    with pytest.raises(UserError, match="Type a label"):
        resolve_label("   ", CLASSES, create=True)


def test_selection_actions_become_change_sets_with_a_prefilled_message():
    relabel = selection_changes([3, 1], "relabel", "Sweater", new_class=True)
    assert relabel.updates["label"].tolist() == ["Sweater", "Sweater"] and list(relabel.new_classes) == ["Sweater"]
    assert selection_changes([3], "exclude").updates["weight"].tolist() == [0.0]
    assert selection_changes([3], "include").updates["weight"].tolist() == [1.0]
    with pytest.raises(UserError, match="Nothing is selected"):
        selection_changes([], "exclude")
    assert default_message(412, "relabel", "sneaker") == "lasso: 412 samples -> sneaker"
    assert default_message(1, "exclude") == "lasso: exclude 1 sample"
    assert label_mix(["a", "b", "a"]).to_dict("list") == {"label": ["a", "b"], "count": [2, 1], "share": [0.667, 0.333]}


def scored_frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = pd.DataFrame({"sample_id": [1, 2, 3, 4, 5], "content_hash": list("abcde"), "label": ["Shirt", "Trouser", UNDEFINED, UNDEFINED, "Shirt"], "weight": 1.0})
    samples = pd.DataFrame({
        "sample_id": [1, 2, 3, 4, 5, 6], "label": ["old"] * 6, "predicted_label": ["Trouser", "Trouser", "Shirt", "Trouser", "Shirt", "Shirt"],
        "confidence": [0.9, 0.8, 0.6, 0.4, 0.7, 0.5], "given_confidence": 0.5, "margin": 0.1, "loss": [2.0, 0.1, np.nan, np.nan, 0.5, 1.0],
        "issue_score": [0.9, 0.1, np.nan, np.nan, 0.5, 0.3], "flagged": [True, False, False, False, False, True], "probabilities": [np.zeros(2)] * 6,
    })
    return samples, rows


def test_the_review_table_uses_the_versions_labels_and_sorts_by_suspicion():
    samples, rows = scored_frame()
    frame = review_frame(samples, rows)
    assert frame["sample_id"].tolist() == [1, 2, 3, 4, 5]  # sample 6 is not in this version
    assert frame.set_index("sample_id").loc[1, "label"] == "Shirt"  # the version's label, not the run's
    assert filter_review(frame)["sample_id"].tolist() == [1, 5, 2, 4, 3]  # issue score, then undefined by confidence
    assert filter_review(frame, undefined_only=True)["sample_id"].tolist() == [4, 3]  # active labelling: least sure first
    assert filter_review(frame, flagged_only=True)["sample_id"].tolist() == [1]
    assert filter_review(frame, given=["Shirt"], predicted=["Shirt"])["sample_id"].tolist() == [5]


def test_a_reviewed_page_commits_accepted_predictions_and_edits_only():
    samples, rows = scored_frame()
    page = filter_review(review_frame(samples, rows)).reset_index(drop=True)  # 1, 5, 2, 4, 3
    edited = page["label"].copy()
    edited[1] = "Trouser"  # sample 5 fixed by hand
    accept = pd.Series([True, False, False, True, False])  # samples 1 and 4 take the prediction
    changes, message = review_changes(page, edited, accept, CLASSES)
    assert dict(zip(changes.updates["sample_id"], changes.updates["label"])) == {1: "Trouser", 5: "Trouser", 4: "Trouser"}
    assert message == "review: 2 predictions accepted, 1 labels edited"
    with pytest.raises(UserError, match="Nothing to commit"):
        review_changes(page, page["label"], pd.Series([False] * 5), CLASSES)
    edited[1] = "Sweater"
    with pytest.raises(UserError, match="not a class of this version"):
        review_changes(page, edited, pd.Series([False] * 5), CLASSES)
    assert queue_precision(0, 0) is None and queue_precision(2, 2) == 0.5


def test_open_flags_are_one_rule_for_the_table_the_queue_and_every_count(tmp_path: Path):
    samples, rows = scored_frame()
    samples["flagged"] = True  # the run flagged everything
    rows.loc[rows["sample_id"] == 2, "weight"] = 0.0  # excluded since
    frame = review_frame(samples, rows)
    # 2: excluded; 3, 4: undefined; 5: its label already equals the prediction (fixed since the run).
    assert frame.loc[frame["flagged"], "sample_id"].tolist() == [1]
    assert not load_kept(tmp_path / "kept").shape[0]
    record_kept(tmp_path / "kept", 1, "Shirt", version=3)
    kept = load_kept(tmp_path / "kept")
    assert kept[["sample_id", "label", "version"]].to_dict("records") == [{"sample_id": 1, "label": "Shirt", "version": 3}]
    assert not review_frame(samples, rows, kept)["flagged"].any()  # a kept sample does not come back
    rows.loc[rows["sample_id"] == 1, "label"] = "Coat"  # ... unless its label changes: a new question
    assert review_frame(samples, rows, kept).loc[lambda f: f["flagged"], "sample_id"].tolist() == [1]


def test_queue_decisions_apply_only_to_the_label_the_reviewer_saw():
    _, rows = scored_frame()
    accept = Decision(1, "accept", version=2, shown_label="Shirt", predicted="Trouser")
    exclude = Decision(5, "exclude", version=2, shown_label="Shirt", predicted="Shirt")
    valid, stale = still_valid([accept, exclude], rows)
    assert valid == [accept, exclude] and stale == []
    changes, message = queue_changes(valid)
    assert changes.updates["sample_id"].tolist() == [1, 5] and changes.updates["label"].iloc[0] == "Trouser" and pd.isna(changes.updates["label"].iloc[1])
    assert changes.updates["weight"].fillna(-1).tolist() == [-1, 0.0] and message == "review queue: 1 accepted, 1 excluded"
    moved = rows.assign(label=lambda f: f["label"].where(f["sample_id"] != 1, "Trouser"))  # another tab accepted #1 meanwhile
    valid, stale = still_valid([accept, exclude], moved)
    assert valid == [exclude] and stale == [accept]
    with pytest.raises(UserError, match="Nothing to commit"):
        queue_changes([])


def test_reverting_a_label_flow_cell_and_the_quick_heads_recipe(tmp_path: Path, workspace: Path):
    from core.embed import EmbedderConfig, embed_dataset

    table, _ = import_dataset(write_fashion_folders(tmp_path / "f", 10), "f", workspace)
    rows = table.read(1)
    bags = rows.loc[rows["label"] == "bag", "sample_id"].to_numpy()
    table.commit(ChangeSet.relabel(bags[:4], "coat"), parent=1, message="oops")
    diff = table.diff(1, 2)
    moved = diff.samples[diff.samples["relabelled"]]
    revert, left_alone = revert_changes(moved, table.read(2))
    assert left_alone == 0
    table.commit(revert, parent=2, message="revert")
    assert table.diff(1, 3).samples.empty  # back to exactly version 1
    # A sample changed again since the diff was shown is not reverted: the user saw it as 'coat'.
    table.commit(ChangeSet.relabel(bags[:4], "coat"), parent=3, message="oops again")
    table.commit(ChangeSet.relabel(bags[:1], "shirt"), parent=4, message="one more change")
    moved = table.diff(3, 4).samples
    revert, left_alone = revert_changes(moved[moved["relabelled"]], table.read(5))
    assert left_alone == 1 and sorted(revert.updates["sample_id"]) == sorted(bags[1:4])

    assert quick_heads_config(workspace, "f") is None  # nothing embedded: nothing quick to retrain
    embed_dataset(workspace, "f", EmbedderConfig(kind="pixels", resolution=8))
    assert quick_heads_config(workspace, "f") is None  # no default embedding and no run says which to use
    train_heads(workspace, "f", TrainConfig(embedding="pixels-8px", heads=("knn",)), version=1)
    quick = quick_heads_config(workspace, "f")
    assert quick.heads == ("knn", "logreg") and quick.embedding == "pixels-8px"
    run = train_heads(workspace, "f", quick, version=2, trigger="after commit")
    assert run.automatic and run.recipe()[0] == quick_heads_recipe(workspace, "f")
    assert not list_runs(workspace, "f", 1)[0].automatic and list_runs(workspace, "f", 1)[0].recipe()[0] != run.recipe()[0]
