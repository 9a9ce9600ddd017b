"""The night benchmark's night after: the next day's data is the same users and items, byte for byte (so the
ingest's ledger skips their files, as on a scheduled night), with interactions inside that one day only."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from benchmarks import night
from benchmarks.night import ease_scoring_flops, first_night_data, format_table, next_day_data
from recsys.errors import PublishGateError
from recsys.settings import Settings
from tasks.generate import SYNTHETIC_FILES, generate


def test_the_next_days_data_is_the_same_catalogue_and_users_with_a_day_of_interactions(tmp_path):
    first = first_night_data(400, 150, 12_000)
    after = next_day_data(first, 0.1)
    generate(tmp_path / "first", first)
    generate(tmp_path / "after", after)
    for kind in ("users", "items"):
        name = SYNTHETIC_FILES[kind]
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "after" / name).read_bytes()
    before = pl.read_csv(tmp_path / "first" / SYNTHETIC_FILES["interactions"])
    day = pl.read_csv(tmp_path / "after" / SYNTHETIC_FILES["interactions"])
    start = datetime.fromisoformat(first.start).replace(tzinfo=UTC) + timedelta(days=first.days)
    assert before["timestamp"].max() <= start.timestamp() <= day["timestamp"].min()
    assert day["timestamp"].max() <= (start + timedelta(days=1)).timestamp()
    assert 0 < day.height < before.height / 2  # a day's share, not another log


def test_the_table_says_what_the_night_after_took():
    step = {"step": "ingest (stage + gate + promote)", "seconds": 1.5, "peak_rss_gib": None}
    result = {"interactions": 1_000_000, "runner": "local", "steps": [step],
              "later_night": {"rows_read": 12_345, "rows_accepted": 12_345, "steps": [step], "total_seconds": 9.0,
                              "peak_rss_gib": 1.2, "published_hash": "abc"}}
    assert "the night after at 1 M (+12,345 rows read): 9.0 s (ingest 1.5), peak 1.2 GiB, hash abc" in format_table(
        [result])


def test_a_night_the_gate_holds_is_a_result_of_the_night_after_and_an_error_of_the_first(monkeypatch, tmp_path):
    """The product's gate holding a later night (exit 5: the last good partition stays) is what a schedule
    sees, so the benchmark records it and goes on; on a first night, with nothing published before, it stops."""
    def held(**_):
        raise PublishGateError("publish gate kept the last good partition for 2026-11-24: hybrid ndcg dropped")

    monkeypatch.setattr(night, "ingest_flow", lambda **_: {"totals": {"rows_read": 7, "rows_accepted": 7}})
    monkeypatch.setattr(night, "train_publish_flow", held)
    settings = Settings(home=tmp_path)
    _, result, steps, _, _ = night.timed_night(settings, tmp_path, date(2026, 11, 24), None, may_hold=True)
    assert result["held"].startswith("publish gate kept the last good partition")
    assert [s["step"] for s in steps] == ["ingest (stage + gate + promote)", "snapshot to publish (gate held)"]
    with pytest.raises(PublishGateError):
        night.timed_night(settings, tmp_path, date(2026, 11, 23), None)
    step = {"step": "ingest (stage + gate + promote)", "seconds": 1.5, "peak_rss_gib": None}
    line = format_table([{"interactions": 1_000_000, "runner": "local", "steps": [step],
                          "later_night": {"rows_read": 5, "rows_accepted": 5, "steps": [step], "total_seconds": 2.0,
                                          "peak_rss_gib": 1.0, "published_hash": None,
                                          "gate_held": result["held"]}}])
    assert "peak 1.0 GiB, not published: publish gate kept the last good partition" in line


def test_eases_scoring_rate_counts_the_fitted_items_alone():
    """A capped EASE multiplies only its fitted items' columns: 2 flops a known interaction with a fitted
    item a fitted item (the 100 M night's rate was overstated tenfold by counting the whole catalogue)."""
    train = sp.csr_matrix(np.array([[1, 1, 0, 1, 0, 1], [0, 1, 1, 0, 0, 0], [1, 0, 0, 0, 1, 0]], dtype=np.float32))
    capped = SimpleNamespace(train=train, known=np.array([1, 3]))
    assert ease_scoring_flops(capped, 2) == 2 * 3 * 2  # user 0 took items 1 and 3, user 1 item 1
    assert ease_scoring_flops(SimpleNamespace(train=train, known=None), 3) == 2 * 8 * 6
