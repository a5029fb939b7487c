"""Import: class folders, flat folders, manifests; every kind of bad file; thumbnails."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from labelloop.data.file_checks import check_image
from labelloop.data.import_report import load_import_report
from labelloop.data.ingest import add_images, import_dataset
from labelloop.data.schema import UNDEFINED
from labelloop.data.workspace import DatasetPaths, list_datasets, thumbnail_path
from labelloop.errors import UserError
from tests.conftest import draw_image


def reasons(report) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in report.skipped}


def test_class_folders_become_labels_and_an_empty_class_still_exists(class_folders: Path, workspace: Path):
    progress = []
    table, report = import_dataset(class_folders, "animals", workspace, progress=lambda done, total: progress.append((done, total)))
    rows = table.read()
    assert len(rows) == 7 and report.n_imported == 7 and not report.skipped
    assert rows.groupby("label").size().to_dict() == {"cat": 4, "dog": 3}
    assert table.classes() == ["bird", "cat", "dog"]
    assert report.empty_classes == ["bird"]
    assert table.class_counts().loc["bird", "samples"] == 0
    assert (rows[["width", "height"]] == [32, 24]).all().all() and set(rows["mode"]) == {"RGB"}
    assert list(rows["sample_id"]) == list(range(1, 8))
    assert progress[-1] == (7, 7)
    assert list_datasets(workspace) == ["animals"]
    assert load_import_report(workspace, "animals").n_imported == 7
    for content_hash in rows["content_hash"]:
        with Image.open(thumbnail_path(DatasetPaths(workspace, "animals").thumbs, content_hash)) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 128


def test_split_folders_set_the_split(tmp_path: Path, workspace: Path):
    root = tmp_path / "splits"
    draw_image(root / "train" / "cat" / "a.png", 1)
    draw_image(root / "train" / "dog" / "b.png", 2)
    draw_image(root / "val" / "cat" / "c.png", 3)
    draw_image(root / "test" / "dog" / "d.png", 4)
    table, report = import_dataset(root, "splits", workspace)
    rows = table.read().set_index(table.read()["path"].map(lambda p: Path(p).name))
    assert report.layout == "split/class-folders"
    assert rows.loc["a.png", ["label", "split"]].tolist() == ["cat", "train"]
    assert rows.loc["c.png", ["label", "split"]].tolist() == ["cat", "val"]
    assert rows.loc["d.png", ["label", "split"]].tolist() == ["dog", "test"]
    assert table.classes() == ["cat", "dog"]


def test_a_flat_folder_is_all_undefined(tmp_path: Path, workspace: Path):
    for i in range(3):
        draw_image(tmp_path / "flat" / f"{i}.jpg", i, fmt="JPEG")
    table, report = import_dataset(tmp_path / "flat", "flat", workspace)
    assert report.layout == "flat"
    assert set(table.read()["label"]) == {UNDEFINED} and table.classes() == []


def test_loose_images_and_an_undefined_folder_are_unlabelled(class_folders: Path, workspace: Path):
    draw_image(class_folders / "loose.png", 50)
    draw_image(class_folders / "undefined" / "u.png", 51)
    table, report = import_dataset(class_folders, "animals", workspace)
    labels = table.read().set_index(table.read()["path"].map(lambda p: Path(p).name))["label"]
    assert labels["loose.png"] == UNDEFINED and labels["u.png"] == UNDEFINED
    assert "undefined" not in table.classes()
    assert any("directly in" in w for w in report.warnings)


def _bomb_png(path: Path, side: int = 40000) -> None:
    """A valid-looking PNG header claiming side x side pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def test_bad_files_among_good_ones_are_skipped_with_a_reason(class_folders: Path, workspace: Path):
    cat = class_folders / "cat"
    good = (cat / "cat_0.png").read_bytes()
    (cat / "truncated.png").write_bytes(good[: len(good) // 2])
    jpeg = draw_image(cat / "full.jpg", 77, size=(200, 150), fmt="JPEG").read_bytes()
    (cat / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (cat / "zero.png").write_bytes(b"")
    (cat / "random.png").write_bytes(os.urandom(500))
    (cat / "text.jpg").write_text("hello, I am not a JPEG")
    (cat / "notes.txt").write_text("a note")
    _bomb_png(cat / "bomb.png")
    table, report = import_dataset(class_folders, "animals", workspace)
    why = reasons(report)
    assert why["truncated.png"].startswith("truncated or corrupt")
    assert why["truncated.jpg"].startswith("truncated or corrupt")
    assert why["zero.png"].startswith("zero bytes")
    assert why["random.png"].startswith("not an image")
    assert why["text.jpg"].startswith("not an image")
    assert why["notes.txt"].startswith("not an image")
    assert why["bomb.png"].startswith("too large")
    assert len(table.read()) == 8  # the 7 good ones and full.jpg
    assert report.n_found == 8 + 7
    assert "skipped 7" in report.describe()


@pytest.mark.parametrize(
    "mode, fmt, suffix",
    [
        ("I;16", "PNG", ".png"),
        ("CMYK", "JPEG", ".jpg"),
        ("P", "PNG", ".png"),
        ("RGBA", "PNG", ".png"),
        ("LA", "PNG", ".png"),
        ("1", "PNG", ".png"),
        ("L", "TIFF", ".tif"),
        ("RGB", "BMP", ".bmp"),
        ("P", "GIF", ".gif"),
        ("RGB", "WEBP", ".webp"),
    ],
)
def test_unusual_image_modes_import_and_get_rgb_thumbnails(tmp_path: Path, workspace: Path, mode: str, fmt: str, suffix: str):
    path = draw_image(tmp_path / "odd" / "things" / f"image{suffix}", 3, mode=mode, fmt=fmt)
    table, report = import_dataset(tmp_path / "odd", "odd", workspace)
    assert not report.skipped, report.skipped
    row = table.read().iloc[0]
    with Image.open(path) as original:
        assert row["mode"] == original.mode
    with Image.open(thumbnail_path(DatasetPaths(workspace, "odd").thumbs, row["content_hash"])) as thumb:
        assert thumb.mode == "RGB"
        if mode == "I;16":  # 16-bit values are scaled, not clipped to white
            assert thumb.convert("L").getextrema()[0] < 200


def test_unicode_and_spaces_in_names_survive(tmp_path: Path, workspace: Path):
    root = tmp_path / "données à trier"
    draw_image(root / "chat noir 猫" / "café 1.png", 1)
    draw_image(root / "chien" / "ünïcödé.png", 2)
    table, _ = import_dataset(root, "unicode", workspace)
    rows = table.read()
    assert set(rows["label"]) == {"chat noir 猫", "chien"}
    assert any(p.endswith("café 1.png") for p in rows["path"]) and all(os.path.exists(p) for p in rows["path"])


def test_a_file_name_that_is_not_utf8_is_skipped_not_fatal(tmp_path: Path, workspace: Path):
    root = tmp_path / "bytes"
    draw_image(root / "ok.png", 1)
    good = (root / "ok.png").read_bytes()
    with open(os.path.join(os.fsencode(root), b"bad\xff.png"), "wb") as handle:
        handle.write(good + b"x")
    table, report = import_dataset(root, "bytes", workspace)
    assert len(table.read()) == 1
    assert "not valid UTF-8" in report.skipped[0].reason


def test_exact_duplicates_are_reported_and_both_kept(class_folders: Path, workspace: Path):
    (class_folders / "dog" / "copy_of_cat.png").write_bytes((class_folders / "cat" / "cat_0.png").read_bytes())
    table, report = import_dataset(class_folders, "animals", workspace)
    assert len(table.read()) == 8
    assert len(report.duplicate_groups) == 1
    assert sorted(Path(p).name for p in report.duplicate_groups[0]) == ["cat_0.png", "copy_of_cat.png"]


def test_a_symlink_loop_does_not_hang_or_duplicate(class_folders: Path, workspace: Path):
    os.symlink(class_folders, class_folders / "cat" / "loop")
    table, _ = import_dataset(class_folders, "animals", workspace)
    assert len(table.read()) == 7


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "is empty"),
        (lambda root: (root.mkdir(), (root / "a.txt").write_text("x"), (root / "b.csv.bak").write_text("y")), "No images in"),
        (lambda root: (root.parent.mkdir(exist_ok=True), root.write_text("not a folder")), "is a file"),
    ],
)
def test_sources_with_nothing_to_import_get_a_clear_error(tmp_path: Path, workspace: Path, setup, match):
    root = tmp_path / "source"
    setup(root)
    with pytest.raises(UserError, match=match):
        import_dataset(root, "nothing", workspace)
    assert list_datasets(workspace) == []


