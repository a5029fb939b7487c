"""The package as a user installs it: a wheel built from the repo, installed without the repo, run from elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, CHROMIUM_ARGS, needs_chromium, running_app
from tests.conftest import REPO

pytestmark = [pytest.mark.slow]

# What a source tree holds that is not the package's source: never copied into the build.
NOT_SOURCE = {".git", ".venv", "node_modules", "tables", "test-artifacts", "build", ".pytest_cache", "__pycache__", "bench", "tests"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout (as `pip wheel .` builds it), installed with --no-deps into a
    folder of its own; the project's environment provides the dependencies."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    # A copy, so building leaves no build/ or egg-info behind in the checkout; three.js is in it as set-up left it.
    shutil.copytree(REPO, source, ignore=lambda folder, names: [n for n in names if n in NOT_SOURCE or n.endswith(".egg-info")])
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(root / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (root / "dist").glob("labelloop-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("labelloop/app/main.py", "labelloop/app/.streamlit/config.toml", "labelloop/app/views/map.py",
                    "labelloop/app/components/scatter3d.js", "labelloop/app/static/vendor/three/three.module.js"):
        assert shipped in names, f"the wheel lacks {shipped}"
    # No old top-level packages; no app/pages/ (Streamlit would list such a folder beside main.py as pages of its own).
    assert not any(name.startswith(("core/", "tests/", "app_pages/", "components/", "labelloop/app/pages/")) for name in names)
    target = root / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    return target


def run_installed(site: Path, *args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """`labelloop ...` through the console script the wheel installed, from ``cwd`` (outside the repo)."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("LABELLOOP_WORKSPACE", None)
    return subprocess.run([str(site / "bin" / "labelloop"), *args], cwd=cwd, env=env, capture_output=True, text=True, **kwargs)


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Path, tmp_path: Path):
    found = subprocess.run([sys.executable, "-c", "import labelloop, labelloop.app; print(labelloop.__file__)"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(installed)
    assert run_installed(installed, "--help", cwd=tmp_path).stdout.startswith("usage: labelloop")


@needs_chromium
@pytest.mark.browser
def test_labelloop_demo_and_labelloop_app_run_from_the_wheel_without_the_repo(installed: Path, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    workspace = tmp_path / "workspace"
    demo = run_installed(installed, "demo", "--per-class", "20", "--workspace", str(workspace), cwd=tmp_path, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert "built demo data set 'fashion-demo'" in demo.stdout
    env = {**os.environ, "PYTHONPATH": str(installed)}
    env.pop("LABELLOOP_WORKSPACE", None)
    # Nothing but the port and the workspace: the packaged .streamlit/config.toml decides the rest.
    with running_app(workspace, tmp_path / "app.log", as_configured=True, labelloop=(str(installed / "bin" / "labelloop"),), cwd=tmp_path, env=env) as url:
        three = urllib.request.urlopen(f"{url}/app/static/vendor/three/three.module.js", timeout=10).read()
        assert b"REVISION" in three  # the map's three.js comes out of the installed package
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            page.get_by_role("heading", name="fashion-demo").wait_for(timeout=60_000)
            page.get_by_text("Version 1 of 1").first.wait_for(timeout=30_000)
            browser.close()
    assert not errors, errors
    # What the server writes for the browser lives with the workspace; the installed package is only read.
    assert (workspace / ".app" / "static" / "vendor" / "three" / "three.module.js").read_bytes() == three
    assert not (installed / "labelloop" / "app" / "static" / "maps").exists() and not (installed / "labelloop" / "app" / "static" / "thumbs").exists()
