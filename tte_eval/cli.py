"""`tte-eval` / `python -m tte_eval`: evaluate a TTE model folder on local MMEB data and user-defined tasks, or
aggregate score files.

    python -m tte_eval evaluate --model MODEL_DIR --data DATA_DIR --tasks image visdoc --output OUT_DIR
    python -m tte_eval evaluate --model MODEL_DIR --tasks-dir USER_TASKS_DIR --output OUT_DIR
    python -m tte_eval aggregate ../shared/data/mmeb-scores/VLM2Vec-V2.0-Qwen2VL-2B.json
"""

import argparse
import dataclasses
import json
import logging
import os
import sys

from .aggregate import aggregate, markdown_table, read_score_file
from .cache import Manifest, write_atomic
from .loaders import BENCHMARKS
from .model_io import ModelEncoder, load_tte_model, model_hash, model_settings
from .runner import EvalConfig, evaluate, results_markdown
from .tasks import CATEGORIES, HEADLINE_METRIC, TASK_LIST_VERSIONS, get_task, tasks_in


EVALUATE_EXAMPLES = """examples:
  tte-eval evaluate --model MODEL_DIR --data DATA_DIR --tasks image visdoc --output OUT_DIR
  tte-eval evaluate --model MODEL_DIR --tasks-dir USER_TASKS_DIR --output OUT_DIR
"""


def expand_tasks(names: list[str], benchmark: str) -> list[str]:
    """Expand task names and groups (`all`, a modality or a category) into unique task names, in order.

    Raises:
        ValueError: naming an unknown task or group.
    """
    tasks = []
    for name in names:
        if name == "all" and benchmark == "mmeb-v1":
            name = "image"  # MMEB-V1 is the 36 image tasks
        group = name == "all" or name in HEADLINE_METRIC or name in CATEGORIES
        tasks += tasks_in(name) if group else [get_task(name).name]
    return list(dict.fromkeys(tasks))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the `evaluate` and `aggregate` subcommands."""
    parser = argparse.ArgumentParser(prog="tte-eval", description="MMEB evaluation harness for TTE models.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "evaluate", help="Evaluate a model folder on MMEB data (--data, --tasks) and/or user tasks (--tasks-dir).",
        epilog=EVALUATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    run.add_argument("--model", required=True, help="TTE model folder (loaded with trust_remote_code=True).")
    run.add_argument("--data", help="MMEB data directory, one folder per task (README, section MMEB evaluation).")
    run.add_argument("--tasks", nargs="+", default=[], help="MMEB task names or groups: all, image, video, I-CLS, ...")
    run.add_argument("--tasks-dir", help="Folder of user task folders, each with task.json + test.jsonl "
                     "(tte_eval/user_tasks.py); reported apart from the MMEB aggregate.")  # fmt: skip
    run.add_argument("--traces", help="Trace store of precomputed query traces (id '<task>/<row id>'), e.g. a "
                     "teacher's; used instead of the model's own thinking and recorded in the results.")  # fmt: skip
    run.add_argument("--think", help="Thinking policy for this run: always, never, queries or auto (a model with a "
                     "gate); default: the model's. Recorded in the results and the embedding cache's manifest.")
    run.add_argument("--trace-cache", help="Trace cache file (SQLite): traces it holds are reused, new ones stored.")
    run.add_argument("--output", required=True, help="Folder for results.json and results.md.")
    run.add_argument("--cache-dir", help="Embedding cache folder (default: OUTPUT/cache).")
    run.add_argument("--benchmark", choices=BENCHMARKS, default="mmeb-v2", help="Row format and task list.")
    run.add_argument("--num-frames", type=int, default=8, help="Frames sampled per video (VLM2Vec: 8).")
    run.add_argument("--batch-size", type=int, default=8, help="Inputs per encoder call.")
    run.add_argument("--model-name", help="Name shown in tables (default: the model folder's name).")
    run.add_argument("--allow-partial", action="store_true", help="Aggregate categories with missing tasks, marked.")
    agg = commands.add_parser("aggregate", help="Aggregate per-task score files (published layout or results.json).")
    agg.add_argument("score_files", nargs="+", help="JSON files: {'metrics': {modality: {task: {metric: value}}}}.")
    agg.add_argument("--benchmark", choices=BENCHMARKS, default="mmeb-v2", help="Which columns to report.")
    agg.add_argument("--allow-partial", action="store_true", help="Report categories with missing tasks, marked.")
    agg.add_argument("--json", help="Also write the rows as JSON to this path.")
    agg.add_argument("--markdown", help="Also write the table as markdown to this path.")
    return parser


def check_think(think: str | None) -> None:
    from tte.configuration_tte import THINK_POLICIES  # here: aggregation never loads transformers

    if think is not None and think not in THINK_POLICIES:
        raise ValueError(f"--think {think!r} is not one of {THINK_POLICIES}")


def run_evaluate(args: argparse.Namespace) -> str:
    """Evaluate and write results; return the markdown report."""
    tasks = expand_tasks(args.tasks, args.benchmark)
    cache_dir = args.cache_dir or os.path.join(args.output, "cache")
    config = EvalConfig(  # checks the task selection before the model is loaded
        args.data, tuple(tasks), args.output, cache_dir, args.benchmark, args.batch_size, args.allow_partial,
        args.tasks_dir, args.traces,
    )  # fmt: skip
    check_think(args.think)
    digest = model_hash(args.model)  # fails fast on a folder without config.json / weights
    model = load_tte_model(args.model)
    encoder = ModelEncoder(model, args.think, args.trace_cache, num_frames=args.num_frames)
    settings = {**model_settings(model), "think": encoder.think}
    task_list = TASK_LIST_VERSIONS[args.benchmark]
    manifest = Manifest(digest, settings["prompt_set_version"], settings["max_pixels"], args.num_frames, task_list,
                        encoder.think, settings.get("max_frame_pixels"), settings.get("max_video_pixels"))  # fmt: skip
    name = args.model_name or os.path.basename(os.path.normpath(args.model))
    return results_markdown(evaluate(encoder, manifest, config, name, settings))


def run_aggregate(args: argparse.Namespace) -> str:
    """Aggregate the score files; write the optional JSON / markdown files; return the markdown table."""
    rows = []
    for path in args.score_files:
        model, task_scores = read_score_file(path)
        rows.append(aggregate(task_scores, model, args.benchmark, args.allow_partial))
    table = markdown_table(rows)
    if args.json:
        text = json.dumps([dataclasses.asdict(row) for row in rows], indent=2) + "\n"
        write_atomic(args.json, lambda f: f.write(text.encode("utf-8")))
    if args.markdown:
        write_atomic(args.markdown, lambda f: f.write(table.encode("utf-8")))
    return table


def main(argv: list[str] | None = None) -> None:
    """Entry point of `tte-eval`; bad input exits with status 2 and a message naming the offending item."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        output = run_evaluate(args) if args.command == "evaluate" else run_aggregate(args)
    except ValueError as error:
        parser.exit(2, f"tte-eval: error: {error}\n")
    sys.stdout.write(output)


if __name__ == "__main__":
    main()
