"""Opening a diskcache (SQLite underneath) that several processes may open at the same moment.

diskcache's `Cache()` runs a dozen writing statements when it opens a directory (settings rows, pragmas, the switch
to WAL on a new database), each retried for up to 60 s on "database is locked". Several processes opening the same
directory at once can lock each other out for minutes (diskcache issue #266): in one Dask run of the augment flow
on a new store, the workers' batches stalled on the response cache until `batch_timeout_s` and the others failed
with "database is locked". So opening is serialised across processes by an exclusive lock on a file beside the
database; reads and writes after that need only SQLite's own locking.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import diskcache

LOCK_FILE = ".open.lock"


def open_disk_cache(directory: str | Path) -> diskcache.Cache:
    """A diskcache in `directory` (created if need be) that never evicts, opened by one process at a time."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        # eviction_policy "none": diskcache's default evicts beyond 1 GB, which would lose paid-for answers.
        return diskcache.Cache(str(folder), eviction_policy="none")
