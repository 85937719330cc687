"""Fetch an official MovieLens archive once, verified, into the data directory.

GroupLens publishes only the md5 of each zip; the sha256 of the main extracted files are pinned from verified
copies (../shared/data/*/SOURCE.md). pooch downloads the archive, checks its md5 and unzips it into a temp dir
beside the target; the extracted files' sha256 are checked, and the folder is renamed into place only after
everything passed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pooch
import requests

from recsys.config import DATA_DIR_ENV
from recsys.data.errors import DataError

log = logging.getLogger("llmrec.data")

MovieLensName = Literal["ml-100k", "ml-1m"]


@dataclass(frozen=True)
class ArchiveSpec:
    """What a MovieLens archive must contain and the checksums it must match."""

    url: str
    zip_md5: str
    required: tuple[str, ...]  # files that must exist in <data_dir>/<name>/
    sha256: Mapping[str, str]  # pinned hashes of some of those files


ARCHIVES: dict[str, ArchiveSpec] = {
    "ml-100k": ArchiveSpec(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        zip_md5="0e33842e24a9c977be4e0107933c0723",
        required=("u.data", "u.item", "u.user", "u.genre"),
        sha256={
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
            "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
        },
    ),
    "ml-1m": ArchiveSpec(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        zip_md5="c4d9eecfca2ab87c1945afe126590906",
        required=("ratings.dat", "movies.dat", "users.dat"),
        sha256={
            "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
            "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
        },
    ),
}


class DownloadError(DataError):
    """The dataset could not be fetched (network failure, bad archive)."""


class ChecksumError(DownloadError):
    """A downloaded or extracted file does not have the expected hash."""


def _missing(folder: Path, required: tuple[str, ...]) -> list[str]:
    return [name for name in required if not (folder / name).is_file()]


def _download_unzip(url: str, name: str, zip_md5: str, into: Path, timeout: float) -> Path:
    """Download `url` into `into`, check the archive's md5 (unless "") and unzip it there; return `<name>/`."""
    try:
        pooch.retrieve(url, known_hash=f"md5:{zip_md5}" if zip_md5 else None, fname=f"{name}.zip", path=into,
                       processor=pooch.Unzip(extract_dir="extract"), downloader=pooch.HTTPDownloader(timeout=timeout))
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{url} is not a valid zip archive: {exc}") from None
    except ValueError as exc:  # pooch: the md5 does not match
        raise ChecksumError(f"{url}: {exc}") from None
    except (requests.RequestException, OSError) as exc:  # HTTP errors, timeouts, refused connections
        raise DownloadError(f"could not download {url}: {exc}") from None
    return into / "extract" / name


def _fetch_into(name: str, target: Path, url: str, zip_md5: str, spec: ArchiveSpec, sha256: Mapping[str, str],
                timeout: float) -> None:
    """Download, verify and extract into a temp dir beside `target`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temp dir is on the same filesystem as the target, so the final rename is atomic.
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=target.parent) as tmp:
        extracted = _download_unzip(url, name, zip_md5, Path(tmp), timeout)
        missing = _missing(extracted, spec.required)
        if missing:
            raise DownloadError(f"archive {url} lacks {', '.join(missing)} under {name}/")
        for file, expected in sha256.items():
            actual = pooch.file_hash(str(extracted / file), alg="sha256")
            if actual != expected.lower():
                raise ChecksumError(f"sha256 mismatch for {name}/{file}: expected {expected}, got {actual}")
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # an empty leftover folder would block the rename
        try:
            os.rename(extracted, target)
        except OSError as exc:
            # Another process may have finished first; its complete copy is as good as ours.
            if target.is_dir() and not _missing(target, spec.required):
                return
            raise DownloadError(f"could not move the extracted {name} into place: {exc}", path=target) from None
    log.info("%s ready in %s", name, target)
def ensure_movielens(
    name: MovieLensName,
    data_dir: Path,
    *,
    url: str | None = None,
    zip_md5: str | None = None,
    sha256: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Path:
    """Return `<data_dir>/<name>/` holding the MovieLens files, downloading the official archive if needed.

    An existing folder with the required files is used as is, without any request. Otherwise the archive is
    downloaded (`url`, default the GroupLens one), its md5 checked against `zip_md5` and the extracted files'
    sha256 against `sha256` (defaults: the published/pinned values; pass "" or {} to skip a check). On any
    failure nothing is left in `data_dir`, and the DownloadError (ChecksumError) says how to point at a local copy.
    """
    if name not in ARCHIVES:
        raise DataError(f"unknown MovieLens dataset {name!r}; expected one of {', '.join(ARCHIVES)}")
    spec = ARCHIVES[name]
    target = Path(data_dir).expanduser() / name
    if target.is_dir():
        missing = _missing(target, spec.required)
        if not missing:
            return target
        if any(target.iterdir()):
            # Never delete or overwrite a user's folder: say what is wrong and let them decide.
            raise DataError(f"{name} folder is incomplete: it lacks {', '.join(missing)}; remove the folder to "
                            f"download the dataset again", path=target)
    try:
        _fetch_into(name, target, url or spec.url, spec.zip_md5 if zip_md5 is None else zip_md5, spec,
                    spec.sha256 if sha256 is None else sha256, timeout)
    except DownloadError as exc:
        raise type(exc)(f"{exc}; {local_copy_hint(name, spec, target.parent)}") from None
    return target


def local_copy_hint(name: str, spec: ArchiveSpec, data_dir: Path) -> str:
    """How to use a copy of the dataset already on disk instead of the download."""
    return (f"to use a copy you have, put its {name}/ folder ({', '.join(spec.required)}) in a folder and pass "
            f"--data-dir FOLDER or set ${DATA_DIR_ENV}=FOLDER (looked in {data_dir})")

