"""The bad-input matrix: every way a user's files, folders, settings and models can be wrong.

One parametrised test. Each case does one wrong thing against a copy of a
real workspace (a data set of real images with three versions, a pixel
embedding and a finished heads run) and must end, within the time limit,
with a message that says what is wrong and what to do, while every version
of the data set stays exactly as it was.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from labelloop.data.changes import ChangeSet
from labelloop.data.tables import LabelTable
from labelloop.errors import ConflictError, UserError
from tests.conftest import draw_image

CLASSES = ["cat", "dog", "owl"]


# --------------------------------------------------------------------------- the workspace every case starts from


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    from labelloop.data.ingest import import_dataset
    from labelloop.embed import EmbedderConfig, embed_dataset
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import train

    root = tmp_path_factory.mktemp("template")
    source = root / "source"
    for c, label in enumerate(CLASSES):
        for i in range(8):
            draw_image(source / label / f"{label}{i}.png", 100 * c + i, size=(24, 24))
    workspace = root / "ws"
    table, _ = import_dataset(source, "base", workspace)
    table.commit(ChangeSet.relabel([1, 2], "dog"), parent=1, message="two cats are dogs")
    table.commit(ChangeSet.set_weight([3], 0.0), parent=2, message="exclude a blurry one")
    embedding = embed_dataset(workspace, "base", EmbedderConfig(kind="pixels", resolution=16)).key
    run = train(workspace, "base", HeadsSettings(heads=("knn", "logreg"), embedding=embedding))
    (root / "meta.json").write_text(json.dumps({"embedding": embedding, "run": run.run_id}))
    return root


@dataclass
class Ctx:
    workspace: Path  # a private copy of the template's workspace
    tmp: Path  # a scratch folder for the case's own files
    embedding: str
    run: str

    @property
    def table(self) -> LabelTable:
        return LabelTable(self.workspace / "base" / "labels")

    @property
    def run_dir(self) -> Path:
        return self.workspace / "base" / "runs" / self.run

    def spare(self) -> LabelTable:
        """A second copy of the data set, for cases that damage the table itself."""
        shutil.copytree(self.workspace / "base", self.workspace / "spare", symlinks=True)
        return LabelTable(self.workspace / "spare" / "labels")


def error_of(action: Callable[[], object], kind: type[Exception] = UserError) -> str:
    """The message of the error ``action`` raises; fails the case if it raises none or another kind."""
    try:
        action()
    except kind as exc:
        return str(exc)
    pytest.fail(f"expected a {kind.__name__}, but nothing was raised")


def skip_reasons(report) -> str:
    return " | ".join(f"{Path(s.path).name}: {s.reason}" for s in report.skipped)


# --------------------------------------------------------------------------- helpers that make bad files


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header that claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


def good_png(seed: int = 1) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def folder_with(tmp: Path, files: dict[str, bytes]) -> Path:
    """A class-folder source with one good image per class plus ``files`` (relative path -> bytes)."""
    root = tmp / "source"
    (root / "cat").mkdir(parents=True, exist_ok=True)
    (root / "cat" / "good.png").write_bytes(good_png(1))
    (root / "dog").mkdir(exist_ok=True)
    (root / "dog" / "good.png").write_bytes(good_png(2))
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def import_into(ctx: Ctx, source: Path, name: str = "new"):
    from labelloop.data.ingest import import_dataset

    return import_dataset(source, name, ctx.workspace, workers=1)


def imported_skipping(ctx: Ctx, files: dict[str, bytes]) -> str:
    """Import a source with ``files`` among good images: the good ones go in, the bad ones are reported."""
    _, report = import_into(ctx, folder_with(ctx.tmp, files))
    assert report.n_imported == 2, report.describe()
    return skip_reasons(report)


def manifest(ctx: Ctx, text: str | bytes, suffix: str = ".csv") -> Path:
    path = ctx.tmp / f"manifest{suffix}"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    folder_with(ctx.tmp, {})
    return path


def change_file(ctx: Ctx, text: str) -> Path:
    path = ctx.tmp / "changes.csv"
    path.write_text(text, encoding="utf-8")
    return path


def apply_file(ctx: Ctx, text: str, new_classes=()) -> int:
    from labelloop.data.exchange import read_change_file

    table = ctx.table
    return table.commit(read_change_file(change_file(ctx, text), new_classes), parent=table.head_version(), message="from a file")


def train_with(ctx: Ctx, **settings) -> str:
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import train

    settings.setdefault("embedding", ctx.embedding)
    return error_of(lambda: train(ctx.workspace, "base", HeadsSettings(**settings)))


def embed_with(ctx: Ctx, **settings) -> str:
    from labelloop.embed import EmbedderConfig, embed_dataset

    return error_of(lambda: embed_dataset(ctx.workspace, "base", EmbedderConfig(**settings)))


def weights_file(ctx: Ctx, data: bytes, name: str = "weights.pt") -> str:
    path = ctx.tmp / name
    path.write_bytes(data)
    return str(path)


class _Boobytrap:
    """Unpickling this runs code: it would create the file named in ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled_trap(ctx: Ctx) -> bytes:
    return pickle.dumps({"weight": _Boobytrap(str(ctx.tmp / "PWNED"))})


