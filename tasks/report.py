"""The evaluation report: Markdown and HTML with plots, written under RECSYS_HOME/reports/<run_id>/."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import polars as pl

from tasks.metrics import ENCODER_ABLATION, ITEM_COLD_BASELINES, headline


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_cold_start_curve(metrics: pl.DataFrame, path: Path, k: int = 10) -> Path:
    plt = _plt()
    cold = metrics.filter((pl.col("split") == "cold") & (pl.col("metric") == "ndcg") & (pl.col("k") == k))
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for model in sorted(cold["model"].unique()):
        m = cold.filter(pl.col("model") == model).sort("k_shot")
        x = m["k_shot"].to_numpy()
        ax.plot(x, m["value"].to_numpy(), marker="o", label=model)
        ax.fill_between(x, m["ci_low"].to_numpy(), m["ci_high"].to_numpy(), alpha=0.15)
    ax.set_xlabel("known interactions of the cold user (k)")
    ax.set_ylabel(f"nDCG@{k}")
    ax.set_title("Cold-start curve (95% bootstrap CI)")
    ax.set_xscale("symlog", linthresh=1)
    ks = sorted(int(k) for k in cold["k_shot"].unique())
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def plot_model_bars(metrics: pl.DataFrame, path: Path, k: int = 10) -> Path:
    plt = _plt()
    view = headline(metrics, k)
    slices = list(dict.fromkeys(view["slice"].to_list()))  # warm, then cold k ascending
    models = sorted(view["model"].unique())
    fig, ax = plt.subplots(figsize=(max(8.5, len(slices) * 1.5), 4.2))
    width = 0.8 / max(len(models), 1)
    for j, model in enumerate(models):
        m = view.filter(pl.col("model") == model)
        values = {r["slice"]: r for r in m.iter_rows(named=True)}
        xs, ys, errs = [], [], [[], []]
        for i, s in enumerate(slices):
            if s in values:
                r = values[s]
                xs.append(i + j * width)
                ys.append(r["value"])
                errs[0].append(max(r["value"] - r["ci_low"], 0))
                errs[1].append(max(r["ci_high"] - r["value"], 0))
        ax.bar(xs, ys, width, yerr=errs, label=model, capsize=2)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(slices))], slices, rotation=20)
    ax.set_ylabel(f"nDCG@{k}")
    ax.set_title("Models per slice")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def plot_coverage_novelty(metrics: pl.DataFrame, path: Path, k: int = 10) -> Path:
    plt = _plt()
    view = metrics.filter((pl.col("split") == "warm") & (pl.col("k") == k)
                          & pl.col("metric").is_in(["coverage", "novelty"]))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("coverage", "novelty"), strict=True):
        m = view.filter(pl.col("metric") == metric).sort("model")
        ax.barh(m["model"].to_list(), m["value"].to_list(), color="#4c72b0")
        ax.set_title(f"{metric}@{k} (warm users)")
    return _save(fig, path)


ITEM_COLD_COLUMNS = (("ndcg", 10, "users->items nDCG@10"), ("recall", 50, "recall@50"), ("hit_rate", 50, "HR@50"),
                     ("item_ndcg", 100, "items->users nDCG@100"))


def _cell(value: float, low: float, high: float, percent: bool = False) -> str:
    if percent:
        return f"{value * 100:+.1f}% [{low * 100:+.1f}, {high * 100:+.1f}]"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def item_cold_table(metrics: pl.DataFrame) -> pl.DataFrame:
    """Per model, the item-cold protocol's metrics with CIs and the lifts of items->users nDCG over the
    baselines."""
    view = metrics.filter(pl.col("split") == "item_cold")
    rows = []
    for model in sorted(view["model"].unique()):
        mine = view.filter(pl.col("model") == model)
        row = {"model": model}
        for metric, k, label in ITEM_COLD_COLUMNS:
            hit = mine.filter((pl.col("metric") == metric) & (pl.col("k") == k))
            row[label] = _cell(*hit.select("value", "ci_low", "ci_high").row(0)) if hit.height else ""
        for reference in dict.fromkeys(("random", strongest_item_baseline(view, "ndcg", 10),
                                        strongest_item_baseline(view, "item_ndcg", 100))):
            for metric, k, label in (("ndcg", 10, "users->items"), ("item_ndcg", 100, "items->users")):
                hit = mine.filter((pl.col("metric") == f"{metric}_lift_over_{reference}") & (pl.col("k") == k))
                row[f"{label} lift over {reference}"] = (_cell(*hit.select("value", "ci_low", "ci_high").row(0), percent=True)
                                                         if hit.height else "")
        rows.append(row)
    return pl.DataFrame(rows)


def strongest_item_baseline(view: pl.DataFrame, metric: str, k: int) -> str:
    """The item-cold baseline with the best ``metric``@``k`` tonight: the one a model must beat."""
    best = (view.filter(pl.col("model").is_in(ITEM_COLD_BASELINES) & (pl.col("metric") == metric) & (pl.col("k") == k))
            .sort("value", "model", descending=[True, False]))
    return best["model"][0] if best.height else "random"


def encoder_sentence(metrics: pl.DataFrame) -> list[str]:
    """What the pretrained text encoder adds tonight: the audience model against its twin without it, on the
    item-cold fold's new items (items -> users nDCG@100, paired over items)."""
    model, reference = ENCODER_ABLATION
    view = metrics.filter((pl.col("split") == "item_cold") & (pl.col("model") == model) & (pl.col("k") == 100))
    lift = view.filter(pl.col("metric") == f"item_ndcg_lift_over_{reference}")
    over = view.filter(pl.col("metric").is_in([f"item_ndcg_lift_over_{b}" for b in ITEM_COLD_BASELINES]))
    if lift.height == 0 or over.height == 0:
        return []
    value, low, high = lift.select("value", "ci_low", "ci_high").row(0)
    best = strongest_item_baseline(metrics.filter(pl.col("split") == "item_cold"), "item_ndcg", 100)
    b = over.filter(pl.col("metric") == f"item_ndcg_lift_over_{best}").select("value", "ci_low", "ci_high")
    verdict = ("adds" if low > 0 else "costs" if high < 0 else "adds no measurable gain to")
    tail = (f"; the audiences beat the strongest baseline ({best}) by {b['value'][0]:+.1%} "
            f"[{b['ci_low'][0]:+.1%}, {b['ci_high'][0]:+.1%}]" if b.height else "")
    return [f"**New items and the pretrained encoder:** on tonight's held-out new items the text encoder "
            f"(all-MiniLM-L6-v2) {verdict} the audiences {value:+.1%} [{low:+.1%}, {high:+.1%}] (items -> users "
            f"nDCG@100 of the audience model with it over without it){tail}.", ""]


