"""The service's jobs in SQLite (the standard library's `sqlite3`; one file, WAL journal).

A job row holds what was asked (the settings as JSON), where it stands (state, frames done
and expected, fps, devices, warnings, error) and when. Every write is one short transaction
under a lock, so the HTTP threads, the scheduler and the job threads share one connection
safely. After a restart `unfinished()` lists the jobs that were queued or running: the
scheduler queues them again, and their segmented output resumes from its manifest.

A finished job's output is noted by its identity (size, modification time, inode: `output_identity`)
when the job ends done, so the file served as its result is the one it wrote, not one put at its
name since. A job a client forgets (`forget`) leaves the lists but keeps its row: what the store
knows of outputs (`outputs()`, which keeps an upload's output from the uploads' sweep) stays whole.

A write the database refuses (its disk full, "database or disk is full") never loses a job's
end or takes its thread down (a job stayed "running" for good, and could not be cancelled nor
submitted again): the change is kept in memory, read back from there, and written with the next
write the database takes (`update`).

One server per database: the store holds an exclusive lock (`flock`) on `<db>.lock` while it
is open, so a second server on the same root (or `--db`) stops at once with one line instead
of taking up the same jobs as the first.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
import logging
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import OutputBusy

log = logging.getLogger("service")

__all__ = ["Job", "JobStore", "STATES", "FINISHED_STATES", "lock_exclusively", "lock_path"]

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED_STATES = frozenset({"done", "failed", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    output TEXT NOT NULL,
    settings TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER NOT NULL DEFAULT 0,
    fps REAL NOT NULL DEFAULT 0,
    devices TEXT NOT NULL DEFAULT '[]',
    warnings TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    resumed INTEGER NOT NULL DEFAULT 0,
    output_identity TEXT,
    forgotten INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""
# Columns later servers added: (name, its declaration) for ALTER TABLE on an older database.
_ADDED_COLUMNS = (("output_identity", "TEXT"), ("forgotten", "INTEGER NOT NULL DEFAULT 0"))


@dataclass
class Job:
    id: str
    state: str
    source: str
    output: str
    settings: dict
    created: float
    started: float | None = None
    finished: float | None = None
    frames_done: int = 0
    frames_total: int = 0
    fps: float = 0.0
    devices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0
    resumed: int = 0  # times the job was taken up again after a server restart or a GPU fault
    output_identity: dict | None = None  # the output's file_identity when the job ended done (None: unknown)
    forgotten: bool = False  # left out of the lists (`JobStore.forget`); the row stays

    @property
    def eta_seconds(self) -> float | None:
        if self.state != "running" or self.fps <= 0 or self.frames_total <= 0:
            return None
        return max(0.0, (self.frames_total - self.frames_done) / self.fps)

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["output_identity"], d["forgotten"]  # the store's own bookkeeping
        d["eta_seconds"] = None if self.eta_seconds is None else round(self.eta_seconds, 1)
        d["progress"] = round(self.frames_done / self.frames_total, 4) if self.frames_total else None
        return d


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lock_file = _lock_exclusively(lock_path(path), path)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        except BaseException:
            self._lock_file.close()
            raise
        self._db.row_factory = sqlite3.Row
        self._pending: dict[str, dict] = {}  # job id -> column values the database refused, newest last
        self._refusing = False  # the last write was refused: warned once
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            for name, declaration in _ADDED_COLUMNS:  # a database an earlier server made
                if name not in have:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        """Safe to call twice; releases the database for another server."""
        with self._lock:
            if self._pending:
                self._flush()
            self._db.close()
            if not self._lock_file.closed:
                self._lock_file.close()  # closing the file releases the flock

    def add(self, *, source: str, output: str, settings: dict) -> Job:
        return self.add_many([(source, output, settings)])[0]

    def add_many(self, items: list[tuple[str, str, dict]]) -> list[Job]:
        """Jobs (source, output, settings) stored in one transaction: all of them, or none."""
        now = time.time()
        jobs = [Job(id=uuid.uuid4().hex[:12], state="queued", source=source, output=output, settings=settings,
                    created=now) for source, output, settings in items]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO jobs (id, state, source, output, settings, created) VALUES (?, ?, ?, ?, ?, ?)",
                    [(j.id, j.state, j.source, j.output, json.dumps(j.settings), j.created) for j in jobs])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return jobs

    def get(self, job_id: str) -> Job | None:
        """The job, None for one that does not exist or was forgotten."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            job = self._job(row) if row is not None else None
        return job if job is not None and not job.forgotten else None

    def list(self, *, limit: int = 500, offset: int = 0, states: Iterable[str] | None = None) -> list[Job]:
        """Jobs not forgotten, newest first: `limit` of them from `offset`, in `states` (None: any)."""
        where, args = self._where(states)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
                                    (*args, limit, offset)).fetchall()
            return [self._job(r) for r in rows]

    def count(self, *, states: Iterable[str] | None = None) -> int:
        """How many jobs `list` has to give, over every page."""
        where, args = self._where(states)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", args).fetchone()[0]

    @staticmethod
    def _where(states) -> tuple[str, tuple]:
        if states is None:
            return "forgotten = 0", ()
        states = tuple(states)
        unknown = sorted(set(states) - set(STATES))
        if unknown:
            raise ValueError(f"unknown job state(s) {unknown}")
        return f"forgotten = 0 AND state IN ({', '.join('?' * len(states)) or 'NULL'})", states

    def forget(self, job_id: str) -> None:
        """Leave a job out of the lists and of `get` (its row stays: see the module's docstring)."""
        self.update(job_id, forgotten=1)

    def outputs(self) -> set[str]:
        """Every output a job of this store writes or wrote, finished jobs' included."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT output FROM jobs WHERE output != ''").fetchall()
        return {r[0] for r in rows}

    def unfinished(self) -> list[Job]:
        """Queued or running jobs (oldest first): what a restarted server takes up again."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created, rowid").fetchall()
            jobs = [self._job(r) for r in rows]
        return [j for j in jobs if j.state in ("queued", "running")]  # a refused write may have ended one

    def update(self, job_id: str, **fields) -> None:
        """Set a job's fields. Where the database refuses the write (sqlite3.OperationalError: its
        disk full), the change is kept in memory (reads give it) and written with the next write
        it takes; one warning per refusal streak."""
        for key in ("devices", "warnings", "settings", "output_identity"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown job state {fields['state']!r}")
        with self._lock:
            self._pending.setdefault(job_id, {}).update(fields)
            self._flush()

    def _flush(self) -> None:
        """Write every change kept in memory (under the lock)."""
        for job_id in list(self._pending):
            fields = self._pending[job_id]
            names = ", ".join(f"{k} = ?" for k in fields)
            try:
                self._db.execute(f"UPDATE jobs SET {names} WHERE id = ?", (*fields.values(), job_id))
            except sqlite3.OperationalError as exc:
                if not self._refusing:
                    log.warning("the job database refused a write (%s): kept in memory until it takes one", exc)
                self._refusing = True
                return
            del self._pending[job_id]
        self._refusing = False

    def _job(self, row: sqlite3.Row) -> Job:
        """A job from its row, with the changes the database has not taken yet."""
        d = dict(row)
        d.update(self._pending.get(d["id"], {}))
        return _job(d)


def lock_path(db: Path) -> Path:
    """The file a store locks while it has `db` open (the database's own files are `db`, `db-wal`, `db-shm`)."""
    return Path(f"{db}.lock")


def _lock_exclusively(lock_path: Path, db: Path):
    """The open lock file, flock-ed; OutputBusy (one line) when another process holds it."""
    return lock_exclusively(lock_path, what=f"the job database {str(db)!r}", instead="another --root or --db")


def lock_exclusively(lock_path: Path, *, what: str, instead: str):
    """The open lock file, flock-ed, holding this process's id; OutputBusy (one line) naming
    `what` another server is using, and what to give this one `instead`, when another process
    holds it. Closing the file releases the lock (so does the process's end, however it ends)."""
    f = open(lock_path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise OutputBusy(f"another framepipe server is using {what} (locked: {str(lock_path)!r}). "
                         f"Stop that server first, or give this one {instead}.") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")  # for a person looking: which process holds it
    f.flush()
    return f


def _job(row) -> Job:
    d = dict(row)
    for key in ("settings", "devices", "warnings"):
        d[key] = json.loads(d[key])
    d["output_identity"] = json.loads(d["output_identity"]) if d.get("output_identity") else None
    d["forgotten"] = bool(d.get("forgotten"))
    return Job(**d)
