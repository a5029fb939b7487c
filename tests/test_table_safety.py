"""Many writers at once, and writers killed mid-commit: the table never loses or mixes a version."""

from __future__ import annotations

import multiprocessing
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConflictError
from core.tables import ChangeSet, LabelTable
from tests.conftest import REPO, make_rows

CLASSES = [f"class{i}" for i in range(10)]


def _commit_at(args: tuple[str, int, int, float]) -> str:
    """Worker: wait for the shared start time, then commit one change on ``parent``."""
    path, parent, worker, start_at = args
    table = LabelTable(path)
    while time.time() < start_at:
        pass
    try:
        table.commit(ChangeSet.set_weight([worker + 1], float(parent * 100 + worker + 2)), parent=parent, message=f"worker {worker}")
        return f"won {worker}"
    except ConflictError:
        return "conflict"


@pytest.mark.slow
def test_of_many_processes_committing_on_the_same_parent_exactly_one_wins(tmp_path: Path):
    path = str(tmp_path / "labels")
    LabelTable.create(path, make_rows(200, CLASSES), CLASSES)
    n_workers, trials = 6, 10
    context = multiprocessing.get_context("spawn")  # deltalake's runtime must not be forked
    with context.Pool(n_workers) as pool:
        for trial in range(trials):
            parent = LabelTable(path).head_version()
            start_at = time.time() + (3.0 if trial == 0 else 0.3)  # the first trial also waits for the workers to start
            outcomes = pool.map(_commit_at, [(path, parent, w, start_at) for w in range(n_workers)])
            winners = [o for o in outcomes if o.startswith("won")]
            assert len(winners) == 1, outcomes
            assert outcomes.count("conflict") == n_workers - 1
            table = LabelTable(path)
            assert table.head_version() == parent + 1
            winner = int(winners[0].split()[1])
            info = table.version_info(parent + 1)
            assert info.message == f"worker {winner}" and info.parent == parent
            diff = table.diff(parent, parent + 1)
            assert diff.samples["sample_id"].tolist() == [winner + 1]  # the winner's change, nobody else's


_KILLED_WRITER = """
import sys
from core.tables import ChangeSet, LabelTable
CLASSES = [f"class{i}" for i in range(10)]
table = LabelTable(sys.argv[1])
ids = table.read()["sample_id"].tolist()
print("ready", flush=True)
while True:
    head = table.head_version()
    label = CLASSES[head % 10]
    table.commit(ChangeSet.relabel(ids, label), parent=head, message=f"all -> {label}")
"""


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_never_damages_the_table(tmp_path: Path):
    path = tmp_path / "labels"
    LabelTable.create(path, make_rows(3000, CLASSES), CLASSES)
    rng = random.Random(7)
    last_head = 1
    trials = 20
    for _ in range(trials):
        writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait()

        table = LabelTable(path)
        head = table.head_version()
        assert head >= last_head
        for version in range(max(2, last_head), head + 1):
            info = table.version_info(version)
            labels = table.read(version)["label"].unique()
            # Every version is exactly what its commit said: never a mix of two.
            assert info.message == f"all -> {labels[0]}" and len(labels) == 1, (version, info.message, labels)
            assert info.parent == version - 1
        last_head = head
    # And the table still takes commits: no lock or half-written file is left in the way.
    table = LabelTable(path)
    assert table.commit(ChangeSet.set_weight([1], 0.0), parent=last_head, message="after the kills") == last_head + 1
    assert np.array_equal(table.read(1)["sample_id"], table.read()["sample_id"])


_KILLED_IMPORT = """
import sys
from core.ingest import import_dataset
print("ready", flush=True)
import_dataset(sys.argv[1], "big", sys.argv[2], workers=1)
"""


@pytest.mark.slow
def test_a_killed_import_leaves_no_data_set_and_the_next_import_cleans_up(tmp_path: Path):
    from core.ingest import import_dataset
    from core.workspace import list_datasets
    from tests.conftest import draw_image

    source = tmp_path / "source"
    for i in range(1500):
        draw_image(source / ("a" if i % 2 else "b") / f"{i}.png", i, size=(64, 64))
    workspace = tmp_path / "ws"
    importer = subprocess.Popen([sys.executable, "-c", _KILLED_IMPORT, str(source), str(workspace)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert importer.stdout.readline().strip() == "ready"
    deadline = time.time() + 60
    while not list(workspace.glob(".staging-big-*/thumbs")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # well into checking files and writing thumbnails
    importer.send_signal(signal.SIGKILL)
    importer.wait()
    assert list(workspace.glob(".staging-big-*")), "the import finished before it was killed; make the source bigger"
    assert list_datasets(workspace) == []  # nothing half-made is listed

    table, report = import_dataset(source, "big", workspace)
    assert report.n_imported == 1500 and len(table.read()) == 1500
    assert not list(workspace.glob(".staging-*"))  # the dead import's folder is gone
