"""The validation gate: Great Expectations suites (``expectations/*.json``) run on the staged batch.

Why pandas batches built from DuckDB rather than a GX SQL datasource on the warehouse: GX has no DuckDB
dialect, its metric resolution on DuckDB hits known ``IndexError``s, and a second connection would fight
DuckDB's single-writer lock. A pandas frame of just the new batch is robust and keeps the gate's cost
proportional to the batch, not to the warehouse. A batch is read in chunks of at most ``GATE_CHUNK_ROWS``
lines of one file (:func:`batch_chunks`) and validated chunk by chunk, the chunks' results merged into the whole
batch's (counts added, every failing row kept, ``mostly`` and the bounds judged on the totals), so memory is
bounded by the chunk, not the batch (100 M interactions are ~8 GB as one pandas frame); a batch of one chunk
gets GX's results as they are.

Semantics:
- A *row-level* expectation (``meta.row_level``) that fails on a share of rows within its ``mostly`` passes;
  its failing rows are moved from staging to ``rejects`` with the expectation as the reason.
- A *critical* expectation that fails stops the batch: it stays in staging, marked ``held`` in the ledger,
  and :class:`ValidationFailedError` names the suite, the expectation, the observed value and failing rows.
- A *warning* is recorded and shown; the run goes on. ``meta.severity_setting`` names a setting
  (``volume_critical``, ``drift_critical``) that turns a warning into a critical check.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys import db, runs
from recsys.errors import ConfigError, ValidationFailedError
from recsys.settings import Settings
from tasks import ingest

GATED_SUITES = ("users", "items", "interactions")  # validation order: referenced tables first
STAGING_TABLE = {"users": "staging_users", "items": "staging_items", "interactions": "staging_interactions"}
INDEX_COLUMNS = ["file_id", "line_number"]
GATE_CHUNK_ROWS = 2_000_000  # rows GX sees at a time: ~0.2 GB of pandas for the interactions' ten columns
# What a suite's chunks are compared with, made once a batch before its first chunk (sql/<name>.sql).
# Each with the parameters it names: the run's, or none.
PREPARED = {"interactions": (("validate/gate_known_users", True), ("validate/gate_known_items", True),
                             ("validate/gate_prior_users", False), ("ingest/batch_duplicates", True))}


@dataclass
class Outcome:
    """One expectation's result, reduced to what the gate and the reports need."""

    suite: str
    expectation: str
    column: str | None
    severity: str
    row_level: bool
    success: bool
    observed_value: Any
    unexpected_count: int | None
    element_count: int | None
    description: str = ""
    failing_rows: list[dict] = field(default_factory=list)
    rows_rejected: int = 0
    missing_count: int | None = None  # nulls a map expectation did not judge (not in its ``mostly``)
    kwargs: dict = field(default_factory=dict, repr=False)  # the expectation's arguments, parameters resolved

    @property
    def label(self) -> str:
        return f"{self.expectation}({self.column})" if self.column else self.expectation

    def observed_text(self) -> str:
        if self.unexpected_count is not None and self.element_count:
            share = self.unexpected_count / self.element_count
            return f"{self.unexpected_count} of {self.element_count} rows unexpected ({share:.1%})"
        if isinstance(self.observed_value, float):
            return f"{self.observed_value:.4g}"
        return str(self.observed_value)


