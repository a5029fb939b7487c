"""Training heads on embeddings: the heads recipe, runs on disk, label-issue scores, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import import_dataset
from labelloop.data.runs import list_runs, load_json, load_samples
from labelloop.data.schema import UNDEFINED
from labelloop.data.workspace import open_table
from labelloop.embed import EmbedderConfig, embed_dataset
from labelloop.errors import Cancelled, UserError
from labelloop.train.common import class_weights
from labelloop.train.head_models import (
    LogisticHead,
    MlpTraining,
    fit_mlps,
    mlp_predict_proba,
    sequential_mlp,
)
from labelloop.train.heads import HeadsSettings
from labelloop.train.pipeline import train
from labelloop.train.registry import settings_from_dict
from labelloop.train.sample_scores import (
    knn_disagreement,
    precision_recall_f1,
    sample_metrics,
)
from tests.conftest import write_fashion_folders

PIXELS = EmbedderConfig(kind="pixels", resolution=16)
QUICK = HeadsSettings(embedding="pixels-16px", epochs=30, final_epochs=30, patience=5)


@pytest.fixture
def fashion(tmp_path: Path, workspace: Path) -> Path:
    """300 real Fashion-MNIST images (30 per class), 20 of them then unlabelled, embedded as pixels."""
    import_dataset(write_fashion_folders(tmp_path / "fashion", 30), "fashion", workspace)
    table = open_table(workspace, "fashion")
    table.commit(ChangeSet.relabel(table.read()["sample_id"][::15], UNDEFINED), parent=1, message="unlabel 20")
    embed_dataset(workspace, "fashion", PIXELS)
    return workspace


@pytest.mark.slow
def test_a_run_cross_validates_every_head_keeps_the_best_and_stores_everything(fashion: Path):
    stages = []
    run = train(fashion, "fashion", QUICK, progress=lambda stage, fraction: stages.append((stage, fraction)))
    assert run.version == 2 and [r.run_id for r in list_runs(fashion, "fashion", version=2)] == [run.run_id]
    cv = load_json(run, "cv.json")
    assert set(cv["heads"]) == {"knn", "logreg", "mlp"} and cv["folds"] == 5
    for head in cv["heads"].values():
        assert len(head["fold_accuracy"]) == 5 and head["mean"] > 0.5  # real photos: far above chance (0.1)
    assert cv["best"] == max(cv["heads"], key=lambda h: cv["heads"][h]["mean"]) == run.summary.best_model
    assert stages[0][1] == 0.0 and any("retraining" in s for s, _ in stages)

    samples = load_samples(run)
    assert len(samples) == 300 and samples["trained_on"].sum() == 280
    labelled, unlabelled = samples[samples["trained_on"]], samples[~samples["trained_on"]]
    assert set(labelled["fold"]) == set(range(5)) and (unlabelled["fold"] == -1).all()
    assert labelled["issue_score"].between(0, 1).all() and unlabelled["issue_score"].isna().all()
    assert unlabelled["predicted_label"].notna().all() and unlabelled["loss"].isna().all()
    assert np.allclose(np.stack(samples["probabilities"]).sum(1), 1, atol=1e-4)

    confusion = load_json(run, "confusion.json")
    assert np.array(confusion["matrix"]).sum() == 280 and len(confusion["labels"]) == 10
    report = load_json(run, "report.json")
    assert report["accuracy"] == pytest.approx(cv["heads"][cv["best"]]["mean"], abs=0.02)
    model_config = json.loads((run.path / "model" / "model_config.json").read_text())
    assert model_config["model_type"] == cv["best"] and model_config["input_dim"] == 768
    assert model_config["label_names"] == confusion["labels"]


@pytest.mark.slow
def test_flipped_labels_rise_to_the_top(fashion: Path):
    table = open_table(fashion, "fashion")
    rows = table.read()
    rng = np.random.default_rng(0)
    labelled = rows[rows["label"] != UNDEFINED]
    victims = labelled.sample(28, random_state=0)
    classes = table.classes()
    wrong = [rng.choice([c for c in classes if c != label]) for label in victims["label"]]
    version = table.commit(ChangeSet(updates=pd.DataFrame({"sample_id": victims["sample_id"], "label": wrong})), parent=2, message="flip 28")
    run = train(fashion, "fashion", QUICK, version=version)
    samples = load_samples(run).set_index("sample_id")
    ranked = samples[samples["trained_on"]].sort_values("issue_score", ascending=False)
    found_in_top_56 = ranked.index[:56].isin(victims["sample_id"]).sum()
    assert found_in_top_56 >= 14, found_in_top_56  # at least half of the flips among the top 2x (chance: 5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "setup, match",
    [
        ("one_class", "at least 2 classes"),
        ("lonely", "single labelled sample"),
        ("all_undefined", "No labelled samples"),
    ],
)
def test_untrainable_versions_get_a_clear_error_and_no_run(fashion: Path, setup: str, match: str):
    table = open_table(fashion, "fashion")
    rows = table.read()
    if setup == "one_class":
        changes = ChangeSet.relabel(rows["sample_id"], "bag")
    elif setup == "lonely":
        keep = rows[rows["label"] == "bag"]["sample_id"].iloc[1:]
        changes = ChangeSet.relabel(keep, UNDEFINED)
    else:
        changes = ChangeSet.relabel(rows["sample_id"], UNDEFINED)
    version = table.commit(changes, parent=2, message=setup)
    with pytest.raises(UserError, match=match):
        train(fashion, "fashion", QUICK, version=version)
    assert list_runs(fashion, "fashion") == []


def test_no_embeddings_says_which_command_makes_them(tmp_path: Path, workspace: Path):
    import_dataset(write_fashion_folders(tmp_path / "f", 3), "bare", workspace)
    with pytest.raises(UserError, match="labelloop embed bare"):
        train(workspace, "bare", HeadsSettings())
    with pytest.raises(UserError, match="versions 1 to 1"):
        train(workspace, "bare", HeadsSettings(), version=7)


@pytest.mark.slow
def test_a_cancelled_run_leaves_nothing_listed(fashion: Path):
    with pytest.raises(Cancelled):
        train(fashion, "fashion", QUICK, progress=lambda stage, fraction: None, should_stop=lambda: True)
    assert list_runs(fashion, "fashion") == []
    assert not any((fashion / "fashion" / "runs").iterdir())  # no staging folder left either


@pytest.mark.slow
def test_folds_follow_the_smallest_class(fashion: Path):
    table = open_table(fashion, "fashion")
    bags = table.read().query("label == 'bag'")["sample_id"]
    version = table.commit(ChangeSet.relabel(bags.iloc[3:], UNDEFINED), parent=2, message="three bags")
    run = train(fashion, "fashion", HeadsSettings(embedding="pixels-16px", heads=("knn",)), version=version)
    assert load_json(run, "cv.json")["folds"] == 3  # max(2, min(5, 3))
    with pytest.raises(UserError, match="4 folds need at least 4 samples per class"):
        train(fashion, "fashion", HeadsSettings(embedding="pixels-16px", heads=("knn",), folds=4), version=version)


@pytest.mark.slow
def test_saved_models_load_without_pickle_and_reproduce_predictions(fashion: Path):
    for heads in (("mlp",), ("logreg",), ("knn",)):
        run = train(fashion, "fashion", HeadsSettings(embedding="pixels-16px", heads=heads, epochs=20, final_epochs=20, patience=5))
        samples = load_samples(run)
        unlabelled = samples[~samples["trained_on"]]
        from labelloop.embed import load_embeddings

        embeddings = load_embeddings(fashion, "fashion", "pixels-16px", 2)
        vectors = embeddings.vectors[pd.Index(embeddings.sample_ids).get_indexer(unlabelled["sample_id"])]
        expected = np.stack(unlabelled["probabilities"])
        model_dir = run.path / "model"
        if heads == ("mlp",):
            from safetensors.torch import load_file

            net = sequential_mlp(768, (256, 128), 10, (0.3, 0.2)).eval()
            net.load_state_dict(load_file(model_dir / "model.safetensors"))
            with torch.no_grad():
                got = torch.softmax(net(torch.from_numpy(vectors)), 1).numpy()
        else:
            arrays = dict(np.load(model_dir / "model.npz", allow_pickle=False))
            if heads == ("logreg",):
                got = LogisticHead.from_arrays(arrays).predict_proba(vectors)
            else:
                from labelloop.train.head_models import KnnHead

                got = KnnHead.from_arrays(arrays).predict_proba(vectors)
        assert np.allclose(got, expected, atol=1e-5), heads


# --------------------------------------------------------------------------- pieces


def test_class_weights_are_inverse_counts_summing_to_the_class_count():
    weights = class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    assert weights.sum() == pytest.approx(4) and weights[3] == 0
    assert weights[1] == pytest.approx(3 * weights[0]) and weights[2] == pytest.approx(1.5 * weights[0])


def test_logistic_head_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1).astype(int)
    ours = LogisticHead().fit(X, y, 3).predict_proba(X)
    theirs = LogisticRegression(max_iter=1000, class_weight="balanced").fit(X, y).predict_proba(X)
    assert np.allclose(ours, theirs, atol=1e-5)
    binary = LogisticHead().fit(X, (y > 0).astype(int), 2).predict_proba(X)
    assert np.allclose(binary, LogisticRegression(max_iter=1000, class_weight="balanced").fit(X, y > 0).predict_proba(X), atol=1e-5)


def test_a_head_checks_it_was_fitted_before_it_predicts_or_is_saved():
    from labelloop.train.head_models import KnnHead, NotFittedError

    X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    for head in (KnnHead(3), LogisticHead()):
        with pytest.raises(NotFittedError, match="call fit"):
            head.predict_proba(X)
        with pytest.raises(NotFittedError):
            head.arrays()
        fitted = head.fit(X, np.arange(20) % 2, 2)
        again = type(head).from_arrays(fitted.arrays())  # the learned state round-trips through the saved arrays
        assert np.allclose(again.predict_proba(X), fitted.predict_proba(X))


@pytest.mark.slow
def test_stacked_mlps_stop_early_each_on_its_own_and_keep_their_best_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    sets = [np.arange(0, 300), np.arange(100, 400)]
    vals = [np.arange(300, 400), np.arange(0, 100)]
    result = fit_mlps(X, y, 2, sets, vals, MlpTraining(hidden=(16,), dropout=(0.1,), max_epochs=60, patience=5))
    for m, val in enumerate(vals):
        accuracy = (mlp_predict_proba(result.model, m, X[val]).argmax(1) == y[val]).mean()
        assert accuracy == pytest.approx(result.best_accuracy[m])  # the kept weights are the best epoch's
        assert result.best_accuracy[m] > 0.85  # a linear rule: easy for an MLP
    epochs_run = [max(r["epoch"] for r in result.curves if r["model"] == m) for m in range(2)]
    assert all(run - best == 5 or run == 60 for run, best in zip(epochs_run, result.best_epoch))


def test_sample_metrics_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.5, 0.0]])
    m = sample_metrics(probs, np.array([0, 2, -1]))
    assert m["predicted"].tolist() == [0, 1, 0]
    assert m["margin"].round(3).tolist() == [0.5, -0.3, 0.0]
    assert m["loss"].iloc[0] == pytest.approx(-np.log(0.7)) and np.isnan(m["loss"].iloc[2])
    assert m["entropy"].iloc[2] == pytest.approx(np.log(2))


def test_knn_disagreement_by_hand():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [1, 0.05]], dtype=np.float32)
    given = np.array([0, 0, 1, 1, 1])  # the last one sits among class 0
    out = knn_disagreement(vectors, given, k=1)
    assert out[4] == 1.0 and out[2] == 0.0
    assert np.isnan(knn_disagreement(vectors, np.array([0, -1, 1, 1, 1]), k=2)[1])


def test_precision_recall_f1():
    assert precision_recall_f1(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    "config, match",
    [
        (HeadsSettings(heads=("svm",)), "Heads: 'svm' is not one of"),
        (HeadsSettings(optimizer="lion"), "Optimizer: 'lion' is not one of sgd, adam"),
        (HeadsSettings(mlp_hidden=(64,), mlp_dropout=(0.1, 0.2)), "one MLP dropout per hidden layer"),
        (HeadsSettings(heads=("knn", "knn")), "at most once"),
        (HeadsSettings(learning_rate=0), "Learning rate must be"),
        (HeadsSettings(folds=1), "Folds must be 2 to 20"),
        (HeadsSettings(validation_split=0.9), "Validation split must be"),
    ],
)
def test_bad_settings_are_refused(config, match: str):
    with pytest.raises(UserError, match=match):
        config.validate()


def test_settings_round_trip_through_json():
    config = HeadsSettings(heads=("mlp",), mlp_hidden=(64, 32), mlp_dropout=(0.1, 0.1))
    assert settings_from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.slow
def test_predict_a_folder_of_new_images(fashion: Path, tmp_path: Path):
    from labelloop.train.predict import predict_folder

    run = train(fashion, "fashion", HeadsSettings(embedding="pixels-16px", heads=("logreg",)))
    new = write_fashion_folders(tmp_path / "new", 3, offset=200)  # images the model never saw
    (new / "bag" / "broken.png").write_bytes(b"nope")
    out, rows, skipped = predict_folder(run.run_id, new, tmp_path / "preds.csv", fashion, probabilities=True)
    predictions = pd.read_csv(out)
    assert rows == 30 and len(predictions) == 30 and len(skipped) == 1
    assert list(predictions.columns[:2]) == ["filename", "label"] and predictions.shape[1] == 12
    truth = predictions["filename"].str.split("/").str[0]
    assert (predictions["label"] == truth).mean() > 0.5  # real signal on unseen photos
    with pytest.raises(UserError, match="already exists"):
        predict_folder(run.run_id, new, out, fashion)


def test_a_model_from_another_data_set_is_refused(fashion: Path, tmp_path: Path):
    from labelloop.train.predict import predict_folder

    run = train(fashion, "fashion", HeadsSettings(embedding="pixels-16px", heads=("knn",)))
    config_path = run.path / "model" / "model_config.json"
    config = json.loads(config_path.read_text())
    config["label_names"] = [f"other-{name}" for name in config["label_names"]]  # as if trained elsewhere
    config_path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="comes from another data set"):
        predict_folder(str(run.path), write_fashion_folders(tmp_path / "new", 1), tmp_path / "p.csv", fashion)


@pytest.mark.slow
def test_the_softmax_head_is_a_linear_model_with_its_own_patience(fashion: Path):
    from labelloop.embed import load_embeddings
    from labelloop.train.predict import load_model

    run = train(fashion, "fashion", HeadsSettings(embedding="pixels-16px", heads=("softmax",), epochs=40, final_epochs=40, softmax_patience=8))
    cv = load_json(run, "cv.json")
    assert cv["best"] == "softmax" and cv["heads"]["softmax"]["mean"] > 0.5
    curves = pd.read_parquet(run.path / "curves.parquet")
    assert set(curves.loc[curves["stage"] == "cv", "fold"]) == set(range(5)) and (curves["stage"] == "final").any()
    predict, model_config = load_model(run.path / "model")
    assert model_config.architecture["hidden_units"] == [] and model_config.model_type == "softmax"
    samples = load_samples(run)
    unlabelled = samples[~samples["trained_on"]]
    embeddings = load_embeddings(fashion, "fashion", "pixels-16px", 2)
    vectors = embeddings.vectors[pd.Index(embeddings.sample_ids).get_indexer(unlabelled["sample_id"])]
    assert np.allclose(predict(vectors), np.stack(unlabelled["probabilities"]), atol=1e-5)


@pytest.mark.slow
def test_heads_on_principal_components_save_the_reduction_with_the_model(fashion: Path, tmp_path: Path):
    from labelloop.compute.reduction import PcaReduction
    from labelloop.data.runs import ModelConfig
    from labelloop.embed import load_embeddings
    from labelloop.train.heads import load_head
    from labelloop.train.predict import predict_folder

    embeddings = load_embeddings(fashion, "fashion", "pixels-16px", 2)
    for heads in (("logreg",), ("knn",), ("mlp",)):
        run = train(fashion, "fashion", HeadsSettings(embedding="pixels-16px", heads=heads, reduce_dims=24, epochs=20, final_epochs=20, patience=5))
        model = ModelConfig.read(run.path / "model")
        assert (model.input_dim, model.architecture["reduced_to"]) == (768, 24)
        reduction = PcaReduction.from_arrays(dict(np.load(run.path / "model" / "reduction.npz", allow_pickle=False)))
        assert reduction.components.shape == (24, 768)
        # The components are orthonormal: a real PCA, not a truncation of the vectors.
        assert np.allclose(reduction.components @ reduction.components.T, np.eye(24), atol=1e-4)
        samples = load_samples(run)
        unlabelled = samples[~samples["trained_on"]]
        vectors = embeddings.vectors[pd.Index(embeddings.sample_ids).get_indexer(unlabelled["sample_id"])]
        assert np.allclose(load_head(run.path / "model", model)(vectors), np.stack(unlabelled["probabilities"]), atol=1e-5), heads
    # predict reads the embedding of new images and reduces it the same way.
    new = write_fashion_folders(tmp_path / "new", 3, offset=200)
    out, rows, _ = predict_folder(run.run_id, new, tmp_path / "preds.csv", fashion)
    predictions = pd.read_csv(out)
    assert rows == 30 and (predictions["label"] == predictions["filename"].str.split("/").str[0]).mean() > 0.5
    # A damaged reduction is a clear error, not a wrong answer.
    (run.path / "model" / "reduction.npz").write_bytes(b"nope")
    with pytest.raises(UserError, match="cannot be read as a PCA reduction"):
        load_head(run.path / "model", ModelConfig.read(run.path / "model"))


def test_one_shared_neighbour_search_gives_each_fold_exactly_its_own_knn():
    from sklearn.model_selection import StratifiedKFold

    from labelloop.compute.neighbours import nearest_neighbours
    from labelloop.train.head_models import KnnHead
    from labelloop.train.heads import knn_out_of_fold

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=600)
    X = (np.eye(4)[y] @ rng.normal(size=(4, 16)) + rng.normal(size=(600, 16))).astype(np.float32)
    folds = list(StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(X, y))
    expected = np.zeros((600, 4), dtype=np.float32)
    for fitted_on, held_out in folds:
        expected[held_out] = KnnHead(5).fit(X[fitted_on], y[fitted_on], 4).predict_proba(X[held_out])
    # Enough candidates for everyone, and so few that many samples fall back to their fold's own k-NN.
    for candidates in (30, 6):
        got = knn_out_of_fold(nearest_neighbours(X, None, candidates), X, y, 4, folds, 5)
        assert np.allclose(got, expected), candidates


@pytest.mark.slow
def test_a_run_with_the_shared_search_matches_one_with_a_search_per_fold(fashion: Path, monkeypatch):
    import labelloop.train.heads as heads_module

    settings = HeadsSettings(embedding="pixels-16px", heads=("knn", "logreg"))
    per_fold = load_samples(train(fashion, "fashion", settings))
    monkeypatch.setattr(heads_module, "EXACT_LIMIT", 10)  # as if 280 labelled samples were a large data set
    shared = load_samples(train(fashion, "fashion", settings))
    assert np.allclose(np.stack(shared["probabilities"]), np.stack(per_fold["probabilities"]))
    assert shared["knn_disagreement"].equals(per_fold["knn_disagreement"]) and shared["flagged"].equals(per_fold["flagged"])


def test_a_training_loop_says_how_long_the_rest_takes_at_its_own_pace(monkeypatch):
    """Issue 27: a 33-minute run said nothing about its length. From the second epoch on, its progress does."""
    import labelloop.train.family as family

    clock = iter([100.0, 110.0, 120.0, 500.0, 505.0])
    monkeypatch.setattr(family.time, "perf_counter", lambda: next(clock))
    job = family.TrainingJob.__new__(family.TrainingJob)
    job._epoch_clock = None
    assert job.time_left(1, 50) == ""  # one epoch: no pace yet
    assert job.time_left(2, 50) == "; about 8 min more at this pace"  # 10 s an epoch, 48 to go
    assert job.time_left(3, 50) == "; about 8 min more at this pace"
    assert job.time_left(1, 4) == ""  # a new loop (the next stage) starts a new count
    assert job.time_left(2, 4) == "; about 10 s more at this pace"


def test_the_mlp_head_says_how_long_it_may_take_from_its_own_pace(fashion: Path):
    stages = []
    train(fashion, "fashion", HeadsSettings(embedding="pixels-16px", heads=("mlp",), epochs=4, final_epochs=4, patience=10),
          progress=lambda stage, fraction: stages.append(stage))
    paced = [s for s in stages if s.startswith("cross-validating mlp: epoch ")]
    assert paced and all("of at most 4" in s and "more at this pace, less if early stopping ends it" in s for s in paced), paced


def test_the_heads_time_estimate_scales_the_pace_measured_here(tmp_path: Path):
    """Issue 27: a first run of the default heads said 'no time estimate'. The pace any heads run measured (the
    automatic ones after each commit included) scales to other sizes; the MLP, never run here yet, is bounded
    from its FLOPs at the measured embedding speed."""
    from labelloop.compute.measured import record
    from labelloop.embed.models import DEFAULT_MODEL, RECOMMENDED
    from labelloop.train.heads import estimate_seconds, head_work

    small = HeadsSettings(heads=("logreg",), reduce_dims=128)
    record(tmp_path, "heads logreg", int(head_work("logreg", small, 1000, 128, 10, 5) / 1e6), 2.0)  # the quick heads: 2 s
    full = HeadsSettings(heads=("knn", "logreg", "mlp"))
    seconds, measured, from_flops = estimate_seconds(tmp_path, full, 4000, 1280, 10, 5)
    assert measured == ["logreg"] and from_flops == [] and seconds == pytest.approx(2.0 * 4 * 10)  # 4x the samples, 10x the dimensions
    record(tmp_path, f"embed {DEFAULT_MODEL}", 6000, 60.0)  # 100 images a second
    gflops = next(r.facts.gflops for r in RECOMMENDED if r.name == DEFAULT_MODEL)
    seconds, measured, from_flops = estimate_seconds(tmp_path, full, 4000, 1280, 10, 5)
    mlp = 2 * head_work("mlp", full, 4000, 1280, 10, 5) / (100 * gflops * 1e9)
    assert from_flops == ["mlp"] and seconds == pytest.approx(80.0 + mlp) and mlp > 1
