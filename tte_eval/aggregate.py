"""Aggregate per-task MMEB scores into the category / modality / overall row (harness doc §6).

Rules: every score x 100; the headline metric is hit@1 for image and video tasks and ndcg_linear@5 for visdoc; a
category is the unweighted mean of its tasks; a modality is the mean of **all its tasks** (not of its categories);
All-78 is the mean of the 78 tasks; V1 IND / OOD are the means of the 20 / 16 image tasks with / without MMEB-train
data. A column with missing tasks is refused unless `allow_partial=True`, in which case it is reported and marked.
"""

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .tasks import CATEGORIES, EXCLUDED_TASKS, HEADLINE_METRIC, TASKS, tasks_in


MODALITY_COLUMNS = {"image": "Image", "video": "Video", "visdoc": "VisDoc"}


def _column_tasks() -> dict[str, list[str]]:
    """Column -> its tasks, in the report order of the golden row (harness doc §7)."""
    columns = {}
    for modality, modality_column in MODALITY_COLUMNS.items():
        for category in [c for c, m in CATEGORIES.items() if m == modality]:
            columns[category] = tasks_in(category)
        columns[modality_column] = tasks_in(modality)
    columns["All-78"] = tasks_in("all")
    for split in ("IND", "OOD"):
        columns[f"V1 {split}"] = [name for name, spec in TASKS.items() if spec.v1_split == split]
    return columns


COLUMN_TASKS = _column_tasks()
# Columns reported per benchmark; for MMEB-V1 the "Image" column is the V1 overall score (mean of 36 tasks).
BENCHMARK_COLUMNS = {
    "mmeb-v2": list(COLUMN_TASKS),
    "mmeb-v1": ["I-CLS", "I-QA", "I-RET", "I-VG", "Image", "V1 IND", "V1 OOD"],
}


@dataclass
class Aggregate:
    """One model's aggregate row.

    Args:
        model: the model name.
        benchmark: `"mmeb-v2"` or `"mmeb-v1"`; decides the columns.
        scores: column -> score x 100, or None when none of its tasks is present.
        missing: column -> its missing tasks, for columns reported from part of their tasks.
        excluded: score-file entries skipped on purpose (e.g. `MomentSeeker_1k8`).
    """

    model: str
    benchmark: str
    scores: dict[str, float | None]
    missing: dict[str, list[str]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)


def headline_scores(task_scores: dict[str, dict[str, float]]) -> tuple[dict[str, float], list[str]]:
    """Pick each task's headline metric; return (task -> score x 100, excluded task names).

    Raises:
        ValueError: naming unknown tasks, or a task whose headline metric is absent.
    """
    excluded = sorted(name for name in task_scores if name in EXCLUDED_TASKS)
    unknown = sorted(name for name in task_scores if name not in TASKS and name not in EXCLUDED_TASKS)
    if unknown:
        raise ValueError(f"unknown tasks in the scores: {unknown}; they are not in the 78-task table")
    headline = {}
    for name in (n for n in task_scores if n in TASKS):
        metric = HEADLINE_METRIC[TASKS[name].modality]
        if metric not in task_scores[name]:
            raise ValueError(f"task {name!r}: headline metric {metric!r} missing; it has {sorted(task_scores[name])}")
        headline[name] = 100.0 * float(task_scores[name][metric])
    return headline, excluded


def aggregate(
    task_scores: dict[str, dict[str, float]], model: str, benchmark: str = "mmeb-v2", allow_partial: bool = False
) -> Aggregate:
    """Aggregate per-task metrics into one row.

    Args:
        task_scores: task name -> metric name -> value in [0, 1] (the published score-file layout).
        model: the model name for the row.
        benchmark: `"mmeb-v2"` (all columns) or `"mmeb-v1"` (image categories, V1 overall, IND, OOD).
        allow_partial: report columns with missing tasks (marked in `Aggregate.missing`) instead of refusing.

    Returns:
        The aggregate row.

    Raises:
        ValueError: for unknown tasks or benchmark, a missing headline metric, or (without `allow_partial`) missing
            tasks, listed per column.
    """
    if benchmark not in BENCHMARK_COLUMNS:
        raise ValueError(f"unknown benchmark {benchmark!r}; use one of {list(BENCHMARK_COLUMNS)}")
    headline, excluded = headline_scores(task_scores)
    row = Aggregate(model, benchmark, {}, excluded=excluded)
    for column in BENCHMARK_COLUMNS[benchmark]:
        present = [headline[name] for name in COLUMN_TASKS[column] if name in headline]
        row.scores[column] = float(np.mean(present)) if present else None
        absent = [name for name in COLUMN_TASKS[column] if name not in headline]
        if absent:
            row.missing[column] = absent
    if row.missing and not allow_partial:
        raise ValueError(
            f"model {model!r}: refusing to aggregate with missing tasks: {describe_missing(row)}. "
            "Pass allow_partial=True (CLI: --allow-partial) to report partial means, marked as partial."
        )
    return row


def describe_missing(row: Aggregate) -> str:
    """Missing tasks per category, e.g. `"V-QA: ['EgoSchema']"` (modality and overall columns miss the same)."""
    return "; ".join(f"{column}: {tasks}" for column, tasks in row.missing.items() if column in CATEGORIES)


def read_score_file(path: str) -> tuple[str, dict[str, dict[str, float]]]:
    """Read a per-task score file (`{"metadata": {"model_name"}, "metrics": {modality: {task: {metric: value}}}}`).

    Returns:
        (model name, task -> metrics); the model name falls back to the file name.

    Raises:
        ValueError: if the layout is wrong or a task is filed under the wrong modality.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{path}: expected a JSON object with a 'metrics' object (modality -> task -> metrics)")
    model = data.get("metadata", {}).get("model_name") or os.path.splitext(os.path.basename(path))[0]
    task_scores = {}
    for modality, tasks in data["metrics"].items():
        if modality not in HEADLINE_METRIC:
            raise ValueError(f"{path}: unknown modality {modality!r}; expected one of {list(HEADLINE_METRIC)}")
        for name, metrics in tasks.items():
            if name in TASKS and TASKS[name].modality != modality:
                raise ValueError(f"{path}: task {name!r} is filed under {modality!r}, not {TASKS[name].modality!r}")
            task_scores[name] = metrics
    return model, task_scores


def markdown_table(rows: list[Aggregate]) -> str:
    """A markdown table, one line per row; partial cells end in `*` and a footnote lists their missing tasks."""
    benchmarks = sorted({row.benchmark for row in rows})
    if len(benchmarks) != 1:
        raise ValueError(f"cannot put rows of different benchmarks {benchmarks} in one table")
    columns = BENCHMARK_COLUMNS[benchmarks[0]]
    lines = ["| Model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [_cell(row.scores.get(column), column in row.missing) for column in columns]
        lines.append(f"| {row.model} | " + " | ".join(cells) + " |")
    notes = [f"\\* {row.model}: partial, missing {describe_missing(row)}" for row in rows if row.missing]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _cell(value: float | None, partial: bool) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" + ("*" if partial else "")