@dataclass
class GateResult:
    run_id: str
    outcomes: list[Outcome]
    docs_path: str | None = None
    reject_reasons: list[tuple[str, int]] = field(default_factory=list)  # (kind of reason, rows), most first
    files_failed: int = 0

    @property
    def rows_rejected_in_batch(self) -> int:
        """Every row of the batch that went to ``rejects``, while parsing or at the gate."""
        return sum(n for _, n in self.reject_reasons)

    def reasons_text(self, top: int = 3) -> str:
        return "; ".join(f"{reason} ({n:,})" for reason, n in self.reject_reasons[:top])

    @property
    def critical_failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.severity == "critical" and not o.success]

    @property
    def warnings(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.severity == "warning" and not o.success]

    @property
    def duplicates_found(self) -> bool:
        """The batch's duplicate interactions (``ingest/batch_duplicates``) are current on the gate's connection:
        made with the interactions' chunks, and again after the gate moved any of them to rejects."""
        return any(o.suite == "interactions" for o in self.outcomes)

    @property
    def passed(self) -> bool:
        return not self.critical_failures

    @property
    def rows_rejected(self) -> int:
        return sum(o.rows_rejected for o in self.outcomes)


# ---------------------------------------------------------------------------------------------------------
# Suites


def load_suite_json(settings: Settings, name: str) -> dict:
    path = settings.expectations_dir / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"expectation suite {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"expectation suite {path} is not valid JSON: {exc}") from exc


def load_suite(settings: Settings, name: str):
    """The suite as a GX object; raises if GX silently dropped an invalid expectation."""
    import great_expectations as gx

    data = load_suite_json(settings, name)
    try:
        suite = gx.ExpectationSuite(**data)
    except Exception as exc:  # GX raises pydantic/GX errors of many kinds for a malformed expectation
        raise ConfigError(f"expectations/{name}.json: an expectation is invalid: {str(exc).splitlines()[0]}") from exc
    if len(suite.expectations) != len(data["expectations"]):
        raise ConfigError(
            f"expectations/{name}.json holds {len(data['expectations'])} expectations but Great Expectations "
            f"loaded {len(suite.expectations)}: one is invalid (check its type and kwargs)"
        )
    if name in GATED_SUITES:  # the gate validates large batches chunk by chunk
        for expectation in data["expectations"]:
            if chunk_rule(expectation["type"]) is None:
                raise ConfigError(
                    f"expectations/{name}.json: {expectation['type']} cannot be judged chunk by chunk, and the gate "
                    f"validates batches over {GATE_CHUNK_ROWS:,} rows in chunks; use a column map expectation "
                    f"(one verdict per row) or one of {', '.join(CHUNK_RULES)}")
    return suite


def severity_of(meta: dict, settings: Settings) -> str:
    setting = meta.get("severity_setting")
    if setting and getattr(settings, setting, False):
        return "critical"
    return meta.get("severity", "critical")


def suite_parameters(wh: db.Warehouse, settings: Settings, run_id: str, now: datetime) -> dict[str, Any]:
    """Values for the suites' ``$PARAMETER``s, from settings and the warehouse's history."""
    mean_volume, n_batches = wh.run("validate/volume_history",
                                    {"run_id": run_id, "window": settings.volume_window})[0]
    has_history = wh.run("validate/has_history")[0][0]
    floor = settings.timestamp_floor.replace(tzinfo=settings.timestamp_floor.tzinfo or UTC)
    return {
        "rating_min": settings.rating_min,
        "rating_max": settings.rating_max,
        "ts_floor": floor.timestamp(),
        "ts_now": (now + timedelta(hours=1)).timestamp(),  # an hour of clock skew is not "the future"
        "year_now": float(now.year + 1),
        "duplicate_share_max": settings.duplicate_share_max,
        "volume_min": math.floor((1 - settings.volume_band) * mean_volume) if n_batches else 1,
        "volume_max": math.ceil((1 + settings.volume_band) * mean_volume) if n_batches else None,
        "mean_rating_min": settings.mean_rating_min,
        "mean_rating_max": settings.mean_rating_max,
        # On the first load every user is new: the drift check only means something with history.
        "new_user_share_max": settings.new_user_share_max if has_history else 1.0,
        "top_n": settings.top_n,
        "list_lengths": [settings.top_n],
    }


# ---------------------------------------------------------------------------------------------------------
# Running GX


