"""Writers killed at random moments and writers racing each other never lose, mix or duplicate work.

The killed processes are real processes stopped with SIGKILL (no clean-up
code runs). They are forked from a forkserver that has already imported the
project, so a trial costs a tenth of a second instead of a Python start-up,
and hundreds of trials fit in the suite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.data.changes import ChangeSet
from labelloop.data.tables import LabelTable
from labelloop.errors import ConflictError
from tests.conftest import draw_image, make_rows

CLASSES = [f"class{i}" for i in range(10)]
KILL_TRIALS = 30  # random kills on top of one at each write step (the steps are covered by the test before)
RACE_TRIALS = 100
RACERS = 8


def _context():
    context = multiprocessing.get_context("forkserver")  # deltalake's runtime must not be forked once started
    context.set_forkserver_preload(["labelloop.data.tables", "labelloop.data.ingest", "labelloop.embed", "labelloop.train.pipeline", "tests.test_crash_safety"])
    return context


def _run_and_kill(context, target, args: tuple, kill_after: float, ready_timeout: float = 60) -> bool:
    """Start ``target(*args, ready)`` in a new process; SIGKILL it ``kill_after`` seconds after it sets ``ready``.

    Returns True if it was killed, False if it had already finished (successfully: a crash fails the test).
    """
    process = _start_when_ready(context, target, args, ready_timeout)
    process.join(kill_after)
    if process.exitcode is not None:
        assert process.exitcode == 0, f"the worker crashed by itself (exit code {process.exitcode})"
        return False
    os.killpg(process.pid, signal.SIGKILL)  # with the pools it started, as when the machine goes down
    process.join()
    return True


def _seconds_to_finish(context, target, args: tuple) -> float:
    """How long ``target`` runs after it says it is ready, when nobody kills it."""
    process = _start_when_ready(context, target, args)
    started = time.perf_counter()
    process.join()
    assert process.exitcode == 0
    return time.perf_counter() - started


def _start_when_ready(context, target, args: tuple, ready_timeout: float = 60):
    """Start ``target(*args, ready)`` in its own process group; return once it has set ``ready``."""
    ready = context.Event()
    process = context.Process(target=_in_own_process_group, args=(target, *args, ready))
    process.start()
    assert ready.wait(ready_timeout), "the worker never got ready"
    return process


def _in_own_process_group(target, *args) -> None:
    os.setpgrp()
    target(*args)


def _fingerprint(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()


# --------------------------------------------------------------------------- commits


def _commit_forever(path: str, ready) -> None:
    """Commit one version after another; ``ready`` once the first is in, so every kill lands amid later commits
    however slow a loaded machine makes the first."""
    table = LabelTable(path)
    ids = table.read()["sample_id"].tolist()
    while True:
        head = table.head_version()
        label = CLASSES[head % 10]
        table.commit(ChangeSet.relabel(ids, label), parent=head, message=f"all -> {label}")
        ready.set()


def _check_version(table: LabelTable, version: int, n_rows: int) -> str:
    """Assert ``version`` is exactly what its commit said (one label everywhere); return its fingerprint."""
    info = table.version_info(version)
    frame = table.read(version)
    labels = frame["label"].unique()
    assert len(frame) == n_rows and len(labels) == 1, (version, len(frame), labels[:5])
    assert info.message == f"all -> {labels[0]}" and info.parent == version - 1, (version, info.message, labels)
    return _fingerprint(frame)


# Each write step of a commit, and which of its occurrences to stop at: a commit of every row of a
# 3,000-row table rewrites three data files, so "data file written" 1 and 2 are kills between files.
WRITE_STEPS = [("locked", 1), ("data file written", 1), ("data file written", 2), ("data files written", 1), ("log entry written", 1)]


def _freeze_at(step: str, nth: int, ready) -> None:
    """From now on this process stops, as if the machine froze, when its writer reaches the ``nth`` ``step``."""
    from labelloop.data import write_steps

    reached: dict[str, int] = {}

    def pause(name: str) -> None:
        reached[name] = reached.get(name, 0) + 1
        if name == step and reached[name] == nth:
            ready.set()
            time.sleep(600)  # killed here

    write_steps.hook = pause


def _commit_paused_at(path: str, step: str, nth: int, ready) -> None:
    """Commit every row to the next label, frozen at the ``nth`` ``step``."""
    _freeze_at(step, nth, ready)
    table = LabelTable(path)
    head = table.head_version()
    label = CLASSES[head % 10]
    table.commit(ChangeSet.relabel(table.read()["sample_id"], label), parent=head, message=f"all -> {label}")


@pytest.mark.slow
def test_a_commit_killed_at_each_of_its_write_steps_never_damages_the_table(tmp_path: Path):
    """Killed at each step a commit writes: before the log entry the table is as it was (the new data
    files are orphans no version names); after it, the new version is whole. Either way it takes commits."""
    path = tmp_path / "labels"
    n_rows = 3000
    LabelTable.create(path, make_rows(n_rows, CLASSES), CLASSES)
    fingerprints = {1: _fingerprint(LabelTable(path).read(1))}
    context = _context()
    for step, nth in WRITE_STEPS:
        before = LabelTable(path).head_version()
        assert _run_and_kill(context, _commit_paused_at, (str(path), step, nth), kill_after=0.0), f"the commit finished before {step} {nth}"
        table = LabelTable(path)
        head = table.head_version()
        assert head == (before + 1 if step == "log entry written" else before), (step, nth, before, head)
        for version in range(before + 1, head + 1):
            fingerprints[version] = _check_version(table, version, n_rows)
        assert {v: _fingerprint(table.read(v)) for v in fingerprints} == fingerprints  # every version still what it was
        label = CLASSES[head % 10]
        assert table.commit(ChangeSet.relabel(table.read()["sample_id"], label), parent=head, message=f"all -> {label}") == head + 1  # no lock left behind
        fingerprints[head + 1] = _check_version(table, head + 1, n_rows)


@pytest.mark.slow
def test_a_committing_process_killed_at_random_moments_never_damages_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Kills at random moments, for what happens inside deltalake between the steps above (the log entry's
    own write, the checkpoint after it): a checkpoint every 5 versions here, so kills land in those too."""
    import labelloop.data.tables as tables

    monkeypatch.setitem(tables._TABLE_CONFIGURATION, "delta.checkpointInterval", "5")
    path = tmp_path / "labels"
    n_rows = 3000
    LabelTable.create(path, make_rows(n_rows, CLASSES), CLASSES)
    fingerprints = {1: _fingerprint(LabelTable(path).read(1))}
    context, rng = _context(), random.Random(7)
    last_head = 1
    for trial in range(1, KILL_TRIALS + 1):
        _run_and_kill(context, _commit_forever, (str(path),), kill_after=rng.uniform(0.0, 0.3))
        table = LabelTable(path)  # opens: no torn log entry or checkpoint stops it
        head = table.head_version()
        assert head > last_head  # the worker's first commit is in before it can be killed
        for version in range(last_head + 1, head + 1):  # the new versions: whole, never a mix of two
            fingerprints[version] = _check_version(table, version, n_rows)
        last_head = head
    fresh = LabelTable(path)  # and every earlier version is still what it was
    assert {v: _fingerprint(fresh.read(v)) for v in fingerprints} == fingerprints
    assert list(path.glob("_delta_log/*.checkpoint.parquet")), "checkpoints should have been written (and some killed)"
    # The table still takes commits: no lock or half-written file is left in the way.
    table = LabelTable(path)
    assert table.commit(ChangeSet.set_weight([1], 0.0), parent=last_head, message="after the kills") == last_head + 1
    print(f"SIGKILL {KILL_TRIALS}/{KILL_TRIALS} intact: {last_head - 1} versions committed between kills, all {last_head} checked whole")


