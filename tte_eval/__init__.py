"""The MMEB evaluation harness for TTE models: loaders, metrics, aggregation, cached runner, CLI and user tasks."""

from .aggregate import Aggregate, aggregate, markdown_table, read_score_file
from .cache import Manifest
from .loaders import load_task
from .metrics import query_metrics, rank
from .runner import EvalConfig, evaluate
from .tasks import TASKS, get_task
from .user_tasks import load_user_task, load_user_tasks, write_task


__all__ = [
    "TASKS",
    "Aggregate",
    "EvalConfig",
    "Manifest",
    "aggregate",
    "evaluate",
    "get_task",
    "load_task",
    "load_user_task",
    "load_user_tasks",
    "markdown_table",
    "query_metrics",
    "rank",
    "read_score_file",
    "write_task",
]
