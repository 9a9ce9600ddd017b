"""Old nights' working files: what a night fits and splits (several GB at 20 M interactions) is needed by that
night and, through its records and the published model, by the next; beyond the last ``keep_nights`` nights it
is deleted, and every night keeps its report and metrics.

A night's working files are its production models (``models/<run>/``) and, under ``reports/<run>/``, its folds'
models, splits and features. A night that tonight's records point at (a cached fit or evaluation left where an
earlier night computed it; the published hybrid's components) is kept whole, and nothing whose name is not a run
id is touched. A Prefect cache record that still points at a deleted folder is recomputed, not trusted
(``flows.runners``).

The data a night reads is kept per content, not per night (``snapshots/<fingerprint>/``, 242 MB at 20 M, and
``features/<fingerprint>/``): a night whose data changed writes new ones. Those of the snapshots that no kept
night read (the ``runs`` table records each night's) are deleted with the nights; while a kept night's snapshot
is unknown (a night before the record existed), all are kept."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from models.hybrid import Hybrid
from recsys.runs import run_started
from recsys.settings import Settings
from tasks.snapshot import DATA_FOLDERS, data_folder, is_fingerprint

# What a night leaves under reports/<run>/ besides its report: the folds' models, the splits and their features.
WORKING_FILES = ("models", "models-item-cold", "slices", "tuning", "item_cold", "features", "train.parquet")


@dataclass(frozen=True)
class Pruned:
    """What one pruning removed: the nights whose working files went, and the bytes freed."""

    nights: list[str]
    bytes: int
    failed: tuple[str, ...] = ()  # what could not be removed, with why (the night is published all the same)
    snapshots: tuple[str, ...] = ()  # the fingerprints whose snapshot and features went

    def line(self, keep: int) -> str:
        if not self.nights and not self.snapshots:
            text = f"working files: the last {keep} nights' kept, none older" if keep else "working files: all kept"
        else:
            nights, snapshots = len(self.nights), len(self.snapshots)
            removed = []
            if nights:
                removed.append("1 older night's" if nights == 1 else f"{nights} older nights'")
            if snapshots:
                removed.append("1 older snapshot" if snapshots == 1 else f"{snapshots} older snapshots")
            text = (f"working files: {' and '.join(removed)} removed ({self.bytes / 2**30:.1f} GiB), the last {keep} "
                    f"nights' kept; the reports stay")
        return text + "".join(f"; not removed: {why}" for why in self.failed)


def prune_old_nights(settings: Settings, current_run: str, in_use: list[str],
                     snapshots: Mapping[str, str | None] | None = None) -> Pruned:
    """Delete the working files of every night but the ``settings.keep_nights`` most recent (by the run id's time),
    ``current_run`` and the nights holding a path of ``in_use`` (tonight's records: its models, a hybrid's
    components, its evaluation); and, given ``snapshots`` (each run's snapshot fingerprint, from the ``runs``
    table), the snapshots and features no kept night read. ``keep_nights`` 0: nothing is deleted."""
    keep = settings.keep_nights
    if keep <= 0:
        return Pruned([], 0)
    runs = sorted({p.name for d in (settings.models_dir, settings.reports_dir) if d.is_dir() for p in d.iterdir()
                   if p.is_dir() and run_started(p.name)}, key=lambda run: (run_started(run), run))
    kept = set(runs[-keep:]) | {current_run} | _runs_holding(settings, in_use)
    removed, seen, failed = [], set(), []
    freed = 0
    for run in runs:
        targets = [settings.models_dir / run, *(settings.reports_dir / run / name for name in WORKING_FILES)]
        targets = [target for target in targets if target.exists()]
        if run in kept or not targets:
            continue
        freed += _remove(targets, seen, failed)
        removed.append(run)
    read = {(snapshots or {}).get(run) for run in kept}
    gone: list[str] = []
    if snapshots is not None and None not in read:
        for fingerprint in sorted({p.name for name in DATA_FOLDERS if (settings.home / name).is_dir()
                                   for p in (settings.home / name).iterdir() if is_fingerprint(p.name)} - read):
            freed += _remove([data_folder(settings, name, fingerprint) for name in DATA_FOLDERS], seen, failed)
            gone.append(fingerprint)
    return Pruned(removed, freed, tuple(failed), tuple(gone))


def _remove(targets: list[Path], seen: set[tuple[int, int]], failed: list[str]) -> int:
    """Delete each existing target (a folder or a file), and return the bytes freed; what cannot be removed is
    added to ``failed`` with why."""
    freed = 0
    for target in targets:
        if not target.exists():
            continue
        try:
            size = _size(target, seen)
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
            freed += size
        except OSError as exc:  # a file another process holds, a permission: the next night tries again
            failed.append(f"{target} ({exc.strerror or exc})")
    return freed


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
