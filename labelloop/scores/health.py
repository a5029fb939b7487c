"""Data health: per-sample scores for problems other than one wrong label, from cleanlab's ``Datalab`` and cleanvision.

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
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.data.schema import image_set_digest, trainable_mask
from labelloop.errors import Cancelled, UserError

Progress = Callable[[str, float], None]  # (what is being done, fraction done in [0, 1])

NEIGHBOURS = 10  # k of the neighbour graph: cleanlab's default for every Datalab check
MIN_IMAGES = {"images": 2, "embedding": 2 * NEIGHBOURS, "labels": 2 * NEIGHBOURS}
SET_PROPERTY_SHARE = 0.5  # an image check flagging more than this share describes the data set, not some images


@dataclass(frozen=True)
class Check:
    """One kind of data-health issue: what finds it and what it means to a user."""

    name: str  # the library's issue type name (is_<name>_issue / <name>_score in its tables)
    title: str
    source: str  # "images" (cleanvision), "embedding" or "labels" (Datalab)
    meaning: str  # one sentence a user acts on


CHECKS: dict[str, Check] = {c.name: c for c in [
    Check("outlier", "Outlier", "embedding", "far from every other image in the embedding: another domain, a broken capture or a rare case"),
    Check("near_duplicate", "Near duplicate", "embedding", "almost the same image as another one (exact duplicate files included): keep one"),
    Check("non_iid", "Non-IID order", "embedding", "the order of sample ids follows the content (for example sorted by class or source); a split by id range would be biased"),
    Check("label", "Label issue", "labels", "the given label disagrees with the trained model's out-of-fold prediction"),
    Check("class_imbalance", "Class imbalance", "labels", "a member of a class far rarer than the others"),
    Check("underperforming_group", "Underperforming group", "labels", "in a cluster of the embedding where the model does much worse than elsewhere"),
    Check("blurry", "Blurry", "images", "little sharp detail"),
    Check("dark", "Dark", "images", "much darker than a usual photo"),
    Check("light", "Light", "images", "washed out, much brighter than a usual photo"),
    Check("low_information", "Low information", "images", "little content: nearly uniform, or a few flat colours"),
    Check("odd_aspect_ratio", "Odd aspect ratio", "images", "unusually wide or tall"),
    Check("odd_size", "Odd size", "images", "much larger or smaller than the other images"),
    Check("grayscale", "Grayscale", "images", "grayscale in a data set of mostly colour images"),
]}
CHECKS_OF = {source: [c.name for c in CHECKS.values() if c.source == source] for source in ("images", "embedding", "labels")}


@dataclass
class CheckResult:
    """How one check went: flagged count, or why it did not run."""

    check: str
    status: str  # "ran", "not run", "failed" or "set property" (flags more than half the set: not shown as issues)
    count: int = 0
    scored: int = 0  # samples it scored
    note: str = ""


@dataclass
class HealthReport:
    """Every check's result on one version, with the per-sample scores.

    ``samples``: sample_id, content_hash, label, weight, then ``is_<check>`` (bool) and
    ``<check>_score`` (float, NaN where the check did not score the sample) for every check.
    ``duplicate_groups``: sample-id arrays of near-duplicate (and exact duplicate) groups, largest first.
    """

    name: str
    version: int
    embedding: str | None
    run_id: str | None
    samples: pd.DataFrame
    results: dict[str, CheckResult]
    duplicate_groups: list[np.ndarray] = field(default_factory=list)
    non_iid_p_value: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """One row per check: check, title, source, status, flagged, scored, note."""
        return pd.DataFrame([
            {"check": c.name, "title": c.title, "source": {"images": "cleanvision", "embedding": "Datalab (embedding)", "labels": "Datalab (labels + run)"}[c.source],
             "status": self.results[c.name].status, "flagged": self.results[c.name].count, "scored": self.results[c.name].scored, "note": self.results[c.name].note}
            for c in CHECKS.values()
        ])

    def flagged(self, check: str) -> pd.DataFrame:
        """The samples ``check`` flags, most severe (lowest score) first."""
        column = f"is_{check}"
        chosen = self.samples[self.samples[column]]
        return chosen.sort_values(f"{check}_score", kind="stable")

    def issue_types(self) -> pd.Series:
        """Per sample, the titles of the checks that flag it, comma-separated ("" for none); indexed by sample_id."""
        titles = np.full(len(self.samples), "", dtype=object)
        for c in CHECKS.values():
            hit = self.samples[f"is_{c.name}"].to_numpy()
            titles[hit] = np.where(titles[hit] == "", c.title, titles[hit] + ", " + c.title)
        return pd.Series(titles, index=self.samples["sample_id"].to_numpy(), name="health")


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
    results.update(_image_results(samples))

    key = embedding or preferred_embedding(workspace, name)
    groups_from_embedding: list[np.ndarray] = []
    p_value = None
    run = None
    if key is None:
        for check in CHECKS_OF["embedding"] + CHECKS_OF["labels"]:
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
            for check in CHECKS_OF["embedding"] + CHECKS_OF["labels"]:
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

    if run_id:
        run = find_run(workspace, name, run_id, with_samples=True)
    else:
        run = next((r for r in list_runs(workspace, name) if (r.path / "samples.parquet").exists() and r.version <= version), None)
    if run is None:
        for check in CHECKS_OF["labels"]:
            results[check] = CheckResult(check, "not run", note=f"needs a training run on v{version} or earlier: train one (Train page, or `labelloop train {name}`)")
        return None, samples
    path = folder / f"labels-v{version}-{run.run_id}-{key}.parquet"
    try:
        stage = _cached(compute, path, lambda: label_checks(rows, load_samples(run), run.model_config().label_names, vectors().vectors, vectors().sample_ids))
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


def image_checks(
    rows: pd.DataFrame, *, progress: Callable[[float], None] | None = None, workers: int | None = None, should_stop: Callable[[], bool] | None = None,
) -> pd.DataFrame:
    """cleanvision's image checks on the images of ``rows`` (sample_id, path, content_hash).

    Returns sample_id, content_hash, ``unreadable`` (the file could not be read or decoded: it
    gets no scores), and ``is_<check>`` / ``<check>_score`` for every image check. The flags are
    cleanvision's own; :func:`compute_health` later clears those of a check that flags most of the
    set (a grayscale data set is not 100% grayscale issues).
    """
    rows = rows.reset_index(drop=True)
    out = pd.DataFrame({"sample_id": rows["sample_id"].to_numpy(), "content_hash": rows["content_hash"].to_numpy()})
    should_stop = should_stop or (lambda: False)
    found, unreadable = _cleanvision(rows["path"].tolist(), progress, workers, should_stop)
    if found is None:
        # cleanvision's set-relative checks (odd size) cannot take an image without a size: check the rest again.
        readable = np.setdiff1d(np.arange(len(rows)), unreadable)
        found, _ = _cleanvision(rows["path"].iloc[readable].tolist(), progress, workers, should_stop)
        found.index = readable
        found = found.reindex(np.arange(len(rows)))
    out["unreadable"] = np.isin(np.arange(len(rows)), unreadable)
    for check in CHECKS_OF["images"]:
        out[f"is_{check}"] = found[f"is_{check}_issue"].fillna(False).astype(bool).to_numpy() & ~out["unreadable"].to_numpy()
        out[f"{check}_score"] = found[f"{check}_score"].to_numpy(dtype=np.float64)
    return out


def _cleanvision(paths: list[str], progress: Callable[[float], None] | None, workers: int | None, should_stop: Callable[[], bool]) -> tuple[pd.DataFrame | None, np.ndarray]:
    """(cleanvision's issues table in the order of ``paths``, or None if it failed on unreadable images; their positions)."""
    from cleanvision import Imagelab

    with tempfile.TemporaryDirectory(prefix="labelloop-health-") as folder:
        images = _ImageFiles(paths, Path(folder))
        done = threading.Event()

        def watch() -> None:  # cleanvision's workers are other processes: they count images in a file
            while not done.wait(0.5):
                if progress:
                    progress(min(1.0, images.done() / max(len(paths), 1)))
                if should_stop():
                    images.stop.touch()  # the next image any worker reads raises: cleanvision ends in moments

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            lab = Imagelab(torchvision_dataset=images, verbose=False)
            lab.find_issues(issue_types={check: {} for check in CHECKS_OF["images"]}, n_jobs=workers or os.cpu_count() or 1, verbose=False)
            found = lab.issues.sort_index()
        except Cancelled:  # raised by the reading of an image after a stop (in a worker process: it ends the pool)
            found = None
        except ValueError:  # cleanvision's set-relative checks (odd size) fail on images without a size
            if not len(images.unreadable()):
                raise
            found = None
        finally:
            done.set()
            watcher.join()
        if images.stop.exists() or should_stop():
            raise Cancelled("Data health stopped during the image checks; nothing of them was kept. Compute again to start them over.")
        return found, images.unreadable()


class _ImageFiles:
    """The images of a version as cleanvision reads a torchvision data set: ``files[i] -> (image, None)``.

    A file that cannot be read gives ``None`` (cleanvision skips it) instead of stopping the run.
    cleanvision reads in worker processes, so what passes between them and us goes through files in
    ``folder``: one byte per 32 images read (progress), one line per unreadable image, and ``stop``
    (present: the user cancelled; reading raises, which ends cleanvision's run and its workers).
    """

    def __init__(self, paths: list[str], folder: Path):
        self.paths, self.ticks, self.problems, self.stop = paths, folder / "ticks", folder / "unreadable", folder / "stop"
        self.ticks.touch()
        self.problems.touch()
        self.probing = True

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from labelloop.data.images import ImageProblem, decode, read_bytes

        if self.probing:  # cleanvision's first look, in this process, to learn where the image is in the tuple: any readable one will do
            self.probing = False
            for path in self.paths:
                try:
                    return decode(read_bytes(path)), None
                except ImageProblem:
                    continue
            raise UserError(f"None of the {len(self.paths):,} images can be read now (moved, deleted or unreachable since the import?): there is nothing to check.")
        if self.stop.exists():
            raise Cancelled("stopped")
        if (index + 1) % 32 == 0:
            with open(self.ticks, "ab") as ticks:
                ticks.write(b"." * 32)
        try:
            return decode(read_bytes(self.paths[index])), None
        except ImageProblem:
            with open(self.problems, "a") as problems:
                problems.write(f"{index}\n")
            return None, None

    def done(self) -> int:
        return self.ticks.stat().st_size

    def unreadable(self) -> np.ndarray:
        return np.unique(np.array(self.problems.read_text().split(), dtype=np.int64))


def _image_results(samples: pd.DataFrame) -> dict[str, CheckResult]:
    readable = ~samples["unreadable"].fillna(True).to_numpy()
    n = int(readable.sum())
    unread = len(samples) - n
    results = {}
    for check in CHECKS_OF["images"]:
        scores = samples[f"{check}_score"].to_numpy()
        note = f"{unread:,} images could not be read" if unread else ""
        if n < MIN_IMAGES["images"]:
            results[check] = CheckResult(check, "not run", note=f"needs at least {MIN_IMAGES['images']} readable images, the version has {n}")
            samples[f"is_{check}"] = False
            continue
        share = _would_flag_share(check, samples, readable)
        if share > SET_PROPERTY_SHARE:
            samples[f"is_{check}"] = False
            what = "grayscale" if check == "grayscale" else CHECKS[check].title.lower()
            results[check] = CheckResult(check, "set property", scored=int(np.isfinite(scores).sum()),
                                         note=f"{share:.0%} of the images are {what}: a property of this data set, so no image is flagged for it")
            continue
        results[check] = CheckResult(check, "ran", int(samples[f"is_{check}"].sum()), int(np.isfinite(scores).sum()), note)
    return results


def _would_flag_share(check: str, samples: pd.DataFrame, readable: np.ndarray) -> float:
    return float(samples.loc[readable, f"is_{check}"].mean()) if readable.any() else 0.0


def embedding_checks(vectors: np.ndarray, sample_ids: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Datalab's outlier, near-duplicate and non-IID checks on embedding ``vectors`` (rows: ``sample_ids``).

    Returns (sample_id, is_<check>, <check>_score per check; meta: per-check results, the
    near-duplicate groups as sample-id lists, the non-IID p-value).
    """
    n = len(vectors)
    frame = pd.DataFrame({"sample_id": np.asarray(sample_ids, dtype=np.int64)})
    if n < MIN_IMAGES["embedding"]:
        note = f"needs at least {MIN_IMAGES['embedding']} embedded images to compare each with its {NEIGHBOURS} nearest, this version has {n}"
        return frame, {"results": {c: {"status": "not run", "note": note} for c in CHECKS_OF["embedding"]}}
    from cleanlab import Datalab

    graph = knn_graph(vectors, NEIGHBOURS)
    lab = Datalab(data={"sample_id": frame["sample_id"].to_numpy()}, verbosity=0)
    lab.find_issues(knn_graph=graph, issue_types={check: {} for check in CHECKS_OF["embedding"]})
    frame, results = _datalab_columns(lab, frame, CHECKS_OF["embedding"])
    meta: dict = {"results": results}
    if results["near_duplicate"]["status"] == "ran":
        sets = lab.get_info("near_duplicate")["near_duplicate_sets"]
        ids = frame["sample_id"].to_numpy()
        meta["near_duplicate_groups"] = [ids[g].tolist() for g in _components([np.append(members, i) for i, members in enumerate(sets) if len(members)], n)]
    if results["non_iid"]["status"] == "ran":
        # A finding about the order of the whole set: Datalab marks its one most atypical sample, which
        # would send a user to look at one image for a problem no image has.
        p_value = meta["non_iid_p_value"] = float(lab.get_info("non_iid")["p-value"])
        frame["is_non_iid"] = False
        results["non_iid"]["count"] = 0
        if p_value < 0.05:
            results["non_iid"]["status"] = "set property"
            results["non_iid"]["note"] = (f"p-value {_p(p_value)} that neighbouring sample ids are as alike as random pairs: the order follows the content "
                                          "(sorted by class or source?). Shuffle before any split by position; LabelLoop's own splits already do.")
        else:
            results["non_iid"]["note"] = f"p-value {_p(p_value)}: no sign that the order follows the content"
    return frame, meta


def _p(value: float) -> str:
    return "below 0.001" if value < 1e-3 else f"{value:.2g}"


def label_checks(rows: pd.DataFrame, run_samples: pd.DataFrame, class_names: list[str], vectors: np.ndarray, vector_ids: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Datalab's label, class-imbalance and underperforming-group checks on the labelled samples of ``rows``.

    Reads the labels of ``rows`` (this version's, not the run's) and the run's probabilities
    (columns: ``class_names``). A sample counts if it is labelled, not excluded, embedded, scored
    by the run and its label is one of the run's classes. Classes no such sample has are dropped
    from the probabilities (rows renormalised): Datalab needs every column to be a class that occurs.
    """
    usable = rows[trainable_mask(rows)][["sample_id", "label"]]
    usable = usable[usable["label"].isin(class_names) & usable["sample_id"].isin(vector_ids)]
    usable = usable.merge(run_samples[["sample_id", "probabilities"]], on="sample_id", how="inner")
    frame = pd.DataFrame({"sample_id": usable["sample_id"].to_numpy(dtype=np.int64)})
    present = sorted({class_names.index(label) for label in usable["label"]})
    outside = int(trainable_mask(rows).sum()) - len(usable)
    if len(usable) < MIN_IMAGES["labels"] or len(present) < 2:
        note = f"needs at least {MIN_IMAGES['labels']} labelled samples in 2 classes that the run scored; there are {len(usable)} in {len(present)}"
        return frame, {"results": {c: {"status": "not run", "note": note} for c in CHECKS_OF["labels"]}}
    from cleanlab import Datalab

    probabilities = np.stack(usable["probabilities"].to_numpy())[:, present]
    probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-12)
    code = {class_index: position for position, class_index in enumerate(present)}
    given = np.array([code[class_names.index(label)] for label in usable["label"]])
    where = pd.Index(vector_ids).get_indexer(usable["sample_id"])
    lab = Datalab(data={"label": given}, label_name="label", verbosity=0)
    lab.find_issues(pred_probs=probabilities, knn_graph=knn_graph(vectors[where], NEIGHBOURS), issue_types={check: {} for check in CHECKS_OF["labels"]})
    frame, results = _datalab_columns(lab, frame, CHECKS_OF["labels"])
    if outside:
        for result in results.values():
            result["note"] = (result["note"] + "; " if result["note"] else "") + f"{outside:,} labelled samples not checked (not embedded, not scored by the run, or a class the run did not know)"
    return frame, {"results": results}


def _datalab_columns(lab, frame: pd.DataFrame, checks: list[str]) -> tuple[pd.DataFrame, dict]:
    """Datalab's per-sample columns renamed is_<check> / <check>_score, and each check's result as a dict."""
    issues = lab.get_issues()
    summary = lab.get_issue_summary().set_index("issue_type")
    results = {}
    for check in checks:
        if f"is_{check}_issue" in issues:
            frame[f"is_{check}"] = issues[f"is_{check}_issue"].to_numpy(dtype=bool)
            frame[f"{check}_score"] = issues[f"{check}_score"].to_numpy(dtype=np.float64)
            results[check] = {"status": "ran", "count": int(summary.at[check, "num_issues"]), "scored": len(frame), "note": ""}
        else:
            results[check] = {"status": "failed", "note": "cleanlab could not compute it on this data (see the log)"}
    return frame, results


def knn_graph(vectors: np.ndarray, k: int):
    """The k-nearest-neighbour graph Datalab reads: a CSR matrix, row i holding its k nearest (cosine distance)."""
    from scipy.sparse import csr_matrix

    from labelloop.compute.neighbours import nearest_neighbours, unit_rows

    k = min(k, len(vectors) - 1)
    nearest = nearest_neighbours(vectors, None, k)
    unit = unit_rows(vectors)
    distance = np.clip(1.0 - np.einsum("id,ikd->ik", unit, unit[nearest]), 0.0, 2.0)
    order = np.argsort(distance, axis=1, kind="stable")  # approximate search may return them slightly out of order
    nearest, distance = np.take_along_axis(nearest, order, 1), np.take_along_axis(distance, order, 1)
    n = len(vectors)
    return csr_matrix((distance.ravel(), nearest.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def duplicate_groups(samples: pd.DataFrame, near: list[np.ndarray]) -> list[np.ndarray]:
    """Sample-id groups of near duplicates (``near``) joined with exact duplicates (equal content hash), largest first."""
    ids = samples["sample_id"].to_numpy()
    position = pd.Index(ids)
    members = [position.get_indexer(group) for group in near]
    hashes = samples["content_hash"]
    exact = hashes[hashes.duplicated(keep=False)]
    members += [group.to_numpy() for _, group in pd.Series(exact.index).groupby(exact.to_numpy())]
    groups = [np.sort(ids[g]) for g in _components([m[m >= 0] for m in members], len(ids))]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def _components(groups: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Connected components (of two or more) of the graph whose edges join each group's members."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = [(g[0], other) for g in groups if len(g) > 1 for other in g[1:]]
    if not edges:
        return []
    a, b = np.array(edges).T
    _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    sizes = np.bincount(component)
    return [np.flatnonzero(component == c) for c in np.flatnonzero(sizes > 1)]


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


def describe(report: HealthReport) -> str:
    """A few lines for a terminal: what was checked, on what, and the duplicate groups."""
    lines = [f"data health of '{report.name}' version {report.version}: {len(report.samples):,} samples; "
             f"embedding {report.embedding or '(none)'}; run {report.run_id or '(none)'}"]
    if report.duplicate_groups:
        lines.append(f"{len(report.duplicate_groups)} near-duplicate groups ({sum(len(g) for g in report.duplicate_groups):,} samples); largest: "
                     + ", ".join(f"#{i}" for i in report.duplicate_groups[0][:8]))
    lines.append("time: " + ", ".join(f"{stage} {s:.1f} s" for stage, s in report.seconds.items()))
    return "\n".join(lines)

