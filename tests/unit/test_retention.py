"""Old nights' working files are deleted beyond keep_nights nights; every report, the nights tonight's records
point at (the published hybrid's components among them) and anything that is not a run's stay."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import tasks.retention
from recsys.settings import Settings
from tasks.retention import WORKING_FILES, prune_old_nights

RUNS = [f"nightly-202612{day:02d}T0100{day:02d}-00000{day}" for day in range(1, 7)]  # oldest first


def _night(settings: Settings, run: str) -> None:
    for name in ("ease", "hybrid"):
        folder = settings.models_dir / run / name
        folder.mkdir(parents=True)
        (folder / "params.json").write_text("{}")
    reports = settings.reports_dir / run
    reports.mkdir(parents=True)
    for name in WORKING_FILES:
        if name.endswith(".parquet"):
            (reports / name).write_bytes(b"x" * 1000)
        else:
            (reports / name).mkdir()
            (reports / name / "data.bin").write_bytes(b"x" * 1000)
    (reports / "report.html").write_text("<html>")
    (reports / "metrics.parquet").write_bytes(b"m")


@pytest.fixture
def home(tmp_path):
    settings = Settings(home=tmp_path / "var", keep_nights=2)
    for run in RUNS:
        _night(settings, run)
    # Tonight (night 6) published a hybrid whose fit was cached in night 4's folder; it reads a component that
    # an earlier cached fit left in night 1's.
    published = settings.models_dir / RUNS[3] / "hybrid"
    (published / "components.json").write_text(
        json.dumps({"ease": os.path.relpath(settings.models_dir / RUNS[0] / "ease", published)}))
    (settings.models_dir / "my-notes").mkdir()  # not a run's: never touched
    (settings.reports_dir / "nightly-draft").mkdir()
    # Night 2's fold models hard-link the fold's shared training file: freed once, not once per link.
    shared = settings.reports_dir / RUNS[1] / "models" / "data.bin"
    os.link(shared, settings.reports_dir / RUNS[1] / "models" / "linked.bin")
    return settings, str(published)


def test_old_nights_lose_their_working_files_and_keep_their_reports(home):
    settings, published = home
    pruned = prune_old_nights(settings, RUNS[5], [published])
    assert pruned.nights == [RUNS[1], RUNS[2]]  # night 1 and 4 are read by tonight's model; 5 and 6 are the last two
    for run in (RUNS[0], RUNS[3], RUNS[4], RUNS[5]):
        assert (settings.models_dir / run / "ease" / "params.json").exists()
        assert all((settings.reports_dir / run / name).exists() for name in WORKING_FILES)
    for run in RUNS[1:3]:
        assert not (settings.models_dir / run).exists()
        assert not any((settings.reports_dir / run / name).exists() for name in WORKING_FILES)
        assert (settings.reports_dir / run / "report.html").exists()  # every night keeps its report
        assert (settings.reports_dir / run / "metrics.parquet").exists()
    assert (settings.models_dir / "my-notes").is_dir() and (settings.reports_dir / "nightly-draft").is_dir()
    # Two nights of 7 working entries of 1,000 bytes (night 2's hard link counted once) and 2 x 2 model bytes.
    assert pruned.bytes == 2 * 7 * 1000 + 2 * 2 * 2
    assert "2 older nights' removed" in pruned.line(2)
    again = prune_old_nights(settings, RUNS[5], [published])
    assert again.nights == [] and again.bytes == 0 and "none older" in again.line(2)


def test_keep_nights_zero_keeps_everything_and_the_current_night_is_always_kept(home):
    settings, _ = home
    everything = prune_old_nights(settings.model_copy(update={"keep_nights": 0}), RUNS[5], [])
    assert everything.nights == [] and all((settings.models_dir / run).is_dir() for run in RUNS)
    assert everything.line(0) == "working files: all kept"
    # The current night is kept even when it is not among the newest (a run whose clock was behind).
    one = prune_old_nights(settings.model_copy(update={"keep_nights": 1}), RUNS[2], [])
    assert one.nights == [RUNS[0], RUNS[1], RUNS[3], RUNS[4]]
    assert (settings.models_dir / RUNS[2]).is_dir() and (settings.models_dir / RUNS[5]).is_dir()


def test_what_cannot_be_removed_is_named_and_the_rest_goes(home, monkeypatch):
    settings, published = home
    real = shutil.rmtree

    def refuse(path, *args, **kwargs):
        if str(path).endswith(f"{RUNS[1]}/slices"):
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tasks.retention.shutil, "rmtree", refuse)
    pruned = prune_old_nights(settings, RUNS[5], [published])
    assert pruned.nights == [RUNS[1], RUNS[2]]
    assert (settings.reports_dir / RUNS[1] / "slices").exists() and not (settings.models_dir / RUNS[1]).exists()
    assert len(pruned.failed) == 1 and "slices (Permission denied)" in pruned.failed[0]
    assert "not removed:" in pruned.line(2) and pruned.bytes == 2 * 7 * 1000 + 2 * 2 * 2 - 1000


def _data(settings: Settings, fingerprints: list[str]) -> None:
    for fingerprint in fingerprints:
        for name in ("snapshots", "features"):
            (settings.home / name / fingerprint).mkdir(parents=True)
            (settings.home / name / fingerprint / "interactions.parquet").write_bytes(b"d" * 500)


def test_snapshots_no_kept_night_read_go_with_the_nights(home):
    settings, published = home
    fingerprints = [f"{day:020x}" for day in range(1, 6)]
    # Nights 4 and 5 read the same data; night 6 (tonight) new data; nights 2 and 3 data nobody keeps.
    read = dict(zip(RUNS, [fingerprints[0], fingerprints[1], fingerprints[2], fingerprints[3], fingerprints[3],
                           fingerprints[4]], strict=True))
    _data(settings, fingerprints)
    (settings.home / "snapshots" / "_staging-1a2b3c4d").mkdir()  # a crashed copy's leftovers: not a snapshot
    pruned = prune_old_nights(settings, RUNS[5], [published], read)
    assert pruned.nights == [RUNS[1], RUNS[2]]
    assert pruned.snapshots == (fingerprints[1], fingerprints[2])
    for name in ("snapshots", "features"):
        kept = sorted(p.name for p in (settings.home / name).iterdir() if not p.name.startswith("_"))
        assert kept == [fingerprints[0], fingerprints[3], fingerprints[4]]
    assert (settings.home / "snapshots" / "_staging-1a2b3c4d").is_dir()
    assert pruned.bytes == 2 * 7 * 1000 + 2 * 2 * 2 + 2 * 2 * 500
    assert "2 older nights' and 2 older snapshots removed" in pruned.line(2)
    again = prune_old_nights(settings, RUNS[5], [published], read)
    assert again.snapshots == () and "none older" in again.line(2)


def test_while_a_kept_nights_snapshot_is_unknown_every_snapshot_stays(home):
    settings, published = home
    fingerprints = [f"{day:020x}" for day in range(1, 4)]
    _data(settings, fingerprints)
    # Night 5 ran before the runs table recorded snapshots: which one it read is unknown.
    read = {RUNS[0]: fingerprints[0], RUNS[3]: fingerprints[0], RUNS[4]: None, RUNS[5]: fingerprints[2]}
    pruned = prune_old_nights(settings, RUNS[5], [published], read)
    assert pruned.nights == [RUNS[1], RUNS[2]] and pruned.snapshots == ()
    assert all((settings.home / "snapshots" / fingerprint).is_dir() for fingerprint in fingerprints)
    # Without the records (a caller that does not pass them) the data is not touched either.
    assert prune_old_nights(settings, RUNS[5], [published]).snapshots == ()
