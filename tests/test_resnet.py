"""The resnet18-scratch family: ResNet-18 from scratch on real images, its run, and its features as an embedding source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.data.ingest import import_dataset
from labelloop.data.runs import list_runs, load_json, load_samples
from labelloop.embed import list_embeddings, load_embeddings
from labelloop.errors import Cancelled
from labelloop.maps.project import project_dataset
from labelloop.train.pipeline import train
from labelloop.train.resnet import ResnetScratchSettings
from tests.conftest import write_fashion_folders


@pytest.fixture
def fashion(tmp_path: Path, workspace: Path) -> Path:
    import_dataset(write_fashion_folders(tmp_path / "fashion", 8), "fashion", workspace)
    return workspace


@pytest.mark.slow
def test_resnet18_trains_from_scratch_and_its_features_become_an_embedding(fashion: Path):
    run = train(fashion, "fashion", ResnetScratchSettings(epochs=2, validation_split=0.25))
    curves = pd.read_parquet(run.path / "curves.parquet")
    assert curves["epoch"].tolist() == [1, 2]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(curves.columns)
    assert curves["learning_rate"].iloc[0] == pytest.approx(5e-4)  # AdamW at the seed's rate, then cosine
    assert run.summary.best_epoch in (1, 2) and run.summary.seconds_per_epoch > 0
    samples = load_samples(run)
    assert len(samples) == 80 and set(samples["role"]) == {"train", "validation"}
    assert samples["issue_score"].notna().all()
    confusion = load_json(run, "confusion.json")
    assert np.array(confusion["matrix"]).sum() == (samples["role"] == "validation").sum()
    model_config = json.loads((run.path / "model" / "model_config.json").read_text())
    assert model_config["model_type"] == "resnet18-scratch" and len(model_config["label_names"]) == 10

    key = f"trained-{run.run_id}"
    assert key in [m["key"] for m in list_embeddings(fashion, "fashion")]
    embeddings = load_embeddings(fashion, "fashion", key)
    assert embeddings.vectors.shape == (80, 512) and embeddings.missing == 0
    projection = project_dataset(fashion, "fashion", key)
    assert projection.coords.shape == (80, 3)

    from labelloop.train.resnet import build_model

    model = build_model(10)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(run.path / "model" / "model.safetensors"))  # a plain torchvision model again


def test_a_cancelled_resnet_run_leaves_nothing(fashion: Path):
    with pytest.raises(Cancelled):
        train(fashion, "fashion", ResnetScratchSettings(epochs=2), progress=lambda s, f: None, should_stop=lambda: True)
    assert list_runs(fashion, "fashion") == []
    assert not any(m["key"].startswith("trained-") for m in list_embeddings(fashion, "fashion"))