def predict_with(ctx: Ctx, folder: Path | None = None) -> str:
    from labelloop.train.predict import predict_folder

    if folder is None:
        folder = folder_with(ctx.tmp, {})
    return error_of(lambda: predict_folder(ctx.run, folder, ctx.tmp / "preds.csv", ctx.workspace))


def model_file(ctx: Ctx, name: str) -> Path:
    return ctx.run_dir / "model" / name


def load_run_model(ctx: Ctx) -> str:
    from labelloop.train.predict import load_model

    return error_of(lambda: load_model(ctx.run_dir / "model"))


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"this machine cannot mount ({result.stderr.strip()}): the case needs a mount to simulate it")


# --------------------------------------------------------------------------- the cases


def read_only_commit(ctx: Ctx) -> str:
    """A workspace on a read-only mount (root ignores file permissions, a read-only mount it cannot)."""
    view = ctx.tmp / "read-only-view"
    view.mkdir()
    mount("--bind", str(ctx.workspace), str(view))
    try:
        mount("-o", "remount,ro,bind", str(view))
        table = LabelTable(view / "base" / "labels", lock_path=view / "base" / "labels.lock")
        assert len(table.read()) == 24  # reading still works
        return error_of(lambda: table.commit(ChangeSet.relabel([5], "owl"), parent=3, message="on a read-only disk"))
    finally:
        subprocess.run(["umount", str(view)], check=False)


def read_only_import(ctx: Ctx) -> str:
    from labelloop.data.ingest import import_dataset

    source = folder_with(ctx.tmp, {})
    view = ctx.tmp / "read-only-view"
    view.mkdir()
    mount("--bind", str(ctx.workspace), str(view))
    try:
        mount("-o", "remount,ro,bind", str(view))
        return error_of(lambda: import_dataset(source, "new", view, workers=1))
    finally:
        subprocess.run(["umount", str(view)], check=False)


def nearly_full_disk(ctx: Ctx, action: Callable[[Path], object]) -> str:
    """Run ``action`` on a copy of the workspace on a small disk with only a few KB left."""
    disk = ctx.tmp / "small-disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk))
    try:
        shutil.copytree(ctx.workspace / "base" / "labels", disk / "base" / "labels")
        stats = os.statvfs(disk)
        with open(disk / "filler", "wb") as filler:
            filler.write(b"\0" * (stats.f_bavail * stats.f_frsize - 4096))
        message = error_of(lambda: action(disk))
        os.remove(disk / "filler")
        table = LabelTable(disk / "base" / "labels")
        assert table.head_version() == 3 and len(table.read(3)) == 24  # nothing half-written, nothing lost
        return message
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def commit_on_full_disk(disk: Path) -> int:
    table = LabelTable(disk / "base" / "labels")
    return table.commit(ChangeSet.relabel(range(1, 25), "owl"), parent=3, message="everything is an owl")


def import_on_full_disk(disk: Path):
    from labelloop.data.ingest import import_dataset

    source = disk.parent / "source-elsewhere"
    for i in range(30):
        draw_image(source / "cat" / f"{i}.png", i, size=(64, 64))
    return import_dataset(source, "new", disk, workers=1)


