"""User-defined tasks: a folder with a `task.json` spec and `test.jsonl` rows in the MMEB-V2 image-row format.

`tte-eval evaluate --tasks-dir DIR` evaluates every subfolder of DIR that holds a `task.json`:

    DIR/<folder>/task.json    {"name": "shapes-count", "modality": "image", "eval_type": "local", "metric": "hit@1"}
    DIR/<folder>/test.jsonl   one query row per line (or `test.parquet`)
    DIR/<folder>/images/...   media; row paths are relative to the task folder

Spec keys, all required, no others:
- `name`: the task's name in the results and its cache file; letters, digits, `.`, `_`, `-`; not an MMEB task name.
- `modality`: `"image"`, `"video"` or `"visdoc"`, the group the task is reported under.
- `eval_type`: `"local"` ranks each row's own targets (as MMEB's image tasks do); `"global"` ranks every distinct
  target of the task (as MMEB's retrieval and visdoc tasks do).
- `metric`: the headline metric, one of `metrics.METRIC_NAMES` (`"hit@1"`, `"ndcg_linear@5"`, ...).

Row keys: the six fields of the MMEB-V2 image rows (`ziyjiang/MMEB_Test_Instruct`, see `image_rows.py`) plus
`positives`, no others:
- `qry_inst`, `qry_text`, `qry_img_path`: the query's instruction, text and image path (`""` for none);
- `tgt_inst`: the instruction of every target of the row (`""` for none);
- `tgt_text`, `tgt_img_path`: the targets, two lists of the same length (`""` for none);
- `positives`: indices of the relevant targets (MMEB's "the positive is target 0" is `[0]`), each of grade 1.

and optionally `qry_video_path`: a folder of frame images that is the query's video (instead of an image), sampled to
`--num-frames` frames as MMEB's video tasks are (`rows.video_frames`).

A query and each target need a text or an image. A target's id is its (instruction, image path, text) triple, so
equal targets of different rows are one candidate of a global pool, embedded once. Exact score ties keep pool order
(`metrics.rank`): list the positive first to give ties to it, as MMEB does.

Optional spec key:
- `task`: the ECR prompt family the model reasons with for this task's queries and targets (`"vqa"`,
  `"grounding"`, `"retrieval"`, `"classification"`, `"visual_document"`; the model checks the name). Without it, as
  on MMEB tasks, TTE models reason with their default family (`"retrieval"`).
"""

import json
import logging
import os
import re
from dataclasses import dataclass

from .cache import write_atomic
from .image_rows import target_lists
from .metrics import METRIC_NAMES
from .mmeb_strings import IMAGE_MARKER, VIDEO_MARKER
from .rows import (
    Candidate,
    Item,
    QueryRow,
    TaskData,
    build_task_data,
    check_keys,
    field,
    media_path,
    optional_text,
    parse_json_object,
    read_records_file,
    records_file,
    video_frames,
)
from .tasks import EXCLUDED_TASKS, TASKS, TaskSpec


logger = logging.getLogger(__name__)

SPEC_FILE = "task.json"
ROWS_STEM = "test"  # `test.jsonl` / `test.parquet`, as in an MMEB task folder
USER_CATEGORY = "user"  # category and family of every user task: outside the MMEB category table, never aggregated
MODALITIES = ("image", "video", "visdoc")
EVAL_TYPES = ("local", "global")
SPEC_KEYS = ("name", "modality", "eval_type", "metric")
OPTIONAL_SPEC_KEYS = ("task",)
ROW_KEYS = ("qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path", "positives")
OPTIONAL_ROW_KEYS = ("qry_video_path",)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # the name is also a cache file name


@dataclass(frozen=True)
class UserTask:
    """A loaded user task.

    Args:
        folder: the task folder.
        metric: the headline metric.
        ecr_task: the spec's ECR prompt family (`task`), or None.
        data: its rows and de-duplicated candidates, as the runner scores MMEB tasks (`data.spec.name` is the name).
    """

    folder: str
    metric: str
    data: TaskData
    ecr_task: str | None = None


