"""A persistent trace cache: a reasoning trace is generated once per input and reasoner, then reused.

A trace depends on the input (text, instruction, task family, image pixels), on the reasoner (its weights, or the
endpoint and model name), on the prompt set and on the decoding settings. `trace_key` hashes all of them; change any
one and the key changes, so a cache can never serve a trace another setting would not have written.

The cache is one SQLite file (standard library) in WAL mode: any number of processes (DDP ranks, endpoint workers)
and threads read and write it at once, each write is one transaction, and a crash (SIGKILL included) loses only the
transaction it was writing. An entry keeps the trace's text and the token ids it is embedded with, so an embedding
from a cached trace equals the one from `embed(reasoning=ids)` bit for bit (see `TTEModel.embed`).

    cache = TraceCache("~/.cache/tte/traces.sqlite")
    model.trace_cache = cache                      # or embed(..., trace_cache=path) per call
    len(cache); cache.clear()                      # or delete the file with its -wal and -shm companions
"""

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing

from PIL import Image

from .processing_tte import TTEInput


SCHEMA_VERSION = 1  # PRAGMA user_version of a cache file
_SCHEMA = """
CREATE TABLE IF NOT EXISTS traces (
    key TEXT PRIMARY KEY,       -- sha256 of `fields`
    fields TEXT NOT NULL,       -- the key fields as canonical JSON, so an entry says what it was made from
    trace TEXT NOT NULL,        -- the trace as text
    trace_ids TEXT,             -- the token ids it is embedded with (JSON list), or NULL: the text is tokenised
    created REAL NOT NULL       -- unix time of the write
)
"""
_LOOKUP_CHUNK = 500  # keys per SELECT, under SQLite's bound-parameter limit


def image_digest(image: Image.Image) -> str:
    """sha256 of an image's mode, size and pixels: the same picture decoded from any file format has one digest."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def key_of(fields: dict) -> tuple[str, str]:
    """`(key, canonical JSON)` of a trace's key fields: the key is the sha256 of the canonical JSON."""
    canonical = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest(), canonical


def trace_key(item: TTEInput, reasoner: dict) -> tuple[str, str]:
    """`(key, fields)` of the trace `reasoner` writes for `item`.

    Args:
        item: the parsed input; its text, instruction, task family and image pixels (or its video's sampled frames
            and their source frame numbers) enter the key.
        reasoner: everything else a trace depends on, as JSON-able values: the reasoner's identity, the prompt-set
            version, the decoding settings and the image processing (`TTEModel.trace_cache_context`).
    """
    fields = {
        "text": item.text,
        "instruction": item.instruction,
        "task": item.task,
        "image": None if item.image is None else image_digest(item.image),
        **reasoner,
    }
    if item.video is not None:  # only then: the keys of inputs without a video stay what they were
        fields["video"] = item.video.digest()  # the kept frames' pixels and which source frames they are
    return key_of(fields)


class TraceCache:
    """A trace cache file (created on first use). Holds only its path: a model that carries it can be copied,
    pickled and used from forked workers, and every operation opens its own short-lived connection.

    Args:
        path: the SQLite file; `~` is expanded and missing folders are created.
        timeout_s: how long a write waits for another process's write to finish.

    Raises:
        ValueError: the file is not a trace cache of this schema version.
    """

    def __init__(self, path: str | os.PathLike, timeout_s: float = 60.0):
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self.timeout_s = timeout_s
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with closing(self._connect()) as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ValueError(f"{self.path}: trace cache schema version {version}, expected {SCHEMA_VERSION}; "
                                 "use another file")  # fmt: skip
            if version == 0:  # a new file: opening an existing cache writes nothing, so it takes no write lock
                with connection:
                    connection.execute(_SCHEMA)
                    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(self.path, timeout=self.timeout_s)
            connection.execute("PRAGMA journal_mode=WAL")  # persistent; readers never wait for a writer
            connection.execute("PRAGMA synchronous=FULL")  # a committed trace survives a power cut too
            return connection
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: not a usable trace cache ({error})") from None

    def get_many(self, keys: Iterable[str]) -> dict[str, tuple[str, list[int] | None]]:
        """`{key: (trace, trace_ids)}` for the keys the cache holds (`trace_ids` None for a trace stored as text)."""
        keys = list(dict.fromkeys(keys))
        found = {}
        with closing(self._connect()) as connection:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                rows = connection.execute(
                    f"SELECT key, trace, trace_ids FROM traces WHERE key IN ({','.join('?' * len(chunk))})", chunk
                )
                found.update((key, (trace, None if ids is None else json.loads(ids))) for key, trace, ids in rows)
        return found

    def put_many(self, entries: Iterable[tuple[str, str, str, list[int] | None]]) -> None:
        """Store `(key, fields, trace, trace_ids)` entries in one transaction (`trace_ids` None for a trace known only
        as text, e.g. an endpoint's). A key already present keeps its first trace: two writers that generated the
        same trace leave one entry."""
        now = time.time()
        rows = [(key, fields, trace, None if ids is None else json.dumps(list(ids)), now)
                for key, fields, trace, ids in entries]  # fmt: skip
        if not rows:
            return
        with closing(self._connect()) as connection, connection:
            connection.executemany("INSERT OR IGNORE INTO traces VALUES (?, ?, ?, ?, ?)", rows)

    def entries(self) -> Iterator[tuple[str, str, list[int] | None]]:
        """Every entry as `(fields, trace, trace_ids)`, in write order."""
        with closing(self._connect()) as connection:
            for fields, trace, ids in connection.execute("SELECT fields, trace, trace_ids FROM traces ORDER BY rowid"):
                yield fields, trace, None if ids is None else json.loads(ids)

    def __len__(self) -> int:
        with closing(self._connect()) as connection:
            return connection.execute("SELECT COUNT(*) FROM traces").fetchone()[0]

    def clear(self) -> None:
        """Delete every entry (the file stays, with its schema)."""
        with closing(self._connect()) as connection, connection:
            connection.execute("DELETE FROM traces")

    def __repr__(self) -> str:
        return f"TraceCache({self.path!r})"


__all__ = ["TraceCache", "trace_key", "key_of", "image_digest", "SCHEMA_VERSION"]
