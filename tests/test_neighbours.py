"""Nearest neighbours: exact below the limit, HNSW above it, and both agree."""

from __future__ import annotations

import numpy as np
import pytest

import labelloop.compute.neighbours as neighbours
from labelloop.compute.neighbours import nearest_neighbours


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim))).astype(np.float32)


def test_exact_search_finds_the_most_similar_points_and_never_the_point_itself():
    points = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], dtype=np.float32)
    found = nearest_neighbours(points, None, 2)
    assert found.shape == (5, 2)
    assert found[0].tolist() == [1, 3] and found[2].tolist() == [3, 1]
    assert not (found == np.arange(5)[:, None]).any()
    assert nearest_neighbours(points, np.array([[0.0, 2.0]]), 1).tolist() == [[2]]
    with pytest.raises(ValueError):
        nearest_neighbours(points, None, 5)


@pytest.mark.slow
def test_above_the_limit_the_approximate_search_agrees_with_the_exact_one(monkeypatch):
    points = clustered(30_000)
    assert len(points) > neighbours.EXACT_LIMIT
    approximate = nearest_neighbours(points, None, 10)
    queries = points[:500] + 0.01
    approximate_queries = nearest_neighbours(points, queries, 5)
    monkeypatch.setattr(neighbours, "EXACT_LIMIT", 10**9)
    exact = nearest_neighbours(points, None, 10)
    exact_queries = nearest_neighbours(points, queries, 5)

    assert approximate.shape == exact.shape and not (approximate == np.arange(len(points))[:, None]).any()
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact)])
    query_recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approximate_queries, exact_queries)])
    assert recall > 0.9 and query_recall > 0.9, (recall, query_recall)


@pytest.mark.slow
def test_above_a_million_scale_threshold_an_inverted_file_agrees_with_the_exact_search(monkeypatch):
    points = clustered(30_000)
    monkeypatch.setattr(neighbours, "INVERTED_FILE_ABOVE", 25_000)
    approximate = nearest_neighbours(points, None, 10)
    again = nearest_neighbours(points, None, 10)
    monkeypatch.setattr(neighbours, "EXACT_LIMIT", 10**9)
    exact = nearest_neighbours(points, None, 10)
    assert np.array_equal(approximate, again)  # seeded cells: the same answer every time
    assert approximate.shape == exact.shape and not (approximate == np.arange(len(points))[:, None]).any()
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact)])
    assert recall > 0.9, recall
