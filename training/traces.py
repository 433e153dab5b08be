"""The trace store: reasoning traces generated once (`generate_traces.py`) and read by every training stage.

A store is a folder that holds the traces of exactly one (reasoner, prompt-set version, decoding settings) triple:

    store.json      manifest: format version, reasoner, prompt-set version, decoding settings
    traces.sqlite   the traces, in the trace cache's file format (`tte.trace_cache_tte.TraceCache`)

There is one trace format for inference and training. The inference cache keys a trace by the input's content; a
training store keys it by example id and side, with the manifest's fields (each entry's `fields` hold all of them,
so the full key travels with every trace). Both get the same guarantees: several writer processes (the ranks of
`accelerate launch`) append at once, each batch is one transaction, a crash (SIGKILL included) loses at most the
batch being written, and rerunning resumes. A key keeps its first trace, so two writers never leave a duplicate.

A store of format 1 (append-only JSONL shards) is upgraded in place, keeping its shard files:

    python -m training.traces upgrade traces/student
"""

import argparse
import glob
import json
import os

from training.checkpoint import write_atomic
from tte.trace_cache_tte import TraceCache, key_of


FORMAT_VERSION = 2  # 1 was append-only JSONL shards
MANIFEST = "store.json"
TRACES = "traces.sqlite"
KEY_FIELDS = ("id", "side", "reasoner", "prompt_set_version", "decoding")


def key_fields(manifest: dict, example_id: str, side: str) -> dict:
    """The fields that key one trace: the example, the side, and the manifest's reasoner and settings."""
    return {"id": example_id, "side": side, **{field: manifest[field] for field in KEY_FIELDS[2:]}}


def check_settings(record: dict, manifest: dict, where: str) -> None:
    """A trace must have been made with the manifest's reasoner and settings; the error names the entry."""
    for field in KEY_FIELDS[2:]:
        if record[field] != manifest[field]:
            raise ValueError(f"{where}: {field}={record[field]!r}, but the manifest says {manifest[field]!r}")


def make_manifest(reasoner: str, prompt_set_version: str, decoding: dict) -> dict:
    """The manifest of a store: what every trace in it was generated with."""
    return {"format_version": FORMAT_VERSION, "reasoner": reasoner, "prompt_set_version": prompt_set_version,
            "decoding": decoding}  # fmt: skip


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
            raise ValueError(f"{path}: format_version={version!r}, expected {FORMAT_VERSION}; a format-1 store "
                             f"upgrades with `python -m training.traces upgrade {folder}`")  # fmt: skip
        self.folder = folder
        self.cache = TraceCache(os.path.join(folder, TRACES))

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

    def append(self, entries: list[tuple[str, str, str]]) -> None:
        """Durably store `(example id, side, trace)` entries, in one transaction; an (id, side) already in the store
        keeps its trace."""
        self.cache.put_many((*key_of(key_fields(self.manifest, example_id, side)), trace, None)
                            for example_id, side, trace in entries)  # fmt: skip

    def read(self) -> dict[tuple[str, str], str]:
        """All traces, as `{(example id, side): trace}`.

        Raises:
            ValueError: an entry of other settings than the manifest's, or one that is not a training trace (an
                inference cache's); the message names it.
        """
        traces = {}
        for number, (fields, trace, _) in enumerate(self.cache.entries(), start=1):
            where = f"{self.cache.path} entry {number}"
            record = json.loads(fields)
            if set(record) != set(KEY_FIELDS):
                raise ValueError(f"{where}: a training trace is keyed by {KEY_FIELDS}, got {sorted(record)}")
            check_settings(record, self.manifest, where)
            traces[record["id"], record["side"]] = trace
        return traces


def format1_records(folder: str, manifest: dict):
    """`(id, side, trace)` of every complete line of a format-1 store's shards, checked against its manifest. An
    unterminated last line is a write a crash cut short: it was never a stored trace."""
    for path in sorted(glob.glob(os.path.join(folder, "shard-*.jsonl"))):
        with open(path, "rb") as handle:
            complete = handle.read().rpartition(b"\n")[0]
        for number, line in enumerate(complete.split(b"\n") if complete else [], start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
            if not isinstance(record, dict) or set(record) != {*KEY_FIELDS, "trace"}:
                raise ValueError(f"{path}:{number}: not a format-1 trace record: {record!r}")
            check_settings(record, manifest, f"{path}:{number}")
            yield record["id"], record["side"], record["trace"]


def upgrade(folder: str) -> TraceStore:
    """Upgrade a format-1 store in place: its traces go into `traces.sqlite` first, then the manifest is rewritten
    (atomically), so an interrupted upgrade is finished by running it again. The shard files are kept."""
    path = os.path.join(folder, MANIFEST)
    with open(path) as handle:
        manifest = json.load(handle)
    if manifest.get("format_version") == FORMAT_VERSION:
        return TraceStore(folder)
    if manifest.get("format_version") != 1:
        raise ValueError(f"{path}: format_version={manifest.get('format_version')!r}; only format 1 upgrades")
    upgraded = {**manifest, "format_version": FORMAT_VERSION}
    cache = TraceCache(os.path.join(folder, TRACES))
    cache.put_many((*key_of(key_fields(manifest, example_id, side)), trace, None)
                   for example_id, side, trace in format1_records(folder, manifest))  # fmt: skip
    write_atomic(path, json.dumps(upgraded, indent=2))
    return TraceStore(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.traces", description="Trace store maintenance.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("upgrade", help="Upgrade a format-1 store (JSONL shards) in place.").add_argument("folder")
    args = parser.parse_args(argv)
    store = upgrade(args.folder)
    print(f"{args.folder}: format {FORMAT_VERSION}, {len(store.cache)} traces")


__all__ = ["TraceStore", "make_manifest", "upgrade", "FORMAT_VERSION"]


if __name__ == "__main__":
    main()
