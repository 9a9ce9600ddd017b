"""Lossless, incremental, idempotent ingest of landing files into the DuckDB warehouse.

A batch (one run_id) goes through three steps:

1. :func:`stage_file` parses one file into ``staging_<kind>``. Rows that cannot be parsed (wrong column
   count, bad encoding, non-numeric id, unparsable timestamp ...) go to ``rejects`` with their line number,
   raw text and reason. A file that cannot be read at all is recorded in the ledger as ``failed``.
2. The validation gate (``tasks/validate.py``) looks at the staged batch and may move rows to ``rejects`` or
   hold the whole batch back.
3. :func:`promote_batch` moves the staged rows into ``users``, ``items`` and ``interactions``, counting rows
   that are already there as duplicates.

For every file: rows_read = rows_accepted + rows_rejected + rows_duplicate + rows_held.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import hashlib
import os
import shutil
import stat
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from recsys import db, schema
from recsys.errors import SchemaMismatchError
from recsys.schema import ITEM_ID, RATING, TIMESTAMP, USER_ID
from recsys.settings import Settings
from tasks.sources import FileSpec


@dataclass
class FileResult:
    path: str
    kind: str
    status: str  # staged | loaded | held | skipped | failed
    file_id: int | None = None
    version: int = 0
    rows_read: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    rows_duplicate: int = 0
    rows_held: int = 0
    message: str = ""
    sample_rejects: list[str] = field(default_factory=list)


@dataclass
class IngestReport:
    run_id: str
    files: list[FileResult]

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    def totals(self) -> dict[str, int]:
        keys = ("rows_read", "rows_accepted", "rows_rejected", "rows_duplicate", "rows_held")
        return {key: sum(getattr(f, key) for f in self.files) for key in keys}

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "files": [asdict(f) for f in self.files], "totals": self.totals()}


# ---------------------------------------------------------------------------------------------------------
# Parsing: text in, typed columns plus a reason per row out.

MAX_ECHO = 200  # characters of a bad value quoted in a reject reason (a 1 MB line is not stored twice)


def capped(text: str, limit: int = MAX_ECHO) -> str:
    """File content echoed in a message or the ledger: at most ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit:,} more characters)"



def _read_header(spec: FileSpec) -> tuple[str, ...]:
    with open(spec.path, encoding=spec.encoding, errors="replace", newline="") as fh:
        first = fh.readline()
    if not first.strip():
        return ()
    reader = csv.reader([first], delimiter=spec.delimiter, quotechar=spec.quote or None)
    return tuple(name.strip().lstrip(codecs.BOM_UTF8.decode()) for name in next(reader))


def _source_columns(spec: FileSpec, available: tuple[str, ...]) -> dict[str, str]:
    """canonical -> source column; optional canonical columns are found by name when not mapped."""
    mapped = dict(spec.columns)
    for name in schema.CANONICAL_COLUMNS[spec.kind]:
        if name not in mapped and name in available:
            mapped[name] = name
    if spec.kind == "interactions" and TIMESTAMP not in spec.columns and "timestamp" in available:
        mapped[TIMESTAMP] = "timestamp"
    needed = list(mapped.values()) + [column for column, _ in spec.genre_flags]
    missing = [column for column in needed if column not in available]
    if missing:
        raise SchemaMismatchError(
            f"{spec.path}: column(s) {capped(', '.join(missing))} named by the mapping are not in the file; "
            f"the file has {capped(', '.join(available)) or 'no columns'}. Fix the mapping (mapping.toml [{spec.kind}] "
            f"or the --*-col flags), or the delimiter (now {spec.delimiter!r})"
        )
    return mapped


def _text(column: str) -> str:
    return f"nullif(trim(cast({db.quote_ident(column)} as varchar)), '')"


# Epoch seconds a timestamp can hold (years 1 to 9999): outside, or NaN/inf, a value is rejected per row; the
# bulk conversion of one such value (``to_timestamp(1e20)``) raised and failed the whole file.
EPOCH_MIN, EPOCH_MAX = -62_135_596_800, 253_402_300_799


