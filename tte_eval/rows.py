"""The normalised row schema shared by every MMEB task family, and the file helpers the loaders use.

Every task, whatever its source format, becomes a `TaskData`: query rows, each with its own candidate list and a
label -> grade map, plus the task's candidate set, de-duplicated by candidate id (first occurrence wins, then corpus
entries not yet seen; VLM2Vec `base_eval_dataset.py: generate_cand_dataset`).

Local files: each task lives in `<data_dir>/<task>/` as `<stem>.jsonl` or `<stem>.parquet`; media paths inside rows
are relative to `<data_dir>` (absolute paths are kept as they are). Videos are folders of frame images.
"""

import functools
import json
import os
from dataclasses import dataclass

import numpy as np

from tte.video_tte import VideoSampling, frame_indices, natural_key

from .tasks import TaskSpec


FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Item:
    """One side of a pair, as the harness string and as the structured parts our model takes.

    Args:
        harness_text: the exact MMEB string, with `<image>` / `<video>` markers where the media token run goes.
        instruction: the task instruction, or None.
        text: the query or candidate text, or None.
        image: absolute image path, or None.
        video: absolute frame paths (already sampled to the frame count), or None.
        task: the ECR prompt family the model reasons with (a user task's `task`), or None for the model's default.
        reasoning: a precomputed trace (from `--traces`), used instead of the model's own thinking, or None.
    """

    harness_text: str
    instruction: str | None = None
    text: str | None = None
    image: str | None = None
    video: tuple[str, ...] | None = None
    task: str | None = None
    reasoning: str | None = None

    def model_input(self) -> dict:
        """The encoder-protocol dict: `text`, `image`, `instruction`, `video` (frame list), `task`, `reasoning`;
        absent keys omitted. Every key enters the cache key, so a family or trace change re-embeds."""
        parts = {"text": self.text, "image": self.image, "instruction": self.instruction, "task": self.task,
                 "reasoning": self.reasoning}  # fmt: skip
        parts["video"] = list(self.video) if self.video else None
        return {key: value for key, value in parts.items() if value is not None}


@dataclass(frozen=True)
class Candidate:
    """A candidate and its id (`cand_name` in VLM2Vec), the key of de-duplication and of labels."""

    cand_id: str
    item: Item


@dataclass(frozen=True)
class QueryRow:
    """One query row.

    Args:
        row_id: the row's position in its file (or the visdoc `query-id`).
        query: the query item.
        candidates: the row's own candidate list, in source order, duplicates kept (the local ranking pool).
        labels: relevant candidate id -> grade (> 0); grade 1.0 for binary tasks.
    """

    row_id: str
    query: Item
    candidates: tuple[Candidate, ...]
    labels: dict[str, float]


@dataclass(frozen=True)
class RowContext:
    """What a row builder needs besides the record: the task, where media live, the frame count, the source file."""

    task: str
    data_dir: str
    num_frames: int
    source: str

    def where(self, row_id: str) -> str:
        """The location used in error messages, e.g. `"OK-VQA/test row 3"`."""
        return f"{self.task}/{self.source} row {row_id}"


@dataclass(frozen=True)
class TaskData:
    """A loaded task: its spec, its query rows and its de-duplicated candidate set."""

    spec: TaskSpec
    rows: tuple[QueryRow, ...]
    candidates: tuple[Candidate, ...]

    @functools.cached_property
    def candidate_ids(self) -> list[str]:
        """Ids of the de-duplicated candidate set, in order (the pool of every row of a `global` task)."""
        return [candidate.cand_id for candidate in self.candidates]

    def pool(self, row: QueryRow) -> list[str]:
        """Candidate ids ranked for `row`: its own list (`local`) or the whole candidate set (`global`)."""
        if self.spec.eval_type == "local":
            return [candidate.cand_id for candidate in row.candidates]
        return self.candidate_ids


def text_candidates(texts: list[str]) -> tuple[Candidate, ...]:
    """Raw label / answer / caption candidates; the id is the text itself."""
    return tuple(Candidate(text, Item(text, text=text)) for text in texts)


def build_task_data(spec: TaskSpec, rows: list[QueryRow], corpus: list[Candidate]) -> TaskData:
    """De-duplicate candidates by id (rows first, then corpus) and check that every label can be ranked.

    Raises:
        ValueError: if a task has no rows, or a row's label is not in its ranking pool.
    """
    if not rows:
        raise ValueError(f"{spec.name}: no query rows found")
    unique = {}
    for candidate in [c for row in rows for c in row.candidates] + corpus:
        unique.setdefault(candidate.cand_id, candidate)
    task = TaskData(spec, tuple(rows), tuple(unique.values()))
    for row in rows:
        pool = task.pool(row)
        missing = sorted(label for label in row.labels if label not in pool)
        if missing:
            raise ValueError(f"{spec.name} row {row.row_id}: labels {missing} are not among its ranked candidates")
    return task


