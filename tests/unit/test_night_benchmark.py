"""The night benchmark's night after: the next day's data is the same users and items, byte for byte (so the
ingest's ledger skips their files, as on a scheduled night), with interactions inside that one day only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from benchmarks.night import first_night_data, format_table, next_day_data
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