def skip_decimal_scan_of_numeric_arrays() -> None:
    """GX's pandas metrics ``column.mean``, ``column.sum`` and ``column.standard_deviation`` first ask whether the
    column holds ``decimal.Decimal`` objects, testing every value in a Python loop
    (``great_expectations.util.does_ndarray_contain_decimal_dtype``, GX 1.24): ~0.1 us a value, three means
    over every row, ~3 s of a 10 M ingest's ~40 s and ~30 s at 100 M (a profiler made it look seven times
    larger: it times each step of the loop). A numpy array of a numeric, boolean or datetime dtype cannot hold
    a Decimal, so for those the answer is False without the loop; an object array still gets GX's own test.
    The answers are the same (tested); only the loop is skipped."""
    from great_expectations import util  # GX is heavy to import: loaded with the runner, as elsewhere here

    scan = util.does_ndarray_contain_decimal_dtype
    if getattr(scan, "skips_numeric_arrays", False):
        return

    def does_ndarray_contain_decimal_dtype(data):
        if isinstance(data, np.ndarray) and data.dtype.kind in "biufcmM":
            return False
        return scan(data)

    does_ndarray_contain_decimal_dtype.skips_numeric_arrays = True
    util.does_ndarray_contain_decimal_dtype = does_ndarray_contain_decimal_dtype


class GxRunner:
    """A file-backed GX context under RECSYS_HOME/gx (results accumulate into Data Docs when RECSYS_DATA_DOCS is
    on)."""

    def __init__(self, settings: Settings):
        import great_expectations as gx

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        skip_decimal_scan_of_numeric_arrays()
        self.settings = settings
        self.gx = gx
        self.context = gx.get_context(mode="file", project_root_dir=str(settings.home))
        try:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        except (ImportError, AttributeError):  # pragma: no cover - older/newer GX
            pass
        try:
            self.source = self.context.data_sources.get("recsys_batches")
        except (KeyError, ValueError, LookupError):
            self.source = self.context.data_sources.add_pandas("recsys_batches")
        self._checkpoints: dict[tuple[str, tuple[str, ...]], Any] = {}

    def run(self, name: str, frame: pd.DataFrame, parameters: dict, run_id: str, index_columns: list[str]):
        """The suite ``name``'s results on ``frame``; its checkpoint is registered once per runner (a batch
        validated in chunks runs it once a chunk)."""
        key = (name, tuple(index_columns))
        if key not in self._checkpoints:
            self._checkpoints[key] = self._checkpoint(name, index_columns)
        result = self._checkpoints[key].run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters,
                                            run_id=self.gx.RunIdentifier(run_name=f"{run_id}-{name}"))
        (validation,) = result.run_results.values()
        return validation.results

    def _checkpoint(self, name: str, index_columns: list[str]):
        gx = self.gx
        suite = self.context.suites.add_or_update(load_suite(self.settings, name))
        try:
            asset = self.source.get_asset(name)
        except (KeyError, ValueError, LookupError):
            asset = self.source.add_dataframe_asset(name)
        try:
            batch = asset.get_batch_definition("batch")
        except (KeyError, ValueError, LookupError):
            batch = asset.add_batch_definition_whole_dataframe("batch")
        definition = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=name, data=batch, suite=suite))
        return self.context.checkpoints.add_or_update(gx.Checkpoint(
            name=name, validation_definitions=[definition],
            # Data Docs only when asked for (RECSYS_DATA_DOCS): the report's gate section is the one place to
            # read the gate, offline; rebuilding the docs rendered every stored result again, every suite.
            actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")] if self.settings.data_docs else [],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_columns},
        ))

    def docs_path(self) -> str | None:
        if not self.settings.data_docs:
            return None
        sites = self.context.get_docs_sites_urls()
        url = sites[0].get("site_url") if sites else None  # None until something was validated
        return url.removeprefix("file://") if url else None


