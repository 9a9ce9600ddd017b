"""The gate on real batches: what is stopped, what is rejected row by row, what goes through."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from recsys import db
from recsys.errors import ConfigError, ValidationFailedError
from recsys.settings import Settings
from tasks import ingest, validate
from tasks.sources import movielens_specs, synthetic_specs

NOW = datetime(2026, 11, 22, tzinfo=UTC)
GOOD_TS = 1_700_000_000  # 2023-11-14
FUTURE_TS = 1_900_000_000  # 2030


def landing(tmp_path, rows: list[tuple[int, int, float, int]]):
    """A synthetic-layout folder: 20 users, 30 items, and the given interactions."""
    folder = tmp_path / "landing"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.csv").write_text("user_id,age,gender,occupation,zip\n" + "".join(
        f"{u},{20 + u},{'MF'[u % 2]},writer,1000{u % 10}\n" for u in range(1, 21)))
    (folder / "items.csv").write_text("item_id,title,release_date,genres\n" + "".join(
        f"{i},Item {i},2000-01-01,Drama\n" for i in range(1, 31)))
    (folder / "interactions.csv").write_text("user_id,item_id,rating,timestamp\n" + "".join(
        f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    return synthetic_specs(folder)


def good_rows(n=100):
    return [(1 + k % 20, 1 + (k * 7) % 30, 1.0 + k % 5, GOOD_TS + k) for k in range(n)]


def gate(con, settings, specs, run_id="r1", **kwargs):
    report = ingest.stage_batch(con, settings, specs, run_id, "synthetic")
    result = validate.validate_batch(con, settings, run_id, now=NOW, **kwargs)
    ingest.promote_batch(con, run_id)
    return ingest.batch_report(con, report), result


def test_movielens_passes_every_critical_expectation(con, settings, ml100k_dir):
    report, result = gate(con, settings, movielens_specs(ml100k_dir))
    assert result.passed and result.critical_failures == []
    assert result.rows_rejected == 0
    assert con.scalar("select count(*) from interactions") == 100_000
    stored = con.scalar("select count(*) from validation_results where run_id = 'r1'")
    assert stored == len(result.outcomes) == 16 + 6 + 6
    assert result.docs_path is None and not validate.docs_index(settings).exists()  # Data Docs only when asked


def test_data_docs_are_built_when_asked_for(tmp_path, ml100k_dir):
    settings = Settings(home=tmp_path / "home", data_docs=True)
    settings.ensure_dirs()
    with db.warehouse(settings) as con:
        _, result = gate(con, settings, movielens_specs(ml100k_dir))
    assert result.docs_path and validate.docs_index(settings).exists()


@pytest.mark.parametrize(("mutate", "expectation"), [
    (lambda u, i, r, t: (u, i, 9.0, t), "expect_column_values_to_be_between(rating)"),
    (lambda u, i, r, t: (u, i, r, FUTURE_TS), "expect_column_values_to_be_between(ts_epoch)"),
    (lambda u, i, r, t: (u + 1000, i, r, t), "expect_column_values_to_be_in_set(user_known)"),
])
def test_mostly_bad_batch_is_stopped_and_never_reaches_interactions(con, settings, tmp_path, mutate, expectation):
    rows = [mutate(*row) if k % 10 < 6 else row for k, row in enumerate(good_rows())]
    specs = landing(tmp_path, rows)
    ingest.stage_batch(con, settings, specs, "bad", "synthetic")
    with pytest.raises(ValidationFailedError) as info:
        validate.validate_batch(con, settings, "bad", now=NOW)
    message = str(info.value)
    assert "suite 'interactions'" in message and expectation in message
    assert "60 of 100 rows unexpected" in message and "failing row: file" in message
    assert "held in staging" in message
    assert con.scalar("select count(*) from interactions") == 0
    ledger = con.execute("select status, rows_accepted, rows_held from ingest_ledger "
                         "where kind = 'interactions'").fetchall()
    assert ledger == [("held", 0, 100)]
    assert con.scalar("select count(*) from staging_interactions where run_id = 'bad'") == 100


def test_a_handful_of_bad_rows_are_rejected_and_the_rest_loads(con, settings, tmp_path):
    rows = good_rows()
    rows[3] = (1, 2, 9.0, GOOD_TS)  # rating out of scale
    rows[4] = (2, 3, 3.0, FUTURE_TS)  # in the future
    rows[5] = (999, 4, 3.0, GOOD_TS)  # unknown user
    report, result = gate(con, settings, landing(tmp_path, rows))
    assert result.passed
    assert con.scalar("select count(*) from interactions") == 97
    rejects = con.execute("select line_number, reason from rejects where stage = 'validation' order by 1").fetchall()
    assert [line for line, _ in rejects] == [5, 6, 7]
    assert "rating=9.0" in rejects[0][1] and "ts_epoch" in rejects[1][1] and "user_known" in rejects[2][1]
    inter = next(f for f in report.files if f.kind == "interactions")
    assert (inter.rows_read, inter.rows_accepted, inter.rows_rejected) == (100, 97, 3)
    assert con.scalar("select count(*) from ingest_ledger where rows_read <> "
                          "rows_accepted + rows_rejected + rows_duplicate + rows_held") == 0


def test_held_batch_passes_after_threshold_change(con, settings, tmp_path):
    rows = [(u, i, 7.0, t) for u, i, r, t in good_rows()]
    ingest.stage_batch(con, settings, landing(tmp_path, rows), "held", "synthetic")
    assert not validate.validate_batch(con, settings, "held", now=NOW, raise_on_failure=False).passed
    relaxed = Settings(home=settings.home, rating_max=10, mean_rating_max=8)
    assert validate.validate_batch(con, relaxed, "held", now=NOW).passed
    ingest.promote_batch(con, "held")
    assert con.scalar("select count(*) from interactions") == 100


def test_volume_is_a_warning_unless_configured_critical(con, settings, tmp_path):
    gate(con, settings, landing(tmp_path, good_rows(100)))
    small = [(u, i, r, t + 10_000) for u, i, r, t in good_rows(5)]
    specs = landing(tmp_path / "day2", small)
    ingest.stage_batch(con, settings, specs, "r2", "synthetic")
    result = validate.validate_batch(con, settings, "r2", now=NOW)
    assert result.passed
    assert [o.label for o in result.warnings] == ["expect_table_row_count_to_be_between"]
    strict = Settings(home=settings.home, volume_critical=True)
    with pytest.raises(ValidationFailedError, match="expect_table_row_count_to_be_between"):
        validate.validate_batch(con, strict, "r2", now=NOW)


def _judged(tmp_path, rows, name, **kwargs):
    settings = Settings(home=tmp_path / name)
    settings.ensure_dirs()
    with db.warehouse(settings) as con:
        ingest.stage_batch(con, settings, landing(tmp_path / f"{name}-landing", rows), "r1", "synthetic")
        result = validate.validate_batch(con, settings, "r1", now=NOW, raise_on_failure=False, **kwargs)
        rejects = con.execute("select file_id, line_number, reason from rejects order by 1, 2").fetchall()
    return result, rejects


@pytest.mark.parametrize("bad", [
    # 4 % of the ratings out of scale, all in one chunk (a quarter of it): each chunk alone would stop the batch
    {k: (9.0, GOOD_TS) for k in range(2100, 2380)},
    # 8 %, in one chunk: the batch is stopped, though three chunks of four are clean
    {k: (9.0, GOOD_TS) for k in range(4200, 4760)},
    # a few of each kind, spread over every chunk (rejected row by row), and timestamps in the future
    {**{k: (9.0, GOOD_TS) for k in range(5, 7000, 997)}, **{k: (3.0, FUTURE_TS) for k in range(11, 7000, 1409)}},
])
def test_a_batch_judged_in_chunks_gets_the_whole_batchs_verdicts(tmp_path, bad):
    """Four chunks of 2,048 rows against one frame: every outcome (success, counts, observed values, failing
    rows in order) and every rejected row are the same."""
    rows = [(u, i, *bad.get(k, (r, t))) for k, (u, i, r, t) in enumerate(good_rows(7000))]
    whole, whole_rejects = _judged(tmp_path, rows, "whole")
    chunked, chunked_rejects = _judged(tmp_path, rows, "chunked", chunk_rows=2048)
    assert len(whole.outcomes) == len(chunked.outcomes) == 16 + 6 + 6
    for a, b in zip(whole.outcomes, chunked.outcomes, strict=True):
        assert (a.label, a.success, a.unexpected_count, a.element_count, a.missing_count, a.rows_rejected) == (
            b.label, b.success, b.unexpected_count, b.element_count, b.missing_count, b.rows_rejected), a.label
        assert a.failing_rows == b.failing_rows, a.label
        if isinstance(a.observed_value, float):
            assert a.observed_value == pytest.approx(b.observed_value, rel=1e-12), a.label
        else:
            assert a.observed_value == b.observed_value, a.label
    assert whole.passed == chunked.passed and whole_rejects == chunked_rejects
    assert whole.passed == (len(bad) < 300)


def test_an_expectation_that_cannot_be_judged_in_chunks_is_refused_at_load(tmp_path):
    settings = Settings(home=tmp_path / "home", expectations_dir=tmp_path / "suites")
    settings.expectations_dir.mkdir()
    suite = json.loads((Settings().expectations_dir / "interactions.json").read_text())
    suite["expectations"].append({"type": "expect_compound_columns_to_be_unique",
                                  "kwargs": {"column_list": ["user_id", "item_id"]}})
    (settings.expectations_dir / "interactions.json").write_text(json.dumps(suite))
    with pytest.raises(ConfigError, match="expect_compound_columns_to_be_unique cannot be judged chunk by chunk"):
        validate.load_suite(settings, "interactions")


def test_a_key_whose_first_copy_the_gate_rejects_is_loaded_from_its_next_copy(con, settings, tmp_path):
    """The batch's duplicates are found once, by the gate, and read by the promotion: where the gate moves a
    key's first copy to rejects (a rating out of scale), the key's next copy is no duplicate and is loaded, and
    a key copied twice still loads once."""
    key = (1, 1, GOOD_TS + 5_000)
    rows = [(key[0], key[1], 9.0, key[2]), *good_rows(100), (key[0], key[1], 3.0, key[2]),
            (2, 2, 4.0, GOOD_TS + 6_000), (2, 2, 4.0, GOOD_TS + 6_000)]
    specs = landing(tmp_path, rows)
    report = ingest.stage_batch(con, settings, specs, "r1", "synthetic")
    result = validate.gate_and_promote(con, settings, "r1", {spec.kind for spec in specs})
    assert result.passed and result.duplicates_found and result.rows_rejected == 1
    loaded = con.execute("select rating from interactions where user_id = 1 and item_id = 1 and ts = "
                         "to_timestamp($ts)::timestamp", {"ts": key[2]}).fetchall()
    assert loaded == [(3.0,)]
    assert con.scalar("select count(*) from interactions") == 102
    (file,) = [f for f in ingest.batch_report(con, report).files if f.kind == "interactions"]
    assert (file.rows_read, file.rows_accepted, file.rows_rejected, file.rows_duplicate) == (104, 102, 1, 1)
