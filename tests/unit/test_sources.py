"""Source resolution: clear errors for missing folders, offline downloads and bad mappings."""

from __future__ import annotations

import pytest

from recsys.errors import ConfigError, SourceUnavailableError
from recsys.settings import Settings
from tasks.sources import (
    download_movielens_100k,
    load_mapping,
    movielens_specs,
    resolve_source,
    tabular_specs,
    unread_landing_files,
)


def test_offline_download_says_how_to_pass_a_local_path(tmp_path):
    with pytest.raises(SourceUnavailableError, match="--path /path/to/ml-100k"):
        download_movielens_100k(tmp_path, "http://127.0.0.1:9/ml-100k.zip", timeout=2)


def test_movielens_folder_must_hold_the_three_files(tmp_path):
    with pytest.raises(SourceUnavailableError, match="missing u.data, u.item, u.user"):
        movielens_specs(tmp_path)


def test_unknown_mapping_key_is_named(tmp_path):
    (tmp_path / "m.toml").write_text('[interactions]\nuser = "u"\n')
    with pytest.raises(ConfigError, match="unknown key 'user'"):
        tabular_specs("csv", tmp_path / "m.toml", load_mapping(tmp_path / "m.toml"))


def test_csv_without_a_path_reads_the_drop_folder_and_says_so_when_empty(tmp_path):
    with pytest.raises(SourceUnavailableError, match="reads the drop folder .*landing/csv, which has no csv files"):
        resolve_source(Settings(home=tmp_path), "csv")


def test_synthetic_default_generates_once_under_landing(tmp_path):
    settings = Settings(home=tmp_path)
    specs = resolve_source(settings, "synthetic")
    assert all(str(s.path).startswith(str(settings.landing_dir)) for s in specs)
    before = specs[-1].path.stat().st_mtime_ns
    resolve_source(settings, "synthetic")
    assert specs[-1].path.stat().st_mtime_ns == before


@pytest.mark.parametrize("where", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.csv"])
def test_mapping_paths_stay_inside_the_mapping_folder(tmp_path, where):
    folder = tmp_path / "mapping"
    folder.mkdir()
    (tmp_path / "outside.csv").write_text("user_id,item_id,timestamp\n1,1,1700000000\n")
    with pytest.raises(ConfigError, match="leaves the mapping's folder"):
        tabular_specs("csv", None, {"interactions": {"path": where}}, base_dir=folder)


def test_mapping_paths_inside_the_folder_or_allowed_explicitly(tmp_path):
    folder = tmp_path / "mapping"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "r.csv").write_text("user_id,item_id,timestamp\n1,1,1700000000\n")
    (tmp_path / "outside.csv").write_text("user_id,item_id,timestamp\n1,1,1700000000\n")
    inside = tabular_specs("csv", None, {"interactions": {"path": "data/r.csv", **COLUMNS}}, base_dir=folder)
    assert inside[0].path == (folder / "data" / "r.csv").resolve()
    allowed = tabular_specs("csv", None, {"interactions": {"path": "../outside.csv", **COLUMNS}}, base_dir=folder,
                            allow_outside=True)
    assert allowed[0].path == (tmp_path / "outside.csv").resolve()


@pytest.fixture
def drop(tmp_path):
    """An empty csv drop folder under a fresh RECSYS_HOME (tmp_path)."""
    folder = tmp_path / "landing" / "csv"
    folder.mkdir(parents=True)
    return folder


def test_files_dropped_in_the_csv_folder_are_read_and_strays_are_named(tmp_path, drop):
    settings = Settings(home=tmp_path)
    (drop / "day1.csv").write_text("user_id,item_id,timestamp\n1,1,1700000000\n")
    (drop / "day2.csv").write_text("user_id,item_id,timestamp\n2,1,1700000001\n")
    specs = resolve_source(settings, "csv")
    assert [s.path.name for s in specs] == ["day1.csv", "day2.csv"]
    stray = tmp_path / "landing" / "synthetic" / "u10-i5-n50-s1" / "new_ratings.csv"
    stray.parent.mkdir(parents=True)
    (stray.parent / "interactions.csv").write_text("x\n")
    stray.write_text("user_id,item_id,timestamp\n")
    (drop / "old").mkdir()
    (drop / "old" / "archived.csv").write_text("x\n")
    assert unread_landing_files(settings) == [drop / "old" / "archived.csv", stray]


def test_the_drop_folder_uses_its_mapping(tmp_path, drop):
    settings = Settings(home=tmp_path)
    (drop / "mapping.toml").write_text('[interactions]\nuser_id = "u"\nitem_id = "i"\ntimestamp = "t"\n')
    (drop / "r.csv").write_text("u,i,t\n1,1,1700000000\n")
    (spec,) = resolve_source(settings, "csv")
    assert spec.columns["user_id"] == "u"


COLUMNS = {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}


def test_odd_entries_in_a_drop_folder_are_named_and_skipped_never_read(tmp_path, drop, capsys):
    """A folder named x.csv ended the ingest in a traceback; a FIFO named p.csv hung it forever while it held
    the run lock; a link read a file outside the landing area. Each is skipped with its reason."""
    import os

    settings = Settings(home=tmp_path)
    (drop / "good.csv").write_text("user_id,item_id,timestamp\n1,1,1700000000\n")
    (drop / "x.csv").mkdir()
    os.mkfifo(drop / "p.csv")
    secret = tmp_path / "elsewhere" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text("user_id,item_id,timestamp\n9,9,1700000000\n")
    (drop / "link.csv").symlink_to(secret)
    (drop / "inside.csv").symlink_to(drop / "good.csv")  # a link that stays inside is fine
    specs = resolve_source(settings, "csv")
    assert sorted(s.path.name for s in specs) == ["good.csv", "inside.csv"]
    printed = capsys.readouterr().out
    assert "x.csv: it is a folder" in printed and "p.csv: it is a FIFO" in printed
    assert "link.csv: it is a link to" in printed and "--allow-paths-outside-mapping" in printed
    allowed = resolve_source(settings, "csv", allow_outside=True)
    assert "link.csv" in {s.path.name for s in allowed}


def test_a_mapping_folder_path_cannot_reach_outside_through_a_link(tmp_path):
    folder = tmp_path / "share"
    folder.mkdir()
    (tmp_path / "private.csv").write_text("user_id,item_id,timestamp\n1,1,1700000000\n")
    (folder / "data.csv").symlink_to(tmp_path / "private.csv")
    (folder / "ok.csv").write_text("user_id,item_id,timestamp\n1,1,1700000000\n")
    mapping = {"interactions": {"path": ".", **COLUMNS}}
    specs = tabular_specs("csv", None, mapping, base_dir=folder)
    assert [s.path.name for s in specs] == ["ok.csv"]
