"""Shared by the browser tests: start the real app on a free port, launch headless Chromium (DESIGN.md)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless=new", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
]
ARTIFACTS = REPO / "test-artifacts"  # screenshots of every page the browser tests walk (git-ignored)
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian package chromium not installed (./test.sh installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(workspace: Path, log_path: Path, *, as_configured: bool = False, labelloop: tuple[str, ...] = (sys.executable, "-m", "labelloop"),
                cwd: Path = REPO, env: dict | None = None):
    """The app as `labelloop app` starts it, on its own port; yields the base URL once it answers its health check.

    ``as_configured``: pass nothing but the port, as run.sh does, so the app's .streamlit/config.toml
    alone decides the rest (the bind address included). ``labelloop``: the command that is labelloop
    (an installed console script, say), run in ``cwd`` with ``env`` (default: this process's).
    """
    port = free_port()
    settings = [] if as_configured else [
        "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*labelloop, "app", "--workspace", str(workspace), "--port", str(port), *settings],
            cwd=cwd, env=os.environ if env is None else env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    process.kill()
                    pytest.fail("the app did not start: " + log_path.read_text())
                time.sleep(0.3)
        try:
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:  # a background retrain can hold it up; it is only a test server
                process.kill()
                process.wait(timeout=20)


def settled(page, timeout: float = 30_000) -> None:
    """Wait until Streamlit's script run is over (the app root says so) and every image on the page has loaded."""
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            return app !== null && app.getAttribute('data-test-script-state') === 'notRunning' && [...document.images].every(i => i.complete);
        }""",
        timeout=timeout,
    )


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    settled(page)  # tables and images draw a moment after the text
    page.screenshot(path=str(path))
    return path


def wait_for_version(workspace: Path, name: str, version: int, timeout: float = 30) -> None:
    """Wait until the data set's head reaches ``version`` (toasts vanish; the table is the truth)."""
    from labelloop.data.workspace import open_table

    deadline = time.time() + timeout
    while open_table(workspace, name).head_version() < version:
        assert time.time() < deadline, f"version {version} of '{name}' was never committed"
        time.sleep(0.2)


def open_map(playwright, url: str, dataset: str = "fashion"):
    """(browser, page, the map's root element) with the Map page of ``dataset`` drawn in Chromium, 1400x1100."""
    from playwright.sync_api import expect

    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(f"{url}/map?dataset={dataset}")
    root = page.locator(".map-root")
    expect(root).to_have_attribute("data-ready", "1", timeout=60_000)
    return browser, page, root


def commit_map_edit(page, count: int) -> None:
    """Commit the Map's edit as a user does: one that changes more than CONFIRM_OVER samples names its count
    on the button and asks once."""
    from labelloop.maps.view import CONFIRM_OVER

    if count > CONFIRM_OVER:
        page.get_by_role("button", name=f"Commit {count:,} changes as a new version").click()
        page.get_by_role("button", name=re.compile(r"^Yes, ")).click(timeout=20_000)
    else:
        page.get_by_role("button", name="Commit as a new version").click()


def choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the select box labelled ``label``."""
    box = page.get_by_role("combobox", name=label)
    box.click()
    box.fill(option)  # the box filters its options as one types, as a user would find a class among many
    page.get_by_role("option").filter(has_text=option).first.click()


def lasso(page, cx: float, cy: float, radius: float, modifier: str | None = None, points: int = 32) -> None:
    """Draw a lasso ring around (cx, cy) as a user would: press, move round, release (``modifier`` held)."""
    if modifier:
        page.keyboard.down(modifier)
    page.mouse.move(cx + radius, cy)
    page.mouse.down()
    for k in range(1, points + 1):
        angle = 2 * math.pi * k / points
        page.mouse.move(cx + radius * math.cos(angle), cy + radius * math.sin(angle), steps=2)
    page.mouse.up()
    if modifier:
        page.keyboard.up(modifier)


def cells_with_samples(page, chart, wanted: int = 1) -> list[tuple[float, float, dict]]:
    """Up to ``wanted`` confusion-matrix cells that hold samples, found as a user finds them: by pointing at
    cells and reading the chart's tooltip. Each is (x, y, facts): where the pointer was, and the tooltip's
    given, predicted and count. Where such cells lie depends on the data and the layout, so no fixed position would do.
    """
    import numpy as np

    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    tooltip = page.locator("#vg-tooltip-element")
    found: list[tuple[float, float, dict]] = []
    for fy in np.linspace(0.04, 0.9, 30):
        for fx in np.linspace(0.2, 0.98, 16):
            x, y = box["x"] + box["width"] * fx, box["y"] + box["height"] * fy
            page.mouse.move(x, y)
            page.wait_for_timeout(40)
            if not tooltip.count() or not tooltip.is_visible():
                continue
            cells = tooltip.locator("td").all_inner_texts()  # key, value, key, value, ...
            facts = dict(zip(cells[::2], cells[1::2]))
            if facts.get("count", "0").replace(",", "") not in ("", "0") and all(facts != seen for _, _, seen in found):
                found.append((x, y, facts))
                if len(found) == wanted:
                    return found
    return found


def click_a_cell_with_samples(page, chart) -> int:
    """Click a confusion-matrix cell that holds samples (see :func:`cells_with_samples`); returns its count."""
    found = cells_with_samples(page, chart)
    assert found, "no confusion-matrix cell under the pointer showed a count above 0"
    x, y, facts = found[0]
    page.mouse.click(x, y)
    page.get_by_text(f"{facts['count']} samples labelled").first.wait_for(timeout=30_000)
    return int(facts["count"].replace(",", ""))
