"""The versioned label table: versions, commits, conflicts, diffs, restore, class list, readers."""

from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest

from labelloop.data.changes import ChangeSet
from labelloop.data.schema import UNDEFINED, check_class_name
from labelloop.data.tables import IDS_PER_FILE, LabelTable
from labelloop.errors import ConflictError, UserError
from tests.conftest import make_rows


def test_create_is_version_one_with_its_class_list(small_table: LabelTable):
    assert small_table.head_version() == 1
    rows = small_table.read()
    assert list(rows["sample_id"]) == list(range(1, 51))
    assert set(rows["label"]) <= {"a", "b", "c", UNDEFINED}
    assert (rows["weight"] == 1.0).all() and (rows["split"] == "none").all()
    info = small_table.version_info(1)
    assert (info.kind, info.parent, info.classes, info.n_samples) == ("import", None, ("a", "b", "c"), 50)


def test_commit_makes_a_new_version_and_keeps_the_old_one(small_table: LabelTable):
    before = small_table.read(1)
    version = small_table.commit(ChangeSet.relabel([1, 2, 3], "c"), parent=1, message="three to c")
    assert version == 2
    assert small_table.read(1).equals(before)
    after = small_table.read(2)
    assert list(after.loc[after["sample_id"].isin([1, 2, 3]), "label"]) == ["c", "c", "c"]
    untouched = after["sample_id"] > 3
    assert after.loc[untouched, "label"].equals(before.loc[untouched, "label"])
    info = small_table.version_info(2)
    assert info.message == "three to c" and info.parent == 1 and info.kind == "commit"
    relabelled = int((before.loc[:2, "label"] != "c").sum())
    assert info.summary["counts"]["relabelled"] == relabelled
    assert sum(n for _, _, n in info.summary["transitions"]) == relabelled


def test_stale_parent_is_a_conflict_and_writes_nothing(small_table: LabelTable):
    small_table.commit(ChangeSet.set_weight([1], 0.0), parent=1, message="first")
    head_rows = small_table.read(2)
    with pytest.raises(ConflictError, match="no longer the latest") as caught:
        small_table.commit(ChangeSet.set_weight([5], 0.0), parent=1, message="stale")
    assert (caught.value.parent, caught.value.head) == (1, 2)
    assert small_table.head_version() == 2
    assert small_table.read(2).equals(head_rows)


def test_a_label_outside_the_class_list_is_refused_unless_added_explicitly(small_table: LabelTable):
    with pytest.raises(UserError, match="not classes of this table"):
        small_table.commit(ChangeSet.relabel([1], "zebra"), parent=1, message="typo")
    assert small_table.head_version() == 1
    version = small_table.commit(ChangeSet.relabel([1], "zebra", new_class=True), parent=1, message="new class")
    assert small_table.classes(version) == ["a", "b", "c", "zebra"]
    assert small_table.classes(1) == ["a", "b", "c"]
    assert small_table.version_info(version).summary["classes_added"] == ["zebra"]


def test_a_class_with_no_samples_still_exists(small_table: LabelTable):
    version = small_table.commit(ChangeSet(new_classes=["empty-class"]), parent=1, message="declare a class")
    counts = small_table.class_counts(version)
    assert counts.loc["empty-class", "samples"] == 0
    assert list(counts.index)[-1] == UNDEFINED


def test_removing_a_class_in_use_is_refused_and_an_empty_one_can_go(small_table: LabelTable):
    with pytest.raises(UserError, match="still have it"):
        small_table.commit(ChangeSet(removed_classes=["a"]), parent=1, message="drop a")
    v2 = small_table.commit(ChangeSet(new_classes=["tmp"]), parent=1, message="add tmp")
    v3 = small_table.commit(ChangeSet(removed_classes=["tmp"]), parent=v2, message="drop tmp")
    assert "tmp" not in small_table.classes(v3) and "tmp" in small_table.classes(v2)


