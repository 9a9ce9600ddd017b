"""Shared fixtures: temporary homes, the MovieLens-100k location, small synthetic data, the Prefect harness."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Item text vectors are kept between nights keyed by the text's hash; the suite's many homes share one cache,
# so each synthetic title is embedded once per session (tests of the cache itself use their own).
SESSION_VECTOR_CACHE = None
if "RECSYS_TEXT_VECTOR_CACHE" not in os.environ:
    SESSION_VECTOR_CACHE = os.environ["RECSYS_TEXT_VECTOR_CACHE"] = tempfile.mkdtemp(prefix="recsys-text-vectors-")

from recsys import db  # noqa: E402
from recsys.settings import Settings, quiet_libraries  # noqa: E402

quiet_libraries()

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_sessionfinish(session, exitstatus):
    """Collect what tests left in reference cycles (a caught error's frames holding a closed DuckDB connection)
    while DuckDB is still loaded: otherwise its nanobind bindings list them as leaked instances at exit.
    (Objects the steps froze out of collections, ``recsys.memory.release_memory``, are collectable again.)"""
    gc.unfreeze()
    gc.collect()
    if SESSION_VECTOR_CACHE:
        shutil.rmtree(SESSION_VECTOR_CACHE, ignore_errors=True)


def ml100k_path() -> Path:
    return Path(os.environ.get("RECSYS_ML100K_DIR", REPO_ROOT.parent / "shared" / "datasets" / "ml-100k"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(home=tmp_path / "home")
    s.ensure_dirs()
    return s


@pytest.fixture
def con(settings: Settings):
    connection = db.connect(settings)
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = ml100k_path()
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens-100k not found at {path}; set RECSYS_ML100K_DIR")
    return path


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory) -> Path:
    from tasks.generate import GeneratorConfig, generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, GeneratorConfig(n_users=300, n_items=120, n_interactions=9000, seed=7))
    return out


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (it costs ~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
