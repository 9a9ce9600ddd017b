"""Ingest: every reader, the mapping, the ledger, the accounting identity and unparsable rows."""

from __future__ import annotations

import gzip
import hashlib
import os
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import ingest, validate
from tasks.sources import FileSpec, movielens_specs, synthetic_specs, tabular_specs

MAPPING = {"interactions": {"user_id": "uid", "item_id": "iid", "rating": "stars", "timestamp": "when"}}


def load(con, settings, specs, run_id="r1", source="csv", **kwargs):
    report = ingest.stage_batch(con, settings, specs, run_id, source)
    kinds = {s.kind for s in specs}
    ingest.promote_batch(con, run_id, register_unknown_users="users" not in kinds,
                         register_unknown_items="items" not in kinds)
    return ingest.batch_report(con, report)


def count(con, table):
    return con.scalar(f"select count(*) from {table}")


def assert_identity(con):
    bad = con.execute("""select path from ingest_ledger
                         where rows_read <> rows_accepted + rows_rejected + rows_duplicate + rows_held""").fetchall()
    assert bad == []


def test_movielens_100k_loads_fully_and_decodes_latin1(con, settings, ml100k_dir):
    report = load(con, settings, movielens_specs(ml100k_dir), source="movielens-100k")
    assert [f.status for f in report.files] == ["loaded"] * 3
    assert count(con, "interactions") == 100_000
    assert count(con, "users") == 943
    assert count(con, "items") == 1682
    titles = dict(con.execute("select item_id, title from items where item_id in (1, 543, 1633)").fetchall())
    assert titles == {1: "Toy Story (1995)", 543: "Misérables, Les (1995)", 1633: "Á köldum klaka (Cold Fever) (1994)"}
    toy = con.execute("select genres, release_date::varchar from items where item_id = 1").fetchall()[0]
    assert toy == (["Animation", "Children's", "Comedy"], "1995-01-01")
    first = con.execute("select ts::varchar from interactions where user_id = 196 and item_id = 242").fetchall()
    assert first == [("1997-12-04 15:55:49",)]  # 881250949 read as UTC epoch seconds
    assert_identity(con)

    again = load(con, settings, movielens_specs(ml100k_dir), run_id="r2", source="movielens-100k")
    assert [f.status for f in again.files] == ["skipped"] * 3
    assert all("0 rows added" in f.message for f in again.files)
    assert count(con, "interactions") == 100_000


def test_synthetic_source_round_trip(con, settings, small_synthetic):
    report = load(con, settings, synthetic_specs(small_synthetic), source="synthetic")
    assert report.totals()["rows_rejected"] == 0
    assert count(con, "interactions") == 9000
    assert count(con, "users") == 300 and count(con, "items") == 120
    assert con.scalar("select count(*) from items where len(genres) = 0") == 0


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_unparsable_rows_are_kept_with_line_and_reason(con, settings, tmp_path):
    f = write(tmp_path / "ratings.csv", "uid,iid,stars,when\n"
              "1,10,5,881250949\n"       # 2 good
              "1,11\n"                    # 3 wrong column count (too few)
              "x,12,3,881250949\n"       # 4 non-numeric user id
              "2,13,4,881250949,9\n"     # 5 wrong column count (too many)
              "3,14,4,notatime\n"        # 6 unparsable timestamp
              "4,15,abc,881250949\n"     # 7 non-numeric rating
              "4,16,3.5,2020-01-02T03:04:05\n")  # 8 good, ISO time
    report = load(con, settings, tabular_specs("csv", f, MAPPING))
    (result,) = report.files
    assert (result.rows_read, result.rows_accepted, result.rows_rejected) == (7, 2, 5)
    rejects = dict(con.execute("select line_number, reason from rejects order by 1").fetchall())
    assert sorted(rejects) == [3, 4, 5, 6, 7]
    assert "malformed row" in rejects[3] and "Found: 2" in rejects[3]
    assert 'user_id is not a positive whole number written in digits' in rejects[4] and '"x"' in rejects[4]
    assert "too many columns" in rejects[5]
    assert 'timestamp is not epoch seconds or an ISO date-time: "notatime"' in rejects[6]
    assert 'rating is not a finite number: "abc"' in rejects[7]
    raw = dict(con.execute("select line_number, raw from rejects").fetchall())
    assert raw[4] == "x,12,3,881250949" and raw[5] == "2,13,4,881250949,9"
    assert count(con, "interactions") == 2
    assert_identity(con)