def records_file(task_dir: str, stem: str) -> str:
    """The one rows file `<task_dir>/<stem>.jsonl` or `<stem>.parquet`.

    Raises:
        ValueError: if neither or both files exist.
    """
    found = [path for path in (f"{task_dir}/{stem}.jsonl", f"{task_dir}/{stem}.parquet") if os.path.isfile(path)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one of {stem}.jsonl / {stem}.parquet in {task_dir}, found {len(found)}")
    return found[0]


def read_records(task_dir: str, stem: str) -> list[dict]:
    """Read `<task_dir>/<stem>.jsonl` or `<stem>.parquet` as a list of dicts.

    Raises:
        ValueError: if neither or both files exist, or a JSONL line is not a JSON object.
    """
    return read_records_file(records_file(task_dir, stem))


def read_records_file(path: str) -> list[dict]:
    """Read one `.jsonl` or `.parquet` rows file as a list of dicts.

    Raises:
        ValueError: if a JSONL line is not a JSON object, naming the file and line.
    """
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # only parquet needs pyarrow; JSONL data works without it

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        return [parse_json_object(line, f"{path}:{number}") for number, line in enumerate(f, 1) if line.strip()]


def parse_json_object(text: str, where: str) -> dict:
    """Parse `text` as one JSON object.

    Raises:
        ValueError: naming `where` when it is not valid JSON or not an object.
    """
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def field(record: dict, name: str, kind: type | tuple, where: str):
    """Return `record[name]`, checking that it exists and has type `kind`.

    Raises:
        ValueError: naming the row and the field when it is missing or of the wrong type.
    """
    if name not in record:
        raise ValueError(f"{where}: missing field {name!r}; the row has {sorted(record)}")
    value = record[name]
    if not isinstance(value, kind):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{where}: field {name!r} must be {names}, got {type(value).__name__} {value!r}")
    return value


def check_keys(record: dict, allowed: set[str] | dict, where: str) -> None:
    """Refuse keys outside `allowed`, so a misspelt optional field is an error rather than silently ignored.

    Raises:
        ValueError: naming the unknown keys and the allowed ones.
    """
    unknown = sorted(set(record) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed keys are {sorted(allowed)}")


def string_list(record: dict, name: str, where: str, min_len: int = 1) -> list[str]:
    """Return `record[name]` as a list of at least `min_len` strings (parquet lists arrive as lists too)."""
    values = field(record, name, (list, tuple, np.ndarray), where)
    if len(values) < min_len or not all(isinstance(value, str) for value in values):
        raise ValueError(f"{where}: field {name!r} must be a list of >= {min_len} strings, got {list(values)!r}")
    return list(values)


def media_path(data_dir: str, relative: str, where: str) -> str:
    """Resolve an image path against the data directory.

    Raises:
        ValueError: if the file does not exist.
    """
    path = os.path.join(data_dir, relative)
    if not os.path.isfile(path):
        raise ValueError(f"{where}: image file {relative!r} not found (looked for {path})")
    return path


def video_frames(data_dir: str, relative: str, num_frames: int, where: str) -> tuple[str, ...]:
    """Sample `num_frames` frame paths from a frame folder (VLM2Vec `process_video_frames`).

    Frames are ordered naturally (`2.jpg` before `10.jpg`). With at least `num_frames` frames, indices are
    `np.linspace(0, n - 1, num_frames)` truncated to int; with fewer, all frames are kept and the last is repeated.

    Raises:
        ValueError: if the folder does not exist or holds no frame images.
    """
    folder = os.path.join(data_dir, relative)
    if not os.path.isdir(folder):
        raise ValueError(f"{where}: video frame folder {relative!r} not found (looked for {folder})")
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTENSIONS)), key=natural_key)
    if not names:
        raise ValueError(f"{where}: video frame folder {relative!r} holds no {FRAME_EXTENSIONS} frames")
    names = [names[i] for i in frame_indices(len(names), VideoSampling(num_frames=num_frames))]  # the model's rule
    names = names + [names[-1]] * (num_frames - len(names))
    return tuple(os.path.join(folder, name) for name in names)


def optional_text(value: str) -> str | None:
    """A structured text part: None when empty or whitespace (the model rejects empty text)."""
    return value if value.strip() else None
