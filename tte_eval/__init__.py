"""MMEB evaluation harness for Think-Then-Embed models: loaders, metrics, aggregation, cached runner and CLI."""

from .aggregate import Aggregate, aggregate, markdown_table, read_score_file
from .cache import Manifest
from .loaders import load_task
from .metrics import query_metrics, rank
from .runner import EvalConfig, evaluate
from .tasks import TASKS, get_task


__all__ = [
    "TASKS",
    "Aggregate",
    "EvalConfig",
    "Manifest",
    "aggregate",
    "evaluate",
    "get_task",
    "load_task",
    "markdown_table",
    "query_metrics",
    "rank",
    "read_score_file",
]