def test_line_numbers_hold_whatever_the_file_names_its_other_columns(con, settings, tmp_path):
    """Accepted rows are numbered by their place in the file, not by a column of it: the numbering read a
    column named ``rowid`` as the row's place (DuckDB's own name for it, shadowed by the file's column), and a
    column named ``ordinal`` clashed with its own."""
    f = write(tmp_path / "ratings.csv", "uid,iid,stars,when,rowid,ordinal\n"
              "1,10,5,881250949,7,x\n"     # 2 good
              "1,11\n"                       # 3 malformed
              "1,12\n"                       # 4 malformed
              "2,13,4,881250949,0,y\n"     # 5 good
              "3,14\n"                       # 6 malformed
              "3,15,4,881250949,1,z\n")    # 7 good
    (result,) = ingest.stage_batch(con, settings, tabular_specs("csv", f, MAPPING), "r1", "csv").files
    assert (result.status, result.rows_read, result.rows_accepted, result.rows_rejected) == ("staged", 6, 3, 3)
    assert con.execute("select line_number from rejects order by 1").fetchall() == [(3,), (4,), (6,)]
    staged = con.execute("select line_number, item_id from staging_interactions order by 1").fetchall()
    assert staged == [(2, 10), (5, 13), (7, 15)]


def test_line_numbers_hold_in_a_file_read_in_parallel_pieces(con, settings, tmp_path):
    """The file is read and typed in one statement, in pieces on every thread, and each row's line is its place
    in what that statement kept: on a file of many pieces, with malformed lines (which the read drops) and
    unparsable values (which it keeps) spread through it, every staged row and every reject keeps its own line.
    Each good row's user id is its line number, so a row numbered by another's place is seen."""
    lines, malformed, unparsable = ["uid,iid,stars,when"], [], []
    for line in range(2, 600_002):
        if line % 50_021 == 0 or line == 600_001:
            lines.append(f"{line},7")  # a column short
            malformed.append(line)
        elif line % 70_001 == 0:
            lines.append(f"{line},x{line},4,881250949")  # an item id that is not one
            unparsable.append(line)
        else:
            lines.append(f"{line},{line % 97 + 1},4,881250949")
    f = write(tmp_path / "ratings.csv", "\n".join(lines) + "\n")
    (result,) = ingest.stage_batch(con, settings, tabular_specs("csv", f, MAPPING), "r1", "csv").files
    good = 600_000 - len(malformed) - len(unparsable)
    assert (result.rows_read, result.rows_accepted, result.rows_rejected) == (600_000, good, 600_000 - good)
    assert con.execute("select count(*), count(*) filter (where line_number = user_id) "
                       "from staging_interactions").fetchall() == [(good, good)]
    rejects = con.execute("select line_number, raw from rejects order by 1").fetchall()
    assert [line for line, _ in rejects] == sorted(malformed + unparsable)
    assert all(raw.startswith(f"{line},") for line, raw in rejects)


@pytest.mark.parametrize("bad", ["1.5", "0x10", "1e1", "-3", "0", "+4", "u17", "2.0", "1_000",
                                 "3fa85f64-5717-4562-b3fc-2c963f66afa6", "99999999999999999999"])
def test_ids_are_exact_digits_or_rejected(con, settings, tmp_path, bad):
    """Never rounded or reinterpreted into another user: try_cast turned "1.5" into 2 and "0x10" into 16."""
    f = write(tmp_path / "ids.csv", f"uid,iid,stars,when\n2,10,5,881250949\n{bad},11,4,881250949\n"
                                    f"3,{bad},4,881250949\n007,12,3,881250949\n")
    report = load(con, settings, tabular_specs("csv", f, MAPPING))
    (result,) = report.files
    assert (result.rows_read, result.rows_accepted, result.rows_rejected) == (4, 2, 2)
    reasons = [r for (r,) in con.execute("select reason from rejects order by line_number").fetchall()]
    assert "user_id is not a positive whole number" in reasons[0] and "item_id is not" in reasons[1]
    assert "string ids" in reasons[0]
    assert sorted(con.execute("select user_id, item_id from interactions").fetchall()) == [(2, 10), (7, 12)]
    assert_identity(con)


