"""The whole loop at 100,000 images: seconds and peak memory of each step. Prints figures, asserts nothing.

    .venv/bin/python bench/bench_scale.py                 # 100,000 images
    .venv/bin/python bench/bench_scale.py --images 20000  # to see how the steps grow

Each step runs in its own process (as the app's steps would after a restart);
its peak memory is the largest sum of resident memory over the step's process
and its helpers (image decoding pools; proportional set size, so shared
libraries count once), sampled every 0.2 s. The images
are Fashion-MNIST PNGs (the 70,000 originals, then mirrored copies) written
once under bench/out/; the workspace is made fresh on every run. Embedding
uses the fast 8x8-pixel embedder: the steps after it cost the same whatever
the embedder (EfficientNet-Lite0's own speed is in bench/bench_embed.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EMBEDDING = "pixels-8px"
LASSO_SIZE = 20_000


def step_import(workspace: Path, source: Path) -> str:
    from labelloop.data.ingest import import_dataset

    _, report = import_dataset(source, "big", workspace)
    return f"{report.n_imported:,} images"


def step_embed(workspace: Path, source: Path) -> str:
    from labelloop.embed import EmbedderConfig, embed_dataset

    return embed_dataset(workspace, "big", EmbedderConfig(kind="pixels", resolution=8)).describe()


def step_project(workspace: Path, source: Path) -> str:
    from labelloop.maps.config import ProjectionConfig
    from labelloop.maps.project import project_dataset

    return project_dataset(workspace, "big", EMBEDDING, ProjectionConfig(dims=3)).describe()


def step_lasso(workspace: Path, source: Path) -> str:
    """What the map does for a lasso: the points inside a region of the screen, relabelled and committed."""
    import numpy as np

    from labelloop.data.workspace import open_table
    from labelloop.maps.config import ProjectionConfig
    from labelloop.maps.project import project_dataset
    from labelloop.maps.view import default_message, selection_changes

    table = open_table(workspace, "big")
    head = table.head_version()
    rows = table.read(head)
    projection = project_dataset(workspace, "big", EMBEDDING, ProjectionConfig(dims=3), rows=rows, compute=False)
    # A round lasso around one spot of the (x, y) view, grown until it holds 20,000 points.
    xy = projection.coords[:, :2]
    distance = np.linalg.norm(xy - np.median(xy, axis=0), axis=1)
    size = min(LASSO_SIZE, len(distance) // 5)
    selected = projection.sample_ids[np.argsort(distance)[:size]]
    label = rows.set_index("sample_id").loc[selected, "label"].value_counts().index[-1]  # the selection's rarest class
    changes = selection_changes(selected, "relabel", label)
    version = table.commit(changes, parent=head, message=default_message(len(selected), "relabel", label))
    changed = table.diff(head, version).counts()
    return f"{len(selected):,} selected -> '{label}', version {version}: {changed}"


def step_heads(workspace: Path, source: Path) -> str:
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import train

    run = train(workspace, "big", HeadsSettings(embedding=EMBEDDING, heads=("knn", "logreg")))
    return run.describe()


def step_review(workspace: Path, source: Path) -> str:
    from labelloop.data.runs import find_run, load_samples
    from labelloop.data.workspace import open_table
    from labelloop.scores.review import filter_review, review_frame

    table = open_table(workspace, "big")
    run = find_run(workspace, "big", with_samples=True)
    frame = review_frame(load_samples(run), table.read())
    flagged = filter_review(frame, flagged_only=True)
    return f"{len(frame):,} rows, {len(flagged):,} flagged; first page sorted by suspicion"


STEPS = {
    "import": step_import,
    "embed (8x8 pixels)": step_embed,
    "PaCMAP 3D": step_project,
    "lasso relabel + commit": step_lasso,
    "quick heads (k-NN + logreg, 5-fold CV)": step_heads,
    "review table": step_review,
}


def tree_memory_mb(root_pid: int) -> float:
    """Memory of a process and all its descendants (decoding pools included), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root_pid}, True
    while grew:
        added = {pid for pid, parent in parents.items() if parent in tree and pid not in tree}
        tree |= added
        grew = bool(added)
    total_kb = 0
    for pid in tree:  # PSS, not RSS: libraries shared by the helpers are counted once, not per process
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                total_kb += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return total_kb / 1024


def run_step(name: str, workspace: Path, source: Path, images: int) -> tuple[float, float, str]:
    """(seconds, peak MB of the step's whole process tree, what it did) of one step in a child process."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, __file__, "--run-step", name, "--workspace", str(workspace), "--source", str(source), "--images", str(images)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    peak = [0.0]

    def sample() -> None:  # every 0.2 s: the sum over processes, which ru_maxrss (a maximum) cannot give
        while child.poll() is None:
            peak[0] = max(peak[0], tree_memory_mb(child.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = child.stdout.read()
    child.wait()
    sampler.join()
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"step '{name}' failed (exit {child.returncode}): {output}")
    return seconds, peak[0], output.strip().splitlines()[-1] if output.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--run-step", help=argparse.SUPPRESS)
    parser.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_step == "write images":
        from bench.bench_app import write_pngs

        write_pngs(args.source, args.images)
        return
    if args.run_step:
        print(STEPS[args.run_step](args.workspace, args.source))
        return

    out = REPO / "bench" / "out" / f"app-{args.images}"
    source = out / f"images-{args.images}"
    workspace = out / "scale-workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    seconds, _, _ = run_step("write images", workspace, source, args.images)
    print(f"{args.images:,} PNGs ready in {source} ({seconds:.0f} s; written once, then reused)")

    print(f"\n| step at {args.images:,} images | seconds | peak MB | result |")
    print("|---|---:|---:|---|")
    for name in STEPS:
        seconds, peak_mb, result = run_step(name, workspace, source, args.images)
        print(f"| {name} | {seconds:.1f} | {peak_mb:,.0f} | {result[:150]} |", flush=True)


if __name__ == "__main__":
    main()
