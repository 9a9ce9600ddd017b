"""Property-based fuzzing of ingest: random rows, delimiters, quotes and encodings; nothing is ever lost or
altered. For every file, rows read = accepted + rejected + duplicate + held, and every accepted row holds
exactly the values an independent parse of its source line gives."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys import db
from recsys.settings import Settings
from tasks import ingest
from tasks.ingest import EPOCH_MAX
from tasks.sources import tabular_specs

GOOD_ID = st.integers(1, 10**12).map(str)
BAD_ID = st.sampled_from(["", "0", "-4", "1.5", "0x10", "1e3", "u17", " ", "12a", "9" * 25, "NaN", "١٢"])
GOOD_RATING = st.one_of(st.integers(1, 5).map(str), st.floats(1, 5, allow_nan=False).map(lambda f: f"{f:.2f}"))
BAD_RATING = st.sampled_from(["abc", "", "five", "--1", "nan", "NaN", "inf", "-inf", "Infinity"])
GOOD_TS = st.integers(631_152_000, 1_700_000_000).map(str)
BAD_TS = st.sampled_from(["notatime", "", "2020-13-45", "yesterday", "nan", "inf", "-inf", "infinity", "-infinity",
                          "1e20", "-1e20", "99999999999999999"])
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), max_size=12)


def field(good, bad):
    return st.one_of(good, good, good, bad, TEXT)


ROW = st.tuples(field(GOOD_ID, BAD_ID), field(GOOD_ID, BAD_ID), field(GOOD_RATING, BAD_RATING),
                field(GOOD_TS, BAD_TS))
# Structurally broken lines: too few or too many fields. (A stray unclosed quote is left to the example tests:
# CSV parsers legitimately disagree on where such a record ends.)
MALFORMED = st.sampled_from(["1,2", "1,2,3,4,5", "7", "1,2,3,4,5,6,7"])


def expected(row: tuple[str, str, str, str]) -> tuple | None:
    """An independent reading of one row: the typed values, or None if it must be rejected."""
    user, item, rating, ts = (v.strip() for v in row)
    ids = []
    for value in (user, item):
        if not (value.isascii() and value.isdigit() and len(value) <= 18 and int(value) > 0):
            return None
        ids.append(int(value))
    try:
        number = float(rating)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if not ts.isascii() or not ts.isdigit() or int(ts) > EPOCH_MAX:
        return None
    return ids[0], ids[1], number, datetime.fromtimestamp(int(ts), UTC).replace(tzinfo=None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.one_of(ROW, ROW, ROW, MALFORMED), min_size=1, max_size=25),
       delimiter=st.sampled_from([",", ";", "\t", "|"]), encoding=st.sampled_from(["utf-8", "latin-1"]),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
def test_ingest_never_loses_or_alters_a_row(tmp_path_factory, rows, delimiter, encoding, quoting):
    home = tmp_path_factory.mktemp("fuzz")
    settings_ = Settings(home=home)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator="\n")
    writer.writerow(["uid", "iid", "stars", "when"])
    wanted: dict[int, tuple | None] = {}
    for line, row in enumerate(rows, start=2):
        if isinstance(row, str):  # a structurally broken line, written as is
            buffer.write(row.replace(",", delimiter) + "\n")
            wanted[line] = None
        else:
            writer.writerow(row)
            wanted[line] = expected(row)
    path = home / "ratings.csv"
    path.write_bytes(buffer.getvalue().encode(encoding, errors="replace"))
    # Records, not lines: an unclosed quote legitimately carries a record over the next line break.
    records = len(list(csv.reader(io.StringIO(buffer.getvalue()), delimiter=delimiter))) - 1
    mapping = {"interactions": {"user_id": "uid", "item_id": "iid", "rating": "stars", "timestamp": "when",
                                "delimiter": delimiter, "encoding": encoding}}
    with db.warehouse(settings_) as con:
        report = ingest.stage_batch(con, settings_, tabular_specs("csv", path, mapping), "fuzz", "csv")
        staged = {line: (u, i, r, t) for line, u, i, r, t in con.execute(
            "select line_number, user_id, item_id, rating, ts from staging_interactions").fetchall()}
        ingest.promote_batch(con, "fuzz", register_unknown_users=True, register_unknown_items=True)
        ledger = con.execute("select status, rows_read, rows_accepted, rows_rejected, rows_duplicate, rows_held "
                             "from ingest_ledger").fetchall()
        loaded = con.scalar("select count(*) from interactions")
    (result,) = report.files
    if result.status == "failed":  # the whole file was unreadable: it says so, and nothing was loaded
        assert result.message and loaded == 0
        return
    for status, read, accepted, rejected, duplicate, held in ledger:
        assert read == accepted + rejected + duplicate + held, status
        assert read == records
        assert accepted + duplicate == len(staged)
    assert loaded == ledger[0][2]
    if records != len(rows):
        return  # lines and records differ: the per-line comparison below does not apply
    for line, values in staged.items():  # nothing accepted that an independent parse would not accept as is
        assert wanted.get(line) is not None, (line, values)
        u, i, r, t = wanted[line]
        assert values[:2] == (u, i) and abs(values[2] - r) < 1e-9 and values[3] == t, (line, values, wanted[line])


ODD_FLOATS = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e20, -1e20, 1e300])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(-3, 10**6), st.integers(-3, 10**6),
                               st.one_of(st.floats(1, 5), ODD_FLOATS), st.one_of(st.floats(6.4e8, 1.7e9), ODD_FLOATS)),
                     min_size=1, max_size=25))
def test_parquet_ingest_never_loses_a_row_or_keeps_a_non_finite_value(tmp_path_factory, rows):
    """Parquet with numeric columns: NaN, inf and out-of-range times are rejected row by row, never loaded,
    never failing the file; rows read = accepted + rejected + duplicate + held."""
    home = tmp_path_factory.mktemp("fuzz-parquet")
    settings_ = Settings(home=home)
    users, items, ratings, times = (list(column) for column in zip(*rows, strict=True))
    pq.write_table(pa.table({"u": users, "i": items, "r": ratings, "t": times}), home / "events.parquet")
    mapping = {"interactions": {"user_id": "u", "item_id": "i", "rating": "r", "timestamp": "t"}}
    with db.warehouse(settings_) as con:
        report = ingest.stage_batch(con, settings_, tabular_specs("parquet", home / "events.parquet", mapping),
                                    "fuzz", "parquet")
        staged = con.execute("select line_number, rating, epoch(ts) from staging_interactions").fetchall()
        ingest.promote_batch(con, "fuzz", register_unknown_users=True, register_unknown_items=True)
        ((read, accepted, rejected, duplicate, held),) = con.execute(
            "select rows_read, rows_accepted, rows_rejected, rows_duplicate, rows_held from ingest_ledger").fetchall()
    (result,) = report.files
    assert result.status != "failed", result.message
    assert read == len(rows) == accepted + rejected + duplicate + held
    good = {line for line, (u, i, r, t) in enumerate(rows, start=1)
            if u > 0 and i > 0 and math.isfinite(r) and math.isfinite(t) and abs(t) <= EPOCH_MAX}
    assert {line for line, _, _ in staged} == good
    assert all(math.isfinite(r) and math.isfinite(t) for _, r, t in staged)