def truncate_file(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def tampered_log(ctx: Ctx) -> str:
    table = ctx.spare()
    truncate_file(table.path / "_delta_log" / f"{2:020d}.json")  # version 3's entry
    message = error_of(lambda: LabelTable(table.path).version_info(3))
    assert len(LabelTable(table.path).read(2)) == 24  # the versions before it still read
    return message


def log_not_ours(ctx: Ctx) -> str:
    table = ctx.spare()
    entry = table.path / "_delta_log" / f"{2:020d}.json"
    lines = [json.loads(line) for line in entry.read_text().splitlines()]
    for action in lines:
        action.get("commitInfo", {}).pop("labelloop", None)
    entry.write_text("\n".join(json.dumps(a) for a in lines) + "\n")
    return error_of(lambda: LabelTable(table.path).version_info(3))


def tampered_parquet(ctx: Ctx) -> str:
    table = ctx.spare()
    for uri in table.parquet_files(3):
        path = Path(uri.removeprefix("file://"))
        data = bytearray(path.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
        path.write_bytes(bytes(data))
    return error_of(lambda: LabelTable(table.path).read(3))


def deleted_parquet(ctx: Ctx) -> str:
    table = ctx.spare()
    for uri in table.parquet_files(3):
        os.remove(uri.removeprefix("file://"))
    message = error_of(lambda: LabelTable(table.path).read(3))
    assert len(LabelTable(table.path).read(1)) == 24  # version 1 has its own files
    return message


def empty_log(ctx: Ctx) -> str:
    table = ctx.spare()
    for entry in (table.path / "_delta_log").iterdir():
        entry.unlink()
    return error_of(lambda: LabelTable(table.path).head_version())


def stale_commit(ctx: Ctx) -> str:
    return error_of(lambda: ctx.table.commit(ChangeSet.relabel([5], "owl"), parent=2, message="made on version 2"), ConflictError)


def symlink_loop(ctx: Ctx) -> str:
    source = folder_with(ctx.tmp, {})
    os.symlink(source, source / "cat" / "loop")  # cat/loop -> the source folder itself
    os.symlink("nowhere", source / "dog" / "dangling.png")
    _, report = import_into(ctx, source)
    assert report.n_imported == 2, report.describe()
    return skip_reasons(report)


def unicode_and_spaces(ctx: Ctx) -> str:
    from labelloop.data.workspace import open_table

    source = ctx.tmp / "mes données d'été" / "source folder"
    draw_image(source / "chat noir" / "ïmage 1.png", 1)
    draw_image(source / "chat noir" / "日本 2.png", 2)
    draw_image(source / "<i>owl & 'co'" / "3 \"quoted\".png", 3)
    table, report = import_into(ctx, source)
    frame = open_table(ctx.workspace, "new").read()
    assert sorted(table.classes()) == sorted(["<i>owl & 'co'", "chat noir"]) and len(frame) == 3
    assert all(Path(p).is_file() for p in frame["path"])  # paths stored as they are on disk
    return f"imported {report.n_imported}"


def manifest_with_unknown_files(ctx: Ctx) -> str:
    from labelloop.data.ingest import import_dataset

    path = manifest(ctx, "path,label\nsource/cat/good.png,cat\nsource/cat/missing.png,cat\n/etc/../nowhere.png,dog\n")
    _, report = import_dataset(path, "new", ctx.workspace, workers=1)
    assert report.n_imported == 1
    return skip_reasons(report)


def import_manifest(ctx: Ctx, text: str | bytes, suffix: str = ".csv") -> str:
    from labelloop.data.ingest import import_dataset

    path = manifest(ctx, text, suffix)
    return error_of(lambda: import_dataset(path, "new", ctx.workspace, workers=1))


def parquet_manifest_without_label(ctx: Ctx) -> bytes:
    buffer = io.BytesIO()
    pd.DataFrame({"path": ["source/cat/good.png"], "klass": ["cat"]}).to_parquet(buffer)
    return buffer.getvalue()


def torchvision_weights(ctx: Ctx, data: bytes) -> str:
    return embed_with(ctx, kind="torchvision", arch="resnet18", weights=weights_file(ctx, data))


def mismatched_state_dict(ctx: Ctx) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(7)}, buffer)
    return buffer.getvalue()


def unpickling_refused(ctx: Ctx, action: Callable[[], str]) -> str:
    message = action()
    assert not (ctx.tmp / "PWNED").exists(), "a pickle in a model file ran code"
    return message


