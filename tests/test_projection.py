"""Projections: PaCMAP / t-SNE / PCA maps, their quality score, their cache, tiny and broken inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labelloop.compute.neighbours import knn_accuracy
from labelloop.compute.reduction import PcaReduction
from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import add_images, import_dataset
from labelloop.data.workspace import open_table
from labelloop.embed import EmbedderConfig, embed_dataset
from labelloop.errors import UserError
from labelloop.maps.config import ProjectionConfig
from labelloop.maps.fit import (
    FittedMap,
    place_by_neighbours,
    project_vectors,
    projection_quality,
)
from labelloop.maps.placement import PlacementSearch
from labelloop.maps.project import project_dataset
from tests.conftest import draw_image, write_fashion_folders

PIXELS = EmbedderConfig(kind="pixels", resolution=16)


@pytest.fixture
def fashion(tmp_path: Path, workspace: Path) -> str:
    import_dataset(write_fashion_folders(tmp_path / "fashion", 30), "fashion", workspace)
    return embed_dataset(workspace, "fashion", PIXELS).key


@pytest.mark.slow
def test_a_pacmap_map_keeps_neighbourhoods_and_reports_its_quality(fashion: str, workspace: Path):
    projection = project_dataset(workspace, "fashion", fashion)
    assert projection.computed_now and projection.method_used == "pacmap"
    assert projection.coords.shape == (300, 3) and np.isfinite(projection.coords).all()
    quality = projection.quality
    assert quality["n_labelled"] == 300 and quality["k"] == 10
    # Real clothing photos: neighbours share a class far more often than chance (0.1).
    assert quality["knn_embedding"] > 0.6 and quality["knn_map"] > 0.5
    frame = projection.frame()
    assert list(frame.columns) == ["sample_id", "x", "y", "z"] and len(frame) == 300


@pytest.mark.slow
def test_after_a_relabel_the_map_comes_from_the_cache_with_no_work(fashion: str, workspace: Path):
    first = project_dataset(workspace, "fashion", fashion)
    table = open_table(workspace, "fashion")
    version = table.commit(ChangeSet.relabel(table.read()["sample_id"][:50], "bag"), parent=1, message="relabel 50")
    again = project_dataset(workspace, "fashion", fashion, version=version, compute=False)
    assert again is not None and not again.computed_now
    assert np.array_equal(again.coords, first.coords) and np.array_equal(again.sample_ids, first.sample_ids)
    assert "from the cache" in again.describe()


@pytest.mark.slow
def test_a_map_opened_again_comes_from_its_saved_view_until_its_images_change(fashion: str, workspace: Path, monkeypatch: pytest.MonkeyPatch):
    import labelloop.maps.project

    table = open_table(workspace, "fashion")
    rows = table.read()
    fitted = project_dataset(workspace, "fashion", fashion)  # the fit saves the view of the version it fitted
    assert len(list((workspace / "fashion" / "projections").rglob("fit-*.view-*.npz"))) == 1
    opened = project_dataset(workspace, "fashion", fashion, rows=rows, compute=False)
    assert np.array_equal(opened.coords, fitted.coords) and not opened.computed_now

    class Matched(Exception):
        pass

    def no_matching(*args, **kwargs):
        raise Matched  # the view is what makes opening cheap: it must not need the embedding cache
    monkeypatch.setattr(labelloop.maps.project, "load_embeddings", no_matching)
    again = project_dataset(workspace, "fashion", fashion, rows=rows, compute=False)
    assert np.array_equal(again.sample_ids, opened.sample_ids) and np.array_equal(again.coords, opened.coords)
    assert again.describe() == opened.describe() and not again.computed_now
    relabelled = table.commit(ChangeSet.relabel(rows["sample_id"][:10], "bag"), parent=1, message="relabel 10")
    assert np.array_equal(project_dataset(workspace, "fashion", fashion, rows=table.read(relabelled), compute=False).coords, opened.coords)
    with pytest.raises(Matched):  # other images: the saved view does not apply
        project_dataset(workspace, "fashion", fashion, rows=rows.iloc[:-5], compute=False)


@pytest.mark.slow
def test_other_settings_are_other_maps(fashion: str, workspace: Path):
    three = project_dataset(workspace, "fashion", fashion)
    two = project_dataset(workspace, "fashion", fashion, ProjectionConfig(dims=2))
    assert two.computed_now and two.coords.shape == (300, 2)
    assert project_dataset(workspace, "fashion", fashion, ProjectionConfig(seed=1), compute=False) is None
    assert not project_dataset(workspace, "fashion", fashion).computed_now
    assert three.config.key() != two.config.key()


def test_the_same_settings_give_the_same_map():
    rng = np.random.default_rng(0)
    vectors = np.concatenate([rng.normal(c, 1.0, size=(40, 20)) for c in (0, 6, 12)]).astype(np.float32)
    a, _, _ = project_vectors(vectors, ProjectionConfig(pca_dims=0))
    b, _, _ = project_vectors(vectors, ProjectionConfig(pca_dims=0))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_tsne_and_pca_are_alternatives(method: str):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["a", "b", "c"]), 40)
    vectors = np.concatenate([rng.normal(c, 1.0, size=(40, 20)) for c in (0, 8, 16)]).astype(np.float32)
    coords, used, _ = project_vectors(vectors, ProjectionConfig(method=method, dims=2))
    assert used == method and coords.shape == (120, 2)
    assert knn_accuracy(coords, labels) > 0.95  # three well separated blobs stay separated


@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_data_sets_still_get_a_map_and_say_how(tmp_path: Path, workspace: Path, n: int):
    for i in range(n):
        draw_image(tmp_path / "tiny" / ("a" if i % 2 else "b") / f"{i}.png", i)
    import_dataset(tmp_path / "tiny", "tiny", workspace)
    key = embed_dataset(workspace, "tiny", PIXELS).key
    projection = project_dataset(workspace, "tiny", key)
    assert projection.coords.shape == (n, 3) and np.isfinite(projection.coords).all()
    assert projection.method_used == "pca" and "needs at least 20 images" in projection.note


def test_non_finite_vectors_and_empty_input_are_refused():
    vectors = np.ones((30, 4), np.float32)
    vectors[3, 1] = np.nan
    with pytest.raises(UserError, match="NaN or infinite"):
        project_vectors(vectors, ProjectionConfig())
    with pytest.raises(UserError, match="no embedded images"):
        project_vectors(np.zeros((0, 4), np.float32), ProjectionConfig())


@pytest.mark.parametrize(
    "config, match",
    [
        (ProjectionConfig(method="umap"), "Method: 'umap' is not one of pacmap, tsne, pca"),
        (ProjectionConfig(dims=4), "Dimensions: '4' is not one of 2, 3"),
        (ProjectionConfig(n_neighbors=1), "Neighbours must be 2 to 200, not 1"),
        (ProjectionConfig(iterations=(100, 100)), "Iterations takes 3 values, not 2"),
        (ProjectionConfig(iterations=(100, 1.5, 100)), "Iterations takes whole numbers"),
        (ProjectionConfig(iterations=(0, 0, 0)), "at least one of PaCMAP's three phases"),
        (ProjectionConfig(pca_dims=1), "PCA dimensions must be 0 .no reduction. or at least 2"),
    ],
)
def test_bad_projection_settings_are_refused(config: ProjectionConfig, match: str):
    with pytest.raises(UserError, match=match):
        config.validate()


def test_quality_needs_two_labelled_classes():
    quality = projection_quality(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32)[:, :3], np.array(["a", "a", "undefined", "undefined"]))
    assert quality["knn_map"] is None and "at least 2 classes" in quality["note"]


def test_knn_accuracy_never_counts_a_point_as_its_own_neighbour():
    points = np.array([[0.0], [0.0], [10.0], [10.0]])
    # Each point's only other close neighbour has the other label: self-votes would hide that.
    assert knn_accuracy(points, np.array(["a", "b", "a", "b"]), k=1) == 0.0
    assert knn_accuracy(points, np.array(["a", "a", "b", "b"]), k=1) == 1.0


@pytest.mark.slow
def test_a_damaged_projection_cache_is_recomputed(fashion: str, workspace: Path):
    project_dataset(workspace, "fashion", fashion)
    for cached in (workspace / "fashion" / "projections").rglob("*.parquet"):
        cached.write_bytes(b"garbage")
    assert project_dataset(workspace, "fashion", fashion).computed_now


def test_rates_are_recorded_only_from_jobs_large_enough_to_time(tmp_path: Path):
    from labelloop.compute.measured import last_rate, record

    assert last_rate(tmp_path, "embed efficientnet-lite0") is None  # nothing measured: no estimate
    record(tmp_path, "embed efficientnet-lite0", 50, 0.5)
    assert last_rate(tmp_path, "embed efficientnet-lite0") is None  # too small to say anything
    record(tmp_path, "embed efficientnet-lite0", 6000, 40.0)
    rate = last_rate(tmp_path, "embed efficientnet-lite0")
    assert rate.per_second == 150 and rate.estimate(3000) == "about 20 s for 3,000 images (the last job here ran at 150 per second)"


# --------------------------------------------------------------------------- fitted on a sample, the rest placed


@pytest.mark.slow
def test_a_map_fitted_on_a_sample_places_the_rest_and_says_how_well_each_way_did(fashion: str, workspace: Path):
    config = ProjectionConfig(fit_points=150)
    projection = project_dataset(workspace, "fashion", fashion, config)
    assert (projection.n_fitted, projection.n_placed) == (150, 150)
    assert projection.coords.shape == (300, 3) and np.isfinite(projection.coords).all()
    placement = projection.quality["placement"]
    assert placement["used"] in ("transform", "neighbours") and placement["measured_on"] == "150 images the fit left out"
    assert placement["neighbours"] > 0.4 and placement["transform"] is not None  # real photos: far above chance (0.1)
    assert placement[placement["used"]] >= max(v for k, v in placement.items() if k in ("neighbours", "transform"))
    assert "Fitted on 150 images; 150 placed" in projection.describe()


def test_the_search_run_beside_the_fit_places_images_where_a_search_after_it_would():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 64)).astype(np.float32)
    sample, rest = np.arange(1000), np.arange(1000, 3000)
    reduction = PcaReduction().fit(vectors[sample], 16, seed=0)
    search = PlacementSearch(vectors, rest)
    search.start(reduction, reduction.transform(vectors[sample]))  # as fit_map's on_reduced does, before the optimisation
    fitted = FittedMap(rng.normal(size=(1000, 3)).astype(np.float32), "pacmap", "", reduction, reduction.transform(vectors[sample]))
    found = search.result()
    assert found.shape == (2000, 10)
    np.testing.assert_allclose(fitted.coords[found].mean(axis=1), place_by_neighbours(fitted, vectors[rest]), rtol=1e-6)


def test_a_search_beside_a_fit_hands_its_error_to_whoever_waits_for_it():
    rng = np.random.default_rng(0)
    wrong_width = PlacementSearch(rng.normal(size=(50, 8)).astype(np.float32), np.arange(20, 50))
    wrong_width.start(None, rng.normal(size=(20, 5)).astype(np.float32))  # vectors of another width than the fitted ones
    with pytest.raises(ValueError):
        wrong_width.result()


@pytest.mark.slow
def test_when_more_images_are_left_out_than_fitted_transform_is_not_tried_and_the_map_says_why(fashion: str, workspace: Path):
    projection = project_dataset(workspace, "fashion", fashion, ProjectionConfig(fit_points=100))
    assert (projection.n_fitted, projection.n_placed) == (100, 200) and np.isfinite(projection.coords).all()
    placement = projection.quality["placement"]
    assert placement["used"] == "neighbours" and placement["transform"] is None and placement["neighbours"] > 0.4
    assert "200 images to place is more than the 100 fitted" in placement["transform_skipped"]
    assert "transform was not tried" in projection.describe()


@pytest.mark.slow
def test_a_map_made_under_another_fit_size_that_fitted_every_image_is_kept(fashion: str, workspace: Path):
    # An older default fit size: 300 images all fitted, so a limit of 250 could not have made the same map, one of 400 would.
    old = project_dataset(workspace, "fashion", fashion, ProjectionConfig(fit_points=500))
    assert (old.n_fitted, old.n_placed) == (300, 0)
    same = project_dataset(workspace, "fashion", fashion, ProjectionConfig(fit_points=400), compute=False)
    assert same is not None and not same.computed_now and np.array_equal(same.coords, old.coords)
    assert project_dataset(workspace, "fashion", fashion, ProjectionConfig(fit_points=250), compute=False) is None
    refitted = project_dataset(workspace, "fashion", fashion, ProjectionConfig(fit_points=400), refit=True)
    assert refitted.computed_now and project_dataset(workspace, "fashion", fashion, ProjectionConfig(fit_points=500), compute=False).computed_now is False
    folders = sorted(p.name for p in (workspace / "fashion" / "projections" / fashion).iterdir())
    assert folders == [ProjectionConfig(fit_points=400).key(), ProjectionConfig(fit_points=500).key()]  # a refit is written under its own settings


def test_the_fit_sample_keeps_every_labels_share():
    labels = np.array(["a"] * 600 + ["b"] * 300 + ["undefined"] * 100)
    from labelloop.maps.fit import fit_sample

    sample = fit_sample(labels, 200, seed=0)
    assert len(sample) == 200 and len(np.unique(sample)) == 200
    counts = {label: int((labels[sample] == label).sum()) for label in ("a", "b", "undefined")}
    assert counts == {"a": 120, "b": 60, "undefined": 20}
    assert np.array_equal(fit_sample(labels, 2000, seed=0), np.arange(1000))  # under the limit: everything


@pytest.mark.slow
def test_added_images_are_placed_on_the_map_and_only_an_explicit_refit_moves_it(fashion: str, workspace: Path, tmp_path: Path):
    first = project_dataset(workspace, "fashion", fashion)
    assert (first.n_fitted, first.n_placed) == (300, 0)
    assert first.quality["placement"]["neighbours"] > 0.4  # measured by leaving each fitted image out
    add_images(write_fashion_folders(tmp_path / "more", 3, offset=100), "fashion", workspace)  # version 2: 30 more
    embed_dataset(workspace, "fashion", PIXELS)
    assert project_dataset(workspace, "fashion", fashion, version=2, compute=False) is None  # new images are not on it yet
    placed = project_dataset(workspace, "fashion", fashion, version=2)
    assert (placed.n_fitted, placed.n_placed) == (300, 30) and placed.computed_now
    old = placed.frame().set_index("sample_id").loc[first.sample_ids]
    assert np.array_equal(old[["x", "y", "z"]].to_numpy(), first.coords)  # the fitted images did not move
    again = project_dataset(workspace, "fashion", fashion, version=2, compute=False)
    assert again is not None and not again.computed_now and again.n_placed == 30
    refitted = project_dataset(workspace, "fashion", fashion, version=2, refit=True)
    assert (refitted.n_fitted, refitted.n_placed) == (330, 0)
    assert project_dataset(workspace, "fashion", fashion, version=2, compute=False).n_fitted == 330  # the newest fit is the map
