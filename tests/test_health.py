"""Data health (core/health.py): cleanvision's image checks and cleanlab Datalab's embedding and label
checks on real images with planted problems, the caches that spare a relabel, bad input, and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import import_dataset
from labelloop.data.runs import load_samples
from labelloop.data.workspace import DatasetPaths, open_table
from labelloop.embed import EmbedderConfig, embed_dataset
from labelloop.errors import UserError
from labelloop.scores.checks import CHECKS
from labelloop.scores.health import NOT_COMPUTED, compute_health
from labelloop.scores.image_checks import image_checks
from labelloop.scores.review import load_kept, record_kept, review_frame
from tests.conftest import draw_image, view, write_fashion_folders
from tests.test_cli import cli

PIXELS = EmbedderConfig(kind="pixels", resolution=16)
KEY = "pixels-16px"


def _plant_problems(root: Path) -> dict[str, Path]:
    """Beside 100 Fashion-MNIST images: an exact copy, a near copy, a darkened copy and a negative (dark clothing on white)."""
    bright = max(root.glob("*/*.png"), key=lambda p: np.asarray(Image.open(p)).mean())
    pixels = np.asarray(Image.open(bright)).copy()
    planted = {"original": bright, "exact": bright.parent / "copy.png", "near": bright.parent / "near.png", "dark": bright.parent / "dark.png"}
    shutil.copy(bright, planted["exact"])
    near = pixels.copy()
    near[0, 0] = 255 - near[0, 0]  # one pixel: other bytes, the same picture
    Image.fromarray(near, "L").save(planted["near"])
    Image.fromarray((pixels * 0.08).astype(np.uint8), "L").save(planted["dark"])
    planted["negative"] = bright.parent / "negative.png"
    Image.fromarray(255 - pixels, "L").save(planted["negative"])
    return planted


@pytest.fixture
def planted(tmp_path: Path, workspace: Path) -> tuple[Path, dict[str, int]]:
    root = write_fashion_folders(tmp_path / "fashion", 10)
    files = _plant_problems(root)
    import_dataset(root, "fashion", workspace)
    embed_dataset(workspace, "fashion", PIXELS)
    rows = open_table(workspace, "fashion").read()
    by_path = dict(zip(rows["path"].map(lambda p: Path(p).resolve()), rows["sample_id"]))
    return workspace, {what: int(by_path[path.resolve()]) for what, path in files.items()}


def test_planted_problems_are_found_and_a_relabel_reuses_the_label_free_checks(planted):
    workspace, ids = planted
    stages = []
    report = compute_health(workspace, "fashion", embedding=KEY, image_workers=1, progress=lambda stage, fraction: stages.append((stage, fraction)))
    assert stages[-1] == ("done", 1.0) and any(stage.startswith("image checks") for stage, _ in stages)
    assert [fraction for _, fraction in stages] == sorted(fraction for _, fraction in stages)
    assert len(report.samples) == 104 and report.samples["sample_id"].is_unique
    # Exact and near copies: one group with their original (the exact one from equal content hashes).
    group = next(g for g in report.duplicate_groups if ids["original"] in g)
    assert {ids["original"], ids["exact"], ids["near"]} <= set(group.tolist())
    flagged = report.samples.set_index("sample_id")
    assert flagged.loc[[ids["original"], ids["exact"], ids["near"]], "is_near_duplicate"].all()
    # A white background is like no other image here: Datalab's most severe outlier.
    assert report.flagged("outlier")["sample_id"].iloc[0] == ids["negative"]
    assert ids["dark"] in report.flagged("dark")["sample_id"].tolist()
    # All grayscale: a property of the set, not 105 flags.
    assert report.results["grayscale"].status == "set property" and not flagged["is_grayscale"].any()
    # No run yet: the label checks say what they need, the others ran.
    for check in ("label", "class_imbalance", "underperforming_group"):
        assert report.results[check].status == "not run" and "needs a training run" in report.results[check].note
    assert report.results["outlier"].status == "ran" and report.results["blurry"].status == "ran"
    assert report.issue_types().loc[ids["negative"]].startswith("Outlier")

    # A relabel makes a new version with the same image set: nothing label-free is computed again.
    folder = DatasetPaths(workspace, "fashion").local / "health"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")}
    table = open_table(workspace, "fashion")
    table.commit(ChangeSet.relabel([ids["negative"]], "bag"), parent=table.head_version(), message="relabel")
    again = compute_health(workspace, "fashion", embedding=KEY, image_workers=1)
    assert again.version == report.version + 1
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.parquet")} == before
    pd.testing.assert_frame_equal(again.samples.drop(columns=["label"]), report.samples.drop(columns=["label"]))


@pytest.mark.slow
def test_label_checks_read_this_versions_labels_and_the_runs_probabilities(planted):
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import train

    workspace, ids = planted
    table = open_table(workspace, "fashion")
    rows = table.read()
    # Five sneakers called trousers: the trained model disagrees with those labels.
    flipped = rows[rows["label"] == "sneaker"]["sample_id"].head(5).tolist()
    table.commit(ChangeSet.relabel(flipped, "trouser"), parent=table.head_version(), message="flip")
    compute_health(workspace, "fashion", embedding=KEY, image_workers=1)
    run = train(workspace, "fashion", HeadsSettings(heads=("logreg",), embedding=KEY))
    # Only reading caches (as pages do): the new run's Datalab label checks are missing, the rest is there, and
    # the label issues are the run's own flags, read as the Review page reads them (nothing to compute).
    cached = compute_health(workspace, "fashion", embedding=KEY, compute=False)
    assert cached.results["class_imbalance"].status == "not run" and cached.results["class_imbalance"].note.startswith(NOT_COMPUTED)
    assert cached.results["outlier"].status == "ran" and cached.results["dark"].status == "ran"
    assert cached.results["label"].status == "ran"
    report = compute_health(workspace, "fashion", embedding=KEY, image_workers=1)
    assert report.run_id == run.run_id
    assert report.results["label"].status == "ran" and report.results["class_imbalance"].status == "ran"
    issue_score = report.samples.set_index("sample_id")["label_score"].rsub(1.0)
    assert (issue_score.loc[flipped] > issue_score.median()).all()  # the flipped labels rank as suspicious
    # Labelled, not excluded samples only; the others get no label score.
    scored = report.samples[report.samples["label_score"].notna()]
    assert len(scored) == report.results["label"].scored and (scored["label"] != "undefined").all()
    # One definition, one count: the Review page's open label issues, most suspicious first, are Health's.
    paths = DatasetPaths(workspace, "fashion")
    review = review_frame(load_samples(run), table.read(), load_kept(paths.kept_labels)).sort_values("issue_score", ascending=False, kind="stable")
    assert report.results["label"].count == int(review["flagged"].sum()) > 0
    assert report.flagged("label")["sample_id"].tolist() == review.loc[review["flagged"], "sample_id"].tolist()
    # A reviewer keeps one label: both pages count one fewer at once (a keep changes no version).
    first = review[review["flagged"]].iloc[0]
    record_kept(paths.kept_labels, int(first["sample_id"]), first["label"], table.head_version())
    kept = compute_health(workspace, "fashion", embedding=KEY, compute=False)
    assert kept.results["label"].count == report.results["label"].count - 1 and int(first["sample_id"]) not in set(kept.flagged("label")["sample_id"])
    # This version's labels, not the run's: fixing an issue to its prediction in a new version closes it there.
    second = review[review["flagged"]].iloc[1]
    table.commit(ChangeSet.relabel([int(second["sample_id"])], second["predicted_label"]), parent=table.head_version(), message="fix one")
    fixed = compute_health(workspace, "fashion", embedding=KEY, compute=False)
    assert fixed.run_id == run.run_id and fixed.results["label"].count == report.results["label"].count - 2


def test_too_few_images_say_so_and_the_image_checks_still_run(tmp_path: Path, workspace: Path):
    root = tmp_path / "few"
    for i in range(5):
        draw_image(root / ("a" if i < 3 else "b") / f"{i}.png", i)
    import_dataset(root, "few", workspace)
    embed_dataset(workspace, "few", PIXELS)
    report = compute_health(workspace, "few", embedding=KEY, image_workers=1)
    for check in ("outlier", "near_duplicate", "non_iid"):
        assert report.results[check].status == "not run" and "needs at least 20 embedded images" in report.results[check].note
    assert report.results["dark"].status == "ran" and report.results["dark"].scored == 5
    assert set(report.summary()["check"]) == set(CHECKS)


def test_grayscale_flags_the_few_gray_images_of_a_colour_set_and_unreadable_images_are_counted(tmp_path: Path, workspace: Path):
    root = tmp_path / "colour"
    for i in range(30):
        draw_image(root / ("a" if i % 2 else "b") / f"{i}.png", i, size=(32, 32), mode="L" if i in (4, 9) else "RGB")
    import_dataset(root, "colour", workspace)
    (root / "b" / "0.png").unlink()  # gone since the import
    report = compute_health(workspace, "colour", image_workers=2)
    gray = report.flagged("grayscale")
    assert report.results["grayscale"].status == "ran" and len(gray) == 2
    assert sorted(Path(p).name for p in open_table(workspace, "colour").read().set_index("sample_id").loc[gray["sample_id"], "path"]) == ["4.png", "9.png"]
    assert report.samples["unreadable"].sum() == 1 and "1 images could not be read" in report.results["dark"].note
    # No embedding: those checks say how to get one; exact duplicates would still be grouped.
    assert report.results["outlier"].status == "not run" and "embed the images first" in report.results["outlier"].note


@pytest.mark.slow
def test_health_command_prints_the_checks_and_writes_every_sample(planted, tmp_path: Path):
    workspace, ids = planted
    out = tmp_path / "health.csv"
    result = cli(workspace, "health", "fashion", "--embedding", KEY, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "near_duplicate" in result.stdout and "Grayscale: 100% of the images are grayscale" in result.stdout
    assert "Label issue: needs a training run" in result.stdout
    written = pd.read_csv(out)
    assert len(written) == 104 and {"outlier_score", "is_blurry", "health"} <= set(written.columns)
    assert "Outlier" in written.set_index("sample_id").loc[ids["negative"], "health"]
    missing = cli(workspace, "health", "nope")
    assert missing.returncode != 0 and "No data set named 'nope'" in missing.stderr


@pytest.mark.slow
def test_health_page_computes_on_request_then_excludes_and_keeps_one_of_each_group(planted):
    from labelloop.app.components.session import keys
    from tests.test_app import run_until
    from tests.test_app_pages import page

    workspace, ids = planted
    app = page("health")
    assert any("not computed yet" in i.value for i in app.info)
    assert not (workspace / "fashion" / "health").exists()  # opening the page computed nothing
    next(b for b in app.button if b.label == "Compute data health").click().run()
    run_until(app, lambda a: any("104 samples" in c.value for c in a.caption))
    assert any("**Outlier**" in m.value for m in app.markdown) and any("**Dark**" in m.value for m in app.markdown)

    # One issue type: its samples, most severe first, none picked until the user picks; pick the page, exclude them in one commit.
    show = app.get("button_group")[0]
    outliers = next(o for o in show.options if o.startswith("Outlier ("))
    show.set_value(outliers).run()
    assert not app.exception, app.exception
    listed = app.dataframe[0].value
    assert listed["sample_id"].iloc[0] == ids["negative"] and not listed["pick"].any()
    assert next(b for b in app.button if b.label.startswith("Exclude ")).disabled  # nothing is armed
    assert next(b for b in app.button if b.label.startswith("Relabel ")).disabled
    next(b for b in app.button if b.label == f"Pick all {len(listed)} on this page").click().run()
    assert app.dataframe[0].value["pick"].all()
    next(b for b in app.button if b.label == "Pick none").click().run()
    assert not app.dataframe[0].value["pick"].any()
    next(b for b in app.button if b.label == f"Pick all {len(listed)} on this page").click().run()
    next(b for b in app.button if b.label.startswith("Exclude ")).click().run()
    table = open_table(workspace, "fashion")
    assert table.head_version() == 2 and table.version_info(2).message.startswith(f"health: excluded {len(listed)} flagged as outlier")
    weights = table.read(2).set_index("sample_id")["weight"]
    assert (weights.loc[listed["sample_id"]] == 0).all() and (weights.drop(listed["sample_id"]) > 0).all()

    # More like the dark copy: it and its 5 nearest become the map's selection.
    show = app.get("button_group")[0]
    show.set_value(next(o for o in show.options if o.startswith("Dark ("))).run()
    next(b for b in app.button if b.label.startswith("Pick all ")).click().run()
    picks = app.dataframe[0].value
    assert ids["dark"] in picks["sample_id"].tolist()
    next(n for n in app.number_input if n.label == "Neighbours").set_value(5).run()
    next(b for b in app.button if b.label.startswith("More like the ")).click().run()
    assert not app.exception, app.exception
    selection = app.session_state[keys("fashion").selection]["sample_ids"]
    assert set(picks["sample_id"]) <= set(selection) and len(selection) == len(picks) + 5
    app.switch_page(view("health")).run()

    # Near duplicates on the new version (its label checks are cached per version: computed again on request).
    app.run()
    assert not app.exception, app.exception
    assert any("104 samples" in c.value for c in app.caption)  # no run: nothing label-dependent to compute for v2
    app.get("button_group")[0].set_value("Near-duplicate groups").run()
    keep = next(r for r in app.radio if f"#{ids['original']}" in r.options)
    keep.set_value(ids["near"]).run()
    next(b for b in app.button if b.label.startswith("Keep one of each")).click().run()
    assert not app.exception, app.exception
    weights = open_table(workspace, "fashion").read().set_index("sample_id")["weight"]
    assert weights.loc[ids["near"]] > 0 and weights.loc[ids["original"]] == 0 and weights.loc[ids["exact"]] == 0


@pytest.mark.slow
def test_review_filters_by_health_issue_and_sends_more_like_a_sample_to_the_map(planted):
    from labelloop.app.components.session import keys
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import train
    from tests.test_app_pages import page

    workspace, ids = planted
    train(workspace, "fashion", HeadsSettings(heads=("logreg",), embedding=KEY))
    report = compute_health(workspace, "fashion", embedding=KEY, image_workers=1)
    app = page("review")
    health_filter = next(m for m in app.multiselect if m.label == "Health issue")
    assert "Outlier" in health_filter.options and "Dark" in health_filter.options
    health_filter.set_value(["Dark"]).run()
    assert not app.exception, app.exception
    assert set(app.dataframe[0].value["sample_id"]) <= set(report.flagged("dark")["sample_id"])
    assert ids["dark"] in set(app.dataframe[0].value["sample_id"])
    closer = next(s for s in app.selectbox if s.label == "Look closer at")
    closer.set_value(ids["dark"]).run()
    assert any(c.value.startswith("Health: ") and "Dark" in c.value for c in app.caption)
    next(n for n in app.number_input if n.label == "Neighbours").set_value(7).run()
    next(b for b in app.button if b.label == f"More like #{ids['dark']} on the map").click().run()
    assert not app.exception, app.exception
    selection = app.session_state[keys("fashion").selection]["sample_ids"]
    assert len(selection) == 8 and selection[0] == ids["dark"]


def test_health_colours_draw_the_unflagged_samples_grey_and_list_only_the_issues_present():
    from labelloop.maps.view import NO_VALUE_COLOUR, categorical_colours

    colouring = categorical_colours(["no issue", "Dark", "no issue", "Outlier"], ["Outlier", "Dark"], grey="no issue", grey_colour=NO_VALUE_COLOUR)
    assert [entry["name"] for entry in colouring.palette] == ["Outlier", "Dark", "no issue"]
    assert colouring.palette[-1]["color"] == NO_VALUE_COLOUR and colouring.palette[-1]["count"] == 2
    assert colouring.codes.tolist() == [2, 1, 2, 0]


def test_a_stopped_check_caches_nothing_and_a_set_with_no_readable_image_says_so(tmp_path: Path, workspace: Path):
    from labelloop.errors import Cancelled

    root = tmp_path / "stop"
    for i in range(40):
        draw_image(root / ("a" if i % 2 else "b") / f"{i}.png", i)
    import_dataset(root, "stop", workspace)
    with pytest.raises(Cancelled, match="stopped during the image checks"):
        compute_health(workspace, "stop", image_workers=1, should_stop=lambda: True)
    assert not list((workspace / "stop").glob("health/*.parquet"))
    assert compute_health(workspace, "stop", compute=False) is None
    # The first image unreadable is fine (cleanvision looks at one to learn the data's shape); none readable is said.
    (root / "b" / "0.png").unlink()
    assert compute_health(workspace, "stop", image_workers=1).samples["unreadable"].sum() == 1
    shutil.rmtree(root)
    with pytest.raises(UserError, match="None of the 40 images can be read"):
        image_checks(open_table(workspace, "stop").read(), workers=1)


@pytest.mark.slow
def test_two_tabs_the_second_health_edit_on_an_old_version_is_refused(planted):
    from tests.test_app_pages import page

    workspace, ids = planted
    compute_health(workspace, "fashion", embedding=KEY, image_workers=1)
    tabs = [page("health"), page("health")]
    for app in tabs:  # both show v1's dark images
        show = app.get("button_group")[0]
        show.set_value(next(o for o in show.options if o.startswith("Dark ("))).run()
        next(b for b in app.button if b.label.startswith("Pick all ")).click().run()
    next(b for b in tabs[0].button if b.label.startswith("Exclude ")).click().run()
    table = open_table(workspace, "fashion")
    assert table.head_version() == 2
    next(b for b in tabs[1].button if b.label.startswith("Exclude ")).click().run()
    assert not tabs[1].exception, tabs[1].exception
    assert any("v2 was committed elsewhere" in e.value and "Nothing was written" in e.value for e in tabs[1].error)
    assert open_table(workspace, "fashion").head_version() == 2
    # The refusal stays on later runs (not only the one where the commit failed), with its Reload, and no
    # button offers the refused edit again; the Reload works.
    tabs[1].run()
    assert any("v2 was committed elsewhere" in e.value for e in tabs[1].error)
    assert all(b.disabled for b in tabs[1].button if b.label.startswith(("Exclude ", "Relabel ")))
    next(b for b in tabs[1].button if b.label == "Reload v2").click().run()
    assert not tabs[1].exception, tabs[1].exception
    assert not any("committed elsewhere" in e.value for e in tabs[1].error)
    assert any(c.value.startswith("v2 · ") for c in tabs[1].caption)  # it shows the latest version now


def test_an_absolute_threshold_flags_only_what_is_unusual_for_the_set():
    """Issue 27: 'Low information 918 of 6,000' on black-background images was a property of the set, not an issue."""
    from labelloop.scores.checks import CHECKS_OF
    from labelloop.scores.image_checks import image_results

    rng = np.random.default_rng(0)
    scores = np.clip(rng.normal(0.5, 0.05, 200), 0, 1)
    scores[:2] = [0.02, 0.04]  # two images with almost nothing in them
    samples = pd.DataFrame({"sample_id": np.arange(200), "unreadable": False})
    for check in CHECKS_OF["images"]:
        samples[f"{check}_score"] = 0.9
        samples[f"is_{check}"] = False
    samples["low_information_score"] = scores
    samples["is_low_information"] = scores < 0.45  # cleanvision's own threshold: about 16% of an ordinary set
    assert samples["is_low_information"].sum() > 20
    results = image_results(samples)
    assert samples.loc[samples["is_low_information"], "sample_id"].tolist() == [0, 1]  # only the unusual ones
    assert results["low_information"].count == 2 and "usual for this data set" in results["low_information"].note