def npz_with_pickle(ctx: Ctx) -> str:
    model = model_file(ctx, "model.npz")
    np.savez(model, classes=np.array([{"a": 1}], dtype=object), trap=np.array([_Boobytrap(str(ctx.tmp / "PWNED"))], dtype=object))
    return unpickling_refused(ctx, lambda: load_run_model(ctx))


def model_from_another_dataset(ctx: Ctx) -> str:
    config_path = model_file(ctx, "model_config.json")
    config = json.loads(config_path.read_text())
    config["label_names"] = ["apple", "pear"]
    config_path.write_text(json.dumps(config))
    return load_run_model(ctx)


def predict_on_images(ctx: Ctx, files: dict[str, bytes]) -> str:
    from labelloop.train.predict import predict_folder

    folder = ctx.tmp / "new images"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    out, n, failures = predict_folder(ctx.run, folder, ctx.tmp / "preds.csv", ctx.workspace)
    written = pd.read_csv(out)
    assert n == len(written) == 1 and list(written.columns[:2]) == ["filename", "label"], written
    return " | ".join(f"{name}: {reason}" for name, reason in failures)


def relabel_to(ctx: Ctx, label: str, **kwargs) -> str:
    return error_of(lambda: ctx.table.commit(ChangeSet.relabel([5], label, **kwargs), parent=3, message="relabel"))


@dataclass(frozen=True)
class Case:
    id: str
    run: Callable[[Ctx], str]
    expect: str  # a regular expression the message must match (case-insensitive)


