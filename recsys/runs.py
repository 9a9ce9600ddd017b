"""Run identity and bookkeeping: every run records its seed and parameters in the ``runs`` table."""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

from recsys import db
from recsys.errors import RunLockedError
from recsys.settings import Settings

_held: dict[Path, int] = {}  # lock file -> how many nested holders in this process


_RUN_ID = re.compile(r"^[a-z][a-z0-9-]*-(\d{8}T\d{6})-[0-9a-f]{6}$")


def new_run_id(flow: str, when: datetime | None = None) -> str:
    """Sortable and unique: ``<flow>-YYYYMMDDTHHMMSS-<6 hex>`` (UTC)."""
    when = when or datetime.now(UTC)
    return f"{flow}-{when:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def run_started(name: str) -> str | None:
    """The ``YYYYMMDDTHHMMSS`` a :func:`new_run_id` names; None for a name that is not a run id."""
    match = _RUN_ID.match(name)
    return match[1] if match else None


def start_run(
    wh: db.Warehouse, settings: Settings, run_id: str, flow: str,
    run_date: date | None = None, params: dict | None = None,
) -> None:
    wh.run("runs/start_run", {
        "run_id": run_id, "flow": flow, "run_date": run_date, "seed": settings.seed,
        "params": json.dumps(params or {}, default=str, sort_keys=True),
    })


def finish_run(wh: db.Warehouse, run_id: str, status: str) -> None:
    wh.run("runs/finish_run", {"run_id": run_id, "status": status})


@contextmanager
def failed_on_exit(settings: Settings, run_id: str) -> Iterator[None]:
    """Mark ``run_id`` failed, with the reason, if the block ends by an exception or Ctrl-C (a run left
    ``running`` was found only by the next run). A run already finished (held, published) is left alone."""
    try:
        yield
    except BaseException as exc:
        reason = (str(exc).splitlines() or [""])[0][:300] or type(exc).__name__
        if isinstance(exc, KeyboardInterrupt):
            reason = "interrupted (Ctrl-C or SIGINT)"
        try:
            with db.warehouse(settings) as wh:
                wh.run("runs/fail_run", {"run_id": run_id, "message": f"{type(exc).__name__}: {reason}"})
        except Exception:  # noqa: BLE001 - the original error is the one to report; the next run recovers this one
            pass
        raise


def record_snapshot(wh: db.Warehouse, run_id: str, fingerprint: str) -> None:
    """The snapshot (the warehouse's content fingerprint) ``run_id`` read."""
    wh.run("runs/record_snapshot", {"run_id": run_id, "snapshot": fingerprint})


def snapshots_read(wh: db.Warehouse) -> dict[str, str | None]:
    """Every run's snapshot fingerprint (None where none was recorded: a run before the column existed)."""
    return dict(wh.execute("select run_id, snapshot from runs").fetchall())


def run_params(wh: db.Warehouse, run_id: str) -> dict:
    rows = wh.execute("select params from runs where run_id = $run_id", {"run_id": run_id}).fetchall()
    return json.loads(rows[0][0]) if rows and rows[0][0] else {}


@contextmanager
def recorded_run(settings: Settings, flow: str, params: dict | None = None, done: str = "done") -> Iterator[str]:
    """A run id recorded in ``runs`` for the duration of the block: ``done`` on success, else ``failed``."""
    run_id = new_run_id(flow)
    with db.warehouse(settings) as wh:
        start_run(wh, settings, run_id, flow, params=params)
    status = "failed"
    try:
        yield run_id
        status = done
    finally:
        with db.warehouse(settings) as wh:
            finish_run(wh, run_id, status)


@contextmanager
def run_lock(settings: Settings) -> Iterator[None]:
    """One writing run per home at a time: an OS file lock on ``RECSYS_HOME/run.lock``.

    The kernel drops the lock when its process dies, so a killed run never leaves a stale lock behind.
    Waits up to ``settings.lock_wait_seconds``, then raises :class:`RunLockedError`. Re-entrant within a
    process (the nightly flow holds it while its ingest and train-and-publish flows take it again).
    """
    path = (settings.home / "run.lock").resolve()
    if _held.get(path):
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + settings.lock_wait_seconds
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    raise RunLockedError(
                        f"another recsys run is using {settings.home} ({holder}); wait for it to finish, or set "
                        f"RECSYS_LOCK_WAIT_SECONDS to wait for it") from None
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC".encode(), 0)
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def recover_stale_runs(wh: db.Warehouse, run_id: str) -> list[str]:
    """Runs left ``running`` by a dead process are marked failed, their staged batches abandoned and cleared.

    Call it while holding :func:`run_lock`: then no other run can be in flight. Returns what was done, one
    line each, for the log.
    """
    message = f"the process ended without finishing (found by {run_id})"
    stale = wh.run("runs/fail_stale_runs", {"run_id": run_id, "message": message})
    if not stale:
        return []
    ids = [row[0] for row in stale]
    files = wh.run("runs/abandon_staging", {
        "run_ids": ids, "message": f"abandoned: its run died before the gate (cleared by {run_id}); ingest the file "
                                   f"again to load it"})
    for kind in ("interactions", "users", "items"):
        wh.run(f"runs/clear_abandoned_{kind}", {"run_ids": ids})
    lines = [f"run {r} ({flow}, started {started:%Y-%m-%d %H:%M:%S}) was left running by a process that died: "
             f"marked failed" for r, flow, started in stale]
    lines += [f"  its staged file {path} ({rows:,} rows) was abandoned and cleared from staging"
              for _, path, rows in files]
    return lines