def suite_outcomes(name: str, results, settings: Settings) -> list[Outcome]:
    outcomes = []
    for r in results:
        config = r.expectation_config
        meta = dict(config.meta or {})
        res = dict(r.result or {})
        outcomes.append(Outcome(
            suite=name,
            expectation=config.type,
            column=config.kwargs.get("column"),
            severity=severity_of(meta, settings),
            row_level=bool(meta.get("row_level")),
            success=bool(r.success),
            observed_value=_plain(res.get("observed_value")),
            unexpected_count=res.get("unexpected_count"),
            element_count=res.get("element_count"),
            description=meta.get("description", ""),
            failing_rows=[{k: _plain(v) for k, v in row.items()} for row in res.get("unexpected_index_list") or []],
            missing_count=res.get("missing_count"),
            kwargs=dict(config.kwargs),
        ))
    return outcomes


# How each kind of expectation's result over a batch follows from its results over the batch's chunks. A map
# expectation (one verdict per row: not null, between, in set) adds its counts; these are the others the
# suites may use. An aggregate that does not follow from its chunks' (uniqueness across rows, a median) is
# refused when the suite is loaded, with the expectations that can be judged chunk by chunk.
CHUNK_RULES = {
    "expect_table_columns_to_match_set": "all",   # the same columns in every chunk
    "expect_column_values_to_be_of_type": "all",  # a chunk's dtype: nullable where its column has a null
    "expect_table_row_count_to_be_between": "rows",
    "expect_column_mean_to_be_between": "mean",
}


def chunk_rule(expectation_type: str) -> str | None:
    """How an expectation merges over chunks: ``map``, a :data:`CHUNK_RULES` rule, or None (it cannot)."""
    # Great Expectations is heavy to import: loaded when a suite is, as elsewhere in this module.
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.registry import get_expectation_impl

    if expectation_type in CHUNK_RULES:
        return CHUNK_RULES[expectation_type]
    try:
        return "map" if issubclass(get_expectation_impl(expectation_type), ColumnMapExpectation) else None
    except Exception:  # GX raises its own error for an unknown type; load_suite reports that one
        return None


def merge_chunks(chunks: list[list[Outcome]], nonnull: list[dict[str, int]], whole: str | None = None) -> list[Outcome]:
    """One suite's outcomes over a whole batch from its outcomes over consecutive chunks (``nonnull``: each
    chunk's non-null count per column, which a mean is weighted by). Same verdicts as GX on the whole batch:
    a map expectation's ``mostly`` on the summed counts (rows considered: all rows, less the nulls it does
    not judge), bounds on the summed rows and the weighted mean; failing rows in batch order. ``whole``: a
    column whose every value has all its rows in one chunk (the publish gate's chunks hold whole users), so
    a uniqueness over columns that include it is judged within chunks and merges as a map."""
    if len(chunks) == 1:
        return chunks[0]
    merged = []
    for parts in zip(*chunks, strict=True):
        first, rule = parts[0], chunk_rule(parts[0].expectation)
        if rule is None and whole is not None and whole in (first.kwargs.get("column_list") or ()):
            rule = "map"
        out = Outcome(**{**first.__dict__, "failing_rows": [row for p in parts for row in p.failing_rows]})
        if rule == "map":
            out.element_count = sum(p.element_count or 0 for p in parts)
            out.unexpected_count = sum(p.unexpected_count or 0 for p in parts)
            out.missing_count = None if first.missing_count is None else sum(p.missing_count or 0 for p in parts)
            considered = out.element_count - (out.missing_count or 0)
            mostly = first.kwargs.get("mostly")
            out.success = considered == 0 or (considered - out.unexpected_count) / considered >= (
                1.0 if mostly is None else mostly)
        elif rule == "rows":
            out.observed_value = sum(p.observed_value for p in parts)
            out.success = _between(out.observed_value, first.kwargs)
        elif rule == "mean":
            column = first.column
            weights = [n[column] for n in nonnull]
            total = sum(weights)
            out.observed_value = (sum(p.observed_value * w for p, w in zip(parts, weights, strict=True) if w)
                                  / total if total else None)
            out.success = _between(out.observed_value, first.kwargs)
        else:  # "all": the first chunk that failed says what was observed
            failed = [p for p in parts if not p.success]
            out.success, out.observed_value = not failed, (failed or parts)[0].observed_value
        merged.append(out)
    return merged


