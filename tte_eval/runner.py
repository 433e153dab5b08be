"""Evaluate an encoder on MMEB tasks and user tasks: embed each unique input once (cached), rank, score, write results.

The encoder is any object with

    encode_query(inputs: list[dict], batch_size: int) -> np.ndarray   # (n, d), L2-normalised
    encode_document(inputs: list[dict], batch_size: int) -> np.ndarray

where each input is `{"text", "image", "instruction"}` (absent keys omitted) or has `"video"`: a list of frame paths.
`TTEModel` is one. Video inputs are passed through as they are; a model that cannot embed video raises.
"""

import dataclasses
import datetime
import json
import logging
import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .aggregate import Aggregate, aggregate, markdown_table
from .cache import CachedEmbeddings, Manifest, input_key, load_embeddings, save_embeddings, write_atomic
from .loaders import load_task
from .metrics import K_VALUES, mean_metrics, query_metrics, rank
from .rows import Item, TaskData
from .tasks import HEADLINE_METRIC, TASKS
from .user_tasks import UserTask, load_user_tasks


logger = logging.getLogger(__name__)

TIE_POLICY = "stable sort by descending score; exact ties keep pool order (local pools list the positive first)"
NORM_TOLERANCE = 1e-3  # embeddings must be unit-norm: the harness scores by dot product of L2-normalised vectors


class Encoder(Protocol):
    """The model side of the runner (`TTEModel` implements it)."""

    def encode_query(self, inputs: list[dict], batch_size: int) -> np.ndarray: ...

    def encode_document(self, inputs: list[dict], batch_size: int) -> np.ndarray: ...


@dataclass(frozen=True)
class TaskResult:
    """One task's mean metrics and what the cache did (`"reused"`, `"missing"`, `"stale: ..."`)."""

    task: str
    metrics: dict[str, float]
    cache_status: str


def unique_inputs(items: list[Item]) -> dict[str, dict]:
    """Input key -> encoder input, first occurrence order; each distinct input is embedded once."""
    unique = {}
    for item in items:
        model_input = item.model_input()
        unique.setdefault(input_key(model_input), model_input)
    return unique


def check_embeddings(embeddings, count: int, side: str) -> np.ndarray:
    """Validate an encoder output: `(count, d)`, finite, unit-norm rows.

    Raises:
        ValueError: naming the side and what is wrong.
    """
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != count:
        raise ValueError(f"encode_{side} returned shape {array.shape}; expected ({count}, d)")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"encode_{side} returned non-finite values")
    norms = np.linalg.norm(array, axis=1)
    if np.any(np.abs(norms - 1.0) > NORM_TOLERANCE):
        span = f"[{norms.min():.4f}, {norms.max():.4f}]"
        raise ValueError(f"encode_{side} returned rows with L2 norm in {span}; expected 1 (L2-normalised)")
    return array


def embed_task(
    task: TaskData, encoder: Encoder, manifest: Manifest, cache_dir: str, batch_size: int
) -> tuple[CachedEmbeddings, str]:
    """Embed a task's unique queries and candidates, reusing the cache when it matches.

    Returns:
        (embeddings, cache status).

    Raises:
        ValueError: if the encoder returns malformed embeddings, or query and document sizes differ.
    """
    queries = unique_inputs([row.query for row in task.rows])
    documents = unique_inputs([candidate.item for candidate in task.candidates])
    path = os.path.join(cache_dir, f"{task.spec.name}.npz")
    cached, status = load_embeddings(path, manifest, list(queries), list(documents))
    if cached is not None:
        return cached, status
    name = task.spec.name
    logger.info("%s: embedding %d queries and %d candidates (cache %s)", name, len(queries), len(documents), status)
    query_embeddings = encoder.encode_query(list(queries.values()), batch_size=batch_size)
    document_embeddings = encoder.encode_document(list(documents.values()), batch_size=batch_size)
    embeddings = CachedEmbeddings(
        list(queries), check_embeddings(query_embeddings, len(queries), "query"),
        list(documents), check_embeddings(document_embeddings, len(documents), "document"),
    )  # fmt: skip
    if embeddings.query_embeddings.shape[1] != embeddings.document_embeddings.shape[1]:
        sizes = (embeddings.query_embeddings.shape[1], embeddings.document_embeddings.shape[1])
        raise ValueError(f"{name}: query embeddings have size {sizes[0]} but document embeddings {sizes[1]}")
    save_embeddings(path, manifest, embeddings)
    return embeddings, status