def test_a_huge_bad_value_is_not_stored_whole_in_its_reason(con, settings, tmp_path):
    f = write(tmp_path / "big.csv", "uid,iid,stars,when\n" + "x" * 100_000 + ",1,4,881250949\n")
    load(con, settings, tabular_specs("csv", f, MAPPING))
    ((reason,),) = con.execute("select reason from rejects").fetchall()
    assert len(reason) < 500


def test_empty_and_unreadable_files_fail_alone(con, settings, tmp_path):
    good = write(tmp_path / "b_good.csv", "uid,iid,stars,when\n1,1,4,881250949\n")
    empty = write(tmp_path / "a_empty.csv", "")
    wrong = write(tmp_path / "c_wrong.csv", "a;b;c\n1;2;3\n")
    report = load(con, settings, tabular_specs("csv", tmp_path, MAPPING))
    status = {r.path.rsplit("/", 1)[1]: (r.status, r.message) for r in report.files}
    assert status["a_empty.csv"][0] == "failed" and "empty" in status["a_empty.csv"][1]
    assert status["c_wrong.csv"][0] == "failed" and "uid, iid, stars, when" in status["c_wrong.csv"][1]
    assert status["b_good.csv"][0] == "loaded"
    assert count(con, "interactions") == 1
    failed = con.execute("select path, message from ingest_ledger where status = 'failed' order by path").fetchall()
    assert [p.rsplit("/", 1)[1] for p, _ in failed] == ["a_empty.csv", "c_wrong.csv"]
    assert good.exists() and empty.exists() and wrong.exists()


def test_duplicates_within_and_across_files_are_counted_not_loaded(con, settings, tmp_path):
    write(tmp_path / "day1.csv", "uid,iid,stars,when\n1,1,4,100\n1,1,4,100\n2,2,3,100\n")
    first = load(con, settings, tabular_specs("csv", tmp_path / "day1.csv", MAPPING))
    assert (first.files[0].rows_accepted, first.files[0].rows_duplicate) == (2, 1)
    write(tmp_path / "day2.csv", "uid,iid,stars,when\n2,2,3,100\n3,3,5,200\n")
    second = load(con, settings, tabular_specs("csv", tmp_path / "day2.csv", MAPPING), run_id="r2")
    assert (second.files[0].rows_accepted, second.files[0].rows_duplicate) == (1, 1)
    assert count(con, "interactions") == 3
    assert_identity(con)


def test_changed_file_at_known_path_is_a_new_version(con, settings, tmp_path):
    f = write(tmp_path / "ratings.csv", "uid,iid,stars,when\n1,1,4,100\n")
    load(con, settings, tabular_specs("csv", f, MAPPING))
    write(f, "uid,iid,stars,when\n1,1,4,100\n1,2,5,200\n")
    report = load(con, settings, tabular_specs("csv", f, MAPPING), run_id="r2")
    (result,) = report.files
    assert (result.version, result.rows_accepted, result.rows_duplicate) == (2, 1, 1)
    assert con.execute("select version from ingest_ledger order by file_id").fetchall() == [(1,), (2,)]
    assert count(con, "interactions") == 2


def test_mapping_toml_users_items_and_iso_times(con, settings, tmp_path):
    write(tmp_path / "people.csv", "id;years;sex;job;postcode\n7;31;F;writer;01234\n8;;M;;\n")
    write(tmp_path / "things.csv", 'sku;name;genres\n100;"A; film";Comedy|Drama\n101;Plain;\n')
    write(tmp_path / "events.csv", "who;what;when\n7;100;2024-05-01 10:00:00\n8;101;2024-05-02\n")
    mapping_file = write(tmp_path / "mapping.toml", """
[interactions]
path = "events.csv"
user_id = "who"
item_id = "what"
timestamp = "when"
timestamp_format = "iso"
delimiter = ";"
[users]
path = "people.csv"
user_id = "id"
age = "years"
gender = "sex"
occupation = "job"
zip = "postcode"
delimiter = ";"
[items]
path = "things.csv"
item_id = "sku"
title = "name"
genres = "genres"
delimiter = ";"
""")
    from tasks.sources import load_mapping

    specs = tabular_specs("csv", None, load_mapping(mapping_file), base_dir=tmp_path)
    report = load(con, settings, specs)
    assert [f.status for f in report.files] == ["loaded"] * 3
    assert con.execute("select * exclude (run_id, file_id) from users order by 1").fetchall() == [
        (7, 31, "F", "writer", "01234"), (8, None, "M", None, None)]
    assert con.execute("select item_id, title, genres from items order by 1").fetchall() == [
        (100, "A; film", ["Comedy", "Drama"]), (101, "Plain", [])]
    assert con.execute("select user_id, rating, ts::varchar from interactions order by 1").fetchall() == [
        (7, None, "2024-05-01 10:00:00"), (8, None, "2024-05-02 00:00:00")]


