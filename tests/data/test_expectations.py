"""Every expectation in expectations/*.json, against data that passes it and data that fails it."""

from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from recsys.settings import PROJECT_ROOT, Settings
from tasks.validate import GxRunner, load_suite

SUITES = ("interactions", "users", "items", "recommendations")
N = 40
NOW = 1_790_000_000.0  # 2026-09-21


def key(expectation: dict) -> str:
    meta = expectation.get("meta", {})
    column = expectation["kwargs"].get("column") or ",".join(expectation["kwargs"].get("column_list", []))
    return f"{expectation['type']}:{column}:{meta.get('severity_setting', meta.get('severity'))}"


def suite_json(name: str) -> dict:
    return json.loads((PROJECT_ROOT / "expectations" / f"{name}.json").read_text())


PARAMS = {
    "rating_min": 1.0, "rating_max": 5.0, "ts_floor": 631152000.0, "ts_now": NOW, "year_now": 2027.0,
    "duplicate_share_max": 0.05, "volume_min": 1, "volume_max": None, "mean_rating_min": 2.5,
    "mean_rating_max": 4.5, "new_user_share_max": 0.5, "top_n": 5, "list_lengths": [5],
}


def good(name: str) -> pd.DataFrame:
    idx = np.arange(N)
    base = {"file_id": np.ones(N, dtype=np.int64), "line_number": idx + 1}
    if name == "interactions":
        return pd.DataFrame({**base, "user_id": idx % 7 + 1, "item_id": idx % 11 + 1,
                             "rating": (idx % 3 + 3).astype(float), "ts_epoch": 1.7e9 + idx * 60.0,
                             "user_known": True, "item_known": True, "is_duplicate": 0, "is_new_user": 0})
    if name == "users":
        return pd.DataFrame({**base, "user_id": idx + 1, "age": (idx % 50 + 18).astype(float),
                             "gender": np.where(idx % 2, "M", "F"), "occupation": "writer", "zip": "12345"})
    if name == "items":
        return pd.DataFrame({**base, "item_id": idx + 1, "title": [f"t{i}" for i in idx],
                             "release_year": 1990.0 + idx % 30, "n_genres": 1 + idx % 3})
    users = np.repeat(np.arange(8) + 1, 5)
    return pd.DataFrame({"user_id": users, "item_id": np.tile(np.arange(5) + 1, 8), "rank": np.tile(np.arange(1, 6), 8),
                         "score": 1.0 - np.tile(np.arange(5), 8) / 10, "model": "hybrid", "strategy": "warm",
                         "reason_kind": "neighbour", "reason": "because you rated Star Wars (1977) [item 50]",
                         "list_length": 5, "is_seen": False, "item_known": True})


def some(df: pd.DataFrame, column: str, value) -> pd.DataFrame:
    df = df.copy()
    df[column] = df[column].astype(object) if value is None else df[column]
    df.loc[df.index[:10], column] = value
    return df


def with_params(**kw):
    return lambda df: (df, {**PARAMS, **kw})