@pytest.mark.parametrize("name", ["undefined", "Undefined", "", "   ", "a\x00b", "x" * 101, None])
def test_bad_class_names_are_refused(name):
    with pytest.raises(UserError):
        check_class_name(name)


def test_unlabelling_with_undefined_is_allowed(small_table: LabelTable):
    labelled = small_table.read().query("label != 'undefined'")["sample_id"].iloc[0]
    version = small_table.commit(ChangeSet.relabel([labelled], UNDEFINED), parent=1, message="unsure")
    assert small_table.read(version).set_index("sample_id").loc[labelled, "label"] == UNDEFINED


def test_diff_reports_every_kind_of_change(small_table: LabelTable):
    rows = small_table.read()
    labelled = rows[rows["label"] == "a"]["sample_id"].tolist()
    updates = pd.DataFrame(
        {
            "sample_id": [labelled[0], 10, 11, 12],
            "label": ["b", None, None, None],
            "weight": [None, 0.0, 2.0, None],
            "split": [None, None, None, "test"],
        }
    )
    v2 = small_table.commit(ChangeSet(updates=updates), parent=1, message="mixed")
    v3 = small_table.commit(ChangeSet.set_weight([10], 1.0), parent=v2, message="include again")
    added = pd.DataFrame({"path": ["/data/new.png"], "label": ["c"]})
    v4 = small_table.commit(ChangeSet(added=added, removed_ids=[50]), parent=v3, message="add and remove")

    counts = small_table.diff(1, v2).counts()
    assert counts == {"relabelled": 1, "excluded": 1, "included": 0, "reweighted": 1, "split_changed": 1, "added": 0, "removed": 0}
    assert small_table.diff(v2, v3).counts()["included"] == 1
    d = small_table.diff(v3, v4)
    assert d.counts()["added"] == 1 and d.counts()["removed"] == 1
    new_row = small_table.read(v4).iloc[-1]
    assert new_row["sample_id"] == 51 and new_row["label"] == "c"  # ids continue, never reused
    flow = small_table.diff(1, v2).label_flow()
    assert flow.loc["a", "b"] == 1
    # A diff is symmetric in what it finds.
    assert small_table.diff(v2, 1).counts()["relabelled"] == 1


@pytest.mark.parametrize(
    "updates, match",
    [
        ({"sample_id": [999], "label": ["a"]}, "not in this version"),
        ({"sample_id": [1, 1], "label": ["a", "b"]}, "more than once"),
        ({"sample_id": [1], "weight": [-1.0]}, "0 or more"),
        ({"sample_id": [1], "weight": [float("inf")]}, "0 or more"),
        ({"sample_id": [1], "weight": ["heavy"]}, "must be numbers"),
        ({"sample_id": [1], "split": ["holdout"]}, "Unknown split"),
        ({"sample_id": ["x"], "label": ["a"]}, "whole numbers"),
        ({"sample_id": [1], "path": ["/elsewhere.png"]}, "only label, weight, split"),
        ({"label": ["a"]}, "no 'sample_id' column"),
    ],
)
def test_invalid_change_sets_are_refused_and_change_nothing(small_table: LabelTable, updates, match):
    with pytest.raises(UserError, match=match):
        small_table.commit(ChangeSet(updates=pd.DataFrame(updates)), parent=1, message="bad")
    assert small_table.head_version() == 1


def test_a_commit_that_changes_nothing_or_has_no_message_is_refused(small_table: LabelTable):
    label = small_table.read().loc[0, "label"]
    with pytest.raises(UserError, match="Nothing to commit"):
        small_table.commit(ChangeSet.relabel([1], label), parent=1, message="same")
    with pytest.raises(UserError, match="needs a message"):
        small_table.commit(ChangeSet.relabel([1], "a" if label != "a" else "b"), parent=1, message="  ")
    assert small_table.head_version() == 1


