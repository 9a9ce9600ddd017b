"""Dask worker preload for tests/flows/test_dask_runner.py: once armed, the first worker to start fitting
EASE kills its own process (SIGKILL, as the OOM killer or a lost machine would), in the middle of the fit.

Armed by the file ``armed`` in ``$RECSYS_TEST_KILL_DIR``; the worker writes ``killed`` (its pid) first, so
exactly one worker dies, whichever gets the task, and the worker the nanny restarts does not die again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def dask_setup(worker) -> None:
    folder = os.environ.get("RECSYS_TEST_KILL_DIR")
    if not folder:
        return
    import tasks.train as train  # the worker's own copy of the module

    original = train.fit_one

    def fit_one(name, *args, **kwargs):
        armed, killed = Path(folder) / "armed", Path(folder) / "killed"
        if name == "ease" and armed.exists() and not killed.exists():
            killed.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return original(name, *args, **kwargs)

    train.fit_one = fit_one
