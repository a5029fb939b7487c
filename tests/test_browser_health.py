"""The Health page in a real browser: nothing is picked that the user did not pick, and keys act where the user is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labelloop.data.ingest import import_dataset
from labelloop.embed import EmbedderConfig, embed_dataset
from labelloop.scores.health import compute_health
from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    needs_chromium,
    running_app,
    screenshot,
)
from tests.conftest import write_fashion_folders

pytestmark = [needs_chromium, pytest.mark.slow]
PAGE_SIZE = 24  # the Health page's thumbnails per page (importing a page would run it)


def test_a_check_with_more_flags_than_the_screen_picks_none_then_exactly_those_on_screen(tmp_path: Path, workspace: Path):
    """Issue 27: the Outlier view showed 24 of 40 thumbnails with all 40 ticked and 'Exclude 40 picked' armed, no 'pick
    none', and Space toggled the view back to the Overview."""
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from labelloop.scores.checks import CHECKS

    root = write_fashion_folders(tmp_path / "fashion", 30)
    for number, source in enumerate(sorted(root.rglob("*.png"))[:40]):  # 40 underexposed shots among 300
        dark = (np.asarray(Image.open(source), dtype=np.float64) * 0.06).astype(np.uint8)
        Image.fromarray(dark, "L").save(source.with_name(f"dark-{number}.png"))
    import_dataset(root, "fashion", workspace)
    embed_dataset(workspace, "fashion", EmbedderConfig(kind="pixels", resolution=16))
    report = compute_health(workspace, "fashion", embedding="pixels-16px", image_workers=1)  # cached: the page only reads it
    summary = report.summary()
    biggest = summary.loc[summary["flagged"].idxmax()]
    assert biggest["flagged"] > PAGE_SIZE, summary  # more flags than one screen holds
    view = f"{CHECKS[biggest['check']].title} ({biggest['flagged']:,})"

    with running_app(workspace, tmp_path / "streamlit.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        elsewhere: list[str] = []  # the app asks nothing of another host (a Material page icon was fetched from Google)
        page.on("request", lambda request: elsewhere.append(request.url) if not request.url.startswith(url) else None)
        page.goto(f"{url}/health?dataset=fashion")
        try:
            page.get_by_text(view, exact=True).click(timeout=60_000)
        except Exception:
            screenshot(page, "health-failure")
            raise
        exclude = page.get_by_role("button", name=re.compile(r"^Exclude \d+ picked$"))
        expect(exclude).to_have_text("Exclude 0 picked", timeout=30_000)  # nothing picked by itself
        expect(exclude).to_be_disabled()
        expect(page.get_by_role("button", name=re.compile(r"^Relabel \d+ picked"))).to_be_disabled()
        # The focus is on the pill just pressed: Space there (as a user scrolling with it would) keeps the view.
        page.keyboard.press("Space")
        page.wait_for_timeout(1500)
        expect(exclude).to_be_visible()
        expect(page.get_by_text(f"{biggest['flagged']:,} flagged and not excluded")).to_be_visible()
        screenshot(page, "health-nothing-picked")

        page.get_by_role("button", name=f"Pick all {PAGE_SIZE} on this page").click()
        expect(exclude).to_have_text(f"Exclude {PAGE_SIZE} picked", timeout=30_000)  # those on screen, not all flagged
        expect(page.get_by_role("button", name=f"Relabel {PAGE_SIZE} picked")).to_be_disabled()  # no class chosen for the user
        screenshot(page, "health-picked-on-screen")
        page.get_by_role("button", name="Pick none").click()
        expect(exclude).to_have_text("Exclude 0 picked", timeout=30_000)
        browser.close()
    assert not elsewhere, elsewhere
