"""The quality benchmark in its reduced CI form: ML-100k, protocol W and protocol C with one seed."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from benchmarks.quality import MSR_ML100K, main

pytestmark = pytest.mark.ml100k


def test_reduced_quality_benchmark_writes_every_number(ml100k_dir, tmp_path, capsys):
    out = tmp_path / "quality.json"
    args = Namespace(dataset="ml-100k", path=str(ml100k_dir), out=str(out), seeds=1, models=None, epochs=10)
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert set(result["w"]["results"]) == {"popularity", "segment_popularity", "item_knn", "ease", "two_tower",
                                           "hybrid"}
    assert result["w"]["reference"] == MSR_ML100K
    ks = {row["k_shot"] for row in result["c"]["table"]}
    assert ks == {0, 1, 3, 5, 10, 20}
    assert {"versions", "wall_seconds", "settings"} <= result.keys()
    # A sanity floor, not the target: real CF on ML-100k is far above popularity on the warm protocol.
    assert result["w"]["results"]["ease"]["ndcg"] > result["w"]["results"]["popularity"]["ndcg"] + 0.1
    printed = capsys.readouterr().out
    assert "Protocol W" in printed and "Protocol C" in printed and "MSR BiVAE" in printed
