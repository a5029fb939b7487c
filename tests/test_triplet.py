"""The triplet family: the triplet-loss encoder pulls classes apart and becomes an embedding source."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelloop.compute.neighbours import knn_accuracy
from labelloop.data.ingest import import_dataset
from labelloop.data.runs import find_run, list_runs
from labelloop.embed import (
    EmbedderConfig,
    embed_dataset,
    list_embeddings,
    load_embeddings,
)
from labelloop.errors import Cancelled, UserError
from labelloop.maps.project import project_dataset
from labelloop.train.pipeline import train
from labelloop.train.triplet import TripletSettings
from tests.conftest import write_fashion_folders


@pytest.fixture
def fashion(tmp_path: Path, workspace: Path) -> Path:
    import_dataset(write_fashion_folders(tmp_path / "fashion", 20), "fashion", workspace)
    embed_dataset(workspace, "fashion", EmbedderConfig(kind="pixels", resolution=16))
    return workspace


def test_the_triplet_encoder_pulls_classes_apart_and_feeds_the_map(fashion: Path):
    run = train(fashion, "fashion", TripletSettings(embedding="pixels-16px", epochs=15))
    assert run.summary.figures["knn_encoded"] > run.summary.figures["knn_input"]  # same labels, tighter classes
    key = f"triplet-{run.run_id}"
    assert key in [m["key"] for m in list_embeddings(fashion, "fashion")]
    encoded = load_embeddings(fashion, "fashion", key)
    assert encoded.vectors.shape == (200, 64)
    assert knn_accuracy(encoded.vectors, encoded.labels) == pytest.approx(run.summary.figures["knn_encoded"], abs=1e-9)
    assert project_dataset(fashion, "fashion", key).coords.shape == (200, 3)
    with pytest.raises(UserError, match="no per-sample scores"):
        find_run(fashion, "fashion", run.run_id, with_samples=True)


def test_a_cancelled_triplet_run_leaves_nothing(fashion: Path):
    with pytest.raises(Cancelled):
        train(fashion, "fashion", TripletSettings(embedding="pixels-16px"), should_stop=lambda: True)
    assert list_runs(fashion, "fashion") == []
    assert not any(m["key"].startswith("triplet-") for m in list_embeddings(fashion, "fashion"))


def test_the_triplet_encoder_refuses_an_empty_output():
    with pytest.raises(UserError, match="Output dimensions must be 2 to 4,096"):
        TripletSettings(output_dims=0).validate()
