"""Fine-tuning jobs on disk: `<store>/fine-tune-jobs/<key>/job.json`, the record of one hosted fine-tuning job
(uploaded file ids, job id, status, fine-tuned model). The key is the content key of the job's inputs, so a re-run
of the same stage finds the record, and with it the job it already created (recsys/llm4idrec/hosted.py). The
record is written whole each time (storage.batch_jobs.BatchJob)."""

from __future__ import annotations

from pathlib import Path

from storage.batch_jobs import BatchJob

FINE_TUNE_JOBS_DIR = "fine-tune-jobs"


def fine_tune_job(store_root: str | Path, key: str) -> BatchJob:
    """The record folder of the fine-tuning job with content key `key`."""
    return BatchJob(Path(store_root).expanduser() / FINE_TUNE_JOBS_DIR / key)
