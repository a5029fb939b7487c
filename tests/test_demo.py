"""The demo data set: its shape, its hidden truth, its score, its fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelloop.data.changes import ChangeSet
from labelloop.data.demo import (
    FASHION_CLASSES,
    FASHION_MNIST_DIR,
    DemoSettings,
    build_demo,
    demo_score,
    ensure_demo,
    load_demo_truth,
    load_source_images,
    plan_demo,
)
from labelloop.data.schema import UNDEFINED
from labelloop.errors import UserError


def test_the_plan_has_the_promised_proportions_and_is_deterministic():
    labels = np.repeat(np.arange(10), 700)
    plan = plan_demo(labels, 10, DemoSettings())
    assert len(plan) == 6000
    assert np.bincount(plan["true_label"]).tolist() == [600] * 10
    undefined = plan["given_label"] < 0
    assert undefined.sum() == 1800
    labelled = ~undefined
    assert plan["flipped"].sum() == round(0.08 * labelled.sum()) == 336
    flipped = plan[plan["flipped"]]
    assert (flipped["given_label"] != flipped["true_label"]).all() and (flipped["given_label"] >= 0).all()
    honest = plan[labelled & ~plan["flipped"]]
    assert (honest["given_label"] == honest["true_label"]).all()
    assert plan.equals(plan_demo(labels, 10, DemoSettings()))
    assert not plan.equals(plan_demo(labels, 10, DemoSettings(seed=1)))


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="Debian package dataset-fashion-mnist not installed")
@pytest.mark.slow
def test_the_full_demo_is_fashion_mnist_with_flips_kept_outside_the_table(workspace: Path):
    table, report = build_demo(workspace)
    rows = table.read()
    assert len(rows) == 6000 and table.classes() == sorted(FASHION_CLASSES)
    assert (rows["label"] == UNDEFINED).sum() == 1800
    assert {"true_label", "flipped"}.isdisjoint(rows.columns)  # the truth is not in the label table
    assert len(report.skipped) == 3  # the deliberately broken files
    truth = load_demo_truth(workspace, "fashion-demo")
    merged = truth.merge(rows, on="sample_id")
    labelled = merged["label"] != UNDEFINED
    assert ((merged["label"] != merged["true_label"]) & labelled).sum() == 336 == truth["flipped"].sum()
    assert set(rows["mode"]) == {"L"} and set(rows["width"]) == {28}
    # File names give nothing away.
    assert all(Path(p).name[:-4].isdigit() for p in rows["path"])

    score = demo_score(workspace, "fashion-demo")
    assert (score.flipped, score.flipped_fixed, score.undefined, score.undefined_labelled) == (336, 0, 1800, 0)

    flipped = truth[truth["flipped"]].head(10)
    fix = ChangeSet(updates=flipped[["sample_id"]].assign(label=flipped["true_label"]))
    undefined = truth[truth["given_label"] == UNDEFINED].head(5)
    wrong_class = [c for c in FASHION_CLASSES if c != undefined["true_label"].iloc[0]][0]
    label_some = ChangeSet(updates=undefined[["sample_id"]].assign(label=list(undefined["true_label"].iloc[:4]) + [wrong_class]))
    v2 = table.commit(fix, parent=1, message="fix ten")
    v3 = table.commit(label_some, parent=v2, message="label five")
    score = demo_score(workspace, "fashion-demo", v3)
    assert (score.flipped_fixed, score.undefined_labelled, score.undefined_correct, score.broken) == (10, 5, 4, 0)
    assert "You fixed 10 of 336 flipped labels" in score.describe()

    assert ensure_demo(workspace) is None  # never rebuilt over an existing workspace
    with pytest.raises(UserError, match="already exists"):
        build_demo(workspace)


@pytest.mark.slow
def test_without_fashion_mnist_the_demo_falls_back_to_mnist_digits(tmp_path: Path, workspace: Path):
    source = load_source_images(fashion_dir=tmp_path / "not-installed")
    assert source.images.shape == (5000, 28, 28) and source.class_names[0] == "digit-0"
    table, _ = build_demo(workspace, "digits", DemoSettings(per_class=20), source=source)
    rows = table.read()
    assert len(rows) == 200 and (rows["label"] == UNDEFINED).sum() == 60
    assert demo_score(workspace, "digits").flipped == round(0.08 * 140)


def test_a_data_set_that_is_not_a_demo_has_no_score(class_folders: Path, workspace: Path):
    from labelloop.data.ingest import import_dataset

    import_dataset(class_folders, "animals", workspace)
    assert demo_score(workspace, "animals") is None