def parse_spec(spec: dict, where: str) -> tuple[TaskSpec, str, str | None]:
    """Validate a task spec.

    Args:
        spec: the parsed `task.json`.
        where: the spec file, for error messages.

    Returns:
        (the `TaskSpec` the runner uses, the headline metric, the ECR prompt family or None).

    Raises:
        ValueError: naming `where`, the key and the problem, for unknown or missing keys and bad values.
    """
    check_keys(spec, SPEC_KEYS + OPTIONAL_SPEC_KEYS, where)
    missing = [key for key in SPEC_KEYS if key not in spec]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}; a spec needs {list(SPEC_KEYS)}")
    name = field(spec, "name", str, where)
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{where}: name {name!r} must start with a letter or digit and hold only letters, digits, "
                         "'.', '_' and '-'")  # fmt: skip
    if name in TASKS or name in EXCLUDED_TASKS:
        raise ValueError(f"{where}: name {name!r} is an MMEB task name; pick another so results and caches stay apart")
    modality = _choice(spec, "modality", MODALITIES, where)
    eval_type = _choice(spec, "eval_type", EVAL_TYPES, where)
    metric = _choice(spec, "metric", METRIC_NAMES, where)
    ecr_task = field(spec, "task", str, where) if "task" in spec else None
    if ecr_task is not None and not NAME_PATTERN.fullmatch(ecr_task):
        raise ValueError(f"{where}: task {ecr_task!r} is not a prompt family name")
    return TaskSpec(name, modality, USER_CATEGORY, USER_CATEGORY, eval_type), metric, ecr_task


def _choice(spec: dict, key: str, options: tuple[str, ...], where: str) -> str:
    value = field(spec, key, str, where)
    if value not in options:
        raise ValueError(f"{where}: {key} {value!r} is not one of {list(options)}")
    return value