CASES = [
    # ----- importing folders
    Case("import: source does not exist", lambda c: error_of(lambda: import_into(c, c.tmp / "no such folder")), r"does not exist"),
    Case("import: empty folder", lambda c: error_of(lambda: import_into(c, Path(c.tmp / "empty").mkdir() or c.tmp / "empty")), r"empty.*put images"),
    Case("import: no image files at all", lambda c: error_of(lambda: import_into(c, _only_text(c))), r"no images.*extension"),
    Case("import: every image broken", lambda c: error_of(lambda: import_into(c, _only_broken(c))), r"none of the 2 file.*could be imported.*nothing was written"),
    Case("import: truncated image", lambda c: imported_skipping(c, {"cat/cut.png": good_png(9)[:60]}), r"cut\.png: truncated or corrupt"),
    Case("import: zero-byte image", lambda c: imported_skipping(c, {"cat/empty.jpg": b""}), r"empty\.jpg: zero bytes"),
    Case("import: decompression bomb", lambda c: imported_skipping(c, {"cat/bomb.png": png_claiming(60000, 60000)}), r"bomb\.png: too large: .*(3600000000|60000x60000) pixels.*decompression bomb"),
    Case("import: text file named .jpg", lambda c: imported_skipping(c, {"dog/notes.jpg": b"these are my notes, not a picture"}), r"notes\.jpg: not an image"),
    Case("import: HTML file named .png", lambda c: imported_skipping(c, {"dog/page.png": b"<html><script>alert(1)</script></html>"}), r"page\.png: not an image"),
    Case("import: non-image extension", lambda c: imported_skipping(c, {"dog/readme.txt": b"hello"}), r"readme\.txt: not an image: extension '\.txt'"),
    Case("import: symlink loop and dangling link", symlink_loop, r"dangling\.png: missing"),
    Case("import: unicode, spaces, quotes and HTML in paths and classes", unicode_and_spaces, r"imported 3"),
    Case("import: non-UTF-8 file name", lambda c: imported_skipping(c, {os.fsdecode(b"cat/caf\xe9.png"): good_png(7)}), r"not valid UTF-8; rename the file"),
    Case("import: unreadable file", lambda c: _unreadable(c), r"locked\.png: unreadable"),
    Case("import: name already taken", lambda c: error_of(lambda: import_into(c, folder_with(c.tmp, {}), "base")), r"already"),
    Case("import: name with a path in it", lambda c: error_of(lambda: import_into(c, folder_with(c.tmp, {}), "../escape")), r"cannot be a data set name"),
    Case("import: class folder named 'undefined' is not a class", lambda c: _undefined_folder(c), r"undefined: 1"),
    # ----- manifests
    Case("manifest: no label column", lambda c: import_manifest(c, "path,klass\nsource/cat/good.png,cat\n"), r"no 'label' column.*path,label"),
    Case("manifest: zero bytes", lambda c: import_manifest(c, ""), r"cannot read the manifest"),
    Case("manifest: only a header", lambda c: import_manifest(c, "path,label\n"), r"has no rows"),
    Case("manifest: broken quoting", lambda c: import_manifest(c, 'path,label\n"source/cat/good.png,cat\nx,"y\n"z'), r"cannot read the manifest|none of the"),
    Case("manifest: binary garbage", lambda c: import_manifest(c, os.urandom(300)), r"cannot read the manifest|no 'path'"),
    Case("manifest: corrupt Parquet", lambda c: import_manifest(c, b"PAR1" + os.urandom(200) + b"PAR1", ".parquet"), r"cannot read the manifest"),
    Case("manifest: Parquet without a label column", lambda c: import_manifest(c, parquet_manifest_without_label(c), ".parquet"), r"no 'label' column"),
    Case("manifest: unknown split", lambda c: import_manifest(c, "path,label,split\nsource/cat/good.png,cat,holdout\n"), r"unknown split.*holdout"),
    Case("manifest: duplicate rows and blank labels", lambda c: _manifest_duplicates(c), r"duplicate manifest row: row 4 names the same file as row 3"),
    Case("manifest: missing files and a path outside", manifest_with_unknown_files, r"missing\.png: missing.*nowhere\.png: missing"),
    # ----- tables and versions
    Case("table: stale parent version", stale_commit, r"no longer the latest.*nothing was written.*reload version 3"),
    Case("table: version that does not exist", lambda c: error_of(lambda: c.table.read(99)), r"version 99 does not exist.*1 to 3"),
    Case("table: version zero", lambda c: error_of(lambda: c.table.read(0)), r"version 0 does not exist"),
    Case("table: not a table folder", lambda c: error_of(lambda: LabelTable(c.tmp)), r"not a label table.*labelloop import"),
    Case("table: truncated log entry", tampered_log, r"log entry of version 3 is damaged.*backup"),
    Case("table: log entry not written by the app", log_not_ours, r"not written by this app"),
    Case("table: empty log", empty_log, r"has no versions.*re-import"),
    Case("table: damaged Parquet data file", tampered_parquet, r"missing or damaged.*backup"),
    Case("table: deleted Parquet data file", deleted_parquet, r"missing or damaged.*backup"),
    Case("table: unknown class name", lambda c: relabel_to(c, "Owl"), r"not classes of this table.*add them as new classes explicitly"),
    Case("table: 'undefined' as a new class", lambda c: relabel_to(c, "undefined", new_class=True), r"reserved"),
    Case("table: blank class name", lambda c: relabel_to(c, "   ", new_class=True), r"cannot be a class name"),
    Case("table: unknown sample id", lambda c: error_of(lambda: c.table.commit(ChangeSet.relabel([999], "owl"), parent=3, message="x")), r"999"),
    Case("table: change that changes nothing", lambda c: error_of(lambda: c.table.commit(ChangeSet.relabel([4], "cat"), parent=3, message="x")), r"nothing to commit"),
    Case("table: empty commit message", lambda c: error_of(lambda: c.table.commit(ChangeSet.relabel([5], "owl"), parent=3, message="  ")), r"message"),
    Case("table: restore the head onto itself", lambda c: error_of(lambda: c.table.restore(3, parent=3)), r"already the latest"),
    Case("changes file: unknown label", lambda c: error_of(lambda: apply_file(c, "sample_id,label\n5,Owl\n")), r"not classes of this table.*add them as new classes explicitly"),
    Case("changes file: extra column", lambda c: error_of(lambda: apply_file(c, "sample_id,label,colour\n5,owl,red\n")), r"cannot be applied: colour"),
    Case("changes file: weight that is not a number", lambda c: error_of(lambda: apply_file(c, "sample_id,weight\n5,heavy\n")), r"weight"),
    Case("changes file: sample id that is not a number", lambda c: error_of(lambda: apply_file(c, "sample_id,label\nfive,owl\n")), r"sample_id|sample id"),
    Case("read-only workspace: commit", read_only_commit, r"cannot write to .*(read-only|permissions)"),
    Case("read-only workspace: import", read_only_import, r"read-only|cannot write|not writable|permission"),
    Case("disk nearly full: commit", lambda c: nearly_full_disk(c, commit_on_full_disk), r"could not write version 4.*no space left.*nothing was committed.*free some disk space"),
    Case("disk nearly full: import", lambda c: nearly_full_disk(c, import_on_full_disk), r"no space left.*free some disk space"),
    # ----- settings
    Case("settings: zero epochs", lambda c: train_with(c, epochs=0), r"invalid training setting for heads: epochs per fold must be 1 to 10,000, not 0"),
    Case("settings: negative learning rate", lambda c: train_with(c, learning_rate=-0.1), r"learning rate must be 1e-07 to 10, not -0.1"),
    Case("settings: unknown optimizer", lambda c: train_with(c, optimizer="adamax"), r"optimizer: 'adamax' is not one of sgd, adam, adamw, rmsprop"),
    Case("settings: unknown head", lambda c: train_with(c, heads=("knn", "svm")), r"heads: 'svm' is not one of knn, logreg, mlp, softmax"),
    Case("settings: validation split of 1.5", lambda c: train_with(c, validation_split=1.5), r"validation split must be"),
    Case("settings: dropout of 1", lambda c: train_with(c, mlp_dropout=(1.0, 0.2)), r"mlp dropout must be 0 to 0.95, not 1.0"),
    Case("settings: embedding that was never computed", lambda c: train_with(c, embedding="efficientnet-lite0-nope"), r"labelloop embed|no cached|not embedded|embedding"),
    Case("settings: version that does not exist", lambda c: error_of(lambda: _train_version(c, 42)), r"version 42 does not exist"),
    Case("settings: a single class to train on", lambda c: _single_class(c), r"class"),
    Case("settings: embedder resolution 3", lambda c: embed_with(c, kind="pixels", resolution=3), r"Resolution must be 8 to 1,024, not 3"),
    Case("settings: unknown embedder", lambda c: embed_with(c, kind="vit-huge"), r"Embedder: 'vit-huge' is not one of efficientnet-lite0"),
    Case("settings: weights file that does not exist", lambda c: embed_with(c, kind="torchvision", arch="resnet18", weights=str(c.tmp / "none.pt")), r"does not exist"),
    # ----- checkpoints (user-supplied weights)
    Case("checkpoint: zero bytes", lambda c: torchvision_weights(c, b""), r"cannot read .* as a pytorch checkpoint"),
    Case("checkpoint: truncated", lambda c: torchvision_weights(c, _saved_resnet_bytes()[:5000]), r"cannot read .* as a pytorch checkpoint"),
    Case("checkpoint: a JPEG renamed .pt", lambda c: torchvision_weights(c, good_png(3)), r"cannot read .* as a pytorch checkpoint"),
    Case("checkpoint: pickle that runs code", lambda c: unpickling_refused(c, lambda: torchvision_weights(c, pickled_trap(c))), r"cannot read .* as a pytorch checkpoint"),
    Case("checkpoint: weights of another architecture", lambda c: torchvision_weights(c, mismatched_state_dict(c)), r"do not match|does not match|mismatch|missing"),
    # ----- model files of runs
    Case("model file: zero-byte model.npz", lambda c: (model_file(c, "model.npz").write_bytes(b""), load_run_model(c))[1], r"cannot be read as a (knn|logreg) model"),
    Case("model file: truncated model.npz", lambda c: (truncate_file(model_file(c, "model.npz")), load_run_model(c))[1], r"cannot be read as a (knn|logreg) model"),
    Case("model file: npz that holds pickles", npz_with_pickle, r"cannot be read as a (knn|logreg) model"),
    Case("model file: damaged model_config.json", lambda c: (model_file(c, "model_config.json").write_text("{not json"), load_run_model(c))[1], r"not a model folder written by this app"),
    Case("model file: model from another data set", model_from_another_dataset, r"classes but its config names 2"),
    Case("predict: folder does not exist", lambda c: predict_with(c, c.tmp / "nope"), r"nope"),
    Case("predict: folder without images", lambda c: predict_with(c, Path(c.tmp / "void").mkdir() or c.tmp / "void"), r"no images to predict"),
    Case("predict: broken and good images", lambda c: predict_on_images(c, {"ok.png": good_png(4), "bad.png": b"\x89PNG broken", "bomb.png": png_claiming(70000, 70000)}), r"bad\.png: .*(truncated|not an image).*bomb\.png: too large"),
    Case("predict: run that does not exist", lambda c: error_of(lambda: __import__("labelloop.train.predict").train.predict.predict_folder("no-such-run", c.tmp, c.tmp / "p.csv", c.workspace)), r"no-such-run"),
]


