"""The 3D map in a real browser: load, rotate, hover, lasso, relabel to a new class, commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.embed import EmbedderConfig, embed_dataset
from core.ingest import import_dataset
from core.project import ProjectionConfig, project_dataset
from core.workspace import open_table
from tests.browser import CHROMIUM, CHROMIUM_ARGS, lasso, needs_chromium, running_app, screenshot, wait_for_version
from tests.conftest import write_fashion_folders

pytestmark = [needs_chromium, pytest.mark.slow]
TRICKY = '<b>odd</b> "label"'  # must show as text everywhere, never as HTML


@pytest.fixture
def mapped(tmp_path: Path, workspace: Path) -> Path:
    import_dataset(write_fashion_folders(tmp_path / "fashion", 20), "fashion", workspace)
    embed_dataset(workspace, "fashion", EmbedderConfig(kind="pixels", resolution=16))
    project_dataset(workspace, "fashion", "pixels-16px", ProjectionConfig(dims=3))
    return workspace


def test_lasso_relabel_and_commit_in_chromium(mapped: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    with running_app(mapped, tmp_path / "streamlit.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/map?dataset=fashion")
        root = page.locator(".map-root")
        expect(root).to_have_attribute("data-ready", "1", timeout=60_000)
        expect(root).to_have_attribute("data-points", "200")
        screenshot(page, "map-loaded")

        stage = page.locator(".map-stage").bounding_box()
        cx, cy = stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2
        camera_before = page.evaluate("() => Object.entries(localStorage).filter(([k]) => k.startsWith('labelloop-camera'))")
        page.mouse.move(cx, cy)
        page.mouse.down()
        page.mouse.move(cx + 150, cy + 60, steps=10)
        page.mouse.up()
        camera_after = page.evaluate("() => Object.entries(localStorage).filter(([k]) => k.startsWith('labelloop-camera'))")
        assert camera_after and camera_after != camera_before  # rotated, and the camera is remembered

        # Hover shows the id and label as text, and the thumbnail by URL.
        hovered = None
        for dx in range(-200, 200, 6):
            page.mouse.move(cx + dx, cy + dx / 3)
            page.wait_for_timeout(30)
            hovered = root.get_attribute("data-hover")
            if hovered:
                break
        assert hovered, "no point under the mouse anywhere on a diagonal through the map"
        tooltip = page.locator(".map-tooltip")
        expect(tooltip).to_contain_text(f"#{hovered}")
        assert page.evaluate("() => document.querySelector('.map-tooltip img') !== null") or tooltip.locator("img").count() == 1

        page.get_by_text("Lasso: off (L)").click()
        lasso(page, cx, cy, 160)
        selected = int(root.get_attribute("data-selected"))
        assert selected > 0
        page.get_by_text(f"{selected:,} selected", exact=True).wait_for(timeout=20_000)  # Python got the same selection
        lasso(page, cx, cy, 60, modifier="Alt")  # subtract the middle
        smaller = int(root.get_attribute("data-selected"))
        assert smaller < selected
        page.get_by_text(f"{smaller:,} selected", exact=True).wait_for(timeout=20_000)
        screenshot(page, "map-selected")

        page.get_by_role("textbox", name="or a new class").fill(TRICKY)
        page.get_by_role("textbox", name="or a new class").press("Enter")
        message = page.get_by_role("textbox", name="Commit message")
        expect(message).to_have_value(f"lasso: {smaller:,} samples -> {TRICKY}", timeout=20_000)
        page.get_by_role("button", name="Commit as a new version").click()
        wait_for_version(mapped, "fashion", 2)
        expect(root).to_have_attribute("data-selected", str(smaller), timeout=20_000)  # the selection stays
        screenshot(page, "map-committed")
        assert page.locator("b", has_text="odd").count() == 0  # the label never became markup
        browser.close()
    assert not errors, errors
    table = open_table(mapped, "fashion")
    assert table.head_version() == 2 and TRICKY in table.classes(2)
    assert (table.read(2)["label"] == TRICKY).sum() == smaller
    assert table.history()[-1].message == f"lasso: {smaller:,} samples -> {TRICKY}"


def test_two_tabs_the_second_commit_is_refused_and_keeps_its_selection(mapped: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    with running_app(mapped, tmp_path / "streamlit.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tabs = [browser.new_page(viewport={"width": 1400, "height": 1100}) for _ in range(2)]
        counts = []
        for tab in tabs:
            tab.goto(f"{url}/map?dataset=fashion")
            root = tab.locator(".map-root")
            expect(root).to_have_attribute("data-ready", "1", timeout=60_000)
            stage = tab.locator(".map-stage").bounding_box()
            tab.get_by_text("Lasso: off (L)").click()
            lasso(tab, stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2, 150)
            counts.append(int(root.get_attribute("data-selected")))
            tab.get_by_text(f"{counts[-1]:,} selected", exact=True).wait_for(timeout=20_000)
            tab.get_by_text("exclude", exact=True).click()
            expect(tab.get_by_role("textbox", name="Commit message")).to_have_value(f"lasso: exclude {counts[-1]:,} samples", timeout=20_000)
        tabs[0].get_by_role("button", name="Commit as a new version").click()
        wait_for_version(mapped, "fashion", 2)
        tabs[1].get_by_role("button", name="Commit as a new version").click()
        tabs[1].get_by_text("This data set changed since you loaded it").wait_for(timeout=20_000)
        screenshot(tabs[1], "map-conflict")
        assert open_table(mapped, "fashion").head_version() == 2  # the second commit wrote nothing
        tabs[1].get_by_role("button", name="Reload").click()
        expect(tabs[1].locator(".map-root")).to_have_attribute("data-selected", str(counts[1]), timeout=30_000)
        tabs[1].get_by_text(f"{counts[1]:,} selected", exact=True).wait_for(timeout=20_000)  # the selection survived
        browser.close()