def score_task(task: TaskData, embeddings: CachedEmbeddings) -> dict[str, float]:
    """Rank each row's pool by dot product and average the metrics over rows."""
    query_index = {key: i for i, key in enumerate(embeddings.query_keys)}
    document_index = {key: i for i, key in enumerate(embeddings.document_keys)}
    document_of = {c.cand_id: document_index[input_key(c.item.model_input())] for c in task.candidates}
    queries = embeddings.query_embeddings[[query_index[input_key(row.query.model_input())] for row in task.rows]]
    global_scores = None
    if task.spec.eval_type == "global":  # one pool for every row: score it once, (pool, rows)
        global_rows = [document_of[cand_id] for cand_id in task.candidate_ids]
        global_scores = embeddings.document_embeddings[global_rows] @ queries.T
    per_query = []
    for i, row in enumerate(task.rows):
        pool = task.pool(row)
        if global_scores is not None:
            scores = global_scores[:, i]
        else:
            scores = embeddings.document_embeddings[[document_of[cand_id] for cand_id in pool]] @ queries[i]
        per_query.append(query_metrics(rank(scores, pool), row.labels))
    return mean_metrics(per_query)


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and where to write it.

    Args:
        data_dir: the local MMEB data directory (see `loaders.py`); None when `tasks` is empty.
        tasks: MMEB task names to evaluate.
        output_dir: where `results.json` and `results.md` go.
        cache_dir: where per-task embedding caches go (user tasks under `<cache_dir>/user/`).
        benchmark: `"mmeb-v2"` or `"mmeb-v1"`.
        batch_size: inputs per encoder call.
        allow_partial: aggregate even when categories miss tasks (marked partial).
        tasks_dir: a folder of user task folders (see `user_tasks.py`), or None (default).
        traces: a trace store folder (`training/traces.py`) holding a precomputed query trace per row, id
            `"<task name>/<row id>"`, side `"query"` (e.g. a teacher's or an oracle's), or None: the model thinks.

    Raises:
        ValueError: if there is nothing to evaluate, or MMEB tasks come without `data_dir`.
    """

    data_dir: str | None
    tasks: tuple[str, ...]
    output_dir: str
    cache_dir: str
    benchmark: str = "mmeb-v2"
    batch_size: int = 8
    allow_partial: bool = False
    tasks_dir: str | None = None
    traces: str | None = None

    def __post_init__(self):
        if not self.tasks and self.tasks_dir is None:
            raise ValueError("nothing to evaluate: give MMEB tasks (CLI: --tasks), a tasks_dir (CLI: --tasks-dir) "
                             "or both")
        if self.tasks and not self.data_dir:
            raise ValueError(f"MMEB tasks {list(self.tasks)} need a data_dir (CLI: --data)")


def read_query_traces(folder: str) -> tuple[dict[str, str], dict]:
    """A trace store's query traces by row key `"<task>/<row id>"`, and its manifest (who wrote them, how)."""
    from training.traces import TraceStore  # the store format of the training scripts, read only when asked for

    store = TraceStore(folder)
    traces = {key: trace for (key, side), trace in store.read().items() if side == "query"}
    return traces, store.manifest


def with_query_traces(task: TaskData, traces: dict[str, str] | None) -> TaskData:
    """The task with each query's precomputed trace attached (`Item.reasoning`); unchanged when `traces` is None.

    Raises:
        ValueError: naming the task and row whose trace the store lacks.
    """
    if traces is None:
        return task
    rows = []
    for row in task.rows:
        key = f"{task.spec.name}/{row.row_id}"
        if key not in traces:
            raise ValueError(f"task {task.spec.name!r} row {row.row_id}: the trace store has no query trace {key!r}")
        rows.append(dataclasses.replace(row, query=dataclasses.replace(row.query, reasoning=traces[key])))
    return dataclasses.replace(task, rows=tuple(rows))


