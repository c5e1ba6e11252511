"""People's labels of a batch, in SQLite (stdlib sqlite3): one row per (annotator, group) submission.

A submission names the best and the worst image of a group (or neither: "no preference") and the images
the person flagged deformed or unsafe. Submitting a group again replaces that person's earlier answer.

Why SQLite: several annotators submit at once through a threaded server. Each request opens its own
connection; writes run in `BEGIN IMMEDIATE` transactions (one writer at a time, others wait up to
`TIMEOUT_S`), so no submission is lost or half-written; WAL mode lets the page read progress while another
person writes; `synchronous=FULL` makes a committed label survive a power cut, not just a crash. Each row
keeps the sha256 of the manifest it was made against, so labels for another batch are detected.
"""

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DB_FILE = "labels.sqlite"
COLUMNS = "annotator, group_index, best, worst, deformed, unsafe, manifest_sha256, submitted_at"
SCHEMA_VERSION = 1
TIMEOUT_S = 30.0
MAX_ANNOTATOR = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    annotator TEXT NOT NULL,
    group_index INTEGER NOT NULL,
    best TEXT,                 -- image id, or NULL with worst NULL: no preference
    worst TEXT,
    deformed TEXT NOT NULL,    -- JSON list of image ids, sorted
    unsafe TEXT NOT NULL,      -- JSON list of image ids, sorted
    manifest_sha256 TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    PRIMARY KEY (annotator, group_index)
);
"""


@dataclass(frozen=True)
class Label:
    """One person's answer for one group; image ids as in the manifest."""

    annotator: str
    group: int
    best: str | None
    worst: str | None
    deformed: tuple[str, ...] = ()
    unsafe: tuple[str, ...] = ()


class LabelError(ValueError):
    """A submission that cannot be stored; `field` names the offending part."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def check_label(label: Label, images: list[str]) -> None:
    """Refuse a label that cannot mean anything for a group with these image ids."""
    if not label.annotator.strip() or len(label.annotator) > MAX_ANNOTATOR:
        raise LabelError("annotator", f"annotator must be a name of 1 to {MAX_ANNOTATOR} characters")
    if (label.best is None) != (label.worst is None):
        raise LabelError("best" if label.best is None else "worst", "choose both best and worst, or neither")
    for field in ("best", "worst"):
        value = getattr(label, field)
        if value is not None and value not in images:
            raise LabelError(field, f"{field} image {value!r} is not in group {label.group}")
    if label.best is not None and label.best == label.worst:
        raise LabelError("worst", "best and worst must be different images")
    for field in ("deformed", "unsafe"):
        unknown = [i for i in getattr(label, field) if i not in images]
        if unknown:
            raise LabelError(field, f"{field} image {unknown[0]!r} is not in group {label.group}")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: all of it is stored, or none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def schema_version(conn: sqlite3.Connection) -> int:
    """The store's schema version; a new store gets its tables first (reads need no write lock after)."""
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    except sqlite3.OperationalError:  # no meta table: a new store
        pass
    with transaction(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


def connect(folder: str | Path) -> sqlite3.Connection:
    """A connection to the folder's label store, created if absent; one per thread or request."""
    path = Path(folder) / DB_FILE
    conn = sqlite3.connect(path, timeout=TIMEOUT_S, isolation_level=None)  # transactions are explicit
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        version = schema_version(conn)
    except BaseException:
        conn.close()
        raise
    if version != SCHEMA_VERSION:
        conn.close()
        raise ValueError(f"{path}: label schema version {version}; this rlft reads version {SCHEMA_VERSION}")
    return conn


def save_label(conn: sqlite3.Connection, label: Label, manifest_sha256: str) -> None:
    """Store (or replace) this person's label for the group, in one transaction."""
    row = (
        label.annotator,
        label.group,
        label.best,
        label.worst,
        json.dumps(sorted(set(label.deformed))),
        json.dumps(sorted(set(label.unsafe))),
        manifest_sha256,
        time.time(),
    )
    with transaction(conn):
        conn.execute(f"INSERT OR REPLACE INTO labels ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)


def read_labels(conn: sqlite3.Connection, annotator: str | None = None) -> list[tuple[Label, str]]:
    """Every stored label (or one person's) with the manifest sha256 it was made against, by group."""
    sql = f"SELECT {COLUMNS} FROM labels" + (" WHERE annotator = ?" if annotator is not None else "")
    rows = conn.execute(
        sql + " ORDER BY group_index, annotator", (annotator,) if annotator is not None else ()
    ).fetchall()
    return [
        (Label(who, group, best, worst, tuple(json.loads(deformed)), tuple(json.loads(unsafe))), digest)
        for who, group, best, worst, deformed, unsafe, digest, _ in rows
    ]


def labelled_groups(conn: sqlite3.Connection, annotator: str) -> int:
    """How many groups this person has labelled: the page's progress."""
    return conn.execute("SELECT COUNT(*) FROM labels WHERE annotator = ?", (annotator,)).fetchone()[0]
