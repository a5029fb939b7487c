"""Ray as a user runs it: a real local Ray cluster (``ray start --head``, 2 CPUs) started by the module,
real images, the CLI in real processes. Embedding and prediction through Ray Data, ResNet-18 with Ray
Train's DDP on two CPU workers, a Ray Tune sweep, and the bad inputs the cluster brings."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labelloop.data.ingest import import_dataset
from labelloop.data.runs import list_runs
from labelloop.embed import EmbedderConfig, embed_dataset, load_embeddings
from labelloop.errors import UserError
from tests.conftest import REPO, app_script, view, write_fashion_folders
from tests.test_cli import cli, one_error_line

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    """A local Ray of 2 CPUs for this module, stopped afterwards; its GCS address."""
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    # Token authentication, as Ray >= 2.59 sets up for clusters it starts: a token of the test's own, which
    # the cluster, this process and every CLI process it starts read from the environment.
    token = temp / "auth_token"
    token.write_text(os.urandom(32).hex())
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"})
    env = dict(os.environ)
    subprocess.run(
        [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        check=True, capture_output=True, env=env, timeout=120,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """60 real Fashion-MNIST images in 10 class folders, and one file that is not an image."""
    root = write_fashion_folders(tmp_path_factory.mktemp("fashion") / "images", per_class=6)
    (sorted(root.iterdir())[0] / "broken.png").write_bytes(b"not a png at all")
    return root


@pytest.fixture
def fashion(images: Path, workspace: Path, tmp_path: Path) -> Path:
    """The images imported as data set 'fashion', from a copy of their own (a test may damage one)."""
    own = shutil.copytree(images, tmp_path / "own-images")
    import_dataset(str(own), "fashion", workspace)
    return workspace


def test_ray_embedding_is_the_local_embedding_in_the_same_cache(fashion: Path, cluster: str):
    config = EmbedderConfig(runtime="onnxruntime")
    local = embed_dataset(fashion, "fashion", config)
    local_vectors = load_embeddings(fashion, "fashion", local.key)
    shutil.rmtree(fashion / "fashion" / "embeddings")

    seen = []
    on_ray = embed_dataset(fashion, "fashion", config, ray=cluster, progress=lambda done, total: seen.append((done, total)))
    assert on_ray.key == local.key and on_ray.n_computed == local.n_computed == 60
    ray_vectors = load_embeddings(fashion, "fashion", on_ray.key)
    assert np.array_equal(ray_vectors.sample_ids, local_vectors.sample_ids)
    a, b = local_vectors.vectors, ray_vectors.vectors
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.9999
    assert seen and seen[-1] == (60, 60), seen[-3:]
    # An image no worker can read is reported as the local path reports it (the import skipped the broken file).
    assert list(on_ray.failures["reason"]) == list(local.failures["reason"])
    # Everything is cached now: a second Ray embedding computes nothing.
    assert embed_dataset(fashion, "fashion", config, ray=cluster).n_computed == 0


def test_an_image_a_worker_cannot_read_is_skipped_with_its_reason(fashion: Path, cluster: str):
    from labelloop.data.workspace import open_table

    rows = open_table(fashion, "fashion").read()
    victim = rows.iloc[3]
    Path(victim["path"]).write_bytes(b"\x89PNG truncated")  # damaged after the import
    report = embed_dataset(fashion, "fashion", EmbedderConfig(runtime="onnxruntime"), ray=cluster)
    assert report.n_computed == 59
    assert list(report.failures["sample_id"]) == [victim["sample_id"]]
    assert report.failures["reason"].iloc[0]


def test_ray_predict_writes_the_local_csv(fashion: Path, cluster: str, images: Path, tmp_path: Path):
    assert cli(fashion, "embed", "fashion").returncode == 0
    trained = cli(fashion, "train", "fashion", "--heads", "logreg", "--folds", "2")
    assert trained.returncode == 0, trained.stderr
    run = list_runs(fashion, "fashion")[0].run_id
    here = cli(fashion, "predict", run, str(images), "--out", str(tmp_path / "here.csv"), "--probabilities")
    there = cli(fashion, "predict", run, str(images), "--out", str(tmp_path / "there.csv"), "--probabilities", "--ray", cluster)
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    a, b = pd.read_csv(tmp_path / "here.csv"), pd.read_csv(tmp_path / "there.csv")
    assert list(a["filename"]) == list(b["filename"]) and list(a["label"]) == list(b["label"]) and len(a) == 60
    assert np.allclose(a.filter(like="p_").to_numpy(), b.filter(like="p_").to_numpy(), atol=1e-4)
    assert "broken.png" in there.stdout + there.stderr  # skipped, with its reason, as locally


def test_resnet18_on_two_ddp_workers_leaves_a_run_predict_can_use(fashion: Path, cluster: str, images: Path, tmp_path: Path):
    result = cli(fashion, "train", "fashion", "--family", "resnet18-scratch", "--epochs", "2", "--batch-size", "8", "--ray", cluster, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "ray train: 2 workers on CPUs" in result.stdout
    run = list_runs(fashion, "fashion")[0]
    assert run.summary.launcher.startswith("ray train: 2 workers") and run.summary.device.startswith("cpu")
    curves = pd.read_parquet(run.path / "curves.parquet")
    assert list(curves["epoch"]) == [1, 2] and curves["val_accuracy"].between(0, 1).all()
    # The epoch sums cover both replicas' shares: every trainable sample was seen once per epoch.
    predicted = cli(fashion, "predict", run.run_id, str(images), "--out", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0, predicted.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == 60


def test_a_four_trial_sweep_leaves_four_runs_and_names_the_best(fashion: Path, cluster: str):
    assert cli(fashion, "embed", "fashion").returncode == 0
    result = cli(fashion, "sweep", "fashion", "--family", "heads", "--heads", "knn", "--folds", "2", "--grid", "knn_k=1,3", "--samples", "2", "--ray", cluster)
    assert result.returncode == 0, result.stderr
    runs = list_runs(fashion, "fashion")
    assert len(runs) == 4
    from labelloop.train.sweep import list_sweeps

    record = list_sweeps(fashion, "fashion")[0]
    assert len(record.trials) == 4 and {t.status for t in record.trials} == {"finished"}
    assert {t.run_id for t in record.trials} == {r.run_id for r in runs}
    best = max(record.trials, key=lambda t: t.accuracy)
    assert record.best_run == best.run_id and f"best: run {best.run_id}" in result.stdout
    assert sorted((t.params["knn_k"], t.seed) for t in record.trials) == [(1, 42), (1, 43), (3, 42), (3, 43)]


def test_an_address_where_no_ray_answers_fails_within_seconds_and_writes_nothing(fashion: Path):
    closed = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    line = one_error_line(cli(fashion, "embed", "fashion", "--ray", closed))
    assert time.monotonic() - started < 30  # the CLI's start-up included; the check itself is 5 s at most
    assert "No Ray cluster answers at" in line and "ray start --head" in line
    assert not (fashion / "fashion" / "embeddings").exists()
    line = one_error_line(cli(fashion, "train", "fashion", "--family", "resnet18-scratch", "--ray", f"127.0.0.1:{free_port()}", "--workers", "2"))
    assert "No Ray cluster answers" in line and not list_runs(fashion, "fashion")


def test_compute_settings_are_checked_before_anything_runs(fashion: Path):
    import torch

    if not torch.cuda.is_available():
        line = one_error_line(cli(fashion, "embed", "fashion", "--device", "cuda"))
        assert "torch sees no CUDA GPU" in line and "--device cpu" in line
        line = one_error_line(cli(fashion, "train", "fashion", "--family", "resnet18-scratch", "--device", "cuda:1"))
        assert "torch sees no CUDA GPU" in line
    assert "Unknown device 'gpu'" in one_error_line(cli(fashion, "embed", "fashion", "--device", "gpu"))
    assert "need a Ray cluster" in one_error_line(cli(fashion, "train", "fashion", "--family", "resnet18-scratch", "--workers", "2"))
    assert "not a Ray address" in one_error_line(cli(fashion, "embed", "fashion", "--ray", "http://x y"))
    assert "ray job submit" in one_error_line(cli(fashion, "embed", "fashion", "--ray", "ray://head:10001"))
    assert "has no such setting" in one_error_line(cli(fashion, "sweep", "fashion", "--grid", "learning_speed=1,2"))
    assert "must be" in one_error_line(cli(fashion, "sweep", "fashion", "--family", "heads", "--grid", "knn_k=0,3"))
    assert not list_runs(fashion, "fashion")


def test_out_of_memory_becomes_advice_on_the_batch_size():
    import torch

    from labelloop.compute.device import out_of_memory_as_user_error

    with pytest.raises(UserError, match=r"ran out of memory with a batch of 64.*--batch-size 32.*Nothing of this job was saved"):
        with out_of_memory_as_user_error(torch.device("cpu"), 64):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(ValueError):  # anything else passes through untouched
        with out_of_memory_as_user_error(torch.device("cpu"), 64):
            raise ValueError("not memory")


def test_the_cli_module_needs_no_ray_to_start():
    # Ray is imported only by the jobs that use it: plain commands stay quick.
    code = "import sys, labelloop.cli.main; labelloop.cli.main.build_parser(); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_a_worker_killed_mid_job_is_retried_and_the_job_finishes(fashion: Path, cluster: str):
    import signal

    killed: list[int] = []

    def kill_one_actor(done: int, total: int) -> None:
        if killed or done >= total:
            return
        # The first finished batch: kill one of the embedding actors' processes, as an OOM killer or a lost node would.
        listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
        actors = [int(line.split()[0]) for line in listing if "MapBatches(_EmbedActor)" in line and "ray::" in line]
        assert actors, listing
        os.kill(actors[0], signal.SIGKILL)
        killed.append(actors[0])

    report = embed_dataset(fashion, "fashion", EmbedderConfig(runtime="onnxruntime", batch_size=4), ray=cluster, progress=kill_one_actor)
    assert killed
    assert report.n_computed == 60 and report.failures.empty
    assert len(load_embeddings(fashion, "fashion", report.key).sample_ids) == 60


def test_the_apps_compute_setting_checks_the_address_it_is_given(fashion: Path, cluster: str):
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(app_script()), default_timeout=120)
    app.run()
    app.switch_page(view("train")).run()
    assert not app.exception, app.exception

    def check(address: str) -> None:
        next(t for t in app.sidebar.text_input if t.label == "Ray address").input(address)
        app.button(key="FormSubmitter:compute-setting-Check").click().run()
        assert not app.exception, app.exception

    started = time.monotonic()
    check(f"127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 30
    assert "No Ray cluster answers" in app.sidebar.error[0].value
    check("ray://head:10001")
    assert "Ray Client address" in app.sidebar.error[0].value and "ray job submit" in app.sidebar.error[0].value
    check(cluster)
    assert "1 node, 2 CPUs, 0 GPUs" in app.sidebar.success[0].value
    assert any("Compute: Ray at " + cluster in e.label for e in app.sidebar.expander)


def test_an_asha_sweep_keeps_runs_only_of_the_trials_it_let_finish(fashion: Path, cluster: str):
    assert cli(fashion, "embed", "fashion").returncode == 0
    result = cli(fashion, "sweep", "fashion", "--family", "frozen-backbone", "--epochs", "4", "--grid", "lr=1e-2,1e-3,1e-5,1e-6", "--asha", "--ray", cluster)
    assert result.returncode == 0, result.stderr
    from labelloop.train.sweep import list_sweeps

    record = list_sweeps(fashion, "fashion")[0]
    assert record.asha and len(record.trials) == 4
    finished = [t for t in record.trials if t.status == "finished"]
    stopped = [t for t in record.trials if t.status == "stopped early"]
    assert finished and len(finished) + len(stopped) == 4
    assert {r.run_id for r in list_runs(fashion, "fashion")} == {t.run_id for t in finished}  # an ended trial leaves no run
    assert all(t.run_id is None and t.epochs_reported < 4 for t in stopped)