def test_restore_is_a_new_version_equal_to_the_old_one(small_table: LabelTable):
    v1 = small_table.read(1)
    v2 = small_table.commit(ChangeSet(updates=pd.DataFrame({"sample_id": [1, 2], "label": ["zebra", "zebra"]}), new_classes=["zebra"]), parent=1, message="zebras")
    v3 = small_table.restore(1, parent=v2)
    assert v3 == 3
    assert small_table.read(v3).equals(v1)
    assert small_table.classes(v3) == small_table.classes(1)
    info = small_table.version_info(v3)
    assert info.kind == "restore" and info.message == "restore version 1"
    assert info.summary["classes_removed"] == ["zebra"]
    assert len(small_table.history()) == 3  # history only grows
    with pytest.raises(UserError, match="already the latest"):
        small_table.restore(3, parent=3)
    with pytest.raises(ConflictError):
        small_table.restore(1, parent=2)


@pytest.mark.parametrize("version", [0, 2, -1])
def test_versions_that_do_not_exist_get_a_clear_error(small_table: LabelTable, version):
    with pytest.raises(UserError, match="versions 1 to 1"):
        small_table.read(version)


def test_a_folder_that_is_not_a_table_is_refused(tmp_path):
    (tmp_path / "not-a-table").mkdir()
    (tmp_path / "not-a-table" / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="is not a label table"):
        LabelTable(tmp_path / "not-a-table")


def test_a_tampered_log_is_reported_not_crashed(small_table: LabelTable):
    small_table.commit(ChangeSet(new_classes=["d"]), parent=1, message="d")
    log = small_table.path / "_delta_log" / "00000000000000000001.json"
    log.write_text("{not json")
    with pytest.raises(UserError, match="cannot be read"):
        LabelTable(small_table.path).read()


def test_a_delta_table_written_by_someone_else_is_refused(tmp_path):
    import pyarrow as pa
    from deltalake import write_deltalake

    write_deltalake(str(tmp_path / "foreign"), pa.table({"x": [1]}))
    with pytest.raises(UserError, match="not written by this app"):
        LabelTable(tmp_path / "foreign").history()


def test_every_version_is_readable_by_polars_and_duckdb(small_table: LabelTable):
    v2 = small_table.commit(ChangeSet.set_weight([1, 2, 3], 0.0), parent=1, message="exclude")
    for version in (1, v2):
        ours = small_table.read(version)
        theirs = pl.read_delta(str(small_table.path), version=version - 1).sort("sample_id").to_pandas()
        assert theirs["label"].tolist() == ours["label"].tolist()
        assert theirs["weight"].tolist() == ours["weight"].tolist()
        files = small_table.parquet_files(version)
        excluded = duckdb.sql(f"select count(*) from read_parquet({files}) where weight = 0").fetchall()[0][0]
        assert excluded == (3 if version == v2 else 0)


@pytest.mark.slow
def test_history_survives_many_commits_and_checkpoints(tmp_path):
    # delta-rs writes a checkpoint every 100 commits; messages and class lists must survive it.
    table = LabelTable.create(tmp_path / "labels", make_rows(20, ["a", "b"]), ["a", "b"])
    version = 1
    for i in range(105):
        version = table.commit(ChangeSet(new_classes=[f"c{i}"]), parent=version, message=f"commit {i}")
    reopened = LabelTable(tmp_path / "labels")
    history = reopened.history()
    assert len(history) == 106 and history[-1].message == "commit 104"
    assert reopened.classes(50) == ["a", "b"] + [f"c{i}" for i in range(49)]
    assert any(name.endswith(".checkpoint.parquet") for name in os.listdir(tmp_path / "labels" / "_delta_log"))


