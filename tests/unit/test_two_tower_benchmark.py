"""The two-tower profile benchmark runs end to end on a tiny shape and reports every variant it was asked for."""

from __future__ import annotations

import json

from benchmarks import two_tower


def test_the_profile_reports_examples_per_second_for_each_variant(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    out = tmp_path / "two_tower.json"
    variants = ["product", "input_only"]
    assert two_tower.main(["--users", "300", "--items", "80", "--interactions", "6000", "--examples", "4096",
                           "--variants", *variants, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result["variants"]) == variants
    for name in variants:
        assert result["variants"][name]["examples_per_second"] > 0, name
    assert result["variants"]["product"]["fit_seconds"] > 0
    table = capsys.readouterr().out
    assert "| product |" in table and "| input_only |" in table and "1.00x" in table