def plot_item_cold(metrics: pl.DataFrame, path: Path) -> Path:
    """Users -> items nDCG@10 and items -> users nDCG@100 per model on new items, with 95% CIs."""
    plt = _plt()
    view = metrics.filter(pl.col("split") == "item_cold")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (metric, k, label) in zip(axes, (ITEM_COLD_COLUMNS[0], ITEM_COLD_COLUMNS[3]), strict=True):
        m = view.filter((pl.col("metric") == metric) & (pl.col("k") == k)).sort("value")
        values = m["value"].to_numpy()
        errors = [(values - m["ci_low"].to_numpy()).clip(0), (m["ci_high"].to_numpy() - values).clip(0)]
        colours = ["#999999" if name in ITEM_COLD_BASELINES else "#4c72b0" for name in m["model"]]
        ax.barh(m["model"].to_list(), values, xerr=errors, color=colours, capsize=2)
        ax.set_title(label)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("New items (held out of training entirely; grey: baselines)")
    return _save(fig, path)


def item_cold_section(metrics: pl.DataFrame, protocol: dict) -> list[str]:
    if metrics.filter(pl.col("split") == "item_cold").height == 0:
        return []
    return ["## New items (item-cold protocol)", "",
            f"{protocol.get('new_items', '?')} items ({protocol.get('item_cold_fraction', 0):.0%} of those with "
            "interactions) were held out of training entirely; their genres, release year and title stay in the "
            "catalogue. Users -> items: each user's list from the whole catalogue, judged on the new items the user "
            "took (new items compete with every known item). Items -> users: per new item, how its true users "
            "rank among the evaluated users. 95% bootstrap CIs over users (items for items -> users); lifts are "
            "paired, over random and over tonight's strongest baseline (activity: the most active users first; "
            "genre_year: genres and exact year). Collaborative models cannot score an item nobody has interacted "
            "with, and do not pretend to.",
            "", *_table(item_cold_table(metrics)), "", "![new items](item_cold.png)", ""]