def _timestamp_expr(text: str, fmt: str) -> str:
    """A finite timestamp or NULL (the row is then rejected with the reason): never an error for the file,
    never ``infinity`` (DuckDB parses "infinity" as a timestamp, which broke every later night)."""
    seconds = f"try_cast({text} as double)"
    epoch = (f"case when isfinite({seconds}) and {seconds} between {EPOCH_MIN} and {EPOCH_MAX} "
             f"then to_timestamp({seconds})::timestamp end")
    parsed = f"try_cast({text} as timestamp)"
    iso = f"case when isfinite({parsed}) then {parsed} end"
    if fmt == "epoch":
        return epoch
    if fmt == "iso":
        return iso
    if fmt == "auto":
        return f"coalesce({epoch}, {iso})"
    custom = f"try_strptime({text}, '{fmt.replace(chr(39), chr(39) * 2)}')"
    return f"case when isfinite({custom}) then {custom} end"


_TIMESTAMP_WORDS = {
    "auto": "epoch seconds or an ISO date-time",
    "epoch": "epoch seconds",
    "iso": "an ISO date-time",
}


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _typed_columns(spec: FileSpec, mapped: dict[str, str], types: dict[str, tuple[str, str]] | None = None
                   ) -> list[tuple[str, str, str | None]]:
    """(canonical name, typed expression, reason expression or None) for each canonical column. ``mapped``:
    canonical -> the column read; ``types``: that column's name in the file and type, where the file has types
    (Parquet), so a reason can say what a value was stored as."""
    out: list[tuple[str, str, str | None]] = []

    def text_of(name: str) -> str | None:
        return _text(mapped[name]) if name in mapped else None

    def integer(name: str, required: bool, sql_type: str = "bigint") -> None:
        """Exact whole numbers written as digits only: "1.5", "0x10", "1e1", "-3" or "u17" are rejected, never
        rounded or reinterpreted into another id. Ids must be positive (1 and up)."""
        raw = text_of(name)
        if raw is None:
            out.append((name, f"cast(null as {sql_type})", None))
            return
        typed = f"case when regexp_full_match({raw}, '[0-9]{{1,18}}') then try_cast({raw} as {sql_type}) end"
        column, stored = (types or {}).get(mapped[name], (mapped[name], ""))
        if name.endswith("_id") and stored.upper().split("(")[0] in ("FLOAT", "DOUBLE", "DECIMAL", "REAL"):
            typed = f"nullif({typed}, 0)"
            expected = (f"a positive whole number: the Parquet column {column[:60]!r} is {stored}, and an "
                        "id is never a fraction; store ids as an integer type (INT64)").replace("'", "''")
        elif name.endswith("_id"):
            typed = f"nullif({typed}, 0)"
            expected = ("a positive whole number written in digits (string ids such as \"u17\" or UUIDs are not "
                        "supported: map them to integers first)")
        else:
            expected = "a whole number written in digits"
        shown = f"'\"' || left({raw}, {MAX_ECHO}) || '\"'"
        if required:
            reason = f"case when {typed} is null then '{name} is not {expected}: ' || coalesce({shown}, 'empty') end"
        else:
            reason = f"case when {raw} is not null and {typed} is null then '{name} is not {expected}: ' || {shown} end"
        out.append((name, typed, reason))

    def text(name: str, categorical: bool = False) -> None:
        """A text column; a categorical one (a code like gender or occupation) refuses markup characters, so no
        value renders as HTML in the gate's Data Docs or anywhere else a value is shown."""
        raw = text_of(name)
        if raw is None:
            out.append((name, "cast(null as varchar)", None))
            return
        reason = (f"case when regexp_matches({raw}, '[<>]') then '{name} holds markup (< or >), which a "
                  f"category never needs: \"' || left({raw}, {MAX_ECHO}) || '\"' end") if categorical else None
        out.append((name, raw, reason))

    if spec.kind == "interactions":
        integer(USER_ID, True)
        integer(ITEM_ID, True)
        raw = text_of(RATING)
        if raw is None:
            out.append((RATING, "cast(null as double)", None))
        else:
            number = f"try_cast({raw} as double)"
            typed = f"case when isfinite({number}) then {number} end"  # NaN and inf are not ratings
            out.append((RATING, typed, f"case when {typed} is null then 'rating is not a finite number: ' || "
                                         f"coalesce('\"' || left({raw}, {MAX_ECHO}) || '\"', 'empty') end"))
        raw = text_of(TIMESTAMP)
        typed = _timestamp_expr(raw, spec.timestamp_format)
        expected = _TIMESTAMP_WORDS.get(spec.timestamp_format, f"a time in the format {spec.timestamp_format}")
        expected = expected.replace("'", "''")
        out.append((TIMESTAMP, typed, f"case when {typed} is null then 'timestamp is not {expected}: ' || "
                                 f"coalesce('\"' || left({raw}, {MAX_ECHO}) || '\"', 'empty') end"))
    elif spec.kind == "users":
        integer(USER_ID, True)
        integer("age", False, "integer")
        for name in ("gender", "occupation", "zip"):
            text(name, categorical=True)
    else:  # items
        integer(ITEM_ID, True)
        text("title")
        raw = text_of("release_date")
        if raw is None:
            out.append(("release_date", "cast(null as date)", None))
        else:
            typed = (f"try_strptime({raw}, {_literal(spec.date_format)})::date" if spec.date_format
                     else f"try_cast({raw} as date)")
            out.append(("release_date", typed,
                        f"case when {raw} is not null and {typed} is null then "
                        f"'release_date is not a date: \"' || left({raw}, {MAX_ECHO}) || '\"' end"))
        if spec.genre_flags:
            flags = [(_text(column), genre) for column, genre in spec.genre_flags]
            typed = ("list_filter([" + ", ".join(f"case when {t} = '1' then {_literal(g)} end" for t, g in flags)
                     + "], lambda x: x is not null)")
            bad = " or ".join(f"coalesce({t}, '0') not in ('0', '1')" for t, _ in flags)
            out.append(("genres", typed, f"case when {bad} then 'genre flags must be 0 or 1' end"))
        else:
            raw = text_of("genres")
            typed = ("cast([] as varchar[])" if raw is None else
                     f"coalesce(list_filter(list_transform(string_split({raw}, {_literal(spec.genres_separator)}), "
                     f"lambda x: trim(x)), lambda x: x <> ''), cast([] as varchar[]))")
            out.append(("genres", typed, None if raw is None else (
                f"case when regexp_matches({raw}, '[<>]') then 'genres hold markup (< or >): \"' || "
                f"left({raw}, {MAX_ECHO}) || '\"' end")))
    return out


