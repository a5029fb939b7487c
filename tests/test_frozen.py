"""The frozen-backbone family: a new head on a frozen pretrained backbone, optionally unfrozen gradually; predict with it."""

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
from labelloop.embed import list_embeddings
from labelloop.errors import UserError
from labelloop.train.frozen import (
    FrozenBackboneSettings,
    parameter_groups,
    train_frozen,
)
from labelloop.train.pipeline import train
from labelloop.train.predict import predict_folder
from tests.conftest import write_fashion_folders

SMALL = {"image_size": 64}  # EfficientNet-Lite0 at 64 px: real pretrained features, test-sized cost


@pytest.fixture
def fashion(tmp_path: Path, workspace: Path) -> Path:
    """200 real Fashion-MNIST images (20 per class), 10 of them then unlabelled."""
    import_dataset(write_fashion_folders(tmp_path / "fashion", 20), "fashion", workspace)
    table = open_table(workspace, "fashion")
    table.commit(ChangeSet.relabel(table.read()["sample_id"][::20], UNDEFINED), parent=1, message="unlabel 10")
    return workspace


@pytest.mark.slow
def test_the_frozen_backbone_head_trains_on_cached_backbone_features_and_predicts_new_images(fashion: Path, tmp_path: Path):
    config = FrozenBackboneSettings(epochs=12, **SMALL)
    assert (config.head_hidden, config.head_dropout, config.optimizer, config.learning_rate, config.weight_decay) == (512, (0.5, 0.5), "adamw", 5e-4, 1e-4)
    run = train(fashion, "fashion", config)
    assert [r.run_id for r in list_runs(fashion, "fashion", version=2)] == [run.run_id]
    # Features once: the backbone's vectors went into the shared embedding cache, no trained embedding appears.
    keys = [m["key"] for m in list_embeddings(fashion, "fashion")]
    assert run.summary.embedding in keys and not any(k.startswith("trained-") for k in keys)
    curves = pd.read_parquet(run.path / "curves.parquet")
    assert curves["epoch"].tolist() == list(range(1, 13))
    lr = curves["learning_rate"].to_numpy()
    assert lr[0] == pytest.approx(5e-4) and np.all(np.diff(lr) < 0)  # cosine annealing down from the seed's rate
    assert run.summary.held_out_accuracy > 0.4  # 10 classes: chance is 0.1

    samples = load_samples(run)
    assert len(samples) == 200 and set(samples["role"]) == {"train", "validation", "not trained on"}
    assert samples.loc[samples["role"] == "not trained on", "label"].eq(UNDEFINED).all()
    confusion = load_json(run, "confusion.json")
    assert np.array(confusion["matrix"]).sum() == (samples["role"] == "validation").sum()
    model_config = json.loads((run.path / "model" / "model_config.json").read_text())
    assert model_config["model_type"] == "frozen-backbone" and not model_config["backbone_trained"]
    assert not (run.path / "model" / "backbone.safetensors").exists()

    new = write_fashion_folders(tmp_path / "new", 3, offset=300)
    out, rows, skipped = predict_folder(run.run_id, new, tmp_path / "preds.csv", fashion, probabilities=True)
    predictions = pd.read_csv(out)
    assert rows == 30 and not skipped and predictions.shape[1] == 12
    assert (predictions["label"] == predictions["filename"].str.split("/").str[0]).mean() > 0.4


@pytest.mark.slow
def test_k_fold_gives_every_labelled_sample_an_out_of_fold_score(fashion: Path):
    run = train(fashion, "fashion", FrozenBackboneSettings(epochs=4, folds=3, **SMALL))
    samples = load_samples(run)
    labelled = samples[samples["label"] != UNDEFINED]
    assert set(labelled["fold"]) == {0, 1, 2} and (labelled["role"] == "out of fold").all()
    assert len(load_json(run, "cv.json")["heads"]["frozen-backbone"]["fold_accuracy"]) == 3
    assert np.array(load_json(run, "confusion.json")["matrix"]).sum() == 190
    assert labelled["issue_score"].notna().all()


@pytest.mark.slow
def test_gradual_unfreezing_trains_the_backbone_from_the_output_end(fashion: Path, tmp_path: Path):
    config = FrozenBackboneSettings(epochs=3, unfreeze_from=2, augmentation="randaugment", batch_size=16, **SMALL)
    run = train(fashion, "fashion", config)
    curves = pd.read_parquet(run.path / "curves.parquet")
    assert curves["unfrozen_groups"].tolist() == [0, 1, 2]
    model_config = json.loads((run.path / "model" / "model_config.json").read_text())
    assert model_config["backbone_trained"] and (run.path / "model" / "backbone.safetensors").exists()
    assert f"trained-{run.run_id}" in [m["key"] for m in list_embeddings(fashion, "fashion")]
    new = write_fashion_folders(tmp_path / "new", 2, offset=300)
    _, rows, _ = predict_folder(str(run.path), new, tmp_path / "p.csv", fashion)
    assert rows == 20


def test_unfreezing_changes_only_the_unfrozen_groups():
    from labelloop.embed import EmbedderConfig, torch_feature_model

    backbone = torch_feature_model(EmbedderConfig())[0]
    before = [p.detach().clone() for p in backbone.parameters()]
    groups = parameter_groups(backbone)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    y = np.arange(24) % 3
    settings = FrozenBackboneSettings(epochs=2, batch_size=8, augmentation="none", unfreeze_from=2)
    result = train_frozen(images, y, 3, np.arange(18), np.arange(18, 24), backbone, settings)
    assert result.backbone_trained
    changed = {id(p) for p, old in zip(result.model.backbone.parameters(), before) if not torch.equal(p.detach(), old)}
    assert changed and changed <= {id(p) for p in groups[0]}  # only the output-end group trained
    assert all(not p.requires_grad for group in groups[1:] for p in group)


def test_bad_frozen_backbone_settings_are_refused_clearly(fashion: Path):
    with pytest.raises(UserError, match="two dropouts"):
        FrozenBackboneSettings(head_dropout=(0.5,)).validate()
    with pytest.raises(UserError, match="unfreeze from epoch must be"):
        FrozenBackboneSettings(epochs=3, unfreeze_from=5).validate()
    with pytest.raises(UserError, match="does not exist"):
        FrozenBackboneSettings(backbone="torchvision:resnet18", backbone_weights="/nowhere/r18.pth").validate()


@pytest.mark.slow
def test_any_backbone_with_a_local_weights_file_can_be_the_frozen_backbone(fashion: Path, tmp_path: Path):
    import torchvision

    weights = tmp_path / "my-resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    config = FrozenBackboneSettings(epochs=2, backbone="torchvision:resnet18", backbone_weights=str(weights), image_size=32)
    run = train(fashion, "fashion", config)
    model_config = json.loads((run.path / "model" / "model_config.json").read_text())
    assert model_config["input_dim"] == 512 and model_config["backbone"]["weights"] == str(weights)
    _, rows, _ = predict_folder(run.run_id, write_fashion_folders(tmp_path / "new", 1, offset=300), tmp_path / "p.csv", fashion)
    assert rows == 10
