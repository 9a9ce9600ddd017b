"""Prefect task policies: caching of the nightly's expensive steps (storage under RECSYS_HOME), and which
failures are worth a retry.

A step is reused when its inputs (the snapshot's fingerprint and the records of earlier steps), the
settings that shape it and the project's code are unchanged. Records and results live under
``RECSYS_HOME/prefect/``, so a night's cache goes where its warehouse goes. No per-key lock
(``SERIALIZABLE`` isolation): the home's run lock (``recsys.runs.run_lock``) already keeps a second run
out, and Prefect's lock files outlive a holder that is killed (a Dask worker lost mid-fit, a flow process
killed mid-step), after which the retry, or the next night, would wait for that lock forever.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.filesystems import LocalFileSystem
from prefect.settings import PREFECT_API_URL
from prefect.utilities.hashing import hash_objects

from recsys.errors import RecsysError
from recsys.settings import PROJECT_ROOT, Settings
from tasks import night

# Settings that only matter to publishing or to where files are found: changing them recomputes nothing.
NOT_SHAPING = {"top_n", "metric_tolerance", "sql_dir", "expectations_dir", "timezone", "ml100k_url", "ml100k_dir",
               "publish_model", "verbose", "lock_wait_seconds", "connect_wait_seconds", "task_runner", "dask_address",
               "dask_workers", "text_encoder_model_path", "text_vector_cache",
               "sql_timeout_seconds", "sql_memory_limit", "warehouse_memory_limit", "keep_nights"}
# Settings only the scoring of slices reads: a night that changes them re-scores and re-reports, and reuses
# the split, the features and every fit.
EVALUATION_ONLY = {"bootstrap_samples", "max_eval_users", "ks", "data_docs"}
BEFORE_SCORING = {step.__name__ for step in (night.build_features, night.split_for_evaluation, night.fit_model)}
CODE_FOLDERS = ("recsys", "models", "tasks", "sql")


@dataclass
class SettingsThatShape(CachePolicy):
    """The settings that shape a step's output (and the home it writes to), taken from its ``settings``: the
    steps before scoring ignore the settings that only scoring reads."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        settings = inputs.get("settings")
        if not isinstance(settings, Settings):
            return None
        ignored = NOT_SHAPING | (EVALUATION_ONLY if task_ctx.task.name in BEFORE_SCORING else set())
        shaping = settings.model_dump(mode="json", exclude=ignored)
        shaping["home"] = str(Path(settings.home).resolve())
        return hash_objects(shaping)


@dataclass
class ProjectCode(CachePolicy):
    """The source of everything a step runs (models, tasks, SQL), not only the task function's own lines."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        return code_fingerprint()


def code_fingerprint(root: Path = PROJECT_ROOT) -> str:
    digest = hashlib.sha256()
    for folder in CODE_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".py", ".sql") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def result_storage(base: Path) -> str:
    """A LocalFileSystem block for this home's results (Prefect wants result storage saved server-side),
    saved once per Prefect API and home in this process."""
    name = "recsys-results-" + hashlib.sha256(str(base).encode()).hexdigest()[:12]
    _save_storage(PREFECT_API_URL.value() or "temporary", base, name)
    return f"local-file-system/{name}"


@cache
def _save_storage(api: str, base: Path, name: str) -> None:
    LocalFileSystem(basepath=str(base / "results")).save(name, overwrite=True)


def step_options(settings: Settings) -> dict[str, Any]:
    """``Task.with_options`` arguments that cache a step under ``settings.home``. The run id and the folder a
    step writes to (named after the run) do not make its output different: a cached record keeps the folder
    of the run that computed it."""
    base = settings.home.resolve() / "prefect"
    # TASK_SOURCE: two steps with the same inputs (features and the evaluation split both take the snapshot)
    # are different steps.
    # last_blend (last night's published blend, which a tuning keeps unless beaten): on an unchanged snapshot the
    # last publish is the night that computed the cached tuning, so its blend is what the tuning would keep.
    policy = (TASK_SOURCE + INPUTS - "settings" - "run_id" - "folder" - "last_blend" + SettingsThatShape()
              + ProjectCode()).configure(
        key_storage=str(base / "cache-keys"))
    return {"cache_policy": policy, "persist_result": True,
            "result_storage": result_storage(base)}


def transient_only(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a failure the next try may not meet (a file lock, a network
    hiccup), never a user error (a bad path, mapping or file), which would only fail again."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, RecsysError)