def _manifest_duplicates(ctx: Ctx) -> str:
    from labelloop.data.ingest import import_dataset

    path = manifest(ctx, "path,label\nsource/cat/good.png, \nsource/dog/good.png,undefined \nsource/dog/good.png,dog\n")
    table, report = import_dataset(path, "new", ctx.workspace, workers=1)
    assert table.read()["label"].tolist() == ["undefined", "undefined"]  # blank and 'undefined' both mean not labelled yet
    return skip_reasons(report)


def _only_text(ctx: Ctx) -> Path:
    root = ctx.tmp / "texts"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "notes.txt").write_text("no images here")
    return root


def _only_broken(ctx: Ctx) -> Path:
    root = ctx.tmp / "broken"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(b"not a png")
    (root / "cat" / "b.jpg").write_bytes(b"")
    return root


def _unreadable(ctx: Ctx) -> str:
    if os.geteuid() == 0:  # root reads any file; a file that fails to open is the same path in the code
        source = folder_with(ctx.tmp, {})
        os.symlink("/proc/self/mem", source / "cat" / "locked.png")  # exists, but reading it fails
        _, report = import_into(ctx, source)
        return skip_reasons(report)
    source = folder_with(ctx.tmp, {"cat/locked.png": good_png(5)})
    (source / "cat" / "locked.png").chmod(0)
    _, report = import_into(ctx, source)
    return skip_reasons(report)