def test_a_folder_of_only_broken_images_writes_nothing(tmp_path: Path, workspace: Path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    (root / "b.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="None of the 2 file"):
        import_dataset(root, "broken", workspace)
    assert list(workspace.iterdir()) == []  # no data set, no staging folder left behind


def test_an_existing_name_is_refused(class_folders: Path, workspace: Path):
    import_dataset(class_folders, "animals", workspace)
    with pytest.raises(UserError, match="already exists"):
        import_dataset(class_folders, "animals", workspace)


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 65])
def test_unsafe_data_set_names_are_refused(class_folders: Path, workspace: Path, name: str):
    with pytest.raises(UserError, match="cannot be a data set name"):
        import_dataset(class_folders, name, workspace)


# --------------------------------------------------------------------------- manifests


@pytest.fixture
def manifest_folder(tmp_path: Path) -> Path:
    root = tmp_path / "manifested"
    for i in range(4):
        draw_image(root / "imgs" / f"{i}.png", 100 + i)
    return root


def test_a_csv_manifest_resolves_relative_paths_and_reads_labels_and_splits(manifest_folder: Path, workspace: Path):
    absolute = draw_image(manifest_folder.parent / "elsewhere" / "abs.png", 200)
    (manifest_folder / "labels.csv").write_text(
        "path,label,split\n"
        "imgs/0.png,cat,train\n"
        "imgs/1.png,dog,validation\n"
        "imgs/2.png,,\n"
        f"{absolute},cat,test\n"
        "imgs/3.png,undefined,\n"
    )
    table, report = import_dataset(manifest_folder / "labels.csv", "m", workspace)
    rows = table.read().set_index(table.read()["path"].map(lambda p: Path(p).name))
    assert report.layout == "manifest" and not report.skipped
    assert rows.loc["0.png", ["label", "split"]].tolist() == ["cat", "train"]
    assert rows.loc["1.png", ["label", "split"]].tolist() == ["dog", "val"]
    assert rows.loc["2.png", "label"] == UNDEFINED and rows.loc["3.png", "label"] == UNDEFINED
    assert rows.loc["abs.png", "split"] == "test"
    assert rows.loc["0.png", "path"] == str(manifest_folder / "imgs" / "0.png")


