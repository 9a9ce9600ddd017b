"""RECSYS_TASK_RUNNER picks the task runner; the night's own LocalCluster keeps the flow's BLAS threads."""

from __future__ import annotations

import dask
import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from pydantic import ValidationError
from threadpoolctl import threadpool_info

from flows.runners import local_cluster_options, parallelism, task_runner
from recsys.settings import Settings


def test_local_runs_one_task_at_a_time_in_this_process():
    runner = task_runner(Settings(task_runner="local"))
    assert isinstance(runner, ThreadPoolTaskRunner) and parallelism(runner) == 1


def test_dask_with_an_address_uses_that_cluster():
    runner = task_runner(Settings(task_runner="dask", dask_address="tcp://10.0.0.1:8786"))
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://10.0.0.1:8786"


def test_an_unknown_runner_is_refused():
    with pytest.raises(ValidationError, match="local"):
        Settings(task_runner="spark")


def test_the_local_cluster_gives_its_workers_this_process_blas_threads():
    options = local_cluster_options(3, {"PREFECT_API_URL": "http://127.0.0.1:1/api"})
    blas = max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
    assert dask.config.get("distributed.nanny.pre-spawn-environ.OPENBLAS_NUM_THREADS") == blas
    assert options["n_workers"] == 3 and options["threads_per_worker"] == 1 and options["processes"]
    assert options["env"]["PREFECT_API_URL"] == "http://127.0.0.1:1/api"
