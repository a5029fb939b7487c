"""Map, Train, Review and Compare page logic through Streamlit's AppTest (the browser tests cover the 3D map)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from labelloop.app.components.session import TRAIN_ANNOUNCED
from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import import_dataset
from labelloop.data.runs import list_runs, load_samples
from labelloop.data.workspace import app_dir, open_table
from labelloop.embed import EmbedderConfig, embed_dataset
from labelloop.train.heads import HeadsSettings
from labelloop.train.pipeline import train
from tests.conftest import app_script, view, write_fashion_folders
from tests.test_app import run_until

QUICK = HeadsSettings(embedding="pixels-16px", heads=("knn", "logreg"))


def page(name: str) -> AppTest:
    app = AppTest.from_file(str(app_script()), default_timeout=180)
    app.run()
    app.switch_page(view(name)).run()
    assert not app.exception, app.exception
    return app


@pytest.fixture
def fashion(tmp_path: Path, workspace: Path) -> Path:
    import_dataset(write_fashion_folders(tmp_path / "fashion", 10), "fashion", workspace)
    embed_dataset(workspace, "fashion", EmbedderConfig(kind="pixels", resolution=16))
    return workspace


@pytest.mark.slow
def test_the_map_page_starts_no_heavy_work_by_itself(class_folders: Path, workspace: Path):
    import_dataset(class_folders, "animals", workspace)
    app = page("map")
    assert any("no embeddings yet" in i.value for i in app.info)
    assert [b.label for b in app.main.button] == ["Embed the images"]
    assert not (workspace / "animals" / "embeddings").exists()


@pytest.mark.slow
def test_a_finished_jobs_banner_shows_once_and_only_to_the_session_that_followed_it(class_folders: Path, workspace: Path):
    """Issue 27 item 6: "N embedded in S s" came back on later visits. It is shown once, in the session that
    started the job (or saw it running); a tab opened after it ended does not get it."""
    import_dataset(class_folders, "animals", workspace)
    started_it = page("map")
    next(b for b in started_it.main.button if b.label == "Embed the images").click().run()
    run_until(started_it, lambda a: any(" embedded" in s.value for s in a.success))
    banner = next(s.value for s in started_it.success if " embedded" in s.value)
    started_it.run()
    assert not any(s.value == banner for s in started_it.success)  # once
    later_tab = page("map")
    assert not any(" embedded" in s.value for s in later_tab.success)  # not news to a session that never saw it run
    assert not later_tab.exception, later_tab.exception


def test_the_map_page_offers_projection_then_draws(fashion: Path):
    app = page("map")
    assert any("No 3D map" in i.value for i in app.info)
    app.button[0].click().run()
    assert not app.exception, app.exception
    run_until(app, lambda a: any("selected" in m.value for m in a.markdown))  # PaCMAP runs in the background
    assert not app.info or not any("No 3D map" in i.value for i in app.info)
    assert any("selected" in m.value for m in app.markdown)  # the selection panel under the map
    # The map the browser loads: one point per sample of this data set, complete (thumbs.bin is written last).
    ids = sorted(open_table(fashion, "fashion").read()["sample_id"])
    drawn = [f for f in (app_dir(fashion) / "static" / "maps").iterdir() if (f / "thumbs.bin").exists() and sorted(np.fromfile(f / "ids.bin", dtype=np.int32)) == ids]
    assert drawn and np.fromfile(drawn[0] / "points.bin", dtype=np.float32).shape == (3 * len(ids),)


@pytest.mark.slow
def test_added_images_are_placed_on_the_map_and_refitting_is_a_button(fashion: Path, tmp_path: Path):
    from labelloop.data.ingest import add_images
    from labelloop.maps.config import ProjectionConfig
    from labelloop.maps.project import project_dataset

    project_dataset(fashion, "fashion", "pixels-16px")
    add_images(write_fashion_folders(tmp_path / "more", 2, offset=50), "fashion", fashion)  # version 2: 20 more images
    embed_dataset(fashion, "fashion", EmbedderConfig(kind="pixels", resolution=16))
    app = page("map")
    assert any("not on the 3D map yet" in i.value for i in app.info)
    assert not any("No 3D map" in i.value for i in app.info)  # the map exists: no refit is offered as the way on
    app.button[0].click().run()  # "Place them on the map"
    run_until(app, lambda a: any("selected" in m.value for m in a.markdown))
    assert any("Fitted on 100 images; 20 placed by their 10 nearest fitted images" in c.value for c in app.caption)
    refit = next(b for b in app.button if b.label == "Refit")
    refit.click().run()
    run_until(app, lambda a: any("map of 120 images" in c.value and "placed" not in c.value for c in a.caption))
    assert project_dataset(fashion, "fashion", "pixels-16px", ProjectionConfig(), compute=False).n_fitted == 120


@pytest.mark.slow
def test_training_from_the_page_runs_in_the_background_and_shows_the_results(fashion: Path):
    app = page("train")
    assert any("No training runs on version 1" in i.value for i in app.info)
    app.multiselect[0].set_value(["knn", "logreg"])
    app.button(key="FormSubmitter:settings-heads-Start training").click().run()
    assert not app.exception, app.exception
    deadline = time.time() + 120
    while not list_runs(fashion, "fashion") and time.time() < deadline:
        time.sleep(0.5)
    assert list_runs(fashion, "fashion"), "the background job never finished a run"
    app.run()
    assert not app.exception, app.exception
    assert any("Runs on version 1" in m.value for m in app.markdown)
    models = app.dataframe[1].value  # the CV table of the shown run
    assert set(models["model"]) == {"knn", "logreg"} and models["best"].sum() == 1
    assert any("Confusion matrix" in m.value for m in app.markdown)
    yours = list_runs(fashion, "fashion")[0].run_id

    # A commit made elsewhere (v2) gets its automatic run; the user moves to v2: their run stays in view, said so.
    table = open_table(fashion, "fashion")
    table.commit(ChangeSet.relabel(table.read()["sample_id"][:3], "bag"), parent=1, message="elsewhere")
    automatic = train(fashion, "fashion", QUICK, trigger="after commit")
    app.run()
    next(w for w in app.selectbox if w.label == "Version").set_value(2).run()
    assert not app.exception, app.exception
    assert any(f"Your run {yours} trained on v1, not on v2" in i.value for i in app.info)
    shown = next(w for w in app.selectbox if w.label == "Show run")
    assert shown.value == yours and any(automatic.run_id in option for option in shown.options)


@pytest.mark.slow
def test_the_review_queue_accepts_a_prediction_and_commits_it(fashion: Path):
    run = train(fashion, "fashion", QUICK)
    flagged = load_samples(run).query("flagged").sort_values(["issue_score", "loss"], ascending=False)
    first = flagged.iloc[0]
    app = page("review")
    app.button_group[0].set_value("Review queue").run() if app.button_group else None
    app = app.run()
    accept = next(b for b in app.button if b.label.startswith("Accept"))
    accept.click().run()
    assert not app.exception, app.exception
    commit = next(b for b in app.button if b.label.startswith("Commit 1 decision"))
    commit.click().run()
    assert not app.exception, app.exception
    table = open_table(fashion, "fashion")
    assert table.head_version() == 2 and "review queue: 1 accepted" in table.history()[-1].message
    assert table.read(2).set_index("sample_id").loc[first["sample_id"], "label"] == first["predicted_label"]


def test_the_compare_page_shows_what_changed(fashion: Path):
    table = open_table(fashion, "fashion")
    rows = table.read(1)
    table.commit(ChangeSet.relabel(rows.loc[rows["label"] == "bag", "sample_id"][:3], "coat"), parent=1, message="three bags are coats")
    app = page("compare")
    assert "**3** relabelled" in [m.value for m in app.markdown]
    counts = app.dataframe[0].value
    assert counts.loc["coat", "change"] == 3 and counts.loc["bag", "change"] == -3


def test_the_train_form_shows_only_the_settings_a_family_reads(fashion: Path):
    app = page("train")

    def labels() -> set[str]:
        return {w.label for w in [*app.number_input, *app.selectbox, *app.text_input, *app.multiselect]}

    assert {"Heads", "Embedding", "MLP hidden units", "Folds (0: automatic)", "Optimizer"} <= labels()
    next(s for s in app.selectbox if s.label == "Model family").set_value("resnet18-scratch").run()
    assert not app.exception, app.exception
    shown = labels()
    assert {"Optimizer", "Augmentation", "Epochs", "Validation split"} <= shown  # ResNet-18 reads its optimizer now
    assert not {"Heads", "Embedding", "MLP hidden units", "Class weighting"} & shown
    next(s for s in app.selectbox if s.label == "Model family").set_value("triplet").run()
    assert "Validation split" not in labels() and {"Output dimensions", "Margin"} <= labels()


@pytest.mark.slow
def test_a_user_error_on_a_page_is_an_error_box_not_a_traceback(fashion: Path):
    run = train(fashion, "fashion", QUICK)
    (run.path / "model" / "model_config.json").write_text("{damaged")  # a run folder damaged on disk
    app = page("train")  # page() asserts there is no exception
    assert any("is not a model folder written by this app" in e.value for e in app.error)
    assert any("Runs on version 1" in m.value for m in app.markdown)  # what came before the error still shows


def test_a_live_curve_has_its_axes_from_the_first_point():
    """Issue 27: the live validation chart of a heads run drew an axis of x 1.22 to 1.24 and no line until a reload."""
    import pandas as pd

    from labelloop.app.components.charts import live_curve_chart

    first = pd.DataFrame([{"stage": "mlp cv (mean of folds)", "epoch": 1, "train_loss": 2.1, "val_accuracy": 0.41, "planned_epochs": 100}])
    first["series"] = first["stage"]
    spec = live_curve_chart(first, "val_accuracy").to_dict()
    assert spec["encoding"]["x"]["scale"]["domain"] == [1, 100.0]  # the whole run ahead, from epoch 1
    assert spec["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert spec["mark"]["point"] is True  # one point shows
    # A family without an epochs setting: the axis still spans whole epochs, and grows with them.
    plain = first.drop(columns=["planned_epochs"])
    assert live_curve_chart(plain, "train_loss").to_dict()["encoding"]["x"]["scale"]["domain"] == [1, 2.0]
    later = pd.concat([plain.assign(epoch=e) for e in range(1, 8)])
    assert live_curve_chart(later, "train_loss").to_dict()["encoding"]["x"]["scale"]["domain"] == [1, 7.0]


def _a_finished_refresh_polled() -> None:
    """AppTest script: the sidebar's refresh poll, drawn once its job has ended with new scores for v2."""
    import time
    from types import SimpleNamespace

    import streamlit as st

    from labelloop.app.components import jobs, sidebar

    st.session_state["runs"] = st.session_state.get("runs", 0) + 1
    job = jobs.Job("quick:poll-test", "updating scores for v2", result=SimpleNamespace(version=2))
    job.finished = time.time()
    jobs._registry()["quick:poll-test"] = job
    sidebar._poll_refresh("quick:poll-test")


