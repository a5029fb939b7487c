"""The data-health checks, one catalogue: what each is, where it reads from, and what a run of them found (the report)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

NEIGHBOURS = 10  # k of the neighbour graph: cleanlab's default for every Datalab check


MIN_IMAGES = {"images": 2, "embedding": 2 * NEIGHBOURS, "labels": 2 * NEIGHBOURS}


SET_PROPERTY_SHARE = 0.5  # an image check flagging more than this share describes the data set, not some images


@dataclass(frozen=True)
class Check:
    """One kind of data-health issue: what finds it and what it means to a user."""

    name: str  # the library's issue type name (is_<name>_issue / <name>_score in its tables)
    title: str
    source: str  # "images" (cleanvision), "embedding" or "labels" (Datalab), "run" (the training run's own scores)
    meaning: str  # one sentence a user acts on


CHECKS: dict[str, Check] = {c.name: c for c in [
    Check("outlier", "Outlier", "embedding", "far from every other image in the embedding: another domain, a broken capture or a rare case"),
    Check("near_duplicate", "Near duplicate", "embedding", "almost the same image as another one (exact duplicate files included): keep one"),
    Check("non_iid", "Non-IID order", "embedding", "the order of sample ids follows the content (for example sorted by class or source); a split by id range would be biased"),
    # One definition of a label issue everywhere (labelloop.scores.review.open_label_issues): the Health page,
    # the Review page's table and queue, the map and the CLI count the same samples.
    Check("label", "Label issue", "run", "the training run's label-issue ranking flags it and its label still differs from the run's "
          "out-of-fold prediction (not kept by a reviewer): the Review queue walks the same samples"),
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


CHECKS_OF = {source: [c.name for c in CHECKS.values() if c.source == source] for source in ("images", "embedding", "labels", "run")}


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
            {"check": c.name, "title": c.title, "source": {"images": "cleanvision", "embedding": "Datalab (embedding)", "labels": "Datalab (labels + run)", "run": "the run's label-issue ranking"}[c.source],
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


def describe(report: HealthReport) -> str:
    """A few lines for a terminal: what was checked, on what, and the duplicate groups."""
    lines = [f"data health of '{report.name}' version {report.version}: {len(report.samples):,} samples; "
             f"embedding {report.embedding or '(none)'}; run {report.run_id or '(none)'}"]
    if report.duplicate_groups:
        lines.append(f"{len(report.duplicate_groups)} near-duplicate groups ({sum(len(g) for g in report.duplicate_groups):,} samples); largest: "
                     + ", ".join(f"#{i}" for i in report.duplicate_groups[0][:8]))
    lines.append("time: " + ", ".join(f"{stage} {s:.1f} s" for stage, s in report.seconds.items()))
    return "\n".join(lines)
