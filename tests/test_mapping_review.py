"""Logic behind the Map, Review and Compare pages: colours, what a selection shows and edits, exact label choice, review commits, reverts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.data.changes import ChangeSet, revert_changes
from labelloop.data.ingest import import_dataset
from labelloop.data.runs import list_runs
from labelloop.data.schema import UNDEFINED
from labelloop.data.workspace import DatasetPaths
from labelloop.errors import UserError
from labelloop.maps.view import (
    CLASS_COLOURS,
    CONFIDENT,
    EXCLUDED_COLOUR,
    FIRST_TIER,
    NO_VALUE_COLOUR,
    RAMP,
    UNDEFINED_COLOUR,
    categorical_colours,
    class_colours,
    confidence_warning,
    confidently_right,
    continuous_colours,
    default_message,
    edit_targets,
    label_mix,
    resolve_label,
    selection_changes,
    thumbnail_sample,
)
from labelloop.scores.review import (
    Decision,
    filter_review,
    load_kept,
    queue_changes,
    queue_precision,
    record_kept,
    review_changes,
    review_frame,
    still_valid,
)
from labelloop.train.heads import HeadsSettings
from labelloop.train.pipeline import quick_heads_config, quick_heads_recipe, train
from labelloop.train.registry import run_recipe, run_settings
from tests.colours import DICHROMACY, contrast, delta_e, lab, lab_as_seen
from tests.conftest import write_fashion_folders

MAP_BACKGROUND = "#0e1117"

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


# --------------------------------------------------------------------------- colours a person can tell apart


def test_the_delta_e_of_these_tests_matches_the_published_test_pairs():
    assert delta_e((50, 2.6772, -79.7751), (50, 0, -82.7485)) == pytest.approx(2.0425, abs=1e-4)  # Sharma et al., pair 1
    assert delta_e((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387)) == pytest.approx(1.2644, abs=1e-4)  # pair 7
    assert delta_e((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514)) == pytest.approx(0.9082, abs=1e-4)  # pair 34


def test_twenty_class_colours_are_told_apart_on_the_dark_map_also_with_colour_blindness():
    from itertools import combinations

    assert len(CLASS_COLOURS) == 20 and len({c.lower() for c in CLASS_COLOURS}) == 20
    # Every pair clearly different to normal vision (CIEDE2000 ~2 is "just noticeable", 10 "clearly different").
    closest = min((delta_e(lab(a), lab(b)), a, b) for a, b in combinations(CLASS_COLOURS, 2))
    assert closest[0] > 10, closest
    # The first tier (every data set of up to 10 classes) stays apart for readers without red, green or blue cones.
    for name, matrix in DICHROMACY.items():
        closest = min((delta_e(lab_as_seen(a, matrix), lab_as_seen(b, matrix)), a, b) for a, b in combinations(CLASS_COLOURS[:FIRST_TIER], 2))
        assert closest[0] > 10, (name, closest)
    # Nothing is lost in the background: 3:1 is WCAG's minimum for graphics a person must see.
    for colour in (*CLASS_COLOURS, UNDEFINED_COLOUR, EXCLUDED_COLOUR):
        assert contrast(colour, MAP_BACKGROUND) >= 3, colour


def test_undefined_and_excluded_stand_out_from_every_class_and_from_each_other():
    # The reported map: undefined (30% of the demo) and excluded were dark greys on the near-black map.
    assert contrast(UNDEFINED_COLOUR, MAP_BACKGROUND) > 15 and contrast(EXCLUDED_COLOUR, MAP_BACKGROUND) > 4.5
    assert delta_e(lab(UNDEFINED_COLOUR), lab(EXCLUDED_COLOUR)) > 25
    for special in (UNDEFINED_COLOUR, EXCLUDED_COLOUR):
        assert min(delta_e(lab(special), lab(c)) for c in CLASS_COLOURS) > 15, special
        for name, matrix in DICHROMACY.items():
            assert min(delta_e(lab_as_seen(special, matrix), lab_as_seen(c, matrix)) for c in CLASS_COLOURS[:FIRST_TIER]) > 8, (special, name)
    # What carries no information recedes: dimmer than nearly every class, still visible.
    assert 3 <= contrast(NO_VALUE_COLOUR, MAP_BACKGROUND) < np.percentile([contrast(c, MAP_BACKGROUND) for c in CLASS_COLOURS], 10)


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def test_a_class_keeps_its_colour_by_name_across_data_sets_and_versions():
    colours = class_colours(FASHION)
    assert sorted(colours.values()) == sorted(CLASS_COLOURS[:FIRST_TIER])  # ten classes: the ten colour-blind-safe colours, each once
    assert class_colours(FASHION) == colours  # the same in every process (no per-process string hash)
    # A version that adds classes (appended to the class list) changes no existing class's colour.
    grown = class_colours(FASHION + ["Hat", "Scarf", "Glove"])
    assert {name: grown[name] for name in FASHION} == colours
    assert len(set(grown.values())) == 13
    # Another data set: a name that no earlier-listed class competes with gets the colour its name hashes to.
    for name in FASHION:
        alone = class_colours([name])[name]
        assert class_colours(["zebra", name])[name] == alone or class_colours(["zebra"])["zebra"] == alone
    # The same name keeps its colour when another data set lists other classes after it.
    assert class_colours(["Bag", "cat", "dog"])["Bag"] == class_colours(["Bag"])["Bag"]
    # Up to 20 classes are 20 different colours; beyond, colours repeat evenly (the legend names them).
    many = class_colours([f"class {i}" for i in range(45)])
    assert len(set(list(many.values())[:20])) == 20
    assert max(pd.Series(list(many.values())).value_counts()) == 3
    # The map colours by these.
    coloured = categorical_colours(np.array(["Bag", UNDEFINED, "Coat"], dtype=object), FASHION, np.array([False, False, True]))
    by_name = {p["name"]: p["color"] for p in coloured.palette}
    assert by_name["Bag"] == colours["Bag"] and by_name[UNDEFINED] == UNDEFINED_COLOUR and by_name["excluded"] == EXCLUDED_COLOUR


# --------------------------------------------------------------------------- what a selection shows and edits


def test_the_thumbnails_of_a_selection_show_every_label_rarest_and_undefined_first():
    # The reported lasso: 598 points, 364 bags; it used to show 40 bags.
    labels = np.array(["bag"] * 364 + [UNDEFINED] * 182 + ["pullover"] * 9 + ["shirt"] * 9 + ["trouser"] * 9 + ["t-shirt"] * 8 + ["coat"] * 17, dtype=object)
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    shown = thumbnail_sample(labels, limit=40, seed=0)
    assert len(shown) == 40 and len(set(shown.tolist())) == 40
    counts = pd.Series(labels[shown]).value_counts()
    assert set(counts.index) == set(labels)  # every label is seen
    assert counts.max() - counts.min() <= 1  # an equal share: 40 / 7 labels
    assert [labels[shown][0], *pd.unique(labels[shown])[1:3]] == [UNDEFINED, "t-shirt", "pullover"]  # undefined, then the rarest (ties by name)
    assert np.array_equal(shown, thumbnail_sample(labels, limit=40, seed=0))  # the same selection shows the same thumbnails
    # Labels that run out leave their share to the others; fewer samples than the limit shows them all.
    few = np.array(["a"] * 100 + ["b"] * 2, dtype=object)
    assert pd.Series(few[thumbnail_sample(few, limit=10)]).value_counts().to_dict() == {"a": 8, "b": 2}
    assert sorted(thumbnail_sample(few[:5], limit=10).tolist()) == [0, 1, 2, 3, 4]
    # More labels than thumbnails: one each for undefined and the rarest ones.
    many = np.array([f"c{i:02d}" for i in range(30) for _ in range(i + 1)] + [UNDEFINED], dtype=object)
    assert many[thumbnail_sample(many, limit=5)].tolist() == [UNDEFINED, "c00", "c01", "c02", "c03"]
    assert len(thumbnail_sample(np.array([], dtype=object))) == 0 and len(thumbnail_sample(few, limit=0)) == 0


def test_an_edit_changes_only_the_labels_left_in_and_what_it_would_actually_change():
    ids = np.array([10, 11, 12, 13, 14, 15, 16])
    labels = np.array(["bag", "bag", UNDEFINED, "shirt", "shirt", "trouser", UNDEFINED], dtype=object)
    weights = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    # Relabel to bag: the bags need no change; "only the undefined and the shirts" leaves the trouser alone.
    assert edit_targets(ids, labels, weights, action="relabel", label="bag").tolist() == [12, 13, 14, 15, 16]
    assert edit_targets(ids, labels, weights, action="relabel", label="bag", include=[UNDEFINED, "shirt"]).tolist() == [12, 13, 14, 16]
    assert edit_targets(ids, labels, weights, action="relabel", label="bag", include=[UNDEFINED, "shirt"], leave_out=[13, 99]).tolist() == [12, 14, 16]
    assert edit_targets(ids, labels, weights, action="relabel", label="bag", include=[]).tolist() == []
    # Exclude only what is still in training, include only what is excluded.
    assert edit_targets(ids, labels, weights, action="exclude", include=["shirt"]).tolist() == [13]
    assert edit_targets(ids, labels, weights, action="include").tolist() == [14]
    with pytest.raises(ValueError):
        edit_targets(ids, labels, weights, action="delete")
    # The prefilled message counts what the commit changes.
    targets = edit_targets(ids, labels, weights, action="relabel", label="bag", include=[UNDEFINED, "shirt"])
    assert default_message(len(targets), "relabel", "bag") == "lasso: 4 samples -> bag"


def test_a_relabel_warns_about_samples_the_model_confidently_thinks_are_right():
    labels = np.array(["shirt", "shirt", "trouser", UNDEFINED, "bag", "shirt", "coat"], dtype=object)
    predicted = np.array(["shirt", "shirt", "trouser", "bag", "bag", "bag", None], dtype=object)
    confidence = np.array([0.95, 0.79, CONFIDENT, 0.99, 0.99, 0.99, np.nan])
    flagged = confidently_right(labels, predicted, confidence, "bag")
    # sample 0 and 2: predicted = label and sure; 1 not sure enough; 3 undefined; 4 already bag; 5 the model agrees with the edit; 6 no prediction
    assert flagged.tolist() == [True, False, True, False, False, False, False]
    assert confidently_right(labels, predicted, confidence, "shirt").tolist() == [False, False, True, False, True, False, False]
    assert confidently_right(labels, predicted, confidence, "bag", threshold=0.7).tolist() == [True, True, True, False, False, False, False]
    assert confidence_warning(predicted[flagged]) == "2 of these the model confidently thinks are already right (predicted shirt ×1, trouser ×1 with confidence ≥ 0.8)"
    assert confidence_warning(["shirt"] * 9 + ["trouser"] * 2).startswith("11 of these the model confidently thinks are already right (predicted shirt ×9, trouser ×2")
    assert confidence_warning(["shirt"]).startswith("1 of these the model confidently thinks is already right")


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


@pytest.mark.slow
def test_reverting_a_label_flow_cell_and_the_quick_heads_recipe(tmp_path: Path, workspace: Path):
    from labelloop.embed import EmbedderConfig, embed_dataset

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

    assert quick_heads_config(DatasetPaths(workspace, "f")) is None  # nothing embedded: nothing quick to retrain
    embed_dataset(workspace, "f", EmbedderConfig(kind="pixels", resolution=8))
    assert quick_heads_config(DatasetPaths(workspace, "f")) is None  # no default embedding and no run says which to use
    train(workspace, "f", HeadsSettings(embedding="pixels-8px", heads=("knn",)), version=1)
    quick = quick_heads_config(DatasetPaths(workspace, "f"))
    assert quick.heads == ("knn", "logreg") and quick.embedding == "pixels-8px"
    run = train(workspace, "f", quick, version=2, trigger="after commit")
    assert run.automatic and run_recipe(run)[0] == quick_heads_recipe(DatasetPaths(workspace, "f"))
    assert not list_runs(workspace, "f", 1)[0].automatic and run_recipe(list_runs(workspace, "f", 1)[0])[0] != run_recipe(run)[0]


@pytest.mark.slow
def test_the_quick_heads_refresh_once_per_version_and_then_say_how_long_the_next_takes(tmp_path: Path, workspace: Path):
    from labelloop.embed import EmbedderConfig, embed_dataset
    from labelloop.train.pipeline import (
        QUICK_HEADS_DIMS,
        quick_heads_estimate,
        refresh_quick_heads,
    )

    import_dataset(write_fashion_folders(tmp_path / "f", 12), "f", workspace)
    assert refresh_quick_heads(DatasetPaths(workspace, "f"), 1) is None  # nothing embedded: nothing quick to retrain
    embed_dataset(workspace, "f", EmbedderConfig(kind="pixels", resolution=16))
    train(workspace, "f", HeadsSettings(embedding="pixels-16px", heads=("knn",)), version=1)
    assert quick_heads_estimate(DatasetPaths(workspace, "f"), 1) is None  # no refresh measured yet: no promise
    run = refresh_quick_heads(DatasetPaths(workspace, "f"), 1)
    assert run.automatic and run_settings(run).reduce_dims == QUICK_HEADS_DIMS
    assert refresh_quick_heads(DatasetPaths(workspace, "f"), 1) is None  # the version has its quick heads already
    assert re.fullmatch(r"about \d+ s for 120 images \(the last job here ran at [\d,]+ per second\)", quick_heads_estimate(DatasetPaths(workspace, "f"), 1))
