"""The night on a real Dask cluster (two worker processes) through prefect-dask: same rows as the local
run, the work done by the workers, and a worker killed in the middle of a fit costs a retry, not the night."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dask
import polars as pl
import pytest
from distributed import Client, LocalCluster, get_task_stream

from benchmarks.night import published_hash
from flows.nightly import nightly_flow
from flows.runners import local_cluster_options
from recsys.settings import Settings
from tasks import publish

pytestmark = pytest.mark.slow

N = 10
NIGHT = "2026-11-20"
MODELS = ["popularity", "ease"]  # BLAS-heavy and quick: no TensorFlow in the workers
# Without the item-cold fold (its four baselines and two audience models are tasks of their own): the runner is
# under test here, and the fold does not change the published rows (the nightly flow tests run it).
SETTINGS = {"RECSYS_TOP_N": str(N), "RECSYS_BOOTSTRAP_SAMPLES": "50", "RECSYS_ITEM_COLD_FRACTION": "0"}


def published(home: Path) -> str:
    """The published partition of the night, as the benchmark compares runners: its sorted content's hash."""
    return str(publish.partition_path(home / "output" / "recommendations", date.fromisoformat(NIGHT)))


@pytest.fixture(scope="module")
def cluster(prefect_harness, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    kill_dir = tmp_path_factory.mktemp("kill")
    mp.setenv("RECSYS_TEST_KILL_DIR", str(kill_dir))  # read by the workers' preload, inherited at spawn
    for key, value in SETTINGS.items():
        mp.setenv(key, value)
    preload = str(Path(__file__).with_name("dask_kill_preload.py"))
    with dask.config.set({"distributed.worker.preload": [preload]}):
        with LocalCluster(**local_cluster_options(2)) as local, Client(local) as client:
            yield client, kill_dir
    mp.undo()


def night(home: Path, small_synthetic, monkeypatch, address: str | None = None) -> dict:
    if address:
        monkeypatch.setenv("RECSYS_TASK_RUNNER", "dask")
        monkeypatch.setenv("RECSYS_DASK_ADDRESS", address)
    else:
        monkeypatch.setenv("RECSYS_TASK_RUNNER", "local")
    return nightly_flow(settings=Settings(home=home), run_date=NIGHT, source="synthetic", path=str(small_synthetic),
                        models=MODELS, publish_model="ease")


@pytest.fixture(scope="module")
def local_rows(prefect_harness, small_synthetic, tmp_path_factory) -> str:
    mp = pytest.MonkeyPatch()
    for key, value in SETTINGS.items():
        mp.setenv(key, value)
    home = tmp_path_factory.mktemp("local")
    night(home, small_synthetic, mp)
    mp.undo()
    return published(home)


def test_the_dask_night_is_run_by_the_workers_and_publishes_the_local_rows(cluster, local_rows, small_synthetic,
                                                                          tmp_path, monkeypatch):
    client, _ = cluster
    with get_task_stream(client) as stream:
        summary = night(tmp_path, small_synthetic, monkeypatch, address=client.scheduler.address)
    ran = {(t["key"].rsplit("-", 1)[0], t["worker"]) for t in stream.data}
    workers = set(client.scheduler_info()["workers"])
    assert {name for name, _ in ran} >= {"fit_model", "evaluate_slice", "score_users"}, ran
    assert {worker for _, worker in ran} <= workers
    assert summary["published"]["users"] == pl.read_parquet(local_rows)["user_id"].n_unique()
    assert published_hash(published(tmp_path)) == published_hash(local_rows)


def test_a_worker_killed_during_a_fit_costs_a_retry_not_the_night(cluster, local_rows, small_synthetic, tmp_path,
                                                                   monkeypatch):
    client, kill_dir = cluster
    (kill_dir / "armed").touch()
    try:
        night(tmp_path, small_synthetic, monkeypatch, address=client.scheduler.address)
    finally:
        (kill_dir / "armed").unlink()
    assert (kill_dir / "killed").exists(), "no worker was killed: the preload did not run"
    rows = pl.read_parquet(published(tmp_path))
    versions = list((tmp_path / "output" / "recommendations" / f"run_date={NIGHT}").glob("version=*"))
    assert len(versions) == 1  # published once
    assert (rows.group_by("user_id").len()["len"] == N).all()
    assert published_hash(published(tmp_path)) == published_hash(local_rows)  # complete, and the same rows
