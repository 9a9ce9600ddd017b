"""The night's production fits replayed on a kept night's files, one after another in one process as the local
flow runs them: each fit's seconds and resident memory (at its start, its peak, after it), so where the train
step peaks and what each fit leaves behind for the next are read off one table.

    python -m benchmarks.fits --home var                  # the last night `make run` left under var/
    python -m benchmarks.fits --home HOME --give-back yes no

``--home``: a night's home (``RECSYS_HOME``) with its snapshot, features, the evaluation fold's fits (the tuned
blend and the fits the production fit continues) and its production models; the most recent night that kept
both is replayed on the most recent snapshot, into a scratch folder under the home (removed after).
``--give-back no`` replays the same fits with :func:`recsys.memory.give_back` switched off (each task then
leaves the memory it freed to the process, as before 01cf000). Each mode runs in a fresh child process; RSS
is sampled every 0.1 s. After each fit also the anonymous memory (``RssAnon``) and what glibc's allocator holds in
use and free (``mallinfo2``): anonymous memory glibc does not hold is another allocator's (Polars', TensorFlow's,
DuckDB's). Prints a JSON line per mode and a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import write_results
from recsys import memory
from recsys.progress import status_gib
from recsys.settings import Settings
from tasks import night
from tasks.features import FeatureSet
from tasks.train import FittedModel

SAMPLE_SECONDS = 0.1


def resident_gib() -> float:
    return status_gib("VmRSS")


class Sampled:
    """The process's resident memory, sampled on a thread: the largest since :meth:`restart`."""

    def __init__(self) -> None:
        self.peak = resident_gib()
        threading.Thread(target=self._sample, daemon=True).start()

    def restart(self) -> float:
        self.peak = resident_gib()
        return self.peak

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, resident_gib())
            time.sleep(SAMPLE_SECONDS)


class Measured:
    """:class:`tasks.night.Steps` in this process, one call after another, each fit timed and sampled."""

    def __init__(self) -> None:
        self.sampled, self.fits = Sampled(), []

    def one(self, step, **call):
        return step(**call)

    def many(self, step, calls: list[dict]) -> list[FittedModel]:
        out = []
        for call in calls:
            start, started = self.sampled.restart(), time.perf_counter()
            out.append(step(**call))
            heap = memory.heap_gib() or {"in_use": float("nan"), "free": float("nan")}
            self.fits.append({"model": call["name"], "seconds": round(time.perf_counter() - started, 1),
                              "start_gib": round(start, 2), "peak_gib": round(self.sampled.peak, 2),
                              "after_gib": round(resident_gib(), 2), "anon_after_gib": round(status_gib("RssAnon"), 2),
                              "glibc_in_use_after_gib": round(heap["in_use"], 2),
                              "glibc_free_after_gib": round(heap["free"], 2)})
        return out


def replay(home: Path, give_back: bool) -> dict:
    """The most recent night's production fits under ``home``, measured (the child's work)."""
    if not give_back:
        memory.give_back = lambda: None  # the policy before: what a task freed stays with the process
    settings = Settings(home=home)
    # A night that kept both its production models and its evaluation fold's fits (an older night's report
    # folder may be pruned, a cached night's models are an earlier night's).
    runs = sorted(p for p in settings.models_dir.iterdir() if (p / settings.publish_model / "params.json").exists()
                  and (home / "reports" / p.name / "models").is_dir())
    if not runs:
        raise SystemExit(f"{home}: no night with its production models under {settings.models_dir} and its "
                         "evaluation fits under reports/; run a night first")
    evaluation = home / "reports" / runs[-1].name / "models"
    fitted = {p.name: str(p) for p in evaluation.iterdir() if (p / "params.json").exists()}
    snapshot = max((p for p in (home / "snapshots").iterdir() if (p / "interactions.parquet").exists()),
                   key=lambda p: (p / "interactions.parquet").stat().st_mtime)
    features = FeatureSet(str(home / "features" / snapshot.name), 0, 0, 0)
    names = list(dict.fromkeys([*settings.models, settings.publish_model]))
    steps = Measured()
    with tempfile.TemporaryDirectory(dir=home, prefix="fits-benchmark-") as folder:
        started = time.perf_counter()
        night.fit_fold(steps, settings, names, str(snapshot / "interactions.parquet"), features, folder,
                       "production", **night.carry_over(fitted))
        seconds = time.perf_counter() - started
    return {"home": str(home), "night": runs[-1].name, "give_back": give_back, "seconds": round(seconds, 1),
            "peak_gib": max(f["peak_gib"] for f in steps.fits), "fits": steps.fits}


def format_table(results: list[dict]) -> str:
    columns = ("start", "peak", "after", "anon", "glibc")
    head = f"{'fit':20}" + "".join(f"{'give back ' + ('yes' if r['give_back'] else 'no'):>52}" for r in results)
    sub = f"{'':20}" + "".join(f"{'s':>7}" + "".join(f"{c:>9}" for c in columns) for _ in results)
    lines = [head, sub]
    for i, fit in enumerate(results[0]["fits"]):
        cells = "".join(f"{f['seconds']:7.1f} {f['start_gib']:8.2f} {f['peak_gib']:8.2f} {f['after_gib']:8.2f} "
                        f"{f['anon_after_gib']:8.2f} {f['glibc_in_use_after_gib']:8.2f}"
                        for f in (r["fits"][i] for r in results))
        lines.append(f"{fit['model']:20}{cells}")
    lines.append(f"{'all fits':20}" + "".join(f"{r['seconds']:7.1f} {'':8} {r['peak_gib']:8.2f}" + " " * 27
                                              for r in results))
    return "\n".join(lines) + ("\n(GiB resident: at the fit's start, its peak, after it; after it, the anonymous "
                               "part and what glibc's allocator holds in use)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="a night's home (RECSYS_HOME), e.g. var")
    parser.add_argument("--give-back", nargs="+", choices=["yes", "no"], default=["yes"])
    parser.add_argument("--out", default="var/benchmarks/fits.json")
    parser.add_argument("--child", choices=["yes", "no"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    home = Path(args.home).resolve()
    if args.child:
        print(json.dumps(replay(home, args.child == "yes")))
        return 0
    results = []
    for mode in args.give_back:
        child = subprocess.run([sys.executable, "-m", "benchmarks.fits", "--home", str(home), "--child", mode],
                               capture_output=True, text=True)
        if child.returncode != 0:
            print(child.stdout + child.stderr, file=sys.stderr)
            return child.returncode
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    write_results(results, args.out, format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