def _undefined_folder(ctx: Ctx) -> str:
    source = folder_with(ctx.tmp, {"undefined/x.png": good_png(6)})
    table, _ = import_into(ctx, source)
    assert "undefined" not in table.classes()
    counts = table.read()["label"].value_counts()
    return f"undefined: {counts.get('undefined', 0)}"


def _train_version(ctx: Ctx, version: int):
    from labelloop.train.heads import HeadsSettings
    from labelloop.train.pipeline import train

    return train(ctx.workspace, "base", HeadsSettings(heads=("knn",), embedding=ctx.embedding), version=version)


def _single_class(ctx: Ctx) -> str:
    table = ctx.table
    everyone = table.read()["sample_id"].tolist()
    table.commit(ChangeSet.relabel(everyone, "cat"), parent=3, message="all cats")
    message = train_with(ctx, heads=("knn",))
    table.restore(3, parent=4)
    return message


_RESNET_BYTES: list[bytes] = []


def _saved_resnet_bytes() -> bytes:
    if not _RESNET_BYTES:
        import torch
        import torchvision

        buffer = io.BytesIO()
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), buffer)
        _RESNET_BYTES.append(buffer.getvalue())
    return _RESNET_BYTES[0]


def _fingerprints(workspace: Path) -> dict[int, str]:
    table = LabelTable(workspace / "base" / "labels")
    return {v: pd.util.hash_pandas_object(table.read(v), index=False).sum() for v in range(1, table.head_version() + 1)}


@pytest.mark.timeout(120)  # a case that hangs fails instead of stalling the suite
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_message_and_loses_nothing(case: Case, template: Path, tmp_path: Path):
    workspace = tmp_path / "ws"
    shutil.copytree(template / "ws", workspace, symlinks=True)
    meta = json.loads((template / "meta.json").read_text())
    ctx = Ctx(workspace, tmp_path / "scratch", meta["embedding"], meta["run"])
    ctx.tmp.mkdir()
    before = _fingerprints(workspace)

    message = case.run(ctx)
    print(f"\n[{case.id}] {message}")

    assert re.search(case.expect, message, re.IGNORECASE | re.DOTALL), f"unexpected message: {message}"
    assert "Traceback" not in message and len(message) < 2000
    after = _fingerprints(workspace)
    assert {v: after[v] for v in before} == before  # every version as it was
    assert set(after) - set(before) <= {4, 5}, "only cases that commit on purpose add versions"


def test_the_matrix_has_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
