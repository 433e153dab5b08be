"""The trace store: reasoning traces generated once (`generate_traces.py`) and read by every training stage.

A store is a folder that holds the traces of exactly one (reasoner, prompt-set version, decoding settings) triple:

    store.json          manifest: format version, reasoner, prompt-set version, decoding settings
    shard-00000.jsonl   one append-only file per writing process
    shard-00001.jsonl   ...

Every line is one record `{"id", "side", "reasoner", "prompt_set_version", "decoding", "trace"}`, so the full key
travels with each trace. Crash safety: a writer appends a whole batch with one `write` and then `fsync`s, so after a
crash only the last line of a shard can be incomplete. Readers ignore an unterminated last line, and the shard's next
writer truncates it before appending. A complete line that is not a valid record is corruption and raises.

One writer per shard: a writer holds an exclusive `flock` on `shard-NNNNN.lock` for as long as its store object
lives, so a second writer (the same command started twice) is refused with a clear error instead of duplicating
traces. The operating system drops the lock when the writer dies, so a crashed run is resumed by simply rerunning it.
"""

import fcntl
import json
import logging
import os
import re

from training.checkpoint import write_atomic


logger = logging.getLogger(__name__)
FORMAT_VERSION = 1
MANIFEST = "store.json"
RECORD_FIELDS = ("id", "side", "reasoner", "prompt_set_version", "decoding", "trace")
SHARD = re.compile(r"shard-\d{5}\.jsonl")


def make_manifest(reasoner: str, prompt_set_version: str, decoding: dict) -> dict:
    """The manifest of a store: what every trace in it was generated with."""
    return {"format_version": FORMAT_VERSION, "reasoner": reasoner, "prompt_set_version": prompt_set_version,
            "decoding": decoding}  # fmt: skip


def _truncate_partial_line(path: str) -> None:
    """Cut an unterminated last line (a write interrupted by a crash) so appends start on a fresh line."""
    if not os.path.exists(path):
        return
    with open(path, "r+b") as handle:
        data = handle.read()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            logger.warning("%s: dropping an incomplete last line (an interrupted write)", path)
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())


class TraceStore:
    """An open trace store folder.

    Args:
        folder: the store folder; its `store.json` must exist (see `TraceStore.create`).

    Raises:
        ValueError: no manifest, or a manifest of another format version.
    """

    def __init__(self, folder: str):
        path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(path):
            raise ValueError(f"{folder!r} is not a trace store: {MANIFEST} is missing (run training.generate_traces)")
        with open(path) as handle:
            self.manifest = json.load(handle)
        version = self.manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version={version!r}, expected {FORMAT_VERSION}")
        self.folder = folder
        self._repaired = set()
        self._locks = {}  # shard -> the open lock file whose flock this object holds

    @classmethod
    def create(cls, folder: str, manifest: dict) -> "TraceStore":
        """Open `folder`, writing its manifest first if it has none.

        Raises:
            ValueError: the folder already holds traces generated with other settings.
        """
        path = os.path.join(folder, MANIFEST)
        if os.path.isfile(path):
            with open(path) as handle:
                existing = json.load(handle)
            if existing != manifest:
                raise ValueError(
                    f"{folder!r} holds traces made with {existing}, not {manifest}; use a new store folder"
                )
        else:
            os.makedirs(folder, exist_ok=True)
            write_atomic(path, json.dumps(manifest, indent=2))
        return cls(folder)

    @property
    def prompt_set_version(self) -> str:
        return self.manifest["prompt_set_version"]

    def shard_path(self, shard: int) -> str:
        return os.path.join(self.folder, f"shard-{shard:05d}.jsonl")

    def _shards(self) -> list[str]:
        names = sorted(os.listdir(self.folder))
        return [os.path.join(self.folder, name) for name in names if SHARD.fullmatch(name)]

    def _check_record(self, record, where: str) -> None:
        if not isinstance(record, dict) or set(record) != set(RECORD_FIELDS):
            raise ValueError(f"{where}: a trace record needs exactly the fields {RECORD_FIELDS}, got {record!r}")
        for field in ("reasoner", "prompt_set_version", "decoding"):
            if record[field] != self.manifest[field]:
                raise ValueError(f"{where}: {field}={record[field]!r}, but the manifest says {self.manifest[field]!r}")
        if not isinstance(record["trace"], str):
            raise ValueError(f"{where}: trace must be a str, got {type(record['trace']).__name__}")

    def _records(self):
        """`(where, record)` for every complete line of every shard, checked against the manifest."""
        for path in self._shards():
            with open(path, "rb") as handle:
                complete = handle.read().rpartition(b"\n")[0]  # an unterminated last line is an interrupted write
            for number, line in enumerate(complete.split(b"\n") if complete else [], start=1):
                where = f"{path}:{number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{where}: not a JSON line ({error})") from None
                self._check_record(record, where)
                yield where, record

    def read(self) -> dict[tuple[str, str], str]:
        """All complete records, as `{(example id, side): trace}`.

        Raises:
            ValueError: a malformed complete line, or the same (id, side) twice; the message names file and line.
        """
        traces, seen_at = {}, {}
        for where, record in self._records():
            key = (record["id"], record["side"])
            if key in traces:
                raise ValueError(f"{where}: duplicate trace for id={key[0]!r} side={key[1]!r}, see {seen_at[key]}")
            traces[key], seen_at[key] = record["trace"], where
        return traces

    def lock_shard(self, shard: int) -> None:
        """Become the only writer of one shard, for this object's lifetime.

        Raises:
            ValueError: another process (or store object) writes that shard; the message names its pid.
        """
        if shard in self._locks:
            return
        handle = open(os.path.join(self.folder, f"shard-{shard:05d}.lock"), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "pid unknown"
            handle.close()
            raise ValueError(
                f"{self.folder!r}: shard {shard} is being written by another process ({holder}); wait for it to "
                "finish (rerunning then resumes) or write to another store"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._locks[shard] = handle

    def close(self) -> None:
        """Release this object's shard locks (a process that exits releases them too)."""
        for handle in self._locks.values():
            handle.close()
        self._locks.clear()

    def append(self, shard: int, entries: list[tuple[str, str, str]]) -> None:
        """Durably append `(example id, side, trace)` entries to one shard (one write, then fsync)."""
        self.lock_shard(shard)
        path = self.shard_path(shard)
        if path not in self._repaired:
            _truncate_partial_line(path)
            self._repaired.add(path)
        fixed = {field: self.manifest[field] for field in ("reasoner", "prompt_set_version", "decoding")}
        lines = [json.dumps({"id": i, "side": side, **fixed, "trace": trace}, ensure_ascii=False) + "\n"
                 for i, side, trace in entries]  # fmt: skip
        with open(path, "ab") as handle:
            handle.write("".join(lines).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())


__all__ = ["TraceStore", "make_manifest", "FORMAT_VERSION"]
