"""The app in a real browser at scale: prints figures, asserts nothing.

    .venv/bin/python bench/bench_app.py                    # 100,000 points
    .venv/bin/python bench/bench_app.py --points 20000
    .venv/bin/python bench/bench_app.py --points 1000000 --synthetic   # no images: synthetic rows and 1280-d vectors

Builds (once, cached under bench/out/) a data set of N Fashion-MNIST images
(the 70,000 originals, then mirrored copies), embeds them as 8x8 pixels (the
map's cost does not depend on the embedder), projects them with PaCMAP to
3D, and trains the quick heads so the Review page has N scored rows. Then, with
headless Chromium on software WebGL (DESIGN.md's flags):

- Map page load to 3D ready;
- lasso mouse-up to the selection count shown by Python;
- relabel + commit to the recoloured map, and the bytes the server sent over
  the websocket for it;
- Review page with N rows: navigation to the table's first paint.

With --demo it also times, on the built-in demo (6,000 images, EfficientNet-Lite0
embedding and map cached): app start to map drawn, and commit to refreshed
label-issue scores (the background quick heads).

With --synthetic the data set is made without images (bench_million's
synthetic rows and 1280-d vectors, mapped with the default sample fit), so a
million points take minutes to build instead of an hour of PNG writing and
import; there are no thumbnails and no scores, and the map page, the lasso and
the commit are timed as they are.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_embed import fashion_arrays  # noqa: E402
from tests.browser import CHROMIUM, CHROMIUM_ARGS, lasso, running_app  # noqa: E402

CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def write_pngs(source: Path, n: int) -> None:
    """``n`` Fashion-MNIST PNGs in class folders under ``source`` (the 70,000 originals, then mirrored copies); kept ones are reused."""
    from PIL import Image

    images, labels = fashion_arrays(70_000)
    for i in range(n):
        path = source / CLASS_NAMES[labels[i % len(labels)]] / f"{i:06d}.png"
        if path.exists():
            continue
        image = images[i % len(images)] if i < len(images) else images[i % len(images)][:, ::-1]  # mirrored: a new image
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image)).save(path)


def build(workspace: Path, n: int) -> None:
    from labelloop.data.ingest import import_dataset
    from labelloop.data.workspace import list_datasets
    from labelloop.embed import EmbedderConfig, embed_dataset
    from labelloop.maps.config import ProjectionConfig
    from labelloop.maps.project import project_dataset
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import train

    if "big" in list_datasets(workspace):
        return
    source = workspace.parent / f"images-{n}"
    started = time.perf_counter()
    write_pngs(source, n)
    print(f"wrote {n:,} PNGs in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    import_dataset(source, "big", workspace)
    print(f"import: {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    embed_dataset(workspace, "big", EmbedderConfig(kind="pixels", resolution=8))
    print(f"embedding (8x8 pixels): {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    project_dataset(workspace, "big", "pixels-8px", ProjectionConfig(dims=3))
    print(f"PaCMAP 3D: {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    train(workspace, "big", HeadsSettings(embedding="pixels-8px", heads=("knn", "logreg")))
    print(f"quick heads (k-NN + logistic regression, 5 folds) on {n:,}: {time.perf_counter() - started:.0f} s")


def build_synthetic(workspace: Path, n: int) -> None:
    from bench.bench_million import synthetic_dataset
    from labelloop.data.workspace import list_datasets
    from labelloop.maps.project import project_dataset

    if "big" in list_datasets(workspace):
        return
    started = time.perf_counter()
    key = synthetic_dataset(workspace, "big", n)
    print(f"synthetic data set of {n:,} rows and 1280-d vectors: {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    projection = project_dataset(workspace, "big", key)
    print(f"PaCMAP 3D (fitted on a sample, the rest placed): {time.perf_counter() - started:.0f} s; {projection.describe()}")


def measure_map(url: str, dataset: str, new_class: str, wait_for_scores: bool, review: bool = True, lasso_radius: int = 110) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        received: list[int] = []
        page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: received.append(len(payload))))
        started = time.perf_counter()
        page.goto(f"{url}/map?dataset={dataset}")
        root = page.locator(".map-root")
        expect(root).to_have_attribute("data-ready", "1", timeout=180_000)
        print(f"  page load to 3D ready, first open after the server started: {time.perf_counter() - started:.2f} s ({root.get_attribute('data-points')} points drawn)", flush=True)
        started = time.perf_counter()
        page.reload()
        expect(root).to_have_attribute("data-ready", "1", timeout=180_000)
        print(f"  page load to 3D ready, opened again: {time.perf_counter() - started:.2f} s", flush=True)
        stage = page.locator(".map-stage").bounding_box()
        cx, cy = stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2
        page.get_by_text("Lasso: off (L)").click()
        lasso(page, cx, cy, lasso_radius, points=40)
        released = time.perf_counter()
        drawn_selected = int(root.get_attribute("data-selected"))
        # Over the point budget the browser counts the drawn points it enclosed; Python selects among all.
        page.wait_for_function("() => [...document.querySelectorAll('strong')].some(e => /^[1-9][0-9,]* selected$/.test(e.textContent))", timeout=60_000)
        shown = page.evaluate("() => [...document.querySelectorAll('strong')].map(e => e.textContent).find(t => / selected$/.test(t))")
        selected = int(shown.split()[0].replace(",", ""))
        print(f"  lasso mouse-up to the count shown by Python: {time.perf_counter() - released:.3f} s ({selected:,} points selected; {drawn_selected:,} of them drawn)")
        page.get_by_role("textbox", name="or a new class").fill(new_class)
        page.get_by_role("textbox", name="or a new class").press("Enter")
        expect(page.get_by_role("textbox", name="Commit message")).to_have_value(f"lasso: {selected:,} samples -> {new_class}", timeout=60_000)
        colours = root.get_attribute("data-colours")
        received.clear()
        clicked = time.perf_counter()
        page.get_by_role("button", name="Commit as a new version").click()
        expect(root).not_to_have_attribute("data-colours", colours, timeout=60_000)
        print(f"  relabel + commit to recoloured map: {time.perf_counter() - clicked:.2f} s; websocket bytes received: {sum(received) / 1e6:.2f} MB in {len(received)} frames")
        if wait_for_scores:
            page.get_by_text("updating scores").wait_for(state="detached", timeout=600_000)
            print(f"  commit to refreshed scores (quick heads in the background): {time.perf_counter() - clicked:.1f} s")

        if not review:
            browser.close()
            return
        started = time.perf_counter()
        page.goto(f"{url}/review?dataset={dataset}")
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=120_000)
        page.locator('[data-testid="stDataFrame"] canvas').first.wait_for(timeout=120_000)
        print(f"  review table ({dataset}): navigation to first paint {time.perf_counter() - started:.2f} s")
        browser.close()


def measure_demo_start(workspace: Path, log: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    started = time.perf_counter()
    with running_app(workspace, log) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(f"{url}/map?dataset=fashion-demo")
        expect(page.locator(".map-root")).to_have_attribute("data-ready", "1", timeout=120_000)
        print(f"  demo: app start to map drawn (cached map): {time.perf_counter() - started:.2f} s")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--scratch", default=str(Path(__file__).resolve().parent / "out"))
    parser.add_argument("--demo", action="store_true", help="also time the demo: start to map, commit to fresh scores")
    parser.add_argument("--synthetic", action="store_true", help="no images: synthetic rows and 1280-d vectors (for a million points)")
    parser.add_argument("--lasso-radius", type=int, default=110, help="pixels around the map's centre the lasso encloses (110: a fifth of a million points; 60: about 2,000)")
    args = parser.parse_args()
    root = Path(args.scratch) / f"app-{args.points}{'-synthetic' if args.synthetic else ''}"
    workspace = root / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    (build_synthetic if args.synthetic else build)(workspace, args.points)
    print(f"{args.points:,} points, headless Chromium with software WebGL (SwiftShader):")
    with running_app(workspace, root / "streamlit.log") as url:
        # the build step timed the quick heads at this size; a synthetic set has no scores to review
        measure_map(url, "big", f"bench-{int(time.time())}", wait_for_scores=False, review=not args.synthetic, lasso_radius=args.lasso_radius)
    if args.demo:
        from labelloop.data.demo import ensure_demo
        from labelloop.embed import EmbedderConfig, embed_dataset
        from labelloop.maps.config import ProjectionConfig
        from labelloop.maps.project import project_dataset

        demo = Path(args.scratch) / "app-demo"
        demo.mkdir(parents=True, exist_ok=True)
        ensure_demo(demo)
        report = embed_dataset(demo, "fashion-demo", EmbedderConfig())
        project_dataset(demo, "fashion-demo", report.key, ProjectionConfig(dims=3))
        measure_demo_start(demo, demo / "streamlit.log")
        with running_app(demo, demo / "streamlit2.log") as url:
            measure_map(url, "fashion-demo", f"bench-{int(time.time())}", wait_for_scores=True)


if __name__ == "__main__":
    main()
