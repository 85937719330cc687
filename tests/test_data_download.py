"""ensure_movielens against a real local HTTP server serving a synthetic archive (never the internet), alone and
behind `llmrec base`."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
import zipfile

import pytest
from typer.testing import CliRunner

import flows.base  # noqa: F401  Prefect binds its console log to sys.stderr on import: before CliRunner swaps it
import flows.cli as cli
from recsys.config import DATA_DIR_ENV
from recsys.data.download import ARCHIVES, ChecksumError, DownloadError, ensure_movielens
from recsys.data.errors import DataError
from recsys.data.movielens import load_ml100k

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
FLAGS = "|".join(["0"] * 3 + ["1"] + ["0"] * 15)
FILES = {
    "u.data": b"1\t1\t5\t881250949\n2\t1\t3\t881250950\n",
    "u.item": f"1|Misérables, Les (1995)|01-Jan-1995||http://x|{FLAGS}\n".encode("latin-1"),
    "u.user": b"1|24|M|technician|85711\n2|53|F|other|94043\n",
    "u.genre": "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)).encode() + b"\n",
    "README": b"synthetic\n",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(tmp_path):
    """A real http.server on 127.0.0.1 (free port) serving ml-100k.zip; records the paths requested."""
    root = tmp_path / "www"
    root.mkdir()
    with zipfile.ZipFile(root / "ml-100k.zip", "w") as zf:
        for name, data in FILES.items():
            zf.writestr(f"ml-100k/{name}", data)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):  # noqa: N802 - the http.server API name
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep test output quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll interval makes shutdown() return quickly.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield {
            "url": f"http://127.0.0.1:{httpd.server_port}/ml-100k.zip",
            "md5": hashlib.md5((root / "ml-100k.zip").read_bytes()).hexdigest(),
            "requests": requests,
        }
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def pinned() -> dict[str, str]:
    return {name: sha256(FILES[name]) for name in ("u.data", "u.item", "u.user")}


def test_download_verify_extract(server, tmp_path):
    data_dir = tmp_path / "data"
    folder = ensure_movielens("ml-100k", data_dir, url=server["url"], zip_md5=server["md5"], sha256=pinned(),
                              timeout=10)
    assert folder == data_dir / "ml-100k"
    assert server["requests"] == ["/ml-100k.zip"]
    assert sorted(p.name for p in data_dir.iterdir()) == ["ml-100k"]  # no temp leftovers
    assert (folder / "u.data").read_bytes() == FILES["u.data"]
    ds = load_ml100k(folder)
    assert ds.items["title"].tolist() == ["Misérables, Les (1995)"] and ds.items["genres"].tolist() == ["Animation"]


def test_existing_folder_used_without_request(server, tmp_path):
    folder = tmp_path / "data" / "ml-100k"
    folder.mkdir(parents=True)
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    assert ensure_movielens("ml-100k", tmp_path / "data", url=server["url"]) == folder
    assert server["requests"] == []


def test_zip_md5_mismatch_leaves_nothing(server, tmp_path):
    data_dir = tmp_path / "data"
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as exc:
        ensure_movielens("ml-100k", data_dir, url=server["url"], zip_md5=wrong, sha256=pinned(), timeout=10)
    message = str(exc.value)
    assert "MD5 hash of downloaded file (ml-100k.zip) does not match" in message and server["url"] in message
    assert wrong in message and server["md5"] in message
    assert list(data_dir.iterdir()) == []


def test_file_sha256_mismatch_leaves_nothing(server, tmp_path):
    data_dir = tmp_path / "data"
    wrong = "f" * 64
    with pytest.raises(ChecksumError) as exc:
        ensure_movielens("ml-100k", data_dir, url=server["url"], zip_md5=server["md5"],
                         sha256={**pinned(), "u.data": wrong}, timeout=10)
    message = str(exc.value)
    assert "sha256 mismatch for ml-100k/u.data" in message
    assert wrong in message and sha256(FILES["u.data"]) in message
    assert list(data_dir.iterdir()) == []


def test_default_checksums_reject_a_foreign_archive(server, tmp_path):
    # The synthetic zip is not the GroupLens one: the published md5 must catch that.
    with pytest.raises(ChecksumError, match="0e33842e24a9c977be4e0107933c0723"):
        ensure_movielens("ml-100k", tmp_path / "data", url=server["url"], timeout=10)
    assert list((tmp_path / "data").iterdir()) == []


def test_http_error_leaves_nothing_and_says_how_to_use_a_local_copy(server, tmp_path):
    with pytest.raises(DownloadError, match="could not download .*missing.zip") as exc:
        ensure_movielens("ml-100k", tmp_path / "data", url=server["url"].replace("ml-100k", "missing"), timeout=10)
    assert list((tmp_path / "data").iterdir()) == []
    message = str(exc.value)
    assert "--data-dir FOLDER" in message and "$LLMREC_DATA_DIR=FOLDER" in message and DATA_DIR_ENV in message
    assert "ml-100k/ folder (u.data, u.item, u.user, u.genre)" in message and str(tmp_path / "data") in message


def test_a_failed_download_is_tried_once_and_is_one_line(server, tmp_path, monkeypatch):
    """`llmrec base` whose download fails: one request (the dataset task's cache key fetches the archive; its
    failure must not make the task body fetch it again), one error line naming --data-dir and the variable."""
    missing = server["url"].replace("ml-100k.zip", "gone/ml-100k.zip")
    monkeypatch.setitem(ARCHIVES, "ml-100k", dataclasses.replace(ARCHIVES["ml-100k"], url=missing))
    res = CliRunner().invoke(cli.app, ["base", "--data-dir", str(tmp_path / "data"), "--store",
                                       str(tmp_path / "store"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    (line,) = res.stdout.strip().splitlines()
    assert line.startswith(f"error: could not download {missing}") and "Traceback" not in res.output
    assert "--data-dir FOLDER" in line and "$LLMREC_DATA_DIR=FOLDER" in line
    assert server["requests"] == ["/gone/ml-100k.zip"]
    assert list((tmp_path / "data").iterdir()) == []


def test_incomplete_existing_folder_is_not_overwritten(server, tmp_path):
    folder = tmp_path / "data" / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "u.data").write_bytes(FILES["u.data"])
    with pytest.raises(DataError, match="incomplete: it lacks u.item, u.user, u.genre"):
        ensure_movielens("ml-100k", tmp_path / "data", url=server["url"])
    assert server["requests"] == [] and sorted(p.name for p in folder.iterdir()) == ["u.data"]


def test_unknown_name(tmp_path):
    with pytest.raises(DataError, match="unknown MovieLens dataset 'ml-25m'"):
        ensure_movielens("ml-25m", tmp_path)  # type: ignore[arg-type]
