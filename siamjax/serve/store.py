"""The service's enrolment store: writers and their references' embeddings, in one SQLite file.

A reference is stored as its embedding (float32 [D], never the image), the SHA-256 and name of the
file it came from, when it was enrolled, and the fingerprint of the model that embedded it. An
embedding means something only to the model that made it, so the fingerprint covers the config's
model keys, the checkpoint step and a digest of the weights (`Verifier.model_identity`), and a
writer's references all share one: adding to, or verifying against, a writer enrolled under
another model is refused (`ModelMismatch`) until the writer is deleted and enrolled again.

Every change is one transaction (SQLite's journal, `synchronous=FULL`): a crash or a SIGKILL at any
moment leaves the file with each enrolment whole or absent, never half-written.

Not for: images, scoring (`siamjax.serve.engine`) or HTTP (`siamjax.serve.app`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from siamjax.errors import UserError, one_line

SCHEMA_VERSION = 1
MAX_WRITER_NAME = 200
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    fingerprint TEXT PRIMARY KEY,      -- model_fingerprint(identity)
    identity TEXT NOT NULL             -- Verifier.model_identity() as JSON
);
CREATE TABLE IF NOT EXISTS writers (
    name TEXT PRIMARY KEY,
    model_fingerprint TEXT NOT NULL REFERENCES models(fingerprint),
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reference_scans (
    id INTEGER PRIMARY KEY,
    writer TEXT NOT NULL REFERENCES writers(name) ON DELETE CASCADE,
    file_name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    embedding BLOB NOT NULL,           -- float32 little-endian [dim]
    dim INTEGER NOT NULL,
    enrolled_at TEXT NOT NULL,
    model_fingerprint TEXT NOT NULL REFERENCES models(fingerprint),
    UNIQUE (writer, sha256)
);
"""


class UnknownWriter(UserError):
    """No writer of that name is enrolled."""


class ModelMismatch(UserError):
    """The writer was enrolled under another model than the one the service runs."""


def model_fingerprint(identity: dict[str, Any]) -> str:
    """SHA-256 of a model identity (`Verifier.model_identity()`), in canonical JSON."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_writer_name(name: str | None) -> str:
    """A writer's name as stored: stripped, 1 to MAX_WRITER_NAME printable characters."""
    name = (name or "").strip()
    if not name:
        raise UserError("writer: give a non-empty writer name.")
    if len(name) > MAX_WRITER_NAME or not name.isprintable():
        raise UserError(
            f"writer {name[:40]!r}: a name is 1 to {MAX_WRITER_NAME} printable characters."
        )
    return name