def test_parquet_reader_with_mapping(con, settings, tmp_path):
    table = pa.table({"u": ["1", "2", "zz"], "i": [5, 6, 7], "r": [4.0, 3.0, 2.0], "t": [100, 200, 300]})
    pq.write_table(table, tmp_path / "events.parquet")
    mapping = {"interactions": {"user_id": "u", "item_id": "i", "rating": "r", "timestamp": "t"}}
    report = load(con, settings, tabular_specs("parquet", tmp_path / "events.parquet", mapping), source="parquet")
    (result,) = report.files
    assert (result.rows_read, result.rows_accepted, result.rows_rejected) == (3, 2, 1)
    assert con.execute("select line_number, raw from rejects").fetchall() == [(3, "zz,7,2.0,300")]
    # Without a users file, every user seen gets a bare users row, so referential integrity holds.
    assert count(con, "users") == 2 and count(con, "items") == 2



def test_a_parquet_file_may_name_its_columns_as_duckdb_names_its_own(con, settings, tmp_path):
    """Columns named ``file_row_number`` (the row number DuckDB's Parquet reader adds) or ``rowid``: the file
    failed with a binder error before; its rows are numbered by their place in the file, not by those columns."""
    table = pa.table({"file_row_number": [9, 9, 9], "rowid": [5, 0, 1], "u": [1, 0, 3], "i": [5, 6, 7],
                      "r": [4.0, 3.0, 2.0], "t": [100, 200, 300]})
    pq.write_table(table, tmp_path / "events.parquet")
    mapping = {"interactions": {"user_id": "u", "item_id": "i", "rating": "r", "timestamp": "t"}}
    (result,) = ingest.stage_batch(con, settings, tabular_specs("parquet", tmp_path / "events.parquet", mapping),
                                   "r1", "parquet").files
    assert (result.status, result.rows_read, result.rows_accepted, result.rows_rejected) == ("staged", 3, 2, 1)
    assert con.execute("select line_number, raw from rejects").fetchall() == [(2, "9,0,0,6,3.0,200")]  # rows from 1
    staged = con.execute("select line_number, user_id, item_id from staging_interactions order by 1").fetchall()
    assert staged == [(1, 1, 5), (3, 3, 7)]

def test_mapping_must_name_required_columns(tmp_path):
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match="does not name ts"):
        FileSpec(tmp_path / "x.csv", "interactions", columns={"user_id": "a", "item_id": "b"})


def test_bad_utf8_is_rejected_with_encoding_hint(con, settings, tmp_path):
    f = tmp_path / "latin.csv"
    f.write_bytes(b"uid,iid,stars,when\n1,1,4,100\n2,2,3,200\n" + "3,3,5,300,é\n".encode("latin-1"))
    report = load(con, settings, tabular_specs("csv", f, MAPPING))
    assert report.files[0].rows_rejected == 1
    assert "encoding" in con.scalar("select reason from rejects")


@pytest.mark.parametrize(("opener", "kind"), [(gzip.open, "gzip"), (None, "zip")])
def test_compressed_files_fail_with_a_plain_message(con, settings, tmp_path, opener, kind):
    path = tmp_path / "ratings.csv"
    text = "uid,iid,stars,when\n1,10,5,881250949\n"
    if opener is None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("ratings.csv", text)
    else:
        with opener(path, "wt") as fh:
            fh.write(text)
    (result,) = load(con, settings, tabular_specs("csv", path, MAPPING)).files
    assert result.status == "failed"
    assert result.message.endswith(f"compressed files are not supported ({kind}): unpack it first")


def test_a_file_of_string_ids_is_held_with_its_reasons(con, settings, tmp_path):
    f = write(tmp_path / "s.csv", "uid,iid,stars,when\n" + "".join(f"u{k},i{k},4,881250949\n" for k in range(5)))
    ingest.stage_batch(con, settings, tabular_specs("csv", f, MAPPING), "r1", "csv")
    result = validate.validate_batch(con, settings, "r1", raise_on_failure=False)
    assert not result.passed
    message = validate.failure_message(result)
    assert "5 rows of this batch were rejected" in message
    assert "string ids" in message and "(5)" in message


