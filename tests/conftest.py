"""Test session set-up: an isolated, quiet Prefect home, and where the shared datasets are."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Before anything imports Prefect: a private PREFECT_HOME (database AND persisted results) for this session.
_PREFECT_HOME = tempfile.mkdtemp(prefix="llmrec-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_SERVER_REGISTER_BLOCKS_ON_START", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("PREFECT_API_URL", None)

REPO = Path(__file__).resolve().parents[1]

# Fixtures `llm_server` and `llm_server_factory`; `prefect_server` (a real server per test module).
pytest_plugins = ["tests.llm_server", "tests.prefect_server"]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the session's PREFECT_HOME (database and persisted results): nothing of a test run is left in /tmp.

    First Prefect's queued events and API logs are delivered while the session's temporary server still has its
    database (tests/prefect_server.py `deliver_queued_events`)."""
    from tests.prefect_server import deliver_queued_events

    deliver_queued_events()
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


def shared_dir() -> Path:
    """The shared folder beside the checkout (datasets and the reference split)."""
    return REPO.parent / "shared"


def data_dir() -> Path:
    env = os.environ.get("LLMREC_DATA_DIR")
    return Path(env) if env else shared_dir() / "data"


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    folder = data_dir() / "ml-100k"
    if not (folder / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def reference_split_dir() -> Path:
    folder = shared_dir() / "bench" / "ml100k-split"
    if not (folder / "train.parquet").is_file():
        pytest.skip(f"reference split not found at {folder}")
    return folder


SMALL_USERS = 60


@pytest.fixture(scope="session")
def small_movielens(tmp_path_factory, ml100k_dir) -> Path:
    """The first 60 users of ML-100K and the movies they rated: real rows, written to a temp folder."""
    from recsys.data.movielens import load_ml100k

    ds = load_ml100k(ml100k_dir)
    users = sorted(ds.interactions["user_id"].unique())[:SMALL_USERS]
    inter = ds.interactions[ds.interactions["user_id"].isin(users)]
    folder = tmp_path_factory.mktemp("ml-small")
    inter.to_parquet(folder / "interactions.parquet", index=False)
    ds.items[ds.items["item_id"].isin(inter["item_id"])].to_parquet(folder / "items.parquet", index=False)
    return folder
