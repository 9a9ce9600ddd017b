"""A real Prefect server, the deployments from deployments/prefect.yaml, a process worker and the trigger.

Starts `prefect server start` on a free loopback port with a temporary PREFECT_HOME, deploys every
deployment, starts a worker, runs the upstream `ingest` deployment and waits for the triggered
`train-and-publish` run to complete and its partition to appear. All processes are stopped at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from tasks import publish

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start(cmd, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def api(url: str, path: str, body: dict | None = None):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        return json.loads(response.read() or b"null")


def test_ingest_deployment_triggers_train_and_publish(tmp_path, small_synthetic):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    home = tmp_path / "recsys-home"
    env = {**os.environ,
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": url,
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_UI_ENABLED": "false",
           "RECSYS_HOME": str(home), "RECSYS_TIMEZONE": "UTC", "RECSYS_WORK_POOL": "recsys-it",
           "RECSYS_EPOCHS": "2", "RECSYS_TOP_N": "10", "RECSYS_BOOTSTRAP_SAMPLES": "50",
           # The chain (deploy, trigger, cache reuse, serve) is under test, not the models: two quick ones
           # keep TensorFlow out of the worker's flow runs (the nightly flow tests fit every model).
           "RECSYS_MODELS": '["popularity", "ease"]', "RECSYS_PUBLISH_MODEL": "ease", "RECSYS_ITEM_COLD_FRACTION": "0"}
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env,
                           tmp_path / "server.log"))
        wait_for(lambda: _healthy(url), 180, "the Prefect server", every=1.0)
        run = lambda *args: subprocess.run([*PREFECT, *args], cwd=REPO, env=env, capture_output=True,  # noqa: E731
                                           text=True, timeout=300)
        created = run("work-pool", "create", "recsys-it", "--type", "process")
        assert created.returncode == 0, created.stdout + created.stderr
        deployed = run("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        deployments = {d["name"]: d for d in api(url, "/deployments/filter", {})}
        assert {"nightly", "nightly-dask", "ingest", "train-and-publish"} <= set(deployments)
        assert deployments["nightly-dask"]["job_variables"]["env"]["RECSYS_TASK_RUNNER"] == "dask"
        schedule = deployments["nightly"]["schedules"][0]["schedule"]
        assert schedule["cron"] == "0 2 * * *" and schedule["timezone"] == "UTC"
        automations = api(url, "/automations/filter", {})
        assert any("train-and-publish" in a["name"] for a in automations)

        procs.append(start([*PREFECT, "worker", "start", "--pool", "recsys-it", "--type", "process"], env,
                           tmp_path / "worker.log"))
        triggered = run("deployment", "run", "ingest/ingest", "--params",
                        json.dumps({"path": str(small_synthetic), "settings": {"home": str(home)}}))
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr

        def downstream_state():
            runs = api(url, "/flow_runs/filter",
                       {"deployments": {"id": {"any_": [deployments["train-and-publish"]["id"]]}}})
            states = [r["state_type"] for r in runs]
            assert "FAILED" not in states and "CRASHED" not in states, _logs(tmp_path)
            return runs if "COMPLETED" in states else None

        runs = wait_for(downstream_state, 540, "the triggered train-and-publish run")
        assert runs[0]["parameters"]["settings"]["home"] == str(home)  # passed through from the upstream run
        today = datetime.now(UTC).date().isoformat()
        partition = publish.partition_path(home / "output" / "recommendations", date.fromisoformat(today))
        assert partition.exists(), _logs(tmp_path)

        # A no-op ingest (every file loaded already) triggers train-and-publish again: with the warehouse
        # unchanged it reuses the cached features, evaluation and training, and publishes once more.
        again = run("deployment", "run", "ingest/ingest", "--params",
                    json.dumps({"path": str(small_synthetic), "settings": {"home": str(home)}}))
        assert again.returncode == 0, again.stdout + again.stderr
        wait_for(lambda: (r := downstream_state()) and sum(x["state_type"] == "COMPLETED" for x in r) == 2,
                 540, "the second triggered train-and-publish run")
        assert len(list((home / "models").iterdir())) == 1, "training ran again on an unchanged warehouse"
        assert len(list((home / "reports").iterdir())) == 1, "evaluation ran again on an unchanged warehouse"
        assert len(list(partition.parent.parent.glob("version=*"))) == 2  # but it published again

        # recsys serve: its own deployment name, the work-pool deployment left alone, a clean first Ctrl-C.
        serve = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--cron", "0 3 * * *"], cwd=REPO,
                                 env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        procs.append(serve)
        for line in serve.stdout:  # blocks until the next line: no timing involved
            if line.startswith("ready:") or serve.poll() is not None:
                break
        served = {d["name"]: d for d in api(url, "/deployments/filter", {})}
        assert "nightly-serve" in served and served["nightly"]["id"] == deployments["nightly"]["id"]
        serve.send_signal(signal.SIGINT)
        out, _ = serve.communicate(timeout=240)
        assert serve.returncode == 0 and out.rstrip().endswith("stopped"), out
        assert "never awaited" not in out and "Traceback" not in out, out
        after = {d["name"]: d for d in api(url, "/deployments/filter", {})}
        assert not after["nightly"]["paused"], "serve paused the work-pool deployment"
        assert after["nightly-serve"]["paused"]  # its own schedule stops with it
    finally:
        for proc in reversed(procs):
            stop(proc)
    assert all(p.poll() is not None for p in procs)


def _healthy(url: str) -> bool:
    try:
        return api(url, "/health") is True
    except OSError:
        return False


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(tmp_path.glob("*.log")))
