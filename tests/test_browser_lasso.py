"""The lasso on 10,000 points in a real browser: the server's lasso agrees with the browser's point for
point, and on a map drawn as a subset (a point budget) the lasso still selects among every point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.app.components.scatter3d import _normalised
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import DatasetPaths
from labelloop.embed.cache import EmbeddingCache
from labelloop.maps.lasso import lasso_select
from labelloop.maps.project import project_dataset
from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    lasso,
    needs_chromium,
    running_app,
    screenshot,
    settled,
)

pytestmark = [needs_chromium, pytest.mark.slow]
N = 10_000
CLASSES = [f"class{i}" for i in range(8)]


@pytest.fixture(scope="module")
def ten_thousand(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data set of 10,000 samples with a 16-d embedding of eight clusters (no image files: the map needs none),
    mapped once for both tests (the tests only read it)."""
    workspace = tmp_path_factory.mktemp("workspace")
    rng = np.random.default_rng(0)
    paths = DatasetPaths(workspace, "big")
    labels = rng.integers(0, len(CLASSES), size=N)
    hashes = np.array([f"{i:032x}" for i in range(N)])
    LabelTable.create(paths.labels, pd.DataFrame({"path": [f"/data/{i}.jpg" for i in range(N)], "label": np.asarray(CLASSES)[labels], "content_hash": hashes}), CLASSES, lock_path=paths.commit_lock)
    cache = EmbeddingCache(paths.embedding("synthetic-16"))
    cache.write_meta({"key": "synthetic-16", "description": "eight clusters", "dim": 16, "config": {"kind": "pixels"}, "warnings": []})
    centres = rng.normal(size=(len(CLASSES), 16)).astype(np.float32) * 3
    cache.append(list(hashes), (centres[labels] + rng.normal(size=(N, 16)).astype(np.float32)).astype(np.float32))
    project_dataset(workspace, "big", "synthetic-16")
    return workspace


def _draw_lasso(url: str, tmp_path: Path, name: str) -> tuple[dict, list[int], int, str]:
    """Open the map, draw a lasso; return (the lasso the browser sent, its selected point indices, the page's count, the status line)."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/map?dataset=big")
        root = page.locator(".map-root")
        expect(root).to_have_attribute("data-ready", "1", timeout=90_000)
        stage = page.locator(".map-stage").bounding_box()
        page.get_by_text("Lasso: off (L)").click()
        lasso(page, stage["x"] + stage["width"] * 0.45, stage["y"] + stage["height"] * 0.5, min(stage["width"], stage["height"]) * 0.22)
        expect(root).not_to_have_attribute("data-lasso", "", timeout=10_000)
        geometry = json.loads(root.get_attribute("data-lasso"))
        indices = [int(i) for i in (root.get_attribute("data-selected-indices") or "").split(",") if i]
        # The server's count of the lasso (not the "0 selected" of the run before the lasso reached it).
        page.wait_for_function("() => [...document.querySelectorAll('strong')].some(e => /^[1-9][0-9,]* selected$/.test(e.textContent))", timeout=20_000)
        settled(page)
        count = int(page.evaluate("() => [...document.querySelectorAll('strong')].map(e => e.textContent).find(t => / selected$/.test(t))").split()[0].replace(",", ""))
        status = page.locator(".map-status").text_content()
        screenshot(page, name)
        browser.close()
    assert not errors, errors
    return geometry, indices, count, status


def test_the_server_lasso_agrees_with_the_browser_point_for_point(ten_thousand: Path, tmp_path: Path):
    with running_app(ten_thousand, tmp_path / "streamlit.log") as url:
        geometry, indices, count, status = _draw_lasso(url, tmp_path, "lasso-10000-points")
    assert status.startswith("10,000 points")  # below the budget: every point is drawn
    projection = project_dataset(ten_thousand, "big", "synthetic-16", compute=False)
    server = lasso_select(_normalised(projection.coords), geometry["matrix"], geometry["width"], geometry["height"], geometry["polygon"])
    assert 200 < len(indices) < N  # a real part of the cloud
    assert server.tolist() == indices  # the same points, one by one
    assert count == len(indices)


def test_a_map_over_the_point_budget_draws_a_subset_and_the_lasso_selects_among_every_point(ten_thousand: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LABELLOOP_POINT_BUDGET", "2000")
    with running_app(ten_thousand, tmp_path / "streamlit.log") as url:
        geometry, indices, count, status = _draw_lasso(url, tmp_path, "lasso-budget-2000-of-10000")
    assert status.startswith("2,000 of 10,000 points drawn")
    projection = project_dataset(ten_thousand, "big", "synthetic-16", compute=False)
    everywhere = lasso_select(_normalised(projection.coords), geometry["matrix"], geometry["width"], geometry["height"], geometry["polygon"])
    assert count == len(everywhere) and count > 2 * len(indices) > 0  # the page counts all points in the lasso, not the drawn ones