# One mutation per expectation: data that must fail exactly that expectation.
FAILS = {
    "interactions": {
        "expect_table_columns_to_match_set::critical": lambda d: d.assign(extra=1),
        "expect_column_values_to_be_of_type:user_id:critical": lambda d: d.assign(user_id=d.user_id.astype(float)),
        "expect_column_values_to_be_of_type:item_id:critical": lambda d: d.assign(item_id=d.item_id.astype(float)),
        "expect_column_values_to_be_of_type:ts_epoch:critical":
            lambda d: d.assign(ts_epoch=d.ts_epoch.astype(np.int64)),
        "expect_column_values_to_not_be_null:user_id:critical": lambda d: some(d, "user_id", None),
        "expect_column_values_to_not_be_null:item_id:critical": lambda d: some(d, "item_id", None),
        "expect_column_values_to_not_be_null:ts_epoch:critical": lambda d: some(d, "ts_epoch", None),
        "expect_table_row_count_to_be_between::critical": lambda d: d.iloc[:0],
        "expect_column_values_to_be_between:rating:critical": lambda d: some(d, "rating", 9.0),
        "expect_column_values_to_be_between:ts_epoch:critical": lambda d: some(d, "ts_epoch", NOW + 86400 * 30),
        "expect_column_values_to_be_in_set:user_known:critical": lambda d: some(d, "user_known", False),
        "expect_column_values_to_be_in_set:item_known:critical": lambda d: some(d, "item_known", False),
        "expect_column_mean_to_be_between:is_duplicate:warning": lambda d: some(d, "is_duplicate", 1),
        "expect_table_row_count_to_be_between::volume_critical": with_params(volume_min=100, volume_max=200),
        "expect_column_mean_to_be_between:rating:drift_critical": lambda d: d.assign(rating=1.0),
        "expect_column_mean_to_be_between:is_new_user:drift_critical": lambda d: d.assign(is_new_user=1),
    },
    "users": {
        "expect_table_columns_to_match_set::critical": lambda d: d.drop(columns=["zip"]),
        "expect_column_values_to_be_of_type:user_id:critical": lambda d: d.assign(user_id=d.user_id.astype(str)),
        "expect_column_values_to_not_be_null:user_id:critical": lambda d: some(d, "user_id", None),
        "expect_column_values_to_be_between:age:critical": lambda d: some(d, "age", 300.0),
        "expect_column_values_to_be_in_set:gender:warning": lambda d: some(d, "gender", "?"),
        "expect_column_values_to_not_be_null:occupation:warning": lambda d: d.assign(occupation=None),
    },
    "items": {
        "expect_table_columns_to_match_set::critical": lambda d: d.drop(columns=["title"]),
        "expect_column_values_to_be_of_type:item_id:critical": lambda d: d.assign(item_id=d.item_id.astype(str)),
        "expect_column_values_to_not_be_null:item_id:critical": lambda d: some(d, "item_id", None),
        "expect_column_values_to_be_between:release_year:critical": lambda d: some(d, "release_year", 2999.0),
        "expect_column_values_to_not_be_null:title:warning": lambda d: some(d, "title", None),
        "expect_column_values_to_be_between:n_genres:warning": lambda d: d.assign(n_genres=0),
    },
    "recommendations": {
        "expect_table_columns_to_match_set::critical": lambda d: d.drop(columns=["strategy"]),
        "expect_column_values_to_not_be_null:user_id:critical": lambda d: some(d, "user_id", None),
        "expect_column_values_to_not_be_null:score:critical": lambda d: some(d, "score", None),
        "expect_column_values_to_be_between:rank:critical": lambda d: some(d, "rank", 6),
        "expect_column_values_to_be_in_set:list_length:critical": lambda d: some(d, "list_length", 4),
        "expect_compound_columns_to_be_unique:user_id,rank:critical": lambda d: some(d, "rank", 1),
        "expect_compound_columns_to_be_unique:user_id,item_id:critical": lambda d: some(d, "item_id", 1),
        "expect_column_values_to_be_in_set:is_seen:critical": lambda d: some(d, "is_seen", True),
        "expect_column_values_to_be_in_set:item_known:critical": lambda d: some(d, "item_known", False),
        "expect_column_values_to_be_in_set:strategy:critical": lambda d: some(d, "strategy", "magic"),
        "expect_column_values_to_be_in_set:reason_kind:critical": lambda d: some(d, "reason_kind", "because"),
        "expect_column_values_to_not_be_null:reason:critical": lambda d: some(d, "reason", None),
        "expect_column_value_lengths_to_be_between:reason:critical": lambda d: some(d, "reason", ""),
    },
}
INDEX = {"recommendations": ["user_id", "rank"]}
CASES = [(suite, k) for suite in SUITES for k in FAILS[suite]]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return GxRunner(Settings(home=tmp_path_factory.mktemp("gx")))


