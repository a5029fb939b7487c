"""What every training family must do, checked the same way for each (as scikit-learn's estimator checks do):
refuse an out-of-range or unknown value naming the setting; train on a tiny real data set; reopen its run
from disk with the same settings; and then either predict new images (a classifier) or publish its
embedding (an encoder). A new family in the registry is checked by these tests as soon as it is listed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.data.ingest import import_dataset
from labelloop.data.runs import RunInfo
from labelloop.data.workspace import models_dir
from labelloop.embed import EmbedderConfig, embed_dataset, list_embeddings
from labelloop.errors import UserError
from labelloop.train.pipeline import train
from labelloop.train.predict import predict_folder
from labelloop.train.registry import (
    FAMILIES,
    default_settings,
    family_of_model,
    recipe_identity,
    run_settings,
)
from tests.conftest import write_fashion_folders
from tests.test_settings import out_of_range

pytestmark = pytest.mark.slow

# The smallest recipe of each family that still trains for real: seconds on 2 cores. A family added to the
# registry must add its own here (the first test fails until it does).
TINY = {
    "heads": {"heads": ("knn", "logreg")},
    "frozen-backbone": {"epochs": 1, "image_size": 64, "batch_size": 16},
    "resnet18-scratch": {"epochs": 1, "batch_size": 16},
    "triplet": {"epochs": 2},
}


def test_every_family_has_a_tiny_recipe_here():
    assert set(TINY) == set(FAMILIES)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_out_of_range_values_are_refused_naming_the_setting(name: str):
    checked = 0
    for info in FAMILIES[name].settings_class.settings():
        bad = out_of_range(info)
        if bad is None:
            continue
        with pytest.raises(UserError) as refused:
            default_settings(name, **{info.name: bad}).validate()
        assert info.label in str(refused.value) and name in str(refused.value), (info.name, str(refused.value))
        checked += 1
    assert checked >= 3  # every family has bounded settings


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, str, Path]:
    """A real 80-image data set with a pixels embedding, and a folder of new images to predict."""
    root = tmp_path_factory.mktemp("conformance")
    workspace = root / "ws"
    import_dataset(write_fashion_folders(root / "images", per_class=8), "fashion", workspace)
    key = embed_dataset(workspace, "fashion", EmbedderConfig(kind="pixels", resolution=16)).key
    new = write_fashion_folders(root / "new", per_class=1, offset=20)
    return workspace, key, new


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_trains_reopens_and_predicts_or_publishes_its_embedding(name: str, tiny, tmp_path: Path):
    workspace, key, new = tiny
    family = FAMILIES[name]
    reads_embedding = "embedding" in {info.name for info in family.settings_class.settings()}
    settings = default_settings(name, **TINY[name], **({"embedding": key} if reads_embedding else {}))
    settings.validate()
    run = train(workspace, "fashion", settings)

    reopened = RunInfo.open(run.path)  # from disk alone, as a new process sees it
    assert reopened.summary == run.summary and reopened.summary.kind == name
    assert run_settings(reopened) == settings and recipe_identity(run_settings(reopened)) == recipe_identity(settings)
    model = reopened.model_config()
    assert model is not None and family_of_model(model.model_type) is family and model.n_classes == 10

    try:
        family.classifier(run.path, model, models_dir(workspace))
    except UserError as not_a_classifier:  # an encoder: its output is an embedding the other families train on
        published = [meta["key"] for meta in list_embeddings(workspace, "fashion") if run.run_id in meta["key"]]
        assert published, f"{name} neither classifies nor publishes an embedding: {not_a_classifier}"
        return
    out, n_rows, skipped = predict_folder(run.run_id, new, tmp_path / "predictions.csv", workspace, probabilities=True)
    predictions = pd.read_csv(out)
    assert n_rows == len(predictions) == 10 and not skipped
    assert set(predictions["label"]) <= set(model.label_names)
    probabilities = predictions[[c for c in predictions.columns if c not in ("filename", "label")]].to_numpy(dtype=float)
    assert probabilities.shape == (10, 10) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
