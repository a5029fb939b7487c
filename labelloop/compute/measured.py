"""Rates this machine measured, so a page can say how long a job will take without promising.

Each long job (embedding, projecting) records how many items it did in how
many seconds; a page then estimates from the last such job of the same kind
in this workspace, or shows no estimate at all. Stored as one small JSON file
per kind under ``<workspace>/.measured/``, written whole and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from labelloop.data.workspace import local_workspace


@dataclass(frozen=True)
class Rate:
    kind: str
    items: int
    seconds: float
    when: float  # time.time() of the measurement

    @property
    def per_second(self) -> float:
        return self.items / max(self.seconds, 1e-9)

    def estimate(self, items: int) -> str:
        """E.g. "about 40 s for 6,000 images (the last job here ran at 150 per second)"."""
        seconds = items / self.per_second
        span = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
        return f"about {span} for {items:,} images (the last job here ran at {self.per_second:,.0f} per second)"


def _path(workspace, kind: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", kind)
    return local_workspace(workspace) / ".measured" / f"{safe}.json"


def record(workspace, kind: str, items: int, seconds: float) -> None:
    """Remember that a ``kind`` job did ``items`` in ``seconds`` (jobs too small to time are ignored)."""
    if items < 100 or seconds <= 0:
        return  # start-up costs dominate: such a rate would mislead
    path = _path(workspace, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps({"kind": kind, "items": int(items), "seconds": float(seconds), "when": time.time()}), encoding="utf-8")
    os.replace(tmp, path)


def last_rate(workspace, kind: str) -> Rate | None:
    """The last measured rate of ``kind`` jobs in this workspace, or None."""
    try:
        data = json.loads(_path(workspace, kind).read_text(encoding="utf-8"))
        return Rate(data["kind"], int(data["items"]), float(data["seconds"]), float(data["when"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
