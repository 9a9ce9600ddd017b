"""The retrieval benchmark's judgement of candidate sets, on a small planted set: candidates that hold the whole
catalogue change nothing, fewer never hold more of the lists than more, and a union holds what its members do."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.quality import load_synthetic
from benchmarks.retrieval import SOURCES, UNIONS, judge, stage_one_seconds
from models.serving import SCORE_BLOCK_CELLS
from recsys.settings import Settings
from tasks.generate import GeneratorConfig


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> dict:
    frames = load_synthetic(config=GeneratorConfig(n_users=300, n_items=120, n_interactions=9000, seed=7))
    settings = Settings(home=tmp_path_factory.mktemp("retrieval"), epochs=2)
    return judge(frames, "synthetic", settings, cut=0.5, n=10, depths=(3, 120), k_shots=(1,), log=lambda _: None)


def test_candidates_that_hold_the_catalogue_change_no_list(judged):
    assert judged["items"] <= 120 and {"warm", "k=1"} <= set(judged["slices"])
    for part in judged["slices"].values():
        assert part["users"] > 0
        for by_depth in part["sets"].values():
            whole = by_depth["120"]
            assert whole["list_recall"] == 1.0 and whole["same_lists"] == 1.0
            assert whole["ndcg"] == part["full_ndcg"]


def test_fewer_candidates_hold_at_most_what_more_do_and_unions_what_their_members_do(judged):
    for part in judged["slices"].values():
        sets = part["sets"]
        for by_depth in sets.values():
            assert 0.0 <= by_depth["3"]["list_recall"] <= by_depth["120"]["list_recall"]
            assert by_depth["3"]["candidates"] <= by_depth["120"]["candidates"]
            assert by_depth["3"]["candidates"] <= by_depth["3"]["block_columns"] <= judged["items"]
        for source in SOURCES:  # three a source, plus at most the 10 best of the items with little evidence
            assert sets[source]["3"]["candidates"] <= 3 + 10
        for union, members in UNIONS.items():
            assert sets[union]["3"]["list_recall"] >= max(sets[m]["3"]["list_recall"] for m in members)
            assert sets[union]["3"]["candidates"] <= 3 * len(members) + 10
    warm = judged["slices"]["warm"]["sets"]
    assert warm["als"]["3"]["list_recall"] < 1.0  # three candidates cannot hold a list of ten


def test_the_products_two_stage_serving_is_judged_against_its_full_ranking(judged):
    """The served comparison runs the product's own path: on a catalogue this small a block's candidates are
    nearly all of it, so the published lists, rows and reasons must be the full ranking's."""
    for name, served in judged["served"].items():
        assert served["users"] == judged["slices"][name]["users"] and served["depth"] == 50
        assert served["same_lists"] == 1.0 and served["rows_kept"] == 1.0 and served["same_reasons"] == 1.0
        assert abs(served["ndcg_two_stage"] - served["ndcg_full"]) < 1e-4
        assert served["ndcg_full"] == pytest.approx(judged["slices"][name]["full_ndcg"], abs=1e-4)
        assert served["seconds_full"] > 0 and served["seconds_two_stage"] > 0


def test_stage_one_is_timed_in_the_products_blocks():
    rows = stage_one_seconds(items=2000, depths=(5, 50), users=64)
    assert [r["depth"] for r in rows] == [5, 50]
    assert all(r["block_users"] == SCORE_BLOCK_CELLS // 2000 for r in rows)
    assert all(0 < r[f"sgemm_s_per_million_users_{how}"] <= r[f"s_per_million_users_{how}"]
               for r in rows for how in ("fresh", "reused"))


def test_a_benchmark_run_writes_its_json(tmp_path: Path, monkeypatch, capsys):
    import benchmarks.retrieval as retrieval

    monkeypatch.setattr(retrieval, "judge", lambda frames, label, *args, **kwargs: {
        "dataset": label, "cut": 0.8, "items": 1, "train": 1, "slices": {}, "seconds": 0.0})
    monkeypatch.setattr(retrieval, "load_synthetic", lambda *args, **kwargs: None)
    out = tmp_path / "r.json"
    assert retrieval.main(["--datasets", "synthetic", "--stage-one-items", "1000", "--depths", "5",
                           "--out", str(out)]) == 0
    assert out.exists() and "stage one at 1,000 items" in capsys.readouterr().out
