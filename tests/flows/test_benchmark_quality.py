"""The quality benchmark in its reduced CI form: ML-100k, protocols W and C with one seed; protocol I (new
items) with one seed and the content models."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from benchmarks.quality import ALS_GRID, MSR_ML100K, main
from models.als import ALS

pytestmark = [pytest.mark.ml100k, pytest.mark.slow]


def test_reduced_quality_benchmark_writes_every_number(ml100k_dir, tmp_path, capsys):
    out = tmp_path / "quality.json"
    # One two-tower epoch: what is checked here is that every number is written and sane, not how well the
    # deep model trains (`recsys benchmark quality` measures that, at its full budget).
    args = Namespace(dataset="ml-100k", path=str(ml100k_dir), out=str(out), seeds=1, models=None, epochs=1,
                     peers=False, protocols=["w", "t", "c"])
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert set(result["w"]["results"]) == {"popularity", "segment_popularity", "item_knn", "ease", "als",
                                           "content_knn", "two_tower", "hybrid"}
    assert result["w"]["reference"] == MSR_ML100K
    ks = {row["k_shot"] for row in result["c"]["table"]}
    assert ks == {0, 1, 3, 5, 10, 20}
    # The ablation: the hybrid against itself without the deep model, paired, at every k.
    ablation = [r for r in result["c"]["table"] if r["metric"] == "ndcg_lift_over_hybrid_without_two_tower"]
    assert {r["k_shot"] for r in ablation} == ks and all(r["model"] == "hybrid" for r in ablation)
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in ablation)
    # Catalogue coverage of the cold lists, per model and k: popularity lists the same 10 items to everyone.
    coverage = {(r["model"], r["k_shot"]): r["value"] for r in result["c"]["table"] if r["metric"] == "coverage"}
    n_items = 1682
    assert coverage[("popularity", 0)] == pytest.approx(10 / n_items, abs=0.5 / n_items)
    assert coverage[("ease", 20)] > coverage[("popularity", 20)]
    assert {"versions", "wall_seconds", "settings"} <= result.keys()
    # A sanity floor, not the target: real CF on ML-100k is far above popularity on the warm protocol.
    assert result["w"]["results"]["ease"]["ndcg"] > result["w"]["results"]["popularity"]["ndcg"] + 0.1
    warm = result["w"]["hybrid_tuning"]["warm"]  # tuned on a random holdout, like protocol W's test
    assert warm["users"] > 500 and warm["chosen"] in ("blend", f"{warm['best_component']} alone")
    # Protocol T: one cut (the middle one for one seed), warm and cold slices, every model paired with the hybrid.
    assert result["t"]["cuts"] == [0.8]
    t_rows = result["t"]["table"]
    assert {(r["model"], r["k_shot"]) for r in t_rows if r["metric"] == "ndcg"} >= {
        ("hybrid", None), ("ease", None), ("als", None), ("als_tuned", None), ("hybrid", 0), ("hybrid", 20)}
    paired = {r["metric"] for r in t_rows if r["model"] == "hybrid" and r["metric"].startswith("ndcg_lift_over_")}
    assert {"ndcg_lift_over_ease", "ndcg_lift_over_two_tower", "ndcg_lift_over_segment_popularity",
            "ndcg_lift_over_als_tuned"} <= paired
    # Tuned in the night's shape (a window cut in time); ALS's own hyper-parameters chosen on the same users.
    (tuned,) = result["t"]["tuned"]
    assert tuned["warm"]["users"] > 50 and tuned["als_tuned"] in [{**ALS.default_params(), **p} for p in ALS_GRID]
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in t_rows if r["metric"] in paired)
    # Films first rated after the cut, in the known users' next interactions: every model and their baselines.
    new_items = {(r["model"], r["metric"]) for r in result["t"]["new_items"]}
    assert {("hybrid", "ndcg"), ("two_tower", "ndcg"), ("activity", "ndcg"), ("hybrid", "item_ndcg"),
            ("activity", "item_ndcg"), ("hybrid", "ndcg_lift_over_two_tower")} <= new_items
    # One cut: each pair is counted once (the hybrid's comparisons name the baselines too).
    assert all(r["seeds_ci_above_zero"] + r["seeds_ci_below_zero"] <= 1 for r in result["t"]["new_items"])
    printed = capsys.readouterr().out
    assert "Protocol W" in printed and "Protocol C" in printed and "MSR BiVAE" in printed
    assert "Protocol T (the night's shape" in printed and "hybrid over ease" in printed
    assert "items nobody had taken before the cut" in printed
    assert "catalogue coverage" in printed


def test_new_items_on_movielens_reach_their_audience_beyond_the_strongest_baseline(ml100k_dir):
    """Protocol I, one seed, with the pretrained encoder: the content neighbourhood ranks each new item's real
    audience above random exposure and genre popularity, and the audience model (content affinity weighed
    with activity) above the strongest baseline, showing each new item to the most active users (seed 0:
    +24 % [+18, +30]); each text reader is paired with itself without the encoder."""
    from benchmarks.quality import format_item_cold, load_ml100k, protocol_i
    from recsys.settings import Settings
    from tasks.item_text import text_vectors

    frames = load_ml100k(ml100k_dir)
    frames.text_vectors = text_vectors(frames.items, Settings(), log=lambda *_: None)
    result = protocol_i(frames, ["popularity", "content_knn"], Settings(bootstrap_samples=300), [0],
                        log=lambda *_: None)
    cells = {(r["model"], r["metric"]): r for r in result["table"] if r["k"] in (10, 100)}
    assert {"random", "genre_popularity", "genre_year", "activity", "content_knn", "popularity",
            "new_item_audience", "content_knn_without_text", "new_item_audience_without_text"} == {m for m, _ in cells}
    for reference in ("random", "genre_popularity"):
        lift = cells[("content_knn", f"item_ndcg_lift_over_{reference}")]
        assert lift["ci_low"] > 0, (reference, lift)
    assert cells[("new_item_audience", "item_ndcg_lift_over_activity")]["ci_low"] > 0
    assert cells[("activity", "item_ndcg")]["value"] > cells[("content_knn", "item_ndcg")]["value"]  # the honest bar
    encoder = cells[("new_item_audience", "item_ndcg_lift_over_new_item_audience_without_text")]
    assert encoder["ci_low"] <= encoder["value"] <= encoder["ci_high"]
    assert cells[("content_knn", "item_ndcg_lift_over_content_knn_without_text")]["ci_low"] > 0  # 0.251 -> 0.290
    assert cells[("popularity", "ndcg")]["value"] == 0  # no fake score for an item nobody has taken
    text = "\n".join(format_item_cold(result))
    assert "Protocol I" in text and "strongest baseline" in text


def test_peers_that_are_not_installed_are_named_with_the_command_that_installs_them(monkeypatch):
    from benchmarks import quality
    from recsys.errors import ConfigError

    monkeypatch.setattr(quality, "missing_peers", lambda: ["rectools-lightfm"])
    with pytest.raises(ConfigError, match=r"--peers needs rectools-lightfm: .*pip install '\.\[peers\]'"):
        quality.run("synthetic", None, 1, None, 1, peers=True)


def test_finer_demographics_do_not_tell_more_about_new_movielens_users(ml100k_dir, capsys):
    """Protocol Z, one seed: occupation and zip region, even shrunk towards gender x age, rank new users'
    items no better than gender x age, and clearly worse when shrunk less (ML-100k, 5 seeds: every finer
    segment's mean below it; alpha 1000 -4.0 % / -4.6 % with the CI below zero in 5/5 seeds); the finer lists
    cover more of the catalogue."""
    from benchmarks.quality import format_zero_shot, load_ml100k, protocol_z, zero_shot_variants
    from recsys.settings import Settings

    result = protocol_z(load_ml100k(ml100k_dir), Settings(bootstrap_samples=300), [0], log=lambda *_: None)
    cells = {(r["model"], r["metric"]): r for r in result["table"]}
    assert {m for m, _ in cells} == set(zero_shot_variants())
    assert all(r["k_shot"] == 0 for r in result["table"])
    finer = [m for m in zero_shot_variants() if m.startswith("+")]
    assert len(finer) == 9
    for model in finer:
        lift = cells[(model, "ndcg_lift_over_gender x age")]
        assert lift["ci_low"] <= lift["value"] <= lift["ci_high"]
        assert lift["ci_low"] < 0, model  # never clearly better
        assert cells[(model, "coverage")]["value"] > cells[("gender x age", "coverage")]["value"]
    for model in ("+occupation a=1000", "+zip_region a=1000"):
        assert cells[(model, "ndcg_lift_over_gender x age")]["ci_high"] < 0, model
    assert cells[("gender x age", "ndcg_lift")]["value"] > 0
    # The product's segment popularity, choosing on held-out training users, keeps gender x age here.
    assert [c["segment"] for c in result["segment_popularity_chose"]] == [["gender", "age_bucket"]]
    assert cells[("segment_popularity", "ndcg")]["value"] == cells[("gender x age", "ndcg")]["value"]
    text = "\n".join(format_zero_shot(result))
    assert "Protocol Z" in text and "+zip_region a=20000" in text
