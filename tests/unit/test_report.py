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
