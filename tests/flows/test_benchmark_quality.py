"""The quality benchmark in its reduced CI form: ML-100k, protocol W and protocol C with one seed."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from benchmarks.quality import MSR_ML100K, main

pytestmark = pytest.mark.ml100k


def test_reduced_quality_benchmark_writes_every_number(ml100k_dir, tmp_path, capsys):
    out = tmp_path / "quality.json"
    args = Namespace(dataset="ml-100k", path=str(ml100k_dir), out=str(out), seeds=1, models=None, epochs=10,
                     peers=False)
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert set(result["w"]["results"]) == {"popularity", "segment_popularity", "item_knn", "ease", "two_tower",
                                           "hybrid"}
    assert result["w"]["reference"] == MSR_ML100K
    ks = {row["k_shot"] for row in result["c"]["table"]}
    assert ks == {0, 1, 3, 5, 10, 20}
    # The ablation: the hybrid against itself without the deep model, paired, at every k.
    ablation = [r for r in result["c"]["table"] if r["metric"] == "ndcg_lift_over_hybrid_without_two_tower"]
    assert {r["k_shot"] for r in ablation} == ks and all(r["model"] == "hybrid" for r in ablation)
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in ablation)
    assert {"versions", "wall_seconds", "settings"} <= result.keys()
    # A sanity floor, not the target: real CF on ML-100k is far above popularity on the warm protocol.
    assert result["w"]["results"]["ease"]["ndcg"] > result["w"]["results"]["popularity"]["ndcg"] + 0.1
    warm = result["w"]["hybrid_tuning"]["warm"]  # tuned on a random holdout, like protocol W's test
    assert warm["users"] > 500 and warm["chosen"] in ("blend", f"{warm['best_component']} alone")
    printed = capsys.readouterr().out
    assert "Protocol W" in printed and "Protocol C" in printed and "MSR BiVAE" in printed


def test_peers_that_are_not_installed_are_named_with_the_command_that_installs_them(monkeypatch):
    from benchmarks import peers
    from benchmarks.quality import run
    from recsys.errors import ConfigError

    monkeypatch.setattr(peers, "missing", lambda: ["implicit"])
    with pytest.raises(ConfigError, match=r"--peers needs implicit: .*pip install '\.\[peers\]'"):
        run("synthetic", None, 1, None, 1, peers=True)