def test_the_end_of_a_background_refresh_reruns_nothing_but_offers_the_new_scores():
    """Issue 27 item 9: the poll's whole-app rerun at a refresh's end redrew the page under the user's pointer (a click on
    the confusion matrix landed one row off). It now shows a notice, and only the user's click on it reruns the app."""
    app = AppTest.from_function(_a_finished_refresh_polled, default_timeout=30)
    app.run()
    assert not app.exception, app.exception
    assert app.session_state["runs"] == 1  # drawn once: no rerun of its own (the old poll reran the app, here for ever)
    notice = app.button(key="show-new-scores")
    assert notice.label == "Show the new scores (v2)"
    notice.click().run()
    assert not app.exception, app.exception
    assert app.session_state["runs"] >= 2


def test_the_compute_setting_survives_a_reload_through_the_address(fashion: Path):
    app = page("map")
    assert any(e.label == "Compute: Here, on cpu (auto)" for e in app.sidebar.expander)
    next(s for s in app.sidebar.selectbox if s.label == "Device").set_value("cpu")
    app.button(key="FormSubmitter:compute-setting-Use").click().run()
    assert not app.exception, app.exception
    assert any(e.label == "Compute: Here, on cpu" for e in app.sidebar.expander)
    assert app.query_params["compute.device"] == "cpu" and "compute.ray" not in app.query_params  # only what differs from the default

    # A reload is a new session on the same address.
    reloaded = AppTest.from_file(str(app_script()), default_timeout=180)
    reloaded.query_params["compute.device"] = "cpu"
    reloaded.run()
    reloaded.switch_page(view("map")).run()
    assert not reloaded.exception, reloaded.exception
    assert any(e.label == "Compute: Here, on cpu" for e in reloaded.sidebar.expander)

    # An address that makes no valid setting is dropped, not half used.
    broken = AppTest.from_file(str(app_script()), default_timeout=180)
    broken.query_params["compute.workers"] = "many"
    broken.run()
    broken.switch_page(view("map")).run()
    assert not broken.exception, broken.exception
    assert any(e.label == "Compute: Here, on cpu (auto)" for e in broken.sidebar.expander)
    assert "compute.workers" not in broken.query_params


