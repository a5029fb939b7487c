"""Shared fixtures: real images drawn on disk, small real label tables."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from labelloop.data.tables import LabelTable

REPO = Path(__file__).resolve().parent.parent
APP_SCRIPT = REPO / "labelloop" / "app" / "main.py"  # the app's entry (the workspace's entry script calls its main())
VIEWS = REPO / "labelloop" / "app" / "views"


def app_script() -> Path:
    """The entry script `labelloop app` writes for the workspace ($LABELLOOP_WORKSPACE) and runs, for AppTest: what the
    app writes for the browser lands beside it, in the workspace's .app/static/ (never in the repository)."""
    from labelloop.cli.data import write_launcher

    return write_launcher(None)


def view(name: str) -> str:
    """A page for AppTest.switch_page: its absolute path (the pages are the package's, not beside the entry script)."""
    return str(VIEWS / f"{name}.py")


def draw_image(path: Path, seed: int = 0, size: tuple[int, int] = (32, 24), mode: str = "RGB", fmt: str | None = None) -> Path:
    """Write a small real image (random shapes, so every seed gives different bytes)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, size=(size[1], size[0])).astype(np.uint16))  # mode I;16
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt)
    return path


def write_fashion_folders(root: Path, per_class: int, offset: int = 0) -> Path:
    """Real Fashion-MNIST images (or MNIST digits where it is not installed) as class folders."""
    from labelloop.data.demo import load_source_images

    source = load_source_images()
    for cls, name in enumerate(source.class_names):
        members = np.flatnonzero(source.labels == cls)[offset : offset + per_class]
        for index in members:
            target = root / name / f"{index:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source.images[index], "L").save(target)
    return root


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "workspace"
    folder.mkdir()
    monkeypatch.setenv("LABELLOOP_WORKSPACE", str(folder))
    return folder


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """cat/ (4 images), dog/ (3 images), bird/ (empty): 7 real PNG files."""
    root = tmp_path / "animals"
    seed = 0
    for label, n in (("cat", 4), ("dog", 3)):
        for i in range(n):
            seed += 1
            draw_image(root / label / f"{label}_{i}.png", seed)
    (root / "bird").mkdir()
    return root


def make_rows(n: int, labels: list[str], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"path": [f"/data/img_{i:06d}.png" for i in range(n)], "label": rng.choice(labels, size=n)})


@pytest.fixture
def small_table(tmp_path: Path) -> LabelTable:
    """A 50-row table with classes a, b, c (and some undefined)."""
    return LabelTable.create(tmp_path / "ds" / "labels", make_rows(50, ["a", "b", "c", "undefined"]), ["a", "b", "c"], "import")


# Markers by the file a test is in: one place, so a new test in these files is marked without thinking of it.
FILE_MARKERS = {"test_browser": "browser", "test_ray": "ray", "test_crash_safety": "crash", "test_models": "models", "test_gpu": "gpu"}


# The files that take longest (seconds measured in a full run on 2 cores), run first: the two workers take whole files
# as they free up, so starting with the long ones leaves neither idle at the end while the other finishes a long file.
LONGEST_FIRST = ("test_ray", "test_cli", "test_crash_safety", "test_browser_map", "test_browser_loop", "test_browser_two_tabs", "test_train",
                 "test_neighbours", "test_projection", "test_browser_two_spaces", "test_browser_lasso", "test_embed", "test_models", "test_package")


def pytest_collection_modifyitems(config, items):
    rank = {stem: i for i, stem in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest keep their order
    for item in items:
        stem = item.path.stem
        for prefix, marker in FILE_MARKERS.items():
            if stem == prefix or stem.startswith(prefix + "_"):
                item.add_marker(marker)
        if item.get_closest_marker("browser") or item.get_closest_marker("ray") or item.get_closest_marker("crash"):
            item.add_marker("slow")


def pytest_report_header(config):
    return f"workspace env: {os.environ.get('LABELLOOP_WORKSPACE', '(default)')}"
