"""The evaluation report: Markdown and HTML with plots, written under RECSYS_HOME/reports/<run_id>/."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import polars as pl

from models.registry import available, model_class
from recsys import schema
from tasks.metrics import ENCODER_ABLATION, ITEM_COLD_BASELINES, USER_BASELINES, headline

# The order models are listed in, after the published one: baselines, then the models by what they read.
MODEL_ORDER = ("popularity", "segment_popularity", "item_knn", "ease", "als", "content_knn", "two_tower", "hybrid",
               "new_item_audience", "new_item_audience_without_text", *ITEM_COLD_BASELINES)
# How many earlier nights the report's history plot shows.
HISTORY_NIGHTS = 30


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


def plot_cold_start_curve(metrics: pl.DataFrame, path: Path, k: int = schema.DEFAULT_K,
                          published: str | None = None) -> Path:
    plt = _plt()
    cold = metrics.filter((pl.col("split") == "cold") & (pl.col("metric") == "ndcg") & (pl.col("k") == k))
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for model in ordered_models(cold["model"].unique().to_list(), published):
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


def plot_model_bars(metrics: pl.DataFrame, path: Path, k: int = schema.DEFAULT_K, published: str | None = None) -> Path:
    plt = _plt()
    view = headline(metrics, k)
    slices = list(dict.fromkeys(view["slice"].to_list()))  # warm, then cold k ascending
    models = ordered_models(view["model"].unique().to_list(), published)
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


def plot_coverage_novelty(metrics: pl.DataFrame, path: Path, k: int = schema.DEFAULT_K) -> Path:
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
    """A value with its 95% CI as ± (the wider side of the interval), rounded for people."""
    half = max(value - low, high - value, 0.0)
    if percent:
        digits = 0 if abs(value) >= 0.1 else 1
        return f"{value * 100:+.{digits}f}% ±{half * 100:.{digits}f}"
    return f"{value:.3f} ±{half:.3f}"


def ordered_models(names, published: str | None = None) -> list[str]:
    """The published model first, then MODEL_ORDER, then anything else alphabetically: every table alike."""
    rank = {name: i for i, name in enumerate(MODEL_ORDER)}
    rest = sorted((n for n in set(names) if n != published), key=lambda n: (rank.get(n, len(rank)), n))
    return ([published] if published in set(names) else []) + rest


def _sort_models(frame: pl.DataFrame, published: str | None) -> pl.DataFrame:
    order = {name: i for i, name in enumerate(ordered_models(frame["model"].to_list(), published))}
    return frame.with_columns(_o=pl.col("model").replace_strict(order, return_dtype=pl.Int32)).sort("_o").drop("_o")


def item_cold_table(metrics: pl.DataFrame, published: str | None = None) -> pl.DataFrame:
    """Per model, the item-cold protocol's metrics with CIs and the lifts of items->users nDCG over the
    baselines."""
    view = metrics.filter(pl.col("split") == "item_cold")
    rows = []
    for model in ordered_models(view["model"].unique().to_list(), published):
        mine = view.filter(pl.col("model") == model)
        row = {"model": model}
        for metric, k, label in ITEM_COLD_COLUMNS:
            hit = mine.filter((pl.col("metric") == metric) & (pl.col("k") == k))
            row[label] = _cell(*hit.select("value", "ci_low", "ci_high").row(0)) if hit.height else ""
        for reference in dict.fromkeys(("random", strongest_item_baseline(view, "ndcg", 10),
                                        strongest_item_baseline(view, "item_ndcg", 100))):
            for metric, k, label in (("ndcg", 10, "users->items"), ("item_ndcg", 100, "items->users")):
                hit = mine.filter((pl.col("metric") == f"{metric}_lift_over_{reference}") & (pl.col("k") == k))
                row[f"{label} lift over {reference}"] = (_cell(*hit.select("value", "ci_low", "ci_high").row(0),
                                                               percent=True)
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


def placement_sentence(tuning: dict, min_rate: float = 0.0) -> list[str]:
    """Whether new items earn places in tonight's lists, and why: the published hybrid's measured rate on
    its warm validation window (models.hybrid.Hybrid._new_item_rates), or the floor under it
    (RECSYS_NEW_ITEM_MIN_RATE) where that is higher."""
    warm = (tuning.get("hybrid") or {}).get("warm") or {}
    rate = warm.get("new_items")
    if not rate:
        return []
    used = max(rate["rate"], min_rate)
    floor = (f" raised to RECSYS_NEW_ITEM_MIN_RATE {min_rate:.2f} (tonight's untaken items are arrivals)"
             if min_rate > rate["rate"] else "")
    verdict = ("so new items stay out of the lists" if used == 0 else
               f"so a new item enters a list where the audience model's probability times {used:.2f} "
               "beats the hit rate of the known item at that rank")
    return [f"**New items in the lists:** in the validation window, the items nobody had taken before it "
            f"({rate['items']:,}) were taken {rate['taken']:,} times, against {rate['expected']:,.0f} that the "
            f"audience model expected (rate {rate['rate']:.2f}){floor}, {verdict} "
            "(RECSYS_NEW_ITEM_SLOTS a list at most).", ""]


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


def item_cold_section(metrics: pl.DataFrame, protocol: dict, published: str | None = None) -> list[str]:
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
            "", *markdown_table(item_cold_table(metrics, published)), "", "![new items](item_cold.png)", ""]


def md_text(value) -> str:
    """A value as Markdown-safe text on one line: markup characters as entities and ``|`` escaped, so a value
    from the data can neither break a table nor render as HTML (the HTML page decodes it exactly once)."""
    text = f"{value:.3f}" if isinstance(value, float) else "" if value is None else str(value)
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def markdown_table(frame: pl.DataFrame) -> list[str]:
    lines = ["| " + " | ".join(md_text(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.iter_rows():
        lines.append("| " + " | ".join(md_text(v) for v in row) + " |")
    return lines


def _cells(view: pl.DataFrame, percent: bool = False) -> pl.DataFrame:
    cells = [_cell(*row, percent=percent) for row in view.select("value", "ci_low", "ci_high").iter_rows()]
    return view.with_columns(cell=pl.Series(cells, dtype=pl.String))


def headline_table(metrics: pl.DataFrame, k: int = schema.DEFAULT_K, published: str | None = None) -> pl.DataFrame:
    view = _cells(headline(metrics, k))
    order = list(dict.fromkeys(view["slice"].to_list()))  # warm, then cold k ascending (numerically)
    return _sort_models(view.pivot(on="slice", index="model", values="cell").select("model", *order), published)


def lift_table(metrics: pl.DataFrame, k: int = schema.DEFAULT_K, published: str | None = None) -> pl.DataFrame:
    view = metrics.filter((pl.col("metric") == "ndcg_lift") & (pl.col("k") == k) & (pl.col("split") == "cold"))
    view = _cells(view.sort("k_shot"), percent=True).with_columns(column=pl.format("k={}", pl.col("k_shot")))
    return _sort_models(view.pivot(on="column", index="model", values="cell", sort_columns=False), published)


def headlines(metrics: pl.DataFrame, k: int = schema.DEFAULT_K, baseline: str = "popularity",
              published: str | None = None) -> list[str]:
    """One sentence per model: how it does against popularity for users with no history, then with some."""
    lifts = metrics.filter((pl.col("metric") == "ndcg_lift") & (pl.col("k") == k) & (pl.col("split") == "cold"))
    lines = []
    for model in ordered_models(lifts["model"].unique().to_list(), published):
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


def few_shot_k(metrics: pl.DataFrame) -> int | None:
    """The k of the few-shot row in the headline: 5 known interactions, or the nearest k evaluated."""
    ks = sorted(int(k) for k in metrics.filter(pl.col("split") == "cold")["k_shot"].drop_nulls().unique() if k > 0)
    return min(ks, key=lambda k: (abs(k - 5), k)) if ks else None


def headline_rows(metrics: pl.DataFrame, k: int = schema.DEFAULT_K) -> list[dict]:
    """The questions the headline answers, each with the slice and metric that answers it."""
    rows = [{"who": "warm users (their next interactions)", "split": "warm", "k_shot": None, "metric": "ndcg",
             "k": k, "baselines": USER_BASELINES},
            {"who": "new users with no history", "split": "cold", "k_shot": 0, "metric": "ndcg", "k": k,
             "baselines": USER_BASELINES}]
    if (few := few_shot_k(metrics)) is not None:
        rows.append({"who": f"new users with {few} known interactions", "split": "cold", "k_shot": few,
                     "metric": "ndcg", "k": k, "baselines": USER_BASELINES})
    rows.append({"who": "new items: who to show them to", "split": "item_cold", "k_shot": None,
                 "metric": "item_ndcg", "k": 100, "baselines": ITEM_COLD_BASELINES})
    return rows


def _pick(frame: pl.DataFrame, row: dict, model: str, metric: str | None = None) -> dict | None:
    hit = frame.filter((pl.col("model") == model) & (pl.col("split") == row["split"])
                       & (pl.col("metric") == (metric or row["metric"])) & (pl.col("k") == row["k"])
                       & (pl.col("k_shot").is_null() if row["k_shot"] is None else pl.col("k_shot") == row["k_shot"]))
    return hit.row(0, named=True) if hit.height else None


def _label(row: dict) -> str:
    name = "nDCG@{k}" if row["metric"] == "ndcg" else "items -> users nDCG@{k}"
    return name.format(k=row["k"])


def strongest_baseline(metrics: pl.DataFrame, row: dict, published: str) -> tuple[dict | None, dict | None]:
    """The baseline of ``row``'s slice with the best value tonight, and the published model's paired lift over
    it (None where no paired lift was stored: an older night's metrics)."""
    scored = [r for b in row["baselines"] if b != published and (r := _pick(metrics, row, b)) is not None]
    if not scored:
        return None, None
    best = min(scored, key=lambda r: (-r["value"], r["model"]))  # ties: by name, as strongest_item_baseline
    plain = best["model"] == "popularity" and row["metric"] == "ndcg"  # stored as ndcg_lift (the default)
    name = f"{row['metric']}_lift" + ("" if plain else f"_over_{best['model']}")
    return best, _pick(metrics, row, published, name)


def answer_table(metrics: pl.DataFrame, published: str, history: pl.DataFrame | None = None,
                 k: int = schema.DEFAULT_K) -> tuple[pl.DataFrame, list[str]]:
    """The published model's answer, a row per question (warm users, new users with none and a few known
    interactions, new items): tonight with its CI, the slice's strongest baseline, the paired lift over it
    and the change since the last published night; and a verdict per row whose lift is measured."""
    before = last_published(history)
    since = f"since {before['run_date'][0]}" if before is not None else "since the last published night"
    table, verdicts = [], []
    for row in headline_rows(metrics, k):
        mine = _pick(metrics, row, published)
        if mine is None:
            continue
        best, lift = strongest_baseline(metrics, row, published)
        if lift is not None:
            lift_text = _cell(lift["value"], lift["ci_low"], lift["ci_high"], percent=True)
            verdicts.append(f"{row['who']}: " + ("beats" if lift["ci_low"] > 0 else "trails" if lift["ci_high"] < 0
                                                 else "is level with") + f" {best['model']}")
        elif best is not None and best["value"]:
            lift_text = f"{mine['value'] / best['value'] - 1:+.0%}"  # no paired lift stored: the ratio, no CI
        else:
            lift_text = ""
        prev = _pick(before, row, published) if before is not None else None
        table.append({
            "who": row["who"], "metric": _label(row),
            "tonight (95% CI)": _cell(mine["value"], mine["ci_low"], mine["ci_high"]),
            "strongest baseline": f"{best['model']} {best['value']:.3f}" if best else "",
            "lift over it": lift_text,
            since: (f"{mine['value'] / prev['value'] - 1:+.1%} (was {prev['value']:.3f})"
                    if prev is not None and prev["value"] else "first night" if before is None else ""),
        })
    return pl.DataFrame(table), verdicts


def answer_first(metrics: pl.DataFrame, published: str, history: pl.DataFrame | None = None, k: int = schema.DEFAULT_K,
                 night: str = "", answer: tuple[pl.DataFrame, list[str]] | None = None) -> list[str]:
    """The report's first screen: what the published model is, then :func:`answer_table` (``answer``, where the
    caller has it already) and its verdicts."""
    description = model_class(published).description if published in available() else ""
    table, verdicts = answer or answer_table(metrics, published, history, k)
    lines = [f"## Tonight{f' ({night})' if night else ''}: {published}, the published model", "",
             f"**{published}**" + (f": {description}." if description else "."), ""]
    if table.height:
        lines += [*markdown_table(table), ""]
    if verdicts:
        lines += ["In short: " + "; ".join(verdicts) + " (beats or trails: the lift's whole 95% CI is above or "
                  "below zero).", ""]
    return lines


def last_published(history: pl.DataFrame | None) -> pl.DataFrame | None:
    """The metrics of the newest earlier night that was published (None before the first)."""
    if history is None or history.height == 0:
        return None
    done = history.filter(pl.col("outcome") == "published")
    if done.height == 0:
        return None
    newest = done.sort("started_at")["run_id"][-1]
    return done.filter(pl.col("run_id") == newest).with_columns(pl.col("run_date").cast(pl.String))


def plot_history(history: pl.DataFrame, tonight: pl.DataFrame, published: str, path: Path,
                 k: int = schema.DEFAULT_K) -> Path:
    """The published model's headline metrics over the last nights: one point per night (run), held nights
    marked with a red cross (the table under the plot says why), tonight last."""
    plt = _plt()
    rows = headline_rows(tonight, k)
    nights = (pl.concat([history.select("run_id", "run_date", "started_at", "outcome").unique(),
                         pl.DataFrame({"run_id": ["tonight"], "run_date": [None], "started_at": [None],
                                       "outcome": ["tonight"]}, schema=history.select(
                             "run_id", "run_date", "started_at", "outcome").schema)])
              .sort("started_at", nulls_last=True))
    frames = pl.concat([history.select("run_id", "split", "k_shot", "metric", "k", "value", "model"),
                        tonight.filter(pl.col("model") == published).select(
                            pl.lit("tonight").alias("run_id"), "split", "k_shot", "metric", "k", "value", "model")],
                       how="vertical_relaxed")
    x = {run: i for i, run in enumerate(nights["run_id"])}
    labels = [("tonight" if run == "tonight" else str(date))
              for run, date in nights.select("run_id", "run_date").iter_rows()]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for row in rows:
        view = frames.filter((pl.col("model") == published) & (pl.col("split") == row["split"])
                             & (pl.col("metric") == row["metric"]) & (pl.col("k") == row["k"])
                             & (pl.col("k_shot").is_null() if row["k_shot"] is None
                                else pl.col("k_shot") == row["k_shot"]))
        points = sorted((x[r], v) for r, v in view.select("run_id", "value").iter_rows() if r in x)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{row['who']} ({_label(row)})")
    top = ax.get_ylim()[1]
    for run, outcome in nights.select("run_id", "outcome").iter_rows():
        if outcome not in ("published", "tonight"):
            ax.axvline(x[run], color="#c44e52", alpha=0.4, linestyle="--")
            ax.annotate("held" if outcome == "rejected" else outcome, (x[run], top), color="#c44e52", fontsize=8,
                        ha="center", va="bottom", annotation_clip=False)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("value")
    ax.set_title(f"{published} over the last nights (red dashes: nights not published)", pad=14)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    return _save(fig, path)


def history_section(history: pl.DataFrame | None) -> list[str]:
    """Under the plot: the nights it shows, and for a held one the gate's reason."""
    if history is None or history.height == 0:
        return ["## Nights over time", "", "This is the first night evaluated here: the history starts tonight.", ""]
    nights = (history.group_by("run_id").agg(pl.col("run_date").first(), pl.col("started_at").first(),
                                            pl.col("outcome").first(), pl.col("reason").first())
              .sort("started_at", descending=True))
    view = nights.select(pl.col("run_date").cast(pl.String).alias("night"), "run_id", "outcome",
                         pl.col("reason").fill_null("").str.slice(0, 200).alias("why held"))
    return ["## Nights over time", "",
            f"The published model's headline metrics on the last {nights.height} earlier nights and tonight; "
            "`held` nights were evaluated but the publish gate kept the last good lists (the reason is the "
            "gate's own). The same numbers for published nights: `recsys sql --named metrics_history`.", "",
            "![history](history.png)", "", *markdown_table(view.with_columns(
                pl.col("outcome").replace({"rejected": "held"}))), ""]


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
            + " This table is the whole result, offline: every expectation, its observed value and failing "
            "rows." + (f" Optional: Great Expectations' own Data Docs at `{md_text(docs)}` (they load their "
                       "styles from the internet)." if docs else ""), "", *markdown_table(view), ""]


