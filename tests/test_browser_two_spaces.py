"""One selection, two spaces: two embeddings' maps side by side in a real browser; a lasso in either
selects the same samples in both."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.data.tables import LabelTable
from labelloop.data.workspace import DatasetPaths
from labelloop.embed.cache import EmbeddingCache
from labelloop.maps.project import project_dataset
from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    lasso,
    needs_chromium,
    running_app,
    screenshot,
)

pytestmark = [needs_chromium, pytest.mark.slow]
N = 2_000
CLASSES = [f"class{i}" for i in range(4)]


@pytest.fixture
def two_spaces(tmp_path: Path) -> Path:
    """2,000 samples with two 16-d embeddings: in "mixed" classes 0 and 1 share one cluster, in "clean" each class has its own."""
    workspace = tmp_path / "workspace"
    rng = np.random.default_rng(0)
    paths = DatasetPaths(workspace, "two")
    labels = rng.integers(0, len(CLASSES), size=N)
    hashes = np.array([f"{i:032x}" for i in range(N)])
    LabelTable.create(paths.labels, pd.DataFrame({"path": [f"/data/{i}.jpg" for i in range(N)], "label": np.asarray(CLASSES)[labels], "content_hash": hashes}),
                      CLASSES, lock_path=paths.commit_lock)
    centres = rng.normal(size=(len(CLASSES), 16)).astype(np.float32) * 4
    for key, cluster in (("clean", labels), ("mixed", np.where(labels == 1, 0, labels))):
        cache = EmbeddingCache(paths.embedding(key))
        cache.write_meta({"key": key, "description": f"{key} space", "dim": 16, "config": {"kind": "pixels"}, "warnings": []})
        cache.append(list(hashes), (centres[cluster] + rng.normal(size=(N, 16)).astype(np.float32)).astype(np.float32))
        project_dataset(workspace, "two", key)
    return workspace


def _selected(root) -> set[int]:
    return {int(i) for i in (root.get_attribute("data-selected-indices") or "").split(",") if i}


def test_a_lasso_in_either_map_selects_the_same_samples_in_both(two_spaces: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    from labelloop.app.components.scatter3d import publish_map
    from labelloop.maps.config import ProjectionConfig
    from labelloop.maps.project import project_dataset

    # Which sample each drawn point of each map is, as the page publishes them.
    ids = {}
    for key in ("clean", "mixed"):
        projection = project_dataset(two_spaces, "two", key, ProjectionConfig(dims=3), compute=False)
        rows = LabelTable(DatasetPaths(two_spaces, "two").labels).read().set_index("sample_id").reindex(projection.sample_ids)
        ids[key] = publish_map(projection.sample_ids, projection.coords, rows["content_hash"], f"two/{key}/3", static=tmp_path / "ids-only").drawn_ids
    with running_app(two_spaces, tmp_path / "app.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/map?dataset=two")
        expect(page.locator(".map-root").first).to_have_attribute("data-ready", "1", timeout=90_000)
        page.locator("[data-testid=stSelectbox]").filter(has_text="Side by side with").click()
        other = page.get_by_role("option").filter(has_text="space")  # the one embedding not on the left already
        second_key = "clean" if "clean space" in other.inner_text() else "mixed"
        first_key = "mixed" if second_key == "clean" else "clean"
        other.click()
        roots = page.locator(".map-root")
        expect(roots).to_have_count(2, timeout=60_000)
        for i in range(2):
            expect(roots.nth(i)).to_have_attribute("data-ready", "1", timeout=90_000)

        for lassoed, other in ((0, 1), (1, 0)):  # lasso in the left map, then in the right one
            stage = page.locator(".map-stage").nth(lassoed).bounding_box()
            page.get_by_text("Lasso: off (L)").nth(lassoed).click()
            lasso(page, stage["x"] + stage["width"] * 0.5, stage["y"] + stage["height"] * 0.5, min(stage["width"], stage["height"]) * 0.3)
            expect(roots.nth(lassoed)).to_have_attribute("data-selected", re.compile(r"^[1-9]\d*$"), timeout=20_000)
            caught = _selected(roots.nth(lassoed))
            keys = (first_key, second_key)
            wanted = set(ids[keys[lassoed]][sorted(caught)].tolist())
            expect(roots.nth(other)).to_have_attribute("data-selected", str(len(caught)), timeout=30_000)
            assert set(ids[keys[other]][sorted(_selected(roots.nth(other)))].tolist()) == wanted
            page.keyboard.press("Escape")
            screenshot(page, f"two-spaces-lasso-{'left' if lassoed == 0 else 'right'}")
            # Clearing in one map clears both: the next lasso starts from nothing selected anywhere.
            page.get_by_text("Clear selection").nth(lassoed).click()
            for i in range(2):
                expect(roots.nth(i)).to_have_attribute("data-selected", "0", timeout=30_000)
        browser.close()
    assert not errors, errors