def test_the_gate_says_when_a_file_failed_rather_than_already_loaded(con, settings, tmp_path):
    write(tmp_path / "a_empty.csv", "")
    ingest.stage_batch(con, settings, tabular_specs("csv", tmp_path / "a_empty.csv", MAPPING), "r1", "csv")
    result = validate.validate_batch(con, settings, "r1", raise_on_failure=False)
    assert "could not be parsed" in validate.format_gate(result)
    assert "already loaded" not in validate.format_gate(result)


@pytest.mark.parametrize("fmt", ["auto", "epoch", "iso"])
def test_non_finite_and_out_of_range_values_are_rejected_per_row(con, settings, tmp_path, fmt):
    """NaN, inf, "infinity" and 1e20 among good rows: each bad row rejected with its line and reason, the good
    rows loaded (one such value used to fail the whole file, or load a NULL epoch that broke every later night)."""
    good = "881250949" if fmt != "iso" else "1997-12-04T15:55:49"
    f = write(tmp_path / "odd.csv", "uid,iid,stars,when\n"
              f"1,10,5,{good}\n"          # 2 good
              "1,11,4,nan\n"              # 3
              "1,12,4,inf\n"              # 4
              "1,13,4,-infinity\n"        # 5
              "1,14,4,infinity\n"         # 6
              "1,15,4,1e20\n"             # 7
              f"1,16,nan,{good}\n"        # 8 rating NaN
              f"1,17,inf,{good}\n"        # 9 rating inf
              f"2,18,3,{good}\n")         # 10 good
    mapping = {"interactions": {**MAPPING["interactions"], "timestamp_format": fmt}}
    report = load(con, settings, tabular_specs("csv", f, mapping))
    (result,) = report.files
    assert result.status == "loaded"
    assert (result.rows_read, result.rows_accepted, result.rows_rejected) == (9, 2, 7)
    rejects = dict(con.execute("select line_number, reason from rejects order by 1").fetchall())
    assert sorted(rejects) == [3, 4, 5, 6, 7, 8, 9]
    assert all(rejects[line].startswith("timestamp is not") for line in (3, 4, 5, 6, 7))
    assert 'rating is not a finite number: "nan"' in rejects[8] and '"inf"' in rejects[9]
    assert con.scalar("select count(*) from interactions where not isfinite(ts) or ts is null") == 0
    assert con.scalar("select count(*) from interactions where not isfinite(rating)") == 0
    assert_identity(con)


def test_non_finite_parquet_values_are_rejected_per_row(con, settings, tmp_path):
    table = pa.table({"u": [1, 2, 3, 4, 5], "i": [5, 6, 7, 8, 9], "r": [4.0, float("nan"), 3.0, float("inf"), 2.0],
                      "t": [881250949.0, 881250950.0, float("inf"), 881250951.0, 1e20]})
    pq.write_table(table, tmp_path / "events.parquet")
    mapping = {"interactions": {"user_id": "u", "item_id": "i", "rating": "r", "timestamp": "t"}}
    report = load(con, settings, tabular_specs("parquet", tmp_path / "events.parquet", mapping), source="parquet")
    (result,) = report.files
    assert (result.rows_read, result.rows_accepted, result.rows_rejected) == (5, 1, 4)
    reasons = dict(con.execute("select line_number, reason from rejects order by 1").fetchall())
    assert sorted(reasons) == [2, 3, 4, 5]  # Parquet rows are numbered from 1
    assert "rating is not a finite number" in reasons[2] and "timestamp is not" in reasons[3]
    assert "rating is not a finite number" in reasons[4] and "timestamp is not" in reasons[5]
    assert_identity(con)


