"""End to end: the real server, a real headless Chromium."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import import_dataset
from tests.browser import CHROMIUM, CHROMIUM_ARGS, needs_chromium, running_app

pytestmark = [needs_chromium, pytest.mark.slow]


@pytest.fixture
def server(class_folders: Path, workspace: Path, tmp_path: Path):
    table, _ = import_dataset(class_folders, "animals", workspace)
    table.commit(ChangeSet.set_weight([1], 0.0), parent=1, message="exclude a blurry cat")
    with running_app(workspace, tmp_path / "streamlit.log") as url:
        yield url


def test_the_data_page_renders_in_chromium(server: str, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server)
        page.get_by_role("heading", name="animals").wait_for(timeout=60_000)
        page.get_by_text("Version 2 of 2 · exclude a blurry cat").wait_for(timeout=30_000)
        from playwright.sync_api import expect

        metrics = page.locator('[data-testid="stMetricValue"]')
        expect(metrics).to_have_text(["7", "3", "0", "1", "2"], timeout=30_000)
        page.get_by_role("tab", name="Classes").click()
        page.get_by_text("Samples per class across versions").wait_for()
        page.screenshot(path=str(tmp_path / "data-page.png"), full_page=True)
        assert "dataset=animals" in page.url  # the choice is in the URL, so a reload keeps it
        browser.close()
    assert not errors, errors


def test_three_js_is_served_for_the_map(server: str):
    # ./test.sh copies three.js from node_modules into the package's static/vendor/; `labelloop app` copies that into
    # the workspace's .app/static/, which the server serves; the 3D map imports it from there.
    body = urllib.request.urlopen(f"{server}/app/static/vendor/three/three.module.js", timeout=10).read()
    assert b"REVISION" in body


def test_importing_hundreds_of_images_through_the_page(server: str, tmp_path: Path, workspace: Path):
    # Over 256 files the import checks images in a process pool: it must work inside the Streamlit server.
    from playwright.sync_api import sync_playwright

    from tests.conftest import draw_image

    root = tmp_path / "many"
    for i in range(300):
        draw_image(root / ("left" if i % 2 else "right") / f"{i}.png", 1000 + i, size=(16, 16))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(server)
        page.get_by_role("heading", name="animals").wait_for(timeout=60_000)
        page.get_by_role("tab", name="Import").click()
        page.get_by_role("textbox", name="Folder or manifest").fill(str(root))
        page.get_by_role("textbox", name="New data set name").fill("many")
        page.get_by_role("button", name="Import").click()
        page.get_by_text("Created 'many': imported 300 of 300 files").wait_for(timeout=120_000)
        browser.close()
    from labelloop.data.workspace import open_table

    assert len(open_table(workspace, "many").read()) == 300
