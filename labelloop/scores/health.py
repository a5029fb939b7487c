"""Data health: per-sample scores for problems other than one wrong label, from cleanlab's ``Datalab`` and cleanvision.

This module runs the checks for a version and caches them; the catalogue and the report are in checks.py,
the image checks in image_checks.py, the embedding and label checks in datalab_checks.py.

Three groups of checks, each computed from what it depends on and cached by exactly that, so a
relabel recomputes only the checks that read labels:

- **image checks** (cleanvision ``Imagelab``: blurry, dark, light, low information, odd aspect
  ratio, odd size, grayscale) read the image files: cached by the image set (sample ids and
  content hashes of the version);
- **embedding checks** (``Datalab``: outlier, near duplicate, non-IID) read one embedding's
  vectors: cached by the embedded image set and the embedding key;
- **label checks** (``Datalab``: label, class imbalance, underperforming group) read the labels
  of a version and a training run's out-of-fold probabilities: cached by version, run and
  embedding (versions never change, so neither do they).

Every score follows the libraries' convention: in [0, 1], **low = more severe**; ``is_<check>``
is the library's own decision at its default threshold. Exact duplicate files found at import
(equal content hashes) always count as near duplicates and share a group.

Datalab needs a k-nearest-neighbour graph; it is built here with :mod:`labelloop.compute.neighbours` (exact
up to 20,000 images, FAISS HNSW above), so 100,000 x 1280-d vectors never go through
scikit-learn's brute-force search.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.data.schema import image_set_digest, trainable_mask
from labelloop.errors import Cancelled, UserError
from labelloop.scores.checks import CHECKS, CHECKS_OF, CheckResult, HealthReport
from labelloop.scores.datalab_checks import (
    duplicate_groups,
    embedding_checks,
    label_checks,
)
from labelloop.scores.image_checks import image_checks, image_results
from labelloop.scores.review import load_kept, review_frame

Progress = Callable[[str, float], None]  # (what is being done, fraction done in [0, 1])


# --------------------------------------------------------------------------- computing


def compute_health(
    workspace: str | os.PathLike | None, name: str, *, version: int | None = None, embedding: str | None = None,
    run_id: str | None = None, progress: Progress | None = None, image_workers: int | None = None, compute: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> HealthReport | None:
    """Every check on ``version`` (default: the latest), from caches where they hold.

    ``embedding``: the embedding key the embedding and label checks read (default: the one pages
    start from); without one cached only the image checks run. ``run_id``: the run whose
    probabilities the label checks read (default: the newest run with per-sample scores); without
    a run they say so and the rest still run. ``image_workers``: processes for the image checks
    (default: all cores). ``compute=False`` only reads caches: None if any check would have to run.
    ``should_stop``: polled while the image checks run and between stages; when it says so, a
    :class:`~labelloop.errors.Cancelled` is raised and the stage under way caches nothing.
    """
    try:
        return _health(workspace, name, version, embedding, run_id, progress, image_workers, compute, should_stop or (lambda: False))
    except _NotCached:
        return None


class _NotCached(Exception):
    pass


NOT_COMPUTED = "not computed yet for this version: press Compute on the Health page (or run `labelloop health`)"


def _health(workspace, name, version, embedding, run_id, progress, image_workers, compute, should_stop) -> HealthReport:
    from labelloop.data.workspace import DatasetPaths, open_table
    from labelloop.embed.cache import load_embeddings, preferred_embedding

    report_progress = progress or (lambda stage, fraction: None)
    table = open_table(workspace, name)
    version = version or table.head_version()
    rows = table.read(version, columns=["sample_id", "path", "content_hash", "label", "weight"])
    if rows.empty:
        raise UserError(f"Version {version} of '{name}' has no samples: there is nothing to check.")
    folder = DatasetPaths(workspace, name).local / "health"
    seconds: dict[str, float] = {}
    results: dict[str, CheckResult] = {}

    started = time.perf_counter()
    report_progress(f"image checks (cleanvision) on {len(rows):,} images", 0.0)
    images = _cached(compute, folder / f"images-{image_set_digest(rows)}.parquet",
                     lambda: image_checks(rows, progress=lambda f: report_progress(f"image checks (cleanvision) on {len(rows):,} images", 0.6 * f),
                                         workers=image_workers, should_stop=should_stop))
    seconds["images"] = time.perf_counter() - started
    samples = rows[["sample_id", "content_hash", "label", "weight"]].reset_index(drop=True)
    samples = samples.merge(images.drop(columns=["content_hash"], errors="ignore"), on="sample_id", how="left")
    results.update(image_results(samples))

    key = embedding or preferred_embedding(workspace, name)
    groups_from_embedding: list[np.ndarray] = []
    p_value = None
    run = None
    if key is None:
        for check in CHECKS_OF["embedding"] + CHECKS_OF["labels"] + CHECKS_OF["run"]:
            results[check] = CheckResult(check, "not run", note=f"needs an embedding: embed the images first (`labelloop embed {name}`, or Embed on the Map page)")
    else:
        _stop_if_asked(should_stop)
        report_progress(f"embedding checks (Datalab) on '{key}'", 0.6)
        started = time.perf_counter()
        which = load_embeddings(workspace, name, key, version, rows=rows, with_vectors=False)  # the cache key; vectors only if computing
        embedded = pd.DataFrame({"sample_id": which.sample_ids, "content_hash": which.content_hashes})
        vectors = functools.cache(lambda: load_embeddings(workspace, name, key, version, rows=rows))
        path = folder / f"embedding-{image_set_digest(embedded)}-{key}.parquet"
        try:
            stage = _cached(compute, path, lambda: embedding_checks(vectors().vectors, vectors().sample_ids))
        except _NotCached:
            for check in CHECKS_OF["embedding"] + CHECKS_OF["labels"] + CHECKS_OF["run"]:
                results[check] = CheckResult(check, "not run", note=NOT_COMPUTED)
            stage = None
        seconds["embedding"] = time.perf_counter() - started
        if stage is not None:
            samples = samples.merge(stage, on="sample_id", how="left")
            meta = _read_meta(path)
            p_value = meta.get("non_iid_p_value")
            groups_from_embedding = [np.asarray(g, dtype=np.int64) for g in meta.get("near_duplicate_groups", [])]
            results.update({check: CheckResult(check, **meta["results"][check]) for check in CHECKS_OF["embedding"]})
            if which.missing:
                for check in CHECKS_OF["embedding"]:
                    results[check].note = (results[check].note + "; " if results[check].note else "") + f"{which.missing:,} samples are not embedded yet and were not checked"

            _stop_if_asked(should_stop)
            report_progress("label checks (Datalab) with the newest run", 0.85)
            started = time.perf_counter()
            run, samples = _label_stage(workspace, name, version, run_id, key, rows, vectors, folder, compute, samples, results)
            seconds["labels"] = time.perf_counter() - started

    samples, groups = _with_every_check(samples, results, groups_from_embedding, embedded=key is not None)
    columns = ["sample_id", "content_hash", "label", "weight", "unreadable"] + [c for check in CHECKS for c in (f"is_{check}", f"{check}_score")]
    report_progress("done", 1.0)
    return HealthReport(name, version, key, run.run_id if run is not None else None, samples[columns], results, groups, p_value, seconds)


def _label_stage(workspace, name, version, run_id, key, rows, vectors, folder, compute, samples, results):
    """The label checks with run ``run_id`` (default: the newest with per-sample scores, not newer than the version,
    as the Review page picks); (the run or None, the samples with its columns). Fills ``results`` in."""
    from labelloop.data.runs import find_run, list_runs, load_samples
    from labelloop.data.workspace import DatasetPaths

    if run_id:
        run = find_run(workspace, name, run_id, with_samples=True)
    else:
        run = next((r for r in list_runs(workspace, name) if (r.path / "samples.parquet").exists() and r.version <= version), None)
    if run is None:
        for check in CHECKS_OF["labels"] + CHECKS_OF["run"]:
            results[check] = CheckResult(check, "not run", note=f"needs a training run on v{version} or earlier: train one (Train page, or `labelloop train {name}`)")
        return None, samples
    run_samples = functools.cache(lambda: load_samples(run))
    # Not cached: it reads the run's scores, this version's labels and the reviewers' keeps, as the Review page
    # does at every visit, so the two pages count the same label issues (a keep changes no version).
    issues = review_frame(run_samples(), rows, load_kept(DatasetPaths(workspace, name).kept_labels))
    samples = samples.merge(pd.DataFrame({"sample_id": issues["sample_id"], "is_label": issues["flagged"], "label_score": 1.0 - issues["issue_score"]}), on="sample_id", how="left")
    results["label"] = CheckResult("label", "ran", count=int(issues["flagged"].sum()), scored=int(trainable_mask(issues).sum()),  # what can be one
                                   note=f"run {run.run_id} (v{run.version})" + ("" if run.version == version else f", labels of v{version}"))
    path = folder / f"datalab-labels-v{version}-{run.run_id}-{key}.parquet"
    try:
        stage = _cached(compute, path, lambda: label_checks(rows, run_samples(), run.model_config().label_names, vectors().vectors, vectors().sample_ids))
    except _NotCached:
        for check in CHECKS_OF["labels"]:
            results[check] = CheckResult(check, "not run", note=f"{NOT_COMPUTED} (with run {run.run_id})")
        return run, samples
    results.update({check: CheckResult(check, **_read_meta(path)["results"][check]) for check in CHECKS_OF["labels"]})
    return run, samples.merge(stage, on="sample_id", how="left")


def _with_every_check(samples: pd.DataFrame, results: dict, groups_from_embedding: list[np.ndarray], *, embedded: bool) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Every check's two columns present (a check that did not run flags nobody); near-duplicate groups joined with
    the exact duplicate files, which are found even without an embedding."""
    for check in CHECKS:
        if f"is_{check}" not in samples:
            samples[f"is_{check}"] = False
            samples[f"{check}_score"] = np.nan
        samples[f"is_{check}"] = samples[f"is_{check}"].fillna(False).astype(bool)
    groups = duplicate_groups(samples, groups_from_embedding)
    in_group = np.isin(samples["sample_id"].to_numpy(), np.concatenate(groups)) if groups else np.zeros(len(samples), bool)
    samples["is_near_duplicate"] |= in_group  # exact duplicates too, even without an embedding
    if not embedded and groups:
        results["near_duplicate"] = CheckResult("near_duplicate", "ran", note="exact duplicate files only: embed the images to find near duplicates too")
    if results["near_duplicate"].status == "ran":
        results["near_duplicate"].count = int(samples["is_near_duplicate"].sum())
    samples["unreadable"] = samples["unreadable"].fillna(False).astype(bool)
    return samples, groups


def _stop_if_asked(should_stop: Callable[[], bool]) -> None:
    if should_stop():
        raise Cancelled("Data health stopped. The checks that had finished are cached; Compute again goes on from there.")


# --------------------------------------------------------------------------- cache


def _cached(allowed: bool, path: Path, compute: Callable[[], pd.DataFrame | tuple[pd.DataFrame, dict]]) -> pd.DataFrame:
    """``compute()`` once per ``path``: a Parquet table (and a JSON meta beside it when it returns one).

    Written to a temporary name and renamed, meta first: a crash leaves the old state or the new one.
    ``allowed=False``: never compute (raises _NotCached instead).
    """
    if path.exists():
        try:
            return pd.read_parquet(path)
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, not an error
            pass
    if not allowed:
        raise _NotCached(path.name)
    found = compute()
    frame, meta = found if isinstance(found, tuple) else (found, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    if meta is not None:
        _atomic_write(path.with_suffix(".json"), json.dumps(meta).encode())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return frame


def _read_meta(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


