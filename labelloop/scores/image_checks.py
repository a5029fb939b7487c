"""The image checks: cleanvision's ``Imagelab`` over the image files (blurry, dark, light, low information, odd aspect ratio, odd size, grayscale)."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from labelloop.errors import Cancelled, UserError
from labelloop.scores.checks import (
    CHECKS,
    CHECKS_OF,
    MIN_IMAGES,
    SET_PROPERTY_SHARE,
    CheckResult,
)


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


def image_results(samples: pd.DataFrame) -> dict[str, CheckResult]:
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
        if check in ABSOLUTE_CHECKS:
            usual = _usual_here(samples, check, readable)
            if usual:
                note = (note + "; " if note else "") + (f"{usual:,} more are below cleanvision's threshold but usual for this data set "
                                                        "(its images are like that: black backgrounds, say), so they are not flagged")
        results[check] = CheckResult(check, "ran", int(samples[f"is_{check}"].sum()), int(np.isfinite(scores).sum()), note)
    return results


# cleanvision's dark, light, blurry and low-information thresholds are absolute: on a set of small objects on black
# backgrounds (Fashion-MNIST) "low information" flagged 918 of 6,000 ordinary images, a property of the set, not a
# problem of those images. These checks flag an image only where it is also unusual for this data set.
ABSOLUTE_CHECKS = ("dark", "light", "blurry", "low_information")
UNUSUAL = 3.0  # robust z-score (median and MAD of the set's own scores) below which an image is unusual here


def _usual_here(samples: pd.DataFrame, check: str, readable: np.ndarray) -> int:
    """Unflag, in ``samples``, the images ``check`` flags whose score is not unusual for this set (low = severe);
    returns how many."""
    flagged = samples[f"is_{check}"].fillna(False).to_numpy(dtype=bool) & readable
    scores = samples[f"{check}_score"].to_numpy(dtype=np.float64)
    known = scores[readable & np.isfinite(scores)]
    if not flagged.any() or len(known) < 2:
        return 0
    median = float(np.median(known))
    spread = 1.4826 * float(np.median(np.abs(known - median)))  # the MAD, scaled to a standard deviation
    unusual = scores < median - UNUSUAL * spread if spread > 0 else scores < median
    usual = flagged & ~unusual
    samples.loc[usual, f"is_{check}"] = False
    return int(usual.sum())


def _would_flag_share(check: str, samples: pd.DataFrame, readable: np.ndarray) -> float:
    return float(samples.loc[readable, f"is_{check}"].mean()) if readable.any() else 0.0