def test_what_is_loaded_is_what_was_hashed_even_if_the_file_is_swapped(con, settings, tmp_path, monkeypatch):
    """A producer replacing the file (write-then-rename) between hashing and loading used to record the
    first file's hash with the second file's rows, so the first file could never be loaded again."""
    first = "uid,iid,stars,when\n1,10,5,881250949\n"
    second = "uid,iid,stars,when\n2,20,4,881250949\n3,30,4,881250949\n"
    f = write(tmp_path / "ratings.csv", first)
    real = ingest._stage_copy

    def swap_then_stage(*args, **kwargs):
        (tmp_path / "incoming.csv").write_text(second)
        os.replace(tmp_path / "incoming.csv", f)  # the upload lands after the hash, before the load
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "_stage_copy", swap_then_stage)
    load(con, settings, tabular_specs("csv", f, MAPPING))
    monkeypatch.setattr(ingest, "_stage_copy", real)
    assert con.execute("select user_id, item_id from interactions").fetchall() == [(1, 10)]
    (sha,) = con.execute("select sha256 from ingest_ledger").fetchone()
    assert sha == hashlib.sha256(first.encode()).hexdigest()
    again = load(con, settings, tabular_specs("csv", f, MAPPING), run_id="r2")  # the second file, now
    assert [r.status for r in again.files] == ["loaded"]
    assert count(con, "interactions") == 3
    assert not (settings.home / "ingest-copies").exists() or not any((settings.home / "ingest-copies").iterdir())


def test_a_fifo_or_folder_given_as_the_file_fails_alone_without_blocking(con, settings, tmp_path):
    os.mkfifo(tmp_path / "p.csv")
    (tmp_path / "d.csv").mkdir()
    good = write(tmp_path / "good.csv", "uid,iid,stars,when\n1,10,5,881250949\n")
    specs = [*tabular_specs("csv", tmp_path / "p.csv", MAPPING), *tabular_specs("csv", good, MAPPING)]
    report = ingest.stage_batch(con, settings, specs, "r1", "csv")
    assert [f.status for f in report.files] == ["failed", "staged"]
    assert "not a regular file" in report.files[0].message and "p.csv" in report.files[0].message


def test_markup_in_a_category_is_rejected_per_row(con, settings, tmp_path):
    """A users file whose gender held <img src=x onerror=...> loaded (the check was a warning) and rendered
    unescaped in the Data Docs page: a category never needs < or >."""
    users = write(tmp_path / "users.csv", "user_id,age,gender,occupation,zip\n"
                  "1,30,F,writer,12345\n"
                  "2,31,<img src=x onerror=alert(1)>,writer,12345\n"
                  "3,32,M,<b>boss</b>,12345\n")
    items = write(tmp_path / "items.csv", "item_id,title,genres\n1,Heat (1995),Action\n2,Up (2009),<script>\n")
    inter = write(tmp_path / "ratings.csv", "uid,iid,stars,when\n1,1,5,881250949\n")
    specs = tabular_specs("csv", inter, MAPPING, users=users, items=items)
    load(con, settings, specs)
    reasons = dict(con.execute("select line_number || ':' || kind, reason from rejects").fetchall())
    assert set(reasons) == {"3:users", "4:users", "3:items"}
    assert "gender holds markup" in reasons["3:users"] and "occupation holds markup" in reasons["4:users"]
    assert "genres hold markup" in reasons["3:items"]
    assert con.execute("select user_id from users order by 1").fetchall() == [(1,)]
    assert_identity(con)


def test_float_ids_in_parquet_are_named_as_floats_not_strings(con, settings, tmp_path):
    table = pa.table({"u": [1.0, 2.0], "i": [5, 6], "r": [4.0, 3.0], "t": [881250949, 881250950]})
    pq.write_table(table, tmp_path / "floats.parquet")
    mapping = {"interactions": {"user_id": "u", "item_id": "i", "rating": "r", "timestamp": "t"}}
    load(con, settings, tabular_specs("parquet", tmp_path / "floats.parquet", mapping), source="parquet")
    reasons = [r for (r,) in con.execute("select reason from rejects").fetchall()]
    assert len(reasons) == 2
    assert all("the Parquet column 'u' is DOUBLE" in r and "INT64" in r and "string ids" not in r for r in reasons)


def test_a_header_only_file_is_a_no_op_not_a_held_batch(con, settings, tmp_path):
    f = write(tmp_path / "empty.csv", "uid,iid,stars,when\n")
    report = ingest.stage_batch(con, settings, tabular_specs("csv", f, MAPPING), "r1", "csv")
    assert report.files[0].message == "no data rows"
    result = validate.validate_batch(con, settings, "r1", all_users_known=True, all_items_known=True)
    assert result.passed and result.outcomes == []
    assert "nothing new was staged" in validate.format_gate(result) and "no data rows" in validate.format_gate(result)
    ingest.promote_batch(con, "r1")
    assert count(con, "interactions") == 0
    assert con.execute("select status from ingest_ledger").fetchall() == [("loaded",)]
    assert_identity(con)
