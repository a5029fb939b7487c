"""Two tabs on one data set in real Chromium: every edit applies only to what its tab showed.

Tab 1 commits first; tab 2, still showing the older version, then acts. For the
review queue, the review table, the Compare page's revert and a confusion cell
sent to the map, tab 2's edit must (a) apply to the sample it displayed, never
the next one, and (b) be refused with a clear conflict that keeps its work.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pandas as pd
import pytest

from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import import_dataset
from labelloop.data.runs import list_runs
from labelloop.data.workspace import open_table
from labelloop.embed import EmbedderConfig, embed_dataset
from labelloop.maps.config import ProjectionConfig
from labelloop.maps.project import project_dataset
from labelloop.maps.view import default_message
from labelloop.train.heads import HeadsSettings
from labelloop.train.pipeline import train
from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    click_a_cell_with_samples,
    commit_map_edit,
    lasso,
    needs_chromium,
    running_app,
    screenshot,
    wait_for_version,
)
from tests.conftest import write_fashion_folders

pytestmark = [needs_chromium, pytest.mark.slow]
CONFLICT = "This data set changed since"
SHOWN_ID = re.compile(r"^#\d+$")


@pytest.fixture
def flipped(tmp_path: Path, workspace: Path) -> Path:
    """160 real photos, 24 labels flipped (v2), embedded, mapped, and the quick heads trained on v2."""
    table, _ = import_dataset(write_fashion_folders(tmp_path / "fashion", 16), "fashion", workspace)
    rows = table.read(1)
    classes = table.classes(1)
    chosen = rows.iloc[::6].head(24)
    wrong = [classes[(classes.index(label) + 3) % len(classes)] for label in chosen["label"]]
    table.commit(ChangeSet(updates=pd.DataFrame({"sample_id": chosen["sample_id"].to_numpy(), "label": wrong})), parent=1, message="24 flips")
    embed_dataset(workspace, "fashion", EmbedderConfig(kind="pixels", resolution=16))
    project_dataset(workspace, "fashion", "pixels-16px", ProjectionConfig(dims=3))
    train(workspace, "fashion", HeadsSettings(heads=("knn", "logreg"), embedding="pixels-16px"), version=2)
    return workspace


def shown_sample(tab) -> int:
    """The sample id the review queue displays (its bold '#123')."""
    return int(tab.locator("strong", has_text=SHOWN_ID).first.inner_text().lstrip("#"))


def label_of(workspace: Path, sample_id: int, version: int | None = None) -> str:
    rows = open_table(workspace, "fashion").read(version)
    return rows.loc[rows["sample_id"] == sample_id, "label"].item()


def wait_for_runs(workspace: Path, version: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not list_runs(workspace, "fashion", version):
        assert time.time() < deadline, f"the background quick heads never finished on v{version}"
        time.sleep(0.5)


def test_every_edit_applies_only_to_what_its_tab_showed(flipped: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    workspace = flipped
    with running_app(workspace, tmp_path / "streamlit.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tabs = [browser.new_page(viewport={"width": 1440, "height": 900}) for _ in range(2)]
        errors: list[str] = []
        for tab in tabs:
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
        one, two = tabs
        try:
            # ---- 1. The review queue: tab 2's A key decides the sample tab 2 shows, and its commit is refused.
            for tab in tabs:
                tab.goto(f"{url}/review?dataset=fashion")
                tab.get_by_text("Review queue").click(timeout=60_000)
                tab.get_by_text("Keyboard: A accept").wait_for(timeout=60_000)
            first = shown_sample(one)
            assert shown_sample(two) == first
            shown_label = label_of(workspace, first, 2)
            one.get_by_role("button", name=re.compile(r"^Accept '")).click()
            one.get_by_text("1 decision(s) waiting").wait_for(timeout=30_000)
            one.get_by_role("button", name=re.compile(r"^Commit 1 decision")).click()
            wait_for_version(workspace, "fashion", 3)
            accepted = label_of(workspace, first, 3)
            assert accepted != shown_label

            two.keyboard.press("a")  # tab 2 still shows `first` on v2
            two.get_by_text("1 decision(s) waiting").wait_for(timeout=30_000)
            # It moved on past the sample it decided (the page redraws a moment after the count).
            expect(two.locator("strong", has_text=SHOWN_ID).first).not_to_have_text(f"#{first}", timeout=30_000)
            two.get_by_text("v3 was committed elsewhere").wait_for(timeout=30_000)  # and says v3 exists
            two.get_by_role("button", name=re.compile(r"^Commit 1 decision")).click()
            two.get_by_text(CONFLICT).wait_for(timeout=30_000)
            screenshot(two, "two-tabs-1-queue-conflict")
            assert open_table(workspace, "fashion").head_version() == 3  # nothing written
            two.get_by_role("button", name="Reload v3").click()
            # On v3 the decision is about a label the sample no longer has: dropped at once, and said so, before
            # any counter counts it (the counter and the Commit button used to offer it still).
            two.get_by_text("no longer has").wait_for(timeout=30_000)
            two.get_by_text(f"#{first}").first.wait_for(timeout=30_000)
            two.get_by_text("0 decision(s) waiting").wait_for(timeout=30_000)
            expect(two.get_by_role("button", name=re.compile(r"^Commit \d+ decision"))).to_have_count(0)
            assert open_table(workspace, "fashion").head_version() == 3 and label_of(workspace, first) == accepted

            # ---- 2. The Compare page's revert of a label-flow cell: tab 2's revert is refused.
            for tab in tabs:
                tab.goto(f"{url}/compare?dataset=fashion")
                tab.get_by_text("Label flow v2 → v3").wait_for(timeout=60_000)
                chart = tab.locator('[class*="st-key-flow-"] [data-testid="stVegaLiteChart"]').first
                box = chart.bounding_box()
                tab.mouse.click(box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.35)  # the flow's only cell
                tab.get_by_role("button", name=re.compile(r"^Revert these 1 ")).wait_for(timeout=30_000)
            one.get_by_role("button", name=re.compile(r"^Revert these 1 ")).click()
            wait_for_version(workspace, "fashion", 4)
            assert label_of(workspace, first) == shown_label
            two.get_by_role("button", name=re.compile(r"^Revert these 1 ")).click()
            two.get_by_text(CONFLICT).wait_for(timeout=30_000)
            screenshot(two, "two-tabs-2-revert-conflict")
            assert open_table(workspace, "fashion").head_version() == 4
            two.get_by_role("button", name="Reload v4").click()
            expect(two.get_by_text(CONFLICT)).to_have_count(0, timeout=30_000)

            # ---- 3. The review table: tab 2's page of accepted predictions is refused.
            wait_for_runs(workspace, 4)
            for tab in tabs:
                tab.goto(f"{url}/review?dataset=fashion")
                tab.get_by_role("button", name="Tick 'accept' on every row of this page").click(timeout=60_000)
                tab.get_by_role("button", name=re.compile(r"^Commit \d+ change")).wait_for(timeout=30_000)
            one.get_by_role("button", name=re.compile(r"^Commit \d+ change")).click()
            wait_for_version(workspace, "fashion", 5)
            two.get_by_role("button", name=re.compile(r"^Commit \d+ change")).click()
            two.get_by_text(CONFLICT).wait_for(timeout=30_000)
            screenshot(two, "two-tabs-3-table-conflict")
            assert open_table(workspace, "fashion").head_version() == 5
            two.get_by_role("button", name="Reload v5").click()
            expect(two.get_by_text(CONFLICT)).to_have_count(0, timeout=30_000)

            # ---- 4. A confusion cell sent to the map: tab 2's relabel of it is refused and keeps the selection.
            wait_for_runs(workspace, 5)
            two.goto(f"{url}/train?dataset=fashion")
            chart = two.locator('[class*="st-key-confusion-"] [data-testid="stVegaLiteChart"]').first
            chart.wait_for(timeout=60_000)
            sent = click_a_cell_with_samples(two, chart)
            send = two.get_by_role("button", name="Send these to the map as a selection")
            send.click()
            root = two.locator(".map-root")
            expect(root).to_have_attribute("data-selected", str(sent), timeout=60_000)

            one.goto(f"{url}/map?dataset=fashion")
            expect(one.locator(".map-root")).to_have_attribute("data-ready", "1", timeout=60_000)
            stage = one.locator(".map-stage").bounding_box()
            one.get_by_text("Lasso: off (L)").click()
            lasso(one, stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2, 120)
            picked = int(one.locator(".map-root").get_attribute("data-selected"))
            one.get_by_text(f"{picked:,} selected", exact=True).wait_for(timeout=30_000)
            one.get_by_text("exclude", exact=True).click()
            expect(one.get_by_role("textbox", name="Commit message")).to_have_value(default_message(picked, "exclude"), timeout=30_000)
            commit_map_edit(one, picked)
            wait_for_version(workspace, "fashion", 6)
            # Tab 2's map is told at once, untouched (it learnt of it only at its next click before).
            two.get_by_text("v6 was committed elsewhere").wait_for(timeout=30_000)

            two.get_by_text("exclude", exact=True).click()
            expect(two.get_by_role("textbox", name="Commit message")).to_have_value(default_message(sent, "exclude"), timeout=30_000)
            commit_map_edit(two, sent)
            two.get_by_text(CONFLICT).wait_for(timeout=30_000)
            expect(root).to_have_attribute("data-selected", str(sent))  # the selection is kept
            screenshot(two, "two-tabs-4-map-conflict")
            assert open_table(workspace, "fashion").head_version() == 6
            two.get_by_role("button", name="Reload v6").click()
            expect(two.get_by_text(CONFLICT)).to_have_count(0, timeout=30_000)
            expect(root).to_have_attribute("data-selected", str(sent), timeout=30_000)  # still the user's selection, now on v6
            expect(two.get_by_role("button", name=re.compile(r"^Commit .*as a new version$"))).to_be_enabled(timeout=30_000)
        except Exception:
            for number, tab in enumerate(tabs, 1):
                screenshot(tab, f"two-tabs-failure-tab{number}")
            raise
        browser.close()
    assert not errors, errors
