"""The report answers the question at the top, orders slices by k numerically, and renders as a page."""

from __future__ import annotations

import polars as pl

from tasks.evaluate import METRIC_COLUMNS
from tasks.report import headline_table, headlines, lift_table, write_report

KS = (0, 1, 3, 5, 10, 20)


def metrics() -> pl.DataFrame:
    rows = []
    for model, base in (("popularity", 0.30), ("hybrid", 0.36)):
        rows.append(("r", "warm", None, model, "ndcg", 10, base, base - 0.02, base + 0.02, 100, 0))
        for k in KS:
            rows.append(("r", "cold", k, model, "ndcg", 10, base - k / 100, base - k / 100 - 0.03,
                         base - k / 100 + 0.03, 50, 0))
            for metric in ("coverage", "novelty", "diversity", "popularity_bias"):
                rows.append(("r", "warm", None, model, metric, 10, 0.5, 0.4, 0.6, 100, 0))
        if model == "hybrid":
            for k in KS:
                rows.append(("r", "cold", k, model, "ndcg_lift", 10, 0.20, 0.05 if k else -0.01, 0.30, 50, 0))
    return pl.DataFrame(rows, schema=METRIC_COLUMNS, orient="row").unique(maintain_order=True)


def test_slices_are_ordered_numerically_and_lift_columns_say_k():
    assert headline_table(metrics()).columns == ["model", "warm", *[f"cold k={k}" for k in KS]]
    assert lift_table(metrics()).columns == ["model", *[f"k={k}" for k in KS]]


def test_headline_sentence_with_ci():
    (line,) = headlines(metrics())
    assert line.startswith("For users with no history, hybrid is not distinguishable from popularity: +20.0% "
                           "(95% CI [-1.0%, +30.0%], which includes 0)")
    assert "+20% at k=1" in line and "k=20" in line


def test_report_page_has_headline_and_a_protocol_table(tmp_path):
    paths = write_report(metrics(), tmp_path, "r", {"seed": 42, "k_shots": [0, 1]}, {}, k=10)
    page = paths["html"].read_text()
    assert "For users with no history" in page
    assert "<td>seed</td><td>42</td>" in page and "```" not in page and "<pre>" not in page
    assert page.count("<img src=\"data:image/png;base64,") == 3


def test_the_gate_results_are_in_the_report_itself(tmp_path):
    gate = pl.DataFrame({"run_id": ["ingest-1"] * 2, "suite": ["interactions"] * 2,
                         "expectation": ["expect_column_values_to_be_between", "expect_table_row_count_to_be_between"],
                         "column_name": ["rating", None], "severity": ["critical", "warning"],
                         "success": [False, True], "observed_value": ["3 unexpected", "100"],
                         "unexpected_count": [3, None], "element_count": [100, 100], "rows_rejected": [0, 0],
                         "details": [None, None]})
    page = write_report(metrics(), tmp_path, "r", {"seed": 42}, {}, gate=gate, docs="/x/index.html")["html"].read_text()
    assert "Validation gate (Great Expectations)" in page and "the gate STOPPED the batch" in page
    assert "<td>expect_column_values_to_be_between rating</td><td>critical</td><td>FAIL</td>" in page
    assert "/x/index.html" in page


def item_cold_metrics(encoder_low: float) -> pl.DataFrame:
    rows = [("r", "item_cold", None, m, "item_ndcg", 100, v, v - 0.02, v + 0.02, 80, 0)
            for m, v in (("random", 0.09), ("genre_year", 0.24), ("activity", 0.41), ("new_item_audience", 0.51),
                         ("new_item_audience_without_text", 0.49))]
    rows += [("r", "item_cold", None, "new_item_audience", f"item_ndcg_lift_over_{ref}", 100, v, lo, v + 0.05, 80, 0)
             for ref, v, lo in (("random", 4.6, 4.1), ("genre_year", 1.1, 0.9), ("activity", 0.24, 0.18),
                                ("new_item_audience_without_text", 0.04, encoder_low))]
    return pl.concat([metrics(), pl.DataFrame(rows, schema=METRIC_COLUMNS, orient="row")])


