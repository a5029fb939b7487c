"""What an import read, skipped (with the reason for each file) and found duplicated, kept beside the table."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from labelloop.data import storage
from labelloop.data.discover import Discovery, SkippedFile
from labelloop.data.workspace import (
    DatasetPaths,
)


@dataclass
class ImportReport:
    source: str
    layout: str
    n_found: int = 0
    n_imported: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def start(cls, source: storage.Location, found: Discovery) -> ImportReport:
        """A report holding what discovery found, before any file is checked."""
        return cls(
            source=str(source),
            layout=found.layout,
            n_found=len(found.candidates) + len(found.skipped),
            skipped=list(found.skipped),
            warnings=list(found.warnings),
        )

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.skipped:
            key = item.reason.split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts

    def describe(self) -> str:
        text = f"imported {self.n_imported} of {self.n_found} files from {self.source}"
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped_by_reason().items()))
            text += f"; skipped {len(self.skipped)} ({reasons})"
        if self.duplicate_groups:
            extra = sum(len(g) - 1 for g in self.duplicate_groups)
            text += f"; {extra} exact duplicate file(s) in {len(self.duplicate_groups)} group(s)"
        if self.empty_classes:
            text += f"; classes with no images: {', '.join(self.empty_classes)}"
        return text

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ImportReport:
        data = json.loads(text)
        data["skipped"] = [SkippedFile(**item) for item in data.get("skipped", [])]
        return cls(**data)

    def save(self, location: storage.Location) -> None:
        storage.write_bytes(location, self.to_json().encode("utf-8"))


def load_import_report(workspace: str | os.PathLike | None, name: str, version: int = 1) -> ImportReport | None:
    location = DatasetPaths(workspace, name).import_report(version)
    try:
        return ImportReport.from_json(storage.read_bytes(location).decode("utf-8"))
    except FileNotFoundError:
        return None