def test_a_parquet_manifest_works_too(manifest_folder: Path, workspace: Path):
    pd.DataFrame({"path": ["imgs/0.png", "imgs/1.png"], "label": ["a", "b"]}).to_parquet(manifest_folder / "m.parquet")
    table, _ = import_dataset(manifest_folder / "m.parquet", "pq", workspace)
    assert sorted(table.read()["label"]) == ["a", "b"]


def test_manifest_missing_files_and_duplicate_rows_are_skipped_with_reasons(manifest_folder: Path, workspace: Path):
    (manifest_folder / "labels.csv").write_text(
        "path,label\nimgs/0.png,cat\nimgs/missing.png,cat\nimgs/0.png,dog\n./imgs/1.png,dog\n,cat\n"
    )
    table, report = import_dataset(manifest_folder / "labels.csv", "m", workspace)
    assert len(table.read()) == 2
    why = [s.reason for s in report.skipped]
    assert any(r.startswith("missing") for r in why)
    assert any("duplicate manifest row: row 4 names the same file as row 2" in r for r in why)
    assert any("empty path" in r for r in why)
    assert table.read().set_index(table.read()["path"].map(lambda p: Path(p).name)).loc["0.png", "label"] == "cat"  # first row wins


@pytest.mark.parametrize(
    "content, match",
    [
        ("file,label\nimgs/0.png,cat\n", "no 'path' column"),
        ("path\nimgs/0.png\n", "no 'label' column"),
        ("path,label\n", "has no rows"),
        ("path,label,split\nimgs/0.png,cat,holdout\n", "unknown split values"),
        ("path,label\nimgs/0.png,undefined \nimgs/1.png,\x01bad\n", "control characters"),
    ],
)
def test_bad_manifests_get_a_clear_error(manifest_folder: Path, workspace: Path, content: str, match: str):
    (manifest_folder / "labels.csv").write_text(content)
    with pytest.raises(UserError, match=match):
        import_dataset(manifest_folder / "labels.csv", "m", workspace)
    assert list_datasets(workspace) == []