def outcome_for(runner, suite, expectation_key, frame, params):
    results = runner.run(suite, frame, params, "test", INDEX.get(suite, ["file_id", "line_number"]))
    expected = next(e for e in suite_json(suite)["expectations"] if key(e) == expectation_key)
    for r in results:
        c = r.expectation_config
        meta = dict(c.meta or {})
        if (c.type == expected["type"] and key({"type": c.type, "kwargs": dict(c.kwargs), "meta": meta})
                == expectation_key):
            return r
    raise AssertionError(f"no result for {expectation_key}")


@pytest.mark.parametrize("suite", SUITES)
def test_suite_loads_every_expectation_and_each_has_a_case(suite):
    data = suite_json(suite)
    assert len(load_suite(Settings(), suite).expectations) == len(data["expectations"])
    keys = [key(e) for e in data["expectations"]]
    assert len(set(keys)) == len(keys), "expectation keys must be unique for these tests"
    assert sorted(keys) == sorted(FAILS[suite])
    assert all(e["meta"]["severity"] in ("critical", "warning") for e in data["expectations"])


@pytest.mark.parametrize(("suite", "expectation_key"), CASES)
def test_expectation_passes_good_data(runner, suite, expectation_key):
    assert outcome_for(runner, suite, expectation_key, good(suite), PARAMS).success


@pytest.mark.parametrize(("suite", "expectation_key"), CASES)
def test_expectation_fails_bad_data(runner, suite, expectation_key):
    mutated = FAILS[suite][expectation_key](good(suite))
    frame, params = mutated if isinstance(mutated, tuple) else (mutated, PARAMS)
    assert not outcome_for(runner, suite, expectation_key, frame, params).success


def test_invalid_expectation_is_caught_not_dropped(tmp_path):
    from recsys.errors import ConfigError

    (tmp_path / "broken.json").write_text(json.dumps({"name": "broken", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a"}},
        {"type": "expect_column_values_to_be_betwen", "kwargs": {"column": "a", "min_value": 1}},
    ]}))
    with pytest.raises(ConfigError, match="holds 2 expectations but Great Expectations loaded 1"):
        load_suite(Settings(expectations_dir=tmp_path), "broken")
    (tmp_path / "bad_kwargs.json").write_text(json.dumps({"name": "bad_kwargs", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "a", "min_value": "x", "mostly": 7}},
    ]}))
    with pytest.raises(ConfigError, match="bad_kwargs.json: an expectation is invalid"):
        load_suite(Settings(expectations_dir=tmp_path), "bad_kwargs")


class _NotIterable(np.ndarray):
    """A numeric array that fails when read value by value in Python."""

    def __iter__(self):
        raise AssertionError("a numeric column was scanned value by value")


def test_means_skip_the_decimal_scan_of_numeric_columns_and_still_read_decimals(runner):
    from great_expectations import util  # GX is heavy to import: the module's other tests reach it through GxRunner

    # A numeric column: no Python loop over its values (GX's own test reads every one: ~3 s of a 10 M ingest).
    numeric = np.arange(1_000, dtype=np.float64).view(_NotIterable)
    assert util.does_ndarray_contain_decimal_dtype(numeric) is False
    assert util.does_ndarray_contain_decimal_dtype(np.zeros(3, dtype=np.int32)) is False
    # An object column is still tested as GX does, Decimals found and averaged as numbers.
    assert util.does_ndarray_contain_decimal_dtype(np.array([1.0, Decimal("2.5")], dtype=object)) is True
    assert util.does_ndarray_contain_decimal_dtype(np.array(["a", None], dtype=object)) is False
    expectation = "expect_column_mean_to_be_between:rating:drift_critical"
    for value, passes in (("3.5", True), ("4.75", False)):  # mean_rating_max is 4.5
        frame = good("interactions").assign(rating=pd.Series([Decimal(value)] * N, dtype=object))
        result = outcome_for(runner, "interactions", expectation, frame, PARAMS)
        assert result.result["observed_value"] == pytest.approx(float(value))
        assert result.success is passes
