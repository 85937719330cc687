"""Batch API jobs on disk: what was submitted, under which batch id, and what came back.

One job is one batch of chat requests: `<store>/batch-jobs/<stage>/<key>/` holds `requests.jsonl` (the input
file), `job.json` (the record) and, once the batch ended, `output.jsonl` and `errors.jsonl`. The key is the sha256
of the requests file and the endpoint, so the same pending requests give the same job: a re-run after a crash
finds the record and resumes polling the batch it already created instead of submitting again. A job whose results
were downloaded is never reused: the same requests asked again (a follow-up round, a later run) are a new job,
`<key>-2`, `<key>-3`, ... Every file is
written whole (temporary name, then rename), and the record is written before each step it makes possible (the
input file's id before batches.create, the batch id before the first poll).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from storage.atomic import write_json, write_text

BATCH_JOBS_DIR = "batch-jobs"
RECORD, REQUESTS, OUTPUT, ERRORS = "job.json", "requests.jsonl", "output.jsonl", "errors.jsonl"


class BatchJob:
    """One job's folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def key(self) -> str:
        return self.folder.name

    @property
    def requests_path(self) -> Path:
        return self.folder / REQUESTS

    def record(self) -> dict[str, Any]:
        """job.json ({} before the first write)."""
        path = self.folder / RECORD
        return json.loads(path.read_text()) if path.is_file() else {}

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into job.json (written whole) and return the record."""
        record = {**self.record(), **fields}
        write_json(self.folder / RECORD, record)
        return record

    def save_results(self, output: str, errors: str) -> None:
        """The downloaded output and error files' text (written before the record says `downloaded`)."""
        write_text(self.folder / OUTPUT, output)
        write_text(self.folder / ERRORS, errors)

    def results(self) -> tuple[str, str]:
        """(output text, error text), empty strings before the download."""
        return tuple((self.folder / name).read_text() if (self.folder / name).is_file() else ""  # type: ignore
                     for name in (OUTPUT, ERRORS))


def batch_job(store_root: str | Path, stage: str, lines: list[str], endpoint: str) -> BatchJob:
    """The job of these request lines at `endpoint`, its requests file written (once) and its record started."""
    text = "".join(lines)
    digest = hashlib.sha256(f"{endpoint}\n{text}".encode()).hexdigest()[:32]
    folder = Path(store_root).expanduser() / BATCH_JOBS_DIR / stage
    n = 1
    while (job := BatchJob(folder / (digest if n == 1 else f"{digest}-{n}"))).record().get("downloaded"):
        n += 1
    key = job.key
    if not job.requests_path.is_file():
        write_text(job.requests_path, text)
    if not job.record():
        job.update(key=key, stage=stage, endpoint=endpoint, requests=len(lines))
    return job