def _positional(spec: FileSpec, available: tuple[str, ...]) -> tuple[FileSpec, dict[str, str], dict[str, str]]:
    """The file's columns under positional names (column0, column1, ...), so that no name from the file meets one
    of the ingest's own queries (a column named "rowid" shadowed DuckDB's row number, the rows' place; one named
    "file_row_number" failed a Parquet file). Returns the spec with its genre flags renamed, the canonical ->
    positional mapping (checked against the file's own names first) and file name -> positional name."""
    mapped = _source_columns(spec, available)
    if len(set(available)) != len(available):
        raise SchemaMismatchError(f"{spec.path}: the file repeats a column name ({capped(', '.join(available))})")
    positional = {name: f"column{i}" for i, name in enumerate(available)}
    spec = dataclasses.replace(spec, genre_flags=tuple((positional[c], g) for c, g in spec.genre_flags))
    return spec, {canonical: positional[column] for canonical, column in mapped.items()}, positional


def _parse(wh: db.Warehouse, spec: FileSpec) -> None:
    """Fill the temp table ``parsed_rows`` (raw, canonical columns, reason) and ``structural_rejects``, and the
    temp view ``parsed`` over them that adds each row's line. The file is read and typed in one statement, so no
    table of its text is kept (at 100 M rows, writing that table took 11-15 s, past the warehouse's memory).
    A row's line is its ``rowid`` in ``parsed_rows`` (file order: the statement keeps it, as
    ``preserve_insertion_order`` promises) plus what precedes the data: the header, and the malformed lines
    before it."""
    if spec.format == "parquet":
        described = wh.execute("select column_name, column_type from (describe select * from read_parquet($path))",
                               {"path": str(spec.path)}).fetchall()
        spec, mapped, positional = _positional(spec, tuple(name for name, _ in described))
        names = ", ".join(positional.values())
        source, params = f"read_parquet($path) as file ({names})", {"path": str(spec.path)}
        types = {positional[name]: (name, kind) for name, kind in described}
        first_line = 1
        # A Parquet file has no malformed rows: whatever it holds is read as rows.
        structural = "create or replace temp table structural_rejects (line_number bigint, raw varchar, reason varchar)"
    else:
        available = _read_header(spec) if spec.header else tuple(spec.names or ())
        if not available:
            raise SchemaMismatchError(
                f"{spec.path}: the file has no header line to name its columns; add one, or set header = false "
                f"and name the columns in the mapping"
            )
        spec, mapped, positional = _positional(spec, available)
        for table in ("raw_reject_errors", "raw_reject_scans"):
            wh.execute(f"drop table if exists {table}")
        source = f"(\n{wh.text('ingest/read_csv_raw')}\n) as file"
        params = {"path": str(spec.path), "header": spec.header, "delimiter": spec.delimiter, "quote": spec.quote,
                  "encoding": spec.encoding, "columns": dict.fromkeys(positional.values(), "VARCHAR")}
        types = {}
        first_line = 2 if spec.header else 1
        structural = wh.text("ingest/structural_rejects")  # from the reject tables the read fills
    raw_columns = tuple(positional.values())

    typed = _typed_columns(spec, mapped, types)
    raw_expr = "concat_ws(" + _literal(spec.delimiter) + ", " + ", ".join(
        f"coalesce(cast({db.quote_ident(c)} as varchar), '')" for c in raw_columns) + ")"
    selects = ",\n        ".join(f"{expr} as {db.quote_ident(name)}" for name, expr, _ in typed)
    reasons = [reason for _, _, reason in typed if reason]
    reason_expr = "nullif(concat_ws('; ', " + ", ".join(reasons) + "), '')" if reasons else "cast(null as varchar)"
    wh.execute(f"""
        create or replace temp table parsed_rows as
        select
            {raw_expr} as raw,
            {selects},
            {reason_expr} as reason
        from {source}
    """, params)
    wh.execute(structural)
    # An accepted row's line: its place among the accepted rows plus the header and the malformed lines
    # before it; a file without malformed rows (nearly every one) needs no join.
    line_expr, rows = f"p.rowid + {first_line:d}", "parsed_rows p"
    if wh.scalar("select count(*) from structural_rejects"):
        wh.execute(wh.text("ingest/line_steps"), {"first_line": first_line})
        line_expr += " + coalesce(s.skipped, 0)"
        rows += " asof left join line_steps s on p.rowid >= s.from_ordinal"
    wh.execute(f"create or replace temp view parsed as select {line_expr} as line_number, p.* from {rows}")


