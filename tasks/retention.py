"""Old nights' working files: what a night fits and splits (several GB at 20 M interactions) is needed by that
night and, through its records and the published model, by the next; beyond the last ``keep_nights`` nights it
is deleted, and every night keeps its report and metrics.

A night's working files are its production models (``models/<run>/``) and, under ``reports/<run>/``, its folds'
models, splits and features. A night that tonight's records point at (a cached fit or evaluation left where an
earlier night computed it; the published hybrid's components) is kept whole, and nothing whose name is not a run
id is touched. A Prefect cache record that still points at a deleted folder is recomputed, not trusted
(``flows.runners``)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from models.hybrid import Hybrid
from recsys.runs import run_started
from recsys.settings import Settings

# What a night leaves under reports/<run>/ besides its report: the folds' models, the splits and their features.
WORKING_FILES = ("models", "models-item-cold", "slices", "tuning", "item_cold", "features", "train.parquet")


@dataclass(frozen=True)
class Pruned:
    """What one pruning removed: the nights whose working files went, and the bytes freed."""

    nights: list[str]
    bytes: int
    failed: tuple[str, ...] = ()  # what could not be removed, with why (the night is published all the same)

    def line(self, keep: int) -> str:
        if not self.nights:
            text = f"working files: the last {keep} nights' kept, none older" if keep else "working files: all kept"
        else:
            text = (f"working files: {len(self.nights)} older nights' removed ({self.bytes / 2**30:.1f} GiB), the "
                    f"last {keep} kept; their reports stay")
        return text + "".join(f"; not removed: {why}" for why in self.failed)


def prune_old_nights(settings: Settings, current_run: str, in_use: list[str]) -> Pruned:
    """Delete the working files of every night but the ``settings.keep_nights`` most recent (by the run id's time),
    ``current_run`` and the nights holding a path of ``in_use`` (tonight's records: its models, a hybrid's
    components, its evaluation). ``keep_nights`` 0: nothing is deleted."""
    keep = settings.keep_nights
    if keep <= 0:
        return Pruned([], 0)
    runs = sorted({p.name for d in (settings.models_dir, settings.reports_dir) if d.is_dir() for p in d.iterdir()
                   if p.is_dir() and run_started(p.name)}, key=lambda run: (run_started(run), run))
    kept = set(runs[-keep:]) | {current_run} | _runs_holding(settings, in_use)
    removed, freed, seen, failed = [], 0, set(), []
    for run in runs:
        targets = [settings.models_dir / run, *(settings.reports_dir / run / name for name in WORKING_FILES)]
        targets = [target for target in targets if target.exists()]
        if run in kept or not targets:
            continue
        for target in targets:
            try:
                size = _size(target, seen)
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink()
                freed += size
            except OSError as exc:  # a file another process holds, a permission: the next night tries again
                failed.append(f"{target} ({exc.strerror or exc})")
        removed.append(run)
    return Pruned(removed, freed, tuple(failed))


def _runs_holding(settings: Settings, paths: list[str]) -> set[str]:
    """The runs whose folders hold any of ``paths`` or, for a saved hybrid, the components it loads."""
    found = [Path(p).resolve() for p in paths]
    found += [folder for path in found for folder in Hybrid.component_folders(path).values()]
    runs = set()
    for base in (settings.models_dir.resolve(), settings.reports_dir.resolve()):
        runs |= {path.relative_to(base).parts[0] for path in found if path.is_relative_to(base) and path != base}
    return runs


def _size(path: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes under ``path``, each file once however many hard links it has (a fold's shared training files)."""
    files = [path] if path.is_file() else (Path(root) / name for root, _, names in os.walk(path) for name in names)
    total = 0
    for file in files:
        stat = file.lstat()
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total