def test_the_report_opens_with_what_the_pretrained_encoder_adds_to_new_items(tmp_path):
    from tasks.report import encoder_sentence, item_cold_table

    (line, _) = encoder_sentence(item_cold_metrics(encoder_low=0.01))
    assert "text encoder (all-MiniLM-L6-v2) adds the audiences +4.0% [+1.0%, +9.0%]" in line
    assert "strongest baseline (activity) by +24.0% [+18.0%, +29.0%]" in line
    assert "adds no measurable gain to the audiences" in encoder_sentence(item_cold_metrics(encoder_low=-0.01))[0]
    assert encoder_sentence(metrics()) == []  # no item-cold fold, no claim
    table = item_cold_table(item_cold_metrics(0.01))
    assert "items->users lift over activity" in table.columns  # the strongest baseline, beside random
    page = write_report(item_cold_metrics(0.01), tmp_path, "r", {"seed": 42}, {}, k=10)["html"].read_text()
    assert page.index("pretrained encoder") < page.index("For users with no history")


def with_user_baselines() -> pl.DataFrame:
    """metrics() plus segment popularity, stronger than popularity for new users, and the paired lifts."""
    rows = [("r", "warm", None, "segment_popularity", "ndcg", 10, 0.31, 0.29, 0.33, 100, 0),
            ("r", "warm", None, "hybrid", "ndcg_lift_over_segment_popularity", 10, 0.16, 0.10, 0.22, 100, 0),
            ("r", "warm", None, "hybrid", "ndcg_lift", 10, 0.20, 0.12, 0.27, 100, 0)]
    for k in KS:
        rows += [("r", "cold", k, "segment_popularity", "ndcg", 10, 0.40 - k / 100, 0.37, 0.43, 50, 0),
                 ("r", "cold", k, "hybrid", "ndcg_lift_over_segment_popularity", 10, -0.10, -0.18, -0.02, 50, 0)]
    return pl.concat([metrics(), pl.DataFrame(rows, schema=METRIC_COLUMNS, orient="row")])


def history(values: list[tuple[str, str, float, str | None]]) -> pl.DataFrame:
    """Earlier nights of the published model: (night, outcome, warm nDCG, reason)."""
    from datetime import date, datetime

    return pl.DataFrame([{"run_id": f"nightly-{night}", "run_date": date.fromisoformat(night),
                          "started_at": datetime.fromisoformat(night), "outcome": outcome, "reason": reason,
                          "model": "hybrid", "split": "warm", "k_shot": None, "metric": "ndcg", "k": 10,
                          "value": value, "ci_low": value - 0.02, "ci_high": value + 0.02}
                         for night, outcome, value, reason in values],
                        schema_overrides={"k_shot": pl.Int32, "k": pl.Int32, "reason": pl.String})


def test_the_report_says_whether_new_items_earned_places_in_the_lists_and_why():
    from tasks.report import placement_sentence

    def tuning(taken, expected, rate):
        return {"hybrid": {"warm": {"new_items": {"items": 40, "taken": taken, "expected": expected, "rate": rate}}}}

    (line, _) = placement_sentence(tuning(12, 30.0, 0.4))
    assert "the items nobody had taken before it (40) were taken 12 times, against 30 that" in line
    assert "probability times 0.40 beats the hit rate" in line
    assert "stay out of the lists" in placement_sentence(tuning(0, 30.0, 0.0))[0]
    floored = placement_sentence(tuning(0, 30.0, 0.0), min_rate=1.0)[0]
    assert "raised to RECSYS_NEW_ITEM_MIN_RATE 1.00" in floored and "probability times 1.00" in floored
    assert placement_sentence({}) == [] and placement_sentence({"hybrid": {"warm": {}}}) == []