def sample_sentence(protocol: dict) -> list[str]:
    """Where the evaluation was a sample of users (:func:`tasks.split.user_sample`), the report says so first."""
    if "evaluation_sample" not in protocol:
        return []
    return [f"**Evaluated on a sample of users:** {protocol['evaluation_sample']}.", ""]


def write_report(metrics: pl.DataFrame, folder: Path, run_id: str, protocol: dict, tuning: dict,
                 k: int = schema.DEFAULT_K, gate: pl.DataFrame | None = None, docs: str | None = None,
                 published: str = "hybrid", history: pl.DataFrame | None = None, night: str = "",
                 answer: tuple[pl.DataFrame, list[str]] | None = None,
                 new_item_min_rate: float = 0.0) -> dict[str, Path]:
    """The report: the published model's answer first (tonight, its lift over the strongest baseline, the
    change since the last published night), its history over nights, then every model in one order, the
    gate, the plots and the protocol. ``history``: earlier nights' metrics of the published model
    (``publish/metrics_history``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots = {
        "cold_start_curve": plot_cold_start_curve(metrics, folder / "cold_start_curve.png", k, published),
        "model_comparison": plot_model_bars(metrics, folder / "model_comparison.png", k, published),
        "coverage_novelty": plot_coverage_novelty(metrics, folder / "coverage_novelty.png", k),
    }
    if metrics.filter(pl.col("split") == "item_cold").height:
        plots["item_cold"] = plot_item_cold(metrics, folder / "item_cold.png")
    if history is not None and history.height:
        plots["history"] = plot_history(history, metrics, published, folder / "history.png", k)
    heads = headline_table(metrics, k, published)
    lifts = lift_table(metrics, k, published)
    beyond = _sort_models(metrics.filter((pl.col("k") == k) & (pl.col("split") == "warm")
                                         & pl.col("metric").is_in(["coverage", "novelty", "diversity",
                                                                   "popularity_bias"]))
                          .pivot(on="metric", index="model", values="value"), published)
    md = [f"# Nightly report {night or run_id}", "", f"Run `{run_id}`. Values are means over users with their 95% "
          "bootstrap confidence interval as ±.", "",
          *sample_sentence(protocol), *answer_first(metrics, published, history, k, night, answer),
          *encoder_sentence(metrics),
          *placement_sentence(tuning, new_item_min_rate),
          *history_section(history),
          "## Every model", "", *headlines(metrics, k, published=published), "",
          f"nDCG@{k}. Cold users were held out of training entirely; `cold k=n` reveals their first n "
          "interactions by time as history.", "",
          *markdown_table(heads), "",
          f"## Lift of nDCG@{k} over global popularity (cold users, paired bootstrap CI)", "",
          "At k=0 a collaborative model (EASE, item-kNN) knows nothing of the user, so it ranks by the shared "
          "popularity tie-break and equals popularity.", "",
          *markdown_table(lifts), "", "## Beyond accuracy (warm users)", "", *markdown_table(beyond), "",
          *item_cold_section(metrics, protocol, published), *gate_section(gate, docs),
          "## Plots", "", "![cold-start curve](cold_start_curve.png)", "",
          "![model comparison](model_comparison.png)", "", "![coverage and novelty](coverage_novelty.png)", "",
          "## Protocol", "", *markdown_table(protocol_table(protocol)), ""]
    if tuning:
        md += ["## Weights learned on validation data drawn from training (the hybrid's blend per history bucket, "
               "the audience model's on held-out training items)", "", "```json",
               json.dumps(tuning, indent=2, default=str), "```", ""]
    md_path = folder / "report.md"
    md_path.write_text("\n".join(md))
    html_path = folder / "report.html"
    html_path.write_text(_html(md, plots, run_id))
    return {"markdown": md_path, "html": html_path, **plots}


def _inline(line: str) -> str:
    """A Markdown paragraph as HTML: escaped (entities decoded once first), with **bold** and `code`."""
    text = html.escape(html.unescape(line))
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


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
            # Cells split on unescaped bars; each cell's Markdown entities decoded once, then escaped for HTML.
            cells = [html.escape(html.unescape(c.strip().replace("\\|", "|")))
                     for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            if set(line) <= {"|", "-"}:
                continue
            if not in_table:
                body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
                in_table = True
            else:
                body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
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
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "font-size:13px}th{background:#f3f3f3}img{max-width:100%}h2{margin-top:1.6em}"
             "table:first-of-type td:nth-child(3){font-weight:bold}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(run_id)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