def user_row(record: dict, row_id: str, folder: str, where: str, ecr_task: str | None = None,
             num_frames: int = 8) -> QueryRow:  # fmt: skip
    """Build one query row: the query, the row's targets and a grade-1 label per positive.

    Raises:
        ValueError: naming `where` for unknown keys, bad fields, a missing image or video, or bad positives.
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    check_keys(record, ROW_KEYS + OPTIONAL_ROW_KEYS, where)
    query_parts = [field(record, key, str, where) for key in ("qry_inst", "qry_text", "qry_img_path")]
    video = field(record, "qry_video_path", str, where) if "qry_video_path" in record else ""
    query = _item(*query_parts, folder, f"{where}: query", ecr_task, video, num_frames)
    inst = field(record, "tgt_inst", str, where)
    texts, paths = target_lists(record, where)
    candidates = tuple(
        Candidate(_target_id(inst, path, text), _item(inst, text, path, folder, f"{where}: target {i}", ecr_task))
        for i, (text, path) in enumerate(zip(texts, paths))
    )
    return QueryRow(row_id, query, candidates, _labels(record, candidates, where))


def _target_id(inst: str, path: str, text: str) -> str:
    """The candidate id: every field that makes the encoder input, so equal ids always mean equal inputs."""
    return json.dumps([inst, path, text], ensure_ascii=False)


def _item(inst: str, text: str, path: str, folder: str, where: str, ecr_task: str | None = None,
          video_path: str = "", num_frames: int = 8) -> Item:  # fmt: skip
    """A query or target from its instruction, text, image path and video folder, `""` meaning none."""
    if not text.strip() and not path and not video_path:
        raise ValueError(f"{where}: has neither text nor image")
    if path and video_path:
        raise ValueError(f"{where}: has both an image (qry_img_path) and a video (qry_video_path); it takes one")
    image = media_path(folder, path, where) if path else None
    video = video_frames(folder, video_path, num_frames, where) if video_path else None
    # No MMEB task owns these strings, so the informational harness string is a plain join of the present parts.
    marker = IMAGE_MARKER if image else VIDEO_MARKER if video else ""
    harness = " ".join(part for part in (marker, inst, text) if part)
    return Item(harness, optional_text(inst.strip()), optional_text(text), image, video, task=ecr_task)


def _labels(record: dict, candidates: tuple[Candidate, ...], where: str) -> dict[str, float]:
    """Grade 1 per positive; positives are distinct target indices, and no negative repeats a positive target."""
    positives = field(record, "positives", (list, tuple), where)
    valid = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(candidates) for i in positives)
    if not positives or not valid or len(set(positives)) != len(positives):
        raise ValueError(f"{where}: positives must be distinct target indices in [0, {len(candidates)}), at least "
                         f"one; got {positives!r}")  # fmt: skip
    labels = dict.fromkeys((candidates[i].cand_id for i in positives), 1.0)
    # An equal target outside positives would make the same candidate both relevant and not.
    clash = [i for i, c in enumerate(candidates) if c.cand_id in labels and i not in positives]
    if clash:
        raise ValueError(f"{where}: targets {clash} equal a positive target but are not in positives")
    return labels


def build_user_task(folder: str, spec: TaskSpec, metric: str, records: list[dict], rows_file: str,
                    ecr_task: str | None = None, num_frames: int = 8) -> UserTask:
    """Validate every row and build the task; errors name `rows_file` and the 0-based row number.

    Raises:
        ValueError: for an empty rows file or any bad row.
    """
    if not records:
        raise ValueError(f"{rows_file}: no rows")
    rows = [user_row(record, str(i), folder, f"{rows_file} row {i}", ecr_task, num_frames)
            for i, record in enumerate(records)]  # fmt: skip
    return UserTask(folder, metric, build_task_data(spec, rows, []), ecr_task)


def load_user_task(folder: str, num_frames: int = 8) -> UserTask:
    """Load one task folder (`task.json` + `test.jsonl` or `test.parquet`); query videos are sampled to `num_frames`.

    Raises:
        ValueError: naming the file, row and problem for a missing or bad spec, rows file, row or image.
    """
    spec_path = os.path.join(folder, SPEC_FILE)
    if not os.path.isfile(spec_path):
        raise ValueError(f"{folder}: no {SPEC_FILE} (a task folder needs a spec and a rows file)")
    with open(spec_path, encoding="utf-8") as f:
        spec, metric, ecr_task = parse_spec(parse_json_object(f.read(), spec_path), spec_path)
    rows_file = records_file(folder, ROWS_STEM)
    return build_user_task(folder, spec, metric, read_records_file(rows_file), rows_file, ecr_task, num_frames)


def load_user_tasks(tasks_dir: str, num_frames: int = 8) -> list[UserTask]:
    """Load every subfolder of `tasks_dir` holding a `task.json`, in name order; other subfolders are skipped.

    Raises:
        ValueError: if `tasks_dir` is missing or holds no task, two tasks share a name, or any task is bad.
    """
    if not os.path.isdir(tasks_dir):
        raise ValueError(f"tasks dir {tasks_dir!r} not found")
    folders = [os.path.join(tasks_dir, name) for name in sorted(os.listdir(tasks_dir))]
    skipped = [folder for folder in folders if os.path.isdir(folder) and not os.path.isfile(f"{folder}/{SPEC_FILE}")]
    if skipped:
        logger.info("%s: skipping subfolders without %s: %s", tasks_dir, SPEC_FILE, skipped)
    tasks = [load_user_task(folder, num_frames) for folder in folders
             if os.path.isfile(os.path.join(folder, SPEC_FILE))]  # fmt: skip
    if not tasks:
        raise ValueError(f"tasks dir {tasks_dir!r} holds no task folder (a subfolder with a {SPEC_FILE})")
    first = {}
    for task in tasks:
        other = first.setdefault(task.data.spec.name, task.folder)
        if other != task.folder:
            raise ValueError(f"task name {task.data.spec.name!r} is used by both {other} and {task.folder}")
    return tasks


def write_task(folder: str, spec: dict, rows: list[dict]) -> UserTask:
    """Validate a task, then write its folder: `test.jsonl`, then `task.json`, each atomically (temp + `os.replace`).

    The rows are validated exactly as `load_user_task` reads them, so media files must already be in the folder.

    Args:
        folder: the task folder (created if missing).
        spec: the `task.json` object (see the module docstring).
        rows: the query rows (see the module docstring); lists may be tuples.

    Returns:
        The task as `load_user_task(folder)` will load it.

    Raises:
        ValueError: for a bad spec or row, naming the file it would be written to, the row and the problem.
    """
    spec_path, rows_path = os.path.join(folder, SPEC_FILE), os.path.join(folder, f"{ROWS_STEM}.jsonl")
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path}: spec must be a dict, got {type(spec).__name__}")
    task_spec, metric, ecr_task = parse_spec(spec, spec_path)
    task = build_user_task(folder, task_spec, metric, list(rows), rows_path, ecr_task)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    spec_text = json.dumps(spec, indent=2, ensure_ascii=False) + "\n"
    write_atomic(rows_path, lambda f: f.write(lines.encode("utf-8")))
    # The spec goes last: readers take a folder as a task only once it has a spec, so never with half its rows.
    write_atomic(spec_path, lambda f: f.write(spec_text.encode("utf-8")))
    return task


__all__ = [
    "SPEC_FILE",
    "UserTask",
    "build_user_task",
    "load_user_task",
    "load_user_tasks",
    "parse_spec",
    "user_row",
    "write_task",
]
