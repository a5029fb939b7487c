"""Workspaces, label tables and images in S3, against a real S3-speaking server (moto) the tests start."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from labelloop.data.changes import ChangeSet
from labelloop.data.import_report import load_import_report
from labelloop.data.ingest import add_images, import_dataset
from labelloop.data.tables import LabelTable
from labelloop.data.workspace import (
    DatasetPaths,
    list_datasets,
    local_workspace,
    open_table,
)
from labelloop.errors import ConflictError, UserError
from tests.conftest import REPO, draw_image, make_rows
from tests.s3 import CuttingProxy, aws_env, s3_server


@pytest.fixture(scope="module")
def endpoint() -> str:
    with s3_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A new empty bucket on the server, the AWS variables pointing at it, and a local cache folder."""
    import boto3

    for key, value in aws_env(endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("LABELLOOP_CACHE", str(tmp_path / "cache"))
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def upload(bucket: str, key: str, data: bytes) -> None:
    import boto3

    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)


def keys(bucket: str, prefix: str = "") -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def image_bytes(seed: int, tmp_path: Path) -> bytes:
    return draw_image(tmp_path / "drawn" / f"{seed}.png", seed=seed).read_bytes()


# --------------------------------------------------------------------------- label tables


@pytest.mark.slow
def test_a_label_table_in_s3_commits_reads_diffs_and_restores_like_a_local_one(bucket: str):
    uri = f"s3://{bucket}/tables/flowers/labels"
    rows = make_rows(3000, ["cat", "dog"])
    table = LabelTable.create(uri, rows, ["cat", "dog"])
    assert table.lock_path is None  # the conditional PUT of the log entry does the locking
    files_v1 = set(keys(bucket, "tables/flowers/labels/part-"))
    assert len(files_v1) == 3  # one file per 1,024 ids

    version = table.commit(ChangeSet.relabel([5, 6, 7], "dog"), parent=1, message="fix three")
    assert version == 2
    written = set(keys(bucket, "tables/flowers/labels/part-")) - files_v1
    assert len(written) == 1  # only the file holding ids 5-7 was rewritten

    head = LabelTable(uri).read()
    assert head.set_index("sample_id").loc[[5, 6, 7], "label"].tolist() == ["dog"] * 3
    assert len(head) == 3000 and LabelTable(uri).read(1).equals(table.read(1))
    assert table.diff(1, 2).counts()["relabelled"] == int((rows["label"].iloc[4:7] != "dog").sum())  # ids are 1, 2, ... in row order
    assert table.restore(1, parent=2) == 3 and table.read(3).equals(table.read(1))
    assert [info.message for info in table.history()] == ["import", "fix three", "restore version 1"]

    import polars as pl

    assert pl.read_delta(uri, version=1).height == 3000  # a plain Delta reader reads it from S3 too


def _commit_on_parent(args: tuple[str, int, dict]) -> str:
    uri, writer, env = args
    os.environ.update(env)
    try:
        LabelTable(uri).commit(ChangeSet.relabel([writer + 1], "dog"), parent=1, message=f"writer {writer}")
        return "won"
    except ConflictError:
        return "conflict"


@pytest.mark.slow
def test_of_many_writers_on_one_parent_in_s3_exactly_one_wins(bucket: str, endpoint: str):
    uri = f"s3://{bucket}/race/labels"
    LabelTable.create(uri, make_rows(50, ["cat", "dog"]).assign(label="cat"), ["cat", "dog"])
    writers = 6
    with ProcessPoolExecutor(writers, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(_commit_on_parent, [(uri, w, aws_env(endpoint)) for w in range(writers)]))
    assert sorted(outcomes) == ["conflict"] * (writers - 1) + ["won"]
    table = LabelTable(uri)
    assert table.head_version() == 2
    winner = int(table.version_info(2).message.split()[-1])
    assert (table.read()["label"] == "dog").sum() == 1 and table.read().set_index("sample_id").at[winner + 1, "label"] == "dog"