def _table(frame: pl.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.iter_rows():
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return lines


def headline_table(metrics: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    view = headline(metrics, k).with_columns(
        cell=pl.format("{} [{}, {}]", pl.col("value").round(4), pl.col("ci_low").round(4), pl.col("ci_high").round(4)))
    order = list(dict.fromkeys(view["slice"].to_list()))  # warm, then cold k ascending (numerically)
    return view.pivot(on="slice", index="model", values="cell").select("model", *order).sort("model")


def lift_table(metrics: pl.DataFrame, k: int = 10) -> pl.DataFrame:
    view = metrics.filter((pl.col("metric") == "ndcg_lift") & (pl.col("k") == k) & (pl.col("split") == "cold"))
    view = view.sort("k_shot").with_columns(
        cell=pl.format("{}% [{}, {}]", (pl.col("value") * 100).round(1), (pl.col("ci_low") * 100).round(1),
                       (pl.col("ci_high") * 100).round(1)),
        column=pl.format("k={}", pl.col("k_shot")))
    return view.pivot(on="column", index="model", values="cell", sort_columns=False).sort("model")


def headlines(metrics: pl.DataFrame, k: int = 10, baseline: str = "popularity") -> list[str]:
    """One sentence per model: how it does against popularity for users with no history, then with some."""
    lifts = metrics.filter((pl.col("metric") == "ndcg_lift") & (pl.col("k") == k) & (pl.col("split") == "cold"))
    lines = []
    for model in sorted(lifts["model"].unique()):
        rows = lifts.filter(pl.col("model") == model).sort("k_shot")
        zero = rows.filter(pl.col("k_shot") == 0)
        if zero.height == 0:
            continue
        z = zero.row(0, named=True)
        ci = f"95% CI [{z['ci_low']:+.1%}, {z['ci_high']:+.1%}]"
        if z["ci_low"] > 0:
            claim = f"beats {baseline} by {z['value']:+.1%} ({ci})"
        elif z["ci_high"] < 0:
            claim = f"trails {baseline} by {z['value']:+.1%} ({ci})"
        else:
            claim = f"is not distinguishable from {baseline}: {z['value']:+.1%} ({ci}, which includes 0)"
        rest = rows.filter(pl.col("k_shot") > 0)
        tail = ", ".join(f"{r['value']:+.0%} at k={r['k_shot']}" for r in rest.iter_rows(named=True))
        lines.append(f"For users with no history, {model} {claim}"
                     + (f"; with k known interactions: {tail}." if tail else "."))
    return lines


def protocol_table(protocol: dict) -> pl.DataFrame:
    return pl.DataFrame({"setting": list(protocol), "value": [json.dumps(v) if isinstance(v, dict | list) else str(v)
                                                              for v in protocol.values()]})


def gate_section(gate: pl.DataFrame | None, docs: str | None = None) -> list[str]:
    """The validation gate's results as a Markdown section: every expectation, pass or fail, failing rows."""
    if gate is None or gate.height == 0:
        return []
    failed = gate.filter(~pl.col("success"))
    critical = failed.filter(pl.col("severity") == "critical").height
    verdict = "STOPPED the batch" if critical else "passed"
    view = gate.select(
        "suite", pl.concat_str([pl.col("expectation"), pl.col("column_name").fill_null("")], separator=" ")
        .str.strip_chars().alias("expectation"), "severity",
        pl.when(pl.col("success")).then(pl.lit("pass")).otherwise(pl.lit("FAIL")).alias("result"),
        pl.col("observed_value").fill_null("").str.slice(0, 80).alias("observed"),
        pl.col("unexpected_count").fill_null(0).alias("failing rows"), "rows_rejected")
    return ["## Validation gate (Great Expectations)", "",
            f"Batch {gate['run_id'][0]}: the gate {verdict}; {gate.height} expectations, {failed.height} failed "
            f"({critical} critical), {int(gate['rows_rejected'].sum())} rows moved to rejects."
            + (f" Detailed view: Great Expectations Data Docs at `{docs}` (they load their styles from the "
               "internet)." if docs else ""), "", *_table(view), ""]


def write_report(metrics: pl.DataFrame, folder: Path, run_id: str, protocol: dict, tuning: dict,
                 k: int = 10, gate: pl.DataFrame | None = None, docs: str | None = None) -> dict[str, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = {
        "cold_start_curve": plot_cold_start_curve(metrics, folder / "cold_start_curve.png", k),
        "model_comparison": plot_model_bars(metrics, folder / "model_comparison.png", k),
        "coverage_novelty": plot_coverage_novelty(metrics, folder / "coverage_novelty.png", k),
    }
    if metrics.filter(pl.col("split") == "item_cold").height:
        plots["item_cold"] = plot_item_cold(metrics, folder / "item_cold.png")
    heads = headline_table(metrics, k)
    lifts = lift_table(metrics, k)
    beyond = (metrics.filter((pl.col("k") == k) & (pl.col("split") == "warm")
                             & pl.col("metric").is_in(["coverage", "novelty", "diversity", "popularity_bias"]))
              .pivot(on="metric", index="model", values="value").sort("model"))
    md = [f"# Evaluation report {run_id}", "", *encoder_sentence(metrics), *headlines(metrics, k), "",
          f"nDCG@{k} with 95% bootstrap confidence intervals over users. Cold users were held out of training "
          f"entirely; `cold k=n` reveals their first n interactions by time as history.", "",
          *_table(heads), "", f"## Lift of nDCG@{k} over global popularity (cold users, paired bootstrap CI)", "",
          "At k=0 a collaborative model (EASE, item-kNN) knows nothing of the user, so it ranks by the shared "
          "popularity tie-break and equals popularity.", "",
          *_table(lifts), "", "## Beyond accuracy (warm users)", "", *_table(beyond), "",
          *item_cold_section(metrics, protocol), *gate_section(gate, docs),
          "## Plots", "", "![cold-start curve](cold_start_curve.png)", "",
          "![model comparison](model_comparison.png)", "", "![coverage and novelty](coverage_novelty.png)", "",
          "## Protocol", "", *_table(protocol_table(protocol)), ""]
    if tuning:
        md += ["## Weights learned on validation data drawn from training (the hybrid's blend per history bucket, "
               "the audience model's on held-out training items)", "", "```json",
               json.dumps(tuning, indent=2, default=str), "```", ""]
    md_path = folder / "report.md"
    md_path.write_text("\n".join(md))
    html_path = folder / "report.html"
    html_path.write_text(_html(md, plots, run_id))
    return {"markdown": md_path, "html": html_path, **plots}


def _html(md_lines: list[str], plots: dict[str, Path], run_id: str) -> str:
    """A self-contained HTML page (plots inlined) built from the Markdown lines."""
    body, in_table, in_code = [], False, False
    for line in md_lines:
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(line) <= {"|", "-"}:
                continue
            if not in_table:
                body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
                in_table = True
            else:
                body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            name = line[line.index("(") + 1:line.index(")")]
            path = next((p for p in plots.values() if p.name == name), None)
            if path:
                data = base64.b64encode(path.read_bytes()).decode()
                body.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(name)}">')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run_id)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