def run_task(task: TaskData, encoder: Encoder, manifest: Manifest, cache_dir: str, batch_size: int) -> TaskResult:
    """Embed (or reuse) and score one loaded task, MMEB or user-defined alike."""
    embeddings, status = embed_task(task, encoder, manifest, cache_dir, batch_size)
    return TaskResult(task.spec.name, score_task(task, embeddings), status)


def evaluate_task(name: str, encoder: Encoder, manifest: Manifest, config: EvalConfig,
                  traces: dict[str, str] | None = None) -> TaskResult:  # fmt: skip
    """Load, embed (or reuse) and score one MMEB task."""
    task = with_query_traces(load_task(config.data_dir, name, config.benchmark, manifest.num_frames), traces)
    return run_task(task, encoder, manifest, config.cache_dir, config.batch_size)


def evaluate(
    encoder: Encoder, manifest: Manifest, config: EvalConfig, model_name: str, model_settings: dict | None = None
) -> dict:
    """Evaluate every MMEB and user task, then write `results.json` (scores + every knob) and `results.md`.

    Args:
        encoder: the model (see `Encoder`).
        manifest: the cache manifest; it is recorded in the results.
        config: tasks, paths and options.
        model_name: the name shown in tables.
        model_settings: model-side knobs to record (e.g. the thinking policy), or None.

    Returns:
        The results dict written to `results.json`.

    Raises:
        ValueError: for a bad task, row or image, or malformed embeddings, naming the offending item.
    """
    # Every user task is validated before anything is embedded, so a bad folder fails fast.
    user_tasks = load_user_tasks(config.tasks_dir, manifest.num_frames) if config.tasks_dir is not None else []
    traces, trace_manifest = read_query_traces(config.traces) if config.traces is not None else (None, None)
    user_data = [with_query_traces(task.data, traces) for task in user_tasks]  # a missing trace fails before embedding
    results = [evaluate_task(name, encoder, manifest, config, traces) for name in config.tasks]
    user_cache = os.path.join(config.cache_dir, "user")  # apart from the MMEB caches, whatever the task names
    user_results = [run_task(data, encoder, manifest, user_cache, config.batch_size) for data in user_data]
    user_section = user_report(user_tasks, user_results)
    report = build_report(results, manifest, config, model_name, model_settings or {}, user_section)
    # Who wrote the traces is part of what a score means (an oracle's traces are not a model's).
    report["metadata"]["query_traces"] = None if traces is None else {"store": config.traces, **trace_manifest}
    if hasattr(encoder, "cost_report"):  # what thinking cost in this run (embeddings the cache reused cost nothing)
        report["cost"] = encoder.cost_report()
    os.makedirs(config.output_dir, exist_ok=True)
    json_text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    write_atomic(os.path.join(config.output_dir, "results.json"), lambda f: f.write(json_text.encode("utf-8")))
    markdown = results_markdown(report)
    write_atomic(os.path.join(config.output_dir, "results.md"), lambda f: f.write(markdown.encode("utf-8")))
    return report