@pytest.mark.slow
def test_a_network_failure_in_the_middle_of_a_commit_leaves_the_table_at_its_previous_version(bucket: str, endpoint: str, monkeypatch: pytest.MonkeyPatch):
    uri = f"s3://{bucket}/flaky/labels"
    LabelTable.create(uri, make_rows(100, ["cat", "dog"]).assign(label="cat"), ["cat", "dog"])
    # The data files go through; the connection drops on every write of the log entry that would make version 2.
    proxy = CuttingProxy(endpoint, cut=lambda head: head.startswith(b"PUT ") and b"_delta_log/00000000000000000001.json" in head)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    proxy.armed = True
    with pytest.raises(UserError, match="Nothing was committed; the existing versions are unchanged"):
        LabelTable(uri).commit(ChangeSet.relabel([1, 2], "dog"), parent=1, message="lost")
    assert proxy.cuts >= 1
    proxy.armed = False
    table = LabelTable(uri)
    assert table.head_version() == 1 and len(table.read()) == 100
    assert table.commit(ChangeSet.relabel([1, 2], "dog"), parent=1, message="again") == 2  # and the next try lands
    proxy.close()


def test_a_missing_bucket_is_a_clear_error_and_nothing_is_written(bucket: str, class_folders: Path):
    with pytest.raises(UserError, match="the bucket 'no-such-bucket-here' does not exist"):
        LabelTable("s3://no-such-bucket-here/t/labels")
    with pytest.raises(UserError, match="the bucket 'no-such-bucket-here' does not exist"):
        import_dataset(class_folders, "pets", "s3://no-such-bucket-here/ws")
    with pytest.raises(UserError, match="the bucket 'no-such-bucket-here' does not exist"):
        import_dataset("s3://no-such-bucket-here/photos", "pets", f"s3://{bucket}/ws")
    with pytest.raises(UserError, match="the bucket 'no-such-bucket-here' does not exist"):
        list_datasets("s3://no-such-bucket-here/ws")
    assert list_datasets(f"s3://{bucket}/nothing-here-yet") == []
    assert keys(bucket) == []


# --------------------------------------------------------------------------- workspaces and images


def _upload_class_folders(bucket: str, prefix: str, tmp_path: Path) -> None:
    for label, seeds in (("cat", range(0, 4)), ("dog", range(10, 13))):
        for seed in seeds:
            upload(bucket, f"{prefix}/{label}/{seed}.png", image_bytes(seed, tmp_path))
    upload(bucket, f"{prefix}/bird/", b"")  # a folder marker: an empty class folder, as a console makes
    upload(bucket, f"{prefix}/dog/broken.png", b"\x89PNG not really")
    upload(bucket, f"{prefix}/notes.txt", b"hello")


