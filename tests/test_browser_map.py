"""The 3D map in a real browser: load, rotate, hover, lasso, relabel to a new class, commit; a mixed lasso on a 1440x900 screen."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from labelloop.data.changes import ChangeSet
from labelloop.data.ingest import import_dataset
from labelloop.data.runs import find_run, list_runs, load_samples
from labelloop.data.schema import UNDEFINED
from labelloop.data.workspace import open_table
from labelloop.embed import EmbedderConfig, embed_dataset
from labelloop.maps.config import ProjectionConfig
from labelloop.maps.project import has_map, project_dataset
from labelloop.maps.view import CONFIDENT, CONFIRM_OVER
from labelloop.train.heads import HeadsSettings
from labelloop.train.pipeline import train
from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    choose,
    commit_map_edit,
    lasso,
    needs_chromium,
    open_map,
    running_app,
    screenshot,
    wait_for_version,
)
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
        commit_map_edit(page, smaller)
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


def test_a_relabel_waits_for_a_chosen_class_and_a_big_edit_asks_once(mapped: Path, tmp_path: Path):
    """Issue 27: no edit is armed before the user chooses it, and one that changes more than CONFIRM_OVER
    samples names its count and asks once (a stray click relabelled hundreds of samples before)."""
    from playwright.sync_api import expect, sync_playwright

    with running_app(mapped, tmp_path / "streamlit.log") as url, sync_playwright() as playwright:
        browser, page, root = open_map(playwright, url)
        stage = page.locator(".map-stage").bounding_box()
        page.get_by_text("Lasso: off (L)").click()
        lasso(page, stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2, min(stage["width"], stage["height"]) / 2 - 4)
        selected = int(root.get_attribute("data-selected"))
        page.get_by_text(f"{selected:,} selected", exact=True).wait_for(timeout=20_000)
        pills = page.get_by_role("toolbar", name="Labels in the edit").get_by_role("button")
        expect(pills.first).to_be_visible(timeout=20_000)
        mix = {text.rsplit(" · ", 1)[0]: int(text.rsplit(" · ", 1)[1].replace(",", "")) for text in pills.all_inner_texts()}
        changes = selected - mix["bag"]
        assert changes > CONFIRM_OVER, (selected, mix)  # the lasso must be big enough to ask

        commit = page.get_by_role("button", name=re.compile(r"^Commit .*as a new version$"))
        expect(page.get_by_text("Choose the class to relabel to")).to_be_visible()
        expect(page.get_by_role("textbox", name="Commit message")).to_have_value("")
        expect(commit).to_be_disabled()
        screenshot(page, "map-nothing-armed")

        choose(page, "Label", "bag")
        button = page.get_by_role("button", name=f"Commit {changes:,} changes as a new version")
        expect(button).to_be_enabled(timeout=20_000)
        button.click()
        question = page.get_by_text(f"This edit will relabel {changes:,} samples as bag. Commit it?")
        expect(question).to_be_visible(timeout=20_000)
        screenshot(page, "map-big-edit-asks")
        page.get_by_role("button", name="Not now").click()
        expect(question).to_have_count(0, timeout=20_000)
        assert open_table(mapped, "fashion").head_version() == 1  # asking wrote nothing

        button.click()
        page.get_by_role("button", name=f"Yes, relabel {changes:,} samples as bag").click(timeout=20_000)
        wait_for_version(mapped, "fashion", 2)
        browser.close()
    table = open_table(mapped, "fashion")
    before, after = table.read(1).set_index("sample_id"), table.read(2).set_index("sample_id")
    assert int((before["label"] != after["label"]).sum()) == changes and (after["label"] == "bag").sum() == changes + 20


def test_map_settings_come_from_their_declaration_and_make_a_map_of_their_own(mapped: Path, tmp_path: Path):
    """Map settings: out of range is refused by label; other settings are a map of their own (made on request,
    cached apart); the defaults bring the first map back without projecting again."""
    from playwright.sync_api import expect, sync_playwright

    with running_app(mapped, tmp_path / "streamlit.log") as url, sync_playwright() as playwright:
        browser, page, root = open_map(playwright, url)
        page.get_by_text("Map settings: PaCMAP, the defaults").click()
        neighbours = page.get_by_role("spinbutton", name="Neighbours")
        expect(neighbours).to_have_value("10")
        for info in ProjectionConfig.settings():  # every setting but the dimensions (the View) has its widget, by its label
            if info.name != "dims":
                expect(page.get_by_label(info.label, exact=True).first).to_be_visible()
        page.get_by_role("textbox", name="Iterations").fill("100,100")
        page.get_by_role("textbox", name="Iterations").press("Tab")
        page.get_by_role("button", name="Use these settings").click()
        expect(page.get_by_text("Iterations takes 3 values, not 2")).to_be_visible(timeout=20_000)

        page.get_by_role("textbox", name="Iterations").fill("100,100,100")
        page.get_by_role("textbox", name="Iterations").press("Tab")
        neighbours.fill("15")
        neighbours.press("Tab")  # a number input takes its value when it loses focus
        page.get_by_role("button", name="Use these settings").click()
        expect(page.get_by_text("No 3D map of this embedding with these settings yet")).to_be_visible(timeout=20_000)
        expect(page.get_by_text("Map settings: Neighbours 15")).to_be_visible()
        page.get_by_role("button", name="Project to 3D with PaCMAP").click()
        expect(root).to_have_attribute("data-ready", "1", timeout=120_000)
        expect(root).to_have_attribute("data-points", "200")
        expect(page.get_by_text("pacmap 3D map of 200 images (Neighbours 15)")).to_be_visible()  # says which map it is
        screenshot(page, "map-settings-changed")
        assert has_map(mapped, "fashion", "pixels-16px", ProjectionConfig(n_neighbors=15)) and has_map(mapped, "fashion", "pixels-16px", ProjectionConfig())

        page.get_by_text("Map settings: Neighbours 15").click()
        page.get_by_role("button", name="Back to the defaults").click()
        expect(page.get_by_text("Map settings: PaCMAP, the defaults")).to_be_visible(timeout=20_000)
        expect(root).to_have_attribute("data-ready", "1", timeout=60_000)
        browser.close()


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
        commit_map_edit(tabs[0], counts[0])
        wait_for_version(mapped, "fashion", 2)
        commit_map_edit(tabs[1], counts[1])
        tabs[1].get_by_text("This data set changed since this page showed it").wait_for(timeout=20_000)
        screenshot(tabs[1], "map-conflict")
        assert open_table(mapped, "fashion").head_version() == 2  # the second commit wrote nothing
        tabs[1].get_by_role("button", name="Reload").click()
        expect(tabs[1].locator(".map-root")).to_have_attribute("data-selected", str(counts[1]), timeout=30_000)
        tabs[1].get_by_text(f"{counts[1]:,} selected", exact=True).wait_for(timeout=20_000)  # the selection survived
        browser.close()


@pytest.fixture
def mixed(tmp_path: Path, workspace: Path) -> Path:
    """200 images where a quarter are not labelled yet (v2), so every region of the map holds several labels; scores from k-NN on v2."""
    import_dataset(write_fashion_folders(tmp_path / "fashion", 20), "fashion", workspace)
    table = open_table(workspace, "fashion")
    table.commit(ChangeSet.relabel(table.read(1)["sample_id"].to_numpy()[::4], UNDEFINED), parent=1, message="a quarter not labelled yet")
    embed_dataset(workspace, "fashion", EmbedderConfig(kind="pixels", resolution=16))
    project_dataset(workspace, "fashion", "pixels-16px", ProjectionConfig(dims=3))
    train(workspace, "fashion", HeadsSettings(embedding="pixels-16px", heads=("knn",)), version=2)
    return workspace


def test_a_mixed_lasso_on_a_laptop_screen_shows_every_label_and_edits_only_what_is_left_in(mixed: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    with running_app(mixed, tmp_path / "streamlit.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{url}/map?dataset=fashion")
        root = page.locator(".map-root")
        expect(root).to_have_attribute("data-ready", "1", timeout=60_000)

        # L works right away, before any click on the map; Escape leaves lasso mode.
        page.keyboard.press("l")
        expect(root).to_have_attribute("data-mode", "lasso")
        expect(page.get_by_role("button", name="Lasso: on (L)")).to_be_visible()
        page.keyboard.press("Escape")
        expect(root).to_have_attribute("data-mode", "rotate")
        page.keyboard.press("L")
        expect(root).to_have_attribute("data-mode", "lasso")

        # The legend lies on the map: a swatch, name and count per class, undefined and excluded.
        expect(root).to_have_attribute("data-legend", "12")
        legend = page.locator(".map-legend")
        expect(legend).to_be_visible()
        expect(legend.locator(".map-legend-row")).to_have_count(12)
        expect(legend).to_contain_text("undefined")
        swatches = legend.locator(".map-legend-swatch").evaluate_all("nodes => nodes.map(n => getComputedStyle(n).backgroundColor)")
        assert len(set(swatches)) == 12, swatches  # one distinct colour each
        screenshot(page, "map-mixed-loaded")

        # A lasso over most of the cloud: several labels, undefined among them.
        stage = page.locator(".map-stage").bounding_box()
        lasso(page, stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2, min(stage["width"], stage["height"]) * 0.3)
        selected = int(root.get_attribute("data-selected"))
        page.get_by_text(f"{selected:,} selected", exact=True).wait_for(timeout=20_000)
        pills = page.get_by_role("toolbar", name="Labels in the edit").get_by_role("button")
        expect(pills.first).to_be_visible(timeout=20_000)
        mix = {}  # label -> count, most common first, as the page lists them ("bag · 4")
        for text in pills.all_inner_texts():
            label, count = text.rsplit(" · ", 1)
            mix[label] = int(count.replace(",", ""))
        assert sum(mix.values()) == selected and len(mix) >= 4 and UNDEFINED in mix, mix
        captions = page.locator(".st-key-map-thumbnails [data-testid=stImageCaption]")
        expect(captions.first).to_be_visible()
        # Every label has a thumbnail, captioned "#sample_id label".
        assert {text.split(" ", 1)[1] for text in captions.all_inner_texts()} == set(mix), (captions.all_inner_texts(), mix)

        # The map and the thumbnails are in view together, side by side, at 1440x900.
        first_thumbnail = page.locator(".st-key-map-thumbnails img").first.bounding_box()
        stage = page.locator(".map-stage").bounding_box()
        assert stage["y"] + stage["height"] <= 900 and first_thumbnail["y"] + first_thumbnail["height"] <= 900, (stage, first_thumbnail)
        assert first_thumbnail["x"] > stage["x"] + stage["width"]
        screenshot(page, "map-mixed-selected")

        # Nothing is armed: no class is chosen, the message is empty and the commit is off until the user picks one.
        message = page.get_by_role("textbox", name="Commit message")
        expect(message).to_have_value("")
        expect(page.get_by_role("button", name=re.compile(r"^Commit .*as a new version$"))).to_be_disabled()
        # Relabel to the cluster's majority class, leaving one label out of the edit.
        target = next(label for label in mix if label != UNDEFINED)
        left_out = next(label for label in reversed(mix) if label not in (UNDEFINED, target))
        choose(page, "Label", target)
        expect(message).to_have_value(f"lasso: {selected - mix[target]:,} samples -> {target}", timeout=20_000)
        pills.filter(has_text=f"{left_out} · ").click()
        expected = selected - mix[target] - mix[left_out]
        expect(message).to_have_value(f"lasso: {expected:,} samples -> {target}", timeout=20_000)

        # The model (k-NN on v2) is sure some of them are right already: the page says how many, shows them, one click leaves them out.
        warning = page.get_by_text("the model confidently thinks", exact=False).first
        expect(warning).to_be_visible(timeout=20_000)
        sure = int(warning.inner_text().split(" of these")[0].replace(",", ""))
        assert 0 < sure <= expected
        expect(page.locator(".st-key-map-confident-thumbnails img").first).to_be_visible()
        warning.scroll_into_view_if_needed()
        screenshot(page, "map-mixed-confident")
        page.get_by_role("button", name=f"Leave these {sure:,} out of the edit").click()
        expected -= sure
        expect(message).to_have_value(f"lasso: {expected:,} samples -> {target}", timeout=20_000)

        # One sample seen among the thumbnails (an undefined one: in the edit for sure) is left out on its own.
        choose(page, "Leave these samples out", UNDEFINED)
        page.keyboard.press("Escape")  # close the list, as a user clicking elsewhere would
        box = page.get_by_test_id("stMultiSelect").filter(has_text="Leave these samples out")
        dropped = int(re.search(rf"#(\d+) {UNDEFINED}", box.inner_text()).group(1))
        expected -= 1
        expect(message).to_have_value(f"lasso: {expected:,} samples -> {target}", timeout=20_000)
        expect(page.get_by_text("1 left out by you")).to_be_visible()

        # Keys typed into a text box stay there: "l" does not toggle the lasso.
        message.click()
        message.press("End")
        message.press_sequentially(", all looked at")
        expect(root).to_have_attribute("data-mode", "lasso")
        message.press("Enter")
        expect(message).to_have_value(f"lasso: {expected:,} samples -> {target}, all looked at")

        commit = page.get_by_role("button", name=re.compile(r"^Commit .*as a new version$"))
        commit.scroll_into_view_if_needed()
        screenshot(page, "map-mixed-before-commit")
        commit_map_edit(page, expected)
        wait_for_version(mixed, "fashion", 3)
        page.get_by_text("Committed as v3").wait_for(timeout=30_000)
        expect(commit).to_be_disabled()  # the same change cannot be committed twice
        expect(message).to_have_value(f"lasso: {expected:,} samples -> {target}, all looked at")  # what was committed, not a new suggestion
        screenshot(page, "map-mixed-committed")
        browser.close()
    assert not errors, errors
    committed = open_table(mixed, "fashion").read(3).set_index("sample_id")["label"]
    assert committed.at[dropped] == UNDEFINED and (committed == target).sum() > 0  # the sample left out kept its label

    table = open_table(mixed, "fashion")
    before, after = table.read(2).set_index("sample_id"), table.read(3).set_index("sample_id")
    changed = before.index[before["label"] != after["label"]]
    assert len(changed) == expected and (after.loc[changed, "label"] == target).all()
    assert not (before.loc[changed, "label"] == left_out).any()  # the label left out of the edit is untouched
    scores = load_samples(find_run(mixed, "fashion", version=2, with_samples=True)).set_index("sample_id").loc[changed]
    assert not ((scores["predicted_label"] == before.loc[changed, "label"]) & (scores["confidence"] >= CONFIDENT)).any()  # nor the ones the model was sure of
    assert table.history()[-1].message == f"lasso: {expected:,} samples -> {target}, all looked at"


def test_one_session_on_the_map_colours_a_page_switch_and_a_background_refresh(mapped: Path, tmp_path: Path):
    """Issue 27, in one session (one app, one browser: the suite's time):

    - colours: undefined and excluded points were drawn in dark greys that vanished on the map, and every point was
      drawn darker than its legend swatch (the palette went through three.js's linear colour space into a shader
      that never converts back). Read back from the canvas's pixels, each legend entry is drawn in exactly its
      swatch's colour, and the drawn colours differ by a set contrast;
    - a page switch lost the map's selection and the page's choices;
    - the Compute panel and the model picker folded up when the scores refreshed in the background after a commit.
    """
    import io
    from itertools import combinations

    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from tests.colours import contrast, delta_e, hex_of, lab

    table = open_table(mapped, "fashion")
    ids = table.read(1)["sample_id"].to_numpy()
    table.commit(ChangeSet.relabel(ids[::5], UNDEFINED), parent=1, message="unlabel a fifth")
    table.commit(ChangeSet.set_weight(ids[1::7], 0.0), parent=2, message="exclude a few")
    train(mapped, "fashion", HeadsSettings(heads=("knn",), embedding="pixels-16px"))  # a heads run: commits get their quick heads
    with running_app(mapped, tmp_path / "streamlit.log") as url, sync_playwright() as playwright:
        browser, page, root = open_map(playwright, url)

        # ---- 1. The drawn colours.
        legend = page.locator(".map-legend-row").evaluate_all(
            "rows => rows.map(r => [r.querySelector('.map-legend-name').textContent, getComputedStyle(r.querySelector('.map-legend-swatch')).backgroundColor, r.querySelector('.map-legend-count').textContent])"
        )
        screenshot(page, "map-palette")
        page.get_by_role("button", name="Legend").click()  # the legend lies over the canvas: read the points alone
        page.wait_for_timeout(500)
        pixels = np.asarray(Image.open(io.BytesIO(page.locator(".map-stage canvas").first.screenshot())).convert("RGB")).reshape(-1, 3)
        swatches = {name: hex_of([int(v) for v in re.findall(r"\d+", colour)]) for name, colour, count in legend if count != "0"}
        assert {UNDEFINED, "excluded"} <= set(swatches) and len(swatches) == 12, legend
        drawn_colours, drawn_counts = np.unique(pixels, axis=0, return_counts=True)
        drawn = {hex_of(colour): int(count) for colour, count in zip(drawn_colours, drawn_counts)}
        background = max(drawn, key=drawn.get)
        assert background == "#0e1117"
        for name, colour in swatches.items():  # every entry drawn in its swatch's very colour
            assert drawn.get(colour, 0) >= 4, (name, colour, sorted(drawn.items(), key=lambda item: -item[1])[:16])
        points = sum(count for colour, count in drawn.items() if colour != background)
        assert sum(drawn[colour] for colour in swatches.values()) > 0.6 * points  # the rest: edges blended with the background
        classes = [colour for name, colour in swatches.items() if name not in (UNDEFINED, "excluded")]
        distances = {(a, b): delta_e(lab(a), lab(b)) for a, b in combinations(classes, 2)}
        assert min(distances.values()) > 10, min(distances.items(), key=lambda item: item[1])
        for special in (swatches[UNDEFINED], swatches["excluded"]):
            assert min(delta_e(lab(special), lab(c)) for c in classes) > 15 and contrast(special, background) > 4.5
        assert all(contrast(c, background) >= 3 for c in classes)

        # ---- 2. A page switch keeps the selection and the colouring.
        stage = page.locator(".map-stage").bounding_box()
        page.get_by_text("Lasso: off (L)").click()
        lasso(page, stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2, min(stage["width"], stage["height"]) / 4)
        selected = int(root.get_attribute("data-selected"))
        assert selected > 0
        page.get_by_text(f"{selected:,} selected", exact=True).wait_for(timeout=20_000)
        choose(page, "Colour by", "split")
        expect(page.get_by_role("combobox", name="Colour by")).to_have_value("split", timeout=20_000)
        page.get_by_test_id("stSidebarNav").get_by_text("Data", exact=True).click()  # within the app: the same session
        page.get_by_role("tab", name="Versions").wait_for(timeout=30_000)
        page.get_by_test_id("stSidebarNav").get_by_text("Map", exact=True).click()
        root = page.locator(".map-root")
        expect(root).to_have_attribute("data-ready", "1", timeout=60_000)
        expect(root).to_have_attribute("data-selected", str(selected), timeout=30_000)  # it was 0
        page.get_by_text(f"{selected:,} selected", exact=True).wait_for(timeout=20_000)
        expect(page.get_by_role("combobox", name="Colour by")).to_have_value("split")
        screenshot(page, "map-after-page-switch")

        # ---- 3. That selection excluded and committed: the quick heads retrain in the background meanwhile, and
        # the panels the user opens stay open when the refresh ends.
        page.get_by_text("exclude", exact=True).click()
        changes = int(re.search(r"The edit changes ([\d,]+)", page.get_by_text("The edit changes").inner_text(timeout=20_000)).group(1).replace(",", ""))
        commit_map_edit(page, changes)
        wait_for_version(mapped, "fashion", 4)
        page.get_by_text("Committed as v4").wait_for(timeout=30_000)
        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_text("Compute: Here, on").click()
        device = sidebar.get_by_role("combobox", name="Device")
        expect(device).to_be_visible(timeout=20_000)
        page.get_by_text("Embed with another model").click()
        picker = page.get_by_role("combobox", name="Model")
        expect(picker).to_be_visible(timeout=20_000)
        expect(sidebar.get_by_role("button", name="Show the new scores (v4)")).to_be_visible(timeout=120_000)  # the refresh has ended
        assert any(run.version == 4 for run in list_runs(mapped, "fashion"))
        page.wait_for_timeout(2_000)
        expect(device).to_be_visible()  # both folded up before
        expect(picker).to_be_visible()
        screenshot(page, "panels-after-refresh")
        browser.close()