def test_the_report_answers_first_for_the_published_model(tmp_path):
    """First screen: the published model, tonight per audience with ± CIs, the strongest baseline of each
    slice and the paired lift over it, and the change since the last *published* night (not a held one)."""
    from tasks.report import answer_first

    nights = history([("2026-11-28", "published", 0.32, None),
                      ("2026-11-29", "rejected", 0.20, "hybrid ndcg@10 on warm: 0.2000 < 0.3200 - 10%")])
    lines = answer_first(with_user_baselines(), "hybrid", nights, night="2026-11-30")
    assert lines[0] == "## Tonight (2026-11-30): hybrid, the published model"
    assert lines[2].startswith("**hybrid**: the two-tower, EASE")
    table = [line for line in lines if line.startswith("| ")]
    assert table[0] == ("| who | metric | tonight (95% CI) | strongest baseline | lift over it | since 2026-11-28 |")
    # warm: segment popularity (0.31) beats popularity (0.30), so the lift is over it, as ±
    assert table[1] == ("| warm users (their next interactions) | nDCG@10 | 0.360 ±0.020 | segment_popularity 0.310 "
                        "| +16% ±6 | +12.5% (was 0.320) |")
    assert table[2].startswith("| new users with no history | nDCG@10 | 0.360 ±0.030 | segment_popularity 0.400 "
                               "| -10% ±8 |")
    assert "new users with 5 known interactions" in table[3]
    summary = next(line for line in lines if line.startswith("In short:"))
    assert "warm users (their next interactions): beats segment_popularity" in summary
    assert "new users with no history: trails segment_popularity" in summary


def test_history_marks_held_nights_with_the_gates_reason(tmp_path):
    nights = history([("2026-11-28", "published", 0.32, None),
                      ("2026-11-29", "rejected", 0.20, "hybrid ndcg@10 on warm: 0.2000 < 0.3200 - 10%")])
    paths = write_report(with_user_baselines(), tmp_path, "r", {"seed": 42}, {}, history=nights, night="2026-11-30")
    md = paths["markdown"].read_text()
    assert "| 2026-11-29 | nightly-2026-11-29 | held | hybrid ndcg@10 on warm: 0.2000 &lt; 0.3200 - 10% |" in md
    assert paths["history"].exists() and paths["history"].stat().st_size > 10_000
    page = paths["html"].read_text()
    assert "<td>hybrid ndcg@10 on warm: 0.2000 &lt; 0.3200 - 10%</td>" in page  # decoded once, escaped once
    assert page.count('<img src="data:image/png;base64,') == 4
    first = write_report(metrics(), tmp_path / "first", "r", {"seed": 42}, {})["markdown"].read_text()
    assert "the history starts tonight" in first and "| since the last published night |" in first


def test_values_from_the_data_are_escaped_in_both_pages(tmp_path):
    """A value from the data cannot break a table or run as markup, in the Markdown or the HTML."""
    gate = pl.DataFrame({"run_id": ["ingest-1"], "suite": ["interactions"],
                         "expectation": ["expect_column_values_to_be_in_set"], "column_name": ["genres"],
                         "severity": ["warning"], "success": [False],
                         "observed_value": ["<script>alert(1)</script> | <img src=x onerror=alert(2)>\nnext"],
                         "unexpected_count": [1], "element_count": [100], "rows_rejected": [0], "details": [None]})
    paths = write_report(metrics(), tmp_path, "r", {"seed": 42}, {}, gate=gate, docs="/x/<b>index.html")
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    for text in (md, page):
        assert "<script>" not in text and "<img src=x" not in text and "<b>index" not in text
    row = next(line for line in md.splitlines() if "expect_column_values_to_be_in_set" in line)
    assert row.count(" | ") == 6  # seven cells: the bar inside the value is escaped
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt; | &lt;img src=x onerror=alert(2)&gt; next</td>" in page
    assert "Optional: Great Expectations' own Data Docs" in md and "This table is the whole result, offline" in md