@dataclasses.dataclass(frozen=True)
class Reference:
    """One enrolled reference scan of a writer."""

    file_name: str
    sha256: str
    embedding: np.ndarray  # float32 [D]
    enrolled_at: str


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """The enrolment database of one service, bound to the model identity it serves."""

    def __init__(self, path: str | os.PathLike, identity: dict[str, Any]):
        self.path = os.fspath(path)
        self.identity = identity
        self.fingerprint = model_fingerprint(identity)
        self._lock = threading.Lock()
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, exist_ok=True)
            # One connection in autocommit mode (transactions are explicit), used under a lock
            # from the server's worker threads.
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA busy_timeout = 10000")
            self._db.executescript(_SCHEMA)  # Idempotent; executescript commits by itself.
            with self._transaction():
                self._check_schema()
                self._db.execute(
                    "INSERT OR IGNORE INTO models VALUES (?, ?)",
                    (self.fingerprint, json.dumps(identity, sort_keys=True)),
                )
        except sqlite3.Error as e:
            raise UserError(f"--db {self.path}: cannot open the enrolment database ({e})") from e
        except OSError as e:
            raise UserError(f"--db {self.path}: cannot create its folder ({one_line(e)})") from e

    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif row[0] != str(SCHEMA_VERSION):
            raise UserError(
                f"--db {self.path}: enrolment schema version {row[0]}, this siamjax reads "
                f"{SCHEMA_VERSION}; use another --db."
            )

    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")  # Takes the write lock now: no upgrade deadlock.
            return self.db

        def __exit__(self, kind, value, tb):
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")
            return False

    def _transaction(self) -> Store._Tx:
        return Store._Tx(self._db)

    def close(self) -> None:
        self._db.close()

    # ---- writers --------------------------------------------------------------------------

    def _writer_model(self, db: sqlite3.Connection, writer: str) -> str | None:
        row = db.execute(
            "SELECT model_fingerprint FROM writers WHERE name = ?", (writer,)
        ).fetchone()
        return None if row is None else row[0]

    def _mismatch(self, db: sqlite3.Connection, writer: str, theirs: str) -> ModelMismatch:
        row = db.execute("SELECT identity FROM models WHERE fingerprint = ?", (theirs,)).fetchone()
        then = json.loads(row[0]) if row else {}
        now = self.identity
        return ModelMismatch(
            f"writer {writer!r} was enrolled under another model (checkpoint step "
            f"{then.get('checkpoint_step')}, weights {str(then.get('weights_sha256'))[:12]}); "
            f"this service runs step {now.get('checkpoint_step')}, weights "
            f"{str(now.get('weights_sha256'))[:12]}: delete the writer and enrol it again."
        )

    def enrol(
        self, writer: str, references: Sequence[tuple[str, bytes, np.ndarray]]
    ) -> dict[str, Any]:
        """Adds references (file name, file bytes, embedding [D]) to `writer`, creating it.

        One transaction: all are added or none. A file already enrolled for this writer (same
        SHA-256) is skipped. Returns {"writer", "added", "already_enrolled", "references"}.
        """
        writer = check_writer_name(writer)
        if not references:
            raise UserError("reference: give one or more reference scans to enrol.")
        at = _now()
        added, skipped = [], []
        with self._lock, self._transaction() as db:
            theirs = self._writer_model(db, writer)
            if theirs is None:
                db.execute("INSERT INTO writers VALUES (?, ?, ?)", (writer, self.fingerprint, at))
            elif theirs != self.fingerprint:
                raise self._mismatch(db, writer, theirs)
            for name, data, embedding in references:
                e = np.ascontiguousarray(embedding, dtype="<f4")
                digest = hashlib.sha256(data).hexdigest()
                cursor = db.execute(
                    "INSERT OR IGNORE INTO reference_scans "
                    "(writer, file_name, sha256, embedding, dim, enrolled_at, model_fingerprint) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (writer, name, digest, e.tobytes(), e.size, at, self.fingerprint),
                )
                (added if cursor.rowcount else skipped).append(name)
            (total,) = db.execute(
                "SELECT COUNT(*) FROM reference_scans WHERE writer = ?", (writer,)
            ).fetchone()
        return {
            "writer": writer,
            "added": added,
            "already_enrolled": skipped,
            "references": total,
        }

    def references(self, writer: str) -> list[Reference]:
        """The writer's references in enrolment order; `UnknownWriter` or `ModelMismatch`."""
        writer = check_writer_name(writer)
        with self._lock:
            theirs = self._writer_model(self._db, writer)
            if theirs is None:
                raise UnknownWriter(f"writer {writer!r} is not enrolled.")
            if theirs != self.fingerprint:
                raise self._mismatch(self._db, writer, theirs)
            rows = self._db.execute(
                "SELECT file_name, sha256, embedding, enrolled_at FROM reference_scans "
                "WHERE writer = ? ORDER BY id",
                (writer,),
            ).fetchall()
        return [
            Reference(name, digest, np.frombuffer(blob, dtype="<f4").astype(np.float32), at)
            for name, digest, blob, at in rows
        ]

    def writers(self) -> list[dict[str, Any]]:
        """Every writer: name, references, first and last enrolment, and whether it was enrolled
        under the model this service runs (`usable`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT w.name, w.model_fingerprint, w.created_at, COUNT(r.id), "
                "MAX(r.enrolled_at) FROM writers w LEFT JOIN reference_scans r "
                "ON r.writer = w.name GROUP BY w.name ORDER BY w.name"
            ).fetchall()
        return [
            {
                "writer": name,
                "references": n,
                "created_at": created,
                "updated_at": updated,
                "model_fingerprint": fingerprint,
                "usable": fingerprint == self.fingerprint,
            }
            for name, fingerprint, created, n, updated in rows
        ]

    def delete(self, writer: str) -> int:
        """Deletes a writer and its references (whatever model enrolled it); returns how many
        references went. `UnknownWriter` if none."""
        writer = check_writer_name(writer)
        with self._lock, self._transaction() as db:
            (n,) = db.execute(
                "SELECT COUNT(*) FROM reference_scans WHERE writer = ?", (writer,)
            ).fetchone()
            if not db.execute("DELETE FROM writers WHERE name = ?", (writer,)).rowcount:
                raise UnknownWriter(f"writer {writer!r} is not enrolled.")
        return n