# --------------------------------------------------------------------------- racing commits


def _race(args: tuple[str, int, int, float]) -> str:
    path, parent, racer, start_at = args
    table = LabelTable(path)
    while time.time() < start_at:
        pass
    try:
        table.commit(ChangeSet.set_weight([racer + 1], float(parent * 100 + racer + 2)), parent=parent, message=f"racer {racer} on {parent}")
        return f"won {racer}"
    except ConflictError:
        return "conflict"


@pytest.mark.slow
def test_of_many_processes_committing_on_the_same_parent_exactly_one_wins(tmp_path: Path):
    path = str(tmp_path / "labels")
    LabelTable.create(path, make_rows(200, CLASSES), CLASSES)
    wins = 0
    with _context().Pool(RACERS) as pool:
        pool.map(_race, [(path, 0, r, 0.0) for r in range(RACERS)])  # warm up: every racer imported (parent 0 always conflicts)
        for _ in range(RACE_TRIALS):
            parent = LabelTable(path).head_version()
            outcomes = pool.map(_race, [(path, parent, r, time.time() + 0.1) for r in range(RACERS)], chunksize=1)
            winners = [o for o in outcomes if o.startswith("won")]
            assert len(winners) == 1 and outcomes.count("conflict") == RACERS - 1, outcomes
            table = LabelTable(path)
            assert table.head_version() == parent + 1  # one new version: nothing duplicated
            winner = int(winners[0].split()[1])
            assert table.version_info(parent + 1).message == f"racer {winner} on {parent}"
            changed = table.diff(parent, parent + 1).samples
            assert changed["sample_id"].tolist() == [winner + 1]  # the winner's change, nobody else's
            assert table.read()["weight"].iloc[winner] == float(parent * 100 + winner + 2)  # and not lost
            wins += 1
    history = LabelTable(path).history()
    assert len(history) == RACE_TRIALS + 1 and [v.parent for v in history[1:]] == list(range(1, RACE_TRIALS + 1))
    print(f"races {wins}/{RACE_TRIALS}: exactly one of {RACERS} processes won, {RACERS - 1} got the conflict error")