def test_the_commit_metadata_is_plain_json_in_the_delta_log(small_table: LabelTable):
    small_table.commit(ChangeSet(new_classes=["d"]), parent=1, message="add d")
    entries = [json.loads(line) for line in (small_table.path / "_delta_log" / "00000000000000000001.json").read_text().splitlines()]
    commit_info = next(e["commitInfo"] for e in entries if "commitInfo" in e)
    assert commit_info["labelloop"]["message"] == "add d"
    assert commit_info["labelloop"]["classes"] == ["a", "b", "c", "d"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_data_set_gives_a_clear_error(small_table: LabelTable):
    os.chmod(small_table.path.parent, 0o555)
    try:
        with pytest.raises(UserError, match="Cannot write"):
            small_table.commit(ChangeSet(new_classes=["d"]), parent=1, message="d")
    finally:
        os.chmod(small_table.path.parent, 0o755)


def test_ids_stay_stable_across_versions(small_table: LabelTable):
    paths = small_table.read(1).set_index("sample_id")["path"]
    v2 = small_table.commit(ChangeSet(removed_ids=[3, 7]), parent=1, message="remove two")
    v3 = small_table.commit(ChangeSet(added=pd.DataFrame({"path": ["/n1.png", "/n2.png"]})), parent=v2, message="add two")
    later = small_table.read(v3).set_index("sample_id")["path"]
    common = later.index.intersection(paths.index)
    assert (later.loc[common] == paths.loc[common]).all()
    assert list(later.index[-2:]) == [51, 52]
    assert np.all(np.diff(later.index.to_numpy()) > 0)


def test_a_deleted_data_file_is_reported_and_other_versions_still_read(small_table: LabelTable):
    v2 = small_table.commit(ChangeSet.set_weight([1], 0.0), parent=1, message="exclude")
    for name in small_table.parquet_files(v2):
        os.remove(name.removeprefix("file://"))
    with pytest.raises(UserError, match="missing or damaged"):
        small_table.read(v2)
    assert len(small_table.read(1)) == 50


# --------------------------------------------------------------------------- layout: a commit costs what it touches

N_FILES = 6


@pytest.fixture
def multi_file_table(tmp_path) -> LabelTable:
    """A table of six data files (IDS_PER_FILE sample ids each), classes a, b, c."""
    return LabelTable.create(tmp_path / "big" / "labels", make_rows(N_FILES * IDS_PER_FILE, ["a", "b", "c"]), ["a", "b", "c"])


def _file_set(table: LabelTable, version: int) -> set[str]:
    return set(table.data_files(version).files["path"])


def test_a_commit_rewrites_only_the_data_files_holding_a_changed_row(multi_file_table: LabelTable):
    table = multi_file_table
    assert len(_file_set(table, 1)) == N_FILES
    # Two ids in the second file, one in the fifth.
    ids = [IDS_PER_FILE + 5, IDS_PER_FILE + 700, 4 * IDS_PER_FILE + 1]
    before = table.read(1)
    v2 = table.commit(ChangeSet.set_weight(ids, 0.0), parent=1, message="exclude three")
    shared = _file_set(table, 1) & _file_set(table, v2)
    assert len(shared) == N_FILES - 2 and len(_file_set(table, v2)) == N_FILES
    after = table.read(v2)
    assert after["sample_id"].tolist() == before["sample_id"].tolist()
    changed = after["sample_id"].isin(ids).to_numpy()
    assert (after.loc[changed, "weight"] == 0).all()
    assert after.loc[~changed].reset_index(drop=True).equals(before.loc[~changed].reset_index(drop=True))
    assert table.version_info(v2).n_samples == N_FILES * IDS_PER_FILE


def test_added_samples_go_to_new_files_and_removed_ones_leave_only_their_file(multi_file_table: LabelTable):
    table = multi_file_table
    n = N_FILES * IDS_PER_FILE
    v2 = table.commit(ChangeSet(added=pd.DataFrame({"path": [f"/new/{i}.png" for i in range(3)]})), parent=1, message="add three")
    assert _file_set(table, 1) <= _file_set(table, v2) and len(_file_set(table, v2)) == N_FILES + 1
    assert table.read(v2)["sample_id"].tolist()[-3:] == [n + 1, n + 2, n + 3]
    v3 = table.commit(ChangeSet(removed_ids=[2, n + 2]), parent=v2, message="remove two")
    rows = table.read(v3)
    assert len(rows) == n + 1 and not rows["sample_id"].isin([2, n + 2]).any()
    assert len(_file_set(table, v2) - _file_set(table, v3)) == 2
    assert [table.version_info(v).n_samples for v in (1, v2, v3)] == [n, n + 3, n + 1]
    # Ids are never reused, even after the largest one was removed.
    v4 = table.commit(ChangeSet(removed_ids=[n + 3]), parent=v3, message="remove the last")
    v5 = table.commit(ChangeSet(added=pd.DataFrame({"path": ["/new/again.png"]})), parent=v4, message="add one")
    assert table.read(v5)["sample_id"].max() == n + 4


def test_a_class_still_used_in_an_untouched_file_cannot_be_removed(multi_file_table: LabelTable):
    table = multi_file_table
    rows = table.read(1)
    last_file = rows["sample_id"] > (N_FILES - 1) * IDS_PER_FILE
    # Relabel every 'c' outside the last file; 'c' is still used there.
    elsewhere = rows.loc[~last_file & (rows["label"] == "c"), "sample_id"]
    v2 = table.commit(ChangeSet.relabel(elsewhere, "a"), parent=1, message="c -> a, but not in the last file")
    with pytest.raises(UserError, match=r"Cannot remove class 'c': \d+ samples still have it"):
        table.commit(ChangeSet(removed_classes=["c"]), parent=v2, message="drop c")
    remaining = table.read(v2).query("label == 'c'")["sample_id"]
    v3 = table.commit(ChangeSet.relabel(remaining, "b"), parent=v2, message="the rest of c -> b")
    v4 = table.commit(ChangeSet(removed_classes=["c"]), parent=v3, message="drop c")
    assert table.classes(v4) == ["a", "b"]


def test_restore_writes_no_data_and_diff_reads_only_files_the_versions_do_not_share(multi_file_table: LabelTable, monkeypatch):
    table = multi_file_table
    v2 = table.commit(ChangeSet.relabel([1, 2], "c"), parent=1, message="two to c")
    v3 = table.commit(ChangeSet.relabel([3 * IDS_PER_FILE + 1], "b"), parent=v2, message="one to b")
    files_on_disk = {p.name for p in table.path.glob("*.parquet")}
    v4 = table.restore(1, parent=v3)
    assert {p.name for p in table.path.glob("*.parquet")} == files_on_disk
    assert _file_set(table, v4) == _file_set(table, 1)
    assert table.read(v4).equals(table.read(1))
    assert table.version_info(v4).kind == "restore"

    read_files: list[int] = []
    original = LabelTable._read_files
    monkeypatch.setattr(LabelTable, "_read_files", lambda self, files, *a, **k: read_files.append(len(files.files)) or original(self, files, *a, **k))
    diff = table.diff(1, v3)
    assert read_files == [2, 2]  # the first and the fourth file, once per version
    expected = table.read(1).merge(table.read(v3), on="sample_id")
    expected = expected[expected["label_x"] != expected["label_y"]]["sample_id"].tolist()
    assert diff.samples.loc[diff.samples["relabelled"], "sample_id"].tolist() == expected


def test_a_multi_file_version_is_readable_by_polars_and_duckdb(multi_file_table: LabelTable):
    table = multi_file_table
    v2 = table.commit(ChangeSet.set_weight([7, 3 * IDS_PER_FILE + 9], 0.0), parent=1, message="exclude two")
    ours = table.read(v2)
    theirs = pl.read_delta(str(table.path), version=v2 - 1).sort("sample_id").to_pandas()
    assert theirs["sample_id"].tolist() == ours["sample_id"].tolist()
    assert theirs["weight"].tolist() == ours["weight"].tolist()
    files = table.parquet_files(v2)
    assert duckdb.sql(f"select count(*), sum(weight = 0) from read_parquet({files})").fetchall()[0] == (len(ours), 2)


def test_a_writer_that_bypasses_the_lock_loses_to_the_commit_already_made(multi_file_table: LabelTable, monkeypatch):
    table = multi_file_table
    table.commit(ChangeSet.set_weight([1], 0.0), parent=1, message="first")
    # As if a second writer had checked the head just before the first committed.
    monkeypatch.setattr(LabelTable, "_check_parent", lambda self, parent: None)
    before = {p.name for p in (table.path / "_delta_log").iterdir()}
    with pytest.raises(ConflictError, match="Another writer committed version 2"):
        table.commit(ChangeSet.set_weight([2], 0.0), parent=1, message="stale")
    assert table.head_version() == 2 and table.version_info(2).message == "first"
    assert {p.name for p in (table.path / "_delta_log").iterdir()} == before


def test_a_table_written_by_an_earlier_release_keeps_working(tmp_path):
    """Earlier releases wrote each version as one full snapshot with write_deltalake."""
    import pyarrow as pa
    from deltalake import CommitProperties, write_deltalake

    from labelloop.data.schema import SCHEMA
    from labelloop.data.tables import _TABLE_CONFIGURATION

    path = tmp_path / "old" / "labels"
    rows = make_rows(3 * IDS_PER_FILE, ["a", "b"])
    rows.insert(0, "sample_id", np.arange(1, len(rows) + 1))
    rows["weight"], rows["split"] = 1.0, "none"
    for column in ("width", "height", "mode", "file_size", "content_hash"):
        rows[column] = None
    meta = {"message": "import", "kind": "import", "parent": None, "classes": ["a", "b"], "summary": {}}
    path.mkdir(parents=True)
    write_deltalake(str(path), pa.Table.from_pandas(rows[SCHEMA.names], schema=SCHEMA, preserve_index=False), configuration=_TABLE_CONFIGURATION,
                    commit_properties=CommitProperties(custom_metadata={"labelloop": meta}))
    table = LabelTable(path)
    assert table.version_info(1).n_samples == len(rows) and len(_file_set(table, 1)) == 1
    v2 = table.commit(ChangeSet.relabel([5], "b"), parent=1, message="one to b")
    assert len(_file_set(table, v2)) == 3  # the snapshot, rewritten in this release's layout
    v3 = table.commit(ChangeSet.relabel([2 * IDS_PER_FILE + 5], "a"), parent=v2, message="one to a")
    assert len(_file_set(table, v2) & _file_set(table, v3)) == 2
    assert table.diff(1, v3).counts()["relabelled"] == int(rows.loc[4, "label"] != "b") + int(rows.loc[2 * IDS_PER_FILE + 4, "label"] != "a")
    v4 = table.restore(1, parent=v3)
    assert table.read(v4).equals(table.read(1)) and table.version_info(v4).n_samples == len(rows)


def test_a_table_whose_log_went_away_is_not_called_damaged(small_table: LabelTable):
    """deltalake's errors are told apart by type: TableNotFoundError says the folder went, not that it is damaged."""
    import shutil

    moved = LabelTable(small_table.path)
    shutil.rmtree(small_table.path / "_delta_log")
    with pytest.raises(UserError, match=r"no label table at .* any more.*moved or deleted"):
        moved._delta()


def test_a_commit_and_a_restore_say_what_they_wrote(tmp_path):
    table = LabelTable.create(tmp_path / "labels", make_rows(3000, ["a", "b", "c"]), ["a", "b", "c"], "import")
    made = table.commit(ChangeSet.relabel([1, 2, 3], "c"), parent=1, message="three in the first file")
    assert made == 2 and made.version == 2 and made.parent == 1 and made.kind == "commit"
    assert made.files_written == 1 and made.files_replaced == 1 and made.bytes_written > 0  # only the file holding ids 1-1024
    assert made.counts["relabelled"] == sum(table.diff(1, 2).samples["relabelled"]) and made.counts["added"] == 0
    back = table.restore(1, parent=2)
    assert back == 3 and back.kind == "restore" and back.files_written == 0 and back.bytes_written == 0  # the old file, reused
    assert "restore on v2" in back.describe() and "no data" in back.describe()
