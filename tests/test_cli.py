"""`labelloop ...` as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from labelloop.data.workspace import open_table
from tests.conftest import REPO


def cli(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "labelloop", *args, "--workspace", str(workspace)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def animals(class_folders: Path, workspace: Path) -> Path:
    result = cli(workspace, "import", str(class_folders), "--name", "animals")
    assert result.returncode == 0, result.stderr
    assert "'animals' version 1: imported 7 of 7 files" in result.stdout
    return workspace


@pytest.mark.slow
def test_import_history_diff_apply_restore_round_trip(animals: Path, tmp_path: Path):
    table = open_table(animals, "animals")
    cats = table.read().query("label == 'cat'")["sample_id"].tolist()
    changes = tmp_path / "fixes.csv"
    pd.DataFrame({"sample_id": cats[:2], "label": ["dog", "bird"], "weight": ["", "0"]}).to_csv(changes, index=False)

    result = cli(animals, "apply", "animals", str(changes), "--parent", "1", "-m", "two cats were not cats")
    assert result.returncode == 0, result.stderr
    assert "version 2: 2 relabelled" in result.stdout and "1 excluded" in result.stdout

    history = cli(animals, "history", "animals")
    assert history.returncode == 0 and "two cats were not cats" in history.stdout and "import of 7 samples" in history.stdout

    diff = cli(animals, "diff", "animals", "1", "2", "--out", str(tmp_path / "diff.csv"))
    assert diff.returncode == 0 and "2 relabelled, 1 excluded" in diff.stdout
    per_sample = pd.read_csv(tmp_path / "diff.csv")
    assert sorted(per_sample["new_label"]) == ["bird", "dog"]

    restore = cli(animals, "restore", "animals", "1")
    assert restore.returncode == 0 and "version 3: restored version 1" in restore.stdout
    assert open_table(animals, "animals").read(3).equals(open_table(animals, "animals").read(1))

    classes = cli(animals, "classes", "animals", "--version", "2")
    assert classes.returncode == 0 and "bird" in classes.stdout
    listing = cli(animals, "list")
    assert "animals" in listing.stdout and "restore version 1" in listing.stdout


@pytest.mark.slow
def test_a_stale_parent_exits_2_with_one_line_and_writes_nothing(animals: Path, tmp_path: Path):
    changes = tmp_path / "c.csv"
    changes.write_text("sample_id,weight\n1,0\n")
    assert cli(animals, "apply", "animals", str(changes), "--parent", "1", "-m", "first").returncode == 0
    changes.write_text("sample_id,weight\n2,0\n")
    line = one_error_line(cli(animals, "apply", "animals", str(changes), "--parent", "1", "-m", "stale"))
    assert "conflict" in line and "Version 1 is no longer the latest" in line
    assert open_table(animals, "animals").head_version() == 2


@pytest.mark.slow
def test_a_new_label_needs_new_class(animals: Path, tmp_path: Path):
    changes = tmp_path / "c.csv"
    changes.write_text("sample_id,label\n1,fox\n")
    line = one_error_line(cli(animals, "apply", "animals", str(changes), "--parent", "1", "-m", "fox"))
    assert "'fox'" in line and "--new-class" in line
    ok = cli(animals, "apply", "animals", str(changes), "--parent", "1", "-m", "fox", "--new-class", "fox")
    assert ok.returncode == 0 and "new classes: fox" in ok.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, match",
    [
        (["history", "nope"], "No data set named 'nope'"),
        (["import", "/does/not/exist", "--name", "x"], "does not exist"),
        (["restore", "animals", "9"], "does not exist"),
        (["diff", "animals", "1", "5"], "versions 1 to 1"),
        (["export", "animals", "--format", "csv", "--version", "4"], "does not exist"),
        (["apply", "animals", "/no/such.csv", "--parent", "1", "-m", "x"], "does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_clear_line(animals: Path, args: list[str], match: str):
    assert match in one_error_line(cli(animals, *args))


@pytest.mark.slow
def test_change_files_with_wrong_columns_are_refused(animals: Path, tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n1,dog\n")
    assert "needs a sample_id column" in one_error_line(cli(animals, "apply", "animals", str(bad), "--parent", "1", "-m", "x"))
    bad.write_text("sample_id,label,path\n1,dog,/x\n")
    assert "cannot be applied: path" in one_error_line(cli(animals, "apply", "animals", str(bad), "--parent", "1", "-m", "x"))


@pytest.mark.slow
def test_export_in_every_format(animals: Path, tmp_path: Path):
    table = open_table(animals, "animals")
    changes = tmp_path / "c.csv"
    changes.write_text("sample_id,weight\n1,0\n")
    cli(animals, "apply", "animals", str(changes), "--parent", "1", "-m", "exclude one")

    csv_out = tmp_path / "out.csv"
    result = cli(animals, "export", "animals", "--version", "2", "--format", "csv", "--out", str(csv_out))
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(csv_out)["weight"].tolist() == table.read(2)["weight"].tolist()

    default = cli(animals, "export", "animals", "--format", "parquet")
    assert default.returncode == 0
    assert pd.read_parquet(animals / "animals" / "exports" / "animals-v2.parquet")["label"].tolist() == table.read(2)["label"].tolist()

    tree = tmp_path / "tree"
    result = cli(animals, "export", "animals", "--format", "imagefolder", "--out", str(tree))
    assert result.returncode == 0 and "6 images in 2 class folders" in result.stdout and "1 undefined or excluded" in result.stdout
    assert len(list((tree / "cat").iterdir())) == 3 and len(list((tree / "dog").iterdir())) == 3
    assert len(pd.read_csv(tree / "labels.csv")) == 6

    assert "already exists" in one_error_line(cli(animals, "export", "animals", "--format", "csv", "--out", str(csv_out)))


@pytest.mark.slow
def test_demo_if_missing_builds_once(workspace: Path):
    first = cli(workspace, "demo", "--if-missing", "--per-class", "10")
    assert first.returncode == 0, first.stderr
    assert "built demo data set 'fashion-demo'" in first.stdout
    second = cli(workspace, "demo", "--if-missing")
    assert second.returncode == 0 and "already has data sets" in second.stdout


@pytest.mark.slow
def test_embed_and_project_from_the_command_line(animals: Path):
    embedded = cli(animals, "embed", "animals", "--embedder", "pixels", "--resolution", "8")
    assert embedded.returncode == 0, embedded.stderr
    assert "embeddings 'pixels-8px': raw pixels at 8x8: 7 images, 0 from the cache, 7 embedded" in embedded.stdout
    assert "pixels-8px" in cli(animals, "embeddings", "animals").stdout
    projected = cli(animals, "project", "animals")  # the only embedding is the default choice
    assert projected.returncode == 0, projected.stderr
    assert "pca 3D map of 7 images" in projected.stdout and "needs at least 20 images" in projected.stdout
    again = cli(animals, "project", "animals", "--embedding", "pixels-8px")
    assert "(from the cache)" in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, match",
    [
        (["embed", "nope"], "No data set named 'nope'"),
        (["embed", "animals", "--embedder", "torchvision", "--arch", "resnet18", "--weights", "/no/file.pth"], "does not exist"),
        (["embed", "animals", "--embedder", "open_clip", "--arch", "ViT-B-32"], "needs weights: a pretrained tag"),
        (["project", "animals", "--embedding", "pixels-99px"], "has no embeddings 'pixels-99px'"),
        (["project", "animals", "--iterations", "100,x,1"], "--iterations takes comma-separated numbers, not '100,x,1'"),
    ],
)
def test_embed_and_project_errors_exit_2(animals: Path, args: list[str], match: str):
    assert match in one_error_line(cli(animals, *args))


@pytest.mark.slow
def test_train_runs_issues_and_predict_from_the_command_line(tmp_path: Path, workspace: Path):
    from tests.conftest import write_fashion_folders

    source = write_fashion_folders(tmp_path / "fashion", 12)
    assert cli(workspace, "import", str(source), "--name", "fashion").returncode == 0
    assert cli(workspace, "embed", "fashion", "--embedder", "pixels", "--resolution", "12").returncode == 0
    trained = cli(workspace, "train", "fashion", "--embedding", "pixels-12px", "--epochs", "10", "--final-epochs", "10", "--patience", "3")
    assert trained.returncode == 0, trained.stderr
    assert "CV accuracy, 5 folds" in trained.stdout and "best:" in trained.stdout
    run_id = trained.stdout.split()[1]
    assert run_id in cli(workspace, "runs", "fashion").stdout
    issues = cli(workspace, "issues", "fashion", "--top", "5", "--out", str(tmp_path / "ranked.csv"))
    assert issues.returncode == 0 and "most suspicious first" in issues.stdout
    assert len(pd.read_csv(tmp_path / "ranked.csv")) == 120
    predicted = cli(workspace, "predict", run_id, str(write_fashion_folders(tmp_path / "new", 2, offset=100)), "--out", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0, predicted.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == 20


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, match",
    [
        (["train", "animals", "--embedding", "pixels-8px"], "has no embeddings 'pixels-8px' yet"),
        (["train", "animals", "--heads", "svm"], "Heads: 'svm' is not one of knn, logreg, mlp, softmax"),
        (["train", "animals", "--mlp-hidden", "a,b"], "--mlp-hidden takes comma-separated numbers"),
        # A setting the family does not read is refused, not silently ignored (ResNet-18 has no heads, no embedding).
        (["train", "animals", "--family", "resnet18-scratch", "--heads", "knn", "--embedding", "x"], "--heads, --embedding: not a setting of the resnet18-scratch family"),
        (["train", "animals", "--family", "triplet", "--validation-split", "0.2"], "--validation-split: not a setting of the triplet family"),
        (["issues", "animals"], "no finished training run"),
        (["predict", "no-such-run", "/tmp", "--out", "/tmp/x.csv"], "No run 'no-such-run'"),
    ],
)
def test_train_and_predict_errors_exit_2(animals: Path, args: list[str], match: str):
    assert match in one_error_line(cli(animals, *args))


@pytest.mark.slow
def test_resnet18_from_scratch_from_the_command_line(tmp_path: Path, workspace: Path):
    from tests.conftest import write_fashion_folders

    assert cli(workspace, "import", str(write_fashion_folders(tmp_path / "f", 6)), "--name", "f").returncode == 0
    trained = cli(workspace, "train", "f", "--family", "resnet18-scratch", "--epochs", "1", "--validation-split", "0.3")
    assert trained.returncode == 0, trained.stderr
    assert "(validation accuracy)" in trained.stdout and "features saved as embedding 'trained-" in trained.stdout
    run_id = trained.stdout.split()[1]
    assert f"trained-{run_id}" in cli(workspace, "embeddings", "f").stdout
    predicted = cli(workspace, "predict", run_id, str(tmp_path / "f"), "--out", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0, predicted.stderr
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert len(predictions) == 60 and set(predictions["label"]) <= {p.name for p in (tmp_path / "f").iterdir()}


@pytest.mark.slow
def test_triplet_encoder_from_the_command_line(tmp_path: Path, workspace: Path):
    from tests.conftest import write_fashion_folders

    assert cli(workspace, "import", str(write_fashion_folders(tmp_path / "f", 8)), "--name", "f").returncode == 0
    assert cli(workspace, "embed", "f", "--embedder", "pixels", "--resolution", "8").returncode == 0
    heads = cli(workspace, "train", "f", "--embedding", "pixels-8px", "--heads", "knn")
    assert heads.returncode == 0, heads.stderr
    trained = cli(workspace, "train", "f", "--family", "triplet", "--embedding", "pixels-8px", "--epochs", "5")
    assert trained.returncode == 0, trained.stderr
    assert "encoder output saved as embedding 'triplet-" in trained.stdout and "(in-sample)" in trained.stdout
    listing = cli(workspace, "runs", "f").stdout
    assert "triplet-encoder" in listing and "knn" in listing
    issues = cli(workspace, "issues", "f", "--top", "3")  # the newest run with per-sample scores: the heads run
    assert issues.returncode == 0 and heads.stdout.split()[1] in issues.stdout
    triplet_run = trained.stdout.split()[1]
    assert "an embedding, not a classifier" in one_error_line(cli(workspace, "predict", triplet_run, str(tmp_path / "f"), "--out", str(tmp_path / "p.csv")))


@pytest.mark.slow
def test_frozen_backbone_from_the_command_line(tmp_path: Path, workspace: Path):
    from tests.conftest import write_fashion_folders

    assert cli(workspace, "import", str(write_fashion_folders(tmp_path / "f", 6)), "--name", "f").returncode == 0
    trained = cli(workspace, "train", "f", "--family", "frozen-backbone", "--epochs", "3", "--image-size", "32", "--folds", "2")
    assert trained.returncode == 0, trained.stderr
    assert "(CV accuracy, 2 folds)" in trained.stdout and "best epoch" in trained.stdout
    run_id = trained.stdout.split()[1]
    predicted = cli(workspace, "predict", run_id, str(tmp_path / "f"), "--out", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0, predicted.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == 60
    bad = cli(workspace, "train", "f", "--family", "frozen-backbone", "--unfreeze-from", "9", "--epochs", "3")
    assert "unfreeze from epoch must be 0 (never) to the number of epochs (3)" in one_error_line(bad)


def test_each_command_group_lists_what_it_registers_and_a_table_command_loads_no_torch():
    import argparse

    from labelloop.cli.main import COMMAND_GROUPS

    for group in COMMAND_GROUPS:
        sub = argparse.ArgumentParser().add_subparsers()
        group.register(sub, argparse.ArgumentParser(add_help=False))
        assert tuple(sub.choices) == group.COMMANDS, group.__name__
    code = "import sys; from labelloop.cli.main import build_parser; build_parser('list'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout.strip() == "False"


def test_the_app_runs_from_the_workspace_and_writes_nothing_into_the_package(workspace: Path):
    """`labelloop app` starts Streamlit on an entry script in the workspace's .app/: Streamlit serves static/ beside
    its main script, so map files and thumbnail links land there, never in the package (site-packages is unwritable)."""
    from labelloop.cli.data import APP_PACKAGE, write_launcher
    from labelloop.data.workspace import list_datasets

    script = write_launcher(workspace)
    assert script == workspace / ".app" / "main.py" and "from labelloop.app.main import main" in script.read_text()
    assert (script.parent / ".streamlit" / "config.toml").read_bytes() == (APP_PACKAGE / ".streamlit" / "config.toml").read_bytes()
    vendor = APP_PACKAGE / "static" / "vendor"
    for source in vendor.rglob("*.js"):  # copies, not links: Streamlit refuses a file whose real path leaves static/
        copy = script.parent / "static" / "vendor" / source.relative_to(vendor)
        assert copy.read_bytes() == source.read_bytes() and not copy.is_symlink()
    assert (script.parent / "static" / "maps").is_dir() and (script.parent / "static" / "thumbs").is_dir()
    written = {path: path.stat().st_mtime_ns for path in script.parent.rglob("*") if path.is_file()}
    assert write_launcher(workspace) == script  # a second server on the workspace: nothing it serves is rewritten
    assert {path: path.stat().st_mtime_ns for path in script.parent.rglob("*") if path.is_file()} == written
    assert list_datasets(workspace) == []  # .app is no data set