def _a_finished_training_seen_from_another_page() -> None:
    """AppTest script: this session's training job on 'fashion' has ended while the user is on another page."""
    import time
    from types import SimpleNamespace

    import streamlit as st

    from labelloop.app.components import jobs, sidebar
    from labelloop.app.components.session import choose_dataset, keys

    choose_dataset("fashion")
    st.session_state[keys("fashion").train_started] = True
    result = SimpleNamespace(run_id="20261203-run", summary=SimpleNamespace(best_model="mlp", held_out_accuracy=0.8731))
    job = jobs.Job(keys("fashion").train_job, "heads on v3", result=result)
    job.finished = time.time()
    jobs._registry()[job.key] = job
    sidebar.training_status(on_train_page=st.session_state.get("on_train_page", False))


def test_a_finished_training_run_is_announced_wherever_the_user_is():
    """Issue 27 item 5: when the user's run ended they were told nothing unless they were on the Train page."""
    app = AppTest.from_function(_a_finished_training_seen_from_another_page, default_timeout=30)
    app.run()
    assert not app.exception, app.exception
    assert [s.value for s in app.success] == ["Your run 20261203-run (heads on v3) has finished: mlp, accuracy 0.8731 (held out). The Train page shows it."]
    app.session_state["on_train_page"] = True  # the Train page shows the run itself
    app.run()
    assert not app.success
    app.session_state["on_train_page"] = False
    app.session_state[TRAIN_ANNOUNCED] = "20261203-run"  # shown on the Train page once: no notice any more
    app.run()
    assert not app.success


def test_a_process_the_app_spawns_does_not_start_the_app_again(fashion: Path):
    """The workspace's entry script is __main__ while the app runs (in a server and under AppTest alike), and a process
    started with spawn or forkserver imports __main__ again: unguarded, each such child ran the whole app (seen as
    a broken process pool and worker processes that never started, in the suite's crash and object-storage tests)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    page("data")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(os.getpid).result(timeout=120) != os.getpid()