# ---------------------------------------------------------------------------------------------------------
# Staging and promotion.


COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd",
                    b"\xfd7zXZ": "xz"}


def compression_of(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(6)
    return next((kind for magic, kind in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)


def stage_file(
    wh: db.Warehouse, settings: Settings, spec: FileSpec, run_id: str, source: str
) -> FileResult:
    """Parse one file into staging, recording it in the ledger. Never raises for bad data in the file."""
    path = str(Path(spec.path).resolve())
    result = FileResult(path=path, kind=spec.kind, status="staged")
    if not Path(spec.path).exists():
        result.status, result.message = "failed", f"{path}: no such file"
        return result
    with private_copy(settings, Path(spec.path)) as copied:
        if isinstance(copied, str):  # not a regular file: named, never read (a FIFO would block forever)
            result.status, result.message = "failed", copied
            return result
        copy, sha, size = copied
        return _stage_copy(wh, dataclasses.replace(spec, path=copy), run_id, source, result, sha, size)


@contextlib.contextmanager
def private_copy(settings: Settings, path: Path):
    """The file's bytes, read once into a private copy under RECSYS_HOME and hashed while copying: what is
    hashed is exactly what is loaded, even when a producer replaces the file in between (write-then-rename
    uploads do). Yields (copy, sha256, size), or a message for anything that is not a regular file; opened
    without blocking, so a FIFO cannot hold the ingest (and its run lock) forever. The copy is removed after."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        yield f"{path}: cannot be read ({exc.strerror or exc}); check its permissions"
        return
    folder = settings.home / "ingest-copies" / uuid.uuid4().hex[:12]
    try:
        with os.fdopen(fd, "rb") as source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                yield f"{path}: not a regular file (a folder, FIFO or device); remove or rename it"
                return
            folder.mkdir(parents=True)
            copy = folder / path.name
            digest, size = hashlib.sha256(), 0
            with open(copy, "wb") as target:
                while block := source.read(1 << 20):
                    digest.update(block)
                    target.write(block)
                    size += len(block)
        yield copy, digest.hexdigest(), size
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stage_copy(wh: db.Warehouse, spec: FileSpec, run_id: str, source: str,
                result: FileResult, sha: str, size: int) -> FileResult:
    """Stage the private copy ``spec.path`` of the file ``result.path`` (messages name the original)."""
    path = result.path
    previous = wh.run("ingest/previous_load", {"sha256": sha, "kind": spec.kind})
    if previous:
        file_id, first_path, when = previous[0]
        result.status = "skipped"
        result.message = (f"already ingested as file {file_id} ({first_path}) at {when:%Y-%m-%d %H:%M:%S}; "
                          f"0 rows added")
        return result
    result.version = wh.run("ingest/next_version", {"path": path, "kind": spec.kind})[0][0]
    result.file_id = wh.scalar("select nextval('file_id_seq')")
    ledger = {"file_id": result.file_id, "run_id": run_id, "source": source, "kind": spec.kind, "path": path,
              "sha256": sha, "size_bytes": size, "version": result.version}
    try:
        if size == 0:
            raise SchemaMismatchError(f"{path}: the file is empty (0 bytes); nothing to load")
        if (kind := compression_of(Path(spec.path))) is not None:
            raise SchemaMismatchError(f"{path}: compressed files are not supported ({kind}): unpack it first")
        _parse(wh, spec)
    except (SchemaMismatchError, duckdb.Error, UnicodeError, OSError) as exc:
        message = (str(exc).splitlines()[0] if str(exc) else repr(exc)).replace(str(spec.path), path)
        result.status, result.message = "failed", capped(message)
        wh.run("ingest/insert_ledger", {**ledger, "rows_read": 0, "rows_accepted": 0,
                                                        "rows_rejected": 0, "status": "failed",
                                                        "message": result.message})
        return result

    n_good, n_bad = wh.execute("select count(*) filter (where reason is null), count(*) filter (where reason is not "
                               "null) from parsed_rows").fetchone()
    n_structural = wh.scalar("select count(*) from structural_rejects")
    result.rows_read = n_good + n_bad + n_structural
    result.rows_accepted = n_good
    result.rows_rejected = n_bad + n_structural
    result.message = "no data rows" if result.rows_read == 0 else ""
    with wh.transaction():
        params = {"run_id": run_id, "file_id": result.file_id}
        wh.run(f"ingest/stage_{spec.kind}", params)
        wh.run("ingest/insert_parse_rejects", {**params, "path": path, "kind": spec.kind})
        wh.run("ingest/insert_ledger", {**ledger, "rows_read": result.rows_read, "rows_accepted": n_good,
                                        "rows_rejected": result.rows_rejected, "status": "staged",
                                        "message": result.message})
    result.sample_rejects = [
        f"{path}:{line}: {reason}" for line, reason in wh.execute(
            "select line_number, reason from rejects where file_id = $file_id order by line_number limit 3",
            {"file_id": result.file_id}).fetchall()
    ]
    return result


def stage_batch(
    wh: db.Warehouse, settings: Settings, specs: list[FileSpec], run_id: str, source: str
) -> IngestReport:
    order = {kind: i for i, kind in enumerate(schema.FILE_KINDS)}
    results = [stage_file(wh, settings, spec, run_id, source)
               for spec in sorted(specs, key=lambda s: order[s.kind])]
    return IngestReport(run_id=run_id, files=results)


def promote_batch(
    wh: db.Warehouse, run_id: str,
    register_unknown_users: bool = False, register_unknown_items: bool = False, duplicates_found: bool = False,
) -> None:
    """Move a staged (and validated) batch into the final tables in one transaction. ``duplicates_found``: the
    batch's duplicate interactions (``ingest/batch_duplicates``) were found on this connection since its
    staged rows last changed (the gate finds them); otherwise they are found here."""
    params = {"run_id": run_id}
    with wh.transaction():
        if not duplicates_found:
            wh.run("ingest/batch_duplicates", params)
        for kind in ("users", "items", "interactions"):
            wh.run(f"ingest/plan_{kind}", params)
            if kind == "interactions":
                if register_unknown_users:
                    wh.run("ingest/register_unknown_users", params)
                if register_unknown_items:
                    wh.run("ingest/register_unknown_items", params)
            wh.run(f"ingest/promote_{kind}")
            for file_id, duplicates in wh.run("ingest/count_duplicates", {"plan_table": f"plan_{kind}"}):
                wh.run("ingest/mark_loaded", {"file_id": file_id, "duplicates": duplicates})
            wh.run(f"ingest/clear_staging_{kind}", params)
        wh.run("ingest/finish_batch", params)


def batch_report(wh: db.Warehouse, report: IngestReport) -> IngestReport:
    """Refresh the per-file numbers of a report from the ledger (after the gate and promotion)."""
    rows = {row[0]: row for row in wh.run("ingest/batch_summary", {"run_id": report.run_id})}
    for result in report.files:
        row = rows.get(result.file_id)
        if row is None:
            continue
        (_, _, _, result.status, result.version, result.rows_read, result.rows_accepted, result.rows_rejected,
         result.rows_duplicate, result.rows_held, message) = row
        result.message = message or result.message
    return report


def format_report(report: IngestReport) -> str:
    lines = [f"ingest run {report.run_id}"]
    header = (f"  {'status':8} {'kind':12} {'read':>10} {'accepted':>10} {'rejected':>9} {'duplicate':>9} "
              f"{'held':>8}  file")
    lines.append(header)
    for f in report.files:
        lines.append(f"  {f.status:8} {f.kind:12} {f.rows_read:>10,} {f.rows_accepted:>10,} {f.rows_rejected:>9,} "
                     f"{f.rows_duplicate:>9,} {f.rows_held:>8,}  {f.path}")
        if f.message:
            lines.append(f"           {f.message}")
        for sample in f.sample_rejects:
            lines.append(f"           rejected {sample}")
    t = report.totals()
    lines.append(f"  {'total':8} {'':12} {t['rows_read']:>10,} {t['rows_accepted']:>10,} {t['rows_rejected']:>9,} "
                 f"{t['rows_duplicate']:>9,} {t['rows_held']:>8,}")
    return "\n".join(lines)