def _between(value: Any, kwargs: dict) -> bool:
    """GX's verdict on an aggregate between ``min_value`` and ``max_value`` (None: unbounded; ``strict_*``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    above = low is None or (value > low if kwargs.get("strict_min") else value >= low)
    below = high is None or (value < high if kwargs.get("strict_max") else value <= high)
    return above and below


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------------------
# The gate


def _reject_failing_rows(wh: db.Warehouse, run_id: str, suite: str, outcomes: list[Outcome]) -> int:
    """Move rows of row-level expectations that passed within ``mostly`` from staging to rejects; how many."""
    rows = []
    for outcome in outcomes:
        if not (outcome.row_level and outcome.success and outcome.failing_rows):
            continue
        for row in outcome.failing_rows:
            value = row.get(outcome.column) if outcome.column else None
            rows.append({"file_id": int(row["file_id"]), "line_number": int(row["line_number"]),
                         "reason": f"validation {suite}.{outcome.label}: {outcome.column}={value!r} "
                                   f"({outcome.description or 'failed'})"})
        outcome.rows_rejected = len({(r["file_id"], r["line_number"]) for r in outcome.failing_rows})
    if not rows:
        return 0
    failing = pd.DataFrame(rows).groupby(INDEX_COLUMNS, as_index=False).agg({"reason": "; ".join})
    with wh.registered("failing_rows_view", failing):
        wh.execute("create or replace temp table failing_rows as select * from failing_rows_view")
    params = {"run_id": run_id, "kind": suite, "staging_table": STAGING_TABLE[suite]}
    wh.run("validate/reject_rows", params)
    for file_id, n in wh.run("validate/reject_counts"):
        wh.run("validate/move_to_rejected", {"file_id": file_id, "n": n})
    wh.execute(f"delete from {STAGING_TABLE[suite]} s using failing_rows f "
                "where s.run_id = $run_id and s.file_id = f.file_id and s.line_number = f.line_number",
                {"run_id": run_id})
    return len(failing)


def _store(wh: db.Warehouse, run_id: str, outcomes: list[Outcome]) -> None:
    for o in outcomes:
        sample = o.failing_rows[:5]
        wh.run("validate/insert_result", {
            "run_id": run_id, "suite": o.suite, "expectation": o.expectation, "column_name": o.column,
            "severity": o.severity, "success": o.success, "observed_value": o.observed_text(),
            "unexpected_count": o.unexpected_count, "element_count": o.element_count,
            "rows_rejected": o.rows_rejected, "details": json.dumps(sample, default=str) if sample else None,
        })


def failure_message(result: GateResult) -> str:
    lines = [f"validation gate stopped batch {result.run_id}; it is held in staging and nothing reached the "
             f"final tables:"]
    if result.reject_reasons:
        lines.append(f"  {result.rows_rejected_in_batch:,} rows of this batch were rejected; top reasons: "
                     f"{result.reasons_text()}")
    for o in result.critical_failures:
        lines.append(f"  suite '{o.suite}', expectation {o.label} [critical]: observed {o.observed_text()}"
                     + (f" - {o.description}" if o.description else ""))
        for row in o.failing_rows[:3]:
            lines.append(f"    failing row: file {row.get('file_id')} line {row.get('line_number')}: "
                         + ", ".join(f"{k}={v!r}" for k, v in row.items() if k not in INDEX_COLUMNS))
    lines.append("Fix the source and ingest it again, or adjust the RECSYS_* thresholds and run "
                 f"`recsys validate --run-id {result.run_id}`.")
    return "\n".join(lines)


def validate_batch(
    wh: db.Warehouse, settings: Settings, run_id: str, now: datetime | None = None,
    all_users_known: bool = False, all_items_known: bool = False, raise_on_failure: bool = True,
    chunk_rows: int = GATE_CHUNK_ROWS,
) -> GateResult:
    """Run the gate on the batch staged under ``run_id``: reject rows, hold the batch, or let it through.
    Batches over ``chunk_rows`` are validated chunk by chunk (:func:`merge_chunks`)."""
    now = now or datetime.now(UTC)
    wh.run("validate/release_batch", {"run_id": run_id})  # re-validating a held batch
    runner = GxRunner(settings)
    outcomes: list[Outcome] = []
    parameters = suite_parameters(wh, settings, run_id, now)  # the same for every suite
    for suite in GATED_SUITES:
        rows = wh.scalar("select coalesce(sum(rows_read), 0) from ingest_ledger where run_id = $run_id "
                              "and kind = $kind and status = 'staged'", {"run_id": run_id, "kind": suite})
        if not rows:
            continue  # no file of this kind, or only files with no data rows (a header alone): nothing to judge
        chunks: list[list[Outcome]] = []
        nonnull: list[dict[str, int]] = []
        for frame in batch_chunks(wh, suite, _batch_params(settings, suite, run_id, all_users_known,
                                                            all_items_known), chunk_rows):
            chunks.append(suite_outcomes(suite, runner.run(suite, frame, parameters, run_id, INDEX_COLUMNS),
                                         settings))
            nonnull.append(frame.count().to_dict())
        if not chunks:
            continue
        found = merge_chunks(chunks, nonnull)
        if all(o.success or o.severity != "critical" for o in found):
            if _reject_failing_rows(wh, run_id, suite, found) and suite == "interactions":
                wh.run("ingest/batch_duplicates", {"run_id": run_id})  # a rejected row's later copy is the first
        outcomes.extend(found)
    result = GateResult(run_id=run_id, outcomes=outcomes, docs_path=runner.docs_path(),
                        reject_reasons=[(r, int(n)) for r, n in wh.run("validate/batch_rejects",
                                                                       {"run_id": run_id})],
                        files_failed=int(wh.run("validate/failed_files", {"run_id": run_id})[0][0]))
    _store(wh, run_id, outcomes)
    if not result.passed:
        wh.run("validate/hold_batch", {"run_id": run_id,
                                                      "message": failure_message(result).splitlines()[1].strip()})
        if raise_on_failure:
            raise ValidationFailedError(failure_message(result))
    return result


def batch_chunks(wh: db.Warehouse, suite: str, params: dict, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The suite's staged batch (``params``: the run and the batch query's flags) as pandas frames of at most
    ``chunk_rows`` lines each: file by file, each file's lines in ranges, each range one query
    (``validate/<suite>_batch``) in line order; at least one frame (empty when every row was rejected while
    parsing: GX still judges it). The chunks and their rows are the same
    whatever the machine does, and no step sorts the whole batch: at 100 M rows the one ordered query spilled
    its sort past the warehouse's memory (59 s of a 281 s ingest). Staging holds a file's rows in line order, so
    a range reads its own row groups. What the chunks are compared with (:data:`PREPARED`) is made first, after
    the suites judged before this one moved their rejects."""
    for statement, of_run in PREPARED.get(suite, ()):
        wh.run(statement, {"run_id": params["run_id"]} if of_run else None)
    query = wh.text(f"validate/{suite}_batch")
    ranges = wh.run("validate/batch_line_ranges", {"staging_table": STAGING_TABLE[suite], "run_id": params["run_id"]})
    judged = False
    for file_id, first, last in ranges:
        for lo in range(first, last + 1, chunk_rows):
            frame = wh.execute(query, {**params, "file_id": file_id, "first_line": lo,
                                       "last_line": min(lo + chunk_rows - 1, last)}).df()
            if not frame.empty:  # a range of rejected lines holds no rows
                judged = True
                yield frame
    if not judged:
        yield wh.execute(query, {**params, "file_id": -1, "first_line": 0, "last_line": -1}).df()