# --------------------------------------------------------------------------- import


def _import(source: str, workspace: str, ready) -> None:
    from labelloop.data.ingest import import_dataset

    ready.set()
    import_dataset(source, "big", workspace, workers=1)


@pytest.mark.slow
def test_a_killed_import_lists_nothing_half_made_and_the_next_import_cleans_up(tmp_path: Path):
    from labelloop.data.ingest import import_dataset
    from labelloop.data.workspace import list_datasets

    source = tmp_path / "source"
    n_images = 1200
    for i in range(n_images):
        draw_image(source / ("a" if i % 2 else "b") / f"{i}.png", i, size=(64, 64))
    workspace = tmp_path / "ws"
    context, rng = _context(), random.Random(3)
    duration = _seconds_to_finish(context, _import, (str(source), str(workspace)))  # how long this machine takes
    shutil.rmtree(workspace / "big")
    outcomes = {"nothing listed": 0, "finished whole": 0}
    for _ in range(6):
        _run_and_kill(context, _import, (str(source), str(workspace)), kill_after=rng.uniform(0.0, 0.9 * duration))
        if list_datasets(workspace) == []:
            outcomes["nothing listed"] += 1
            continue
        assert len(LabelTable(workspace / "big" / "labels").read()) == n_images  # listed means complete
        outcomes["finished whole"] += 1
        shutil.rmtree(workspace / "big")
    assert outcomes["nothing listed"] >= 4, outcomes

    table, report = import_dataset(source, "big", workspace)
    assert report.n_imported == n_images and len(table.read()) == n_images
    assert not list(workspace.glob(".staging-*"))  # the dead imports' folders are gone
    print(f"killed imports (a whole import takes {duration:.1f} s here): {outcomes}; the next import succeeded and removed the leftovers")


# --------------------------------------------------------------------------- embedding


def _embed(workspace: str, ready) -> None:
    import labelloop.embed.cache
    from labelloop.embed import EmbedderConfig, embed_dataset

    labelloop.embed.cache.CHUNK_SIZE = 100  # small cache files, so a kill lands between several of them
    load_embedder = labelloop.embed.cache.load_embedder

    def slow_model(*args, **kwargs):  # a pixel "model" as slow as a real one, so kills land mid-run
        embedder = load_embedder(*args, **kwargs)
        fast = embedder.embed_batch

        def embed_batch(images):
            time.sleep(0.05)
            return fast(images)

        return dataclasses.replace(embedder, embed_batch=embed_batch)

    labelloop.embed.cache.load_embedder = slow_model
    ready.set()
    embed_dataset(workspace, "big", EmbedderConfig(kind="pixels", resolution=24, batch_size=50))


@pytest.fixture
def big_dataset(tmp_path: Path, workspace: Path) -> Path:
    from labelloop.data.ingest import import_dataset

    source = tmp_path / "source"
    for i in range(1500):
        draw_image(source / ("a" if i % 2 else "b") / f"{i}.png", i, size=(48, 48))
    import_dataset(source, "big", workspace)
    return workspace


