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


def test_csv_needs_a_path(tmp_path):
    with pytest.raises(ConfigError, match="needs --path"):
        resolve_source(Settings(home=tmp_path), "csv")


def test_synthetic_default_generates_once_under_landing(tmp_path):
    settings = Settings(home=tmp_path)
    specs = resolve_source(settings, "synthetic")
    assert all(str(s.path).startswith(str(settings.landing_dir)) for s in specs)
    before = specs[-1].path.stat().st_mtime_ns
    resolve_source(settings, "synthetic")
    assert specs[-1].path.stat().st_mtime_ns == before
