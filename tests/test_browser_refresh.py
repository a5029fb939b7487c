"""A background score refresh that ends while the user works never redraws the page under the pointer (issue 27 item 9).

In real Chromium: the Train page shows a run's confusion matrix, the user has clicked a cell and is
pointing at another, and the quick heads retrained in the background on the same version finish. The
page must stay as it is (nothing moves, the selection stays), the click must land on the cell the user
aimed at, and a notice in the sidebar offers the new scores (which any later action shows too).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import import_dataset
from labelloop.data.runs import list_runs
from labelloop.data.workspace import DatasetPaths
from labelloop.embed import EmbedderConfig, embed_dataset
from labelloop.train.heads import HeadsSettings
from labelloop.train.pipeline import refresh_quick_heads, train
from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    cells_with_samples,
    needs_chromium,
    running_app,
    screenshot,
    settled,
)
from tests.conftest import write_fashion_folders

pytestmark = [needs_chromium, pytest.mark.slow]


@pytest.fixture
def trained(tmp_path: Path, workspace: Path) -> Path:
    """v2 (12 flips) embedded, with a run of the user's on v2 and the quick heads on v1 only (v2's are missing)."""
    table, _ = import_dataset(write_fashion_folders(tmp_path / "fashion", 16), "fashion", workspace)
    rows = table.read(1)
    classes = table.classes(1)
    chosen = rows.iloc[::13].head(12)
    wrong = [classes[(classes.index(label) + 3) % len(classes)] for label in chosen["label"]]
    table.commit(ChangeSet(updates=pd.DataFrame({"sample_id": chosen["sample_id"].to_numpy(), "label": wrong})), parent=1, message="12 flips")
    embed_dataset(workspace, "fashion", EmbedderConfig(kind="pixels", resolution=16))
    train(workspace, "fashion", HeadsSettings(heads=("knn",), embedding="pixels-16px"), version=2)  # not the quick heads' recipe
    refresh_quick_heads(DatasetPaths(workspace, "fashion"), 1)
    assert len(list_runs(workspace, "fashion", version=2)) == 1
    return workspace


def test_a_refresh_that_ends_mid_click_moves_nothing(trained: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    workspace = trained
    with running_app(workspace, tmp_path / "streamlit.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            # Start the quick heads on v2 in the background (the Compare page's button), then open the Train page
            # in the same session while they run: its sidebar polls the refresh.
            page.goto(f"{url}/compare?dataset=fashion")
            page.get_by_role("button", name="Train the quick heads on v2 (in the background)").click(timeout=60_000)
            page.get_by_text("updating scores for v2").first.wait_for(timeout=30_000)
            page.locator('[data-testid="stSidebarNav"] a', has_text="Train").click()  # a page of the same session, not a new one
            chart = page.locator('[class*="st-key-confusion-"] [data-testid="stVegaLiteChart"]').first
            chart.wait_for(timeout=60_000)
            settled(page)
            assert list_runs(workspace, "fashion", version=2)[0].summary.trigger == "user", "the refresh ended before the page was drawn: nothing tested"
            expect(page.get_by_text("updating scores")).to_have_count(1)  # the sidebar is following the refresh

            # The user clicks one cell, and points at another.
            (x1, y1, first), (x2, y2, second) = cells_with_samples(page, chart, wanted=2)
            page.mouse.click(x1, y1)
            page.get_by_text(f"{first['count']} samples labelled {first['given']}, predicted {first['predicted']}").wait_for(timeout=30_000)
            settled(page)
            page.mouse.move(x2, y2)
            before = chart.bounding_box()

            # The refresh ends. Before the fix its timer reran the whole app: the run history gained a row and the chart
            # moved down under the pointer, so the next click landed on the cell above the one aimed at.
            deadline = time.time() + 240
            while len(list_runs(workspace, "fashion", version=2)) < 2:
                assert time.time() < deadline, "the quick heads on v2 never finished"
                time.sleep(0.2)
            # The run is listed a moment before its job ends (under load, seconds): wait for the job's end, as the
            # sidebar shows it, before judging what that end did to the page.
            notice = page.get_by_role("button", name="Show the new scores (v2)")
            expect(notice).to_be_visible(timeout=60_000)
            page.wait_for_timeout(3_000)  # three ticks of the sidebar's poll: any rerun it started would be over
            settled(page)
            assert chart.bounding_box() == before, f"the confusion matrix moved under the pointer: {before} -> {chart.bounding_box()}"
            expect(page.get_by_text(f"{first['count']} samples labelled {first['given']}, predicted {first['predicted']}")).to_be_visible()  # the selection stays
            screenshot(page, "refresh-1-notice")

            page.mouse.click(x2, y2)  # where the user was pointing: the cell they aimed at
            page.get_by_text(f"{second['count']} samples labelled {second['given']}, predicted {second['predicted']}").wait_for(timeout=30_000)

            # That click's rerun shows the new scores (the run picker offers the refresh's run), the notice is gone.
            expect(notice).to_have_count(0, timeout=30_000)
            page.get_by_test_id("stSelectbox").filter(has_text="Show run").locator("input").click()
            expect(page.get_by_role("option").filter(has_text="automatic, after a commit")).to_have_count(1, timeout=30_000)
            page.keyboard.press("Escape")
            screenshot(page, "refresh-2-next-click")
        except Exception:
            screenshot(page, "refresh-failure")
            raise
        browser.close()
    assert not errors, errors
