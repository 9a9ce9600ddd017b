"""Where the night's independent work runs: Prefect task runners, chosen by ``RECSYS_TASK_RUNNER``.

``local`` (the default) runs the fan-out steps one at a time in the flow's process, as a night always did:
``make run`` needs no cluster and its peak memory is one step's. ``dask`` hands them to a Dask cluster
through prefect-dask: an existing one at ``RECSYS_DASK_ADDRESS``, or a ``distributed.LocalCluster`` of
``RECSYS_DASK_WORKERS`` worker processes started for the night and stopped after it. Tasks exchange paths
(to the snapshot, the fold, feature files and saved models), so workers need the project installed and
``RECSYS_HOME`` on storage they share with the flow's process.
"""

from __future__ import annotations

import logging
from typing import Any

import dask
from prefect import Task, get_client
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from threadpoolctl import threadpool_info

from flows.caching import step_options
from recsys.settings import Settings


def task_runner(settings: Settings) -> TaskRunner:
    """A fresh, not yet started runner for ``settings`` (enter it with ``with``)."""
    if settings.task_runner == "local":
        return ThreadPoolTaskRunner(max_workers=1)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines (clients, workers) are noise here
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    # The workers report to this flow's Prefect API, the temporary one included (else each would start its own).
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url).rstrip("/")
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs=local_cluster_options(settings.dask_workers, {"PREFECT_API_URL": api_url}))


def local_cluster_options(workers: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``distributed.LocalCluster`` arguments for the night: ``workers`` processes, one task at a time each
    (a model fit already uses the cores BLAS or TensorFlow give it), no dashboard.

    Their BLAS gets as many threads as this process's: Dask's nannies pin it to one thread before a worker
    starts (``distributed.nanny.pre-spawn-environ``), and a LAPACK factorisation (EASE's Cholesky) rounds
    differently with another thread count, while the night must publish the same rows wherever it runs.
    """
    environ = "distributed.nanny.pre-spawn-environ"
    blas = max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=None)
    if blas:
        dask.config.set({f"{environ}.{name}": blas for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                 "MKL_NUM_THREADS")})
    # The workers' own logs: warnings only, and a fit holding the GIL for minutes is expected, not a warning.
    dask.config.set({f"{environ}.DASK_LOGGING__DISTRIBUTED": "warning",
                     f"{environ}.DASK_DISTRIBUTED__ADMIN__TICK__LIMIT": "1h"})
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
            "env": env or {}}


def parallelism(runner: TaskRunner) -> int:
    """How many tasks the runner executes at once (the Dask cluster's worker threads; 1 locally)."""
    if isinstance(runner, DaskTaskRunner):
        return max(1, sum(runner.client.nthreads().values()))
    return 1


def run_here(settings: Settings, step: Task, call: dict[str, Any]) -> Any:
    """Run ``step`` once in this thread, cached by Prefect on its inputs (``flows/caching.py``); a cached
    record whose files were deleted since is recomputed, not trusted."""
    return _trusted(settings, step, [call], lambda task, calls: [task(**call) for call in calls])[0]


def run_all(runner: TaskRunner, settings: Settings, step: Task, calls: list[dict[str, Any]],
            cache: bool = True) -> list[Any]:
    """Submit ``step`` once per parameter set, wait for all, and return their records in order.

    With ``cache``, as :func:`run_here` does for one call. A failed call raises after all have ended.
    """
    def submit(task: Task, some: list[dict[str, Any]]) -> list[Any]:
        return _results([runner.submit(task, call) for call in some])

    return _trusted(settings, step, calls, submit) if cache else submit(step, calls)


def _trusted(settings: Settings, step: Task, calls: list[dict[str, Any]], execute) -> list[Any]:
    """``execute`` the calls cached; those whose records lost their files are executed again, refreshed."""
    options = step_options(settings)
    records = execute(step.with_options(**options), calls)
    stale = [i for i, record in enumerate(records) if not record.exists()]
    if stale:
        again = execute(step.with_options(**options, refresh_cache=True), [calls[i] for i in stale])
        for i, record in zip(stale, again, strict=True):
            records[i] = record
    return records


def _results(futures: list[PrefectFuture]) -> list[Any]:
    wait(futures)  # all of them end (a failed one raises below, after the others have finished)
    return [future.result() for future in futures]
