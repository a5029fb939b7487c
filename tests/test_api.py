"""The Python API as a notebook uses it: real images, a real Delta table, real embeddings and runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import labelloop
from labelloop.errors import ConflictError, UserError
from tests.conftest import write_fashion_folders


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_fashion_folders(tmp_path_factory.mktemp("images") / "fashion", per_class=12)


@pytest.mark.slow
def test_a_notebook_session_imports_edits_embeds_trains_and_reads_its_scores(folder: Path, tmp_path: Path):
    ds = labelloop.import_folder(folder, "fashion", workspace=tmp_path / "ws")
    assert isinstance(ds, labelloop.Dataset) and "fashion" in repr(ds) and labelloop.datasets(tmp_path / "ws") == ["fashion"]
    assert ds.version == 1 and len(ds.classes) == 10 and ds.import_report().n_imported == 120
    rows = ds.read()
    assert len(rows) == 120 and {"sample_id", "path", "label", "weight", "content_hash"} <= set(rows.columns)

    coats = rows.loc[rows["label"] == ds.classes[0], "sample_id"].to_numpy()[:3]
    made = ds.relabel(coats, ds.classes[1], message="three relabelled", parent=1)
    assert made.version == 2 and ds.version == 2
    assert set(ds.read(2).set_index("sample_id").loc[coats, "label"]) == {ds.classes[1]}
    assert set(ds.read(1).set_index("sample_id").loc[coats, "label"]) == {ds.classes[0]}  # nothing overwritten
    assert ds.diff(1, 2)["sample_id"].tolist() == sorted(coats.tolist())

    with pytest.raises(ConflictError):  # an edit made against version 1 after version 2 exists
        ds.relabel(coats, ds.classes[2], message="stale", parent=1)
    with pytest.raises(UserError, match="not classes.*new_class=True"):
        ds.relabel(coats[:1], "zebra", message="typo", parent=2)
    assert ds.relabel(coats[:1], "zebra", message="a new class", parent=2, new_class=True).version == 3 and "zebra" in ds.classes

    assert ds.exclude(coats[1:], message="blurry", parent=3).version == 4
    assert (ds.read().set_index("sample_id").loc[coats[1:], "weight"] == 0).all()
    changes = pd.DataFrame({"sample_id": coats[1:], "weight": [1.0, 1.0]})
    assert ds.apply(changes, message="back in", parent=4).version == 5
    assert ds.restore(1, parent=5).version == 6 and ds.read(6)["label"].tolist() == ds.read(1)["label"].tolist()
    assert ds.versions["version"].tolist() == [1, 2, 3, 4, 5, 6] and ds.versions["message"].iloc[1] == "three relabelled"

    with pytest.raises(UserError, match="no embedding yet"):
        ds.similar(int(coats[0]))
    report = ds.embed("pixels")
    assert report.key.startswith("pixels") and ds.embeddings == [report.key]
    ids, vectors = ds.vectors()
    assert vectors.shape == (120, 32 * 32 * 3) and vectors.dtype == np.float32 and len(ids) == 120

    near = ds.similar(int(coats[0]), k=5)
    assert near["is_query"].tolist() == [True] + [False] * 5 and near["sample_id"].iloc[0] == coats[0]

    projection = ds.map(dims=2, seed=0)
    frame = projection.frame()
    assert list(frame.columns) == ["sample_id", "x", "y"] and len(frame) == 120

    run = ds.train("heads", heads=("knn",), folds=3)
    assert run.version == 6 and 0 < run.summary.held_out_accuracy <= 1 and ds.runs()[0].run_id == run.run_id
    issues = ds.issues()
    assert len(issues) == 120 and issues["issue_score"].is_monotonic_decreasing
    assert {"sample_id", "path", "label", "predicted_label", "issue_score", "label_issue"} <= set(issues.columns)

    out = ds.export("csv", tmp_path / "labels.csv")
    assert pd.read_csv(out)["sample_id"].tolist() == ds.read()["sample_id"].tolist()


def test_errors_say_what_to_do(tmp_path: Path):
    with pytest.raises(UserError, match="labelloop import"):
        labelloop.open("nothing-here", workspace=tmp_path)
    with pytest.raises(AttributeError):
        labelloop.no_such_thing  # noqa: B018
