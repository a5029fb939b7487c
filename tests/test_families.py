"""The family registry: each family takes, shows and records only its own settings; run records are typed;
runs written before families had their own settings still open and keep their recipe identity."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from labelloop.data.runs import ModelConfig, RunInfo, RunSummary
from labelloop.errors import UserError
from labelloop.train.frozen import FrozenBackboneSettings
from labelloop.train.heads import HeadsSettings
from labelloop.train.registry import (
    FAMILIES,
    default_settings,
    family_of_model,
    recipe_identity,
    run_recipe,
    run_settings,
    settings_from_dict,
)
from labelloop.train.resnet import ResnetScratchSettings
from labelloop.train.triplet import TripletSettings

# What config.json held before each family had its own settings: every setting of every family, flat.
OLD_FLAT = {
    "heads": ["knn", "logreg", "mlp"], "embedding": None, "folds": None, "seed": 42, "epochs": 100, "final_epochs": 200, "batch_size": 32,
    "learning_rate": 1e-3, "optimizer": "adam", "weight_decay": 1e-4, "patience": 15, "hidden_units": [256, 128], "dropout": [0.3, 0.2],
    "validation_split": 0.1, "class_weighting": "balanced", "augmentation": "seed-001", "backbone": "efficientnet-lite0", "backbone_arch": None,
    "backbone_weights": None, "image_size": None, "unfreeze_from": 0, "softmax_patience": 25, "knn_k": 5, "logreg_c": 1.0, "logreg_max_iter": 1000,
    "issue_neighbours": 10,
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_records_exactly_the_settings_it_reads(name: str):
    family = FAMILIES[name]
    settings = family.settings_class()
    settings.validate()  # the recipe is valid as it stands
    recorded = settings.to_dict()
    assert recorded["family"] == name and set(recorded) == {"family"} | {f.name for f in fields(settings)}
    assert settings_from_dict(json.loads(json.dumps(recorded))) == settings
    for info in settings.settings():  # every setting has a label and bounds or choices the form and CLI can use
        assert info.label and (info.choices or info.kind is str or info.maximum is not None), info.name


def test_settings_a_family_does_not_read_are_refused_not_ignored():
    with pytest.raises(UserError, match="resnet18-scratch does not read embedding, heads"):
        default_settings("resnet18-scratch", heads=("knn",), embedding="x")
    assert not hasattr(TripletSettings(), "validation_split")  # the encoder has no validation split to offer
    assert {"optimizer"} <= {i.name for i in ResnetScratchSettings.settings()} & {i.name for i in TripletSettings.settings()}  # both use it now
    with pytest.raises(UserError, match="Model family 'svm' is not one of heads"):
        default_settings("svm")


def test_old_flat_config_files_open_as_their_familys_settings_with_the_same_recipe_identity():
    heads = settings_from_dict({**OLD_FLAT, "family": "heads", "heads": ["knn", "logreg"], "embedding": "pixels-16px"})
    assert heads == HeadsSettings(heads=("knn", "logreg"), embedding="pixels-16px")
    assert recipe_identity(heads) == recipe_identity(settings_from_dict(heads.to_dict()))  # old and new runs share a line
    frozen = settings_from_dict({**OLD_FLAT, "family": "frozen-backbone", "hidden_units": [512], "dropout": [0.5, 0.5], "epochs": 15, "augmentation": "none"})
    assert (frozen.head_hidden, frozen.head_dropout, frozen.augmentation) == (512, (0.5, 0.5), "none")
    resnet = settings_from_dict({**OLD_FLAT, "family": "resnet18-scratch"})
    assert isinstance(resnet, ResnetScratchSettings) and resnet.augmentation == "crop-flip-jitter"
    triplet = settings_from_dict({**OLD_FLAT, "family": "triplet", "hidden_units": [256, 64], "dropout": [0.0, 0.0]})
    assert (triplet.encoder_hidden, triplet.output_dims) == (256, 64)
    assert recipe_identity(HeadsSettings()) != recipe_identity(HeadsSettings(seed=1)) != recipe_identity(FrozenBackboneSettings())


def test_an_old_untyped_run_folder_still_opens(tmp_path: Path):
    run = tmp_path / "20260101-000000-v2-triplet-abcdef"
    (run / "model").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "dataset": "f", "version": 2, "kind": "triplet", "embedding": "pixels-8px", "best_model": "triplet-encoder", "cv_accuracy": None, "cv": {},
        "folds": 0, "n_labelled": 80, "n_samples": 80, "not_embedded": 0, "knn_input": 0.5, "knn_encoded": 0.9, "train_seconds": 1.2,
        "note": "in-sample", "run_id": run.name, "trigger": "user", "status": "finished", "seconds": 1.5, "finished": "2026-01-01T00:00:00+00:00",
    }))
    (run / "config.json").write_text(json.dumps({**OLD_FLAT, "family": "triplet", "hidden_units": [256, 64], "embedding": "pixels-8px"}))
    (run / "model" / "model_config.json").write_text(json.dumps({
        "model_type": "triplet-encoder", "input_dim": 64, "hidden": 256, "output_dim": 64, "label_names": ["a", "b"], "embedding": "pixels-8px", "format": "...",
    }))
    opened = RunInfo.open(run)
    assert opened.summary == RunSummary(
        dataset="f", version=2, kind="triplet", best_model="triplet-encoder", held_out_accuracy=None, accuracy_by_model={}, folds=0, n_labelled=80,
        n_samples=80, not_embedded=0, embedding="pixels-8px", train_seconds=1.2, note="in-sample", figures={"knn_input": 0.5, "knn_encoded": 0.9},
        run_id=run.name, trigger="user", seconds=1.5, finished="2026-01-01T00:00:00+00:00",
    )
    assert run_recipe(opened)[1] == "triplet" and run_settings(opened).output_dims == 64
    model = opened.model_config()
    assert model == ModelConfig("triplet-encoder", ["a", "b"], "...", embedding="pixels-8px", input_dim=64, architecture={"hidden": 256, "output_dim": 64})
    assert family_of_model(model.model_type) is FAMILIES["triplet"]
    model.write(tmp_path)  # the file keeps its flat layout
    assert json.loads((tmp_path / "model_config.json").read_text())["output_dim"] == 64


def test_a_damaged_run_record_is_a_clear_error(tmp_path: Path):
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(UserError, match="is not a finished run"):
        RunInfo.open(tmp_path)
    with pytest.raises(UserError, match="not a model folder written by this app"):
        ModelConfig.read(tmp_path)
    with pytest.raises(UserError, match="unknown type 'xgboost'"):
        family_of_model("xgboost")
