"""The Data page, driven through Streamlit's AppTest (no browser needed for these)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import import_dataset
from labelloop.data.workspace import list_datasets, open_table
from tests.conftest import app_script


def run_app() -> AppTest:
    app = AppTest.from_file(str(app_script()), default_timeout=120)
    app.run()
    assert not app.exception, app.exception
    return app


def run_until(app: AppTest, done, timeout: float = 120) -> AppTest:
    """Rerun the page (as its once-a-second poll does) until ``done(app)``: imports run in the background."""
    deadline = time.time() + timeout
    while not done(app):
        assert time.time() < deadline, "the background job did not finish"
        time.sleep(0.5)
        app.run()
        assert not app.exception, app.exception
    return app


def test_an_empty_workspace_offers_the_demo_and_an_import(workspace: Path, class_folders: Path):
    app = run_app()
    assert "No data sets" in app.markdown[0].value
    assert any("Build the demo" in b.label for b in app.button)
    app.text_input[0].input(str(class_folders))
    app.text_input[1].input("animals")
    app.button(key="FormSubmitter:import-Import").click().run()
    assert not app.exception, app.exception
    run_until(app, lambda a: a.success)
    assert app.success[0].value.startswith("Created 'animals': ")
    assert list_datasets(workspace) == ["animals"]
    assert app.title[0].value == "animals"  # the session moved to the new data set


def test_a_bad_import_path_shows_the_error_and_creates_nothing(workspace: Path):
    app = run_app()
    app.text_input[0].input("/no/such/folder")
    app.text_input[1].input("ghost")
    app.button(key="FormSubmitter:import-Import").click().run()
    run_until(app, lambda a: a.error)
    assert "does not exist" in app.error[0].value
    assert list_datasets(workspace) == []


@pytest.fixture
def animals(class_folders: Path, workspace: Path) -> Path:
    table, _ = import_dataset(class_folders, "animals", workspace)
    cat = int(table.read().query("label == 'cat'")["sample_id"].iloc[0])
    table.commit(ChangeSet.relabel([cat], "dog"), parent=1, message="that cat is a dog")
    return workspace


def test_the_data_page_shows_versions_and_class_counts(animals: Path):
    app = run_app()
    assert app.title[0].value == "animals"
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Samples"] == "7" and metrics["Classes"] == "3" and metrics["Versions"] == "2"
    history = app.dataframe[0].value
    assert history["version"].tolist() == [2, 1]
    assert history["message"].iloc[0] == "that cat is a dog"
    assert history["what changed"].iloc[0] == "1 relabelled (cat -> dog 1)"
    counts = app.dataframe[1].value.set_index("class")
    assert counts.loc["dog", "samples"] == 4 and counts.loc["bird", "samples"] == 0


def test_restoring_an_old_version_from_the_page_adds_a_version(animals: Path):
    app = run_app()
    app.sidebar.selectbox[1].set_value(1).run()
    assert not app.exception, app.exception
    assert "Version 1 of 2" in app.caption[0].value
    app.button(key="FormSubmitter:restore-Restore").click().run()
    assert not app.exception, app.exception
    table = open_table(animals, "animals")
    assert table.head_version() == 3
    assert table.read(3).equals(table.read(1))
    assert table.version_info(3).message == "restore version 1"
    assert "Version 3 of 3" in app.caption[0].value  # the page moved to the new head


def test_the_import_report_lists_skipped_files(class_folders: Path, workspace: Path):
    (class_folders / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    import_dataset(class_folders, "animals", workspace)
    app = run_app()
    skipped = [df.value for df in app.dataframe if "reason" in df.value.columns]
    assert len(skipped) == 1 and skipped[0]["path"].str.endswith("broken.png").all()


def test_the_demo_shows_its_score(workspace: Path):
    from labelloop.data.demo import DemoSettings, build_demo

    build_demo(workspace, settings=DemoSettings(per_class=10))
    app = run_app()
    assert any("You fixed 0 of 6 flipped labels" in i.value for i in app.info)


def test_the_image_set_digest_follows_samples_and_images_not_labels(class_folders: Path, workspace: Path):
    """The key the map is cached under: a relabel, an exclusion or a restore that brings back the same
    images keeps it (no million-row rehash after a commit); adding or removing a sample changes it."""
    from labelloop.app.components.data_cache import _digest, cached_image_set_digest

    table, _ = import_dataset(class_folders, "animals", workspace)
    rows = table.read()
    first, second = (int(i) for i in rows["sample_id"].iloc[:2])
    relabelled = table.commit(ChangeSet.relabel([first], "dog"), parent=1, message="relabel")
    excluded = table.commit(ChangeSet.set_weight([second], 0), parent=relabelled, message="exclude")
    removed = table.commit(ChangeSet(removed_ids=[second]), parent=excluded, message="remove")
    restored = table.restore(excluded, parent=removed)
    digest = cached_image_set_digest(table, 1)
    assert table.image_set_version(excluded) == 1 and table.image_set_version(removed) == removed
    assert cached_image_set_digest(table, relabelled) == cached_image_set_digest(table, excluded) == digest
    assert cached_image_set_digest(table, removed) != digest
    assert cached_image_set_digest(table, restored) == digest  # the same images again, by their own hash
    # The shortcut agrees with hashing the version's rows itself.
    for version in (relabelled, excluded, restored):
        assert _digest(str(table.path), version, table.version_info(version).timestamp.timestamp()) == digest