def _batch_params(settings, suite, run_id, all_users_known, all_items_known) -> dict:
    params = {"run_id": run_id}
    if suite == "interactions":
        params.update(all_users_known=all_users_known, all_items_known=all_items_known)
    return params


def gate_and_promote(wh: db.Warehouse, settings: Settings, run_id: str, kinds: set[str] | list[str],
                     shown: Callable[[GateResult], None] = lambda result: None) -> GateResult:
    """The gate between staging and promotion, for the ingest flow and ``recsys validate`` alike.

    ``kinds``: the files the source had; a kind it lacks (users, items) has its unknown ids registered, not
    rejected. The result is printed and handed to ``shown`` (the flow's artifact) before anything else; a
    failed gate marks the run held and raises :class:`ValidationFailedError`, a passed one promotes the batch
    and marks the run loaded.
    """
    result = validate_batch(wh, settings, run_id, all_users_known="users" not in kinds,
                            all_items_known="items" not in kinds, raise_on_failure=False)
    print(format_gate(result))
    shown(result)
    if not result.passed:
        runs.finish_run(wh, run_id, "held")
        raise ValidationFailedError(failure_message(result))
    ingest.promote_batch(wh, run_id, register_unknown_users="users" not in kinds,
                         register_unknown_items="items" not in kinds, duplicates_found=result.duplicates_found)
    runs.finish_run(wh, run_id, "loaded")
    return result