# --------------------------------------------------------------------------- adding and caching


def test_adding_images_makes_a_new_version_with_only_the_new_files(class_folders: Path, workspace: Path):
    table, _ = import_dataset(class_folders, "animals", workspace)
    draw_image(class_folders / "cat" / "new_cat.png", 300)
    draw_image(class_folders / "fox" / "fox.png", 301)
    version, report = add_images(class_folders, "animals", workspace)
    assert version == 2
    assert report.n_imported == 2 and sum(s.reason == "already in the data set" for s in report.skipped) == 7
    rows = table.read(2)
    assert rows["sample_id"].tolist() == list(range(1, 10))
    assert "fox" in table.classes(2) and "fox" not in table.classes(1)
    assert table.diff(1, 2).counts()["added"] == 2
    assert load_import_report(workspace, "animals", 2).n_imported == 2
    with pytest.raises(UserError, match="already in"):
        add_images(class_folders, "animals", workspace)


def test_thumbnails_are_made_once(tmp_path: Path):
    image = draw_image(tmp_path / "a.png", 1)
    thumbs = tmp_path / "thumbs"
    first = check_image(str(image), str(thumbs))
    target = thumbnail_path(thumbs, first["content_hash"])
    stamp = target.stat().st_mtime_ns
    os.utime(target, ns=(stamp - 10**9, stamp - 10**9))
    check_image(str(image), str(thumbs))
    assert target.stat().st_mtime_ns == stamp - 10**9  # not rewritten


def test_a_pool_of_processes_gives_the_same_rows_as_one_process(tmp_path: Path, workspace: Path):
    root = tmp_path / "many"
    for i in range(300):
        draw_image(root / ("a" if i % 2 else "b") / f"{i}.png", i, size=(8, 8))
    (root / "a" / "bad.png").write_bytes(b"nope")
    pooled, pooled_report = import_dataset(root, "pooled", workspace, workers=2)
    inline, inline_report = import_dataset(root, "inline", workspace, workers=1)
    assert pooled.read().drop(columns=[]).equals(inline.read())
    assert len(pooled.read()) == 300 and len(pooled_report.skipped) == 1 == len(inline_report.skipped)


def test_thumbnail_paths_cannot_escape_the_cache(tmp_path: Path):
    with pytest.raises(UserError):
        thumbnail_path(tmp_path, "../../etc/passwd")


def _marker_exists(path: str) -> bool:
    import os

    return os.path.exists(path)


@pytest.mark.slow
def test_decoding_workers_never_run_the_parents_main_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Under `streamlit run` the parent's __main__ is the app script; workers used to run all of it."""
    import sys
    import types

    from labelloop.data.images import worker_pool

    marker = tmp_path / "the script ran"
    script = tmp_path / "app_like.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    fake_main = types.ModuleType("__main__")
    fake_main.__file__, fake_main.__spec__ = str(script), None  # what Streamlit's script runner sets up
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    with worker_pool(2) as pool:
        assert list(pool.map(_marker_exists, [str(marker)] * 4)) == [False] * 4
    assert not marker.exists()
    assert fake_main.__file__ == str(script)  # put back