@pytest.mark.slow
def test_a_killed_embedding_keeps_whole_chunks_and_the_rerun_resumes(big_dataset: Path):
    from labelloop.embed import (
        EmbedderConfig,
        embed_dataset,
        embedder_key,
        embedding_cache,
        load_embedder,
    )

    workspace = big_dataset
    config = EmbedderConfig(kind="pixels", resolution=24, batch_size=50)
    cache = embedding_cache(workspace, "big", embedder_key(config))
    rows = LabelTable(workspace / "big" / "labels").read()
    context, rng = _context(), random.Random(5)
    duration = _seconds_to_finish(context, _embed, (str(workspace),))
    shutil.rmtree(cache.folder)
    kept, partial_kills = [], 0
    for _ in range(20):
        killed = _run_and_kill(context, _embed, (str(workspace),), kill_after=rng.uniform(0.15, 0.85) * duration)
        hashes, vectors = cache.load()  # every chunk on disk is whole and readable
        assert len(hashes) == len(cache.hashes()) and set(hashes) <= set(rows["content_hash"])
        assert not kept or len(hashes) >= kept[-1]  # work done before a kill is never lost
        kept.append(len(hashes))
        if not killed or len(hashes) == len(rows):  # it finished first: start again from nothing
            shutil.rmtree(cache.folder)
            kept.append(0)
            continue
        partial_kills += len(hashes) > 0
        if partial_kills >= 3:
            break
    assert partial_kills >= 3, kept
    report = embed_dataset(workspace, "big", config)
    assert report.n_cached == min(kept[-1], len(rows)) and report.n_cached + report.n_computed == len(rows)
    # The resumed cache holds exactly what one uninterrupted run computes.
    hashes, vectors = cache.load()
    reference = load_embedder(config, workspace / ".models")
    by_hash = rows.drop_duplicates("content_hash").set_index("content_hash")["path"]
    sample = list(hashes[:: max(1, len(hashes) // 40)])
    from labelloop.embed import embed_paths

    expected, _ = embed_paths(reference, [by_hash[h] for h in sample], sample, batch_size=50)
    np.testing.assert_allclose(vectors[hashes.get_indexer(sample)], expected, atol=1e-6)
    print(f"killed embeddings (a whole run takes {duration:.1f} s here): cache sizes after each kill {kept}; the re-run computed the remaining {report.n_computed}")


# --------------------------------------------------------------------------- training


# Each step a training run writes, and which occurrence to stop at: staged (its hidden folder made), a
# file written into it, complete (every file, not yet renamed into place), published (renamed).
RUN_STEPS = [("run staged", 1), ("run file written", 2), ("run complete", 1), ("run published", 1)]


def _train_paused_at(workspace: str, embedding: str, step: str, nth: int, ready) -> None:
    """Train the heads, frozen at the ``nth`` ``step`` of the run's writing."""
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import train

    _freeze_at(step, nth, ready)
    train(workspace, "big", HeadsSettings(heads=("knn", "logreg"), embedding=embedding))


@pytest.mark.slow
def test_a_training_run_killed_at_each_write_step_never_lists_half_made_and_the_next_run_cleans_up(big_dataset: Path):
    from labelloop.data.runs import list_runs
    from labelloop.embed import EmbedderConfig, embed_dataset
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import train

    workspace = big_dataset
    embedding = embed_dataset(workspace, "big", EmbedderConfig(kind="pixels", resolution=16)).key
    runs_dir = workspace / "big" / "runs"
    # A fresh interpreter, as `labelloop train` is: torch and joblib's workers must not start in a forked copy.
    context = multiprocessing.get_context("spawn")
    for step, nth in RUN_STEPS:
        assert _run_and_kill(context, _train_paused_at, (str(workspace), embedding, step, nth), kill_after=0.0, ready_timeout=300)
        finished = list_runs(workspace, "big")
        if step == "run published":  # renamed into place before the kill: listed, and complete
            assert len(finished) == 1
            assert (finished[0].path / "samples.parquet").is_file() and (finished[0].path / "model" / "model_config.json").is_file()
            shutil.rmtree(finished[0].path)
        else:
            assert finished == [], f"a run killed at '{step}' is listed"
            assert list(runs_dir.glob(".staging-*")), f"a run killed at '{step}' leaves its staging folder (unlisted) behind"

    run = train(workspace, "big", HeadsSettings(heads=("knn", "logreg"), embedding=embedding))
    assert [r.run_id for r in list_runs(workspace, "big")] == [run.run_id]
    assert not list(runs_dir.glob(".staging-*"))  # the killed runs' leftovers are gone