def format_gate(result: GateResult) -> str:
    if not result.outcomes:
        if result.files_failed:
            return (f"validation gate for {result.run_id}: nothing new was staged ({result.files_failed} file(s) "
                    f"could not be parsed; see the ingest report)")
        return (f"validation gate for {result.run_id}: nothing new was staged (every file was already loaded or "
                "holds no data rows)")
    lines = [f"validation gate for {result.run_id}: {'PASSED' if result.passed else 'STOPPED'} "
             f"({len(result.outcomes)} expectations, {len(result.critical_failures)} critical failures, "
             f"{len(result.warnings)} warnings, {result.rows_rejected} rows moved to rejects)"]
    if result.reject_reasons:
        lines.append(f"  rows rejected in this batch: {result.rows_rejected_in_batch:,}; top reasons: "
                     f"{result.reasons_text()}")
    for o in result.outcomes:
        if o.success and not o.rows_rejected:
            continue
        status = "ok" if o.success else ("FAIL" if o.severity == "critical" else "warn")
        extra = f", {o.rows_rejected} rows rejected" if o.rows_rejected else ""
        lines.append(f"  {status:4} [{o.severity}] {o.suite}.{o.label}: {o.observed_text()}{extra}")
    if result.docs_path:
        lines.append(f"  Data Docs: {result.docs_path}")
    return "\n".join(lines)


def gate_markdown(result: GateResult) -> str:
    rows = ["| suite | expectation | severity | result | observed | rows rejected |", "|---|---|---|---|---|---|"]
    for o in result.outcomes:
        rows.append(f"| {o.suite} | {o.label} | {o.severity} | {'pass' if o.success else 'FAIL'} | "
                    f"{o.observed_text()} | {o.rows_rejected} |")
    head = f"# Validation gate {result.run_id}: {'passed' if result.passed else 'STOPPED'}\n\n"
    docs = f"\n\nData Docs: `{result.docs_path}`" if result.docs_path else ""
    return head + "\n".join(rows) + docs


def docs_index(settings: Settings) -> Path:
    return settings.home / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