def build_report(
    results: list[TaskResult], manifest: Manifest, config: EvalConfig, model_name: str, settings: dict,
    user_section: dict | None = None,
) -> dict:
    """The results file: metadata (all knobs), MMEB metrics in the published layout, the aggregate row, user tasks."""
    metrics = {}
    for result in results:
        metrics.setdefault(TASKS[result.task].modality, {})[result.task] = result.metrics
    metadata = {
        "model_name": model_name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "benchmark": config.benchmark,
        **manifest.to_dict(),
        "model_settings": settings,
        "instructions": "stock MMEB strings (tte_eval/mmeb_strings.py)",
        "score": "dot product of L2-normalised embeddings",
        "tie_policy": TIE_POLICY,
        "k_values": list(K_VALUES),
        "headline_metric": HEADLINE_METRIC,
        "tasks": list(config.tasks),
        "tasks_dir": config.tasks_dir,
        "cache": {result.task: result.cache_status for result in results},
    }
    report = {"metadata": metadata, "metrics": metrics, "aggregate": None, "aggregate_error": None,
              "user_tasks": user_section}  # fmt: skip
    if not results:  # a run of user tasks only has no MMEB aggregate, and no missing tasks to report
        return report
    task_scores = {result.task: result.metrics for result in results}
    try:
        row = aggregate(task_scores, model_name, config.benchmark, config.allow_partial)
        report["aggregate"] = {"scores": row.scores, "missing": row.missing}
    except ValueError as error:  # a partial run still writes its per-task scores
        report["aggregate_error"] = str(error)
    return report


def user_report(tasks: list[UserTask], results: list[TaskResult]) -> dict | None:
    """The `user_tasks` section: each task's spec, headline score, cache status and metrics, and the mean headline.

    It is kept out of `metrics`, which holds MMEB tasks only in the published layout, so that the strict MMEB
    aggregator (and `tte-eval aggregate results.json`) never meets a user task. Scores are in [0, 1] like `metrics`.
    """
    if not tasks:
        return None
    entries = {}
    for task, result in zip(tasks, results):
        spec = task.data.spec
        entries[spec.name] = {
            "folder": task.folder, "modality": spec.modality, "eval_type": spec.eval_type, "metric": task.metric,
            "task": task.ecr_task,
            "score": result.metrics[task.metric], "cache": result.cache_status, "metrics": result.metrics,
        }  # fmt: skip
    return {"tasks": entries, "mean": float(np.mean([entry["score"] for entry in entries.values()]))}


def results_markdown(report: dict) -> str:
    """Markdown: the MMEB aggregate and per-task headline scores, the user tasks with their mean, and the knobs."""
    meta = report["metadata"]
    lines = [f"# Results: {meta['model_name']}", ""]
    if report["metrics"]:
        lines += _mmeb_markdown(report)
    if report["user_tasks"] is not None:
        lines += _user_markdown(report["user_tasks"])
    knobs = ["model_hash", "prompt_set_version", "max_pixels", "num_frames", "task_list_version", "tie_policy"]
    lines += [*[f"- {knob}: {meta[knob]}" for knob in knobs], f"- model_settings: {meta['model_settings']}", ""]
    return "\n".join(lines)


def _mmeb_markdown(report: dict) -> list[str]:
    meta = report["metadata"]
    if report["aggregate"] is not None:
        scores, missing = report["aggregate"]["scores"], report["aggregate"]["missing"]
        lines = [markdown_table([Aggregate(meta["model_name"], meta["benchmark"], scores, missing)])]
    else:
        lines = ["No aggregate: some categories miss tasks (`aggregate_error` in results.json lists them); "
                 "rerun with --allow-partial for partial means.", ""]
    lines += ["| Task | Category | Metric | Score | Queries |", "|---|---|---|---|---|"]
    for modality, tasks in report["metrics"].items():
        for name, scores in tasks.items():
            metric = HEADLINE_METRIC[modality]
            score = f"{100 * scores[metric]:.2f}"
            lines.append(f"| {name} | {TASKS[name].category} | {metric} | {score} | {scores['num_pred']} |")
    return lines + [""]


def _user_markdown(section: dict) -> list[str]:
    lines = ["## User tasks", "", "| Task | Modality | Ranking | Metric | Score | Queries |", "|---" * 6 + "|"]
    for name, entry in section["tasks"].items():
        cells = [name, entry["modality"], entry["eval_type"], entry["metric"], f"{100 * entry['score']:.2f}",
                 str(entry["metrics"]["num_pred"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    count = len(section["tasks"])
    return lines + ["", f"Mean headline score over {count} user tasks: {100 * section['mean']:.2f}", ""]