def test_the_cli_imports_an_s3_folder_into_an_s3_workspace(bucket: str, tmp_path: Path):
    _upload_class_folders(bucket, "photos", tmp_path)
    workspace = f"s3://{bucket}/labelloop"
    result = subprocess.run(
        [sys.executable, "-m", "labelloop", "import", f"s3://{bucket}/photos", "--name", "pets", "--workspace", workspace],
        cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "labelloop-test-secret-do-not-log" not in result.stdout + result.stderr  # credentials are never printed
    table = open_table(workspace, "pets")
    rows = table.read()
    assert sorted(rows["label"]) == ["cat"] * 4 + ["dog"] * 3
    assert rows["path"].str.startswith(f"s3://{bucket}/photos/").all()
    assert table.classes() == ["bird", "cat", "dog"]  # the empty folder marker still defines a class
    report = load_import_report(workspace, "pets")
    assert sorted(s.path for s in report.skipped) == [f"s3://{bucket}/photos/dog/broken.png", f"s3://{bucket}/photos/notes.txt"]
    assert list_datasets(workspace) == ["pets"]
    # Caches stay on this machine, under LABELLOOP_CACHE, named after the URI.
    paths = DatasetPaths(workspace, "pets")
    assert paths.thumbs == local_workspace(workspace) / "pets" / "thumbs" and str(paths.thumbs).startswith(os.environ["LABELLOOP_CACHE"])
    assert len(list(paths.thumbs.rglob("*.jpg"))) == 7
    assert not any(k.startswith("labelloop/pets/thumbs") for k in keys(bucket))
    # A second machine (another cache) opens the same workspace and makes its own thumbnails.
    second = {**os.environ, "LABELLOOP_CACHE": str(tmp_path / "second-machine")}
    result = subprocess.run([sys.executable, "-m", "labelloop", "thumbnails", "pets", "--workspace", workspace], cwd=REPO, env=second, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "made 7 thumbnail(s)" in result.stdout and len(list((tmp_path / "second-machine").rglob("*.jpg"))) == 7


def test_a_manifest_in_s3_names_objects_relative_to_itself_or_by_uri_and_a_deleted_object_is_skipped(bucket: str, tmp_path: Path):
    for seed in range(3):
        upload(bucket, f"data/img/{seed}.png", image_bytes(seed, tmp_path))
    upload(bucket, "elsewhere/9.png", image_bytes(9, tmp_path))
    manifest = pd.DataFrame({"path": ["img/0.png", "img/1.png", "./img/2.png", f"s3://{bucket}/elsewhere/9.png", "img/gone.png"], "label": ["a", "b", "", "a", "b"]})
    upload(bucket, "data/manifest.csv", manifest.to_csv(index=False).encode())
    table, report = import_dataset(f"s3://{bucket}/data/manifest.csv", "m", tmp_path / "local-ws")
    rows = table.read()
    assert sorted(rows["path"]) == [f"s3://{bucket}/data/img/{i}.png" for i in range(3)] + [f"s3://{bucket}/elsewhere/9.png"]
    assert [(s.path, s.reason) for s in report.skipped] == [(f"s3://{bucket}/data/img/gone.png", "missing: no such file")]


def test_an_object_deleted_between_import_and_embedding_is_listed_as_skipped(bucket: str, tmp_path: Path):
    import boto3

    from labelloop.embed import EmbedderConfig, embed_dataset

    _upload_class_folders(bucket, "photos", tmp_path)
    workspace = f"s3://{bucket}/ws"
    import_dataset(f"s3://{bucket}/photos", "pets", workspace)
    boto3.client("s3").delete_object(Bucket=bucket, Key="photos/cat/1.png")
    report = embed_dataset(workspace, "pets", EmbedderConfig(kind="pixels", resolution=8))
    assert report.n_computed == 6 and report.failures["path"].tolist() == [f"s3://{bucket}/photos/cat/1.png"]
    assert report.failures["reason"].iloc[0].startswith("missing")


def test_adding_images_to_an_s3_workspace_commits_a_new_version_with_its_report(bucket: str, tmp_path: Path):
    _upload_class_folders(bucket, "photos", tmp_path)
    workspace = f"s3://{bucket}/ws"
    import_dataset(f"s3://{bucket}/photos", "pets", workspace)
    upload(bucket, "more/cat/100.png", image_bytes(100, tmp_path))
    upload(bucket, "more/fox/101.png", image_bytes(101, tmp_path))
    version, report = add_images(f"s3://{bucket}/more", "pets", workspace)
    assert version == 2 and report.n_imported == 2
    assert load_import_report(workspace, "pets", 2).n_imported == 2
    assert "fox" in open_table(workspace, "pets").classes()
    with pytest.raises(UserError, match="already exists"):
        import_dataset(f"s3://{bucket}/more", "pets", workspace)


@pytest.mark.slow
def test_the_app_opens_a_workspace_in_s3_and_a_restore_from_the_page_commits_there(bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.test_app import run_app

    _upload_class_folders(bucket, "photos", tmp_path)
    workspace = f"s3://{bucket}/ws"
    import_dataset(f"s3://{bucket}/photos", "pets", workspace)
    open_table(workspace, "pets").commit(ChangeSet.relabel([1], "dog"), parent=1, message="that cat is a dog")
    monkeypatch.setenv("LABELLOOP_WORKSPACE", workspace)
    app = run_app()
    assert app.title[0].value == "pets"
    assert {m.label: m.value for m in app.metric}["Versions"] == "2"
    assert app.dataframe[0].value["message"].tolist() == ["that cat is a dog", "import 7 images from s3://" + bucket + "/photos"]
    app.sidebar.selectbox[1].set_value(1).run()
    app.button(key="FormSubmitter:restore-Restore").click().run()
    assert not app.exception, app.exception
    table = LabelTable(f"{workspace}/pets/labels")
    assert table.head_version() == 3 and table.read(3).equals(table.read(1))
